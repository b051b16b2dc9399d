//! The shared mode across processes, as pods would run it: two `api,serve`
//! replicas and two `trainer`s on one PostgreSQL database (started by the
//! test; skipped, saying so, where PostgreSQL is not installed) and one
//! shared directory. Trainers take jobs by lease; the tests kill, pause and
//! stop the trainer that holds a job and check what the watchers on the
//! other replica see: every event once, in order, and the curve of a run
//! that was never interrupted.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kiln::v1 as pb;
use kiln_testkit::*;
use pb::job_event::Kind;

/// Lease of the tests' trainers: short, so that a takeover is quick.
const LEASE_SECONDS: &str = "2";

struct Cluster {
    url: String,
    dir: PathBuf,
    api: Vec<Server>,
    trainers: Vec<Server>,
    // Last: dropped after every server.
    pg: PgServer,
}

impl Cluster {
    /// `apis` api,serve replicas and `trainers` trainers; `None` without
    /// PostgreSQL.
    fn start(name: &str, apis: usize, trainers: usize) -> Option<Cluster> {
        let pg = PgServer::start()?;
        let url = pg.database(name);
        let dir = temp_dir(name);
        let mut cluster = Cluster {
            url,
            dir,
            api: Vec::new(),
            trainers: Vec::new(),
            pg,
        };
        for _ in 0..apis {
            let api = cluster.process("api,serve");
            cluster.api.push(api);
        }
        for _ in 0..trainers {
            let trainer = cluster.process("trainer");
            cluster.trainers.push(trainer);
        }
        Some(cluster)
    }

    fn process(&self, roles: &str) -> Server {
        Server::start_in(
            self.dir.clone(),
            &[
                ("KILN_DATABASE_URL", self.url.as_str()),
                ("KILN_ROLES", roles),
                ("KILN_LEASE_SECONDS", LEASE_SECONDS),
                ("KILN_CHECKPOINT_EVERY_EPOCHS", "1"),
            ],
        )
        .sharing_data_dir()
    }

