//! Sweeps through the real server: a grid under a concurrency cap, ASHA
//! stopping weak trials, the leaderboard, the best model served under the
//! sweep's name, ListJobs filters and CompareJobs, and a sweep resumed after
//! a kill.

use std::collections::HashMap;
use std::time::Duration;

use kiln::v1 as pb;
use kiln_store::SweepRecords;
use kiln_testkit::*;
use pb::sweep_service_client::SweepServiceClient;
use prost_types::value::Kind;
use tonic::transport::Channel;
use tonic::Code;

async fn sweeps(server: &Server) -> SweepServiceClient<Channel> {
    SweepServiceClient::new(server.channel().await)
}

async fn submit_sweep(server: &Server, request: pb::SubmitSweepRequest) -> pb::Sweep {
    sweeps(server)
        .await
        .submit_sweep(request)
        .await
        .expect("SubmitSweep")
        .into_inner()
}

fn number(x: f64) -> prost_types::Value {
    prost_types::Value {
        kind: Some(Kind::NumberValue(x)),
    }
}

fn values(xs: &[f64]) -> pb::Parameter {
    pb::Parameter {
        kind: Some(pb::parameter::Kind::Values(prost_types::ListValue {
            values: xs.iter().map(|&x| number(x)).collect(),
        })),
    }
}

/// y = x1 + 2 x2 - x3 on 64 rows: learnable in a few epochs at lr 1e-2, not
/// at all at 1e-7.
fn base(epochs: u32) -> pb::JobSpec {
    pb::JobSpec {
        task: pb::Task::Regression as i32,
        data: Some(pb::DataSpec {
            source: Some(pb::data_spec::Source::Inline(pb::InlineData {
                columns: vec!["x1".into(), "x2".into(), "x3".into(), "y".into()],
                rows: (0..64)
                    .map(|i| {
                        let x1 = ((i * 7) % 13) as f64 / 13.0;
                        let x2 = ((i * 5) % 11) as f64 / 11.0;
                        let x3 = ((i * 3) % 17) as f64 / 17.0;
                        pb::Row {
                            values: vec![x1, x2, x3, x1 + 2.0 * x2 - x3],
                        }
                    })
                    .collect(),
            })),
            target_columns: vec!["y".into()],
            ..Default::default()
        }),
        model: Some(pb::ModelSpec {
            hidden_layers: vec![layer(8)],
            ..Default::default()
        }),
        training: Some(pb::TrainingSpec {
            epochs,
            batch_size: 8,
            ..Default::default()
        }),
        device: pb::Device::Cpu as i32,
        ..Default::default()
    }
}

async fn watch_sweep(server: &Server, id: &str) -> Vec<pb::SweepEvent> {
    let mut stream = sweeps(server)
        .await
        .watch_sweep(pb::WatchSweepRequest {
            sweep_id: id.to_string(),
            ..Default::default()
        })
        .await
        .expect("WatchSweep")
        .into_inner();
    let mut events = Vec::new();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(300), stream.message())
        .await
        .expect("a sweep event within 5 minutes")
        .expect("stream ok")
    {
        events.push(event);
    }
    events
}

fn final_sweep(events: &[pb::SweepEvent]) -> pb::Sweep {
    match events.last().and_then(|e| e.kind.clone()) {
        Some(pb::sweep_event::Kind::SweepFinished(s)) => s,
        other => panic!("the last sweep event is not SweepFinished: {other:?}"),
    }
}

fn seconds(t: &Option<prost_types::Timestamp>) -> f64 {
    let t = t.as_ref().expect("timestamp");
    t.seconds as f64 + t.nanos as f64 * 1e-9
}

/// The most intervals open at one instant.
fn max_overlap(intervals: &[(f64, f64)]) -> usize {
    let mut points: Vec<(f64, i32)> = intervals
        .iter()
        .flat_map(|&(a, b)| [(a, 1), (b, -1)])
        .collect();
    // Ends before starts at the same instant.
    points.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
    let (mut open, mut most) = (0i32, 0i32);
    for (_, d) in points {
        open += d;
        most = most.max(open);
    }
    most as usize
}

async fn sweep_jobs(server: &Server, sweep_id: &str, order_by: &str) -> Vec<pb::Job> {
    server
        .jobs()
        .await
        .list_jobs(pb::ListJobsRequest {
            sweep_id: sweep_id.to_string(),
            order_by: order_by.to_string(),
            ..Default::default()
        })
        .await
        .expect("ListJobs")
        .into_inner()
        .jobs
}

