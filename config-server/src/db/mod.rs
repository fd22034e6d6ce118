//! The one layer that speaks SQL to a database: SQLite (embedded, the
//! default) or PostgreSQL (several replicas). The store writes each query
//! once, with `$1`-style placeholders both dialects accept, and reads rows
//! as [`Value`]s; what differs between the two (schema types, how a write
//! is serialised, notifications) stays in this module and its two
//! backends.
//!
//! Writes are serialised on both: SQLite has one writer by design, and on
//! PostgreSQL every write transaction first takes one transaction-level
//! advisory lock. That keeps the store's read-decide-write sequences (the
//! leader lease above all) exactly as atomic across replicas as they are
//! in one process, and events commit in id order. Writes that arrive
//! together share one commit (`group`): one fsync for many enrolments.

mod group;
mod pg_tls;
mod postgres;
mod sqlite;

pub use self::group::CommitStats;
pub use self::postgres::Listener;

use std::cell::RefCell;
use std::fmt;
use std::path::Path;

/// Which database a URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file.
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL connection string (`postgres://USER@HOST[:PORT]/DB`),
    /// never with a password in it: that comes from a file or PGPASSWORD.
    Postgres(String),
}

impl Location {
    /// Parses `--database`: `postgres://...` or `postgresql://...`, or
    /// `sqlite://PATH` / a plain path.
    pub fn parse(text: &str) -> Result<Location, String> {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            let (rest, _) = pg_tls::split(text)?;
            let config: ::postgres::Config = rest
                .parse()
                .map_err(|e| format!("--database is not a PostgreSQL URL: {e}"))?;
            if config.get_password().is_some() {
                return Err(
                    "--database must not carry a password (it would show in ps and logs); \
                     give it in a file with --database-password-file or in PGPASSWORD"
                        .into(),
                );
            }
            Ok(Location::Postgres(text.to_string()))
        } else if let Some(path) = text.strip_prefix("sqlite://") {
            Ok(Location::Sqlite(path.into()))
        } else if text.contains("://") {
            Err(format!(
                "--database {:?}: only postgres:// and sqlite:// URLs (or a file path) are supported",
                text.split("://").next().unwrap_or_default()
            ))
        } else {
            Ok(Location::Sqlite(text.into()))
        }
    }
}

/// A database failure, sorted by what a client should do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DbError {
    /// The database cannot serve now (down, disk full, read-only, busy):
    /// the request may succeed later or on another replica. Answered 503.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A constraint refused the change (a unique index, say).
    #[error("constraint: {0}")]
    Constraint(String),
    /// Anything else: a bug or a damaged database. Answered 500.
    #[error("{0}")]
    Other(String),
}

pub type DbResult<T> = Result<T, DbError>;

/// One SQL value, as both databases store what the store keeps: text,
/// integers (booleans are 0 and 1), and NULL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Int(v.into())
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Int(v.into())
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map(Into::into).unwrap_or(Value::Null)
    }
}
impl From<&Option<String>> for Value {
    fn from(v: &Option<String>) -> Self {
        v.as_deref().into()
    }
}

/// The parameters of a query, `$1` first.
#[macro_export]
macro_rules! sql_params {
    ($($v:expr),* $(,)?) => { &[$($crate::db::Value::from($v)),*] as &[$crate::db::Value] };
}
pub use sql_params as params;

/// `WITH v(NAME, ...) AS (VALUES (CAST($1 AS TYPE), ...), ...)` for
/// `rows` rows of `columns` (name, SQL type), numbered from `$1` row by
/// row: many rows as one statement's parameters, so a flush writes
/// hundreds of devices in one statement instead of one each. The casts
/// give PostgreSQL the parameters' types.
pub fn values_cte(columns: &[(&str, &str)], rows: usize) -> String {
    let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
    let mut sql = format!("WITH v({}) AS (VALUES ", names.join(", "));
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for (i, (_, ty)) in columns.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("CAST(${} AS {ty})", row * columns.len() + i + 1));
        }
        sql.push(')');
    }
    sql.push_str(") ");
    sql
}

