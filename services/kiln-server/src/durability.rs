//! A full data directory: kiln goes read-only instead of losing what it
//! accepted. Every write is made durable before its call answers OK (see
//! kiln-store); while writes fail for lack of space, calls that would write
//! are refused up front with RESOURCE_EXHAUSTED ([`refuse_writes`]), jobs
//! whose events cannot be recorded stop, and Predict, reads and watches go
//! on. A probe tries a small write every second; once one succeeds, writes
//! are accepted again and the stopped jobs go back to the queue, with no
//! restart. Health reports the condition under [`HEALTH_NAME`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kiln_store::WriteFault;
use tonic::Status;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::Kiln;

/// The grpc.health.v1 service name that is NOT_SERVING while writes fail
/// ("" and the kiln services stay SERVING: the models are still served).
pub const HEALTH_NAME: &str = "kiln.storage";

/// How often a failing store is probed.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Why files cannot be written in the data directory, as the last probe
/// found (the database's own fault is the storage's).
#[derive(Default)]
pub struct FileFault(std::sync::Mutex<Option<WriteFault>>);

impl FileFault {
    fn get(&self) -> Option<WriteFault> {
        self.0.lock().unwrap().clone()
    }
    fn set(&self, fault: Option<WriteFault>) {
        *self.0.lock().unwrap() = fault;
    }
}

/// The fault that makes writes fail now, if any: the database's, or the
/// data directory's files'.
pub fn write_fault(kiln: &Kiln) -> Option<WriteFault> {
    kiln.storage.write_fault().or_else(|| kiln.file_fault.get())
}

/// For calls that write: refused while writes fail, before any work.
pub fn refuse_writes(kiln: &Kiln) -> Result<(), Status> {
    match write_fault(kiln) {
        Some(fault) => Err(unrecorded(&fault)),
        None => Ok(()),
    }
}

/// The status of a change that could not be made durable (and so was not
/// made): RESOURCE_EXHAUSTED for lack of space, UNAVAILABLE otherwise.
pub fn unrecorded(fault: &WriteFault) -> Status {
    if fault.out_of_space {
        Status::resource_exhausted(format!(
            "the data directory is out of space, so nothing was changed; kiln is \
             read-only until space is freed (models are still served, and writes are \
             accepted again without a restart): {}",
            fault.message
        ))
    } else {
        Status::unavailable(format!(
            "kiln's storage cannot record changes now, so nothing was changed; retry \
             later: {}",
            fault.message
        ))
    }
}

/// Follows the store's condition for as long as the server runs: health
/// under [`HEALTH_NAME`] (set before this returns, so it is there when the
/// server starts listening), the probe while writes fail, and the stopped
/// jobs queued again once they succeed.
pub async fn watch(kiln: Arc<Kiln>, health: HealthReporter) {
    // Learned at start too, not only from the first write that fails.
    let probing = kiln.clone();
    let _ = tokio::task::spawn_blocking(move || probe(&probing)).await;
    let mut writable = write_fault(&kiln).is_none();
    report(&kiln, &health, writable).await;
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            let stalled = !kiln.store.stalled().is_empty();
            if write_fault(&kiln).is_some() || stalled {
                let probing = kiln.clone();
                let _ = tokio::task::spawn_blocking(move || probe(&probing)).await;
            }
            let now = write_fault(&kiln).is_none();
            if now && stalled {
                let resuming = kiln.clone();
                let _ = tokio::task::spawn_blocking(move || resume_stalled(&resuming)).await;
            }
            if now != writable {
                writable = now;
                report(&kiln, &health, writable).await;
            }
        }
    });
}

async fn report(kiln: &Kiln, health: &HealthReporter, writable: bool) {
    let status = match writable {
        true => ServingStatus::Serving,
        false => ServingStatus::NotServing,
    };
    health.set_service_status(HEALTH_NAME, status).await;
    match write_fault(kiln) {
        None => tracing::info!("storage writable"),
        Some(f) => {
            tracing::warn!(error = %f.message, "storage not writable: read-only until it is")
        }
    }
}

/// A small durable write to a file, then to the database: both succeed
/// once there is space again. Each clears its own fault when it does.
fn probe(kiln: &Kiln) {
    match probe_file(&kiln.config.data_dir) {
        Ok(()) => {
            kiln.file_fault.set(None);
            let _ = kiln.storage.probe();
        }
        Err(e) => kiln.file_fault.set(Some(WriteFault {
            out_of_space: kiln_store::io_out_of_space(&e),
            message: format!("writing a file in the data directory: {e}"),
        })),
    }
}

/// Writes (synced) and removes a 64 KiB file, about what one epoch's
/// events and a small checkpoint take.
fn probe_file(data_dir: &Path) -> std::io::Result<()> {
    // One per process: processes on a shared database share the directory.
    let path = data_dir.join(format!("write-probe-{}", std::process::id()));
    kiln_core::files::write_atomically(&path, &[0u8; 64 << 10])?;
    std::fs::remove_file(path)
}

/// Jobs stopped because their events could not be recorded go back to the
/// queue, continuing from their checkpoints.
fn resume_stalled(kiln: &Kiln) {
    let checkpoints = kiln.runner.checkpoints();
    let resume_after = |id: &str| {
        let recorded = kiln.store.get(id).map_or(0, |j| j.epochs_completed);
        kiln_train::Checkpoint::epochs_in(&checkpoints.path(id))
            .unwrap_or(0)
            .min(recorded)
    };
    let jobs = kiln.store.resume_stalled(
        &resume_after,
        "stopped because its events could not be recorded (the data directory was \
         full); continued once space was back",
    );
    crate::recovery::run_again(kiln, jobs, "once space was back");
}

/// A registry error as a status: a version or alias the journal could not
/// save is an unrecorded change, said as such.
pub fn serve_status(kiln: &Kiln, e: kiln_serve::ServeError) -> Status {
    match (&e, write_fault(kiln)) {
        (kiln_serve::ServeError::NotSaved(_), Some(fault)) => unrecorded(&fault),
        _ => crate::status::serve(e),
    }
}

/// Writes a model's files; running out of space is RESOURCE_EXHAUSTED.
pub fn save_artifact(artifact: &kiln_train::ModelArtifact, dir: &Path) -> Result<(), Status> {
    artifact.save(dir).map_err(|e| match e.is_out_of_space() {
        true => unrecorded(&WriteFault {
            out_of_space: true,
            message: e.to_string(),
        }),
        false => Status::internal(e.to_string()),
    })
}
