//! Membership audits of finished jobs: an audit is created `Running` for a tenant's succeeded
//! job, and ends once, either `Succeeded` with its report and the daemon's signature over the
//! report's exact bytes, or `Failed` with a reason. Audits are never deleted and a finished one
//! never changes (SQL triggers in `0002_audits.sql`). What this module does not own: running
//! the audit (`service/auditor.rs`) and the report's content (`audit/report.rs`).

use super::error::{Result, StoreError};
use super::jobs::{self, JobId, JobState};
use super::tokens::TenantId;
use super::{list_page, now_ms, Listed, Page, Store};
use super::db::{args, Row, Tx};
use serde::{Deserialize, Serialize};

random_id! {
    /// An audit's id: 128 random bits from ring's `SystemRandom`, as 32 lower-case hex digits.
    AuditId, "audit"
}

/// Where an audit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditState {
    /// Created, scoring.
    Running,
    /// Done; the signed report is stored.
    Succeeded,
    /// Stopped by an error (the reason says which).
    Failed,
}

stored_names!(AuditState, "audits.state", { Running => "running", Succeeded => "succeeded", Failed => "failed" });

/// An audit as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Audit {
    /// Its id.
    pub id: AuditId,
    /// Its owner.
    pub tenant: TenantId,
    /// The audited job.
    pub job: JobId,
    /// Where it is.
    pub state: AuditState,
    /// What was asked (counts, not texts), as JSON.
    pub request_json: String,
    /// The report, exactly the signed bytes (when succeeded).
    pub report_json: Option<String>,
    /// Ed25519 signature over `report_json` (when succeeded).
    pub signature: Option<Vec<u8>>,
    /// Why it failed.
    pub reason: Option<String>,
    /// When it was created.
    pub created_at_unix_ms: i64,
    /// When it ended.
    pub finished_at_unix_ms: Option<i64>,
    /// Scorings done: every (sequence, model) pair scored counts once.
    pub scored: u64,
    /// Scorings the audit will do (0 until it has counted them).
    pub to_score: u64,
}

/// Running audits one tenant may have.
const MAX_RUNNING_PER_TENANT: i64 = 1;

/// The columns [`Audit::from_row`] reads, by name: every SELECT of a whole audit lists these.
const AUDIT_COLUMNS: &str = "id, tenant, job, state, request_json, report_json, signature, reason, created_at_ms, finished_at_ms, scored, to_score";

impl Audit {
    fn from_row(row: &Row) -> Result<Audit> {
        Ok(Audit {
            id: row.get("id")?,
            tenant: row.get("tenant")?,
            job: row.get("job")?,
            state: row.get("state")?,
            request_json: row.get("request_json")?,
            report_json: row.get("report_json")?,
            signature: row.get("signature")?,
            reason: row.get("reason")?,
            created_at_unix_ms: row.get("created_at_ms")?,
            finished_at_unix_ms: row.get("finished_at_ms")?,
            scored: row.get("scored")?,
            to_score: row.get("to_score")?,
        })
    }
}

/// How an audit ended.
#[derive(Debug, Clone, PartialEq)]
pub enum AuditOutcome {
    /// The report and the signature over its bytes.
    Report {
        /// The report JSON.
        report_json: String,
        /// Ed25519 signature (64 bytes).
        signature: Vec<u8>,
    },
    /// Why it failed.
    Failed(String),
}

impl Store {
    /// How many audits are running, for the operators' metrics.
    pub fn running_audits(&self) -> Result<u64> {
        self.read(|tx| tx.query_one("SELECT COUNT(*) AS n FROM audits WHERE state = 'running'", args![], |row| row.get("n")))
    }

