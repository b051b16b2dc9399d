//! A serving replica (`roles = "serve"`) next to the server that trains:
//! both on one PostgreSQL database (started by the test; skipped, saying
//! so, where PostgreSQL is not installed) and one data directory, as two
//! pods on a shared database and a ReadWriteMany volume. The replica serves
//! what the other registers and follows its aliases within a bounded time,
//! follows its jobs (GetJob, WatchJob), and refuses what it must not do.

use std::time::{Duration, Instant};

use kiln::v1 as pb;
use kiln_testkit::*;
use tonic::Code;

async fn predict(server: &Server, version: &str) -> Result<u32, tonic::Status> {
    server
        .inference()
        .await
        .predict(pb::PredictRequest {
            model: "shared".into(),
            version: version.into(),
            rows: vec![pb::Row { values: vec![1.0] }],
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().model_version)
}

/// Polls `server` until Predict of `version` answers with `want`; how long
/// that took.
async fn served_within(server: &Server, version: &str, want: u32) -> Duration {
    let started = Instant::now();
    loop {
        if predict(server, version).await.ok() == Some(want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < JOB_WAIT,
            "version {want} not served as {version:?} within {JOB_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A job's events from `from` to its end, each with how long after its own
/// timestamp (the writer's clock, the same machine) it arrived.
async fn watch_timed(
    server: &Server,
    job_id: &str,
    from: u64,
) -> (Vec<pb::JobEvent>, Vec<Duration>) {
    let mut stream = server
        .jobs()
        .await
        .watch_job(pb::WatchJobRequest {
            job_id: job_id.into(),
            from_sequence: from,
        })
        .await
        .unwrap()
        .into_inner();
    let (mut events, mut lags) = (Vec::new(), Vec::new());
    while let Some(event) = stream.message().await.unwrap() {
        let at = std::time::SystemTime::try_from(event.time.unwrap()).unwrap();
        lags.push(
            std::time::SystemTime::now()
                .duration_since(at)
                .unwrap_or_default(),
        );
        events.push(event);
    }
    (events, lags)
}

fn percentiles(mut lags: Vec<Duration>) -> (Duration, Duration) {
    lags.sort();
    let at = |q: f64| lags[((lags.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

async fn train(server: &Server) {
    let spec = pb::JobSpec {
        model_name: "shared".into(),
        ..inline_regression(32, 4, 2, 8)
    };
    let job = submit(server, spec).await.unwrap();
    finished(&watch_all(server, &job.id).await);
}

async fn set_alias(server: &Server, version: &str) {
    server
        .inference()
        .await
        .set_alias(pb::SetAliasRequest {
            model: "shared".into(),
            alias: "prod".into(),
            version: version.into(),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_serving_replica_follows_the_registry_of_the_server_that_trains() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let url = pg.database("replicas");
    let writer = Server::start_with(&[("KILN_DATABASE_URL", url.as_str())]);
    train(&writer).await;
    set_alias(&writer, "1").await;
    // Started after the first version: ready with it.
    let replica = Server::start_in(
        writer.data_dir.clone(),
        &[("KILN_DATABASE_URL", url.as_str()), ("KILN_ROLES", "serve")],
    );
    assert_eq!(predict(&replica, "prod").await.unwrap(), 1);

    // A version registered and an alias moved on the writer.
    train(&writer).await;
    let version = served_within(&replica, "2", 2).await;
    set_alias(&writer, "2").await;
    let alias = served_within(&replica, "prod", 2).await;
    eprintln!("replica served version 2 {version:?} after it was registered, the moved alias {alias:?} after SetAlias");
    assert!(alias < Duration::from_secs(30), "{alias:?}");

    // A job submitted on the writer, followed on the replica while it runs:
    // the same events, in order, and from a sequence after a broken stream.
    let job = submit(
        &writer,
        pb::JobSpec {
            model_name: "followed".into(),
            ..inline_regression(64, 8, 30, 8)
        },
    )
    .await
    .unwrap();
    let first = watch_from(&replica, &job.id, 0, 3).await;
    let (rest, lags) = watch_timed(&replica, &job.id, first.last().unwrap().sequence + 1).await;
    let (p50, p99) = percentiles(lags);
    eprintln!(
        "event latency from the writer to a watcher on the replica: p50 {p50:?}, p99 {p99:?}"
    );
    let on_writer = watch_all(&writer, &job.id).await;
    finished(&on_writer);
    let on_replica: Vec<_> = first.into_iter().chain(rest).collect();
    assert_eq!(on_replica, on_writer, "the same events on both");
    assert_eq!(
        get_job(&replica, &job.id).await,
        get_job(&writer, &job.id).await
    );

    // What the replica refuses; an unknown model is NOT_FOUND at once.
    let refused = submit(&replica, inline_regression(8, 2, 1, 4))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("roles = serve"), "{refused:?}");
    let status = replica
        .inference()
        .await
        .set_alias(pb::SetAliasRequest {
            model: "shared".into(),
            alias: "x".into(),
            version: "1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let unknown = replica
        .inference()
        .await
        .predict(pb::PredictRequest {
            model: "never-trained".into(),
            rows: vec![pb::Row { values: vec![1.0] }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    // The directory is the writer's: the replica leaves it in place.
    replica.kill_keeping_data();
}

#[tokio::test]
async fn a_serving_replica_needs_a_shared_database() {
    let dir = temp_dir("replica-alone");
    let stderr = Server::fails_to_start(&dir, &[("KILN_ROLES", "serve")]);
    assert!(stderr.contains("set database_url"), "{stderr}");
    let stderr = Server::fails_to_start(&dir, &[("KILN_ROLES", "trainer")]);
    assert!(stderr.contains("roles:"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}
