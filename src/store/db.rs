//! The store's one narrow interface to its database engine: a connection to SQLite (the embedded
//! default, one daemon) or PostgreSQL (several daemons on one ledger), transactions, and rows
//! read by column name.
//!
//! Store code writes each statement once, with `?N` placeholders, in the SQL both engines
//! share (`ON CONFLICT`, `RETURNING`, `COALESCE`, `CAST`); PostgreSQL gets `$N`. The few places
//! where the engines differ ask the [`Dialect`] (`FOR UPDATE`, `SKIP LOCKED`, hex of a blob).
//! Values cross as [`Value`] (NULL, 64-bit integer, double, text, bytes), so an integer column
//! is `INTEGER` in SQLite and `BIGINT` in PostgreSQL and reads back the same.
//!
//! Transactions: [`Begin::Write`] is `BEGIN IMMEDIATE` on SQLite (the file's one write lock,
//! taken before the first read) and `READ COMMITTED` on PostgreSQL, where each write takes the
//! row locks it needs (`Tx::lock_ledger` for a tenant's budget, `FOR UPDATE` on a job);
//! [`Begin::Read`] is a snapshot (a deferred transaction; `REPEATABLE READ READ ONLY`).
//!
//! PostgreSQL is reached with the synchronous `postgres` client, which drives its own small
//! runtime: [`outside_runtime`] steps off a tokio worker first, so a call from async code blocks
//! that worker's slot, never the runtime. A lost connection is reopened on the next use; while
//! the server cannot be reached every call fails with [`StoreError::Unavailable`].

use super::error::{Result, StoreError};
use std::collections::HashMap;
use std::sync::Arc;

/// One SQL value, as both engines store it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// A Rust value bound to a `?N` placeholder.
pub(crate) trait ToValue {
    fn to_value(&self) -> Value;
}

/// A Rust value read from a column; `column` names it in a `Corrupt` error.
pub(crate) trait FromValue: Sized {
    fn from_value(column: &'static str, value: &Value) -> Result<Self>;
}

/// The arguments of one statement: `args![a, b]` binds `a` to `?1` and `b` to `?2`.
macro_rules! args {
    ($($x:expr),* $(,)?) => {
        &[$(&$x as &dyn $crate::store::db::ToValue),*] as &[&dyn $crate::store::db::ToValue]
    };
}
pub(crate) use args;

impl ToValue for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}

impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::Null, ToValue::to_value)
    }
}

impl ToValue for i64 {
    fn to_value(&self) -> Value {
        Value::Int(*self)
    }
}

impl ToValue for u32 {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}

impl ToValue for usize {
    fn to_value(&self) -> Value {
        Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}

impl ToValue for f64 {
    fn to_value(&self) -> Value {
        Value::Real(*self)
    }
}

impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_owned())
    }
}

impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}

impl ToValue for [u8] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}

impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}

impl<const N: usize> ToValue for [u8; N] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}

/// The `Corrupt` error for `value` read from `column`.
pub(crate) fn corrupt(column: &'static str, value: &Value) -> StoreError {
    let value = match value {
        Value::Null => "NULL".to_owned(),
        Value::Int(i) => i.to_string(),
        Value::Real(f) => f.to_string(),
        Value::Text(s) => s.clone(),
        Value::Blob(b) => format!("{} bytes", b.len()),
    };
    StoreError::Corrupt { column, value }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(column: &'static str, value: &Value) -> Result<Self> {
        match value {
            Value::Null => Ok(None),
            v => T::from_value(column, v).map(Some),
        }
    }
}

impl FromValue for i64 {
    fn from_value(column: &'static str, value: &Value) -> Result<Self> {
        match value {
            Value::Int(i) => Ok(*i),
            v => Err(corrupt(column, v)),
        }
    }
}

/// A count or size: negative is `Corrupt`.
impl FromValue for u64 {
    fn from_value(column: &'static str, value: &Value) -> Result<Self> {
        match value {
            Value::Int(i) if *i >= 0 => Ok(*i as u64),
            v => Err(corrupt(column, v)),
        }
    }
}