    /// Creates a `Running` audit of the tenant's job: `NotFound` if the job is absent or
    /// another tenant's, `FailedPrecondition` unless it succeeded (only a succeeded job has a
    /// final model to audit), `Busy` while the tenant has another audit running (an audit holds
    /// its texts in memory until it runs).
    pub fn create_audit(&self, tenant: &TenantId, job: &JobId, request_json: &str) -> Result<Audit> {
        serde_json::from_str::<serde::de::IgnoredAny>(request_json)
            .map_err(|e| StoreError::invalid("request_json", format!("is not JSON: {e}")))?;
        let id = AuditId::random()?;
        self.write(|tx| {
            // The tenant's lock: two daemons cannot both start the tenant's one running audit.
            super::ledger::lock(tx, tenant)?;
            let j = jobs::load_owned(tx, tenant, job)?;
            if j.state != JobState::Succeeded {
                return Err(StoreError::FailedPrecondition { job: job.clone(), state: j.state, action: "audit (only a succeeded job has a final model)" });
            }
            let running: i64 = tx.query_one("SELECT count(*) AS running FROM audits WHERE tenant = ?1 AND state = ?2", args![tenant, AuditState::Running], |row| row.get("running"))?;
            if running >= MAX_RUNNING_PER_TENANT {
                return Err(StoreError::Busy(format!("an audit of yours is still running (at most {MAX_RUNNING_PER_TENANT} at a time); wait for it to end")));
            }
            let now = now_ms();
            tx.execute(
                "INSERT INTO audits (id, tenant, job, state, request_json, created_at_ms, owner, lease_until_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                args![id, tenant, job, AuditState::Running, request_json, now, self.worker.id, now + self.worker.lease_ms],
            )?;
            load(tx, &id)
        })
    }

    /// Records how far a running audit's scoring has got (nothing for a finished one).
    pub fn record_audit_progress(&self, id: &AuditId, scored: u64, to_score: u64) -> Result<()> {
        let (scored, to_score) = (super::to_sql_count("scored", scored)?, super::to_sql_count("to_score", to_score)?);
        self.write(|tx| tx.execute("UPDATE audits SET scored = ?2, to_score = ?3 WHERE id = ?1 AND state = 'running'", args![id, scored, to_score]))?;
        Ok(())
    }

    /// Ends a running audit; ending a finished one is `InvalidArgument` (it never changes).
    pub fn finish_audit(&self, id: &AuditId, outcome: AuditOutcome) -> Result<Audit> {
        self.write(|tx| {
            let current = load(tx, id)?;
            if current.state != AuditState::Running {
                return Err(StoreError::invalid("audit", format!("{} is {} and never changes", id, current.state.as_str())));
            }
            match &outcome {
                AuditOutcome::Report { report_json, signature } => tx.execute(
                    "UPDATE audits SET state = ?2, report_json = ?3, signature = ?4, finished_at_ms = ?5, owner = NULL, lease_until_ms = NULL WHERE id = ?1",
                    args![id, AuditState::Succeeded, report_json, signature, now_ms()],
                )?,
                AuditOutcome::Failed(reason) => tx.execute(
                    "UPDATE audits SET state = ?2, reason = ?3, finished_at_ms = ?4, owner = NULL, lease_until_ms = NULL WHERE id = ?1",
                    args![id, AuditState::Failed, reason, now_ms()],
                )?,
            };
            load(tx, id)
        })
    }

    /// The tenant's audit `id`; `NotFound` if absent or another tenant's.
    pub fn get_audit(&self, tenant: &TenantId, id: &AuditId) -> Result<Audit> {
        self.read(|tx| tx.query_first(&format!("SELECT {AUDIT_COLUMNS} FROM audits WHERE id = ?1 AND tenant = ?2"), args![id, tenant], Audit::from_row))?
            .ok_or_else(|| StoreError::not_found("audit", id.as_str()))
    }

    /// One page of the tenant's audits of `job` (all its jobs when `None`), oldest first.
    pub fn list_audits(&self, tenant: &TenantId, job: Option<&JobId>, page: Page) -> Result<Listed<Audit>> {
        self.read(|tx| {
            list_page(
                tx,
                &format!("SELECT {AUDIT_COLUMNS}, seq AS cursor FROM audits WHERE tenant = ?3 AND (CAST(?4 AS TEXT) IS NULL OR job = ?4) AND seq > ?1 ORDER BY seq LIMIT ?2"),
                page,
                args![tenant, job],
                Audit::from_row,
            )
        })
    }