    /// The trainer holding the job's live lease, and the lease's attempt.
    async fn holder(&self, job_id: &str) -> (usize, i64) {
        let (url, id) = (self.url.clone(), job_id.to_string());
        let (owner, attempt): (String, i64) = tokio::task::spawn_blocking(move || {
            let mut db = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
            let row = db
                .query_one(
                    "SELECT owner, attempt FROM job_leases WHERE job_id = $1",
                    &[&id],
                )
                .unwrap();
            (row.get(0), row.get(1))
        })
        .await
        .unwrap();
        let pid: u32 = owner.split(':').nth(1).unwrap().parse().unwrap();
        let index = self
            .trainers
            .iter()
            .position(|t| t.pid() == pid)
            .unwrap_or_else(|| panic!("{owner} is none of the trainers"));
        (index, attempt)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.api.clear();
        self.trainers.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A deterministic regression job long enough to interrupt.
fn spec(model: &str, epochs: u32) -> pb::JobSpec {
    let mut spec = inline_regression(1500, 16, epochs, 8);
    spec.model_name = model.into();
    spec.training.as_mut().unwrap().seed = 11;
    spec
}

/// A watch on `server` that keeps what it read, for a test that acts
/// between events.
struct Watch {
    stream: tonic::Streaming<pb::JobEvent>,
    events: Vec<pb::JobEvent>,
    /// For each event, how long after its timestamp (the writer's clock,
    /// the same machine) it arrived here.
    lags: Vec<Duration>,
}

impl Watch {
    async fn open(server: &Server, job_id: &str) -> Watch {
        let stream = server
            .jobs()
            .await
            .watch_job(pb::WatchJobRequest {
                job_id: job_id.into(),
                from_sequence: 0,
            })
            .await
            .unwrap()
            .into_inner();
        Watch {
            stream,
            events: Vec::new(),
            lags: Vec::new(),
        }
    }

    /// Reads until `until` holds for an event (returned), or the end.
    async fn until(&mut self, until: impl Fn(&pb::JobEvent) -> bool) -> Option<pb::JobEvent> {
        loop {
            let next = tokio::time::timeout(JOB_WAIT, self.stream.message())
                .await
                .expect("an event in time")
                .expect("stream ok")?;
            let at = std::time::SystemTime::try_from(next.time.unwrap()).unwrap();
            let lag = std::time::SystemTime::now().duration_since(at);
            self.lags.push(lag.unwrap_or_default());
            self.events.push(next.clone());
            if until(&next) {
                return Some(next);
            }
        }
    }

    async fn epoch(&mut self, at_least: u32) {
        self.until(|e| matches!(&e.kind, Some(Kind::Epoch(m)) if m.epoch >= at_least))
            .await
            .expect("the epoch before the end");
    }

    async fn rest(mut self) -> Vec<pb::JobEvent> {
        self.until(|_| false).await;
        self.events
    }

    /// The rest, with the median and 99th percentile of every event's lag.
    async fn rest_timed(mut self) -> (Vec<pb::JobEvent>, Duration, Duration) {
        self.until(|_| false).await;
        let mut lags = self.lags;
        lags.sort();
        let at = |q: f64| lags[((lags.len() - 1) as f64 * q).round() as usize];
        (self.events, at(0.5), at(0.99))
    }
}

fn is_running(e: &pb::JobEvent) -> bool {
    matches!(&e.kind, Some(Kind::StateChanged(s)) if s.state() == pb::JobState::Running)
}

fn states(events: &[pb::JobEvent]) -> Vec<pb::StateChanged> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::StateChanged(s)) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

/// Every event once and in order; every epoch once; one final event.
fn assert_whole(events: &[pb::JobEvent], epochs_run: u32) {
    let sequences: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (0..events.len() as u64).collect::<Vec<_>>());
    let numbers: Vec<u32> = epochs(events).iter().map(|m| m.epoch).collect();
    assert_eq!(numbers, (1..=epochs_run).collect::<Vec<_>>());
    let finals = events
        .iter()
        .filter(|e| matches!(e.kind, Some(Kind::Finished(_) | Kind::Failed(_))))
        .count();
    assert_eq!(finals, 1, "one final event");
}

fn curve(events: &[pb::JobEvent]) -> Vec<(f64, f64)> {
    epochs(events)
        .iter()
        .map(|m| (m.train_loss, m.val_loss))
        .collect()
}

async fn versions(server: &Server, model: &str) -> Vec<u32> {
    let mut versions: Vec<u32> = list_models(server)
        .await
        .into_iter()
        .filter(|m| m.name == model)
        .map(|m| m.version)
        .collect();
    versions.sort();
    versions
}

