//! kiln's state in PostgreSQL: the shared mode, where several kiln
//! processes (api, serve and trainer replicas) keep one state. Tables and
//! semantics match [`crate::db`]: an event and the job record it produced
//! commit in one transaction, and `(job_id, sequence)` is the primary key,
//! so a sequence number is stored once: a second process that tries gets
//! [`DbError::Conflict`], reads the job again and decides anew.
//!
//! Trainers take jobs by lease (`job_leases`: owner, attempt, expiry):
//! [`Storage::claim_job`] picks the oldest job no live lease holds with
//! `FOR UPDATE SKIP LOCKED`, and from then on every write this process
//! makes for that job (its events, its model version) commits only while
//! the lease with that attempt is still this process's and unexpired,
//! checked in the write's own transaction. A trainer that was paused or cut
//! off past its lease can therefore write nothing that counts.
//!
//! Other processes learn of a change from a `NOTIFY kiln_changes` that the
//! write sends on commit ([`Storage::wait_for_changes`], listening on a
//! connection of its own); it is a hint, and the readers' poll stays the
//! backstop, so a notification lost to a reconnect costs at most a poll.
//!
//! The synchronous `postgres` client runs on a thread of its own, which
//! callers hand each operation to and wait on, so it can be called from
//! async code as the SQLite store is. A lost connection is opened again by
//! the next operation. Schema changes run under a transaction-scoped
//! advisory lock, so replicas that start together on an empty database
//! create it once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};

use kiln::v1 as pb;
use postgres::error::SqlState;
use postgres::{Client, NoTls};
use prost::Message;

use crate::storage::{Claim, DbError, LeaseState, ModelRow, Storage, StoredJob, WriteFault};

/// The schema version this build writes; a newer database is refused.
/// 2: job heads (`events`, `updated_at`), `needs_gpu`, and leases.
const SCHEMA_VERSION: i32 = 2;

/// The advisory lock key schema changes hold ("kiln" in ASCII).
const MIGRATION_LOCK: i64 = 0x6b69_6c6e;

/// The channel writes notify, for other processes to read what changed.
const CHANGES: &str = "kiln_changes";

/// How long a connection attempt waits, unless the URL says
/// (`connect_timeout`).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

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
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS events BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS updated_at TIMESTAMPTZ NOT NULL DEFAULT now();
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS needs_gpu BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS jobs_updated_at ON jobs (updated_at);
-- What trainers look through for a job to take: the unfinished ones.
CREATE INDEX IF NOT EXISTS jobs_unfinished ON jobs (seq) WHERE state IN (1, 2);
CREATE TABLE IF NOT EXISTS job_leases (
    job_id     TEXT PRIMARY KEY REFERENCES jobs(id),
    owner      TEXT NOT NULL,
    attempt    BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    cancel     BOOLEAN NOT NULL DEFAULT false,
    -- A policy's cancel (a sweep's pruning): the StopReason and message.
    stop_reason  INTEGER,
    stop_message TEXT
);
ALTER TABLE sweeps ADD COLUMN IF NOT EXISTS ended BOOLEAN NOT NULL DEFAULT false;
-- A sweep's controller: one process at a time (no reference to sweeps: a
-- submission holds the lease before its record is stored).
CREATE TABLE IF NOT EXISTS sweep_leases (
    sweep_id   TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    attempt    BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    -- CancelSweep on any replica, for the one that controls it.
    cancel     BOOLEAN NOT NULL DEFAULT false
);
";

/// Job states as the `jobs.state` column holds them.
const QUEUED: i32 = pb::JobState::Queued as i32;
const RUNNING: i32 = pb::JobState::Running as i32;

type Op = Box<dyn FnOnce(&mut Connection) + Send>;

