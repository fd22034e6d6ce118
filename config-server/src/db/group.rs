//! Group commit: write transactions that arrive together share one
//! database transaction and one commit (one fsync on SQLite, one WAL flush
//! and one advisory lock on PostgreSQL), and each caller is answered only
//! once the commit that holds its write is durable.
//!
//! How a batch forms: a writer counts itself in (`entering`) before it
//! waits for the connection. The one holding the connection runs its
//! closure inside the open transaction (in a savepoint, unless it is the
//! first: a failure then rolls back only its own part), and commits only
//! if nobody is waiting to add to the batch (or the batch is full);
//! otherwise it leaves the transaction open and waits for the commit that
//! the last of them makes. So under load everyone who arrived during one
//! commit goes into the next, and a lone write commits at once, as before.
//!
//! Each closure still runs alone on the connection, in arrival order, and
//! sees the writes before it: the store's read-decide-write sequences stay
//! as atomic as with one transaction each. A failed commit fails every
//! write of its batch; none of them was answered yet.

use super::{DbError, DbResult, Tx};
use std::collections::HashMap;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

/// Writes in one commit at most. PostgreSQL keeps 64 subtransactions per
/// transaction in shared memory; more would slow every snapshot.
const MAX_BATCH: usize = 64;

/// What group commit needs of a writing connection.
pub(super) trait WriteConn {
    /// Opens a write transaction (taking whatever write lock the
    /// database needs).
    fn begin(&mut self) -> DbResult<()>;
    /// Runs a transaction-control statement (SAVEPOINT, COMMIT, ...).
    fn control(&mut self, sql: &str) -> DbResult<()>;
    /// The open transaction, for a closure to run in.
    fn tx(&mut self) -> DbResult<Tx<'_>>;
    /// Whether the transaction is still open: SQLite ends one by itself on
    /// some errors (a full disk, say), and a lost PostgreSQL connection
    /// ends it too.
    fn in_transaction(&self) -> bool;
}

pub(super) struct GroupCommit<C> {
    writer: Mutex<Writer<C>>,
    committed: Condvar,
    /// Writers waiting for the connection: the batch stays open for them.
    entering: AtomicUsize,
    commits: AtomicU64,
    committed_writes: AtomicU64,
}

/// Commits made and the writes they held: their ratio is how well writes
/// are grouped (`/metrics`).
#[derive(Debug, Clone, Copy, Default)]
pub struct CommitStats {
    pub commits: u64,
    pub writes: u64,
}

struct Writer<C> {
    conn: C,
    open: Option<Batch>,
    next_id: u64,
    /// How ended batches ended, kept until each of their writers has read it.
    ended: HashMap<u64, Ended>,
}

struct Batch {
    id: u64,
    /// Writes that succeeded in it, each waiting for its commit.
    writes: usize,
}

struct Ended {
    result: Result<(), DbError>,
    unread: usize,
}

impl<C: WriteConn> GroupCommit<C> {
    pub(super) fn new(conn: C) -> Self {
        GroupCommit {
            writer: Mutex::new(Writer {
                conn,
                open: None,
                next_id: 0,
                ended: HashMap::new(),
            }),
            committed: Condvar::new(),
            entering: AtomicUsize::new(0),
            commits: AtomicU64::new(0),
            committed_writes: AtomicU64::new(0),
        }
    }

