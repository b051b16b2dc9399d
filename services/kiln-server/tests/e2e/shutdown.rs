//! Graceful shutdown through the real server: SIGTERM while clients keep
//! Predict busy and a job trains. Health turns NOT_SERVING, every call either
//! succeeds or is refused with UNAVAILABLE (none is cut off), the process
//! exits inside the grace period, and the job, checkpointed where it stood,
//! continues after the restart to the same result as a run never stopped.
//!
//! Nothing here depends on the machine's speed: the tests stop the job at a
//! point they observed (GetJob's live progress) and prove afterwards, from
//! the epochs its checkpoint holds, that the stop landed where they meant.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln::v1 as pb;
use kiln_testkit::*;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const GRACE_SECONDS: f64 = 10.0;

/// Four epochs of 800 small steps each (6,400 training rows, batch 8): the
/// tests stop it inside an epoch they observed (`wait_mid_epoch`), with
/// hundreds of steps to spare however fast or loaded the machine is.
fn long_epochs_job() -> pb::JobSpec {
    let mut spec = inline_regression(8000, 64, 4, 8);
    spec.model_name = "slow".into();
    spec.model.as_mut().unwrap().hidden_layers = vec![layer(64), layer(64)];
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

/// Waits until `outcomes` holds more than `n` answers.
async fn wait_for_answers(outcomes: &Mutex<Vec<Result<(), Code>>>, n: usize) {
    let deadline = Instant::now() + JOB_WAIT;
    while outcomes.lock().unwrap().len() <= n {
        assert!(Instant::now() < deadline, "Predict answered no call");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
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
    let job = submit(&server, long_epochs_job()).await.unwrap();

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
    // Health, watched (every change is delivered, however short the
    // NOT_SERVING phase) and polled, each on its own connection.
    let mut watched = HealthClient::new(server.channel().await)
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watched.message().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );
    let watcher = tokio::spawn(async move {
        // Dropped at NOT_SERVING: an open stream would hold the server's
        // graceful close for the whole grace period.
        loop {
            match watched.message().await {
                Ok(Some(answer)) if answer.status() == ServingStatus::NotServing => return true,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return false,
            }
        }
    });
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
    // The clients are being answered, and the job is inside an epoch.
    wait_for_answers(&outcomes, 16).await;
    let stood = wait_mid_epoch(&server, &job.id, 0).await;
    let ok_before = outcomes.lock().unwrap().len();
    wait_for_answers(&outcomes, ok_before).await;

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
    assert!(
        watcher.await.unwrap(),
        "health's watch reported NOT_SERVING during the shutdown"
    );

    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let succeeded = outcomes.iter().filter(|o| o.is_ok()).count();
    let refused: Vec<Code> = outcomes.iter().filter_map(|o| o.err()).collect();
    assert_eq!(refused.len(), 16, "each client stops at its first refusal");
    assert!(
        refused.iter().all(|&c| c == Code::Unavailable),
        "calls are refused as UNAVAILABLE, never cut off: {refused:?}"
    );
    assert!(succeeded > ok_before);
    // Polls that came after the first NOT_SERVING (if one was quick enough
    // to see it) never saw SERVING again.
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let not_serving = seen
        .iter()
        .position(|s| *s == Some(ServingStatus::NotServing))
        .unwrap_or(seen.len());
    assert!(
        seen[not_serving..]
            .iter()
            .all(|s| *s != Some(ServingStatus::Serving)),
        "{seen:?}"
    );
    eprintln!(
        "shutdown took {took:?}; {succeeded} predictions succeeded, 16 refused; \
         health NOT_SERVING for {} polls; job stopped in epoch {} after row {}",
        seen.len().saturating_sub(not_serving + 1),
        stood.epoch,
        stood.rows_done
    );
    assert!(took < Duration::from_secs_f64(GRACE_SECONDS));

    // The job went back to QUEUED with a checkpoint taken inside the epoch
    // it was seen in (after at least `stood.rows_done` rows of it), and
    // continues from there.
    let server = Server::start_in(data_dir, &env);
    let events = watch_all(&server, &job.id).await;
    let suspension = suspension(&events).expect("a suspension event");
    assert_eq!(suspension.state(), pb::JobState::Queued);
    assert_eq!(
        suspension.resume_after_epoch,
        stood.epoch - 1,
        "suspended inside epoch {}, where it was seen at row {}",
        stood.epoch,
        stood.rows_done
    );
    let resumed = epochs(&events);
    assert_eq!(
        resumed.iter().map(|m| m.epoch).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    let job = get_job(&server, &job.id).await;
    assert_eq!(job.state(), pb::JobState::Succeeded);

    let fresh = submit(&server, long_epochs_job()).await.unwrap();
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
    let running = submit(&server, long_epochs_job()).await.unwrap();
    let mut queued_spec = inline_regression(200, 8, 2, 32);
    queued_spec.model_name = "queued".into();
    let queued = submit(&server, queued_spec).await.unwrap();
    let stood = wait_mid_epoch(&server, &running.id, 0).await;
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
    // The running job was still running at the shutdown: it was suspended
    // inside the epoch it was seen in, so the queued one had not started.
    let running_events = watch_all(&server, &running.id).await;
    let suspension = suspension(&running_events).expect("the running job was suspended");
    assert_eq!(suspension.resume_after_epoch, stood.epoch - 1);
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
