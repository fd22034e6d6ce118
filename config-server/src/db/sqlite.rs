//! SQLite: one writing connection (SQLite serialises writers anyway),
//! whose writes are grouped into shared commits (`group`), and a few
//! reading connections beside it: in WAL mode readers see the last commit
//! and never wait for a writer's fsync.
//!
//! Durability: WAL with `synchronous=FULL`, so a commit is on disk (the WAL
//! is synced) before any write it holds is answered; `NORMAL` would
//! survive a process crash but could lose the last commits on power loss.

use super::group::{GroupCommit, WriteConn};
use super::{DbError, DbResult, Migration, Row, Tx, TxInner, Value};
use rusqlite::{Connection, ErrorCode, TransactionBehavior};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Reading connections: reads beyond this many wait for one to come
/// free rather than open another. Every connection has its own page cache
/// (up to 2 MiB) and statement cache and parses the schema when opened;
/// unbounded, a fleet's backlog could open one per parked thread (512).
const READERS: usize = 8;
/// How long a read waits for a free connection before it opens one of its
/// own anyway (kept bounded, never a deadlock should a read nest another).
const READER_WAIT: Duration = Duration::from_millis(500);
/// The writer's page cache (KiB): a flush's chunk touches a few thousand
/// pages of the devices table and its indexes across the whole fleet, which
/// SQLite's default 2 MiB cache re-reads from the file on every chunk.
const WRITER_CACHE_KIB: i64 = 32 * 1024;

pub struct Sqlite {
    path: std::path::PathBuf,
    writer: GroupCommit<Connection>,
    readers: Readers,
}

/// The reading connections: idle ones, and how many are open in all.
#[derive(Default)]
struct Readers {
    pool: Mutex<ReaderPool>,
    freed: Condvar,
}

impl Readers {
    fn lock(&self) -> std::sync::MutexGuard<'_, ReaderPool> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Default)]
struct ReaderPool {
    idle: Vec<Connection>,
    open: usize,
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(
                ErrorCode::DiskFull
                | ErrorCode::ReadOnly
                | ErrorCode::CannotOpen
                | ErrorCode::SystemIoFailure
                | ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::OutOfMemory,
            ) => DbError::Unavailable(sqlite_message(&e)),
            Some(ErrorCode::ConstraintViolation) => DbError::Constraint(e.to_string()),
            _ => DbError::Other(e.to_string()),
        }
    }
}

/// What an operator can act on: "disk full" rather than an error number.
fn sqlite_message(e: &rusqlite::Error) -> String {
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => "the disk holding the database is full".into(),
        Some(ErrorCode::ReadOnly) => "the database is read-only".into(),
        Some(ErrorCode::SystemIoFailure) => {
            format!("input/output error on the database file ({e}): is the disk full or read-only?")
        }
        _ => e.to_string(),
    }
}

impl Sqlite {
    pub fn open(path: &Path, migrations: &[Migration]) -> DbResult<Sqlite> {
        // The file holds join tokens and the CA key: private from its first
        // byte (the WAL and shared-memory files SQLite makes take its mode).
        if !path.exists() {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| DbError::Unavailable(format!("creating {}: {e}", path.display())))?;
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let db = Sqlite {
            path: path.to_path_buf(),
            writer: GroupCommit::new(conn),
            readers: Readers::default(),
        };
        db.migrate(migrations)?;
        Ok(db)
    }

    fn migrate(&self, migrations: &[Migration]) -> DbResult<()> {
        self.writer.with_conn(|conn| migrate(conn, migrations))
    }