    pub(super) fn stats(&self) -> CommitStats {
        CommitStats {
            commits: self.commits.load(Ordering::Relaxed),
            writes: self.committed_writes.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Writer<C>> {
        // A panic never leaves the bookkeeping half-done (closures' panics
        // are caught), so a poisoned lock is safe to take over.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` in a write transaction shared with the writes that arrive
    /// meanwhile; answers once the commit holding it is durable (or with
    /// the commit's error). An error from `f` undoes only `f`'s writes.
    pub(super) fn write<T, E: From<DbError>>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        self.entering.fetch_add(1, Ordering::SeqCst);
        let mut w = self.lock();
        self.entering.fetch_sub(1, Ordering::SeqCst);
        let (id, first) = match &w.open {
            Some(b) => (b.id, b.writes == 0),
            None => {
                w.conn.begin()?;
                let id = w.next_id;
                w.next_id += 1;
                w.open = Some(Batch { id, writes: 0 });
                (id, true)
            }
        };
        // The first write needs no savepoint: if it fails, the whole
        // transaction holds nothing else and is rolled back.
        if !first {
            if let Err(e) = w.conn.control("SAVEPOINT fogswarm_write") {
                self.end_batch(&mut w, Err(e.clone()));
                return Err(e.into());
            }
        }
        let ran = catch_unwind(AssertUnwindSafe(|| match w.conn.tx() {
            Ok(tx) => f(&tx),
            Err(e) => Err(E::from(e)),
        }));
        let succeeded = matches!(ran, Ok(Ok(_)));
        let undone = match (succeeded, first) {
            (true, true) => Ok(()),
            (true, false) => w.conn.control("RELEASE fogswarm_write"),
            (false, true) => {
                let _ = w.conn.control("ROLLBACK");
                w.open = None;
                Ok(())
            }
            (false, false) => w
                .conn
                .control("ROLLBACK TO fogswarm_write")
                .and_then(|()| w.conn.control("RELEASE fogswarm_write")),
        };
        if let Some(batch) = &mut w.open {
            if succeeded {
                batch.writes += 1;
            }
            let full = batch.writes >= MAX_BATCH;
            if let Err(e) = undone {
                self.end_batch(&mut w, Err(e));
            } else if !w.conn.in_transaction() {
                self.end_batch(
                    &mut w,
                    Err(DbError::Unavailable(
                        "the database ended the transaction (a full disk or a lost connection?)"
                            .into(),
                    )),
                );
            } else if full || self.entering.load(Ordering::SeqCst) == 0 {
                self.commit(&mut w);
            }
        }
        let value = match ran {
            Err(panic) => {
                drop(w);
                resume_unwind(panic)
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(value)) => value,
        };
        loop {
            if let Some(ended) = w.ended.get_mut(&id) {
                ended.unread -= 1;
                let result = ended.result.clone();
                if ended.unread == 0 {
                    w.ended.remove(&id);
                }
                return result.map(|()| value).map_err(E::from);
            }
            w = self.committed.wait(w).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Commits the open batch, if any, and answers its writers.
    fn commit(&self, w: &mut Writer<C>) {
        if let Some(batch) = &w.open {
            let writes = batch.writes as u64;
            let result = w.conn.control("COMMIT");
            if result.is_ok() {
                self.commits.fetch_add(1, Ordering::Relaxed);
                self.committed_writes.fetch_add(writes, Ordering::Relaxed);
            }
            self.end_batch(w, result);
        }
    }

    /// Ends the open batch with `result` (rolled back unless it committed)
    /// and wakes its writers.
    fn end_batch(&self, w: &mut Writer<C>, result: DbResult<()>) {
        let Some(batch) = w.open.take() else { return };
        if result.is_err() && w.conn.in_transaction() {
            let _ = w.conn.control("ROLLBACK");
        }
        if batch.writes > 0 {
            w.ended.insert(
                batch.id,
                Ended {
                    result,
                    unread: batch.writes,
                },
            );
            self.committed.notify_all();
        }
    }

    /// The connection itself, with no batch open (an open one is committed
    /// first): for migrations and backups.
    pub(super) fn with_conn<T>(&self, f: impl FnOnce(&mut C) -> T) -> T {
        let mut w = self.lock();
        self.commit(&mut w);
        f(&mut w.conn)
    }
}

#[cfg(test)]
mod tests {
    use crate::db::{params, Database, DbError, Migration};
    use std::sync::{Arc, Barrier};

    /// A scratch database, and its directory (removed when dropped).
    fn database() -> (Database, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::open_sqlite(
            &dir.path().join("t.db"),
            &[Migration(
                "CREATE TABLE t (k TEXT PRIMARY KEY, v BIGINT NOT NULL)",
            )],
        )
        .expect("open");
        (db, dir)
    }

    fn keys(db: &Database) -> Vec<String> {
        db.read(|tx| {
            tx.query("SELECT k FROM t ORDER BY k", &[])?
                .iter()
                .map(|r| r.get::<String>(0))
                .collect::<Result<Vec<_>, DbError>>()
        })
        .expect("read")
    }

    /// Writers arriving together share commits; a failing or panicking
    /// one undoes only its own writes, and every other one is committed
    /// (and readable) by the time it is answered.
    #[test]
    fn concurrent_writes_share_commits_and_fail_alone() {
        let (db, _dir) = database();
        let db = Arc::new(db);
        let writers = 32;
        let barrier = Arc::new(Barrier::new(writers));
        let threads: Vec<_> = (0..writers)
            .map(|i| {
                let (db, barrier) = (db.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    for round in 0..20 {
                        let key = format!("{i:02}-{round:02}");
                        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            db.write(|tx| {
                                tx.execute("INSERT INTO t (k, v) VALUES ($1, 1)", params![&key])?;
                                // Every seventh write fails after writing,
                                // every 13th panics: neither may leave a row.
                                if (i + round) % 7 == 0 {
                                    return Err(DbError::Other("refused".into()));
                                }
                                if (i + round) % 13 == 0 {
                                    panic!("a writer panicked");
                                }
                                Ok(())
                            })
                        }));
                        let answered = matches!(result, Ok(Ok(())));
                        // Answered means committed: a reader sees it now.
                        let seen = db
                            .read(|tx| {
                                Ok::<_, DbError>(
                                    tx.query_opt("SELECT v FROM t WHERE k = $1", params![&key])?
                                        .is_some(),
                                )
                            })
                            .expect("read");
                        assert_eq!(answered, seen, "{key}: answered {answered}, stored {seen}");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("writer thread");
        }
        let expected: Vec<String> = (0..writers)
            .flat_map(|i| (0..20).map(move |round| (i, round)))
            .filter(|(i, round)| (i + round) % 7 != 0 && (i + round) % 13 != 0)
            .map(|(i, round)| format!("{i:02}-{round:02}"))
            .collect();
        assert_eq!(keys(&db), expected);
        let stats = db.commit_stats();
        assert_eq!(stats.writes, expected.len() as u64);
        assert!(
            stats.commits < stats.writes,
            "32 concurrent writers never shared a commit: {stats:?}"
        );
    }

    /// A statement error inside a later write of a batch (a unique key
    /// violated) rolls back to that write's savepoint only.
    #[test]
    fn a_constraint_error_spares_the_batch() {
        let (db, _dir) = database();
        db.write(|tx| tx.execute("INSERT INTO t (k, v) VALUES ('a', 1)", &[]))
            .expect("first");
        let err = db
            .write(|tx| {
                tx.execute("INSERT INTO t (k, v) VALUES ('b', 1)", &[])?;
                tx.execute("INSERT INTO t (k, v) VALUES ('a', 2)", &[])
            })
            .expect_err("a duplicate key");
        assert!(matches!(err, DbError::Constraint(_)), "{err:?}");
        db.write(|tx| tx.execute("INSERT INTO t (k, v) VALUES ('c', 1)", &[]))
            .expect("after");
        assert_eq!(keys(&db), ["a", "c"]);
    }
}
