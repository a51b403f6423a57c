//! Privacy units and their classes: the grouping that lets the ledger follow people rather than
//! files (`0005_units.sql`, docs/accounting.md, "Budgets follow the person").
//!
//! Each tenant has a secret (32 bytes from ring's `SystemRandom`, made on first use, never
//! changed) under which the service computes its units' identities (`train::units`). The store
//! keeps each identity once per tenant with its class: the set of the tenant's datasets that
//! contain the unit. Registering a dataset moves every unit it contains from its class `S` to
//! `S + {dataset}` (new units start in `{dataset}`), in the transaction that inserts the
//! dataset, so a crash leaves either both or neither. The ledger composes per class.
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
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let stored: Option<Vec<u8>> =
            tx.query_row("SELECT secret FROM tenant_unit_secrets WHERE tenant = ?1", [tenant], |r| r.get("secret")).optional()?;
        let secret = match stored {
            Some(bytes) => bytes.try_into().map_err(|_| StoreError::Corrupt { column: "secret", value: "not 32 bytes".into() })?,
            None => {
                let known = tx.query_row("SELECT 1 FROM tenants WHERE name = ?1", [tenant], |_| Ok(())).optional()?.is_some();
                if !known {
                    return Err(StoreError::not_found("tenant", tenant.as_str()));
                }
                let mut secret = [0u8; SECRET_BYTES];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret).map_err(|_| StoreError::Random)?;
                tx.execute(
                    "INSERT INTO tenant_unit_secrets (tenant, secret, created_at_ms) VALUES (?1, ?2, ?3)",
                    params![tenant, &secret[..], now_ms()],
                )?;
                secret
            }
        };
        tx.commit()?;
        Ok(secret)
    }

    /// Every dataset, of every tenant, whose units are not known yet or were not readable at
    /// the last start-up (start-up tries them again: a restored file is identified).
    pub fn datasets_without_identities(&self) -> Result<Vec<Dataset>> {
        let conn = self.reader();
        let mut stmt = conn.prepare(&format!(
            "SELECT {} FROM datasets WHERE unit_identities IN ('pending', 'unidentified') ORDER BY rowid",
            super::datasets::DATASET_COLUMNS
        ))?;
        let rows = stmt.query_map([], Dataset::from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records what start-up found for an old dataset: its units join their classes, or it is
    /// marked unidentified. A dataset whose units became known meanwhile is left as it is.
    pub fn assign_identities(&self, tenant: &TenantId, dataset: &DatasetId, found: FoundIdentities) -> Result<UnitIdentities> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current = super::datasets::load(&tx, tenant, dataset)?.unit_identities;
        if current.known() {
            return Ok(current);
        }
        let state = match found {
            FoundIdentities::Read { units, repeated_records } => {
                check_distinct(&units)?;
                join(&tx, tenant, dataset, &units)?;
                if repeated_records {
                    UnitIdentities::RepeatedRecords
                } else {
                    UnitIdentities::Identified
                }
            }
            FoundIdentities::Unreadable => UnitIdentities::Unidentified,
        };
        tx.execute("UPDATE datasets SET unit_identities = ?3 WHERE tenant = ?1 AND sha256 = ?2", params![tenant, dataset, state])?;
        tx.commit()?;
        Ok(state)
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
pub(crate) fn join(tx: &Transaction<'_>, tenant: &TenantId, dataset: &DatasetId, units: &[UnitId]) -> Result<u64> {
    let mut by_class: BTreeMap<Option<i64>, Vec<&UnitId>> = BTreeMap::new();
    {
        let mut lookup = tx.prepare_cached("SELECT class FROM units WHERE tenant = ?1 AND unit = ?2")?;
        for unit in units {
            let class: Option<i64> = lookup.query_row(params![tenant, &unit[..]], |r| r.get("class")).optional()?;
            by_class.entry(class).or_default().push(unit);
        }
    }
    let mut known = 0;
    for (old, members) in by_class {
        let count = members.len() as i64;
        let mut datasets = match old {
            Some(id) => parse_signature(&tx.query_row("SELECT datasets FROM unit_classes WHERE id = ?1", [id], |r| r.get::<_, String>("datasets"))?)?,
            None => Vec::new(),
        };
        if let Err(at) = datasets.binary_search(dataset) {
            datasets.insert(at, dataset.clone());
        }
        let class: i64 = tx.query_row(
            "INSERT INTO unit_classes (tenant, datasets, units) VALUES (?1, ?2, ?3) RETURNING id",
            params![tenant, signature(&datasets), count],
            |r| r.get("id"),
        )?;
        {
            let mut member = tx.prepare_cached("INSERT INTO unit_class_datasets (tenant, dataset, class) VALUES (?1, ?2, ?3)")?;
            for d in &datasets {
                member.execute(params![tenant, d, class])?;
            }
        }
        match old {
            Some(old) => {
                known += count as u64;
                let mut moved = tx.prepare_cached("UPDATE units SET class = ?3 WHERE tenant = ?1 AND unit = ?2")?;
                for unit in &members {
                    moved.execute(params![tenant, &unit[..], class])?;
                }
                let left: i64 = tx.query_row("UPDATE unit_classes SET units = units - ?2 WHERE id = ?1 AND units > ?2 RETURNING units", params![old, count], |r| r.get("units")).optional()?.unwrap_or(0);
                if left == 0 {
                    tx.execute("DELETE FROM unit_classes WHERE id = ?1", [old])?;
                }
            }
            None => {
                let mut added = tx.prepare_cached("INSERT INTO units (tenant, unit, class) VALUES (?1, ?2, ?3)")?;
                for unit in &members {
                    added.execute(params![tenant, &unit[..], class])?;
                }
            }
        }
    }
    Ok(known)
}

/// The classes of units in the tenant's `dataset`.
pub(crate) fn classes_of(conn: &Connection, tenant: &TenantId, dataset: &DatasetId) -> Result<Vec<UnitClass>> {
    let mut stmt = conn.prepare_cached(
        "SELECT c.units AS units, c.datasets AS datasets FROM unit_class_datasets m JOIN unit_classes c ON c.id = m.class
         WHERE m.tenant = ?1 AND m.dataset = ?2 ORDER BY c.id",
    )?;
    let rows = stmt.query_map(params![tenant, dataset], |r| Ok((r.get::<_, u64>("units")?, r.get::<_, String>("datasets")?)))?;
    let mut classes = Vec::new();
    for row in rows {
        let (units, datasets) = row?;
        classes.push(UnitClass { units, datasets: parse_signature(&datasets)? });
    }
    Ok(classes)
}

/// The tenant's datasets whose units are unknown (pending or unidentified): their people may
/// be anyone's, so the ledger counts them in every class.
pub(crate) fn unidentified(conn: &Connection, tenant: &TenantId) -> Result<Vec<DatasetId>> {
    let mut stmt = conn.prepare_cached(
        "SELECT sha256 FROM datasets WHERE tenant = ?1 AND unit_identities IN ('pending', 'unidentified') ORDER BY sha256",
    )?;
    let rows = stmt.query_map([tenant], |r| r.get("sha256"))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
