//! The durable copy of kiln's state: one SQLite database, `<data_dir>/kiln.db`,
//! kiln's [`Storage`] when it runs as one process.
//!
//! The in-memory stores ([`crate::JobStore`], [`crate::DatasetStore`], the
//! model registry) serve every read; this module is where they write through,
//! and what they load at start.
//!
//! - `jobs`: one row per job (id, model name, state, spec and the `Job`
//!   record as protobuf bytes), in submission order (`seq`). The spec (which
//!   may hold inline data) is written once, with the first event; the stored
//!   record leaves it out and gets it back when loaded.
//! - `job_events`: every `JobEvent` (protobuf bytes) under `(job_id, sequence)`,
//!   the primary key, so a sequence number can never be stored twice. An event
//!   and the job record it produced are written in one transaction.
//! - `datasets`: dataset metadata (JSON of `DatasetMeta`, with the file's SHA-256).
//! - `models`, `model_aliases`: the model registry's versions (name, version,
//!   the job that trained it, its artifact directory under `<data_dir>/models`,
//!   its metadata as JSON) and aliases.
//!
//! The database runs in WAL mode with `synchronous=NORMAL`: a commit is in the
//! WAL before it returns, so a killed process (SIGKILL, OOM, panic) loses
//! nothing, and the database is never corrupted. Only a power loss or kernel
//! crash can drop the last commits before the next checkpoint; then a job that
//! had finished may come back as RUNNING and run again, which recovery handles.
//! FULL would add an fsync to every event (one per epoch per job) for that case.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use kiln::v1 as pb;
use prost::Message;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

// The interface and its types; re-exported here where callers found them.
use crate::storage::Storage;
pub use crate::storage::{DbError, ModelRow, StoredJob, WriteFault};

