//! Cancel is honoured in every phase of a run, not only between batches:
//! each poll of `cancelled` (after set-up, before each batch, after an
//! epoch's training, after its validation, before the final evaluation)
//! stops the run there, so the longest a cancel waits is one batch, one
//! validation pass or one checkpoint write.

use std::cell::Cell;
use std::time::{Duration, Instant};

use crate::common::{generator_alone, regression_prepared};
use kiln::v1 as pb;
use kiln_core::spec::JobSpec;
use kiln_train::TrainError;

fn spec() -> JobSpec {
    JobSpec::from_proto(&pb::JobSpec {
        task: pb::Task::Regression as i32,
        data: Some(pb::DataSpec {
            source: Some(pb::data_spec::Source::DatasetId("ds".into())),
            target_columns: vec!["y".into()],
            ..Default::default()
        }),
        model: Some(pb::ModelSpec {
            hidden_layers: vec![pb::HiddenLayer {
                units: 8,
                ..Default::default()
            }],
            ..Default::default()
        }),
        training: Some(pb::TrainingSpec {
            epochs: 2,
            batch_size: 32,
            ..Default::default()
        }),
        ..Default::default()
    })
    .unwrap()
}

/// Trains with `cancelled` true from its `cancel_at`-th poll on (never for
/// 0); the polls made, the epochs a cancellation reported, and how long
/// the run took to return after the poll that saw the cancel.
fn run(cancel_at: usize) -> (usize, Option<u32>, Duration) {
    let polls = Cell::new(0);
    let seen = Cell::new(None);
    let cancelled = || {
        polls.set(polls.get() + 1);
        let cancel = cancel_at > 0 && polls.get() >= cancel_at;
        if cancel && seen.get().is_none() {
            seen.set(Some(Instant::now()));
        }
        cancel
    };
    let data = regression_prepared(64);
    let device = kiln_train::device::cpu();
    let result = kiln_train::train(&spec(), &data, &device, &cancelled, &mut |_| {});
    let latency = seen.get().map_or(Duration::ZERO, |t| t.elapsed());
    let epochs = match result {
        Ok(_) => None,
        Err(TrainError::Cancelled { epochs_completed }) => Some(epochs_completed),
        Err(e) => panic!("{e}"),
    };
    (polls.get(), epochs, latency)
}

#[test]
fn a_cancel_at_any_phase_stops_the_run() {
    let _alone = generator_alone();
    // 64 rows in batches of 32: after set-up; per epoch two batches, after
    // training, after validation; before the final evaluation.
    let (polls, epochs, _) = run(0);
    assert_eq!((polls, epochs), (1 + 2 * 4 + 1, None));
    let runs: Vec<_> = (1..=polls).map(run).collect();
    let stopped: Vec<Option<u32>> = runs.iter().map(|r| r.1).collect();
    let want = [0, 0, 0, 0, 0, 1, 1, 1, 1, 2].map(Some);
    assert_eq!(stopped, want, "the epochs each cancellation reported");
    // From the poll that saw the cancel to the run's return: what is left
    // after a poll is bookkeeping, never another batch or pass.
    let phases = [
        "after set-up",
        "epoch 1, before batch 1",
        "epoch 1, before batch 2",
        "epoch 1, trained",
        "epoch 1, validated",
        "epoch 2, before batch 1",
        "epoch 2, before batch 2",
        "epoch 2, trained",
        "epoch 2, validated",
        "before final evaluation",
    ];
    for ((_, _, latency), phase) in runs.iter().zip(phases) {
        eprintln!(
            "cancel seen at {phase:>24}: returned {:.3} ms later",
            latency.as_secs_f64() * 1e3
        );
        assert!(*latency < Duration::from_secs(5), "{phase}: {latency:?}");
    }
}
