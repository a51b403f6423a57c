//! Privacy units and their classes: the grouping that lets the ledger follow people rather than
//! files (`0005_units.sql`, docs/accounting.md, "Budgets follow the person").
//!
//! Each tenant has a secret (32 bytes from ring's `SystemRandom`, made on first use, never
//! changed) under which the service computes its units' identities (`train::units`). The store
//! keeps each identity once per tenant with its class: the set of the tenant's datasets that
//! contain the unit. Registering a dataset moves every unit it contains from its class `S` to
//! `S + {dataset}` (new units start in `{dataset}`), in the transaction that inserts the
//! dataset, so a crash leaves either both or neither. A class that moves whole is renamed in
//! place, so registering the same people again rewrites no unit row. The ledger composes per class.
//!
//! A dataset registered before identities existed is assigned them at start-up from its stored
//! file ([`Store::assign_identities`]); until then, or for good when the file is gone, it is
//! unidentified, and [`unidentified`] datasets count against every class of their tenant.
//! What this module does not own: hashing (`train::units`) and composing (`ledger.rs`).

use super::datasets::{Dataset, DatasetId};
use super::error::{Result, StoreError};
use super::tokens::TenantId;
use super::{now_ms, Store};
use crate::digest::UnitId;
use super::db::{args, ToValue, Tx};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Bytes of a tenant's unit secret.
const SECRET_BYTES: usize = 32;

/// Whether a dataset's units are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitIdentities {
    /// Registered before identities existed; assigned at the next start-up.
    Pending,
    /// Every unit has its identity and class.
    Identified,
    /// Its file was gone or unreadable when identities were assigned: its units are unknown, so
    /// its jobs and budget count against every unit of its tenant, and no job runs on it.
    Unidentified,
    /// Registered before identities existed with a record repeated in its file: its units are
    /// known, but no new job runs on it (one unit would be trained on twice per pass).
    RepeatedRecords,
}

stored_names!(UnitIdentities, "unit_identities", {
    Pending => "pending",
    Identified => "identified",
    Unidentified => "unidentified",
    RepeatedRecords => "repeated_records",
});

impl UnitIdentities {
    /// True when the dataset's units are known (identified, or known with repeats).
    pub fn known(self) -> bool {
        matches!(self, UnitIdentities::Identified | UnitIdentities::RepeatedRecords)
    }
}

/// What start-up found in an old dataset's file.
#[derive(Debug, Clone, PartialEq)]
pub enum FoundIdentities {
    /// The file's distinct unit identities, and whether a record was repeated in it.
    Read { units: Vec<UnitId>, repeated_records: bool },
    /// The file is gone, unreadable, or no longer parses as it did.
    Unreadable,
}

/// Units found in exactly one set of the tenant's datasets.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UnitClass {
    /// How many units.
    pub(crate) units: u64,
    /// The datasets they are in, sorted.
    pub(crate) datasets: Vec<DatasetId>,
}