/// Two trials that cannot finish (100,000 epochs each) are seen RUNNING at
/// the same time under `max_concurrent_trials: 2`; then the sweep is
/// cancelled. (The grid's own trials are too short to be sure to overlap.)
async fn two_trials_train_at_once(server: &Server) {
    let request = pb::SubmitSweepRequest {
        base: Some(base(100_000)),
        search_space: HashMap::from([(
            "training.optimizer.learning_rate".to_string(),
            values(&[0.01, 0.003]),
        )]),
        max_concurrent_trials: 2,
        model_name: "pair".into(),
        ..Default::default()
    };
    let sweep = submit_sweep(server, request).await;
    let deadline = std::time::Instant::now() + JOB_WAIT;
    loop {
        let jobs = sweep_jobs(server, &sweep.id, "").await;
        let running = jobs
            .iter()
            .filter(|j| j.state() == pb::JobState::Running)
            .count();
        if running == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "two trials never trained at once: {jobs:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sweeps(server)
        .await
        .cancel_sweep(pb::CancelSweepRequest {
            sweep_id: sweep.id.clone(),
        })
        .await
        .unwrap();
    let done = final_sweep(&watch_sweep(server, &sweep.id).await);
    assert_eq!(done.state(), pb::SweepState::Cancelled, "{}", done.message);
}

#[tokio::test]
async fn a_grid_runs_every_point_under_the_concurrency_cap() {
    let server = Server::start_with(&[("KILN_MAX_CONCURRENT_JOBS", "2")]);
    let request = pb::SubmitSweepRequest {
        base: Some(base(3)),
        search_space: HashMap::from([
            (
                "training.optimizer.learning_rate".to_string(),
                values(&[0.01, 0.003]),
            ),
            (
                "model.hidden_layers[0].units".to_string(),
                values(&[4.0, 8.0, 16.0]),
            ),
        ]),
        max_concurrent_trials: 2,
        model_name: "grid".into(),
        ..Default::default()
    };
    let sweep = submit_sweep(&server, request).await;
    assert_eq!(sweep.total_trials, 6);
    assert_eq!(sweep.metric, "val_loss");
    assert_eq!(sweep.goal(), pb::Goal::Minimize);

    // Poll the trials while the sweep runs.
    let poll = {
        let addr = server.addr.clone();
        let id = sweep.id.clone();
        tokio::spawn(async move {
            let channel = Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut jobs = pb::job_service_client::JobServiceClient::new(channel);
            let (mut most_unfinished, mut most_running) = (0, 0);
            for _ in 0..3000 {
                let listed = jobs
                    .list_jobs(pb::ListJobsRequest {
                        sweep_id: id.clone(),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .jobs;
                let unfinished = listed
                    .iter()
                    .filter(|j| matches!(j.state(), pb::JobState::Queued | pb::JobState::Running))
                    .count();
                let running = listed
                    .iter()
                    .filter(|j| j.state() == pb::JobState::Running)
                    .count();
                most_unfinished = most_unfinished.max(unfinished);
                most_running = most_running.max(running);
                if listed.len() == 6 && unfinished == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (most_unfinished, most_running)
        })
    };
    let events = watch_sweep(&server, &sweep.id).await;
    let done = final_sweep(&events);
    let (polled_unfinished, polled_running) = poll.await.unwrap();
    assert!(
        polled_unfinished <= 2,
        "polled {polled_unfinished} unfinished trials"
    );

    assert_eq!(done.state(), pb::SweepState::Succeeded, "{}", done.message);
    assert_eq!(done.trials.len(), 6);
    let started = events
        .iter()
        .filter(|e| matches!(e.kind, Some(pb::sweep_event::Kind::TrialStarted(_))))
        .count();
    assert_eq!(started, 6, "exactly 6 trials");
    // Every grid point once.
    let mut points: Vec<(String, String)> = done
        .trials
        .iter()
        .map(|t| {
            let p: HashMap<_, _> = t
                .parameters
                .iter()
                .map(|p| (p.path.as_str(), p.value.clone().unwrap()))
                .collect();
            (
                format!("{:?}", p["training.optimizer.learning_rate"].kind),
                format!("{:?}", p["model.hidden_layers[0].units"].kind),
            )
        })
        .collect();
    points.sort();
    points.dedup();
    assert_eq!(points.len(), 6);

    // From the jobs' own timestamps: never more than 2 trials queued or
    // running at once, and 2 did train at the same time.
    let jobs = sweep_jobs(&server, &sweep.id, "").await;
    assert_eq!(jobs.len(), 6);
    for job in &jobs {
        assert_eq!(job.state(), pb::JobState::Succeeded, "{}", job.message);
        assert_eq!(job.epochs_completed, 3);
        let labels = &job.spec.as_ref().unwrap().labels;
        assert_eq!(labels["sweep"], sweep.id);
        assert_eq!(job.model_name, format!("grid-trial-{}", labels["trial"]));
    }
    let unfinished: Vec<(f64, f64)> = jobs
        .iter()
        .map(|j| (seconds(&j.created_at), seconds(&j.finished_at)))
        .collect();
    let training: Vec<(f64, f64)> = jobs
        .iter()
        .map(|j| (seconds(&j.started_at), seconds(&j.finished_at)))
        .collect();
    assert!(max_overlap(&unfinished) <= 2, "{unfinished:?}");
    assert!(
        max_overlap(&training) <= 2,
        "{training:?} (polled {polled_running} running)"
    );

    // The leaderboard is ordered by the trials' best val_loss, which is the
    // best of each job's epochs.
    for t in &done.trials {
        let events = watch_all(&server, &t.job_id).await;
        let best = epochs(&events)
            .iter()
            .map(|m| m.val_loss)
            .fold(f64::INFINITY, f64::min);
        assert_eq!(t.best_value, Some(best), "trial {}", t.number);
    }
    let ranked: Vec<f64> = done.trials.iter().map(|t| t.best_value.unwrap()).collect();
    assert!(ranked.windows(2).all(|w| w[0] <= w[1]), "{ranked:?}");
    assert_eq!(
        done.trials.iter().map(|t| t.rank).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    assert_eq!(done.best_job_id, done.trials[0].job_id);
    assert!(events
        .iter()
        .any(|e| matches!(e.kind, Some(pb::sweep_event::Kind::Leaderboard(_)))));

    // ListJobs sorts by a metric and filters by label.
    let by_loss = sweep_jobs(&server, &sweep.id, "val_loss").await;
    let losses: Vec<f64> = by_loss
        .iter()
        .map(|j| j.best.as_ref().unwrap().val_loss)
        .collect();
    assert!(losses.windows(2).all(|w| w[0] <= w[1]), "{losses:?}");
    let by_loss_desc = sweep_jobs(&server, &sweep.id, "-val_loss").await;
    assert_eq!(by_loss_desc.first().unwrap().id, by_loss.last().unwrap().id);
    let one = server
        .jobs()
        .await
        .list_jobs(pb::ListJobsRequest {
            labels: HashMap::from([("trial".to_string(), "2".to_string())]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(one.len(), 1);
    let bad = server
        .jobs()
        .await
        .list_jobs(pb::ListJobsRequest {
            order_by: "loss".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    // CompareJobs: what differs between trial 1 and trial 6, and the curves.
    let trial = |n: u32| {
        done.trials
            .iter()
            .find(|t| t.number == n)
            .unwrap()
            .job_id
            .clone()
    };
    let compared = server
        .jobs()
        .await
        .compare_jobs(pb::CompareJobsRequest {
            job_ids: vec![trial(1), trial(6)],
        })
        .await
        .unwrap()
        .into_inner();
    let diffs: HashMap<&str, &Vec<String>> = compared
        .differences
        .iter()
        .map(|d| (d.path.as_str(), &d.values))
        .collect();
    // Trial 1: units 4, lr 0.01; trial 6: units 16, lr 0.003.
    assert_eq!(
        diffs["model.hidden_layers[0].units"],
        &vec!["4".to_string(), "16".to_string()]
    );
    assert_eq!(
        diffs["training.optimizer.learning_rate"],
        &vec!["0.01".to_string(), "0.003".to_string()]
    );
    assert!(diffs.contains_key("labels.trial"));
    assert!(!diffs.contains_key("data.inline"), "same data");
    assert!(!diffs.contains_key("training.epochs"), "same epochs");
    assert_eq!(compared.curves.len(), 2);
    assert!(compared.curves.iter().all(|c| c.epochs.len() == 3));

    two_trials_train_at_once(&server).await;
}

#[tokio::test]
async fn asha_stops_weak_trials_and_the_best_model_is_served() {
    const EPOCHS: u32 = 300;
    let server = Server::start();
    // One rung, at epoch 3 of 300 (eta 100 puts the next at 300), so a weak
    // trial has many epochs left to lose when it is stopped (and the stop
    // reaches it long before it could end, however slow the machine). Trials run one
    // at a time: the weak learning rates meet a better value already
    // recorded at the rung (k = max(1, n / eta) = 1); the last trial repeats
    // the first's learning rate, ties it (same seed, same data) and goes on.
    let request = pb::SubmitSweepRequest {
        base: Some(base(EPOCHS)),
        search_space: HashMap::from([(
            "training.optimizer.learning_rate".to_string(),
            values(&[0.01, 1e-7, 2e-7, 0.01]),
        )]),
        early_termination: Some(pb::EarlyTermination {
            policy: Some(pb::early_termination::Policy::Asha(pb::Asha {
                min_epochs: 3,
                reduction_factor: 100,
            })),
        }),
        model_name: "asha".into(),
        ..Default::default()
    };
    let sweep = submit_sweep(&server, request).await;
    let events = watch_sweep(&server, &sweep.id).await;
    let done = final_sweep(&events);
    assert_eq!(done.state(), pb::SweepState::Succeeded, "{}", done.message);
    let lr = |t: &pb::Trial| match t.parameters[0].value.as_ref().unwrap().kind {
        Some(Kind::NumberValue(x)) => x,
        _ => panic!("a number"),
    };
    for t in &done.trials {
        let job = server
            .jobs()
            .await
            .get_job(pb::GetJobRequest {
                job_id: t.job_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if lr(t) < 1e-6 {
            assert!(
                t.pruned,
                "trial {} (lr {}) was not stopped",
                t.number,
                lr(t)
            );
            assert_eq!(job.state(), pb::JobState::Cancelled);
            assert_eq!(job.stop_reason(), pb::StopReason::Pruned);
            assert!(job.message.contains("ASHA at epoch 3"), "{}", job.message);
            assert!(
                job.epochs_completed < EPOCHS,
                "ran {} epochs",
                job.epochs_completed
            );
        } else {
            assert!(
                !t.pruned,
                "good trial {} stopped: {}",
                t.number, job.message
            );
            assert_eq!(job.state(), pb::JobState::Succeeded, "{}", job.message);
            assert_eq!(job.epochs_completed, EPOCHS);
        }
    }
    let pruned_events = events
        .iter()
        .filter(|e| matches!(e.kind, Some(pb::sweep_event::Kind::TrialPruned(_))))
        .count();
    assert_eq!(pruned_events, 2);
    // The best trial is a good one, ranked first.
    let best = &done.trials[0];
    assert_eq!(best.rank, 1);
    assert!(lr(best) > 1e-3, "best trial has lr {}", lr(best));
    assert_eq!(done.best_trial, best.number);
    let values: Vec<f64> = done.trials.iter().map(|t| t.best_value.unwrap()).collect();
    assert!(values.windows(2).all(|w| w[0] <= w[1]), "{values:?}");

    // The sweep's model answers as the best trial's own model.
    let rows = vec![
        pb::Row {
            values: vec![0.1, 0.2, 0.3],
        },
        pb::Row {
            values: vec![0.9, 0.5, 0.1],
        },
    ];
    let predict = |model: String| {
        let rows = rows.clone();
        let server = &server;
        async move {
            server
                .inference()
                .await
                .predict(pb::PredictRequest {
                    model,
                    rows,
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner())
        }
    };
    let served = predict("asha".into())
        .await
        .expect("the sweep's model is served");
    let own = predict(format!("asha-trial-{}", best.number))
        .await
        .unwrap();
    let by_job = predict(best.job_id.clone()).await.unwrap();
    assert_eq!(served.predictions, own.predictions);
    assert_eq!(served.predictions, by_job.predictions);
    // A pruned trial has no model: its job was cancelled.
    let weak = done.trials.iter().find(|t| t.pruned).unwrap();
    let status = predict(format!("asha-trial-{}", weak.number))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");

    let got = sweeps(&server)
        .await
        .get_sweep(pb::GetSweepRequest {
            sweep_id: sweep.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, done);
}

#[tokio::test]
async fn bad_search_spaces_are_invalid_argument_naming_the_parameter() {
    let server = Server::start();
    let mut client = sweeps(&server).await;
    let submit =
        |space: Vec<(&str, pb::Parameter)>, method: pb::SearchMethod| pb::SubmitSweepRequest {
            base: Some(base(2)),
            search_space: space.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            method: method as i32,
            ..Default::default()
        };
    let range = pb::Parameter {
        kind: Some(pb::parameter::Kind::LogUniform(pb::Range {
            low: 1e-4,
            high: 1e-1,
        })),
    };
    let cases = [
        (
            submit(
                vec![("training.optimizer.learning_rate", range.clone())],
                pb::SearchMethod::Grid,
            ),
            "search_space[\"training.optimizer.learning_rate\"]",
        ),
        (
            submit(
                vec![("training.optimiser.learning_rate", values(&[0.1]))],
                pb::SearchMethod::Grid,
            ),
            "search_space[\"training.optimiser.learning_rate\"]",
        ),
        (
            submit(
                vec![("training.batch_size", values(&[8.0, 2.5]))],
                pb::SearchMethod::Grid,
            ),
            "search_space[\"training.batch_size\"]",
        ),
        (
            submit(
                vec![("training.optimizer.learning_rate", values(&[0.1, -1.0]))],
                pb::SearchMethod::Grid,
            ),
            "search_space[\"training.optimizer.learning_rate\"]",
        ),
        (
            submit(
                vec![("model.hidden_layers[3].units", values(&[4.0]))],
                pb::SearchMethod::Random,
            ),
            "search_space[\"model.hidden_layers[3].units\"]",
        ),
    ];
    for (request, field) in cases {
        let status = client.submit_sweep(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().starts_with(field),
            "{field}: {}",
            status.message()
        );
    }
    let status = client
        .get_sweep(pb::GetSweepRequest {
            sweep_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    // Nothing was submitted.
    assert!(list_jobs(&server).await.is_empty());
}

async fn get_sweep(server: &Server, id: &str) -> pb::Sweep {
    sweeps(server)
        .await
        .get_sweep(pb::GetSweepRequest {
            sweep_id: id.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Polls until the sweep's trial 2 has a job and trial 3 none: the second of
/// its three trials (100 epochs each) is under way.
async fn wait_for_second_trial(server: &Server, id: &str) -> pb::Sweep {
    let deadline = std::time::Instant::now() + JOB_WAIT;
    loop {
        let now = get_sweep(server, id).await;
        let has_job = |n: u32| {
            now.trials
                .iter()
                .any(|t| t.number == n && !t.job_id.is_empty())
        };
        if has_job(2) && !has_job(3) {
            return now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "trial 2 never seen running alone: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The sweep records in a killed server's database.
fn sweep_records(data_dir: &std::path::Path) -> SweepRecords {
    let db = kiln_store::Db::open(&data_dir.join("kiln.db")).unwrap();
    SweepRecords::new(std::sync::Arc::new(db))
}

/// The sweep `id` as the killed server left it in its database.
fn stored_sweep(data_dir: &std::path::Path, id: &str) -> pb::Sweep {
    sweep_records(data_dir)
        .load()
        .unwrap()
        .into_iter()
        .find(|s| s.id == id)
        .unwrap()
}

/// Three trials one at a time, long enough to be killed during the second.
fn three_trials_one_at_a_time(model_name: &str) -> pb::SubmitSweepRequest {
    pb::SubmitSweepRequest {
        base: Some(base(100)),
        search_space: HashMap::from([(
            "training.optimizer.learning_rate".to_string(),
            values(&[0.01, 0.003, 0.001]),
        )]),
        max_concurrent_trials: 1,
        model_name: model_name.into(),
        ..Default::default()
    }
}

/// A sweep killed (SIGKILL) while its second trial runs comes back after the
/// restart under its id, follows the trials it had started, starts the rest,
/// and ends as it would have: every trial once, the best model served.
#[tokio::test]
async fn a_sweep_resumes_after_a_kill() {
    let server = Server::start();
    let sweep = submit_sweep(&server, three_trials_one_at_a_time("survivor")).await;
    let before = wait_for_second_trial(&server, &sweep.id).await;
    let data_dir = server.kill_keeping_data();
    assert_eq!(before.state(), pb::SweepState::Running);
    // The kill landed while the sweep ran: its record says so.
    assert_eq!(
        stored_sweep(&data_dir, &sweep.id).state(),
        pb::SweepState::Running
    );
    let server = Server::start_in(data_dir, &[]);
    let first_job = before
        .trials
        .iter()
        .find(|t| t.number == 1)
        .unwrap()
        .job_id
        .clone();

    let resumed = get_sweep(&server, &sweep.id).await;
    assert_eq!(resumed.id, sweep.id, "GetSweep knows it after the restart");
    let done = final_sweep(&watch_sweep(&server, &sweep.id).await);
    assert_eq!(done.state(), pb::SweepState::Succeeded, "{}", done.message);
    assert_eq!(done.trials.len(), 3);
    let job_ids: std::collections::HashSet<&str> =
        done.trials.iter().map(|t| t.job_id.as_str()).collect();
    assert_eq!(job_ids.len(), 3, "three distinct jobs: {:?}", done.trials);
    assert!(job_ids.contains(first_job.as_str()), "trial 1 kept its job");
    let jobs = sweep_jobs(&server, &sweep.id, "").await;
    assert_eq!(jobs.len(), 3, "no trial submitted twice");
    assert!(jobs.iter().all(|j| j.state() == pb::JobState::Succeeded));
    assert!(list_models(&server)
        .await
        .iter()
        .any(|m| m.name == "survivor"));
}

/// The kill lands after a trial's job was submitted but before the sweep
/// saved its job id: after the restart the sweep adopts that job (found by
/// its `sweep` and `trial` labels) instead of running the trial twice.
#[tokio::test]
async fn a_trial_submitted_just_before_a_kill_is_adopted_not_run_twice() {
    let server = Server::start();
    let sweep = submit_sweep(&server, three_trials_one_at_a_time("racer")).await;
    wait_for_second_trial(&server, &sweep.id).await;
    let data_dir = server.kill_keeping_data();

    // Stage the race: trial 2's job exists, the stored sweep does not know it.
    let mut stored = stored_sweep(&data_dir, &sweep.id);
    assert_eq!(stored.state(), pb::SweepState::Running, "killed mid-sweep");
    let trial_2 = &mut stored.trials[1];
    assert_eq!(trial_2.number, 2);
    let trial_2_job = std::mem::take(&mut trial_2.job_id);
    assert!(!trial_2_job.is_empty());
    trial_2.state = pb::JobState::Unspecified as i32;
    sweep_records(&data_dir).save(&stored).unwrap();

    let server = Server::start_in(data_dir, &[]);
    let done = final_sweep(&watch_sweep(&server, &sweep.id).await);
    assert_eq!(done.state(), pb::SweepState::Succeeded, "{}", done.message);
    assert_eq!(
        done.trials[1].job_id, trial_2_job,
        "trial 2 kept the job submitted before the kill"
    );
    let jobs = sweep_jobs(&server, &sweep.id, "").await;
    assert_eq!(jobs.len(), 3, "no trial submitted twice: {jobs:?}");
    let mut numbers: Vec<&str> = jobs
        .iter()
        .map(|j| j.spec.as_ref().unwrap().labels["trial"].as_str())
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, ["1", "2", "3"]);
    assert!(jobs.iter().all(|j| j.state() == pb::JobState::Succeeded));
}

/// The best trial's model, served under the sweep's model name when the
/// sweep ends, is served under that name and version after a restart too,
/// with the same answers.
#[tokio::test]
async fn the_sweeps_model_survives_a_restart() {
    let server = Server::start();
    let request = pb::SubmitSweepRequest {
        base: Some(base(3)),
        search_space: HashMap::from([(
            "training.optimizer.learning_rate".to_string(),
            values(&[0.01, 0.003]),
        )]),
        model_name: "kept".into(),
        ..Default::default()
    };
    let sweep = submit_sweep(&server, request).await;
    let done = final_sweep(&watch_sweep(&server, &sweep.id).await);
    assert_eq!(done.state(), pb::SweepState::Succeeded, "{}", done.message);
    let served = |models: Vec<pb::ModelInfo>| -> Vec<(u32, String)> {
        models
            .into_iter()
            .filter(|m| m.name == "kept")
            .map(|m| (m.version, m.job_id))
            .collect()
    };
    let before = served(list_models(&server).await);
    assert_eq!(before.len(), 1, "one version under the sweep's name");
    let answer = predict_kept(&server).await;

    let server = Server::start_in(server.kill_keeping_data(), &[]);
    assert_eq!(served(list_models(&server).await), before);
    assert_eq!(predict_kept(&server).await, answer);
}

/// The sweep model "kept"'s answer for one row.
async fn predict_kept(server: &Server) -> Vec<pb::Prediction> {
    server
        .inference()
        .await
        .predict(pb::PredictRequest {
            model: "kept".into(),
            rows: vec![pb::Row {
                values: vec![0.1, 0.5, 0.9],
            }],
            ..Default::default()
        })
        .await
        .expect("Predict on the sweep's model")
        .into_inner()
        .predictions
}
