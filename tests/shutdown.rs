//! Graceful shutdown through the real server: SIGTERM while clients keep
//! Predict busy and a job trains. Health turns NOT_SERVING, every call either
//! succeeds or is refused with UNAVAILABLE (none is cut off), the process
//! exits inside the grace period, and the job, checkpointed where it stood,
//! continues after the restart to the same result as a run never stopped.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use kiln::v1 as pb;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const GRACE_SECONDS: f64 = 10.0;

/// A job whose steps take tens of milliseconds: the shutdown catches it
/// in the middle of an epoch.
fn slow_job() -> pb::JobSpec {
    let mut spec = inline_regression(3000, 512, 3, 256);
    spec.model_name = "slow".into();
    spec.model.as_mut().unwrap().hidden_layers = vec![layer(512), layer(512)];
    spec.training.as_mut().unwrap().seed = 5;
    spec
}

fn rows() -> Vec<pb::Row> {
    (0..4)
        .map(|i| pb::Row {
            values: vec![i as f64 * 0.25],
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_prediction_load_loses_no_call_and_suspends_the_job() {
    let grace = GRACE_SECONDS.to_string();
    let env = [("KILN_SHUTDOWN_GRACE_SECONDS", grace.as_str())];
    let server = Server::start_with(&env);
    let served = {
        let mut spec = inline_regression(200, 8, 2, 32);
        spec.model_name = "served".into();
        spec
    };
    let served = submit(&server, served).await.unwrap();
    finished(&watch_all(&server, &served.id).await);
    let job = submit(&server, slow_job()).await.unwrap();
    wait_for_checkpoint(&server, &job.id).await;

    // 16 clients, each on its own connection, call Predict until refused.
    let outcomes: Arc<Mutex<Vec<Result<(), Code>>>> = Arc::default();
    let mut clients = Vec::new();
    for _ in 0..16 {
        let mut client = server.inference().await;
        let outcomes = outcomes.clone();
        clients.push(tokio::spawn(async move {
            loop {
                let request = pb::PredictRequest {
                    model: "served".into(),
                    rows: rows(),
                    ..Default::default()
                };
                let outcome = client
                    .predict(request)
                    .await
                    .map(|_| ())
                    .map_err(|s| s.code());
                let refused = outcome.is_err();
                outcomes.lock().unwrap().push(outcome);
                if refused {
                    return;
                }
            }
        }));
    }
    // Health, polled on its own connection.
    let mut health = HealthClient::new(server.channel().await);
    let seen: Arc<Mutex<Vec<Option<ServingStatus>>>> = Arc::default();
    let poller = {
        let seen = seen.clone();
        tokio::spawn(async move {
            loop {
                let answer = health
                    .check(HealthCheckRequest::default())
                    .await
                    .map(|r| r.into_inner().status());
                let failed = answer.is_err();
                seen.lock().unwrap().push(answer.ok());
                if failed {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ok_before = outcomes.lock().unwrap().len();
    assert!(ok_before > 0, "the clients are running");

    let asked = Instant::now();
    server.terminate();
    let data_dir = tokio::task::spawn_blocking(move || {
        server.wait_exit_keeping_data(Duration::from_secs_f64(GRACE_SECONDS))
    })
    .await
    .unwrap();
    let took = asked.elapsed();
    for client in clients {
        client.await.unwrap();
    }
    poller.await.unwrap();

    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let succeeded = outcomes.iter().filter(|o| o.is_ok()).count();
    let refused: Vec<Code> = outcomes.iter().filter_map(|o| o.err()).collect();
    assert_eq!(refused.len(), 16, "each client stops at its first refusal");
    assert!(
        refused.iter().all(|&c| c == Code::Unavailable),
        "calls are refused as UNAVAILABLE, never cut off: {refused:?}"
    );
    assert!(succeeded > ok_before);
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let first_not_serving = seen
        .iter()
        .position(|s| *s == Some(ServingStatus::NotServing))
        .expect("health reported NOT_SERVING during the shutdown");
    assert!(
        seen[first_not_serving..]
            .iter()
            .all(|s| *s != Some(ServingStatus::Serving)),
        "{seen:?}"
    );
    eprintln!(
        "shutdown took {took:?}; {succeeded} predictions succeeded, 16 refused; \
         health NOT_SERVING for {} polls",
        seen.len() - first_not_serving - 1
    );
    assert!(took < Duration::from_secs_f64(GRACE_SECONDS));

    // The job went back to QUEUED with a checkpoint, and continues.
    let server = Server::start_in(data_dir, &env);
    let events = watch_all(&server, &job.id).await;
    let suspension = events
        .iter()
        .find_map(|e| match &e.kind {
            Some(pb::job_event::Kind::StateChanged(s)) if s.suspended => Some(s.clone()),
            _ => None,
        })
        .expect("a suspension event");
    assert_eq!(suspension.state(), pb::JobState::Queued);
    let resumed = epochs(&events);
    assert_eq!(
        resumed.iter().map(|m| m.epoch).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let job = get_job(&server, &job.id).await;
    assert_eq!(job.state(), pb::JobState::Succeeded);

    let fresh = submit(&server, slow_job()).await.unwrap();
    let reference = epochs(&watch_all(&server, &fresh.id).await);
    let curve = |ms: &[pb::EpochMetrics]| {
        ms.iter()
            .map(|m| (m.train_loss, m.val_loss))
            .collect::<Vec<_>>()
    };
    assert_eq!(curve(&resumed), curve(&reference), "resumed bit for bit");
}

/// Jobs still queued at a shutdown stay QUEUED and run after the restart.
#[tokio::test]
async fn queued_jobs_wait_for_the_restart() {
    let server = Server::start();
    let running = submit(&server, slow_job()).await.unwrap();
    let mut queued_spec = inline_regression(200, 8, 2, 32);
    queued_spec.model_name = "queued".into();
    let queued = submit(&server, queued_spec).await.unwrap();
    wait_for_epoch(&server, &running.id).await;
    server.terminate();
    // Waiting on another thread: this runtime must go on answering the
    // server's connection shutdown.
    let data_dir = tokio::task::spawn_blocking(move || {
        server.wait_exit_keeping_data(Duration::from_secs_f64(GRACE_SECONDS))
    })
    .await
    .unwrap();
    let server = Server::start_in(data_dir, &[]);
    for id in [&running.id, &queued.id] {
        finished(&watch_all(&server, id).await);
        assert_eq!(get_job(&server, id).await.state(), pb::JobState::Succeeded);
    }
    let queued_events = watch_all(&server, &queued.id).await;
    let states: Vec<pb::JobState> = queued_events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(pb::job_event::Kind::StateChanged(s)) => Some(s.state()),
            _ => None,
        })
        .collect();
    assert_eq!(
        states,
        [pb::JobState::Queued, pb::JobState::Running],
        "never started before the shutdown"
    );
}