/// A flag stored as 0 or 1.
impl FromValue for bool {
    fn from_value(column: &'static str, value: &Value) -> Result<Self> {
        match value {
            Value::Int(0) => Ok(false),
            Value::Int(1) => Ok(true),
            v => Err(corrupt(column, v)),
        }
    }
}

impl FromValue for f64 {
    fn from_value(column: &'static str, value: &Value) -> Result<Self> {
        match value {
            Value::Real(f) => Ok(*f),
            // SQLite hands back a REAL that holds a whole number as written; both are exact.
            Value::Int(i) => Ok(*i as f64),
            v => Err(corrupt(column, v)),
        }
    }
}

impl FromValue for String {
    fn from_value(column: &'static str, value: &Value) -> Result<Self> {
        match value {
            Value::Text(s) => Ok(s.clone()),
            v => Err(corrupt(column, v)),
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(column: &'static str, value: &Value) -> Result<Self> {
        match value {
            Value::Blob(b) => Ok(b.clone()),
            v => Err(corrupt(column, v)),
        }
    }
}

impl<const N: usize> FromValue for [u8; N] {
    fn from_value(column: &'static str, value: &Value) -> Result<Self> {
        match value {
            Value::Blob(b) => b.as_slice().try_into().map_err(|_| corrupt(column, value)),
            v => Err(corrupt(column, v)),
        }
    }
}

/// One result row: its values by column name.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    columns: Arc<[String]>,
    values: Vec<Value>,
}

impl Row {
    /// The value of column `name` (as the SELECT names it, `AS` for computed columns).
    pub(crate) fn get<T: FromValue>(&self, name: &'static str) -> Result<T> {
        let index = self
            .columns
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| StoreError::Corrupt { column: name, value: "no such column in the row".into() })?;
        T::from_value(name, &self.values[index])
    }
}

/// Which engine a statement runs on, for the few places where their SQL differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite: one writer at a time (`BEGIN IMMEDIATE`), so no row locks.
    Sqlite,
    /// PostgreSQL: concurrent writers, serialised by row locks.
    Postgres,
}

impl Dialect {
    /// Appended to a SELECT inside a write that must hold the rows it read until the commit.
    pub(crate) fn for_update(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            // NO KEY: no key ever changes, and foreign-key checks of rows that reference the
            // locked one (a tenant's tokens, datasets, audits) need not wait for it.
            Dialect::Postgres => " FOR NO KEY UPDATE",
        }
    }

    /// Appended to a SELECT that claims work: rows another daemon is claiming are passed over.
    pub(crate) fn skip_locked(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR NO KEY UPDATE SKIP LOCKED",
        }
    }

    /// Lower-case hex of the blob column `column`.
    pub(crate) fn hex(self, column: &str) -> String {
        match self {
            Dialect::Sqlite => format!("lower(hex({column}))"),
            Dialect::Postgres => format!("encode({column}, 'hex')"),
        }
    }
}

/// How a transaction begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Begin {
    /// A consistent snapshot; writes are refused on PostgreSQL.
    Read,
    /// A write (see the module documentation for how each engine serialises it).
    Write,
}

/// A connection to PostgreSQL, reopened when lost, with its prepared statements.
pub(crate) struct PgConn {
    config: postgres::Config,
    client: Option<postgres::Client>,
    statements: HashMap<String, postgres::Statement>,
}

impl std::fmt::Debug for PgConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConn").field("connected", &self.client.is_some()).finish()
    }
}

/// Prepared statements kept per connection before the cache starts over (statements built for
/// a variable number of units would otherwise pile up on the server).
const MAX_STATEMENTS: usize = 256;

impl PgConn {
    /// Connects now (so that a wrong URL fails at start-up, naming the problem), with the
    /// timeouts of [`bounded`].
    pub(crate) fn connect(config: postgres::Config) -> Result<PgConn> {
        let mut conn = PgConn { config: bounded(config), client: None, statements: HashMap::new() };
        conn.client()?;
        Ok(conn)
    }

    fn client(&mut self) -> Result<&mut postgres::Client> {
        if self.client.as_ref().is_none_or(postgres::Client::is_closed) {
            self.statements.clear();
            self.client = None;
            let client = outside_runtime(|| self.config.connect(postgres::NoTls)).map_err(unavailable)?;
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }
}

impl Drop for PgConn {
    /// The client shuts its own runtime down when dropped, which panics inside a tokio
    /// runtime: it is dropped on a thread of its own.
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = std::thread::Builder::new().name("ewtune-pg-close".into()).spawn(move || drop(client));
        }
    }
}

