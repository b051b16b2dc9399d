//! The trainer role of the shared mode: queued jobs are records in the
//! shared database, which any trainer process takes by lease.
//!
//! Two threads. The claimer takes the oldest job no live lease holds
//! (`Storage::claim_job`) whenever this process has room for one more
//! (`max_concurrent_jobs` per device), reads it, and hands it to the local
//! runner, which trains it as in the embedded mode. The heartbeat renews
//! every lease held each third of `lease_seconds`; a lease found lost stops
//! its job at the next poll with nothing more written (every write for the
//! job is refused by the database anyway), and a cancel asked for on any
//! replica sets the job's cancel flag here.
//!
//! A job taken while RUNNING had a trainer that stopped renewing (killed,
//! paused, cut off): it is an interruption, counted against
//! `max_job_restarts`, and continues from its checkpoint in the shared
//! directory. A trainer's graceful shutdown puts its jobs back QUEUED
//! (suspended, not counted) and releases them, for another to take at once.

use std::sync::Arc;
use std::time::Duration;

use kiln::v1 as pb;
use kiln_store::jobs::cancelled_event;
use kiln_store::Claim;
use kiln_train::Checkpoint;

use crate::runner::failed;
use crate::Kiln;

/// How often an idle trainer looks for a job.
pub const CLAIM_EVERY: Duration = Duration::from_millis(200);

/// Starts the claimer, which stops taking jobs when a shutdown begins, and
/// the heartbeat, which renews leases for as long as the process lives (a
/// shutdown's jobs are still running while they checkpoint).
pub fn start(kiln: Arc<Kiln>) {
    let lease = Duration::from_secs_f64(kiln.config.lease_seconds.max(0.3));
    let heart = kiln.clone();
    std::thread::Builder::new()
        .name("lease-heartbeat".into())
        .spawn(move || heartbeat(&heart, lease))
        .expect("spawn the lease heartbeat");
    std::thread::Builder::new()
        .name("lease-claimer".into())
        .spawn(move || claimer(&kiln, lease))
        .expect("spawn the lease claimer");
}

fn heartbeat(kiln: &Kiln, lease: Duration) {
    loop {
        std::thread::sleep(lease / 3);
        match kiln.storage.renew_leases(lease) {
            Ok(states) => {
                for state in states {
                    if !state.held {
                        kiln.runner.lose(&state.job_id);
                    } else if state.cancel_requested {
                        kiln.store.cancel_here(&state.job_id, state.stop);
                    }
                }
            }
            // Not renewed: past the lease the database refuses this
            // process's writes for the job, and the next renewal that gets
            // through reports it lost.
            Err(e) => tracing::warn!(error = %e, "leases not renewed"),
        }
    }
}

fn claimer(kiln: &Kiln, lease: Duration) {
    let gpu = kiln_train::device::cuda_device_count() > 0;
    while !kiln.runner.suspending() {
        if kiln.runner.jobs_in_hand() >= kiln.runner.capacity() {
            kiln.runner.wait_for_room(CLAIM_EVERY);
            continue;
        }
        match kiln.storage.claim_job(lease, gpu) {
            Ok(Some(claim)) => take(kiln, claim),
            Ok(None) => std::thread::sleep(CLAIM_EVERY),
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for queued jobs");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Runs a job this process just took, or settles it (ended, cancelled,
/// interrupted too often, or its data gone) and releases it.
fn take(kiln: &Kiln, claim: Claim) {
    let id = claim.job_id.as_str();
    // As the database holds it now (other processes wrote it). A dataset
    // another api replica took in a moment ago is read when asked for.
    if let Err(e) = kiln.store.refresh(id) {
        tracing::warn!(job = %id, error = %e, "taken job not read; released");
        kiln.store.release_lease(id);
        return;
    }
    // The checkpoint it continues from, as the last trainer left it; one
    // that cannot be read now must not make it start over.
    if let Err(e) = kiln.runner.checkpoints().refresh(id) {
        tracing::warn!(job = %id, error = %e, "taken job's checkpoint not read; released");
        kiln.store.release_lease(id);
        return;
    }
    let job = match settle(kiln, &claim) {
        Some(job) => job,
        None => {
            kiln.store.release_lease(id);
            return;
        }
    };
    match crate::recovery::requeue(kiln, &job) {
        Ok(mut queued) => {
            queued.attempt = claim.attempt;
            tracing::info!(job = %id, attempt = claim.attempt, device = %queued.device_name, "job taken");
            kiln.runner.submit(queued);
        }
        Err(message) => {
            tracing::warn!(job = %id, %message, "taken job cannot run");
            let _ = kiln.store.append(
                id,
                failed(
                    pb::StopReason::Error,
                    format!("could not be run by a trainer: {message}"),
                ),
            );
            kiln.store.release_lease(id);
        }
    }
}

/// The job to run, QUEUED; `None` when it is not to run (it ended, was
/// cancelled, or was interrupted `max_job_restarts` times).
fn settle(kiln: &Kiln, claim: &Claim) -> Option<pb::Job> {
    let id = claim.job_id.as_str();
    let mut job = kiln.store.get(id).ok()?;
    if claim.cancel_requested && !kiln_store::jobs::is_terminal(job.state()) {
        let _ = kiln
            .store
            .append(id, cancelled_event("cancelled while it had no trainer"));
        return None;
    }
    if job.state() == pb::JobState::Running {
        // Its trainer stopped renewing: an interruption.
        let checkpoints = kiln.runner.checkpoints();
        let resume_after = Checkpoint::epochs_in(&checkpoints.path(id)).unwrap_or(0);
        tracing::warn!(job = %id, attempt = claim.attempt, resume_after, "job taken over from a trainer whose lease ended");
        job = kiln
            .store
            .interrupted(id, kiln.config.max_job_restarts, resume_after)
            .ok()?;
    }
    (job.state() == pb::JobState::Queued).then_some(job)
}
