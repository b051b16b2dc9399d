//! A serving replica (`roles = "serve"`) follows the registry in the shared
//! database: every [`SYNC_EVERY`] it loads (and warms up) the versions it
//! does not have yet from the shared model files, and moves its aliases to
//! where the database has them. The first sync runs before the server
//! listens, so a replica is ready only once it serves what the registry
//! held then. A model it has not loaded yet answers NOT_FOUND at once.
//! GetJob and WatchJob read the job from the database (WatchJob replays,
//! then polls for new events), so a job can be followed on any replica.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kiln::v1 as pb;
use kiln_core::brief;
use kiln_store::StoredJob;
use tonic::Status;

use crate::Kiln;

/// How often the registry is read: a version registered or an alias moved
/// elsewhere is served here within this, plus the version's load.
pub const SYNC_EVERY: Duration = Duration::from_millis(250);

/// Brings the registry here up to the database: the versions and aliases
/// changed. Errors are logged; the next sync tries again.
pub fn sync(kiln: &Kiln) -> usize {
    let saved = match kiln.catalog.load() {
        Ok(saved) => saved,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the registry to follow it");
            return 0;
        }
    };
    let here = kiln.models.list();
    let have: HashSet<(String, u32)> = here.iter().map(|v| (v.name.clone(), v.version)).collect();
    let aliases: HashMap<(String, String), u32> = here
        .iter()
        .flat_map(|v| {
            v.aliases
                .iter()
                .map(|a| ((v.name.clone(), a.clone()), v.version))
        })
        .collect();
    let mut changed = 0;
    for row in saved.versions {
        if !have.contains(&(row.name.clone(), row.version))
            && crate::recovery::restore_version(kiln, &row)
        {
            tracing::info!(model = %row.name, version = row.version, "version followed");
            changed += 1;
        }
    }
    for (name, alias, version) in saved.aliases {
        if aliases.get(&(name.clone(), alias.clone())) == Some(&version) {
            continue;
        }
        match kiln.models.restore_alias(&name, &alias, version) {
            Ok(()) => changed += 1,
            Err(e) => {
                tracing::warn!(model = %name, %alias, version, error = %e, "alias not followed")
            }
        }
    }
    changed
}

/// Syncs every [`SYNC_EVERY`] for as long as the server runs.
pub fn follow(kiln: Arc<Kiln>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(SYNC_EVERY).await;
            let syncing = kiln.clone();
            let _ = tokio::task::spawn_blocking(move || sync(&syncing)).await;
        }
    });
}

/// Every [`SYNC_EVERY`], takes in the jobs, events and datasets the other
/// processes on the shared database recorded, so that GetJob, ListJobs and
/// WatchJob here show them (a watcher is woken by them as by a local event).
pub fn follow_jobs(kiln: Arc<Kiln>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(SYNC_EVERY).await;
            let syncing = kiln.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = syncing.store.sync() {
                    tracing::warn!(error = %e, "cannot read the other processes' jobs");
                }
                if let Err(e) = syncing.datasets.sync() {
                    tracing::warn!(error = %e, "cannot read the other processes' datasets");
                }
            })
            .await;
        }
    });
}

/// How often a serving replica reads a followed job's new events.
pub const POLL_EVENTS_EVERY: Duration = Duration::from_millis(250);

/// The job as the shared database holds it, with its events from `from`.
async fn read_job(kiln: &Arc<Kiln>, id: &str, from: u64) -> Result<StoredJob, Status> {
    let (storage, job) = (kiln.storage.clone(), id.to_string());
    match tokio::task::spawn_blocking(move || storage.job_from(&job, from)).await {
        Ok(Ok(Some(stored))) => Ok(stored),
        Ok(Ok(None)) => Err(Status::not_found(format!(
            "job \"{}\" not found",
            brief(id)
        ))),
        Ok(Err(e)) => Err(Status::unavailable(e.to_string())),
        Err(e) => Err(Status::internal(e.to_string())),
    }
}

/// GetJob on a serving replica: the job as the shared database holds it.
pub async fn get_job(kiln: &Arc<Kiln>, id: String) -> Result<pb::Job, Status> {
    read_job(kiln, &id, u64::MAX).await.map(|stored| stored.job)
}

/// WatchJob on a serving replica: the job's events from the shared
/// database from `from` on, then every [`POLL_EVENTS_EVERY`] the new ones,
/// until its final event.
pub async fn watch_job(
    kiln: &Arc<Kiln>,
    id: String,
    from: u64,
    tx: tokio::sync::mpsc::Sender<Result<pb::JobEvent, Status>>,
) {
    let mut next = from;
    loop {
        let stored = match read_job(kiln, &id, next).await {
            Ok(stored) => stored,
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
        };
        for event in stored.events {
            next = event.sequence + 1;
            if tx.send(Ok(event)).await.is_err() {
                return; // the watcher has gone
            }
        }
        // The record is read before the events: once it has ended, every
        // event is in the batch just sent.
        if kiln_store::jobs::is_terminal(stored.job.state()) {
            return;
        }
        tokio::time::sleep(POLL_EVENTS_EVERY).await;
    }
}