/// `config` with bounds on how long the database may keep a daemon waiting: 10 s to connect,
/// TCP keepalives after 10 s idle, and unacknowledged data dropping the connection after 30 s
/// (a partition then fails calls with `Unavailable` instead of hanging for the kernel's
/// retransmission timeout of about 15 minutes).
pub(crate) fn bounded(mut config: postgres::Config) -> postgres::Config {
    use std::time::Duration;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    config.keepalives(true).keepalives_idle(Duration::from_secs(10)).keepalives_interval(Duration::from_secs(5)).keepalives_retries(3);
    config.tcp_user_timeout(Duration::from_secs(30));
    config
}

/// A connection to either engine.
#[derive(Debug)]
pub(crate) enum Conn {
    Sqlite(rusqlite::Connection),
    Postgres(PgConn),
}

impl Conn {
    /// Runs `f` in one transaction and commits what it returns `Ok`; an error rolls it back.
    /// On PostgreSQL a write that lost a deadlock or a serialisation race is run again (up to
    /// [`WRITE_ATTEMPTS`] times), so `f` must only touch the database.
    pub(crate) fn transaction<T>(&mut self, begin: Begin, mut f: impl FnMut(&mut Tx<'_>) -> Result<T>) -> Result<T> {
        outside_runtime(|| {
            let mut attempt = 0;
            loop {
                attempt += 1;
                let result = self.transaction_once(begin, &mut f);
                match result {
                    Err(StoreError::Postgres { source }) if attempt < WRITE_ATTEMPTS && is_retryable(&source) => continue,
                    other => return other,
                }
            }
        })
    }

    fn transaction_once<T>(&mut self, begin: Begin, f: &mut impl FnMut(&mut Tx<'_>) -> Result<T>) -> Result<T> {
        match self {
            Conn::Sqlite(conn) => {
                let behavior = match begin {
                    Begin::Read => rusqlite::TransactionBehavior::Deferred,
                    Begin::Write => rusqlite::TransactionBehavior::Immediate,
                };
                let mut tx = Tx::Sqlite(conn.transaction_with_behavior(behavior)?);
                let value = f(&mut tx)?;
                tx.commit()?;
                Ok(value)
            }
            Conn::Postgres(pg) => {
                pg.client()?;
                let PgConn { client, statements, .. } = pg;
                let client = client.as_mut().expect("connected above");
                let tx = match begin {
                    Begin::Read => client.build_transaction().isolation_level(postgres::IsolationLevel::RepeatableRead).read_only(true).start(),
                    // Whatever the server's default: the row locks above serialise the writes.
                    Begin::Write => client.build_transaction().isolation_level(postgres::IsolationLevel::ReadCommitted).start(),
                }
                .map_err(pg_error)?;
                let mut tx = Tx::Postgres(tx, statements);
                let value = f(&mut tx)?;
                tx.commit()?;
                Ok(value)
            }
        }
    }
}

/// How many times a PostgreSQL write that lost a deadlock or serialisation race is tried.
const WRITE_ATTEMPTS: u32 = 8;

fn is_retryable(e: &postgres::Error) -> bool {
    use postgres::error::SqlState;
    e.code().is_some_and(|c| *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED)
}

/// A postgres error: the database out of reach (a lost connection, a network error, a server
/// shutting down, restarting or refusing connections, a read-only standby after a failover) is
/// `Unavailable`; anything else (a constraint, a trigger, a type the store's SQL got wrong) is
/// kept as it is.
pub(crate) fn pg_error(e: postgres::Error) -> StoreError {
    use postgres::error::SqlState;
    let unreachable = match e.code() {
        Some(code) => {
            code.code().starts_with("08")
                || [SqlState::ADMIN_SHUTDOWN, SqlState::CRASH_SHUTDOWN, SqlState::CANNOT_CONNECT_NOW, SqlState::TOO_MANY_CONNECTIONS, SqlState::READ_ONLY_SQL_TRANSACTION]
                    .contains(code)
        }
        None => e.is_closed() || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>()),
    };
    if unreachable {
        unavailable(e)
    } else {
        StoreError::Postgres { source: e }
    }
}

fn unavailable(e: postgres::Error) -> StoreError {
    StoreError::Unavailable { reason: e.to_string() }
}

/// One open transaction on either engine.
pub(crate) enum Tx<'c> {
    Sqlite(rusqlite::Transaction<'c>),
    Postgres(postgres::Transaction<'c>, &'c mut HashMap<String, postgres::Statement>),
}

impl Tx<'_> {
    /// Its engine.
    pub(crate) fn dialect(&self) -> Dialect {
        match self {
            Tx::Sqlite(_) => Dialect::Sqlite,
            Tx::Postgres(..) => Dialect::Postgres,
        }
    }

