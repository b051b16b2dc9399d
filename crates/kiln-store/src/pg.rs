//! kiln's state in PostgreSQL: the same [`Storage`] as the SQLite file,
//! for when the state must outlive one machine (the shared mode of several
//! replicas builds on it). Tables and semantics match [`crate::db`]: an
//! event and the job record it produced commit in one transaction, and
//! `(job_id, sequence)` is the primary key, so a sequence number is never
//! stored twice.
//!
//! The synchronous `postgres` client runs on a thread of its own, which
//! callers hand each operation to and wait on, so it can be called from
//! async code as the SQLite store is. A lost connection is opened again by
//! the next operation. Schema changes run under a transaction-scoped
//! advisory lock, so replicas that start together on an empty database
//! create it once.

use std::collections::HashMap;
use std::sync::{mpsc, Mutex};

use kiln::v1 as pb;
use postgres::error::SqlState;
use postgres::{Client, NoTls};
use prost::Message;

use crate::storage::{DbError, ModelRow, Storage, StoredJob, WriteFault};

/// The schema version this build writes; a newer database is refused.
const SCHEMA_VERSION: i32 = 1;

/// The advisory lock key schema changes hold ("kiln" in ASCII).
const MIGRATION_LOCK: i64 = 0x6b69_6c6e;

/// The advisory lock key an exclusive server holds for as long as it is
/// connected ("kiln-own").
const OWNER_LOCK: i64 = 0x6b69_6c6e_2d6f_776e;