impl Store {
    /// The tenant's secret for unit identities, made on first use (`NotFound` for an unknown
    /// tenant). Never logged, never returned over the API.
    pub fn unit_secret(&self, tenant: &TenantId) -> Result<[u8; SECRET_BYTES]> {
        self.write(|tx| {
            // Under the tenant's ledger lock: two daemons asking at once make one secret.
            if super::ledger::lock_if_known(tx, tenant)?.is_none() {
                return Err(StoreError::not_found("tenant", tenant.as_str()));
            }
            if let Some(secret) = tx.query_first("SELECT secret FROM tenant_unit_secrets WHERE tenant = ?1", args![tenant], |r| r.get::<[u8; SECRET_BYTES]>("secret"))? {
                return Ok(secret);
            }
            let mut secret = [0u8; SECRET_BYTES];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret).map_err(|_| StoreError::Random)?;
            tx.execute("INSERT INTO tenant_unit_secrets (tenant, secret, created_at_ms) VALUES (?1, ?2, ?3)", args![tenant, secret, now_ms()])?;
            Ok(secret)
        })
    }

    /// Every dataset, of every tenant, whose units are not known yet or were not readable at
    /// the last start-up (start-up tries them again: a restored file is identified).
    pub fn datasets_without_identities(&self) -> Result<Vec<Dataset>> {
        self.read(|tx| {
            tx.query_map(
                &format!("SELECT {} FROM datasets WHERE unit_identities IN ('pending', 'unidentified') ORDER BY rowid", super::datasets::DATASET_COLUMNS),
                args![],
                Dataset::from_row,
            )
        })
    }

    /// Records what start-up found for an old dataset: its units join their classes, or it is
    /// marked unidentified. A dataset whose units became known meanwhile is left as it is.
    pub fn assign_identities(&self, tenant: &TenantId, dataset: &DatasetId, found: FoundIdentities) -> Result<UnitIdentities> {
        self.write(|tx| {
            super::ledger::lock(tx, tenant)?;
            let current = super::datasets::load(tx, tenant, dataset)?.unit_identities;
            if current.known() {
                return Ok(current);
            }
            let state = match &found {
                FoundIdentities::Read { units, repeated_records } => {
                    check_distinct(units)?;
                    join(tx, tenant, dataset, units)?;
                    if *repeated_records {
                        UnitIdentities::RepeatedRecords
                    } else {
                        UnitIdentities::Identified
                    }
                }
                FoundIdentities::Unreadable => UnitIdentities::Unidentified,
            };
            tx.execute("UPDATE datasets SET unit_identities = ?3 WHERE tenant = ?1 AND sha256 = ?2", args![tenant, dataset, state])?;
            super::ledger::bump(tx, tenant)?;
            Ok(state)
        })
    }
}

/// `InvalidArgument` unless `units` is strictly increasing (sorted, no identity twice).
pub(crate) fn check_distinct(units: &[UnitId]) -> Result<()> {
    if units.windows(2).all(|w| w[0] < w[1]) {
        Ok(())
    } else {
        Err(StoreError::invalid("unit identities", "must be sorted and distinct"))
    }
}

/// A class's signature: its datasets' ids, sorted, comma-separated.
fn signature(datasets: &[DatasetId]) -> String {
    datasets.iter().map(DatasetId::as_str).collect::<Vec<_>>().join(",")
}

fn parse_signature(text: &str) -> Result<Vec<DatasetId>> {
    text.split(',').map(DatasetId::parse).collect()
}