/// kiln's [`Storage`] in a PostgreSQL database.
pub struct PgStorage {
    /// `None` once dropped (the thread then ends).
    ops: Mutex<Option<mpsc::Sender<Op>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Why the last write failed; cleared by the next that succeeds.
    fault: Mutex<Option<WriteFault>>,
    /// This process in `job_leases.owner`: host, pid and a random part.
    owner: String,
    /// The leases this process holds: job id → attempt. Every write for one
    /// of these jobs is fenced by it.
    leases: Held,
    /// The sweep leases this process holds: sweep id → attempt; the
    /// sweep's record writes are fenced by it.
    sweep_leases: Held,
    url: String,
    /// Notifications received on [`CHANGES`], once a caller waits for them.
    changes: Arc<Changes>,
}

/// What the listener thread counts, and how waiters learn of it.
#[derive(Default)]
struct Changes {
    count: Mutex<u64>,
    changed: Condvar,
    /// The listener thread has been started.
    listening: AtomicBool,
    /// The storage was dropped: the listener ends.
    stopped: AtomicBool,
}

impl Changes {
    fn bump(&self) {
        *self.count.lock().unwrap() += 1;
        self.changed.notify_all();
    }
}

/// Listens on [`CHANGES`] on a connection of its own, counting what comes;
/// a lost connection is opened again (counted as a change: some may have
/// been missed).
fn listen(url: String, changes: Arc<Changes>) {
    use postgres::fallible_iterator::FallibleIterator;
    while !changes.stopped.load(Ordering::SeqCst) {
        let connected = connect(&url).and_then(|mut client| {
            client.batch_execute(&format!("LISTEN {CHANGES}"))?;
            Ok(client)
        });
        let Ok(mut client) = connected else {
            std::thread::sleep(std::time::Duration::from_secs(1));
            continue;
        };
        changes.bump();
        while !changes.stopped.load(Ordering::SeqCst) && !client.is_closed() {
            let mut notifications = client.notifications();
            let mut waiting = notifications.timeout_iter(std::time::Duration::from_secs(1));
            match waiting.next() {
                Ok(Some(_)) => changes.bump(),
                Ok(None) => {}
                Err(_) => break,
            }
        }
    }
}

/// The connection the storage thread holds, opened again when lost.
struct Connection {
    url: String,
    client: Option<Client>,
}

/// A new connection to `url`, with the timeouts every connection here has.
fn connect(url: &str) -> Result<Client, postgres::Error> {
    let mut config: postgres::Config = url.parse()?;
    // A database that does not answer must not hang a call (or a
    // shutdown) for the operating system's TCP timeout.
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    // A connection whose peer vanished (a failover, a cut network) fails
    // within seconds instead of hanging a call and every caller queued
    // behind it.
    config
        .keepalives(true)
        .keepalives_idle(std::time::Duration::from_secs(10))
        .tcp_user_timeout(std::time::Duration::from_secs(20));
    config.connect(NoTls)
}

impl Connection {
    fn client(&mut self) -> Result<&mut Client, DbError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            let mut client = connect(&self.url)?;
            // Every transaction here lasts milliseconds: one left open by a
            // paused or cut-off process must not hold its row locks (and so
            // its jobs) for long.
            client.batch_execute(
                "SET idle_in_transaction_session_timeout = 5000; SET statement_timeout = 30000",
            )?;
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }
}

impl PgStorage {
    /// Connects to `url` (`postgres://user:password@host:port/database`, or
    /// any libpq-style string) and creates or checks the schema.
    pub fn open(url: &str) -> Result<PgStorage, DbError> {
        let (tx, rx) = mpsc::channel::<Op>();
        let mut connection = Connection {
            url: url.to_string(),
            client: None,
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
            owner: owner_name(),
            leases: Mutex::default(),
            sweep_leases: Mutex::default(),
            url: url.to_string(),
            changes: Arc::default(),
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
    fn write<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Client) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError> {
        let result = self.run(op);
        // A conflict or a fenced write is refused for what it said: the
        // database itself is fine.
        *self.fault.lock().unwrap() = result
            .as_ref()
            .err()
            .filter(|e| !e.is_refusal())
            .map(WriteFault::from);
        result
    }

    /// The lease this process holds on `id` in `leases`, if any: (owner,
    /// attempt).
    fn fence(&self, leases: &Held, id: &str) -> Option<(String, i64)> {
        let attempt = *leases.lock().unwrap().get(id)?;
        Some((self.owner.clone(), attempt))
    }
}

/// `host:pid:random`: unique per process, readable in the table.
fn owner_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{host}:{}:{nanos:08x}", std::process::id())
}

