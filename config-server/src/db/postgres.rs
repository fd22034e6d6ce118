//! PostgreSQL: a small pool of synchronous connections for reads (each
//! with its own prepared-statement cache), one writing connection per
//! replica whose writes are grouped into shared commits (`group`), write
//! transactions serialised across replicas by one advisory lock, and a
//! listener that turns NOTIFY into long-poll wake-ups on every replica.

use super::group::{GroupCommit, WriteConn};
use super::pg_tls::{self, PgTls};
use super::{DbError, DbResult, Migration, PostgresOptions, Row, Tx, TxInner, Value};
use ::postgres::error::SqlState;
use ::postgres::fallible_iterator::FallibleIterator;
use ::postgres::types::{IsNull, ToSql, Type};
use ::postgres::{Client, Config, NoTls, Statement};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// The NOTIFY channel for desired-state revisions; payload `REVISION SWARM`.
pub const CHANNEL: &str = "fogswarm_revision";
/// Advisory lock keys ("fogs" and "fogm" in ASCII): every write
/// transaction takes the first; migrations take the second.
const WRITE_LOCK: i64 = 0x666f_6773;
const MIGRATION_LOCK: i64 = 0x666f_676d;
/// How long a request waits for a free connection before it is answered
/// 503.
const CHECKOUT_WAIT: Duration = Duration::from_secs(10);

impl From<::postgres::Error> for DbError {
    fn from(e: ::postgres::Error) -> Self {
        let code = e.code().map(SqlState::code).unwrap_or("");
        // The server's own words, where it said something.
        let e = match e.as_db_error() {
            Some(db) => format!("{} ({code})", db.message()),
            None => e.to_string(),
        };
        // Class 08: connection exceptions; 57P0x: the server is shutting
        // down or starting; class 53: out of disk, memory or connections.
        // No code at all: the socket failed.
        if code.is_empty() || code.starts_with("08") || code.starts_with("57P") {
            DbError::Unavailable(format!("PostgreSQL: {e}"))
        } else if code.starts_with("53") {
            DbError::Unavailable(format!("PostgreSQL is out of resources: {e}"))
        } else if code.starts_with("23") {
            DbError::Constraint(e.to_string())
        } else {
            DbError::Other(format!("PostgreSQL: {e}"))
        }
    }
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut ::postgres::types::private::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        // PostgreSQL infers each parameter's type from the statement; the
        // store's values adapt to it.
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) => match *ty {
                Type::INT8 => v.to_sql(ty, out),
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::BOOL => (*v != 0).to_sql(ty, out),
                _ => v.to_string().to_sql(&Type::TEXT, out),
            },
            Value::Text(v) => match *ty {
                Type::INT8 => v.parse::<i64>()?.to_sql(ty, out),
                Type::INT4 => v.parse::<i32>()?.to_sql(ty, out),
                _ => v.as_str().to_sql(&Type::TEXT, out),
            },
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    ::postgres::types::to_sql_checked!();
}

struct PgConn {
    client: Client,
    statements: HashMap<String, Statement>,
}

/// A write transaction, or a read's statements, on a pooled connection.
pub(super) struct PgTx<'a> {
    client: &'a mut Client,
    statements: &'a mut HashMap<String, Statement>,
}

impl PgTx<'_> {
    fn statement(&mut self, sql: &str) -> DbResult<Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.statements.insert(sql.to_string(), s.clone());
        Ok(s)
    }

    pub(super) fn execute(&mut self, sql: &str, params: &[Value]) -> DbResult<u64> {
        let stmt = self.statement(sql)?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as _).collect();
        Ok(self.client.execute(&stmt, &refs)?)
    }

    pub(super) fn query(&mut self, sql: &str, params: &[Value]) -> DbResult<Vec<Row>> {
        let stmt = self.statement(sql)?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as _).collect();
        self.client
            .query(&stmt, &refs)?
            .iter()
            .map(row_of)
            .collect()
    }
}

fn row_of(row: &::postgres::Row) -> DbResult<Row> {
    let mut values = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let value = match *column.type_() {
            Type::INT8 => row.try_get::<_, Option<i64>>(i)?.map(Value::Int),
            Type::INT4 => row
                .try_get::<_, Option<i32>>(i)?
                .map(|v| Value::Int(v.into())),
            Type::INT2 => row
                .try_get::<_, Option<i16>>(i)?
                .map(|v| Value::Int(v.into())),
            Type::BOOL => row
                .try_get::<_, Option<bool>>(i)?
                .map(|v| Value::Int(v.into())),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
                row.try_get::<_, Option<String>>(i)?.map(Value::Text)
            }
            // pg_notify() and the like answer void.
            Type::VOID => None,
            ref other => {
                return Err(DbError::Other(format!(
                    "column {} has the unsupported type {other}",
                    column.name()
                )))
            }
        };
        values.push(value.unwrap_or(Value::Null));
    }
    Ok(Row(values))
}

