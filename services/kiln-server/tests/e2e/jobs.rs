//! The job lifecycle through the real server: cancellation, replay for late
//! watchers, concurrent watchers, and the statuses of bad requests.

use std::time::{Duration, Instant};

use kiln::v1 as pb;
use kiln_testkit::*;
use tonic::Code;

/// A job that would run for hours: many rows, tiny batches, a huge budget.
fn long_job(rows: usize) -> pb::JobSpec {
    inline_regression(rows, 16, 100_000, 4)
}

fn last_failed(events: &[pb::JobEvent]) -> pb::Failed {
    match events.last().and_then(|e| e.kind.clone()) {
        Some(pb::job_event::Kind::Failed(f)) => f,
        other => panic!("expected a failed/cancelled end, got {other:?}"),
    }
}

#[tokio::test]
async fn cancel_stops_running_and_queued_jobs() {
    let server = Server::start();
    let running = submit(&server, long_job(2000)).await.unwrap();
    // Same device: the second job waits its turn.
    let queued = submit(&server, long_job(100)).await.unwrap();
    wait_for_epoch(&server, &running.id).await;
    assert_eq!(
        get_job(&server, &running.id).await.state(),
        pb::JobState::Running
    );
    assert_eq!(
        get_job(&server, &queued.id).await.state(),
        pb::JobState::Queued
    );

    // A queued job is cancelled at once.
    let mut jobs = server.jobs().await;
    let cancelled = jobs
        .cancel_job(pb::CancelJobRequest {
            job_id: queued.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.state(), pb::JobState::Cancelled);
    assert_eq!(cancelled.stop_reason(), pb::StopReason::Cancelled);

    // A running one within a batch: its watch stream ends with the cancel.
    let started = Instant::now();
    jobs.cancel_job(pb::CancelJobRequest {
        job_id: running.id.clone(),
    })
    .await
    .unwrap();
    let events = watch_all(&server, &running.id).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cancel took {:?}",
        started.elapsed()
    );
    let end = last_failed(&events);
    assert_eq!(end.state(), pb::JobState::Cancelled);
    assert_eq!(end.reason(), pb::StopReason::Cancelled);
    let job = get_job(&server, &running.id).await;
    assert_eq!(job.state(), pb::JobState::Cancelled);
    assert!(job.epochs_completed >= 1);

    // No model is served for a cancelled job.
    let status = server
        .inference()
        .await
        .predict(pb::PredictRequest {
            model: running.id.clone(),
            rows: vec![pb::Row { values: vec![1.0] }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    // Cancelling a finished job changes nothing.
    let again = jobs
        .cancel_job(pb::CancelJobRequest {
            job_id: running.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.state(), pb::JobState::Cancelled);
}

fn quick_job() -> pb::JobSpec {
    let mut spec = long_job(200);
    let training = spec.training.as_mut().unwrap();
    training.epochs = 15;
    training.batch_size = 32;
    spec
}

#[tokio::test]
async fn watchers_replay_from_the_start_and_see_the_same_events() {
    let server = Server::start();
    let job = submit(&server, quick_job()).await.unwrap();
    // Two watchers from the start, concurrently.
    let (a, b) = tokio::join!(watch_all(&server, &job.id), watch_all(&server, &job.id));
    assert_eq!(a, b);
    // A late watcher, after the end, replays everything.
    let late = watch_all(&server, &job.id).await;
    assert_eq!(late, a);

    let sequences: Vec<u64> = late.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (0..late.len() as u64).collect::<Vec<_>>());
    let states: Vec<pb::JobState> = late
        .iter()
        .filter_map(|e| match &e.kind {
            Some(pb::job_event::Kind::StateChanged(s)) => Some(s.state()),
            _ => None,
        })
        .collect();
    assert_eq!(states, [pb::JobState::Queued, pb::JobState::Running]);
    let epochs = epochs(&late);
    assert_eq!(
        epochs.iter().map(|e| e.epoch).collect::<Vec<_>>(),
        (1..=15).collect::<Vec<_>>()
    );
    for e in &epochs {
        assert!(e.train_loss.is_finite() && e.val_loss.is_finite());
        assert!(e.val_mae.is_some() && e.val_accuracy.is_none());
        assert!(e.epoch_seconds > 0.0 && e.samples_per_second > 0.0);
        assert_eq!(e.learning_rate, 1e-3);
    }
    let done = finished(&late);
    assert_eq!(done.reason(), pb::StopReason::Completed);
    assert_eq!(done.epochs_completed, 15);
    let best_epoch = epochs
        .iter()
        .min_by(|x, y| x.val_loss.total_cmp(&y.val_loss))
        .unwrap();
    assert_eq!(done.best_epoch, best_epoch.epoch);

    let listed = server
        .jobs()
        .await
        .list_jobs(pb::ListJobsRequest {
            state: pb::JobState::Succeeded as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.jobs.len(), 1);
    assert_eq!(
        listed.jobs[0].best.as_ref().unwrap().epoch,
        best_epoch.epoch
    );
}

async fn submit_err(server: &Server, spec: pb::JobSpec) -> tonic::Status {
    submit(server, spec)
        .await
        .expect_err("the spec must be refused")
}

#[tokio::test]
async fn bad_requests_get_statuses_that_name_the_field() {
    let server = Server::start();
    let base = quick_job;

    let mut s = base();
    s.task = 0;
    let st = submit_err(&server, s).await;
    assert_eq!(st.code(), Code::InvalidArgument);
    assert!(st.message().starts_with("spec.task:"), "{}", st.message());

    let mut s = base();
    s.model.as_mut().unwrap().hidden_layers[0].units = 0;
    let st = submit_err(&server, s).await;
    assert_eq!(st.code(), Code::InvalidArgument);
    assert!(
        st.message()
            .starts_with("spec.model.hidden_layers[0].units:"),
        "{}",
        st.message()
    );

    let mut s = base();
    s.model.as_mut().unwrap().hidden_layers[0].dropout = 1.5;
    let st = submit_err(&server, s).await;
    assert!(
        st.message()
            .starts_with("spec.model.hidden_layers[0].dropout:"),
        "{}",
        st.message()
    );

    let mut s = base();
    s.training.as_mut().unwrap().optimizer = Some(pb::Optimizer {
        learning_rate: Some(-1.0),
        ..Default::default()
    });
    let st = submit_err(&server, s).await;
    assert_eq!(
        st.message(),
        "spec.training.optimizer.learning_rate: must be > 0"
    );

    let mut s = base();
    s.data.as_mut().unwrap().target_columns = vec!["nope".into()];
    let st = submit_err(&server, s).await;
    assert_eq!(st.code(), Code::InvalidArgument);
    assert!(
        st.message()
            .starts_with("spec.data.target_columns[0]: no column \"nope\""),
        "{}",
        st.message()
    );

    // Infinite inline data names row and column (NaN is a missing value).
    let mut s = base();
    if let Some(pb::data_spec::Source::Inline(inline)) = &mut s.data.as_mut().unwrap().source {
        inline.rows[2].values[0] = f64::INFINITY;
    }
    let st = submit_err(&server, s).await;
    assert_eq!(st.code(), Code::InvalidArgument);
    assert!(
        st.message().starts_with("row 3, column \"x\""),
        "{}",
        st.message()
    );

    // Ragged inline rows.
    let mut s = base();
    if let Some(pb::data_spec::Source::Inline(inline)) = &mut s.data.as_mut().unwrap().source {
        inline.rows[4].values.push(1.0);
    }
    let st = submit_err(&server, s).await;
    assert!(
        st.message().starts_with("spec.data.inline.rows[4]:"),
        "{}",
        st.message()
    );

    // Unknown dataset.
    let mut s = base();
    s.data.as_mut().unwrap().source = Some(pb::data_spec::Source::DatasetId("ds-missing".into()));
    let st = submit_err(&server, s).await;
    assert_eq!(st.code(), Code::NotFound);
    assert!(
        st.message().starts_with("spec.data.dataset_id:"),
        "{}",
        st.message()
    );

    // A CUDA device this server does not have.
    let mut s = base();
    s.device = pb::Device::Cuda as i32;
    s.cuda_device_index = 7;
    let st = submit_err(&server, s).await;
    assert_eq!(st.code(), Code::InvalidArgument);
    assert!(st.message().starts_with("spec.device:"), "{}", st.message());

    // CSV problems: ragged at upload, non-numeric at submit.
    let st = upload(&server, "ragged", b"a,b,y\n1,2,3\n4,5\n", 1024)
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    assert_eq!(st.message(), "row 2: has 2 fields, the header has 3");
    let ds = upload(&server, "words", b"a,b,y\n1,2,3\n4,five,6\n7,8,9\n", 1024)
        .await
        .unwrap();
    let mut s = base();
    s.data = Some(dataset_source(&ds.id, &["y"]));
    let st = submit_err(&server, s).await;
    assert_eq!(st.code(), Code::InvalidArgument);
    assert_eq!(
        st.message(),
        "row 2, column \"b\": \"five\" is not a number \
         (list the column in spec.data.categorical_columns to one-hot encode it)"
    );

    let st = server
        .jobs()
        .await
        .get_job(pb::GetJobRequest {
            job_id: "job-nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::NotFound);
    // Nothing above created a job.
    let all = server
        .jobs()
        .await
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap();
    assert!(all.into_inner().jobs.is_empty());
}

#[tokio::test]
async fn predict_statuses() {
    let server = Server::start();
    let mut inference = server.inference().await;
    let row = |v: Vec<f64>| pb::Row { values: v };

    let st = inference
        .predict(pb::PredictRequest {
            model: "nope".into(),
            rows: vec![row(vec![1.0])],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::NotFound);

    // While its job runs, a model is not servable yet.
    let mut spec = long_job(500);
    spec.model_name = "slow".into();
    let slow = submit(&server, spec).await.unwrap();
    let st = inference
        .predict(pb::PredictRequest {
            model: "slow".into(),
            rows: vec![row(vec![1.0])],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::FailedPrecondition, "{st:?}");
    server
        .jobs()
        .await
        .cancel_job(pb::CancelJobRequest { job_id: slow.id })
        .await
        .unwrap();

    let mut spec = quick_job();
    spec.model_name = "quick".into();
    let job = submit(&server, spec).await.unwrap();
    finished(&watch_all(&server, &job.id).await);

    let st = inference
        .predict(pb::PredictRequest {
            model: "quick".into(),
            rows: vec![row(vec![1.0]), row(vec![1.0, 2.0])],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    assert!(
        st.message().starts_with("rows[1]: has 2 values"),
        "{}",
        st.message()
    );
    let st = inference
        .predict(pb::PredictRequest {
            model: "quick".into(),
            rows: vec![],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);

    let ok = inference
        .predict(pb::PredictRequest {
            model: "quick".into(),
            rows: vec![row(vec![1.0]), row(vec![150.0])],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.predictions.len(), 2);
    assert!(ok.compute_seconds > 0.0);
    let models = list_models(&server).await;
    assert_eq!(models.len(), 1);
    assert_eq!(models[0].name, "quick");
    assert_eq!(models[0].feature_columns, ["x"]);
}

/// A huge learning rate ends the job FAILED with reason DIVERGED, naming the
/// epoch and the first non-finite layer; the epochs before it carry their
/// gradient health.
#[tokio::test]
async fn a_diverging_job_fails_naming_epoch_and_layer() {
    let server = Server::start();
    let mut spec = long_job(200);
    let training = spec.training.as_mut().unwrap();
    training.epochs = 20;
    training.batch_size = 16;
    training.optimizer = Some(pb::Optimizer {
        learning_rate: Some(1e6),
        kind: Some(pb::optimizer::Kind::Sgd(pb::Sgd::default())),
        ..Default::default()
    });
    let job = submit(&server, spec).await.unwrap();
    let events = watch_all(&server, &job.id).await;
    let end = last_failed(&events);
    assert_eq!(end.state(), pb::JobState::Failed);
    assert_eq!(end.reason(), pb::StopReason::Diverged);
    assert!(end.epoch >= 1, "{end:?}");
    assert!(
        ["hidden1", "output"].contains(&end.layer.as_str()),
        "{end:?}"
    );
    assert!(
        end.message
            .starts_with(&format!("training diverged at epoch {}: ", end.epoch))
            && end.message.contains(&end.layer),
        "{}",
        end.message
    );
    let job = get_job(&server, &job.id).await;
    assert_eq!(job.stop_reason(), pb::StopReason::Diverged);
    for epoch in epochs(&events) {
        let health = epoch
            .gradient_health
            .expect("every epoch reports its health");
        let names: Vec<_> = health.layers.iter().map(|l| l.layer.as_str()).collect();
        assert_eq!(names, ["hidden1", "output"]);
    }
}

/// Every epoch event carries per-layer gradient health.
#[tokio::test]
async fn epoch_events_carry_gradient_health() {
    let server = Server::start();
    let mut spec = long_job(64);
    spec.training.as_mut().unwrap().epochs = 2;
    let job = submit(&server, spec).await.unwrap();
    let events = watch_all(&server, &job.id).await;
    let epochs = epochs(&events);
    assert_eq!(epochs.len(), 2);
    for epoch in epochs {
        let health = epoch.gradient_health.expect("gradient health");
        assert_eq!(health.layers.len(), 2);
        let hidden = &health.layers[0];
        assert_eq!(hidden.layer, "hidden1");
        assert!(hidden.grad_norm > 0.0 && hidden.weight_norm > 0.0 && hidden.update_ratio > 0.0);
        // layer() is ReLU by default: its dead units are counted.
        assert!((0.0..=1.0).contains(&hidden.dead_fraction.expect("ReLU")));
        assert_eq!(health.layers[1].dead_fraction, None);
    }
}

fn lr_range_points(events: &[pb::JobEvent]) -> Vec<pb::LrRangePoint> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(pb::job_event::Kind::LrRangePoint(p)) => Some(*p),
            _ => None,
        })
        .collect()
}

fn lr_range_result(events: &[pb::JobEvent]) -> pb::LrRangeResult {
    let results: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(pb::job_event::Kind::LrRangeResult(r)) => Some(*r),
            _ => None,
        })
        .collect();
    assert_eq!(results.len(), 1, "one LR range result");
    results[0]
}

/// JOB_KIND_LR_RANGE_TEST streams the curve, ends SUCCEEDED with the
/// suggestions on the job, and serves no model.
#[tokio::test]
async fn the_lr_range_test_job_streams_its_curve_and_suggestions() {
    let server = Server::start();
    let mut spec = long_job(400);
    spec.kind = pb::JobKind::LrRangeTest as i32;
    spec.lr_range_test = Some(pb::LrRangeTest {
        iterations: Some(40),
        ..Default::default()
    });
    let job = submit(&server, spec).await.unwrap();
    let events = watch_all(&server, &job.id).await;
    let points = lr_range_points(&events);
    let result = lr_range_result(&events);
    assert_eq!(points.len() as u32, result.iterations);
    assert!(result.iterations <= 40);
    assert_eq!(points[0].learning_rate, 1e-7);
    for (i, p) in points.iter().enumerate() {
        assert_eq!(p.iteration as usize, i);
        assert!(i == 0 || p.learning_rate > points[i - 1].learning_rate);
    }
    assert!(result.valley > 1e-7 && result.valley < 10.0);
    assert_eq!(result.chosen, None);
    assert!(
        epochs(&events).is_empty(),
        "the range test trains no epochs"
    );
    let done = get_job(&server, &job.id).await;
    assert_eq!(done.state(), pb::JobState::Succeeded);
    assert_eq!(done.lr_range, Some(result));
    assert!(list_models(&server)
        .await
        .iter()
        .all(|m| m.job_id != job.id && m.name != job.model_name));
}

/// Learning rate "auto": the range test, then training at its suggestion.
#[tokio::test]
async fn auto_learning_rate_trains_at_the_range_tests_suggestion() {
    let server = Server::start();
    let mut spec = long_job(400);
    let training = spec.training.as_mut().unwrap();
    training.epochs = 2;
    training.batch_size = 16;
    training.optimizer = Some(pb::Optimizer {
        auto_learning_rate: true,
        ..Default::default()
    });
    let job = submit(&server, spec.clone()).await.unwrap();
    let events = watch_all(&server, &job.id).await;
    let result = lr_range_result(&events);
    let chosen = result.chosen.expect("auto reports the chosen rate");
    assert_eq!(chosen, result.valley);
    let epochs = epochs(&events);
    assert_eq!(epochs.len(), 2);
    assert!(epochs.iter().all(|e| e.learning_rate == chosen));
    assert_eq!(finished(&events).reason(), pb::StopReason::Completed);
    assert_eq!(get_job(&server, &job.id).await.lr_range, Some(result));

    // A learning rate and "auto" together are refused, naming the field.
    spec.training.as_mut().unwrap().optimizer = Some(pb::Optimizer {
        auto_learning_rate: true,
        learning_rate: Some(0.1),
        ..Default::default()
    });
    let status = submit(&server, spec).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("spec.training.optimizer.learning_rate: "),
        "{}",
        status.message()
    );
}

/// The memory and swap this machine has, in bytes (Linux).
fn memory_and_swap() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = |key: &str| -> Option<u64> {
        let line = info.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some((kib("MemTotal:")? + kib("SwapTotal:")?) * 1024)
}

/// A batch whose first layer's output is 8 times this machine's memory and
/// swap: libtorch refuses the allocation, and the job ends FAILED with
/// reason OUT_OF_MEMORY and a message that says what to change.
#[tokio::test]
async fn a_job_that_cannot_fit_in_memory_fails_out_of_memory() {
    const UNITS: u64 = 65_536;
    let Some(memory) = memory_and_swap() else {
        eprintln!("skipped: no /proc/meminfo");
        return;
    };
    let rows = (8 * memory / (UNITS * 4)) as usize + 1;
    if rows > 1 << 20 {
        eprintln!("skipped: {memory} bytes of memory need a batch above the limit");
        return;
    }
    let mut csv = String::from("x,y\n");
    for i in 0..rows {
        csv.push_str(&format!("{},{}\n", i % 7, i % 5));
    }
    // Admission would refuse it by its estimate (see the next test): this
    // server lifts the budget to see what a job that still runs out does.
    let server = Server::start_with(&[("KILN_MAX_JOB_MEMORY_BYTES", "0")]);
    let dataset = upload(&server, "big", csv.as_bytes(), 1 << 20)
        .await
        .unwrap();
    let spec = pb::JobSpec {
        task: pb::Task::Regression as i32,
        data: Some(dataset_source(&dataset.id, &["y"])),
        model: Some(pb::ModelSpec {
            hidden_layers: vec![layer(UNITS as u32)],
            ..Default::default()
        }),
        training: Some(pb::TrainingSpec {
            epochs: 1,
            batch_size: rows as u32,
            ..Default::default()
        }),
        device: pb::Device::Cpu as i32,
        ..Default::default()
    };
    let job = submit(&server, spec).await.unwrap();
    let failed = last_failed(&watch_all(&server, &job.id).await);
    assert_eq!(failed.reason(), pb::StopReason::OutOfMemory, "{failed:?}");
    assert!(
        failed.message.starts_with("out of memory on cpu: ")
            && failed.message.contains("can't allocate memory")
            && failed.message.contains("spec.training.batch_size")
            && !failed.message.contains("frame #"),
        "{}",
        failed.message
    );
    let job = get_job(&server, &job.id).await;
    assert_eq!(job.state(), pb::JobState::Failed);
    assert_eq!(job.stop_reason(), pb::StopReason::OutOfMemory);
}

/// A network that would take the machine's memory is refused at SubmitJob
/// by its estimate, before anything is allocated (the job: two
/// layers of 65,536 units on 2 inputs, ~4.3e9 weights), and the server
/// answers right after; a tighter budget refuses a modest job the same way,
/// and an imported model over it too.
#[tokio::test]
async fn a_job_over_the_memory_budget_is_refused_before_it_allocates() {
    let server = Server::start();
    let mut huge = quick_job();
    huge.model.as_mut().unwrap().hidden_layers = vec![layer(65_536), layer(65_536)];
    let started = std::time::Instant::now();
    let st = submit_err(&server, huge).await;
    assert_eq!(st.code(), Code::ResourceExhausted, "{}", st.message());
    assert!(
        st.message()
            .starts_with("spec.model: the job needs an estimated")
            // One input: 2 x 65,536 + 65,537 x 65,536 + 65,537 x 1 parameters.
            && st.message().contains("(4295229441 parameters")
            && st.message().contains("(max_job_memory_bytes)"),
        "{}",
        st.message()
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert_eq!(list_jobs(&server).await.len(), 0);

    let tight = Server::start_with(&[("KILN_MAX_JOB_MEMORY_BYTES", "10000")]);
    let st = submit_err(&tight, quick_job()).await;
    assert_eq!(st.code(), Code::ResourceExhausted, "{}", st.message());
    assert!(
        st.message().contains("over the server's limit of 9.8 KiB"),
        "{}",
        st.message()
    );
    // The same model trained where it fits is too big to import here.
    let job = submit(&server, quick_job()).await.unwrap();
    finished(&watch_all(&server, &job.id).await);
    let file = export_model(&server, &job.id).await;
    let small = Server::start_with(&[("KILN_MAX_JOB_MEMORY_BYTES", "100")]);
    let st = small
        .inference()
        .await
        .import_model(tokio_stream::iter([pb::ImportModelRequest {
            name: "too-big".into(),
            chunk: file,
        }]))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::ResourceExhausted, "{}", st.message());
    assert!(
        st.message().contains("(max_job_memory_bytes)"),
        "{}",
        st.message()
    );
}

#[tokio::test]
async fn a_watcher_that_reconnects_resumes_at_its_last_sequence() {
    let server = Server::start();
    let job = submit(&server, inline_regression(64, 8, 20, 8))
        .await
        .unwrap();
    // Five events, then the stream is dropped mid-job (a network cut).
    let first = watch_from(&server, &job.id, 0, 5).await;
    let next = first.last().unwrap().sequence + 1;
    let rest = watch_from(&server, &job.id, next, usize::MAX).await;
    let all = watch_all(&server, &job.id).await;
    finished(&all);
    let resumed: Vec<_> = first.into_iter().chain(rest).collect();
    assert_eq!(resumed, all, "every event once, in order");
    // Past the end: nothing, and the stream ends with the job.
    let after = watch_from(&server, &job.id, all.len() as u64 + 10, usize::MAX).await;
    assert!(after.is_empty());
}