/// A table of leases, one row per leased thing (`key`): its `owner`,
/// `attempt` (one more each time another process takes it), `expires_at`,
/// and `cancel`. Jobs' and sweeps' leases work alike.
struct LeaseTable {
    table: &'static str,
    key: &'static str,
}

const JOB_LEASES: LeaseTable = LeaseTable {
    table: "job_leases",
    key: "job_id",
};

const SWEEP_LEASES: LeaseTable = LeaseTable {
    table: "sweep_leases",
    key: "sweep_id",
};

/// This process's leases of one table: id → attempt.
type Held = Mutex<HashMap<String, i64>>;

/// What a process holds now, to renew.
fn held(leases: &Held) -> Vec<(String, i64)> {
    let leases = leases.lock().unwrap();
    leases.iter().map(|(id, a)| (id.clone(), *a)).collect()
}

impl LeaseTable {
    /// Takes the lease on `id` for `owner`, if it is free now (none, or
    /// expired): its attempt and whether a cancel was asked for; `None`
    /// when another process holds it. Free is checked at insert time, not
    /// from a snapshot a claim that committed meanwhile has made stale.
    fn take(
        &self,
        tx: &mut postgres::Transaction<'_>,
        id: &str,
        owner: &str,
        lease: f64,
    ) -> Result<Option<(i64, bool)>, DbError> {
        let LeaseTable { table, key } = self;
        let row = tx.query_opt(
            &format!(
                "INSERT INTO {table} ({key}, owner, attempt, expires_at) \
                 VALUES ($1, $2, 1, now() + make_interval(secs => $3)) \
                 ON CONFLICT ({key}) DO UPDATE SET owner = excluded.owner, \
                     attempt = {table}.attempt + 1, expires_at = excluded.expires_at \
                     WHERE {table}.expires_at <= now() \
                 RETURNING attempt, cancel"
            ),
            &[&id, &owner, &lease],
        )?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Checks, inside `tx`, that `fence` (owner, attempt) still holds the
    /// lease on `id` and it has not expired; locks the lease row until
    /// commit so that no process takes it meanwhile.
    fn check(
        &self,
        tx: &mut postgres::Transaction<'_>,
        id: &str,
        fence: &Option<(String, i64)>,
    ) -> Result<(), DbError> {
        let Some((owner, attempt)) = fence else {
            return Ok(());
        };
        let LeaseTable { table, key } = self;
        let held = tx.query_opt(
            &format!(
                "SELECT 1 FROM {table} WHERE {key} = $1 AND owner = $2 AND attempt = $3 \
                 AND expires_at > now() FOR SHARE"
            ),
            &[&id, owner, attempt],
        )?;
        match held {
            Some(_) => Ok(()),
            None => Err(DbError::Fenced(id.to_string())),
        }
    }

    /// Extends the `held` leases still this owner's and unexpired by
    /// `lease`; the rows renewed, with `{key}` first, then `columns`.
    fn renew(
        &self,
        client: &mut Client,
        held: &[(String, i64)],
        owner: &str,
        lease: f64,
        columns: &str,
    ) -> Result<Vec<postgres::Row>, DbError> {
        let LeaseTable { table, key } = self;
        let (ids, attempts): (Vec<String>, Vec<i64>) = held.iter().cloned().unzip();
        // An expired lease is not renewed: another process may be taking
        // it, so this one has lost it.
        Ok(client.query(
            &format!(
                "UPDATE {table} l SET expires_at = now() + make_interval(secs => $3) \
                 FROM unnest($1::text[], $2::bigint[]) AS h(id, attempt) \
                 WHERE l.{key} = h.id AND l.attempt = h.attempt AND l.owner = $4 \
                   AND l.expires_at > now() \
                 RETURNING l.{key}, {columns}"
            ),
            &[&ids, &attempts, &lease, &owner],
        )?)
    }

    /// Gives the lease up: expired now rather than deleted, so that the
    /// attempt count (and a cancel asked for) stay.
    fn release(
        &self,
        client: &mut Client,
        id: &str,
        owner: &str,
        attempt: i64,
    ) -> Result<(), DbError> {
        let LeaseTable { table, key } = self;
        client.execute(
            &format!(
                "UPDATE {table} SET expires_at = now() \
                 WHERE {key} = $1 AND owner = $2 AND attempt = $3"
            ),
            &[&id, &owner, &attempt],
        )?;
        Ok(())
    }
}

/// A lease of `lease` from now, as SQL takes it (seconds).
fn seconds(lease: std::time::Duration) -> f64 {
    lease.as_secs_f64()
}

impl Drop for PgStorage {
    /// Lets the database go at once: its locks released before this
    /// returns, so that a next server can take it without waiting.
    fn drop(&mut self) {
        self.changes.stopped.store(true, Ordering::SeqCst);
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
        match e.as_db_error().map(|d| d.code().clone()) {
            Some(SqlState::DISK_FULL) => DbError::OutOfSpace(format!("postgres: {e}")),
            Some(SqlState::UNIQUE_VIOLATION) => DbError::Conflict(format!("postgres: {e}")),
            _ => DbError::Other(format!("postgres: {e}")),
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
        Some(SCHEMA_VERSION) => {}
        Some(_) => {
            // Version 1 had no event counts: they are counted once.
            tx.batch_execute(
                "UPDATE jobs j SET events = (SELECT count(*) FROM job_events e WHERE e.job_id = j.id);
                 UPDATE kiln_schema SET version = 2;",
            )?;
        }
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
        let needs_gpu = spec.is_some_and(|s| s.device() == pb::Device::Cuda);
        let spec = crate::storage::spec_to_store(spec, event).unwrap_or_default();
        let (id, model_name, state) = (record.id.clone(), record.model_name.clone(), record.state);
        let record = record.encode_to_vec();
        let (sequence, event) = (event.sequence as i64, event.encode_to_vec());
        let fence = self.fence(&self.leases, &id);
        self.write(move |client| {
            let mut tx = client.transaction()?;
            // The job's row before its lease's, as a claim takes them: two
            // transactions never wait on each other in a circle.
            tx.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", &[&id])?;
            JOB_LEASES.check(&mut tx, &id, &fence)?;
            tx.execute(
                "INSERT INTO jobs (id, model_name, state, spec, record, events, needs_gpu)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (id) DO UPDATE SET state = excluded.state, record = excluded.record,
                     events = excluded.events, updated_at = now()",
                &[
                    &id,
                    &model_name,
                    &state,
                    &spec,
                    &record,
                    &(sequence + 1),
                    &needs_gpu,
                ],
            )?;
            tx.execute(
                "INSERT INTO job_events (job_id, sequence, event) VALUES ($1, $2, $3)",
                &[&id, &sequence, &event],
            )?;
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANGES, &id])?;
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
            // One snapshot: the record is the one its events produced.
            let mut client = client
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
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
            client.commit()?;
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
            client.execute("SELECT pg_notify($1, $2)", &[&CHANGES, &id])?;
            Ok(())
        })
    }