    /// Runs one statement; returns the rows it changed.
    pub(crate) fn execute(&mut self, sql: &str, args: &[&dyn ToValue]) -> Result<u64> {
        match self {
            Tx::Sqlite(tx) => {
                let mut stmt = tx.prepare_cached(sql)?;
                Ok(stmt.execute(rusqlite::params_from_iter(args.iter().map(|a| a.to_value())))? as u64)
            }
            Tx::Postgres(tx, statements) => {
                let stmt = prepare(tx, statements, sql)?;
                let values: Vec<Value> = args.iter().map(|a| a.to_value()).collect();
                tx.execute(&stmt, &pg_args(&values)).map_err(pg_error)
            }
        }
    }

    /// Every row of one query.
    pub(crate) fn query(&mut self, sql: &str, args: &[&dyn ToValue]) -> Result<Vec<Row>> {
        match self {
            Tx::Sqlite(tx) => {
                let mut stmt = tx.prepare_cached(sql)?;
                let columns: Arc<[String]> = stmt.column_names().into_iter().map(str::to_owned).collect();
                let mut rows = stmt.query(rusqlite::params_from_iter(args.iter().map(|a| a.to_value())))?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    let values = (0..columns.len()).map(|i| row.get_ref(i).map(sqlite_value)).collect::<rusqlite::Result<_>>()?;
                    out.push(Row { columns: columns.clone(), values });
                }
                Ok(out)
            }
            Tx::Postgres(tx, statements) => {
                let stmt = prepare(tx, statements, sql)?;
                let columns: Arc<[String]> = stmt.columns().iter().map(|c| c.name().to_owned()).collect();
                let values: Vec<Value> = args.iter().map(|a| a.to_value()).collect();
                let rows = tx.query(&stmt, &pg_args(&values)).map_err(pg_error)?;
                rows.iter()
                    .map(|row| {
                        let values = (0..columns.len()).map(|i| row.try_get::<_, Value>(i)).collect::<std::result::Result<_, _>>().map_err(pg_error)?;
                        Ok(Row { columns: columns.clone(), values })
                    })
                    .collect()
            }
        }
    }

    /// Every row of one query, each read by `f`.
    pub(crate) fn query_map<T>(&mut self, sql: &str, args: &[&dyn ToValue], f: impl Fn(&Row) -> Result<T>) -> Result<Vec<T>> {
        self.query(sql, args)?.iter().map(f).collect()
    }

    /// The first row of one query read by `f`, or `None` when it returns none.
    pub(crate) fn query_first<T>(&mut self, sql: &str, args: &[&dyn ToValue], f: impl FnOnce(&Row) -> Result<T>) -> Result<Option<T>> {
        self.query(sql, args)?.first().map(f).transpose()
    }

    /// The first row of a query that always returns one (an aggregate, `RETURNING`).
    pub(crate) fn query_one<T>(&mut self, sql: &str, args: &[&dyn ToValue], f: impl FnOnce(&Row) -> Result<T>) -> Result<T> {
        self.query_first(sql, args, f)?.ok_or_else(|| StoreError::Corrupt { column: "(row)", value: format!("no row from: {sql}") })
    }

    /// Several statements without arguments (migrations, tests).
    pub(crate) fn batch(&mut self, sql: &str) -> Result<()> {
        match self {
            Tx::Sqlite(tx) => Ok(tx.execute_batch(sql)?),
            Tx::Postgres(tx, _) => tx.batch_execute(sql).map_err(pg_error),
        }
    }

    fn commit(self) -> Result<()> {
        match self {
            Tx::Sqlite(tx) => Ok(tx.commit()?),
            Tx::Postgres(tx, _) => tx.commit().map_err(pg_error),
        }
    }
}