pub struct Pool {
    target: Target,
    /// The replica's writing connection (besides the pool): writes wait
    /// here, never taking the connections reads need.
    writer: GroupCommit<PgWriter>,
    max: usize,
    idle: Mutex<Vec<PgConn>>,
    /// Connections open, idle or lent out.
    open: Mutex<usize>,
    returned: Condvar,
}

/// A connection lent out; goes back to the pool when dropped, unless it
/// broke.
struct Lent<'a> {
    pool: &'a Pool,
    conn: Option<PgConn>,
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.give_back(conn);
        }
    }
}

/// Where the database is and how the connection is secured.
#[derive(Clone)]
pub(super) struct Target {
    config: Config,
    tls: PgTls,
}

pub(super) fn connect(target: &Target) -> DbResult<Client> {
    let config = &target.config;
    match &target.tls {
        PgTls::Plain => config.connect(NoTls),
        PgTls::Verified(tls) => config.connect(tls.clone()),
    }
    .map_err(|e| {
        // The cause (a refused certificate, say) is in the source chain.
        let mut why = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            why.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        DbError::Unavailable(format!(
            "cannot connect to PostgreSQL at {}: {why}",
            describe(config)
        ))
    })
}

/// Host, port and database, for messages (never the password).
fn describe(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(::postgres::config::Host::Tcp(h)) => h.clone(),
        Some(::postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{host}:{port}/{}",
        config
            .get_dbname()
            .unwrap_or_else(|| config.get_user().unwrap_or("postgres"))
    )
}

impl Pool {
    pub fn open(url: &str, options: &PostgresOptions, migrations: &[Migration]) -> DbResult<Pool> {
        let (url, tls) = pg_tls::split(url).map_err(DbError::Other)?;
        let mut config: Config = url
            .parse()
            .map_err(|e| DbError::Other(format!("not a PostgreSQL URL: {e}")))?;
        if let Some(password) = &options.password {
            config.password(password);
        }
        config
            .application_name("fogswarm-server")
            .connect_timeout(Duration::from_secs(5))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30));
        let pool = Pool {
            writer: GroupCommit::new(PgWriter {
                target: Target {
                    config: config.clone(),
                    tls: tls.clone(),
                },
                conn: None,
            }),
            target: Target { config, tls },
            max: options.pool_size.max(1),
            idle: Mutex::new(Vec::new()),
            open: Mutex::new(0),
            returned: Condvar::new(),
        };
        pool.migrate(migrations)?;
        Ok(pool)
    }

    pub(super) fn target(&self) -> &Target {
        &self.target
    }

    fn migrate(&self, migrations: &[Migration]) -> DbResult<()> {
        let mut client = connect(&self.target)?;
        client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
        let result = (|| -> DbResult<()> {
            client.batch_execute(
                "CREATE TABLE IF NOT EXISTS fogswarm_schema (version BIGINT NOT NULL);
                 INSERT INTO fogswarm_schema (version)
                   SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM fogswarm_schema);",
            )?;
            let version: i64 = client
                .query_one("SELECT version FROM fogswarm_schema", &[])?
                .get(0);
            if version as usize > migrations.len() {
                return Err(DbError::Other(format!(
                    "the database is at schema version {version}, newer than this server knows ({})",
                    migrations.len()
                )));
            }
            for (i, m) in migrations.iter().enumerate().skip(version as usize) {
                let mut tx = client.transaction()?;
                tx.batch_execute(&super::Dialect::Postgres.ddl(m.0))?;
                tx.execute(
                    "UPDATE fogswarm_schema SET version = $1",
                    &[&((i + 1) as i64)],
                )?;
                tx.commit()?;
            }
            Ok(())
        })();
        let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
        result
    }

    fn lend(&self) -> DbResult<Lent<'_>> {
        let deadline = std::time::Instant::now() + CHECKOUT_WAIT;
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(conn) = idle.pop() {
                if !conn.client.is_closed() {
                    return Ok(Lent {
                        pool: self,
                        conn: Some(conn),
                    });
                }
                self.forget_one();
                continue;
            }
            {
                let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
                if *open < self.max {
                    *open += 1;
                    drop(open);
                    drop(idle);
                    return match connect(&self.target) {
                        Ok(client) => Ok(Lent {
                            pool: self,
                            conn: Some(PgConn {
                                client,
                                statements: HashMap::new(),
                            }),
                        }),
                        Err(e) => {
                            self.forget_one();
                            Err(e)
                        }
                    };
                }
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Err(DbError::Unavailable(format!(
                    "all {} PostgreSQL connections stayed busy for {}s",
                    self.max,
                    CHECKOUT_WAIT.as_secs()
                )));
            }
            idle = self
                .returned
                .wait_timeout(idle, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn forget_one(&self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        *open = open.saturating_sub(1);
        self.returned.notify_one();
    }

    fn give_back(&self, conn: PgConn) {
        if conn.client.is_closed() {
            self.forget_one();
            return;
        }
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
        self.returned.notify_one();
    }

    pub fn commit_stats(&self) -> super::CommitStats {
        self.writer.stats()
    }

    /// Runs `f` in a transaction shared with the writes that arrive
    /// meanwhile, under the write lock; answers once it is committed.
    pub fn write<T, E: From<DbError>>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        self.writer.write(f)
    }

    /// Runs `f` on a pooled connection, outside a transaction: each
    /// statement sees the latest commit (READ COMMITTED); every read of the
    /// store tolerates that (a desired state whose nodes are newer than its
    /// revision only wakes its manager once more), and it halves the round
    /// trips of the fleet's steady load.
    pub fn read<T, E: From<DbError>>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut lent = self.lend().map_err(E::from)?;
        let conn = lent
            .conn
            .as_mut()
            .ok_or_else(|| E::from(DbError::Other("connection already returned".into())))?;
        let PgConn { client, statements } = &mut *conn;
        f(&Tx {
            inner: TxInner::Postgres(RefCell::new(PgTx { client, statements })),
        })
    }
}

