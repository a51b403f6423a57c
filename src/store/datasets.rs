//! Datasets: a tenant's registered training data with its privacy budget.
//!
//! A dataset is identified by the SHA-256 of its bytes ([`DatasetId`]) within its tenant: two
//! tenants may register the same bytes (two rows, two budgets), one tenant may not register them
//! twice, so a budget can never be reset by registering again. Budgets are (epsilon, delta) for
//! the dataset's privacy unit (an example or a user). What this module does not own: hashing the
//! file (the API does it with ring) and the ledger (see `ledger.rs`).

use super::error::{Result, StoreError};
use super::tokens::TenantId;
use super::units::{self, UnitIdentities};
use super::db::{args, Row, Tx};
use super::{ledger, list_page, now_ms, to_sql_count, Listed, Page, Store};
use crate::digest::UnitId;
use serde::{Deserialize, Serialize};

text_id! {
    /// The lower-case hex SHA-256 of a dataset's bytes.
    DatasetId, "sha256"
}

impl DatasetId {
    /// Validates 64 hex digits (either case; stored lower-case). A bad one is
    /// `InvalidArgument` naming `sha256`.
    pub fn parse(sha256: &str) -> Result<DatasetId> {
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::invalid("sha256", "must be 64 hex digits (the SHA-256 of the dataset's bytes)"));
        }
        Ok(DatasetId(sha256.to_ascii_lowercase()))
    }
}

/// What one privacy unit of the dataset is: the budget protects one unit's whole contribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrivacyUnit {
    /// One training example.
    Example,
    /// All examples of one user.
    User,
}

stored_names!(PrivacyUnit, "privacy_unit", { Example => "example", User => "user" });

/// A dataset to register.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewDataset {
    /// A name for people (not unique).
    pub name: String,
    /// Hex SHA-256 of the dataset's bytes: its identity.
    pub sha256: String,
    /// Where the daemon reads it.
    pub path: String,
    /// Number of privacy units N (examples or users).
    pub units: u64,
    /// What one unit is.
    pub privacy_unit: PrivacyUnit,
    /// The field whose value names a line's user: `Some` exactly when the unit is a user.
    pub user_field: Option<String>,
    /// Total epsilon all jobs on this dataset may spend (certified).
    pub budget_epsilon: f64,
    /// The delta at which the budget's epsilon is stated.
    pub budget_delta: f64,
    /// The keyed identity of each privacy unit (`units` of them), sorted and distinct.
    #[serde(skip)]
    pub unit_ids: Vec<UnitId>,
}

/// A registered dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dataset {
    /// SHA-256 of its bytes.
    pub id: DatasetId,
    /// Its owner.
    pub tenant: TenantId,
    /// A name for people.
    pub name: String,
    /// Where the daemon reads it.
    pub path: String,
    /// Number of privacy units N.
    pub units: u64,
    /// What one unit is.
    pub privacy_unit: PrivacyUnit,
    /// The field naming a line's user, for a user-level dataset. `None` for a user-level dataset
    /// registered before the store kept it, whose old sidecar file was missing, corrupt or
    /// inconsistent: no job can run on such a dataset (see [`Dataset::data_user_field`]).
    pub user_field: Option<String>,
    /// Epsilon budget (certified).
    pub budget_epsilon: f64,
    /// Delta of the budget.
    pub budget_delta: f64,
    /// When it was registered.
    pub created_at_unix_ms: i64,
    /// Whether its units' identities are known (always, for a dataset registered since they
    /// exist).
    pub unit_identities: UnitIdentities,
}

/// Longest user field name (the schema's CHECK says the same).
const MAX_USER_FIELD_BYTES: usize = 256;

/// A user field name the schema accepts: 1 to [`MAX_USER_FIELD_BYTES`] bytes.
fn user_field_fits(f: &str) -> bool {
    !f.is_empty() && f.len() <= MAX_USER_FIELD_BYTES
}

/// The columns [`Dataset::from_row`] reads, by name: every SELECT of a whole dataset lists these.
pub(crate) const DATASET_COLUMNS: &str =
    "sha256, tenant, name, path, units, privacy_unit, user_field, budget_epsilon, budget_delta, created_at_ms, unit_identities";

impl Dataset {
    pub(crate) fn from_row(row: &Row) -> Result<Dataset> {
        Ok(Dataset {
            id: row.get("sha256")?,
            tenant: row.get("tenant")?,
            name: row.get("name")?,
            path: row.get("path")?,
            units: row.get("units")?,
            privacy_unit: row.get("privacy_unit")?,
            user_field: row.get("user_field")?,
            budget_epsilon: row.get("budget_epsilon")?,
            budget_delta: row.get("budget_delta")?,
            created_at_unix_ms: row.get("created_at_ms")?,
            unit_identities: row.get("unit_identities")?,
        })
    }