/// How long a connection attempt waits, unless the URL says
/// (`connect_timeout`).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long an exclusive opener waits for the lock before it is refused.
const OWNER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kiln_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    seq        BIGSERIAL PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    model_name TEXT NOT NULL,
    state      INTEGER NOT NULL,
    spec       BYTEA NOT NULL,
    record     BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS job_events (
    job_id   TEXT NOT NULL REFERENCES jobs(id),
    sequence BIGINT NOT NULL,
    event    BYTEA NOT NULL,
    PRIMARY KEY (job_id, sequence)
);
CREATE TABLE IF NOT EXISTS datasets (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    created_unix BIGINT NOT NULL,
    meta         TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS models (
    name         TEXT NOT NULL,
    version      BIGINT NOT NULL,
    job_id       TEXT NOT NULL,
    artifact     TEXT NOT NULL,
    meta         TEXT NOT NULL,
    created_unix BIGINT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS model_aliases (
    name    TEXT NOT NULL,
    alias   TEXT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (name, alias)
);
CREATE TABLE IF NOT EXISTS sweeps (
    seq    BIGSERIAL PRIMARY KEY,
    id     TEXT NOT NULL UNIQUE,
    record BYTEA NOT NULL
);
";

type Op = Box<dyn FnOnce(&mut Connection) + Send>;

/// kiln's [`Storage`] in a PostgreSQL database.
pub struct PgStorage {
    /// `None` once dropped (the thread then ends).
    ops: Mutex<Option<mpsc::Sender<Op>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Why the last write failed; cleared by the next that succeeds.
    fault: Mutex<Option<WriteFault>>,
}

/// The connection the storage thread holds, opened again when lost.
struct Connection {
    url: String,
    client: Option<Client>,
    /// Hold [`OWNER_LOCK`] on every connection: one server per database.
    exclusive: bool,
}

impl Connection {
    fn client(&mut self) -> Result<&mut Client, DbError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            let mut config: postgres::Config = self.url.parse()?;
            // A database that does not answer must not hang a call (or a
            // shutdown) for the operating system's TCP timeout.
            if config.get_connect_timeout().is_none() {
                config.connect_timeout(CONNECT_TIMEOUT);
            }
            let mut client = config.connect(NoTls)?;
            if self.exclusive {
                // A server killed a moment ago may still hold it until its
                // backend sees the connection gone.
                let deadline = std::time::Instant::now() + OWNER_WAIT;
                let owned = loop {
                    let owned: bool = client
                        .query_one("SELECT pg_try_advisory_lock($1)", &[&OWNER_LOCK])?
                        .get(0);
                    if owned || std::time::Instant::now() >= deadline {
                        break owned;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                };
                if !owned {
                    return Err(DbError::Other(
                        "the database is in use by another kiln-server: one server per \
                         database (its state is held in memory)"
                            .into(),
                    ));
                }
            }
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }
}

impl PgStorage {
    /// Connects to `url` (`postgres://user:password@host:port/database`, or
    /// any libpq-style string) and creates or checks the schema. `exclusive`:
    /// holds a session advisory lock, so that a second exclusive opener of
    /// the same database is refused (a server keeps its state in memory and
    /// must be the database's only writer).
    pub fn open(url: &str, exclusive: bool) -> Result<PgStorage, DbError> {
        let (tx, rx) = mpsc::channel::<Op>();
        let mut connection = Connection {
            url: url.to_string(),
            client: None,
            exclusive,
        };
        let thread = std::thread::Builder::new()
            .name("kiln-postgres".into())
            .spawn(move || {
                for op in rx {
                    op(&mut connection);
                }
            })
            .map_err(|e| DbError::Other(format!("starting the database thread: {e}")))?;
        let storage = PgStorage {
            ops: Mutex::new(Some(tx)),
            thread: Some(thread),
            fault: Mutex::new(None),
        };
        storage.run(migrate)?;
        Ok(storage)
    }

    /// Runs `op` on the storage thread's connection and waits for it.
    fn run<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Client) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError> {
        let (reply, answer) = mpsc::sync_channel(1);
        let op: Op = Box::new(move |connection: &mut Connection| {
            let result = connection.client().and_then(op);
            if result.is_err() {
                // A broken connection is not reused.
                connection.client = connection.client.take().filter(|c| !c.is_closed());
            }
            let _ = reply.send(result);
        });
        let stopped = || DbError::Other("the database thread stopped".into());
        self.ops
            .lock()
            .unwrap()
            .as_ref()
            .ok_or_else(stopped)?
            .send(op)
            .map_err(|_| stopped())?;
        answer.recv().map_err(|_| stopped())?
    }

    /// [`run`](Self::run) for a write: its outcome is remembered for
    /// [`Storage::write_fault`].
    fn write(
        &self,
        op: impl FnOnce(&mut Client) -> Result<(), DbError> + Send + 'static,
    ) -> Result<(), DbError> {
        let result = self.run(op);
        *self.fault.lock().unwrap() = result.as_ref().err().map(WriteFault::from);
        result
    }
}

impl Drop for PgStorage {
    /// Lets the database go at once: its locks released before this
    /// returns, so that a next server can take it without waiting.
    fn drop(&mut self) {
        let _ = self.run(|client| {
            client.execute("SELECT pg_advisory_unlock_all()", &[])?;
            Ok(())
        });
        self.ops.lock().unwrap().take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl From<postgres::Error> for DbError {
    fn from(e: postgres::Error) -> Self {
        let full = e
            .as_db_error()
            .is_some_and(|d| *d.code() == SqlState::DISK_FULL);
        match full {
            true => DbError::OutOfSpace(format!("postgres: {e}")),
            false => DbError::Other(format!("postgres: {e}")),
        }
    }
}

/// Creates the tables, once, however many replicas start together.
fn migrate(client: &mut Client) -> Result<(), DbError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(SCHEMA)?;
    let version: Option<i32> = tx
        .query_opt("SELECT max(version) FROM kiln_schema", &[])?
        .and_then(|row| row.get(0));
    match version {
        Some(v) if v > SCHEMA_VERSION => {
            return Err(DbError::Other(format!(
                "schema version {v} is newer than this kiln-server's ({SCHEMA_VERSION})"
            )))
        }
        Some(_) => {}
        None => {
            tx.execute(
                "INSERT INTO kiln_schema (version) VALUES ($1)",
                &[&SCHEMA_VERSION],
            )?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn decode<M: Message + Default>(bytes: &[u8], what: impl Fn() -> String) -> Result<M, DbError> {
    M::decode(bytes).map_err(|error| DbError::Decode {
        what: what(),
        error,
    })
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Storage for PgStorage {
    fn append_event(
        &self,
        record: &pb::Job,
        spec: Option<&pb::JobSpec>,
        event: &pb::JobEvent,
    ) -> Result<(), DbError> {
        let spec = match event.sequence {
            0 => spec.map(Message::encode_to_vec),
            _ => None,
        }
        .unwrap_or_default();
        let (id, model_name, state) = (record.id.clone(), record.model_name.clone(), record.state);
        let record = record.encode_to_vec();
        let (sequence, event) = (event.sequence as i64, event.encode_to_vec());
        self.write(move |client| {
            let mut tx = client.transaction()?;
            tx.execute(
                "INSERT INTO jobs (id, model_name, state, spec, record) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE SET state = excluded.state, record = excluded.record",
                &[&id, &model_name, &state, &spec, &record],
            )?;
            tx.execute(
                "INSERT INTO job_events (job_id, sequence, event) VALUES ($1, $2, $3)",
                &[&id, &sequence, &event],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    fn jobs(&self) -> Result<Vec<StoredJob>, DbError> {
        self.run(|client| {
            let mut events: HashMap<String, Vec<pb::JobEvent>> = HashMap::new();
            for row in client.query(
                "SELECT job_id, sequence, event FROM job_events ORDER BY job_id, sequence",
                &[],
            )? {
                let (id, sequence): (String, i64) = (row.get(0), row.get(1));
                let event = decode(row.get(2), || format!("event {sequence} of job {id}"))?;
                events.entry(id).or_default().push(event);
            }
            let mut jobs = Vec::new();
            for row in client.query("SELECT id, record, spec FROM jobs ORDER BY seq", &[])? {
                let id: String = row.get(0);
                let mut job: pb::Job = decode(row.get(1), || format!("record of job {id}"))?;
                let spec: &[u8] = row.get(2);
                if !spec.is_empty() {
                    job.spec = Some(decode(spec, || format!("spec of job {id}"))?);
                }
                let events = events.remove(&id).unwrap_or_default();
                jobs.push(StoredJob { job, events });
            }
            Ok(jobs)
        })
    }

    fn job_from(&self, id: &str, from: u64) -> Result<Option<StoredJob>, DbError> {
        let id = id.to_string();
        self.run(move |client| {
            let Some(row) =
                client.query_opt("SELECT record, spec FROM jobs WHERE id = $1", &[&id])?
            else {
                return Ok(None);
            };
            let mut job: pb::Job = decode(row.get(0), || format!("record of job {id}"))?;
            let spec: &[u8] = row.get(1);
            if !spec.is_empty() {
                job.spec = Some(decode(spec, || format!("spec of job {id}"))?);
            }
            let mut events = Vec::new();
            for row in client.query(
                "SELECT sequence, event FROM job_events WHERE job_id = $1 AND sequence >= $2 \
                 ORDER BY sequence",
                &[&id, &(from.min(i64::MAX as u64) as i64)],
            )? {
                let sequence: i64 = row.get(0);
                events.push(decode(row.get(1), || {
                    format!("event {sequence} of job {id}")
                })?);
            }
            Ok(Some(StoredJob { job, events }))
        })
    }

    fn put_dataset(
        &self,
        id: &str,
        name: &str,
        created_unix: i64,
        meta_json: &str,
    ) -> Result<(), DbError> {
        let (id, name, meta) = (id.to_string(), name.to_string(), meta_json.to_string());
        self.write(move |client| {
            client.execute(
                "INSERT INTO datasets (id, name, created_unix, meta) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name,
                     created_unix = excluded.created_unix, meta = excluded.meta",
                &[&id, &name, &created_unix, &meta],
            )?;
            Ok(())
        })
    }

    fn datasets(&self) -> Result<Vec<String>, DbError> {
        self.run(|client| {
            let rows = client.query("SELECT meta FROM datasets ORDER BY created_unix, id", &[])?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn put_model(&self, model: &ModelRow) -> Result<(), DbError> {
        let m = model.clone();
        self.write(move |client| {
            client.execute(
                "INSERT INTO models (name, version, job_id, artifact, meta, created_unix)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (name, version) DO UPDATE SET job_id = excluded.job_id,
                     artifact = excluded.artifact, meta = excluded.meta,
                     created_unix = excluded.created_unix",
                &[
                    &m.name,
                    &(m.version as i64),
                    &m.job_id,
                    &m.artifact,
                    &m.meta,
                    &unix_now(),
                ],
            )?;
            Ok(())
        })
    }

    fn delete_model(&self, name: &str, version: u32) -> Result<(), DbError> {
        let (name, version) = (name.to_string(), version as i64);
        self.write(move |client| {
            let mut tx = client.transaction()?;
            tx.execute(
                "DELETE FROM model_aliases WHERE name = $1 AND version = $2",
                &[&name, &version],
            )?;
            tx.execute(
                "DELETE FROM models WHERE name = $1 AND version = $2",
                &[&name, &version],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    fn models(&self) -> Result<Vec<ModelRow>, DbError> {
        self.run(|client| {
            let rows = client.query(
                "SELECT name, version, job_id, artifact, meta FROM models ORDER BY name, version",
                &[],
            )?;
            Ok(rows
                .iter()
                .map(|r| ModelRow {
                    name: r.get(0),
                    version: r.get::<_, i64>(1) as u32,
                    job_id: r.get(2),
                    artifact: r.get(3),
                    meta: r.get(4),
                })
                .collect())
        })
    }

    fn set_alias(&self, name: &str, alias: &str, version: u32) -> Result<(), DbError> {
        let (name, alias, version) = (name.to_string(), alias.to_string(), version as i64);
        self.write(move |client| {
            client.execute(
                "INSERT INTO model_aliases (name, alias, version) VALUES ($1, $2, $3)
                 ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version",
                &[&name, &alias, &version],
            )?;
            Ok(())
        })
    }

    fn aliases(&self) -> Result<Vec<(String, String, u32)>, DbError> {
        self.run(|client| {
            let rows = client.query(
                "SELECT name, alias, version FROM model_aliases ORDER BY name, alias",
                &[],
            )?;
            Ok(rows
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get::<_, i64>(2) as u32))
                .collect())
        })
    }

    fn put_sweep(&self, sweep: &pb::Sweep) -> Result<(), DbError> {
        let (id, record) = (sweep.id.clone(), sweep.encode_to_vec());
        self.write(move |client| {
            client.execute(
                "INSERT INTO sweeps (id, record) VALUES ($1, $2)
                 ON CONFLICT (id) DO UPDATE SET record = excluded.record",
                &[&id, &record],
            )?;
            Ok(())
        })
    }

    fn sweeps(&self) -> Result<Vec<pb::Sweep>, DbError> {
        self.run(|client| {
            let rows = client.query("SELECT id, record FROM sweeps ORDER BY seq", &[])?;
            rows.iter()
                .map(|r| {
                    let id: String = r.get(0);
                    decode(r.get(1), || format!("record of sweep {id}"))
                })
                .collect()
        })
    }

    fn write_fault(&self) -> Option<WriteFault> {
        self.fault.lock().unwrap().clone()
    }

    /// A committed write of its own: the schema version row, rewritten.
    fn probe(&self) -> Result<(), DbError> {
        self.write(|client| {
            client.execute(
                "UPDATE kiln_schema SET version = version WHERE version = $1",
                &[&SCHEMA_VERSION],
            )?;
            Ok(())
        })
    }
}
