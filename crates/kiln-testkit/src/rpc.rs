//! The gRPC calls the end-to-end tests make over and over: upload, submit,
//! watch, and polling a job until it stands where a test needs it.

use std::time::Duration;

use kiln::v1 as pb;

use crate::Server;

/// Uploads `csv` in chunks of `chunk` bytes.
pub async fn upload(
    server: &Server,
    name: &str,
    csv: &[u8],
    chunk: usize,
) -> Result<pb::Dataset, tonic::Status> {
    let messages: Vec<pb::UploadDatasetRequest> = csv
        .chunks(chunk)
        .enumerate()
        .map(|(i, c)| pb::UploadDatasetRequest {
            name: if i == 0 {
                name.to_string()
            } else {
                String::new()
            },
            chunk: c.to_vec(),
            ..Default::default()
        })
        .collect();
    server
        .datasets()
        .await
        .upload_dataset(tokio_stream::iter(messages))
        .await
        .map(|r| r.into_inner())
}

/// The model file (safetensors) ExportModel streams for the newest version
/// of `model`.
pub async fn export_model(server: &Server, model: &str) -> Vec<u8> {
    let mut stream = server
        .inference()
        .await
        .export_model(pb::ModelRef {
            model: model.into(),
            version: String::new(),
        })
        .await
        .expect("ExportModel")
        .into_inner();
    let mut file = Vec::new();
    while let Some(chunk) = stream.message().await.expect("an export chunk") {
        file.extend(chunk.chunk);
    }
    file
}

/// Every event of a job until it ends.
pub async fn watch_all(server: &Server, job_id: &str) -> Vec<pb::JobEvent> {
    watch_from(server, job_id, 0, usize::MAX).await
}

/// A job's events from sequence `from`: at most `take` of them, or all
/// until it ends (then the stream is dropped, as a watcher that goes away).
pub async fn watch_from(
    server: &Server,
    job_id: &str,
    from: u64,
    take: usize,
) -> Vec<pb::JobEvent> {
    let mut stream = server
        .jobs()
        .await
        .watch_job(pb::WatchJobRequest {
            job_id: job_id.to_string(),
            from_sequence: from,
        })
        .await
        .expect("watch")
        .into_inner();
    let mut events = Vec::new();
    while events.len() < take {
        let next = tokio::time::timeout(Duration::from_secs(600), stream.message())
            .await
            .expect("a job event within 10 minutes")
            .expect("stream ok");
        match next {
            Some(event) => events.push(event),
            None => break,
        }
    }
    events
}

/// The epoch metrics among `events`, in order.
pub fn epochs(events: &[pb::JobEvent]) -> Vec<pb::EpochMetrics> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(pb::job_event::Kind::Epoch(m)) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

/// The job's `Finished` event, its last; panics if the job did not succeed.
pub fn finished(events: &[pb::JobEvent]) -> pb::Finished {
    match events.last().and_then(|e| e.kind.clone()) {
        Some(pb::job_event::Kind::Finished(f)) => f,
        other => panic!("the job did not succeed: last event {other:?}"),
    }
}

/// SubmitJob on a new connection.
pub async fn submit(server: &Server, spec: pb::JobSpec) -> Result<pb::Job, tonic::Status> {
    server
        .jobs()
        .await
        .submit_job(pb::SubmitJobRequest { spec: Some(spec) })
        .await
        .map(|r| r.into_inner())
}

/// ListModels on a new connection.
pub async fn list_models(server: &Server) -> Vec<pb::ModelInfo> {
    server
        .inference()
        .await
        .list_models(pb::ListModelsRequest {})
        .await
        .expect("ListModels")
        .into_inner()
        .models
}

/// ListJobs (every job, newest first) on a new connection.
pub async fn list_jobs(server: &Server) -> Vec<pb::Job> {
    server
        .jobs()
        .await
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jobs
}

/// GetJob on a new connection; panics on an error status.
pub async fn get_job(server: &Server, id: &str) -> pb::Job {
    server
        .jobs()
        .await
        .get_job(pb::GetJobRequest { job_id: id.into() })
        .await
        .unwrap()
        .into_inner()
}

/// How long a test waits for a job to reach a point it needs: generous,
/// since a loaded 2-core machine is slow; a healthy run takes seconds.
pub const JOB_WAIT: Duration = Duration::from_secs(300);

/// Polls until `id` has completed an epoch (it is training).
pub async fn wait_for_epoch(server: &Server, id: &str) {
    let deadline = std::time::Instant::now() + JOB_WAIT;
    while get_job(server, id).await.epochs_completed == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no epoch within {JOB_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls GetJob until the running job `id` reports a step in the first half
/// of an epoch after its first `after_epochs`, and returns where it stood.
/// At least half an epoch of steps is then still to come, so a stop asked
/// for right after lands inside that epoch; a test proves it afterwards from
/// the epochs the job's checkpoint holds. Fails if the job ends first (its
/// epochs are too short to be caught).
pub async fn wait_mid_epoch(server: &Server, id: &str, after_epochs: u32) -> pb::TrainingProgress {
    let mut client = server.jobs().await;
    let deadline = std::time::Instant::now() + JOB_WAIT;
    loop {
        let job = client
            .get_job(pb::GetJobRequest { job_id: id.into() })
            .await
            .unwrap()
            .into_inner();
        if let Some(p) = job
            .progress
            .filter(|p| p.epoch > after_epochs && p.rows_done > 0)
        {
            if p.rows_done <= job.train_rows / 2 {
                return p;
            }
        }
        assert!(
            matches!(job.state(), pb::JobState::Queued | pb::JobState::Running),
            "job {id} ended ({:?}) before it was seen in the first half of an epoch",
            job.state()
        );
        assert!(
            std::time::Instant::now() < deadline,
            "job {id} not seen mid-epoch within {JOB_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The suspension event (a graceful shutdown checkpointed the job where it
/// stood), if the job has one.
pub fn suspension(events: &[pb::JobEvent]) -> Option<pb::StateChanged> {
    events.iter().find_map(|e| match &e.kind {
        Some(pb::job_event::Kind::StateChanged(s)) if s.suspended => Some(s.clone()),
        _ => None,
    })
}