    pub fn write<T, E: From<DbError>>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        self.writer.write(f)
    }

    /// Runs `f` in a read transaction on a reading connection: one
    /// consistent snapshot, however many queries.
    pub fn read<T, E: From<DbError>>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut conn = self.take_reader().map_err(E::from)?;
        let result = in_transaction(&mut conn, TransactionBehavior::Deferred, f);
        self.give_back(conn);
        result
    }

    /// An idle reading connection, a new one while fewer than [`READERS`]
    /// are open, or else the first to come free (an extra one after
    /// [`READER_WAIT`]).
    fn take_reader(&self) -> DbResult<Connection> {
        let mut pool = self.readers.lock();
        let deadline = std::time::Instant::now() + READER_WAIT;
        loop {
            if let Some(conn) = pool.idle.pop() {
                return Ok(conn);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if pool.open < READERS || left.is_zero() {
                pool.open += 1;
                drop(pool);
                return self.open_reader().inspect_err(|_| {
                    self.readers.lock().open -= 1;
                    self.readers.freed.notify_one();
                });
            }
            pool = self
                .readers
                .freed
                .wait_timeout(pool, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Returns a reading connection to the pool (closing it when the pool
    /// is full: one opened past the bound) and wakes a waiting read.
    fn give_back(&self, conn: Connection) {
        let mut pool = self.readers.lock();
        if pool.open > READERS {
            pool.open -= 1;
            drop(pool);
            drop(conn);
        } else {
            pool.idle.push(conn);
            drop(pool);
        }
        self.readers.freed.notify_one();
    }

    fn open_reader(&self) -> DbResult<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(5))?;
        Ok(conn)
    }

    pub fn commit_stats(&self) -> super::CommitStats {
        self.writer.stats()
    }

    pub fn backup_to(&self, to: &Path) -> DbResult<()> {
        self.writer.with_conn(|conn| {
            let mut dest = Connection::open(to)?;
            {
                let backup = rusqlite::backup::Backup::new(conn, &mut dest)?;
                // All pages in one step: one consistent snapshot, never
                // restarted by a concurrent write.
                backup.step(-1)?;
            }
            dest.pragma_update(None, "journal_mode", "DELETE")?;
            Ok(())
        })
    }
}

fn migrate(conn: &mut Connection, migrations: &[Migration]) -> DbResult<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version as usize > migrations.len() {
        return Err(DbError::Other(format!(
            "the database is at schema version {version}, newer than this server knows ({}): \
             run the newer server, or restore a backup",
            migrations.len()
        )));
    }
    let tx = conn.transaction()?;
    for (i, m) in migrations.iter().enumerate().skip(version as usize) {
        tx.execute_batch(&super::Dialect::Sqlite.ddl(m.0))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
    }
    tx.commit()?;
    Ok(())
}

impl WriteConn for Connection {
    fn begin(&mut self) -> DbResult<()> {
        Ok(self.execute_batch("BEGIN IMMEDIATE")?)
    }

    fn control(&mut self, sql: &str) -> DbResult<()> {
        Ok(self.execute_batch(sql)?)
    }

    fn tx(&mut self) -> DbResult<Tx<'_>> {
        Ok(Tx {
            inner: TxInner::Sqlite(self),
        })
    }

    fn in_transaction(&self) -> bool {
        !self.is_autocommit()
    }
}

/// Runs `f` in a transaction of `behavior` on `conn`: committed if it
/// answers Ok, rolled back (on drop) otherwise.
fn in_transaction<T, E: From<DbError>>(
    conn: &mut Connection,
    behavior: TransactionBehavior,
    f: impl FnOnce(&Tx<'_>) -> Result<T, E>,
) -> Result<T, E> {
    let tx = conn
        .transaction_with_behavior(behavior)
        .map_err(|e| E::from(e.into()))?;
    let value = f(&Tx {
        inner: TxInner::Sqlite(&tx),
    })?;
    tx.commit().map_err(|e| E::from(e.into()))?;
    Ok(value)
}

/// The store's `$N` placeholders as SQLite's `?N`, whose index is N.
/// SQLite reads `$1` as a parameter *named* "$1", numbered in order of
/// appearance and found by a scan of every name (quadratic in a statement
/// with thousands, like a flush's VALUES table); `?N` needs no lookup.
/// The store's SQL holds no `$` in literals.
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

/// Binds the parameters by position (`?N` is the Nth); those past the
/// last the statement uses are not bound.
fn bind(stmt: &mut rusqlite::Statement<'_>, params: &[Value]) -> DbResult<()> {
    let count = stmt.parameter_count();
    for (i, value) in params.iter().enumerate().take(count) {
        let index = i + 1;
        match value {
            Value::Null => stmt.raw_bind_parameter(index, rusqlite::types::Null)?,
            Value::Int(v) => stmt.raw_bind_parameter(index, v)?,
            Value::Text(v) => stmt.raw_bind_parameter(index, v)?,
        }
    }
    Ok(())
}

pub(super) fn execute(conn: &Connection, sql: &str, params: &[Value]) -> DbResult<u64> {
    let mut stmt = conn.prepare_cached(&numbered(sql))?;
    bind(&mut stmt, params)?;
    // A statement with RETURNING (or a SELECT) answers rows: step through
    // them so it runs to completion.
    if stmt.readonly() || stmt.column_count() > 0 {
        let readonly = stmt.readonly();
        let mut rows = stmt.raw_query();
        while rows.next()?.is_some() {}
        return Ok(if readonly { 0 } else { conn.changes() });
    }
    Ok(stmt.raw_execute()? as u64)
}

pub(super) fn query(conn: &Connection, sql: &str, params: &[Value]) -> DbResult<Vec<Row>> {
    let mut stmt = conn.prepare_cached(&numbered(sql))?;
    bind(&mut stmt, params)?;
    let columns = stmt.column_count();
    let mut rows = stmt.raw_query();
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let mut values = Vec::with_capacity(columns);
        for i in 0..columns {
            values.push(match row.get_ref(i)? {
                rusqlite::types::ValueRef::Null => Value::Null,
                rusqlite::types::ValueRef::Integer(v) => Value::Int(v),
                rusqlite::types::ValueRef::Text(t) => {
                    Value::Text(String::from_utf8_lossy(t).into_owned())
                }
                other => {
                    return Err(DbError::Other(format!(
                        "column {i} has an unexpected type {:?}",
                        other.data_type()
                    )))
                }
            });
        }
        out.push(Row(values));
    }
    Ok(out)
}