/// Moves `units` (sorted, distinct) into the classes that add `dataset` to their datasets,
/// inside the caller's write transaction. Returns how many of them the tenant already had.
///
/// A class whose units all join is renamed in place (its datasets gain `dataset`): no unit row
/// changes, so registering the same people again costs their lookups only. A class that joins
/// in part gives the joining units a new class; new units start in the class `{dataset}`.
pub(crate) fn join(tx: &mut Tx<'_>, tenant: &TenantId, dataset: &DatasetId, units: &[UnitId]) -> Result<u64> {
    let mut found: HashMap<UnitId, i64> = HashMap::new();
    for chunk in units.chunks(UNITS_PER_STATEMENT) {
        let sql = format!("SELECT unit, class FROM units WHERE tenant = ?1 AND unit IN ({})", placeholders(2, chunk.len()));
        let mut params: Vec<&dyn ToValue> = vec![tenant];
        params.extend(chunk.iter().map(|u| u as &dyn ToValue));
        for (unit, class) in tx.query_map(&sql, &params, |r| Ok((r.get::<UnitId>("unit")?, r.get::<i64>("class")?)))? {
            found.insert(unit, class);
        }
    }
    let mut by_class: BTreeMap<Option<i64>, Vec<&UnitId>> = BTreeMap::new();
    for unit in units {
        by_class.entry(found.get(unit).copied()).or_default().push(unit);
    }
    let mut known = 0;
    for (old, members) in by_class {
        let count = members.len() as i64;
        let (mut datasets, old_size) = match old {
            Some(id) => {
                let (text, size): (String, i64) = tx.query_one("SELECT datasets, units FROM unit_classes WHERE id = ?1", args![id], |r| Ok((r.get("datasets")?, r.get("units")?)))?;
                (parse_signature(&text)?, size)
            }
            None => (Vec::new(), 0),
        };
        if let Err(at) = datasets.binary_search(dataset) {
            datasets.insert(at, dataset.clone());
        }
        const MEMBER: &str = "INSERT INTO unit_class_datasets (tenant, dataset, class) VALUES (?1, ?2, ?3)";
        match old {
            Some(old) if count == old_size => {
                tx.execute("UPDATE unit_classes SET datasets = ?2 WHERE id = ?1", args![old, signature(&datasets)])?;
                tx.execute(MEMBER, args![tenant, dataset, old])?;
            }
            _ => {
                let class: i64 = tx.query_one(
                    "INSERT INTO unit_classes (tenant, datasets, units) VALUES (?1, ?2, ?3) RETURNING id",
                    args![tenant, signature(&datasets), count],
                    |r| r.get("id"),
                )?;
                for d in &datasets {
                    tx.execute(MEMBER, args![tenant, d, class])?;
                }
                for chunk in members.chunks(UNITS_PER_STATEMENT) {
                    let mut params: Vec<&dyn ToValue> = vec![tenant, &class];
                    params.extend(chunk.iter().map(|u| *u as &dyn ToValue));
                    let sql = if old.is_some() {
                        format!("UPDATE units SET class = ?2 WHERE tenant = ?1 AND unit IN ({})", placeholders(3, chunk.len()))
                    } else {
                        let rows: Vec<String> = (0..chunk.len()).map(|i| format!("(?1, ?{}, ?2)", i + 3)).collect();
                        format!("INSERT INTO units (tenant, unit, class) VALUES {}", rows.join(", "))
                    };
                    tx.execute(&sql, &params)?;
                }
                if let Some(old) = old {
                    tx.execute("UPDATE unit_classes SET units = units - ?2 WHERE id = ?1", args![old, count])?;
                }
            }
        }
        if old.is_some() {
            known += count as u64;
        }
    }
    Ok(known)
}

/// Units looked up, moved or inserted by one statement (a registration's round trips to a
/// PostgreSQL server are its units / this, not its units).
const UNITS_PER_STATEMENT: usize = 1000;

/// `?first, ?first+1, ...`: `n` placeholders.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ")
}

/// The classes of units in the tenant's `dataset`.
pub(crate) fn classes_of(tx: &mut Tx<'_>, tenant: &TenantId, dataset: &DatasetId) -> Result<Vec<UnitClass>> {
    let rows = tx.query_map(
        "SELECT c.units AS units, c.datasets AS datasets FROM unit_class_datasets m JOIN unit_classes c ON c.id = m.class
         WHERE m.tenant = ?1 AND m.dataset = ?2 ORDER BY c.id",
        args![tenant, dataset],
        |r| Ok((r.get::<u64>("units")?, r.get::<String>("datasets")?)),
    )?;
    rows.into_iter().map(|(units, datasets)| Ok(UnitClass { units, datasets: parse_signature(&datasets)? })).collect()
}