/// A value read back into a Rust type.
pub trait FromValue: Sized {
    fn from_value(v: &Value) -> Option<Self>;
}
impl FromValue for Value {
    fn from_value(v: &Value) -> Option<Self> {
        Some(v.clone())
    }
}
impl FromValue for String {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}
impl FromValue for i64 {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}
impl FromValue for bool {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Int(i) => Some(*i != 0),
            _ => None,
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Null => Some(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// One result row.
#[derive(Debug)]
pub struct Row(Vec<Value>);

impl Row {
    /// Column `i` as `T`; a NULL or a value of another type where `T`
    /// cannot hold it is an error naming the column.
    pub fn get<T: FromValue>(&self, i: usize) -> DbResult<T> {
        let value = self
            .0
            .get(i)
            .ok_or_else(|| DbError::Other(format!("no column {i} in the row")))?;
        T::from_value(value).ok_or_else(|| {
            DbError::Other(format!(
                "column {i} holds {value:?}, not a {}",
                std::any::type_name::<T>()
            ))
        })
    }

    pub fn values(&self) -> &[Value] {
        &self.0
    }
}

/// Which SQL a backend speaks, for the few places that differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A transaction (or, for reads, a consistent snapshot) on either
/// database. Every query of the store goes through these few methods.
pub struct Tx<'a> {
    inner: TxInner<'a>,
}

enum TxInner<'a> {
    Sqlite(&'a rusqlite::Connection),
    Postgres(RefCell<postgres::PgTx<'a>>),
}

impl Tx<'_> {
    pub fn dialect(&self) -> Dialect {
        match self.inner {
            TxInner::Sqlite(_) => Dialect::Sqlite,
            TxInner::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Runs a statement; answers the number of rows it changed.
    pub fn execute(&self, sql: &str, params: &[Value]) -> DbResult<u64> {
        match &self.inner {
            TxInner::Sqlite(conn) => sqlite::execute(conn, sql, params),
            TxInner::Postgres(tx) => tx.borrow_mut().execute(sql, params),
        }
    }

    /// Every row a query answers.
    pub fn query(&self, sql: &str, params: &[Value]) -> DbResult<Vec<Row>> {
        match &self.inner {
            TxInner::Sqlite(conn) => sqlite::query(conn, sql, params),
            TxInner::Postgres(tx) => tx.borrow_mut().query(sql, params),
        }
    }

    /// The first row, if any.
    pub fn query_opt(&self, sql: &str, params: &[Value]) -> DbResult<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// The first row; none is an error (for queries that always answer
    /// one, like an aggregate, or rows checked to exist in this
    /// transaction).
    pub fn query_one(&self, sql: &str, params: &[Value]) -> DbResult<Row> {
        self.query_opt(sql, params)?
            .ok_or_else(|| DbError::Other(format!("no row for: {sql}")))
    }

    /// Tells the other replicas (PostgreSQL only; at commit) that a swarm's
    /// desired state is now at `revision`.
    pub fn notify_revision(&self, swarm: &str, revision: u64) -> DbResult<()> {
        if self.dialect() == Dialect::Postgres {
            self.execute(
                "SELECT pg_notify($1, $2)",
                params![postgres::CHANNEL, format!("{revision} {swarm}")],
            )?;
        }
        Ok(())
    }
}

/// A versioned schema change, in the DDL both databases share (see
/// [`Dialect::ddl`]); the version applied last is recorded in the database
/// (SQLite's user_version; a table on PostgreSQL).
pub struct Migration(pub &'static str);

impl Dialect {
    /// The DDL as this database spells it: `AUTO_ID` is an auto-numbered
    /// primary key, the only column type the two write differently, and
    /// `CONCAT_AGG(text, separator)` the aggregate joining strings (SQLite's
    /// `group_concat`, PostgreSQL's `string_agg`).
    pub fn ddl(self, sql: &str) -> String {
        let (auto_id, concat_agg) = match self {
            // Exactly this spelling makes the column SQLite's rowid.
            Dialect::Sqlite => ("INTEGER PRIMARY KEY AUTOINCREMENT", "group_concat("),
            Dialect::Postgres => (
                "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
                "string_agg(",
            ),
        };
        sql.replace("AUTO_ID", auto_id)
            .replace("CONCAT_AGG(", concat_agg)
    }
}

/// An open database: one SQLite connection, or a pool of PostgreSQL ones.
pub enum Database {
    Sqlite(Box<sqlite::Sqlite>),
    Postgres(Box<postgres::Pool>),
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite(_) => f.write_str("Database::Sqlite"),
            Database::Postgres(_) => f.write_str("Database::Postgres"),
        }
    }
}

/// How to reach PostgreSQL besides its URL.
#[derive(Debug, Clone, Default)]
pub struct PostgresOptions {
    /// The password (from a file or PGPASSWORD).
    pub password: Option<String>,
    /// Connections a replica keeps at most.
    pub pool_size: usize,
}

impl Database {
    /// Opens a SQLite file (created 0600 when missing) and migrates it.
    pub fn open_sqlite(path: &Path, migrations: &[Migration]) -> DbResult<Database> {
        Ok(Database::Sqlite(Box::new(sqlite::Sqlite::open(
            path, migrations,
        )?)))
    }

    /// Connects to PostgreSQL and migrates it (under a session advisory
    /// lock, so replicas starting together migrate once).
    pub fn open_postgres(
        url: &str,
        options: &PostgresOptions,
        migrations: &[Migration],
    ) -> DbResult<Database> {
        Ok(Database::Postgres(Box::new(blocking(|| {
            postgres::Pool::open(url, options, migrations)
        })?)))
    }

    pub fn dialect(&self) -> Dialect {
        match self {
            Database::Sqlite(_) => Dialect::Sqlite,
            Database::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Runs `f` in one write transaction: committed if it answers Ok,
    /// rolled back otherwise. Writes are serialised (see the module doc).
    pub fn write<T, E: From<DbError>>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        blocking(|| match self {
            Database::Sqlite(db) => db.write(f),
            Database::Postgres(pool) => pool.write(f),
        })
    }

    /// Runs `f` on a read-only view (see the backends for how consistent).
    /// SQLite reads run where they are called: they take microseconds and
    /// never wait for a writer, so handing the worker over would cost more
    /// than it saves.
    pub fn read<T, E: From<DbError>>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        match self {
            Database::Sqlite(db) => db.read(f),
            Database::Postgres(pool) => blocking(|| pool.read(f)),
        }
    }

    /// Commits made by this process and the writes they held.
    pub fn commit_stats(&self) -> CommitStats {
        match self {
            Database::Sqlite(db) => db.commit_stats(),
            Database::Postgres(pool) => pool.commit_stats(),
        }
    }

    /// Copies a SQLite database to `to` with SQLite's online backup API
    /// (a consistent copy while the server keeps serving).
    pub fn backup_to(&self, to: &Path) -> DbResult<()> {
        match self {
            Database::Sqlite(db) => db.backup_to(to),
            Database::Postgres(_) => Err(DbError::Other(
                "a PostgreSQL fleet is backed up with pg_dump (see README, Backup)".into(),
            )),
        }
    }
}

/// Database calls that wait (a writer's fsync, PostgreSQL's socket): on the
/// server's multi-thread runtime they run with `block_in_place`, so the
/// other tasks of the worker move elsewhere meanwhile; anywhere else
/// (tests, tools) they just run.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}
