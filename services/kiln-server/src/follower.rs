//! A serving replica (`roles = "serve"`) follows the registry in the shared
//! database: every [`SYNC_EVERY`] it loads (and warms up) the versions it
//! does not have yet from the shared model files, and moves its aliases to
//! where the database has them. The first sync runs before the server
//! listens, so a replica is ready only once it serves what the registry
//! held then. A model it has not loaded yet answers NOT_FOUND at once.
//! Every process on a shared database also takes in the jobs, events and
//! datasets the others record ([`follow_jobs`]), so a job can be followed
//! (GetJob, WatchJob) on any of them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

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

/// Takes in the jobs, events and datasets the other processes on the shared
/// database record, so that GetJob, ListJobs and WatchJob here show them (a
/// watcher is woken by them as by a local event): woken by the database's
/// notification of a write, at most every [`SYNC_EVERY`] without one, and
/// at most once per [`SYNC_GAP`].
pub fn follow_jobs(kiln: Arc<Kiln>) {
    std::thread::Builder::new()
        .name("follow-jobs".into())
        .spawn(move || {
            let mut seen = 0;
            let mut datasets_read = std::time::Instant::now();
            loop {
                kiln.storage.wait_for_changes(&mut seen, SYNC_EVERY);
                if let Err(e) = kiln.store.sync() {
                    tracing::warn!(error = %e, "cannot read the other processes' jobs");
                }
                // Datasets are also read whenever one is asked for by an id
                // or name this process does not know.
                if datasets_read.elapsed() >= DATASETS_EVERY {
                    datasets_read = std::time::Instant::now();
                    if let Err(e) = kiln.datasets.sync() {
                        tracing::warn!(error = %e, "cannot read the other processes' datasets");
                    }
                }
                std::thread::sleep(SYNC_GAP);
            }
        })
        .expect("spawn the job follower");
}

/// The least time between two syncs of [`follow_jobs`]: a burst of writes
/// elsewhere is read in a few syncs, not one per write.
const SYNC_GAP: Duration = Duration::from_millis(10);

/// How often [`follow_jobs`] reads the datasets' metadata.
const DATASETS_EVERY: Duration = Duration::from_secs(1);
