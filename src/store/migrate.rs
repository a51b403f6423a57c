//! Opening the database and bringing its schema up to date, after mozilla's
//! `components/support/sql/src/open_database.rs` (application-services).
//!
//! * SQLite: the schema version lives in `PRAGMA user_version`; `migrations/NNNN_name.sql`
//!   number `k` takes a file from version `k - 1` to `k`. All pending steps run in ONE
//!   `BEGIN IMMEDIATE` transaction, so a failed step leaves the file exactly as it was.
//! * PostgreSQL: `migrations/postgres/NNNN_name.sql` expresses the same step `k` for
//!   PostgreSQL; the version is the largest row of `ewtune_schema`. All pending steps run in ONE
//!   transaction (PostgreSQL's DDL is transactional) that first takes a transaction-scoped
//!   advisory lock, so two daemons starting together never migrate at once: the second waits,
//!   then finds the schema current.
//! * A file whose version is newer than this build's is refused with
//!   [`StoreError::IncompatibleSchema`] before anything is written, and is never deleted or reset:
//!   it holds a privacy ledger.
//! * Connection pragmas (`journal_mode=WAL`, `synchronous=FULL`, `foreign_keys`, the busy
//!   timeout) are set outside the migration transaction: SQLite ignores or refuses
//!   `journal_mode` and `foreign_keys` changes inside a transaction (matrix-rust-sdk's
//!   `state_store.rs` notes the same for WAL).
//!
//! What this module does not own: the tables' meaning (see the `.sql` files and the
//! repository modules).

use super::db::{args, Begin, Conn};
use super::error::{Result, StoreError};
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use std::path::Path;
use std::time::Duration;

/// Migration `k` (1-based) takes the schema from version `k - 1` to `k`. Append only: a
/// released migration never changes.
pub(crate) const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_audits.sql"),
    include_str!("migrations/0003_hardening.sql"),
    include_str!("migrations/0004_outputs.sql"),
    include_str!("migrations/0005_units.sql"),
    include_str!("migrations/0006_audit_progress.sql"),
    include_str!("migrations/0007_leases.sql"),
    include_str!("migrations/0008_self_audits.sql"),
];

/// The same steps for PostgreSQL, one for one.
pub(crate) const POSTGRES_MIGRATIONS: &[&str] = &[
    include_str!("migrations/postgres/0001_init.sql"),
    include_str!("migrations/postgres/0002_audits.sql"),
    include_str!("migrations/postgres/0003_hardening.sql"),
    include_str!("migrations/postgres/0004_outputs.sql"),
    include_str!("migrations/postgres/0005_units.sql"),
    include_str!("migrations/postgres/0006_audit_progress.sql"),
    include_str!("migrations/postgres/0007_leases.sql"),
    include_str!("migrations/postgres/0008_self_audits.sql"),
];

/// The schema version this build writes and reads.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The advisory lock every PostgreSQL migration holds ("ewtune" in ASCII).
const MIGRATION_LOCK: i64 = 0x0065_7774_756e_65;

/// How long a writer waits for another connection's lock before failing with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens (creating it if absent) the database at `path`, refuses a newer schema, sets the
/// durability pragmas and migrates to [`SCHEMA_VERSION`].
/// A read-only connection to an already migrated store file.
pub(crate) fn open_reader(path: &Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|source| StoreError::Open { path: path.to_path_buf(), source })?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

pub(crate) fn open(path: &Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags)
        .map_err(|source| StoreError::Open { path: path.to_owned(), source })?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Refuse a newer file before any pragma below writes to it: switching a rollback-journal
    // file to WAL rewrites its header, and a refused file must stay byte for byte as it was.
    check_version(user_version(&conn)?, SCHEMA_VERSION)?;
    prepare(&conn)?;
    migrate(&mut conn, MIGRATIONS)?;
    Ok(conn)
}