    fn datasets(&self) -> Result<Vec<String>, DbError> {
        self.run(|client| {
            let rows = client.query("SELECT meta FROM datasets ORDER BY created_unix, id", &[])?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    /// A version another process stored under the same number is a
    /// [`DbError::Conflict`] (saving the same row again is not); a job's
    /// version is fenced by the job's lease.
    fn put_model(&self, model: &ModelRow) -> Result<(), DbError> {
        let m = model.clone();
        let fence = self.fence(&self.leases, &m.job_id);
        self.write(move |client| {
            let mut tx = client.transaction()?;
            JOB_LEASES.check(&mut tx, &m.job_id, &fence)?;
            let stored = tx.execute(
                "INSERT INTO models (name, version, job_id, artifact, meta, created_unix)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (name, version) DO UPDATE SET meta = excluded.meta
                 WHERE models.job_id = excluded.job_id AND models.artifact = excluded.artifact",
                &[
                    &m.name,
                    &(m.version as i64),
                    &m.job_id,
                    &m.artifact,
                    &m.meta,
                    &unix_now(),
                ],
            )?;
            if stored == 0 {
                return Err(DbError::Conflict(format!(
                    "version {} of model {} is another's",
                    m.version, m.name
                )));
            }
            tx.commit()?;
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

    /// Fenced by this process's sweep lease, when it holds one.
    fn put_sweep(&self, sweep: &pb::Sweep) -> Result<(), DbError> {
        let (id, record) = (sweep.id.clone(), sweep.encode_to_vec());
        let ended = matches!(
            sweep.state(),
            pb::SweepState::Succeeded | pb::SweepState::Failed | pb::SweepState::Cancelled
        );
        let fence = self.fence(&self.sweep_leases, &id);
        self.write(move |client| {
            let mut tx = client.transaction()?;
            SWEEP_LEASES.check(&mut tx, &id, &fence)?;
            tx.execute(
                "INSERT INTO sweeps (id, record, ended) VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO UPDATE SET record = excluded.record, ended = excluded.ended",
                &[&id, &record, &ended],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    fn hold_sweep(&self, id: &str, lease: std::time::Duration) -> Result<(), DbError> {
        let (sweep, owner, lease) = (id.to_string(), self.owner.clone(), seconds(lease));
        let taken = self.write(move |client| {
            let mut tx = client.transaction()?;
            let taken = SWEEP_LEASES.take(&mut tx, &sweep, &owner, lease)?;
            tx.commit()?;
            Ok(taken)
        })?;
        let Some((attempt, _)) = taken else {
            return Err(DbError::Conflict(format!(
                "sweep {id} is held by another process"
            )));
        };
        self.sweep_leases
            .lock()
            .unwrap()
            .insert(id.to_string(), attempt);
        Ok(())
    }

    fn claim_sweep(&self, lease: std::time::Duration) -> Result<Option<String>, DbError> {
        let (owner, lease) = (self.owner.clone(), seconds(lease));
        let claim = self.write(move |client| {
            let mut tx = client.transaction()?;
            let Some(row) = tx.query_opt(
                "SELECT s.id FROM sweeps s LEFT JOIN sweep_leases l ON l.sweep_id = s.id \
                 WHERE NOT s.ended AND (l.sweep_id IS NULL OR l.expires_at <= now()) \
                 ORDER BY s.seq LIMIT 1 FOR UPDATE OF s SKIP LOCKED",
                &[],
            )?
            else {
                return Ok(None);
            };
            let id: String = row.get(0);
            let Some((attempt, _)) = SWEEP_LEASES.take(&mut tx, &id, &owner, lease)? else {
                return Ok(None);
            };
            tx.commit()?;
            Ok(Some((id, attempt)))
        })?;
        Ok(claim.map(|(id, attempt)| {
            self.sweep_leases
                .lock()
                .unwrap()
                .insert(id.clone(), attempt);
            id
        }))
    }

    fn renew_sweep_leases(
        &self,
        lease: std::time::Duration,
    ) -> Result<(Vec<String>, Vec<String>), DbError> {
        let held = held(&self.sweep_leases);
        if held.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let (owner, lease, renewing) = (self.owner.clone(), seconds(lease), held.clone());
        let renewed: HashMap<String, bool> = self.run(move |client| {
            let rows = SWEEP_LEASES.renew(client, &renewing, &owner, lease, "l.cancel")?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })?;
        // A lost sweep lease is forgotten: its controller stops, and the
        // record's writes from here are refused no more than any replica's.
        let mut leases = self.sweep_leases.lock().unwrap();
        let mut lost = Vec::new();
        for (id, attempt) in held {
            if !renewed.contains_key(&id) && leases.get(&id) == Some(&attempt) {
                leases.remove(&id);
                lost.push(id);
            }
        }
        let cancelled = renewed
            .into_iter()
            .filter(|(_, cancel)| *cancel)
            .map(|(id, _)| id)
            .collect();
        Ok((lost, cancelled))
    }

    fn request_sweep_cancel(&self, id: &str) -> Result<(), DbError> {
        let id = id.to_string();
        self.write(move |client| {
            client.execute(
                "INSERT INTO sweep_leases (sweep_id, owner, attempt, expires_at, cancel) \
                 VALUES ($1, '', 0, now(), true) \
                 ON CONFLICT (sweep_id) DO UPDATE SET cancel = true",
                &[&id],
            )?;
            Ok(())
        })
    }

    fn lease_held(&self, job_id: &str) -> bool {
        let Some((owner, attempt)) = self.fence(&self.leases, job_id) else {
            return true;
        };
        let id = job_id.to_string();
        self.run(move |client| {
            let held = client.query_opt(
                "SELECT 1 FROM job_leases WHERE job_id = $1 AND owner = $2 AND attempt = $3 \
                 AND expires_at > now()",
                &[&id, &owner, &attempt],
            )?;
            Ok(held.is_some())
        })
        .unwrap_or(false)
    }

    fn release_sweep(&self, id: &str) -> Result<(), DbError> {
        let Some(attempt) = self.sweep_leases.lock().unwrap().remove(id) else {
            return Ok(());
        };
        let (id, owner) = (id.to_string(), self.owner.clone());
        self.run(move |client| SWEEP_LEASES.release(client, &id, &owner, attempt))
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

    fn shared(&self) -> bool {
        true
    }

    fn job_heads(
        &self,
        within: Option<std::time::Duration>,
    ) -> Result<Vec<(String, u64)>, DbError> {
        let within = within.map_or(f64::INFINITY, seconds);
        self.run(move |client| {
            let rows = client.query(
                "SELECT id, events FROM jobs \
                 WHERE $1 = 'Infinity'::float8 OR updated_at > now() - make_interval(secs => $1) \
                 ORDER BY seq",
                &[&within],
            )?;
            Ok(rows
                .iter()
                .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
                .collect())
        })
    }

    fn claim_job(&self, lease: std::time::Duration, gpu: bool) -> Result<Option<Claim>, DbError> {
        let (owner, lease) = (self.owner.clone(), seconds(lease));
        let claim = self.write(move |client| {
            let mut tx = client.transaction()?;
            // Skips jobs another trainer is taking (or writing) right now.
            let Some(row) = tx.query_opt(
                "SELECT j.id FROM jobs j LEFT JOIN job_leases l ON l.job_id = j.id \
                 WHERE j.state IN ($1, $2) AND (l.job_id IS NULL OR l.expires_at <= now()) \
                   AND (NOT j.needs_gpu OR $3) \
                 ORDER BY j.seq LIMIT 1 FOR UPDATE OF j SKIP LOCKED",
                &[&QUEUED, &RUNNING, &gpu],
            )?
            else {
                return Ok(None);
            };
            let job_id: String = row.get(0);
            let Some((attempt, cancel)) = JOB_LEASES.take(&mut tx, &job_id, &owner, lease)? else {
                return Ok(None);
            };
            tx.commit()?;
            Ok(Some((job_id, attempt, cancel)))
        })?;
        Ok(claim.map(|(job_id, attempt, cancel_requested)| {
            self.leases.lock().unwrap().insert(job_id.clone(), attempt);
            Claim {
                job_id,
                attempt: attempt as u64,
                cancel_requested,
            }
        }))
    }

    fn renew_leases(&self, lease: std::time::Duration) -> Result<Vec<LeaseState>, DbError> {
        let held = held(&self.leases);
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let (owner, lease, renewing) = (self.owner.clone(), seconds(lease), held.clone());
        let renewed: HashMap<String, (bool, Option<(i32, String)>)> = self.run(move |client| {
            let columns = "l.cancel, l.stop_reason, l.stop_message";
            let rows = JOB_LEASES.renew(client, &renewing, &owner, lease, columns)?;
            Ok(rows
                .iter()
                .map(|r| {
                    let stop = r
                        .get::<_, Option<i32>>(2)
                        .map(|reason| (reason, r.get::<_, Option<String>>(3).unwrap_or_default()));
                    (r.get(0), (r.get(1), stop))
                })
                .collect())
        })?;
        // A lost lease stays known until released: the job's writes from
        // here go on being refused. One released (or taken anew) while the
        // renewal ran is not reported.
        let leases = self.leases.lock().unwrap();
        Ok(held
            .into_iter()
            .filter(|(job_id, attempt)| leases.get(job_id) == Some(attempt))
            .map(|(job_id, _)| {
                let renewal = renewed.get(&job_id).cloned();
                LeaseState {
                    held: renewal.is_some(),
                    cancel_requested: renewal.as_ref().is_some_and(|r| r.0),
                    stop: renewal.and_then(|r| r.1),
                    job_id,
                }
            })
            .collect())
    }

    fn release_lease(&self, job_id: &str) -> Result<(), DbError> {
        let Some(attempt) = self.leases.lock().unwrap().remove(job_id) else {
            return Ok(());
        };
        let (job_id, owner) = (job_id.to_string(), self.owner.clone());
        self.run(move |client| JOB_LEASES.release(client, &job_id, &owner, attempt))
    }

    fn request_cancel(&self, job_id: &str, stop: Option<(i32, &str)>) -> Result<(), DbError> {
        let job_id = job_id.to_string();
        let (reason, message) = (stop.map(|s| s.0), stop.map(|s| s.1.to_string()));
        self.write(move |client| {
            client.execute(
                "INSERT INTO job_leases (job_id, owner, attempt, expires_at, cancel, stop_reason, \
                     stop_message) VALUES ($1, '', 0, now(), true, $2, $3) \
                 ON CONFLICT (job_id) DO UPDATE SET cancel = true, \
                     stop_reason = COALESCE(job_leases.stop_reason, excluded.stop_reason), \
                     stop_message = COALESCE(job_leases.stop_message, excluded.stop_message)",
                &[&job_id, &reason, &message],
            )?;
            Ok(())
        })
    }

    fn wait_for_changes(&self, seen: &mut u64, timeout: std::time::Duration) {
        if !self.changes.listening.swap(true, Ordering::SeqCst) {
            let (url, changes) = (self.url.clone(), self.changes.clone());
            let started = std::thread::Builder::new()
                .name("kiln-postgres-listen".into())
                .spawn(move || listen(url, changes));
            if started.is_err() {
                self.changes.listening.store(false, Ordering::SeqCst);
            }
        }
        let count = self.changes.count.lock().unwrap();
        let (count, _) = self
            .changes
            .changed
            .wait_timeout_while(count, timeout, |count| *count == *seen)
            .unwrap();
        *seen = *count;
    }

    fn next_model_version(&self, name: &str) -> Result<Option<u32>, DbError> {
        let name = name.to_string();
        self.run(move |client| {
            let row = client.query_one(
                "SELECT COALESCE(max(version), 0) + 1 FROM models WHERE name = $1",
                &[&name],
            )?;
            Ok(Some(row.get::<_, i64>(0) as u32))
        })
    }
}