/// The schema version this build writes; a newer database is refused.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    model_name TEXT NOT NULL,
    state      INTEGER NOT NULL,
    spec       BLOB NOT NULL,
    record     BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS job_events (
    job_id   TEXT NOT NULL REFERENCES jobs(id),
    sequence INTEGER NOT NULL,
    event    BLOB NOT NULL,
    PRIMARY KEY (job_id, sequence)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS datasets (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    created_unix INTEGER NOT NULL,
    meta         TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS models (
    name         TEXT NOT NULL,
    version      INTEGER NOT NULL,
    job_id       TEXT NOT NULL,
    artifact     TEXT NOT NULL,
    meta         TEXT NOT NULL,
    created_unix INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS model_aliases (
    name    TEXT NOT NULL,
    alias   TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (name, alias)
);
CREATE TABLE IF NOT EXISTS sweeps (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    id     TEXT NOT NULL UNIQUE,
    record BLOB NOT NULL
);
";

/// The SQLite database: kiln's [`Storage`] in one process.
pub struct Db {
    conn: Mutex<Connection>,
    /// The file; `None` in memory.
    path: Option<PathBuf>,
    /// Opened read-only because the disk was full (see [`Db::open`]): the
    /// next write first tries to open it for writing again.
    read_only: AtomicBool,
    /// Why the last write failed; cleared by the next that succeeds.
    fault: Mutex<Option<WriteFault>>,
}

impl Db {
    /// Opens (creating) the database file and its tables.
    ///
    /// On a disk so full that SQLite cannot even set up its shared-memory
    /// index, a database whose write-ahead log is empty (the last server
    /// stopped cleanly) is opened read-only instead, so that what it holds
    /// is still served; writes then fail as out of space, each first trying
    /// to open it for writing again, so the first one after space comes back
    /// succeeds.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| DbError::Other(e.to_string()))?;
        }
        match open_for_writing(path) {
            Ok(conn) => Self::init(conn, Some(path.to_path_buf()), false),
            Err(e) if e.is_out_of_space() && wal_is_empty(path) => {
                tracing::warn!(error = %e, path = %path.display(), "disk full: database opened read-only");
                let db = Self::init(open_read_only(path)?, Some(path.to_path_buf()), true)?;
                db.note(&Err::<(), _>(DbError::OutOfSpace(format!(
                    "the disk is full, so the database was opened read-only ({e})"
                ))));
                Ok(db)
            }
            Err(e) => Err(e),
        }
    }

    /// A database in memory (unit tests).
    pub fn open_in_memory() -> Result<Db, DbError> {
        Self::init(Connection::open_in_memory()?, None, false)
    }

    fn init(conn: Connection, path: Option<PathBuf>, read_only: bool) -> Result<Db, DbError> {
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(DbError::Other(format!(
                "schema version {version} is newer than this kiln-server's ({SCHEMA_VERSION})"
            )));
        }
        // Nothing is written when the schema is current: a full disk must
        // not keep the state it holds from being read.
        if version < SCHEMA_VERSION {
            conn.execute_batch(SCHEMA)?;
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        }
        Ok(Db {
            conn: Mutex::new(conn),
            path,
            read_only: AtomicBool::new(read_only),
            fault: Mutex::new(None),
        })
    }

    /// The stored state of one job, if any (tests, diagnostics).
    pub fn job_state(&self, id: &str) -> Result<Option<i32>, DbError> {
        let conn = self.conn.lock().unwrap();
        Ok(conn
            .query_row("SELECT state FROM jobs WHERE id = ?1", [id], |r| r.get(0))
            .optional()?)
    }

    /// Whether it was opened read-only for lack of space and has not been
    /// opened for writing since.
    pub fn is_read_only(&self) -> bool {
        self.read_only.load(Ordering::SeqCst)
    }

    /// Runs `write` on the connection, first opened for writing again if it
    /// was opened read-only; remembers the outcome for [`Storage::write_fault`].
    fn write<T>(
        &self,
        write: impl FnOnce(&mut Connection) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let mut conn = self.conn.lock().unwrap();
        let result = self
            .reopen_for_writing(&mut conn)
            .and_then(|()| write(&mut conn));
        self.note(&result);
        result
    }

    fn reopen_for_writing(&self, conn: &mut Connection) -> Result<(), DbError> {
        if !self.read_only.load(Ordering::SeqCst) {
            return Ok(());
        }
        let path = self
            .path
            .as_deref()
            .expect("only a file is opened read-only");
        *conn = open_for_writing(path).map_err(|e| match e.is_out_of_space() {
            true => DbError::OutOfSpace(format!("opened read-only because the disk is full ({e})")),
            false => e,
        })?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        self.read_only.store(false, Ordering::SeqCst);
        tracing::info!(path = %path.display(), "database open for writing again");
        Ok(())
    }

    fn note<T>(&self, result: &Result<T, DbError>) {
        *self.fault.lock().unwrap() = result.as_ref().err().map(WriteFault::from);
    }
}