/// Connection pragmas, outside any transaction.
fn prepare(conn: &Connection) -> Result<()> {
    // WAL: readers never block the writer, and a commit is one append to the log.
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get("journal_mode"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Pragma { pragma: "journal_mode", wanted: "wal", found: mode });
    }
    // FULL: a committed ledger write survives power loss, not only a process crash (in WAL
    // mode NORMAL may lose the last commits on power loss).
    conn.pragma_update(None, "synchronous", "FULL")?;
    // 64 MiB of page cache (SQLite's default is 2 MiB): a registration looks up every one of its
    // units' rows (`units.rs`), and a tenant's units table is about 60 bytes per unit.
    conn.pragma_update(None, "cache_size", -65536)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    let fk: bool = conn.pragma_query_value(None, "foreign_keys", |row| row.get("foreign_keys"))?;
    if !fk {
        return Err(StoreError::Pragma { pragma: "foreign_keys", wanted: "on", found: "off".into() });
    }
    Ok(())
}

/// Brings the schema from its current version to `migrations.len()`, in one immediate
/// transaction. A file already at that version is not written to.
pub(crate) fn migrate(conn: &mut Connection, migrations: &[&str]) -> Result<()> {
    let supported = migrations.len() as i64;
    if user_version(conn)? == supported {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Read again under the write lock: another process may have migrated in between.
    let found = user_version(&tx)?;
    check_version(found, supported)?;
    for (index, sql) in migrations.iter().enumerate().skip(found as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index as i64 + 1)?;
    }
    tx.commit()?;
    Ok(())
}

/// Brings a PostgreSQL database to [`SCHEMA_VERSION`] (see the module documentation).
pub(crate) fn migrate_postgres(conn: &mut Conn) -> Result<()> {
    migrate_postgres_with(conn, POSTGRES_MIGRATIONS)
}

pub(crate) fn migrate_postgres_with(conn: &mut Conn, migrations: &[&str]) -> Result<()> {
    let supported = migrations.len() as i64;
    conn.transaction(Begin::Write, |tx| {
        tx.query_one("SELECT pg_advisory_xact_lock(?1) IS NULL AS locked", args![MIGRATION_LOCK], |_| Ok(()))?;
        let exists = tx.query_one("SELECT to_regclass('ewtune_schema') IS NOT NULL AS e", args![], |r| r.get::<bool>("e"))?;
        let found = if exists {
            tx.query_one("SELECT COALESCE(max(version), 0) AS v FROM ewtune_schema", args![], |r| r.get::<i64>("v"))?
        } else {
            0
        };
        check_version(found, supported)?;
        if found == supported {
            return Ok(());
        }
        if !exists {
            tx.batch(
                "CREATE TABLE ewtune_schema (version BIGINT NOT NULL PRIMARY KEY CHECK (version >= 1), migrated_at_ms BIGINT NOT NULL)",
            )?;
        }
        for (index, sql) in migrations.iter().enumerate().skip(found as usize) {
            tx.batch(sql)?;
            tx.execute("INSERT INTO ewtune_schema (version, migrated_at_ms) VALUES (?1, ?2)", args![index as i64 + 1, super::now_ms()])?;
        }
        Ok(())
    })
}

/// The schema version of a PostgreSQL database (0 when ewtune never migrated it).
#[cfg(test)]
pub(crate) fn postgres_version(conn: &mut Conn) -> Result<i64> {
    conn.transaction(Begin::Read, |tx| {
        if !tx.query_one("SELECT to_regclass('ewtune_schema') IS NOT NULL AS e", args![], |r| r.get::<bool>("e"))? {
            return Ok(0);
        }
        tx.query_one("SELECT COALESCE(max(version), 0) AS v FROM ewtune_schema", args![], |r| r.get::<i64>("v"))
    })
}

/// `PRAGMA user_version`.
pub(crate) fn user_version(conn: &Connection) -> Result<i64> {
    Ok(conn.pragma_query_value(None, "user_version", |row| row.get("user_version"))?)
}