/// The statement for `sql` on this connection, prepared once (placeholders as `$N`).
fn prepare(tx: &mut postgres::Transaction<'_>, statements: &mut HashMap<String, postgres::Statement>, sql: &str) -> Result<postgres::Statement> {
    if let Some(stmt) = statements.get(sql) {
        return Ok(stmt.clone());
    }
    if statements.len() >= MAX_STATEMENTS {
        statements.clear();
    }
    let stmt = tx.prepare(&dollar_placeholders(sql)).map_err(pg_error)?;
    statements.insert(sql.to_owned(), stmt.clone());
    Ok(stmt)
}

/// `?N` as `$N` (store SQL holds no `?` inside string literals).
pub(crate) fn dollar_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

fn pg_args(values: &[Value]) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
    values.iter().map(|v| v as &(dyn postgres::types::ToSql + Sync)).collect()
}

fn sqlite_value(v: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

type BoxError = Box<dyn std::error::Error + Sync + Send>;

/// Binds a value to whatever type PostgreSQL inferred for the placeholder (`BIGINT` columns,
/// an `INT4` argument of a function, ...), refusing a lossy conversion.
impl postgres::types::ToSql for Value {
    fn to_sql(&self, ty: &postgres::types::Type, out: &mut bytes::BytesMut) -> std::result::Result<postgres::types::IsNull, BoxError> {
        use postgres::types::{IsNull, Type};
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::FLOAT8 => (*i as f64).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR => i.to_string().to_sql(ty, out),
                _ => Err(format!("cannot bind an integer to a {ty} parameter").into()),
            },
            Value::Real(f) => match *ty {
                Type::FLOAT8 => f.to_sql(ty, out),
                _ => Err(format!("cannot bind a double to a {ty} parameter").into()),
            },
            Value::Text(s) if <&str as postgres::types::ToSql>::accepts(ty) => s.as_str().to_sql(ty, out),
            Value::Blob(b) if *ty == Type::BYTEA => b.as_slice().to_sql(ty, out),
            Value::Text(_) => Err(format!("cannot bind text to a {ty} parameter").into()),
            Value::Blob(_) => Err(format!("cannot bind bytes to a {ty} parameter").into()),
        }
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

/// Reads the types the store's PostgreSQL schema uses (and what its expressions compute:
/// `count(*)` is `BIGINT`, a literal `1` is `INT4`).
impl<'a> postgres::types::FromSql<'a> for Value {
    fn from_sql(ty: &postgres::types::Type, raw: &'a [u8]) -> std::result::Result<Self, BoxError> {
        use postgres::types::Type;
        Ok(match *ty {
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Value::Int(i64::from(i32::from_sql(ty, raw)?)),
            Type::INT2 => Value::Int(i64::from(i16::from_sql(ty, raw)?)),
            Type::BOOL => Value::Int(i64::from(bool::from_sql(ty, raw)?)),
            Type::FLOAT8 => Value::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => Value::Real(f64::from(f32::from_sql(ty, raw)?)),
            Type::BYTEA => Value::Blob(Vec::<u8>::from_sql(ty, raw)?),
            _ => Value::Text(String::from_sql(ty, raw)?),
        })
    }

    fn from_sql_null(_: &postgres::types::Type) -> std::result::Result<Self, BoxError> {
        Ok(Value::Null)
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }
}

/// Runs `f`, which may block on the `postgres` client's own runtime: on a tokio worker thread
/// it runs under `block_in_place` (the `postgres` client cannot block inside a runtime).
pub(crate) fn outside_runtime<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollars() {
        assert_eq!(dollar_placeholders("SELECT a FROM t WHERE b = ?1 AND c = ?12 OR ?1 IS NULL"), "SELECT a FROM t WHERE b = $1 AND c = $12 OR $1 IS NULL");
        assert_eq!(dollar_placeholders("SELECT '?' FROM t"), "SELECT '?' FROM t");
    }
}
