//! How engine errors become gRPC statuses.

use kiln_core::FieldError;
use kiln_serve::ServeError;
use kiln_store::{DatasetError, JobError};
use tonic::Status;

pub fn invalid(e: FieldError) -> Status {
    Status::invalid_argument(e.to_string())
}

pub fn job(e: JobError) -> Status {
    match e {
        JobError::NotFound(_) => Status::not_found(e.to_string()),
        JobError::Unrecorded(fault) => crate::durability::unrecorded(&fault),
        // Only a trainer's own writes are fenced; a call never holds a lease.
        JobError::Fenced(_) => Status::aborted(e.to_string()),
    }
}

pub fn dataset(e: DatasetError) -> Status {
    match e {
        DatasetError::NotFound(_) => Status::not_found(e.to_string()),
        DatasetError::Invalid(f) => invalid(f),
        DatasetError::Io(_) | DatasetError::Db(_) if e.is_out_of_space() => {
            crate::durability::unrecorded(&kiln_store::WriteFault {
                out_of_space: true,
                message: e.to_string(),
            })
        }
        DatasetError::Io(_) | DatasetError::Db(_) => Status::internal(e.to_string()),
        DatasetError::Corrupt { .. } => Status::data_loss(e.to_string()),
    }
}

pub fn serve(e: ServeError) -> Status {
    match e {
        ServeError::WrongWidth { .. } => Status::invalid_argument(format!("rows: {e}")),
        ServeError::QueueFull => Status::resource_exhausted(e.to_string()),
        ServeError::Stopped => Status::unavailable(e.to_string()),
        ServeError::DeadlineExceeded => Status::deadline_exceeded(e.to_string()),
        ServeError::Load(_) => Status::internal(e.to_string()),
        ServeError::NotFound(_) => Status::not_found(e.to_string()),
        ServeError::NotLoaded(_) => Status::failed_precondition(e.to_string()),
        ServeError::Invalid(_) => Status::invalid_argument(e.to_string()),
        ServeError::NotSaved(_) => Status::internal(e.to_string()),
    }
}

/// For calls refused, and streams ended, by a shutdown.
pub fn shutting_down() -> Status {
    Status::unavailable(
        "kiln-server is shutting down; retry on another replica or after the restart",
    )
}

/// Resolves once a shutdown has begun (see `Kiln::stopping`).
pub async fn shutdown_begun(stopping: &mut tokio::sync::watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send: drop it here.
    let _ = stopping.wait_for(|stop| *stop).await.map(|_| ());
}