fn check_version(found: i64, supported: i64) -> Result<()> {
    if found > supported || found < 0 {
        return Err(StoreError::IncompatibleSchema { found, supported });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every schema object (type, name, SQL), sorted: equal dumps mean equal schemas.
    fn schema(conn: &Connection) -> Vec<(String, String, Option<String>)> {
        let mut stmt = conn
            .prepare("SELECT type, name, sql FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get("type")?, r.get("name")?, r.get("sql")?))).unwrap().collect::<rusqlite::Result<_>>().unwrap()
    }

    #[test]
    fn fresh_file_gets_the_current_schema_and_pragmas() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join("ewtune.db")).unwrap();
        assert_eq!(user_version(&conn).unwrap(), SCHEMA_VERSION);
        let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get("journal_mode")).unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = conn.pragma_query_value(None, "synchronous", |r| r.get("synchronous")).unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
        let names: Vec<String> =
            schema(&conn).into_iter().filter(|(t, _, _)| t == "table").map(|(_, n, _)| n).collect();
        assert_eq!(
            names,
            [
                "audits",
                "canary_manifests",
                "datasets",
                "job_events",
                "job_outputs",
                "job_self_audits",
                "jobs",
                "report_sequences",
                "tenant_unit_secrets",
                "tenants",
                "tokens",
                "unit_class_datasets",
                "unit_classes",
                "units"
            ]
        );
    }

    #[test]
    fn migration_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ewtune.db");
        let mut conn = open(&path).unwrap();
        conn.execute("INSERT INTO tenants (name, created_at_ms) VALUES ('acme', 1)", []).unwrap();
        let before = schema(&conn);
        let changes_before = conn.total_changes();
        migrate(&mut conn, MIGRATIONS).unwrap();
        assert_eq!(conn.total_changes(), changes_before, "an up-to-date file is not written to");
        drop(conn);
        let conn = open(&path).unwrap();
        assert_eq!(schema(&conn), before);
        assert_eq!(user_version(&conn).unwrap(), SCHEMA_VERSION);
        let n: i64 = conn.query_row("SELECT count(*) AS n FROM tenants", [], |r| r.get("n")).unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn stepwise_upgrade_equals_fresh_schema() {
        // mozilla's assert_schema_matches_new_database: upgrading from every older version one
        // migration at a time ends at the same schema as a fresh file.
        let dir = tempfile::tempdir().unwrap();
        let fresh = open(&dir.path().join("fresh.db")).unwrap();
        for start in 0..MIGRATIONS.len() {
            let mut conn = Connection::open(dir.path().join(format!("from{start}.db"))).unwrap();
            migrate(&mut conn, &MIGRATIONS[..start]).unwrap();
            assert_eq!(user_version(&conn).unwrap(), start as i64);
            migrate(&mut conn, MIGRATIONS).unwrap();
            assert_eq!(schema(&conn), schema(&fresh), "upgrade from version {start}");
        }
    }

    #[test]
    fn failed_migration_keeps_data_and_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ewtune.db");
        let mut conn = Connection::open(&path).unwrap();
        prepare(&conn).unwrap();
        migrate(&mut conn, &MIGRATIONS[..1]).unwrap();
        conn.execute("INSERT INTO tenants (name, created_at_ms) VALUES ('acme', 1)", []).unwrap();
        let broken = [MIGRATIONS[0], "CREATE TABLE half_done (id TEXT); DROP TABLE tenants; THIS IS NOT SQL;"];
        assert!(matches!(migrate(&mut conn, &broken), Err(StoreError::Sqlite { .. })));
        assert_eq!(user_version(&conn).unwrap(), 1);
        let n: i64 = conn.query_row("SELECT count(*) AS n FROM tenants", [], |r| r.get("n")).unwrap();
        assert_eq!(n, 1, "the failed step rolled back");
        let half_done: i64 =
            conn.query_row("SELECT count(*) AS n FROM sqlite_schema WHERE name = 'half_done'", [], |r| r.get("n")).unwrap();
        assert_eq!(half_done, 0);
    }

    #[test]
    fn newer_schema_is_refused_and_left_byte_identical() {
        for wal in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("ewtune.db");
            {
                let conn = Connection::open(&path).unwrap();
                if wal {
                    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
                }
                conn.execute_batch("CREATE TABLE future (x INTEGER); INSERT INTO future VALUES (42);").unwrap();
                conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
            }
            let before = std::fs::read(&path).unwrap();
            let err = open(&path).unwrap_err();
            assert!(
                matches!(err, StoreError::IncompatibleSchema { found, supported } if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
                "{err:?}"
            );
            assert_eq!(std::fs::read(&path).unwrap(), before, "the refused file is unchanged (wal = {wal})");
            let conn = Connection::open(&path).unwrap();
            let x: i64 = conn.query_row("SELECT x FROM future", [], |r| r.get("x")).unwrap();
            assert_eq!(x, 42);
        }
    }

    /// PostgreSQL: the same steps, one for one, each applied once under the migration lock.
    mod postgres {
        use super::super::super::db::{Begin, Conn, PgConn};
        use super::super::super::testutil::cluster;
        use super::super::*;

        fn connect(url: &str) -> Conn {
            Conn::Postgres(PgConn::connect(url.parse().unwrap()).unwrap())
        }

        /// Every table with its columns and their types, and every trigger: equal dumps mean
        /// equal schemas.
        fn schema(conn: &mut Conn) -> Vec<String> {
            conn.transaction(Begin::Read, |tx| {
                let mut rows = tx.query_map(
                    "SELECT table_name || '.' || column_name || ' ' || data_type AS d FROM information_schema.columns WHERE table_schema = 'public'
                     UNION ALL SELECT event_object_table || ' trigger ' || trigger_name || ' ' || event_manipulation AS d FROM information_schema.triggers
                     UNION ALL SELECT 'check ' || conname AS d FROM pg_constraint WHERE connamespace = 'public'::regnamespace",
                    crate::store::db::args![],
                    |r| r.get::<String>("d"),
                )?;
                rows.sort();
                Ok(rows)
            })
            .unwrap()
        }

        #[test]
        fn both_engines_have_the_same_steps() {
            assert_eq!(POSTGRES_MIGRATIONS.len(), MIGRATIONS.len());
        }

        #[test]
        fn stepwise_upgrade_equals_fresh_schema_and_repeats_are_no_ops() {
            let fresh_url = cluster().fresh_database().unwrap();
            let mut fresh = connect(&fresh_url);
            migrate_postgres(&mut fresh).unwrap();
            assert_eq!(postgres_version(&mut fresh).unwrap(), SCHEMA_VERSION);
            let expected = schema(&mut fresh);
            migrate_postgres(&mut fresh).unwrap();
            assert_eq!(schema(&mut fresh), expected);
            for start in 0..POSTGRES_MIGRATIONS.len() {
                let mut conn = connect(&cluster().fresh_database().unwrap());
                migrate_postgres_with(&mut conn, &POSTGRES_MIGRATIONS[..start]).unwrap();
                assert_eq!(postgres_version(&mut conn).unwrap(), start as i64);
                migrate_postgres(&mut conn).unwrap();
                assert_eq!(schema(&mut conn), expected, "upgrade from version {start}");
            }
        }

        #[test]
        fn daemons_starting_together_migrate_once() {
            let url = cluster().fresh_database().unwrap();
            let results: Vec<Result<()>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..4).map(|_| s.spawn(|| migrate_postgres(&mut connect(&url)))).collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert!(results.iter().all(Result::is_ok), "{results:?}");
            let mut conn = connect(&url);
            let steps = conn
                .transaction(Begin::Read, |tx| tx.query_one("SELECT count(*) AS n FROM ewtune_schema", crate::store::db::args![], |r| r.get::<i64>("n")))
                .unwrap();
            assert_eq!(steps, SCHEMA_VERSION, "each step recorded once");
        }

        #[test]
        fn newer_schema_and_failed_steps_leave_the_database_as_it_was() {
            let url = cluster().fresh_database().unwrap();
            let mut conn = connect(&url);
            migrate_postgres_with(&mut conn, &POSTGRES_MIGRATIONS[..1]).unwrap();
            conn.transaction(Begin::Write, |tx| tx.batch("INSERT INTO tenants (name, created_at_ms) VALUES ('acme', 1)")).unwrap();
            let broken = [POSTGRES_MIGRATIONS[0], "CREATE TABLE half_done (id TEXT); DROP TABLE tenants CASCADE; THIS IS NOT SQL;"];
            assert!(matches!(migrate_postgres_with(&mut conn, &broken), Err(StoreError::Postgres { .. })));
            assert_eq!(postgres_version(&mut conn).unwrap(), 1);
            let before = schema(&mut conn);
            assert!(!before.iter().any(|d| d.starts_with("half_done")), "the failed step rolled back");
            conn.transaction(Begin::Write, |tx| tx.batch("INSERT INTO ewtune_schema (version, migrated_at_ms) VALUES (99, 1)")).unwrap();
            let err = migrate_postgres(&mut conn).unwrap_err();
            assert!(matches!(err, StoreError::IncompatibleSchema { found: 99, .. }), "{err:?}");
            assert_eq!(schema(&mut conn), before, "a newer database is left untouched");
        }
    }
}
