//! Test fixtures of the store: a real database (a SQLite file in a temp dir, or with
//! `EWTUNE_TEST_STORE=postgres` a fresh database on a throwaway PostgreSQL cluster this test
//! process starts once), tenants, datasets and jobs. `scripts/test.sh` runs the store's tests
//! once per engine.

use super::db::args;
use super::scratch_postgres::ScratchPostgres;
use super::{Database, DatasetId, NewDataset, NewJob, PrivacyUnit, Result, Store, TenantId, Worker};
use std::sync::OnceLock;
use tempfile::TempDir;

/// A store on a fresh database (a file in its own temp dir, removed on drop).
pub(crate) struct Fixture {
    pub(crate) store: Store,
    pub(crate) dir: TempDir,
    pub(crate) database: Database,
}

/// The engine the store's tests run on: `EWTUNE_TEST_STORE=postgres`, else SQLite.
pub(crate) fn on_postgres() -> bool {
    std::env::var("EWTUNE_TEST_STORE").is_ok_and(|v| v == "postgres")
}

/// The cluster of this test process (started on first use; the watchdog removes it after).
pub(crate) fn cluster() -> &'static ScratchPostgres {
    static CLUSTER: OnceLock<ScratchPostgres> = OnceLock::new();
    CLUSTER.get_or_init(|| ScratchPostgres::start(false).expect("start a throwaway PostgreSQL cluster"))
}

impl Fixture {
    pub(crate) fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let database = if on_postgres() { Database::Postgres(cluster().fresh_database().unwrap()) } else { Database::Sqlite(dir.path().join("ewtune.db")) };
        let store = Store::connect(&database).unwrap();
        Fixture { store, dir, database }
    }

    /// Closes the store and opens the same database again, as a restarted daemon does.
    pub(crate) fn reopen(self) -> Fixture {
        let Fixture { store, dir, database } = self;
        drop(store);
        Fixture { store: Store::connect(&database).unwrap(), dir, database }
    }

    /// A database migrated to schema `version` only and given `sql` (rows an older ewtune
    /// wrote), then opened by this build (migrating the rest), as an upgraded daemon opens it.
    pub(crate) fn upgraded_from(version: usize, sql: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let database = if on_postgres() {
            let url = cluster().fresh_database().unwrap();
            let mut conn = super::db::Conn::Postgres(super::db::PgConn::connect(url.parse().unwrap()).unwrap());
            super::migrate::migrate_postgres_with(&mut conn, &super::migrate::POSTGRES_MIGRATIONS[..version]).unwrap();
            conn.transaction(super::db::Begin::Write, |tx| tx.batch(sql)).unwrap();
            Database::Postgres(url)
        } else {
            let path = dir.path().join("ewtune.db");
            let mut conn = rusqlite::Connection::open(&path).unwrap();
            super::migrate::migrate(&mut conn, &super::migrate::MIGRATIONS[..version]).unwrap();
            conn.execute_batch(sql).unwrap();
            Database::Sqlite(path)
        };
        let store = Store::connect(&database).unwrap();
        Fixture { store, dir, database }
    }

    /// Another daemon (`id`) on the same database.
    pub(crate) fn other_daemon(&self, id: &str) -> Store {
        self.daemon(id, Worker::DEFAULT_LEASE_MS)
    }

    /// A daemon `id` with a lease of `lease_ms` on the same database.
    pub(crate) fn daemon(&self, id: &str, lease_ms: i64) -> Store {
        Store::connect_as(&self.database, Worker { id: super::DaemonId::parse(id).unwrap(), lease_ms }).unwrap()
    }

    /// Runs raw SQL (`?N` placeholders) in one write, as a buggy or hostile writer would.
    pub(crate) fn raw(&self, sql: &str, params: &[&dyn super::db::ToValue]) -> Result<u64> {
        self.store.write(|tx| tx.execute(sql, params))
    }

    /// The first column `column` of every row of raw SQL.
    pub(crate) fn raw_column<T: super::db::FromValue>(&self, sql: &str, column: &'static str) -> Vec<T> {
        self.store.read(|tx| tx.query_map(sql, args![], |r| r.get(column))).unwrap()
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
    store.read(|tx| tx.query_one(&format!("SELECT count(*) AS n FROM {table}"), args![], |r| r.get("n"))).unwrap()
}

/// An error with its sources, as the engine worded them (a trigger's message is in a source).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