    /// How the dataset's lines are grouped into privacy units: `None` for one unit per line,
    /// the user field for a user-level dataset. A user-level dataset whose field is unknown is
    /// `FailedPrecondition`: training it per line would state a guarantee about the wrong unit;
    /// so is a dataset whose units' identities are unknown or repeated ([`UnitIdentities`]).
    pub fn data_user_field(&self) -> Result<Option<&str>> {
        self.check_identities()?;
        self.data_user_field_unchecked()
    }

    /// [`Dataset::data_user_field`] whatever its units' identities (to assign them).
    pub fn data_user_field_unchecked(&self) -> Result<Option<&str>> {
        match (self.privacy_unit, self.user_field.as_deref()) {
            (PrivacyUnit::Example, _) => Ok(None),
            (PrivacyUnit::User, Some(f)) => Ok(Some(f)),
            (PrivacyUnit::User, None) => Err(StoreError::DatasetUnusable {
                dataset: self.id.clone(),
                reason: "it was registered with privacy unit USER before the daemon stored user fields, and its user_field \
                         record was missing, corrupt or inconsistent at the upgrade; no job runs on it rather than guess its \
                         privacy unit",
            }),
        }
    }
}

impl Dataset {
    /// `DatasetUnusable` unless every unit of the dataset has its identity and appears once.
    pub fn check_identities(&self) -> Result<()> {
        let reason = match self.unit_identities {
            UnitIdentities::Identified => return Ok(()),
            UnitIdentities::Pending => "its units have no identities yet (it was registered before the daemon kept them, which it \
                                       does at start-up); restart ewtuned to assign them",
            UnitIdentities::Unidentified => "its file was gone or unreadable when the daemon assigned identities to the units of \
                                             older datasets, so whose data it holds is unknown; put the file back under \
                                             datasets/<sha256>.jsonl and restart ewtuned. Until then its jobs and budget count \
                                             against every unit of this tenant",
            UnitIdentities::RepeatedRecords => "its file repeats a record, so that record's person would be trained on more than \
                                                once per pass; register the data again without repeats, or with user-level units",
        };
        Err(StoreError::DatasetUnusable { dataset: self.id.clone(), reason })
    }
}

impl NewDataset {
    /// Checks every field; the first failure is `InvalidArgument` naming it.
    fn validate(&self) -> Result<DatasetId> {
        if self.name.trim().is_empty() {
            return Err(StoreError::invalid("name", "must not be empty"));
        }
        let id = DatasetId::parse(&self.sha256)?;
        if self.path.is_empty() {
            return Err(StoreError::invalid("path", "must not be empty"));
        }
        if self.units < 1 {
            return Err(StoreError::invalid("units", "the number of privacy units must be >= 1"));
        }
        to_sql_count("units", self.units)?;
        match (self.privacy_unit, self.user_field.as_deref()) {
            (PrivacyUnit::User, None) => return Err(StoreError::invalid("user_field", "required when the privacy unit is a user")),
            (PrivacyUnit::Example, Some(_)) => return Err(StoreError::invalid("user_field", "only for a user-level dataset")),
            (_, Some(f)) if !user_field_fits(f) => return Err(StoreError::invalid("user_field", format!("must be 1 to {MAX_USER_FIELD_BYTES} bytes"))),
            _ => {}
        }
        if !(self.budget_epsilon.is_finite() && self.budget_epsilon > 0.0) {
            return Err(StoreError::invalid(
                "budget_epsilon",
                format!("must be a finite number > 0, got {}", self.budget_epsilon),
            ));
        }
        if !(self.budget_delta > 0.0 && self.budget_delta < 1.0) {
            return Err(StoreError::invalid("budget_delta", format!("must lie in (0, 1), got {}", self.budget_delta)));
        }
        units::check_distinct(&self.unit_ids)?;
        if self.unit_ids.len() as u64 != self.units {
            return Err(StoreError::invalid("unit identities", format!("{} identities for {} units", self.unit_ids.len(), self.units)));
        }
        Ok(id)
    }
}