/// The database as kiln normally runs it: WAL, `synchronous=NORMAL`.
fn open_for_writing(path: &Path) -> Result<Connection, DbError> {
    let conn = Connection::open(path)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(DbError::Other(format!(
            "{}: journal_mode is {mode}, WAL was asked for",
            path.display()
        )));
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// Read-only without SQLite's shared memory (`immutable=1`), which needs
/// space to set up: correct only while nothing else writes it (the data
/// directory's lock sees to that) and its WAL is empty.
fn open_read_only(path: &Path) -> Result<Connection, DbError> {
    let escaped: String = path
        .to_string_lossy()
        .chars()
        .map(|c| match c {
            '%' | '?' | '#' => format!("%{:02X}", c as u32),
            c => c.to_string(),
        })
        .collect();
    Ok(Connection::open_with_flags(
        format!("file:{escaped}?immutable=1"),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
    )?)
}

/// Whether the database's write-ahead log holds nothing (absent or empty):
/// then the main file alone is the whole database.
fn wal_is_empty(path: &Path) -> bool {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(PathBuf::from(wal)).map_or(true, |m| m.len() == 0)
}

impl Storage for Db {
    /// Stores `event` and the job record as it stands after it, atomically.
    /// `record` is the job without its spec (the caller takes it out, so that
    /// a large inline spec is not encoded again on every event); `spec` is
    /// stored with the first event (sequence 0) only.
    /// A sequence number already stored for the job is an error (nothing is written).
    fn append_event(
        &self,
        record: &pb::Job,
        spec: Option<&pb::JobSpec>,
        event: &pb::JobEvent,
    ) -> Result<(), DbError> {
        let job = record;
        let spec = crate::storage::spec_to_store(spec, event);
        let record = record.encode_to_vec();
        self.write(|conn| {
            let tx = conn.transaction()?;
            tx.execute(
                "INSERT INTO jobs (id, model_name, state, spec, record) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(id) DO UPDATE SET state = excluded.state, record = excluded.record",
                params![
                    job.id,
                    job.model_name,
                    job.state,
                    spec.unwrap_or_default(),
                    record
                ],
            )?;
            tx.execute(
                "INSERT INTO job_events (job_id, sequence, event) VALUES (?1, ?2, ?3)",
                params![job.id, event.sequence as i64, event.encode_to_vec()],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    fn job_from(&self, id: &str, from: u64) -> Result<Option<StoredJob>, DbError> {
        let conn = self.conn.lock().unwrap();
        let row: Option<(Vec<u8>, Vec<u8>)> = conn
            .query_row("SELECT record, spec FROM jobs WHERE id = ?1", [id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let Some((record, spec)) = row else {
            return Ok(None);
        };
        let mut job = pb::Job::decode(record.as_slice()).map_err(|error| DbError::Decode {
            what: format!("record of job {id}"),
            error,
        })?;
        if !spec.is_empty() {
            job.spec =
                Some(
                    pb::JobSpec::decode(spec.as_slice()).map_err(|error| DbError::Decode {
                        what: format!("spec of job {id}"),
                        error,
                    })?,
                );
        }
        let mut stmt = conn.prepare(
            "SELECT sequence, event FROM job_events WHERE job_id = ?1 AND sequence >= ?2 ORDER BY sequence",
        )?;
        let mut events = Vec::new();
        let from = from.min(i64::MAX as u64) as i64;
        for row in stmt.query_map(params![id, from], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
        })? {
            let (sequence, bytes) = row?;
            events.push(pb::JobEvent::decode(bytes.as_slice()).map_err(|error| {
                DbError::Decode {
                    what: format!("event {sequence} of job {id}"),
                    error,
                }
            })?);
        }
        Ok(Some(StoredJob { job, events }))
    }

    /// Every job in submission order, with its events.
    fn jobs(&self) -> Result<Vec<StoredJob>, DbError> {
        let conn = self.conn.lock().unwrap();
        let mut jobs = Vec::new();
        let mut stmt = conn.prepare("SELECT id, record, spec FROM jobs ORDER BY seq")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })?;
        let mut events = conn.prepare(
            "SELECT sequence, event FROM job_events WHERE job_id = ?1 ORDER BY sequence",
        )?;
        for row in rows {
            let (id, record, spec) = row?;
            let mut job = pb::Job::decode(record.as_slice()).map_err(|error| DbError::Decode {
                what: format!("record of job {id}"),
                error,
            })?;
            if !spec.is_empty() {
                job.spec = Some(pb::JobSpec::decode(spec.as_slice()).map_err(|error| {
                    DbError::Decode {
                        what: format!("spec of job {id}"),
                        error,
                    }
                })?);
            }
            let mut log = Vec::new();
            for e in events.query_map([&id], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
            })? {
                let (sequence, bytes) = e?;
                log.push(pb::JobEvent::decode(bytes.as_slice()).map_err(|error| {
                    DbError::Decode {
                        what: format!("event {sequence} of job {id}"),
                        error,
                    }
                })?);
            }
            jobs.push(StoredJob { job, events: log });
        }
        Ok(jobs)
    }

    /// Stores (or replaces) a dataset's metadata, as JSON.
    fn put_dataset(
        &self,
        id: &str,
        name: &str,
        created_unix: i64,
        meta_json: &str,
    ) -> Result<(), DbError> {
        self.write(|conn| {
            conn.execute(
                "INSERT OR REPLACE INTO datasets (id, name, created_unix, meta) VALUES (?1, ?2, ?3, ?4)",
                params![id, name, created_unix, meta_json],
            )?;
            Ok(())
        })
    }

    /// Every dataset's metadata JSON.
    fn datasets(&self) -> Result<Vec<String>, DbError> {
        let conn = self.conn.lock().unwrap();
        let mut stmt = conn.prepare("SELECT meta FROM datasets ORDER BY created_unix, id")?;
        let metas = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<_, _>>()?;
        Ok(metas)
    }

    /// Records a registry version.
    fn put_model(&self, model: &ModelRow) -> Result<(), DbError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.write(|conn| {
            conn.execute(
                "INSERT OR REPLACE INTO models (name, version, job_id, artifact, meta, created_unix)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    model.name,
                    model.version,
                    model.job_id,
                    model.artifact,
                    model.meta,
                    now
                ],
            )?;
            Ok(())
        })
    }

    /// Forgets a registry version and the aliases pointing at it.
    fn delete_model(&self, name: &str, version: u32) -> Result<(), DbError> {
        self.write(|conn| {
            let tx = conn.transaction()?;
            tx.execute(
                "DELETE FROM model_aliases WHERE name = ?1 AND version = ?2",
                params![name, version],
            )?;
            tx.execute(
                "DELETE FROM models WHERE name = ?1 AND version = ?2",
                params![name, version],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Every registry version, by name then version.
    fn models(&self) -> Result<Vec<ModelRow>, DbError> {
        let conn = self.conn.lock().unwrap();
        let mut stmt = conn.prepare(
            "SELECT name, version, job_id, artifact, meta FROM models ORDER BY name, version",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(ModelRow {
                    name: r.get(0)?,
                    version: r.get(1)?,
                    job_id: r.get(2)?,
                    artifact: r.get(3)?,
                    meta: r.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Points `alias` of `name` at `version`.
    fn set_alias(&self, name: &str, alias: &str, version: u32) -> Result<(), DbError> {
        self.write(|conn| {
            conn.execute(
                "INSERT OR REPLACE INTO model_aliases (name, alias, version) VALUES (?1, ?2, ?3)",
                params![name, alias, version],
            )?;
            Ok(())
        })
    }

    /// Every alias as (model name, alias, version), by name then alias.
    fn aliases(&self) -> Result<Vec<(String, String, u32)>, DbError> {
        let conn = self.conn.lock().unwrap();
        let mut stmt =
            conn.prepare("SELECT name, alias, version FROM model_aliases ORDER BY name, alias")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Stores a sweep's record (its request, state and trials), replacing
    /// the one stored before; sweeps keep their submission order.
    fn put_sweep(&self, sweep: &pb::Sweep) -> Result<(), DbError> {
        self.write(|conn| {
            conn.execute(
                "INSERT INTO sweeps (id, record) VALUES (?1, ?2)
                 ON CONFLICT(id) DO UPDATE SET record = excluded.record",
                params![sweep.id, sweep.encode_to_vec()],
            )?;
            Ok(())
        })
    }

    /// Every sweep's last stored record, in submission order.
    fn sweeps(&self) -> Result<Vec<pb::Sweep>, DbError> {
        let conn = self.conn.lock().unwrap();
        let mut stmt = conn.prepare("SELECT id, record FROM sweeps ORDER BY seq")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut sweeps = Vec::new();
        for row in rows {
            let (id, record) = row?;
            sweeps.push(
                pb::Sweep::decode(record.as_slice()).map_err(|error| DbError::Decode {
                    what: format!("record of sweep {id}"),
                    error,
                })?,
            );
        }
        Ok(sweeps)
    }

    fn write_fault(&self) -> Option<WriteFault> {
        self.fault.lock().unwrap().clone()
    }

    /// Rewrites the schema version in a transaction of its own: one page
    /// of the write-ahead log, synced like every commit.
    fn probe(&self) -> Result<(), DbError> {
        self.write(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            tx.commit()?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, state: pb::JobState) -> pb::Job {
        pb::Job {
            id: id.into(),
            model_name: format!("m-{id}"),
            state: state as i32,
            ..Default::default()
        }
    }

    fn spec(id: &str) -> pb::JobSpec {
        pb::JobSpec {
            model_name: format!("m-{id}"),
            ..Default::default()
        }
    }

    fn event(id: &str, sequence: u64, state: pb::JobState) -> pb::JobEvent {
        pb::JobEvent {
            job_id: id.into(),
            sequence,
            time: None,
            kind: Some(pb::job_event::Kind::StateChanged(pb::StateChanged {
                state: state as i32,
                ..Default::default()
            })),
        }
    }

    fn temp_db(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("kiln-db-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("kiln.db")
    }

    #[test]
    fn events_and_records_round_trip_in_order() {
        let db = Db::open_in_memory().unwrap();
        db.append_event(
            &job("b", pb::JobState::Queued),
            Some(&spec("b")),
            &event("b", 0, pb::JobState::Queued),
        )
        .unwrap();
        db.append_event(
            &job("a", pb::JobState::Queued),
            Some(&spec("a")),
            &event("a", 0, pb::JobState::Queued),
        )
        .unwrap();
        db.append_event(
            &job("b", pb::JobState::Running),
            Some(&spec("b")),
            &event("b", 1, pb::JobState::Running),
        )
        .unwrap();
        let jobs = db.jobs().unwrap();
        let ids: Vec<_> = jobs.iter().map(|j| j.job.id.as_str()).collect();
        assert_eq!(ids, ["b", "a"], "submission order");
        assert_eq!(jobs[0].job.state(), pb::JobState::Running);
        assert_eq!(jobs[0].job.spec.as_ref().unwrap().model_name, "m-b");
        assert_eq!(
            jobs[0].events,
            vec![
                event("b", 0, pb::JobState::Queued),
                event("b", 1, pb::JobState::Running)
            ]
        );
        assert_eq!(
            db.job_state("b").unwrap(),
            Some(pb::JobState::Running as i32)
        );
        assert_eq!(db.job_state("zz").unwrap(), None);
    }

    #[test]
    fn a_duplicate_sequence_is_refused_and_the_record_kept() {
        let db = Db::open_in_memory().unwrap();
        db.append_event(
            &job("a", pb::JobState::Queued),
            Some(&spec("a")),
            &event("a", 0, pb::JobState::Queued),
        )
        .unwrap();
        let err = db
            .append_event(
                &job("a", pb::JobState::Running),
                Some(&spec("a")),
                &event("a", 0, pb::JobState::Running),
            )
            .unwrap_err();
        assert!(err.to_string().contains("UNIQUE"), "{err}");
        // The transaction rolled back: the record did not move either.
        assert_eq!(
            db.job_state("a").unwrap(),
            Some(pb::JobState::Queued as i32)
        );
        assert_eq!(db.jobs().unwrap()[0].events.len(), 1);
    }

    #[test]
    fn survives_reopening_a_file() {
        let path = temp_db("reopen");
        {
            let db = Db::open(&path).unwrap();
            db.append_event(
                &job("a", pb::JobState::Queued),
                Some(&spec("a")),
                &event("a", 0, pb::JobState::Queued),
            )
            .unwrap();
            db.put_dataset("ds-1", "rings", 7, "{\"id\":\"ds-1\"}")
                .unwrap();
            let row = ModelRow {
                name: "rings".into(),
                version: 1,
                job_id: "a".into(),
                artifact: "a".into(),
                meta: "{}".into(),
            };
            db.put_model(&row).unwrap();
            db.put_model(&ModelRow {
                version: 2,
                job_id: String::new(),
                artifact: "import-x".into(),
                ..row
            })
            .unwrap();
            db.set_alias("rings", "production", 1).unwrap();
            db.set_alias("rings", "staging", 2).unwrap();
            db.set_alias("rings", "production", 2).unwrap();
        }
        let db = Db::open(&path).unwrap();
        let mode: String = db
            .conn
            .lock()
            .unwrap()
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(db.jobs().unwrap().len(), 1);
        assert_eq!(db.datasets().unwrap(), ["{\"id\":\"ds-1\"}"]);
        let models = db.models().unwrap();
        assert_eq!(
            models
                .iter()
                .map(|m| (m.version, m.artifact.as_str()))
                .collect::<Vec<_>>(),
            [(1, "a"), (2, "import-x")]
        );
        assert_eq!(
            db.aliases().unwrap(),
            [
                ("rings".to_string(), "production".to_string(), 2),
                ("rings".to_string(), "staging".to_string(), 2)
            ]
        );
        db.delete_model("rings", 2).unwrap();
        assert_eq!(db.models().unwrap().len(), 1);
        assert!(db.aliases().unwrap().is_empty());
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let path = temp_db("newer");
        drop(Db::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let err = Db::open(&path).err().expect("refused");
        assert!(err.to_string().contains("newer"), "{err}");
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