/// The writing connection: opened on the first write, opened again after
/// it breaks.
struct PgWriter {
    target: Target,
    conn: Option<PgConn>,
}

impl WriteConn for PgWriter {
    fn begin(&mut self) -> DbResult<()> {
        if self.conn.as_ref().is_none_or(|c| c.client.is_closed()) {
            self.conn = Some(PgConn {
                client: connect(&self.target)?,
                statements: HashMap::new(),
            });
        }
        // The transaction and the write lock in one round trip.
        self.control(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})"
        ))
    }

    fn control(&mut self, sql: &str) -> DbResult<()> {
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| DbError::Unavailable("no connection to PostgreSQL".into()))?;
        let result = conn.client.batch_execute(sql);
        if result.is_err() && conn.client.is_closed() {
            self.conn = None;
        }
        Ok(result?)
    }

    fn tx(&mut self) -> DbResult<Tx<'_>> {
        let PgConn { client, statements } = self
            .conn
            .as_mut()
            .ok_or_else(|| DbError::Unavailable("the connection to PostgreSQL was lost".into()))?;
        Ok(Tx {
            inner: TxInner::Postgres(RefCell::new(PgTx { client, statements })),
        })
    }

    fn in_transaction(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| !c.client.is_closed())
    }
}

/// Listens for revision notifications from every replica (this one too)
/// on a connection of its own, in a thread of its own; reconnects with
/// backoff when PostgreSQL goes away, and says so, since notifications
/// sent meanwhile are lost and waiters must re-read.
pub struct Listener;

impl Listener {
    /// `on_revision(swarm, revision)` for each notification;
    /// `on_reconnect()` after a connection (re)opens.
    pub fn spawn(
        database: &super::Database,
        on_revision: impl Fn(&str, u64) + Send + 'static,
        on_reconnect: impl Fn() + Send + 'static,
    ) -> Option<std::thread::JoinHandle<()>> {
        let super::Database::Postgres(pool) = database else {
            return None;
        };
        let target = pool.target().clone();
        std::thread::Builder::new()
            .name("pg-listen".into())
            .spawn(move || {
                let mut backoff = Duration::from_millis(200);
                loop {
                    match listen(&target, &on_revision, &on_reconnect) {
                        Ok(()) => backoff = Duration::from_millis(200),
                        Err(e) => {
                            tracing::warn!(error = %e, "PostgreSQL listener lost its connection; reconnecting");
                            std::thread::sleep(backoff);
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                        }
                    }
                }
            })
            .ok()
    }
}

fn listen(
    target: &Target,
    on_revision: &impl Fn(&str, u64),
    on_reconnect: &impl Fn(),
) -> DbResult<()> {
    let mut client = connect(target)?;
    client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
    on_reconnect();
    loop {
        {
            let mut notifications = client.notifications();
            let mut iter = notifications.timeout_iter(Duration::from_secs(5));
            while let Some(n) = iter.next()? {
                if let Some((revision, swarm)) = n.payload().split_once(' ') {
                    if let Ok(revision) = revision.parse() {
                        on_revision(swarm, revision);
                    }
                }
            }
        }
        // Quiet for a while: make sure the connection is still there.
        client.simple_query("")?;
    }
}