impl Store {
    /// Registers a dataset for `tenant`, and its units join their classes in the same
    /// transaction (`units.rs`). The same SHA-256 twice for one tenant is `AlreadyExists` (its
    /// budget stays as first registered).
    pub fn register_dataset(&self, tenant: &TenantId, d: NewDataset) -> Result<Dataset> {
        let id = d.validate()?;
        let dataset = Dataset {
            id,
            tenant: tenant.clone(),
            name: d.name,
            path: d.path,
            units: d.units,
            privacy_unit: d.privacy_unit,
            user_field: d.user_field,
            budget_epsilon: d.budget_epsilon,
            budget_delta: d.budget_delta,
            created_at_unix_ms: now_ms(),
            unit_identities: UnitIdentities::Identified,
        };
        self.write(|tx| {
            // The tenant's ledger lock: its units' classes change, and with them what admission
            // composes (a tighter budget may now bind units of older datasets).
            if ledger::lock_if_known(tx, tenant)?.is_none() {
                return Err(StoreError::not_found("tenant", tenant.as_str()));
            }
            let inserted = tx.execute(
                "INSERT INTO datasets (sha256, tenant, name, path, units, privacy_unit, user_field, budget_epsilon, budget_delta, created_at_ms, unit_identities)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT (tenant, sha256) DO NOTHING",
                args![
                    dataset.id,
                    tenant,
                    dataset.name,
                    dataset.path,
                    to_sql_count("units", dataset.units)?,
                    dataset.privacy_unit.as_str(),
                    dataset.user_field,
                    dataset.budget_epsilon,
                    dataset.budget_delta,
                    dataset.created_at_unix_ms,
                    dataset.unit_identities,
                ],
            )?;
            if inserted == 0 {
                return Err(StoreError::AlreadyExists { kind: "dataset", id: dataset.id.to_string() });
            }
            units::join(tx, tenant, &dataset.id, &d.unit_ids)?;
            ledger::bump(tx, tenant)?;
            Ok(())
        })?;
        Ok(dataset)
    }

    /// The tenant's dataset `id`; `NotFound` if absent or another tenant's.
    pub fn get_dataset(&self, tenant: &TenantId, id: &DatasetId) -> Result<Dataset> {
        self.read(|tx| load(tx, tenant, id))
    }

    /// One page of the tenant's datasets, oldest first.
    pub fn list_datasets(&self, tenant: &TenantId, page: Page) -> Result<Listed<Dataset>> {
        self.read(|tx| {
            list_page(
                tx,
                &format!("SELECT {DATASET_COLUMNS}, rowid AS cursor FROM datasets WHERE tenant = ?3 AND rowid > ?1 ORDER BY rowid LIMIT ?2"),
                page,
                args![tenant],
                Dataset::from_row,
            )
        })
    }

    /// True when some tenant's dataset has these bytes (so their file must stay).
    pub fn dataset_file_in_use(&self, id: &DatasetId) -> Result<bool> {
        Ok(self.read(|tx| tx.query_first("SELECT 1 AS found FROM datasets WHERE sha256 = ?1 LIMIT 1", args![id], |_| Ok(())))?.is_some())
    }
}

impl Store {
    /// Version-3 upgrade of user-level datasets registered before the store kept their user
    /// field: `legacy_field(id, units)` reads the field the old sidecar file recorded and returns
    /// it only if it is trustworthy (the caller checks that it groups the data into the `units`
    /// counted at registration; `None` when missing, corrupt or inconsistent). A field found is
    /// set once; a dataset without one keeps `NULL` and [`Dataset::data_user_field`] refuses it.
    /// Returns (adopted, left unusable).
    pub fn adopt_legacy_user_fields(&self, legacy_field: impl Fn(&DatasetId, u64) -> Option<String>) -> Result<(usize, Vec<DatasetId>)> {
        self.write(|tx| {
            let pending = tx.query_map("SELECT tenant, sha256, units FROM datasets WHERE privacy_unit = 'user' AND user_field IS NULL", args![], |r| {
                Ok((r.get::<TenantId>("tenant")?, r.get::<DatasetId>("sha256")?, r.get::<u64>("units")?))
            })?;
            let (mut adopted, mut unusable) = (0, Vec::new());
            for (tenant, id, units) in pending {
                match legacy_field(&id, units).filter(|f| user_field_fits(f)) {
                    Some(field) => {
                        tx.execute("UPDATE datasets SET user_field = ?1 WHERE tenant = ?2 AND sha256 = ?3", args![field, tenant, id])?;
                        adopted += 1;
                    }
                    None => unusable.push(id),
                }
            }
            Ok((adopted, unusable))
        })
    }
}

/// The ids of every dataset of the tenant, sorted.
pub(crate) fn ids_of_tenant(tx: &mut Tx<'_>, tenant: &TenantId) -> Result<Vec<DatasetId>> {
    tx.query_map("SELECT sha256 FROM datasets WHERE tenant = ?1 ORDER BY sha256", args![tenant], |r| r.get("sha256"))
}