    /// Daemon start-up: audits this daemon (or one older than leases) left running, and any
    /// whose daemon stopped renewing its lease, end `Failed` (their texts were never stored, so
    /// they cannot be resumed; creating the audit again is safe, audits spend no privacy
    /// budget). Returns how many.
    pub fn fail_running_audits(&self) -> Result<u64> {
        self.fail_audits_where("(owner = ?5 OR owner IS NULL OR lease_until_ms < ?3)")
    }

    /// Heartbeat: audits whose daemon stopped renewing its lease end `Failed`. Returns how many.
    pub fn fail_abandoned_audits(&self) -> Result<u64> {
        self.fail_audits_where("lease_until_ms < ?3 AND CAST(?5 AS TEXT) IS NOT NULL")
    }

    fn fail_audits_where(&self, which: &str) -> Result<u64> {
        self.write(|tx| {
            tx.execute(
                &format!("UPDATE audits SET state = ?1, reason = ?2, finished_at_ms = ?3, owner = NULL, lease_until_ms = NULL WHERE state = ?4 AND {which}"),
                args![AuditState::Failed, "the daemon running the audit stopped; create it again", now_ms(), AuditState::Running, self.worker.id],
            )
        })
    }
}

fn load(tx: &mut Tx<'_>, id: &AuditId) -> Result<Audit> {
    tx.query_first(&format!("SELECT {AUDIT_COLUMNS} FROM audits WHERE id = ?1"), args![id], Audit::from_row)?
        .ok_or_else(|| StoreError::not_found("audit", id.as_str()))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{self, Fixture};
    use super::*;

    fn succeeded_job(fx: &Fixture) -> (TenantId, JobId) {
        let token = fx.store.create_token("acme").unwrap();
        let tenant = fx.store.authenticate(&token).unwrap().unwrap();
        let dataset = fx.store.register_dataset(&tenant, testutil::new_dataset(1, 8.0)).unwrap();
        let job = fx.store.create_job(&tenant, testutil::new_job(&dataset.id, 1.0, 0.01, 20)).unwrap();
        fx.store.claim_next_queued().unwrap();
        fx.store.record_progress(&job.id, 20, 0.1).unwrap();
        fx.store.finish_job(&job.id, JobState::Succeeded, None).unwrap();
        (tenant, job.id)
    }

    #[test]
    fn audit_lifecycle_and_finality() {
        let fx = Fixture::new();
        let (tenant, job) = succeeded_job(&fx);
        let a = fx.store.create_audit(&tenant, &job, r#"{"texts": 0}"#).unwrap();
        assert_eq!((a.state, a.scored, a.to_score), (AuditState::Running, 0, 0));
        fx.store.record_audit_progress(&a.id, 64, 400).unwrap();
        let running = fx.store.get_audit(&tenant, &a.id).unwrap();
        assert_eq!((running.scored, running.to_score), (64, 400));
        fx.store.record_audit_progress(&a.id, 400, 400).unwrap();
        let done = fx.store.finish_audit(&a.id, AuditOutcome::Report { report_json: "{}".into(), signature: vec![7; 64] }).unwrap();
        assert_eq!((done.state, done.report_json.as_deref(), done.signature.as_deref()), (AuditState::Succeeded, Some("{}"), Some(&[7u8; 64][..])));
        assert!(matches!(fx.store.finish_audit(&a.id, AuditOutcome::Failed("late".into())), Err(StoreError::InvalidArgument { .. })));
        // Progress after the end changes nothing (and is no error: the scorer may lag the end).
        fx.store.record_audit_progress(&a.id, 1, 1).unwrap();
        assert_eq!((fx.store.get_audit(&tenant, &a.id).unwrap().scored, done.scored), (400, 400));
        // Below the Rust code, SQL refuses to change or delete a finished audit.
        assert!(fx.raw("UPDATE audits SET report_json = '{\"forged\": 1}' WHERE id = ?1", args![a.id]).is_err());
        assert!(fx.raw("DELETE FROM audits", args![]).is_err());
        assert_eq!(fx.store.get_audit(&tenant, &a.id).unwrap(), done);
        assert_eq!(fx.store.list_audits(&tenant, Some(&job), Page::default()).unwrap().items, vec![done]);
    }

    #[test]
    fn only_the_owner_audits_only_succeeded_jobs() {
        let fx = Fixture::new();
        let (tenant, job) = succeeded_job(&fx);
        let other = fx.store.authenticate(&fx.store.create_token("globex").unwrap()).unwrap().unwrap();
        assert!(matches!(fx.store.create_audit(&other, &job, "{}"), Err(StoreError::NotFound { .. })));
        let a = fx.store.create_audit(&tenant, &job, "{}").unwrap();
        assert!(matches!(fx.store.create_audit(&tenant, &job, "{}"), Err(StoreError::Busy(_))), "one running audit per tenant");
        assert!(matches!(fx.store.get_audit(&other, &a.id), Err(StoreError::NotFound { .. })));
        assert!(fx.store.list_audits(&other, None, Page::default()).unwrap().items.is_empty());

        let dataset = fx.store.register_dataset(&tenant, testutil::new_dataset(2, 8.0)).unwrap();
        let queued = fx.store.create_job(&tenant, testutil::new_job(&dataset.id, 1.0, 0.01, 20)).unwrap();
        let err = fx.store.create_audit(&tenant, &queued.id, "{}").unwrap_err();
        assert!(matches!(err, StoreError::FailedPrecondition { state: JobState::Queued, .. }), "{err:?}");
        assert!(matches!(fx.store.create_audit(&tenant, &job, "not json"), Err(StoreError::InvalidArgument { .. })));
        fx.store.finish_audit(&a.id, AuditOutcome::Failed("test".into())).unwrap();
        fx.store.create_audit(&tenant, &job, "{}").unwrap();
    }

    #[test]
    fn a_restart_fails_running_audits() {
        let fx = Fixture::new();
        let (tenant, job) = succeeded_job(&fx);
        let a = fx.store.create_audit(&tenant, &job, "{}").unwrap();
        assert_eq!(fx.store.fail_running_audits().unwrap(), 1);
        let failed = fx.store.get_audit(&tenant, &a.id).unwrap();
        assert_eq!(failed.state, AuditState::Failed);
        assert!(failed.reason.unwrap().contains("create it again"));
        assert_eq!(fx.store.fail_running_audits().unwrap(), 0);
    }

    #[test]
    fn a_canary_manifest_is_committed_with_its_job_and_never_changes() {
        let fx = Fixture::new();
        let token = fx.store.create_token("acme").unwrap();
        let tenant = fx.store.authenticate(&token).unwrap().unwrap();
        let dataset = fx.store.register_dataset(&tenant, testutil::new_dataset(1, 8.0)).unwrap();
        let mut new = testutil::new_job(&dataset.id, 1.0, 0.01, 20);
        new.canary_manifest_json = Some(r#"{"included": [true, false]}"#.into());
        let job = fx.store.create_job(&tenant, new).unwrap();
        let (sha, json) = fx.store.canary_manifest(&job.id).unwrap().unwrap();
        assert_eq!(json, r#"{"included": [true, false]}"#);
        assert_eq!(sha, crate::digest::sha256_hex(json.as_bytes()));
        assert_eq!(fx.store.canary_manifest_sha256(&job.id).unwrap(), Some(sha.clone()));
        assert!(fx.raw("UPDATE canary_manifests SET manifest_json = '{\"included\": [true, true]}'", args![]).is_err());
        assert!(fx.raw("DELETE FROM canary_manifests", args![]).is_err());
        let plain = fx.store.create_job(&tenant, testutil::new_job(&dataset.id, 1.0, 0.01, 20)).unwrap();
        assert_eq!(fx.store.canary_manifest(&plain.id).unwrap(), None);
        assert_eq!(fx.store.canary_manifest_sha256(&plain.id).unwrap(), None);
    }
}
