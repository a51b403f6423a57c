//! Dataset registration: a registration is checked whole before anything is written: the
//! fields first, then (on the CPU pool, under the client's deadline) every line parsed and the
//! bytes hashed, then whether this tenant registered the same bytes before. Only then is the
//! file written, through a unique temp file renamed into place ([`crate::fs`]), and the row
//! inserted; a registration that fails after the write removes the file again unless another
//! row uses it. Files are content-addressed (`datasets/<sha256>.jsonl`), so two tenants with the
//! same bytes share one file; how its lines are grouped into privacy units is in each tenant's
//! own row, never in a shared file.

use super::error::{Kind, ServiceError};
use super::jobs::dataset_file;
use super::limits::{self, invalid};
use super::State;
use crate::store::{Dataset, DatasetId, FoundIdentities, NewDataset, PrivacyUnit, Store, StoreError, TenantId, UnitIdentities, UnitsLeft};
use crate::train::data::{count_units, read_records, DataConfig};
use crate::train::units::{unit_identities, UnitKey};
use std::sync::Arc;
use std::time::Instant;

/// The budget a dataset may be registered with.
const BUDGET_EPSILON: (f64, f64) = (1e-3, 1000.0);
const BUDGET_DELTA: (f64, f64) = (1e-15, 0.1);

/// A registration as the client sends it, before any check.
pub struct Registration {
    /// A name for people.
    pub name: String,
    /// Example- or user-level privacy.
    pub privacy_unit: PrivacyUnit,
    /// The JSON field naming each record's user (user-level only; empty otherwise).
    pub user_field: String,
    /// The budget's epsilon.
    pub budget_epsilon: f64,
    /// The budget's delta.
    pub budget_delta: f64,
    /// The JSONL bytes.
    pub content: Vec<u8>,
}