/// The tenant's dataset `id` on an open connection or transaction (`NotFound` otherwise).
pub(crate) fn load(tx: &mut Tx<'_>, tenant: &TenantId, id: &DatasetId) -> Result<Dataset> {
    tx.query_first(&format!("SELECT {DATASET_COLUMNS} FROM datasets WHERE tenant = ?1 AND sha256 = ?2"), args![tenant, id], Dataset::from_row)?
        .ok_or_else(|| StoreError::not_found("dataset", id.as_str()))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{new_dataset, Fixture};
    use super::*;

    #[test]
    fn register_get_list() {
        let fx = Fixture::new();
        let acme = fx.tenant("acme");
        let d1 = fx.store.register_dataset(&acme, new_dataset(1, 3.0)).unwrap();
        let mut upper = new_dataset(2, 1.0);
        upper.sha256 = upper.sha256.to_ascii_uppercase();
        upper.privacy_unit = PrivacyUnit::User;
        upper.user_field = Some("user".into());
        let d2 = fx.store.register_dataset(&acme, upper).unwrap();
        assert_eq!(d2.id, DatasetId::parse(&new_dataset(2, 1.0).sha256).unwrap(), "ids are stored lower-case");
        assert_eq!(fx.store.get_dataset(&acme, &d1.id).unwrap(), d1);
        assert_eq!(fx.store.get_dataset(&acme, &d2.id).unwrap().privacy_unit, PrivacyUnit::User);
        assert_eq!(fx.store.list_datasets(&acme, Page::default()).unwrap().items, vec![d1, d2]);
    }

    #[test]
    fn same_bytes_twice_is_refused_but_another_tenant_may_register_them() {
        let fx = Fixture::new();
        let (acme, globex) = (fx.tenant("acme"), fx.tenant("globex"));
        let first = fx.store.register_dataset(&acme, new_dataset(7, 1.0)).unwrap();
        let again = fx.store.register_dataset(&acme, new_dataset(7, 100.0)).unwrap_err();
        assert!(
            matches!(&again, StoreError::AlreadyExists { kind: "dataset", id } if *id == first.id.to_string()),
            "{again:?}"
        );
        assert_eq!(fx.store.get_dataset(&acme, &first.id).unwrap().budget_epsilon, 1.0, "budget not reset");
        let theirs = fx.store.register_dataset(&globex, new_dataset(7, 5.0)).unwrap();
        assert_eq!(theirs.id, first.id);
        assert_eq!(fx.store.get_dataset(&globex, &theirs.id).unwrap().budget_epsilon, 5.0);
        assert_eq!(fx.store.get_dataset(&acme, &first.id).unwrap().budget_epsilon, 1.0);
    }

    #[test]
    fn every_field_is_validated() {
        let fx = Fixture::new();
        let acme = fx.tenant("acme");
        let ok = new_dataset(3, 1.0);
        let cases = [
            ("name", NewDataset { name: " ".into(), ..ok.clone() }),
            ("sha256", NewDataset { sha256: "abc".into(), ..ok.clone() }),
            ("sha256", NewDataset { sha256: "g".repeat(64), ..ok.clone() }),
            ("path", NewDataset { path: String::new(), ..ok.clone() }),
            ("units", NewDataset { units: 0, ..ok.clone() }),
            ("units", NewDataset { units: u64::MAX, ..ok.clone() }),
            ("budget_epsilon", NewDataset { budget_epsilon: 0.0, ..ok.clone() }),
            ("budget_epsilon", NewDataset { budget_epsilon: f64::INFINITY, ..ok.clone() }),
            ("budget_epsilon", NewDataset { budget_epsilon: f64::NAN, ..ok.clone() }),
            ("budget_delta", NewDataset { budget_delta: 0.0, ..ok.clone() }),
            ("budget_delta", NewDataset { budget_delta: 1.0, ..ok.clone() }),
            ("budget_delta", NewDataset { budget_delta: f64::NAN, ..ok.clone() }),
        ];
        for (field, d) in cases {
            let err = fx.store.register_dataset(&acme, d).unwrap_err();
            assert!(matches!(err, StoreError::InvalidArgument { field: f, .. } if f == field), "{field}: {err:?}");
        }
        assert!(fx.store.list_datasets(&acme, Page::default()).unwrap().items.is_empty());
    }

    #[test]
    fn another_tenants_dataset_is_not_found() {
        let fx = Fixture::new();
        let (acme, globex) = (fx.tenant("acme"), fx.tenant("globex"));
        let d = fx.store.register_dataset(&acme, new_dataset(1, 1.0)).unwrap();
        assert!(matches!(fx.store.get_dataset(&globex, &d.id), Err(StoreError::NotFound { kind: "dataset", .. })));
        assert!(fx.store.list_datasets(&globex, Page::default()).unwrap().items.is_empty());
    }

    #[test]
    fn unknown_tenant_cannot_register() {
        let fx = Fixture::new();
        let ghost = TenantId::parse("ghost").unwrap();
        let err = fx.store.register_dataset(&ghost, new_dataset(1, 1.0)).unwrap_err();
        assert!(matches!(err, StoreError::NotFound { kind: "tenant", .. }), "{err:?}");
    }
}