/// Polls until Predict of `model` version `version` answers on `server`;
/// how long that took.
async fn served_within(server: &Server, model: &str, version: u32) -> Duration {
    let started = Instant::now();
    loop {
        let answer = server
            .inference()
            .await
            .predict(pb::PredictRequest {
                model: model.into(),
                version: version.to_string(),
                rows: vec![pb::Row { values: vec![1.0] }],
                ..Default::default()
            })
            .await;
        if answer.is_ok_and(|r| r.into_inner().model_version == version) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < JOB_WAIT,
            "{model} v{version} never served"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The job on `server` once it shows it ended (a replica catches up on
/// what another wrote within its sync period).
async fn ended(server: &Server, id: &str) -> pb::Job {
    let started = Instant::now();
    loop {
        let job = get_job(server, id).await;
        if matches!(
            job.state(),
            pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled
        ) {
            return job;
        }
        assert!(started.elapsed() < JOB_WAIT, "{id} never ended: {job:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_killed_trainers_job_is_continued_by_another_with_the_same_curve() {
    let Some(cluster) = Cluster::start("trainers-kill", 2, 2) else {
        return;
    };
    let (a, b) = (&cluster.api[0], &cluster.api[1]);
    let job = submit(a, spec("leased", 30)).await.unwrap();
    // Submitted on one replica, watched on the other.
    let mut watch = Watch::open(b, &job.id).await;
    watch.epoch(3).await;
    let (holder, attempt) = cluster.holder(&job.id).await;
    assert_eq!(attempt, 1);
    cluster.trainers[holder].signal("KILL");
    let killed = Instant::now();
    // The other trainer takes it once the lease has expired.
    watch.until(is_running).await.expect("running again");
    let resumed = killed.elapsed();
    let (taker, attempt) = cluster.holder(&job.id).await;
    assert_eq!((taker, attempt), (1 - holder, 2));
    let (events, p50, p99) = watch.rest_timed().await;
    eprintln!(
        "event latency from the trainers to a watcher on an api replica: p50 {p50:?}, p99 {p99:?} \
         ({} events)",
        events.len()
    );
    eprintln!(
        "kill -9 of the trainer to the job RUNNING on the other, seen on an api replica: \
         {resumed:?} (lease {LEASE_SECONDS} s)"
    );
    assert!(
        resumed >= Duration::from_secs(1),
        "not before the lease ends"
    );

    assert_whole(&events, 30);
    let states = states(&events);
    let kinds: Vec<_> = states.iter().map(|s| s.state()).collect();
    use pb::JobState::{Queued, Running};
    assert_eq!(kinds, [Queued, Running, Queued, Running]);
    assert!(!states[2].suspended, "a kill is an interruption");
    assert!(states[2].resume_after_epoch >= 2, "{:?}", states[2]);
    let fin = finished(&events);
    // Both replicas tell the same story.
    assert_eq!(watch_all(a, &job.id).await, events);

    // The same spec, never interrupted: the same numbers, bit for bit.
    let fresh = submit(b, spec("leased", 30)).await.unwrap();
    let reference = watch_all(a, &fresh.id).await;
    assert_eq!(curve(&events), curve(&reference));
    assert_eq!(fin.best_epoch, finished(&reference).best_epoch);

    // Both models, served by both replicas.
    for api in [a, b] {
        served_within(api, "leased", 1).await;
        let within = served_within(api, "leased", 2).await;
        eprintln!("version 2 served by a replica {within:?} after its job was seen to end");
        assert_eq!(versions(api, "leased").await, [1, 2]);
    }
    // An alias moved on one api replica is followed by the other.
    let moved = Instant::now();
    a.inference()
        .await
        .set_alias(pb::SetAliasRequest {
            model: "leased".into(),
            alias: "prod".into(),
            version: "1".into(),
        })
        .await
        .unwrap();
    loop {
        let answer = b
            .inference()
            .await
            .predict(pb::PredictRequest {
                model: "leased".into(),
                version: "prod".into(),
                rows: vec![pb::Row { values: vec![1.0] }],
                ..Default::default()
            })
            .await;
        if answer.is_ok_and(|r| r.into_inner().model_version == 1) {
            break;
        }
        assert!(
            moved.elapsed() < JOB_WAIT,
            "the alias never reached the other replica"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "an alias moved on one api replica, served by the other {:?} later",
        moved.elapsed()
    );
}

#[tokio::test]
async fn replicas_starting_together_on_an_empty_database_migrate_it_once() {
    let Some(mut cluster) = Cluster::start("trainers-migrate", 0, 0) else {
        return;
    };
    // Four processes of every kind at once, on a database nobody created.
    let starting: Vec<_> = ["api,serve", "api", "trainer", "serve"]
        .into_iter()
        .map(|roles| {
            let (dir, url) = (cluster.dir.clone(), cluster.url.clone());
            std::thread::spawn(move || {
                Server::start_in(
                    dir,
                    &[("KILN_DATABASE_URL", url.as_str()), ("KILN_ROLES", roles)],
                )
                .sharing_data_dir()
            })
        })
        .collect();
    for server in starting {
        cluster
            .api
            .push(server.join().expect("every process starts"));
    }
    let url = cluster.url.clone();
    let versions: i64 = tokio::task::spawn_blocking(move || {
        let mut db = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
        db.query_one("SELECT count(*) FROM kiln_schema", &[])
            .unwrap()
            .get(0)
    })
    .await
    .unwrap();
    assert_eq!(versions, 1, "one schema version row");
    // And they work together: a job submitted on the api-only one, trained
    // by the trainer, is watched to its end on another, and served.
    let job = submit(&cluster.api[1], spec("migrated", 2)).await.unwrap();
    finished(&watch_all(&cluster.api[0], &job.id).await);
    finished(&watch_all(&cluster.api[3], &job.id).await);
    served_within(&cluster.api[3], "migrated", 1).await;
    // What a process without the role refuses, naming it.
    let refused = cluster.api[1]
        .inference()
        .await
        .predict(pb::PredictRequest {
            model: "migrated".into(),
            rows: vec![pb::Row { values: vec![1.0] }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(refused.message().contains("the serve role"), "{refused:?}");
    let refused = submit(&cluster.api[2], spec("nowhere", 1))
        .await
        .unwrap_err();
    assert!(refused.message().contains("the api role"), "{refused:?}");
}

#[tokio::test]
async fn a_paused_trainer_is_fenced_a_stopped_one_hands_over_and_any_replica_cancels() {
    let Some(mut cluster) = Cluster::start("trainers-pause", 2, 2) else {
        return;
    };
    // SIGSTOP past the lease, SIGCONT after the other trainer took over:
    // whatever the paused one then tries to write is refused.
    let (a, b) = (&cluster.api[0], &cluster.api[1]);
    let job = submit(a, spec("paused", 30)).await.unwrap();
    let mut watch = Watch::open(b, &job.id).await;
    watch.epoch(2).await;
    let (paused, _) = cluster.holder(&job.id).await;
    cluster.trainers[paused].signal("STOP");
    watch.until(is_running).await.expect("taken over");
    cluster.trainers[paused].signal("CONT");
    let events = watch.rest().await;
    assert_whole(&events, 30);
    assert_eq!(finished(&events).epochs_completed, 30);
    served_within(a, "paused", 1).await;
    assert_eq!(versions(a, "paused").await, [1], "one model registered");
    assert_eq!(ended(a, &job.id).await.state(), pb::JobState::Succeeded);

    // SIGTERM of the trainer holding a job: it checkpoints and puts the job
    // back (suspended, no restart counted); the other continues it.
    let job = submit(b, spec("handed-over", 30)).await.unwrap();
    let mut watch = Watch::open(a, &job.id).await;
    watch.epoch(2).await;
    let (holder, _) = cluster.holder(&job.id).await;
    cluster.trainers[holder].terminate();
    let events = watch.rest().await;
    assert_whole(&events, 30);
    let states = states(&events);
    assert_eq!(states.len(), 4, "{states:?}");
    assert!(
        states[2].suspended,
        "a handover, not a restart: {:?}",
        states[2]
    );
    assert!(states[2].resume_after_epoch >= 2, "{:?}", states[2]);
    let stopped = cluster.trainers.remove(holder);
    stopped.wait_exit_keeping_data(Duration::from_secs(60));

    // A cancel on an api replica reaches the trainer that runs the job.
    let (a, b) = (&cluster.api[0], &cluster.api[1]);
    let job = submit(a, spec("cancelled", 1000)).await.unwrap();
    let mut watch = Watch::open(b, &job.id).await;
    watch.epoch(1).await;
    let asked = Instant::now();
    b.jobs()
        .await
        .cancel_job(pb::CancelJobRequest {
            job_id: job.id.clone(),
        })
        .await
        .unwrap();
    let events = watch.rest().await;
    eprintln!(
        "cancel on an api replica to the job's end seen there: {:?}",
        asked.elapsed()
    );
    assert_eq!(get_job(b, &job.id).await.state(), pb::JobState::Cancelled);
    let last = events.last().unwrap();
    assert!(
        matches!(&last.kind, Some(Kind::Failed(f)) if f.state() == pb::JobState::Cancelled),
        "{last:?}"
    );
}

#[tokio::test]
async fn training_and_a_watch_go_on_across_a_postgres_restart() {
    let Some(mut cluster) = Cluster::start("trainers-pg-restart", 1, 1) else {
        return;
    };
    let job = submit(&cluster.api[0], spec("through-restart", 40))
        .await
        .unwrap();
    let mut watch = Watch::open(&cluster.api[0], &job.id).await;
    watch.epoch(3).await;
    let down = Instant::now();
    cluster.pg.restart();
    eprintln!("PostgreSQL down and back in {:?}", down.elapsed());
    let events = watch.rest().await;
    assert_whole(&events, 40);
    let job = ended(&cluster.api[0], &job.id).await;
    assert_eq!(job.state(), pb::JobState::Succeeded, "{job:?}");
    eprintln!(
        "states across the restart: {:?}",
        states(&events)
            .iter()
            .map(|s| (s.state(), s.suspended, s.resume_after_epoch))
            .collect::<Vec<_>>()
    );
    // Whatever the trainer had to do (hand the job back, continue it from
    // its checkpoint), the curve is an uninterrupted run's.
    let fresh = submit(&cluster.api[0], spec("through-restart", 40))
        .await
        .unwrap();
    let reference = watch_all(&cluster.api[0], &fresh.id).await;
    assert_eq!(curve(&events), curve(&reference));
}

async fn sweeps(
    server: &Server,
) -> pb::sweep_service_client::SweepServiceClient<tonic::transport::Channel> {
    pb::sweep_service_client::SweepServiceClient::new(server.channel().await)
}

async fn get_sweep(server: &Server, id: &str) -> pb::Sweep {
    pb::sweep_service_client::SweepServiceClient::new(server.channel().await)
        .get_sweep(pb::GetSweepRequest {
            sweep_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Polls GetSweep on `server` until `until` holds.
async fn sweep_until(server: &Server, id: &str, until: impl Fn(&pb::Sweep) -> bool) -> pb::Sweep {
    let started = Instant::now();
    loop {
        if let Ok(sweep) = pb::sweep_service_client::SweepServiceClient::new(server.channel().await)
            .get_sweep(pb::GetSweepRequest {
                sweep_id: id.into(),
            })
            .await
        {
            let sweep = sweep.into_inner();
            if until(&sweep) {
                return sweep;
            }
        }
        assert!(started.elapsed() < JOB_WAIT, "sweep {id} never got there");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_sweep_whose_controlling_replica_is_killed_is_finished_by_another() {
    let Some(mut cluster) = Cluster::start("trainers-sweep", 2, 1) else {
        return;
    };
    let rates = [0.01, 0.003, 0.001];
    let request = pb::SubmitSweepRequest {
        base: Some(spec("swept", 12)),
        search_space: std::collections::HashMap::from([(
            "training.optimizer.learning_rate".to_string(),
            pb::Parameter {
                kind: Some(pb::parameter::Kind::Values(prost_types::ListValue {
                    values: rates
                        .iter()
                        .map(|&x| prost_types::Value {
                            kind: Some(prost_types::value::Kind::NumberValue(x)),
                        })
                        .collect(),
                })),
            },
        )]),
        max_concurrent_trials: 1,
        model_name: "swept".into(),
        ..Default::default()
    };
    // CancelSweep on the replica that does not control the sweep.
    let long = pb::SubmitSweepRequest {
        base: Some(spec("cancelled-sweep", 1000)),
        model_name: "cancelled-sweep".into(),
        ..request.clone()
    };
    let doomed = sweeps(&cluster.api[0])
        .await
        .submit_sweep(long)
        .await
        .unwrap()
        .into_inner();
    sweep_until(&cluster.api[1], &doomed.id, |s| {
        s.trials.iter().any(|t| !t.job_id.is_empty())
    })
    .await;
    sweeps(&cluster.api[1])
        .await
        .cancel_sweep(pb::CancelSweepRequest {
            sweep_id: doomed.id.clone(),
        })
        .await
        .unwrap();
    let ended = sweep_until(&cluster.api[1], &doomed.id, |s| {
        s.state() != pb::SweepState::Running
    })
    .await;
    assert_eq!(ended.state(), pb::SweepState::Cancelled, "{ended:?}");

    let sweep = sweeps(&cluster.api[0])
        .await
        .submit_sweep(request)
        .await
        .unwrap()
        .into_inner();
    // Its first trial started, as the other replica sees it.
    let other = &cluster.api[1];
    sweep_until(other, &sweep.id, |s| {
        s.trials.iter().any(|t| !t.job_id.is_empty())
    })
    .await;
    // The controlling replica dies; the other takes the sweep over once its
    // lease has expired, and finishes it.
    let killed = Instant::now();
    cluster.api.remove(0).signal("KILL");
    let other = &cluster.api[0];
    let ended = sweep_until(other, &sweep.id, |s| s.state() != pb::SweepState::Running).await;
    eprintln!(
        "sweep ended {:?} after its controlling replica was killed",
        killed.elapsed()
    );
    assert_eq!(ended.state(), pb::SweepState::Succeeded, "{ended:?}");
    assert_eq!(ended.trials.len(), rates.len());
    // No trial run twice: one job per trial, each of them succeeded.
    let jobs = other
        .jobs()
        .await
        .list_jobs(pb::ListJobsRequest {
            sweep_id: sweep.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(jobs.len(), rates.len(), "{jobs:?}");
    let mut trial_jobs: Vec<&str> = ended.trials.iter().map(|t| t.job_id.as_str()).collect();
    trial_jobs.sort();
    trial_jobs.dedup();
    assert_eq!(trial_jobs.len(), rates.len(), "{:?}", ended.trials);
    for job in &jobs {
        assert_eq!(job.state(), pb::JobState::Succeeded, "{job:?}");
    }
    assert!(list_models(other).await.iter().any(|m| m.name == "swept"));
    assert_eq!(
        get_sweep(other, &sweep.id).await.best_job_id,
        ended.best_job_id
    );
}

/// Jobs per minute through the queue with 1, 2 and 4 trainer processes (one
/// libtorch thread each) on a small job, as ratios to one trainer. A
/// benchmark, not a test: on demand, with
/// `cargo test -p kiln-server --test e2e trainers::throughput -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "a benchmark, run on demand"]
async fn throughput_with_1_2_4_trainers() {
    const JOBS: usize = 24;
    let mut rates = Vec::new();
    for trainers in [1, 2, 4] {
        let Some(mut cluster) = Cluster::start(&format!("throughput-{trainers}"), 1, 0) else {
            return;
        };
        for _ in 0..trainers {
            let trainer = Server::start_in(
                cluster.dir.clone(),
                &[
                    ("KILN_DATABASE_URL", cluster.url.as_str()),
                    ("KILN_ROLES", "trainer"),
                    ("KILN_TORCH_THREADS", "1"),
                ],
            )
            .sharing_data_dir();
            cluster.trainers.push(trainer);
        }
        let api = &cluster.api[0];
        let started = Instant::now();
        let mut ids = Vec::new();
        for n in 0..JOBS {
            let job = submit(api, spec(&format!("small-{n}"), 3)).await.unwrap();
            ids.push(job.id);
        }
        for id in &ids {
            finished(&watch_all(api, id).await);
        }
        let per_minute = JOBS as f64 / started.elapsed().as_secs_f64() * 60.0;
        rates.push(per_minute);
        eprintln!(
            "{trainers} trainer(s): {JOBS} jobs in {:.1?}, {per_minute:.1} jobs/min, \
             {:.2}x one trainer",
            started.elapsed(),
            per_minute / rates[0]
        );
    }
}