/// Registers `r` for `tenant`: checks, parses and hashes it on the CPU pool before `deadline`,
/// then writes the file and records the row, one registration at a time.
pub async fn register(state: &Arc<State>, tenant: &TenantId, deadline: Instant, r: Registration) -> Result<(Dataset, UnitsLeft), ServiceError> {
    let name = limits::name("name", &r.name)?;
    let unit = r.privacy_unit;
    let user_field = match unit {
        PrivacyUnit::User if r.user_field.is_empty() => return Err(invalid("user_field", "required when privacy_unit is USER")),
        PrivacyUnit::User => Some(limits::key("user_field", &r.user_field)?),
        PrivacyUnit::Example if !r.user_field.is_empty() => return Err(invalid("user_field", "only for privacy_unit USER")),
        PrivacyUnit::Example => None,
    };
    let budget_epsilon = limits::in_range("budget_epsilon", r.budget_epsilon, BUDGET_EPSILON)?;
    let budget_delta = limits::in_range("budget_delta", r.budget_delta, BUDGET_DELTA)?;
    let content = r.content;
    let cfg = DataConfig { user_field: user_field.clone(), ..DataConfig::default() };
    let started = Instant::now();
    let t = tenant.clone();
    let secret = super::blocking(state, move |state| Ok::<_, ServiceError>(state.store.unit_secret(&t)?)).await?;
    let (content, sha, units, unit_ids) = state
        .cpu
        .run(tenant, deadline, move || {
            let text = std::str::from_utf8(&content).map_err(|e| invalid("content", format!("not UTF-8 (at byte {})", e.valid_up_to())))?;
            let records = read_records(std::path::Path::new("content"), text, &cfg).map_err(|e| invalid("content", e.without_paths()))?;
            let units = count_units(&records) as u64;
            let identities = unit_identities(&records, &UnitKey::from_secret(&secret));
            if let Some((first, again)) = identities.repeated {
                return Err(invalid(
                    "content",
                    format!(
                        "line {again} repeats the record of line {first} (the same text up to whitespace and field order): one \
                         person's record twice would be trained on twice per pass under a guarantee for once; remove the repeat, \
                         or register the data with privacy_unit USER"
                    ),
                ));
            }
            debug_assert_eq!(identities.units.len() as u64, units);
            let sha = crate::digest::sha256_hex(&content);
            Ok::<_, ServiceError>((content, sha, units, identities.units))
        })
        .await??;
    let parsed = started.elapsed();
    let id = DatasetId::parse(&sha)?;
    let path = dataset_file(state, &id);
    let new = NewDataset {
        name,
        sha256: sha,
        path: path.display().to_string(),
        units,
        privacy_unit: unit,
        user_field,
        budget_epsilon,
        budget_delta,
        unit_ids,
    };

    // Write-and-record, one registration at a time (the parsing above runs in parallel). The
    // guard moves into the blocking work: a client that hangs up cannot release it early.
    let serial = state.dataset_writes.clone().lock_owned().await;
    let t = tenant.clone();
    let (d, left) = super::blocking(state, move |state| {
        let _serial = serial;
        match state.store.get_dataset(&t, &id) {
            Ok(_) => return Err(StoreError::AlreadyExists { kind: "dataset", id: id.to_string() }.into()),
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let wrote = !path.exists();
        if wrote {
            crate::fs::write_atomic(&path, &content).map_err(|e| {
                tracing::error!(error = %e, "cannot store a dataset");
                ServiceError::new(Kind::Internal, "the daemon cannot store the dataset; see its log")
            })?;
        }
        drop(content);
        let written = started.elapsed();
        let d = state
            .store
            .register_dataset(&t, new)
            .inspect_err(|_| {
                if wrote && !state.store.dataset_file_in_use(&id).unwrap_or(true) {
                    let _ = std::fs::remove_file(&path);
                }
            })
            .map_err(ServiceError::from)?;
        let recorded = started.elapsed();
        let left = state.store.units_left(&t, &id)?;
        tracing::debug!(?parsed, ?written, ?recorded, total = ?started.elapsed(), "registration timings (parse and hash, file written, row and units recorded)");
        Ok::<_, ServiceError>((d, left))
    })
    .await?;
    tracing::info!(tenant = %tenant.as_str(), dataset = %d.id.as_str(), units, "dataset registered");
    Ok((d, left))
}

/// Gives the units of datasets registered before units had identities (or whose file was
/// missing at an earlier start-up) their identities, from the stored files, one dataset per
/// transaction. A file that is gone, unreadable, or no longer groups into the units counted at
/// registration leaves the dataset unidentified: no job runs on it, and its jobs and budget
/// count against every unit of its tenant, never assumed disjoint. The log says which.
pub(crate) fn identify_old_datasets(store: &Store, datasets_dir: &std::path::Path) -> Result<(), StoreError> {
    for d in store.datasets_without_identities()? {
        let key = UnitKey::from_secret(&store.unit_secret(&d.tenant)?);
        let found = read_identities(&datasets_dir.join(format!("{}.jsonl", d.id)), &d, &key);
        let state = store.assign_identities(&d.tenant, &d.id, found)?;
        match state {
            UnitIdentities::Identified => tracing::info!(dataset = %d.id, "old dataset: its units have their identities"),
            UnitIdentities::RepeatedRecords => tracing::warn!(dataset = %d.id, "old dataset repeats a record: its units are known, but no new job will run on it"),
            UnitIdentities::Unidentified | UnitIdentities::Pending => tracing::warn!(
                dataset = %d.id,
                "old dataset's file is gone, unreadable or changed: its units are unknown, no job will run on it, and its spend counts against every unit of its tenant"
            ),
        }
    }
    Ok(())
}

/// The identities of the units in `path` read as `d` was registered, or `Unreadable` when the
/// file is gone, does not parse, or no longer groups into `d.units` units.
fn read_identities(path: &std::path::Path, d: &Dataset, key: &UnitKey) -> FoundIdentities {
    let Ok(user_field) = d.data_user_field_unchecked() else {
        return FoundIdentities::Unreadable;
    };
    let Ok(bytes) = std::fs::read(path) else {
        return FoundIdentities::Unreadable;
    };
    if crate::digest::sha256_hex(&bytes) != d.id.as_str() {
        return FoundIdentities::Unreadable;
    }
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return FoundIdentities::Unreadable;
    };
    let cfg = DataConfig { user_field: user_field.map(str::to_string), ..DataConfig::default() };
    let Ok(records) = read_records(std::path::Path::new("dataset"), text, &cfg) else {
        return FoundIdentities::Unreadable;
    };
    let identities = unit_identities(&records, key);
    if count_units(&records) as u64 != d.units {
        return FoundIdentities::Unreadable;
    }
    FoundIdentities::Read { units: identities.units, repeated_records: identities.repeated.is_some() }
}