/// The tenant's datasets whose units are unknown (pending or unidentified): their people may
/// be anyone's, so the ledger counts them in every class.
pub(crate) fn unidentified(tx: &mut Tx<'_>, tenant: &TenantId) -> Result<Vec<DatasetId>> {
    tx.query_map(
        "SELECT sha256 FROM datasets WHERE tenant = ?1 AND unit_identities IN ('pending', 'unidentified') ORDER BY sha256",
        args![tenant],
        |r| r.get("sha256"),
    )
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{chain, count_rows, new_job, unit_ids, Fixture};
    use super::super::{BudgetReport, JobState, NewDataset, PrivacyUnit, SharedUnits, StoreError};
    use super::*;
    use ewtune_accountant::calibrate::noise_multiplier;

    const DELTA: f64 = 1e-5;
    const Q: f64 = 0.02;
    const STEPS: u64 = 500;

    /// A dataset `tag` of the given people (unit ids) with budget `epsilon`.
    fn people(tag: &str, ids: Vec<UnitId>, epsilon: f64) -> NewDataset {
        NewDataset {
            name: tag.into(),
            sha256: crate::digest::sha256_hex(tag.as_bytes()),
            path: format!("/data/{tag}.jsonl"),
            units: ids.len() as u64,
            privacy_unit: PrivacyUnit::Example,
            user_field: None,
            budget_epsilon: epsilon,
            budget_delta: DELTA,
            unit_ids: ids,
        }
    }

    /// `ranges` of group 1's people, as one sorted set.
    fn group(ranges: &[std::ops::Range<u32>]) -> Vec<UnitId> {
        let mut ids: Vec<UnitId> = ranges.iter().flat_map(|r| unit_ids(1, r.clone())).collect();
        ids.sort_unstable();
        ids
    }

    /// A job calibrated to `epsilon` on its own.
    fn job_at(store: &Store, tenant: &TenantId, d: &DatasetId, epsilon: f64) -> Result<super::super::Job> {
        let sigma = noise_multiplier(epsilon, DELTA, Q, STEPS).unwrap().sigma;
        store.create_job(tenant, new_job(d, sigma, Q, STEPS))
    }

    fn refusal(e: StoreError) -> super::super::BudgetRefusal {
        match e {
            StoreError::BudgetExceeded(r) => *r,
            other => panic!("expected BudgetExceeded, got {other:?}"),
        }
    }

    fn classes(report: &BudgetReport) -> Vec<(u64, usize)> {
        report.classes.iter().map(|c| (c.units, c.datasets.len())).collect()
    }

    /// The issue's scenario: 400 notes at a budget of 8, 6 spent; the same notes again (other
    /// bytes) plus 20 new ones, with another budget of 8. A second job at 6 is refused for the
    /// 400 shared units; the 20 new ones keep their own budget.
    #[test]
    fn the_same_people_in_new_bytes_keep_their_spend() {
        let fx = Fixture::new();
        let acme = fx.tenant("acme");
        let first = fx.store.register_dataset(&acme, people("notes", group(&[0..400]), 8.0)).unwrap();
        job_at(&fx.store, &acme, &first.id, 6.0).unwrap();
        let again = fx.store.register_dataset(&acme, people("notes, shuffled, +20", group(&[0..420]), 8.0)).unwrap();
        let shared = fx.store.shared_units(&acme, &again.id).unwrap();
        assert_eq!(shared.units, 400, "Register says how many units were known");
        let left = shared.least_remaining_epsilon.unwrap();
        assert!((1.9..2.1).contains(&left), "about 8 - 6 left: {left}");

        let r = refusal(job_at(&fx.store, &acme, &again.id, 6.0).unwrap_err());
        assert_eq!((r.units_over, r.units), (400, 420));
        assert!(r.requested_epsilon > 8.0 && (5.9..=6.0).contains(&r.committed_epsilon), "{r:?}");
        // Not 8 - 6: composition is not additive (docs/accounting.md), and the search composes.
        let quoted = r.largest_target_epsilon.unwrap();
        assert!(quoted > 0.0 && quoted < 6.0, "{quoted}");
        assert!(job_at(&fx.store, &acme, &again.id, quoted * 0.999).is_ok());
        assert!(job_at(&fx.store, &acme, &again.id, quoted * 0.999).is_err(), "now nothing is left for them");

        // The report: two classes, the shared one worst; every job that spends them is listed.
        let report = fx.store.budget_report(&acme, &again.id, false).unwrap();
        assert_eq!(classes(&report), [(400, 2), (20, 1)]);
        assert_eq!(report.remaining_epsilon, report.classes[0].remaining_epsilon);
        assert!(report.remaining_epsilon < 0.05, "{}", report.remaining_epsilon);
        assert!(report.classes[1].remaining_epsilon > 1.9, "the new 20 only spent the second job");
        assert_eq!(report.jobs.len(), 2);
        assert_eq!(report.jobs[0].dataset, first.id);
        // The first dataset's people are the same 400: its report sees both jobs too.
        let first_report = fx.store.budget_report(&acme, &first.id, false).unwrap();
        assert_eq!(classes(&first_report), [(400, 2)]);
        assert_eq!(first_report.committed_epsilon, report.committed_epsilon);
    }

    /// A dataset of other people keeps its own budget; one that shares 10 % of an earlier one's
    /// people is admitted only up to what those 10 % have left.
    #[test]
    fn overlap_limits_only_the_shared_units() {
        let fx = Fixture::new();
        let acme = fx.tenant("acme");
        let a = fx.store.register_dataset(&acme, people("a", group(&[0..400]), 4.0)).unwrap();
        job_at(&fx.store, &acme, &a.id, 3.0).unwrap();
        let others = fx.store.register_dataset(&acme, people("others", group(&[1000..1400]), 4.0)).unwrap();
        assert_eq!(fx.store.shared_units(&acme, &others.id).unwrap(), SharedUnits { units: 0, least_remaining_epsilon: None });
        job_at(&fx.store, &acme, &others.id, 3.5).unwrap();

        let tenth = fx.store.register_dataset(&acme, people("tenth", group(&[360..400, 2000..2360]), 5.0)).unwrap();
        assert_eq!(fx.store.shared_units(&acme, &tenth.id).unwrap().units, 40);
        let r = refusal(job_at(&fx.store, &acme, &tenth.id, 3.0).unwrap_err());
        assert_eq!((r.units_over, r.budget_dataset.clone()), (40, a.id.clone()), "the shared 40 are bound by a's budget");
        let quoted = r.largest_target_epsilon.unwrap();
        assert!(quoted < 3.0, "{quoted}");
        job_at(&fx.store, &acme, &tenth.id, quoted * 0.999).unwrap();
        let report = fx.store.budget_report(&acme, &tenth.id, false).unwrap();
        assert_eq!(classes(&report), [(40, 2), (360, 1)]);
        let new_units = &report.classes[1];
        assert!(new_units.committed_epsilon <= quoted && new_units.committed_epsilon > 0.95 * quoted, "the 360 new units spent only the small job: {new_units:?}");
        assert_eq!(new_units.remaining_epsilon, 5.0 - new_units.committed_epsilon);
    }

    /// A new budget can lower what the shared units have left, never raise it; the tighter
    /// budget then binds on the older dataset too.
    #[test]
    fn the_tighter_budget_binds_everywhere() {
        let fx = Fixture::new();
        let acme = fx.tenant("acme");
        let a = fx.store.register_dataset(&acme, people("a", group(&[0..100]), 8.0)).unwrap();
        job_at(&fx.store, &acme, &a.id, 2.0).unwrap();
        let generous = fx.store.register_dataset(&acme, people("generous", group(&[0..100]), 100.0)).unwrap();
        let shared = fx.store.shared_units(&acme, &generous.id).unwrap();
        assert!((5.9..6.1).contains(&shared.least_remaining_epsilon.unwrap()), "not raised: {shared:?}");
        let tight = fx.store.register_dataset(&acme, people("tight", group(&[50..150]), 1.0)).unwrap();
        assert_eq!(fx.store.shared_units(&acme, &tight.id).unwrap(), SharedUnits { units: 50, least_remaining_epsilon: Some(0.0) });
        let r = refusal(job_at(&fx.store, &acme, &a.id, 0.5).unwrap_err());
        assert_eq!((r.units_over, r.budget_dataset.clone(), r.largest_target_epsilon), (50, tight.id.clone(), None));
        assert!(r.to_string().contains("Nothing usable is left"), "{r}");
        let report = fx.store.budget_report(&acme, &a.id, false).unwrap();
        assert_eq!(report.classes[0].binding_dataset, tight.id);
        assert_eq!(report.remaining_epsilon, 0.0);
    }

    /// The same people in two tenants are two people: identities, classes and spend are per
    /// tenant.
    #[test]
    fn tenants_never_share_units() {
        let fx = Fixture::new();
        let (acme, globex) = (fx.tenant("acme"), fx.tenant("globex"));
        let mine = fx.store.register_dataset(&acme, people("notes", group(&[0..100]), 4.0)).unwrap();
        job_at(&fx.store, &acme, &mine.id, 3.5).unwrap();
        let theirs = fx.store.register_dataset(&globex, people("notes", group(&[0..100]), 4.0)).unwrap();
        assert_eq!(fx.store.shared_units(&globex, &theirs.id).unwrap().units, 0);
        job_at(&fx.store, &globex, &theirs.id, 3.5).unwrap();
        assert_ne!(fx.store.unit_secret(&acme).unwrap(), fx.store.unit_secret(&globex).unwrap());
        assert_eq!(fx.store.unit_secret(&acme).unwrap(), fx.store.unit_secret(&acme).unwrap(), "made once, kept");
        assert!(matches!(fx.store.unit_secret(&TenantId::parse("ghost").unwrap()), Err(StoreError::NotFound { .. })));
        assert_eq!(count_rows(&fx.store, "units"), 200);
    }

    /// Every unit is in exactly one class, whose count and datasets agree with the units rows,
    /// and a refused registration leaves no unit behind.
    #[test]
    fn classes_stay_consistent() {
        let fx = Fixture::new();
        let acme = fx.tenant("acme");
        for (tag, ranges) in [("a", vec![0..300]), ("b", vec![100..400]), ("c", vec![0..50, 250..350, 900..1000])] {
            fx.store.register_dataset(&acme, people(tag, group(&ranges), 4.0)).unwrap();
        }
        let err = fx.store.register_dataset(&acme, people("a", group(&[5000..5100]), 4.0)).unwrap_err();
        assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err:?}");
        let total: i64 = fx.raw_column::<i64>("SELECT CAST(sum(units) AS BIGINT) AS n FROM unit_classes", "n")[0];
        assert_eq!(total, count_rows(&fx.store, "units"));
        assert_eq!(total, 500, "0..400 and 900..1000");
        let per_class: Vec<(String, i64, i64)> = fx
            .store
            .read(|tx| {
                tx.query_map(
                    "SELECT c.datasets AS d, c.units AS n, (SELECT count(*) FROM units u WHERE u.class = c.id) AS m FROM unit_classes c ORDER BY c.datasets",
                    args![],
                    |r| Ok((r.get("d")?, r.get("n")?, r.get("m")?)),
                )
            })
            .unwrap();
        assert!(per_class.iter().all(|(_, n, m)| n == m), "{per_class:?}");
        let sizes: Vec<i64> = per_class.iter().map(|(_, n, _)| *n).collect();
        assert_eq!(sizes.iter().sum::<i64>(), 500);
        // a only: 50..100; a+b: 100..250 less c; a+c: 0..50; a+b+c: 250..300; b only: 350..400;
        // b+c: 300..350; c only: 900..1000.
        let mut sorted = sizes.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [50, 50, 50, 50, 50, 100, 150]);
        let members = count_rows(&fx.store, "unit_class_datasets");
        assert_eq!(members, per_class.iter().map(|(d, ..)| d.split(',').count() as i64).sum::<i64>());
    }

    /// A dataset from before identities: start-up assigns them from its file; if the file is
    /// gone, its jobs and budget count against every unit of its tenant and no job runs on it,
    /// until the file comes back.
    #[test]
    fn old_datasets_are_identified_or_count_against_everyone() {
        let fx = Fixture::upgraded_from(
            4,
            &format!(
                "INSERT INTO tenants (name, created_at_ms) VALUES ('acme', 0);
                 INSERT INTO datasets (tenant, sha256, name, path, units, privacy_unit, budget_epsilon, budget_delta, created_at_ms)
                 VALUES ('acme', '{old}', 'old', '/x', 100, 'example', 3.0, 1e-5, 0),
                        ('acme', '{lost}', 'lost', '/y', 100, 'example', 3.0, 1e-5, 0);
                 INSERT INTO jobs (id, tenant, dataset, spec_json, noise_multiplier, sample_rate, steps_planned, steps_done, state, created_at_ms)
                 VALUES ('{j1}', 'acme', '{lost}', '{{}}', 1.0, 0.02, 500, 500, 'succeeded', 0);",
                old = "a".repeat(64),
                lost = "b".repeat(64),
                j1 = "1".repeat(32),
            ),
        );
        let store = &fx.store;
        let acme = TenantId::parse("acme").unwrap();
        let pending: Vec<String> = store.datasets_without_identities().unwrap().iter().map(|d| d.name.clone()).collect();
        assert_eq!(pending, ["old", "lost"]);
        let (old, lost) = (DatasetId::parse(&"a".repeat(64)).unwrap(), DatasetId::parse(&"b".repeat(64)).unwrap());
        let pending_err = store.create_job(&acme, new_job(&old, 5.0, Q, 10)).unwrap_err();
        assert!(matches!(pending_err, StoreError::DatasetUnusable { .. }), "{pending_err:?}");

        let found = FoundIdentities::Read { units: group(&[0..100]), repeated_records: false };
        assert_eq!(store.assign_identities(&acme, &old, found.clone()).unwrap(), UnitIdentities::Identified);
        assert_eq!(store.assign_identities(&acme, &lost, FoundIdentities::Unreadable).unwrap(), UnitIdentities::Unidentified);
        let lost_err = store.create_job(&acme, new_job(&lost, 5.0, Q, 10)).unwrap_err();
        assert!(lost_err.to_string().contains("put the file back"), "{lost_err}");

        // The lost dataset's spend counts against the old one's units, and against a new
        // dataset of other people: its people may be anyone's.
        let lost_spend = store.budget_report(&acme, &lost, false).unwrap().committed_epsilon;
        assert!(lost_spend > 0.5, "{lost_spend}");
        let report = store.budget_report(&acme, &old, false).unwrap();
        assert_eq!(report.committed_epsilon, lost_spend);
        assert_eq!(report.classes[0].datasets, [old.clone(), lost.clone()]);
        let fresh = store.register_dataset(&acme, people("fresh", group(&[500..600]), 3.0)).unwrap();
        assert_eq!(store.budget_report(&acme, &fresh.id, false).unwrap().committed_epsilon, lost_spend);

        // The file is back: the next start-up identifies it (disjoint people), and the others
        // are free of its spend.
        assert_eq!(store.datasets_without_identities().unwrap().len(), 1);
        let back = FoundIdentities::Read { units: group(&[700..800]), repeated_records: false };
        assert_eq!(store.assign_identities(&acme, &lost, back).unwrap(), UnitIdentities::Identified);
        assert_eq!(store.budget_report(&acme, &fresh.id, false).unwrap().committed_epsilon, 0.0);
        assert_eq!(store.assign_identities(&acme, &old, found).unwrap(), UnitIdentities::Identified, "assigned once");
        assert_eq!(store.budget_report(&acme, &old, false).unwrap().classes.len(), 1);
        let j = store.create_job(&acme, new_job(&old, 5.0, Q, 10)).unwrap();
        assert_eq!(j.state, JobState::Queued);
        let repeated = store.register_dataset(&acme, people("r", group(&[0..10]), 3.0)).unwrap();
        let err = chain(&fx.raw("UPDATE datasets SET unit_identities = 'pending' WHERE sha256 = ?1", args![repeated.id]).unwrap_err());
        assert!(err.contains("never change"), "{err}");
    }
}
