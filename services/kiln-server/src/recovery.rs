//! At start, before anything listens: the registry and the queue as the
//! previous process left them.

use std::collections::HashSet;
use std::path::Path;

use kiln::v1 as pb;
use kiln_core::spec::JobSpec;
use kiln_store::ModelRow;
use kiln_train::{Checkpoint, ModelArtifact};

use crate::queued_job::QueuedJob;
use crate::runner::failed;

/// At start, before anything listens: puts the registry back as it was (the
/// models of SUCCEEDED jobs and imported models, under their versions, with
/// their aliases; a version whose files fail their checksums is listed with
/// the reason and never served), then runs again the jobs the previous
/// process left QUEUED or RUNNING ([`JobStore::recover`]).
pub fn recover(kiln: &crate::Kiln) {
    let kept = restore_models(kiln);
    remove_leftovers(&kiln.config.data_dir, &kept);
    let checkpoints = kiln.runner.checkpoints();
    remove_stale_checkpoints(kiln, &checkpoints.dir);
    // The header only: the whole file is read and checked when the job runs.
    let resume_after = |id: &str| Checkpoint::epochs_in(&checkpoints.path(id)).unwrap_or(0);
    let jobs = kiln
        .store
        .recover(kiln.config.max_job_restarts, &resume_after);
    run_again(kiln, jobs, "after a restart");
}

/// Queues jobs that went back to QUEUED (after a restart, or once space
/// came back); one whose data can no longer be prepared fails, saying why.
/// In the shared mode they are in the database's queue already, for any
/// trainer to take.
pub fn run_again(kiln: &crate::Kiln, jobs: Vec<pb::Job>, when: &str) {
    if kiln.shared {
        return;
    }
    for job in jobs {
        match requeue(kiln, &job) {
            Ok(queued) => {
                tracing::info!(job = %job.id, "job queued again {when}");
                kiln.runner.submit(queued);
            }
            Err(message) => {
                tracing::warn!(job = %job.id, %message, "job cannot run again {when}");
                let _ = kiln.store.append(
                    &job.id,
                    failed(
                        pb::StopReason::Error,
                        format!("could not be run again {when}: {message}"),
                    ),
                );
            }
        }
    }
}

/// Checkpoints of jobs that ended (or are unknown) are of no more use.
fn remove_stale_checkpoints(kiln: &crate::Kiln, dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let id = name.strip_suffix(".ckpt").unwrap_or(&name);
        let unfinished = kiln
            .store
            .get(id)
            .is_ok_and(|j| matches!(j.state(), pb::JobState::Queued | pb::JobState::Running));
        if !unfinished {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Puts the registry back; the model directories its versions use (`None`
/// when the registry could not be read: then nothing counts as left over).
fn restore_models(kiln: &crate::Kiln) -> Option<HashSet<String>> {
    let (rows, aliases) = match kiln.catalog.load() {
        Ok(saved) => (saved.versions, saved.aliases),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the model registry from the database");
            return None;
        }
    };
    let mut kept = HashSet::new();
    for row in rows {
        // A model registered by a job that then did not finish (the server
        // stopped in between) goes: the job runs again and registers anew.
        let succeeded = kiln
            .store
            .get(&row.job_id)
            .is_ok_and(|j| j.state() == pb::JobState::Succeeded);
        if !row.job_id.is_empty() && !succeeded {
            let _ = kiln.catalog.remove_version(&row.name, row.version);
            continue;
        }
        kept.insert(row.artifact.clone());
        restore_version(kiln, &row);
    }
    for (name, alias, version) in aliases {
        if let Err(e) = kiln.models.restore_alias(&name, &alias, version) {
            tracing::warn!(model = %name, %alias, version, error = %e, "alias not restored");
        }
    }
    Some(kept)
}

/// Serves a saved version from its files under `<data_dir>/models` on
/// `serve_device`; one whose files fail to load (their checksums, say) is
/// listed with the reason and never served. Whether it is in the registry
/// now. At start, and for a serving replica whenever the database has a
/// version it does not.
pub fn restore_version(kiln: &crate::Kiln, row: &ModelRow) -> bool {
    let path = kiln.config.data_dir.join("models").join(&row.artifact);
    if let Some(blobs) = kiln.blobs.as_ref().filter(|_| !path.is_dir()) {
        // Written by another process: its files come from the object store.
        if let Err(e) = blobs.pull_dir(&Path::new("models").join(&row.artifact)) {
            tracing::warn!(model = %row.name, version = row.version, error = %e, "model files not pulled");
        }
    }
    let artifact = match ModelArtifact::load(&path) {
        Ok(artifact) => Ok(artifact),
        Err(e) => {
            tracing::error!(model = %row.name, version = row.version, error = %e, "model not served");
            match serde_json::from_str(&row.meta) {
                Ok(meta) => Err((meta, e.to_string())),
                Err(_) => return false,
            }
        }
    };
    let serve = &kiln.serve_device;
    if let Err(e) = kiln.models.restore(
        &row.name,
        row.version,
        &row.job_id,
        artifact,
        serve.device.clone(),
        &serve.name,
    ) {
        tracing::error!(model = %row.name, version = row.version, error = %e, "model not served");
    }
    true
}

/// What a crash can leave behind, removed before anything listens: the
/// temporary files of atomic writes (`*.tmp`) in `datasets/` and in the
/// model directories, and model directories no registered version uses (a
/// job that stopped while it published, an import cut short). With `kept`
/// unknown (the registry unreadable) model directories stay.
fn remove_leftovers(data_dir: &Path, kept: &Option<HashSet<String>>) {
    // The storage probe's files (see durability.rs), if a stop cut one short.
    for entry in std::fs::read_dir(data_dir).into_iter().flatten().flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("write-probe")
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let models = data_dir.join("models");
    let mut dirs = vec![data_dir.join("datasets")];
    for entry in std::fs::read_dir(&models).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with("job-") || name.starts_with("import-");
        let used = kept.as_ref().is_none_or(|k| k.contains(&name));
        if ours && !used && entry.path().is_dir() {
            tracing::warn!(dir = %format!("models/{name}"), "removing a model directory no version uses");
            let _ = std::fs::remove_dir_all(entry.path());
        } else {
            dirs.push(entry.path());
        }
    }
    for dir in dirs {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "tmp") && path.is_file() {
                tracing::warn!(file = %path.file_name().unwrap_or_default().to_string_lossy(), "removing an unfinished write");
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// Reads and prepares a stored job's data again, as SubmitJob did.
pub fn requeue(kiln: &crate::Kiln, job: &pb::Job) -> Result<QueuedJob, String> {
    let proto = job.spec.as_ref().ok_or("its spec was not stored")?;
    let spec = JobSpec::from_proto(proto).map_err(|e| e.to_string())?;
    let (device, device_name) = kiln.runner.place(spec.device)?;
    let data = crate::jobs::prepare_data(kiln, &spec).map_err(|s| s.message().to_string())?;
    Ok(QueuedJob {
        id: job.id.clone(),
        model_name: job.model_name.clone(),
        spec,
        labels: proto.labels.clone(),
        data,
        device,
        device_name,
        attempt: 0,
    })
}
