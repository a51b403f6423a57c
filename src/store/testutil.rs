//! Test fixtures of the store: a real SQLite file in a temp dir, tenants, datasets and jobs.

use super::{DatasetId, NewDataset, NewJob, PrivacyUnit, Store, TenantId};
use tempfile::TempDir;

/// A store on a fresh file in its own temp dir (removed on drop).
pub(crate) struct Fixture {
    pub(crate) store: Store,
    pub(crate) dir: TempDir,
}

impl Fixture {
    pub(crate) fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("ewtune.db")).unwrap();
        Fixture { store, dir }
    }

    /// Closes the store and opens the same file again, as a restarted daemon does.
    pub(crate) fn reopen(self) -> Fixture {
        let Fixture { store, dir } = self;
        let path = store.path().to_owned();
        drop(store);
        Fixture { store: Store::open(path).unwrap(), dir }
    }

    /// A tenant, created the way the daemon creates one: by issuing it a token.
    pub(crate) fn tenant(&self, name: &str) -> TenantId {
        let token = self.store.create_token(name).unwrap();
        self.store.authenticate(&token).unwrap().unwrap()
    }
}

/// A dataset whose bytes are `[seed]`, with budget (`budget_epsilon`, 1e-5).
pub(crate) fn new_dataset(seed: u8, budget_epsilon: f64) -> NewDataset {
    NewDataset {
        name: format!("dataset {seed}"),
        sha256: crate::digest::sha256_hex(&[seed]),
        path: format!("/data/{seed}.jsonl"),
        units: 10_000,
        privacy_unit: PrivacyUnit::Example,
        user_field: None,
        budget_epsilon,
        budget_delta: 1e-5,
        unit_ids: unit_ids(seed, 0..10_000),
    }
}

/// Unit identities `range` of group `seed`: the same (seed, i) is the same person in every
/// dataset of a tenant (sorted, distinct; derived by SHA-256, so reproducible).
pub(crate) fn unit_ids(seed: u8, range: std::ops::Range<u32>) -> Vec<crate::digest::UnitId> {
    let mut ids: Vec<crate::digest::UnitId> = range
        .map(|i| ring::digest::digest(&ring::digest::SHA256, &[&[seed][..], &i.to_le_bytes()].concat()).as_ref().try_into().unwrap())
        .collect();
    ids.sort_unstable();
    ids
}

pub(crate) fn new_job(dataset: &DatasetId, noise_multiplier: f64, sample_rate: f64, steps: u64) -> NewJob {
    NewJob {
        dataset: dataset.clone(),
        spec_json: r#"{"model": "gpt2", "fine_tune": {"lora": {"rank": 8}}}"#.into(),
        noise_multiplier,
        sample_rate,
        steps,
        canary_manifest_json: None,
    }
}

pub(crate) fn count_rows(store: &Store, table: &str) -> i64 {
    store.conn().query_row(&format!("SELECT count(*) AS n FROM {table}"), [], |r| r.get("n")).unwrap()
}
