//! Checkpoints continue a run exactly: a run resumed from an end-of-epoch
//! checkpoint, or suspended in the middle of an epoch and resumed, reports
//! the same losses and metrics, bit for bit, and ends with the same model as
//! the run that never stopped. Covered: every optimizer's state, 1cycle
//! (per batch, with momentum cycling) and ReduceLROnPlateau, early
//! stopping's best epoch and weights, SWA's running average and SWALR,
//! BatchNorm statistics, dropout and RReLU noise, and the shuffle.

use crate::common::{generator_alone, regression_prepared};
use kiln::v1 as pb;
use kiln_core::prepare::Prepared;
use kiln_core::spec::JobSpec;
use kiln_train::{Checkpoint, Control, EpochReport, TrainError, TrainEvent, Trained};

const EPOCHS: u32 = 8;

/// 250 training rows in batches of 32: a short last batch every epoch.
fn data() -> Prepared {
    regression_prepared(250)
}

fn spec(
    optimizer: pb::optimizer::Kind,
    schedule: Option<pb::lr_schedule::Kind>,
    swa: bool,
) -> JobSpec {
    let layers = vec![
        pb::HiddenLayer {
            units: 16,
            activation: pb::Activation::Relu as i32,
            batch_norm: true,
            dropout: 0.2,
            ..Default::default()
        },
        pb::HiddenLayer {
            units: 8,
            activation: pb::Activation::Rrelu as i32,
            ..Default::default()
        },
    ];
    JobSpec::from_proto(&pb::JobSpec {
        task: pb::Task::Regression as i32,
        data: Some(pb::DataSpec {
            source: Some(pb::data_spec::Source::DatasetId("ds".into())),
            target_columns: vec!["y".into()],
            ..Default::default()
        }),
        model: Some(pb::ModelSpec {
            hidden_layers: layers,
            ..Default::default()
        }),
        training: Some(pb::TrainingSpec {
            epochs: EPOCHS,
            batch_size: 32,
            optimizer: Some(pb::Optimizer {
                learning_rate: Some(0.01),
                kind: Some(optimizer),
                ..Default::default()
            }),
            lr_schedule: schedule.map(|kind| pb::LrSchedule {
                kind: Some(kind),
                ..Default::default()
            }),
            // Never stops, but tracks the best epoch and keeps its weights.
            early_stopping: Some(pb::EarlyStopping {
                patience: Some(100),
                ..Default::default()
            }),
            swa: swa.then(|| pb::Swa {
                start_epoch: 4,
                swa_lr: 0.005,
                anneal_epochs: 2,
                ..Default::default()
            }),
            seed: 11,
            ..Default::default()
        }),
        ..Default::default()
    })
    .unwrap()
}

/// An epoch's numbers without its timings.
fn numbers(r: &EpochReport) -> [Option<f64>; 7] {
    [
        Some(r.train_loss),
        Some(r.val_loss),
        r.val_mae,
        Some(r.learning_rate),
        r.momentum,
        Some(f64::from(r.epoch)),
        Some(f64::from(u8::from(r.improved))),
    ]
}

struct Run {
    result: Result<Trained, TrainError>,
    epochs: Vec<EpochReport>,
    checkpoints: Vec<Checkpoint>,
}

/// Trains `spec`, from `resume` if given, checkpointing every epoch;
/// suspends before the `suspend_at`-th batch it starts, counting from 1.
fn run(spec: &JobSpec, resume: Option<Checkpoint>, suspend_at: Option<u32>) -> Run {
    // Runs with dropout in parallel test threads would draw from each
    // other's stream.
    let _alone = generator_alone();
    let device = kiln_train::device::cpu();
    let mut epochs = Vec::new();
    let mut checkpoints = Vec::new();
    let batches = std::cell::Cell::new(0);
    let suspended = || {
        batches.set(batches.get() + 1);
        suspend_at == Some(batches.get())
    };
    let control = Control {
        cancelled: &|| false,
        suspended: &suspended,
        on_step: &|_, _| {},
        checkpoint_every: 1,
        // Through bytes, as a checkpoint file is.
        on_checkpoint: &mut |c| checkpoints.push(Checkpoint::from_bytes(&c.to_bytes()).unwrap()),
        resume,
    };
    let result = kiln_train::train_with(spec, &data(), &device, control, &mut |e| {
        if let TrainEvent::Epoch(r) = e {
            epochs.push(r)
        }
    });
    Run {
        result,
        epochs,
        checkpoints,
    }
}

fn final_numbers(t: &Trained) -> Vec<Option<f64>> {
    let mut v = numbers(&t.best).to_vec();
    v.push(Some(f64::from(t.best.epoch)));
    if let Some(s) = &t.swa {
        v.extend(numbers(s));
    }
    v.push(Some(f64::from(u8::from(t.served_swa))));
    v
}

fn assert_same_run(name: &str, spec: &JobSpec) {
    let whole = run(spec, None, None);
    let trained = whole.result.as_ref().unwrap();
    assert_eq!(whole.epochs.len(), EPOCHS as usize, "{name}");
    assert_eq!(whole.checkpoints.len(), EPOCHS as usize - 1, "{name}");

    // From the end of epoch 3.
    let from_3 = whole.checkpoints[2].clone();
    assert_eq!(from_3.epochs_completed(), 3);
    assert!(!from_3.mid_epoch());
    let resumed = run(spec, Some(from_3), None);
    let epochs: Vec<_> = resumed.epochs.iter().map(numbers).collect();
    let expected: Vec<_> = whole.epochs[3..].iter().map(numbers).collect();
    assert_eq!(epochs, expected, "{name}: epochs 4.. after resuming at 3");
    assert_eq!(
        final_numbers(resumed.result.as_ref().unwrap()),
        final_numbers(trained),
        "{name}: the result"
    );

    // Suspended at the 5th batch of epoch 2 (8 batches an epoch), resumed.
    let suspended = run(spec, None, Some(8 + 5));
    let checkpoint = match suspended.result {
        Err(TrainError::Suspended(c)) => Checkpoint::from_bytes(&c.to_bytes()).unwrap(),
        other => panic!("{name}: not suspended: {other:?}"),
    };
    assert_eq!(checkpoint.epochs_completed(), 1);
    assert!(checkpoint.mid_epoch());
    assert_eq!(suspended.epochs.len(), 1);
    let resumed = run(spec, Some(checkpoint), None);
    let epochs: Vec<_> = resumed.epochs.iter().map(numbers).collect();
    let expected: Vec<_> = whole.epochs[1..].iter().map(numbers).collect();
    assert_eq!(epochs, expected, "{name}: epochs 2.. after a suspension");
    assert_eq!(
        final_numbers(resumed.result.as_ref().unwrap()),
        final_numbers(trained),
        "{name}: the result after a suspension"
    );
}

#[test]
fn adam_with_one_cycle_resumes_exactly() {
    let spec = spec(
        pb::optimizer::Kind::Adam(pb::Adam::default()),
        Some(pb::lr_schedule::Kind::OneCycle(pb::OneCycleLr {
            max_lr: 0.05,
            ..Default::default()
        })),
        false,
    );
    assert_same_run("adam + 1cycle", &spec);
}

#[test]
fn swa_resumes_exactly() {
    let spec = spec(pb::optimizer::Kind::Adam(pb::Adam::default()), None, true);
    assert_same_run("adam + swa", &spec);
}

#[test]
fn every_optimizer_resumes_exactly() {
    let plateau = pb::lr_schedule::Kind::ReduceOnPlateau(pb::ReduceLrOnPlateau {
        patience: Some(0),
        factor: Some(0.5),
        ..Default::default()
    });
    let optimizers = [
        (
            "sgd nesterov",
            pb::optimizer::Kind::Sgd(pb::Sgd {
                momentum: 0.9,
                nesterov: true,
                ..Default::default()
            }),
        ),
        (
            "rmsprop",
            pb::optimizer::Kind::Rmsprop(pb::RmsProp {
                momentum: 0.5,
                centered: true,
                ..Default::default()
            }),
        ),
        ("nadam", pb::optimizer::Kind::Nadam(pb::Nadam::default())),
        ("adamax", pb::optimizer::Kind::Adamax(pb::Adamax::default())),
        ("adagrad", pb::optimizer::Kind::Adagrad(Default::default())),
        (
            "adamw amsgrad",
            pb::optimizer::Kind::Adamw(pb::Adam {
                amsgrad: true,
                ..Default::default()
            }),
        ),
    ];
    for (name, optimizer) in optimizers {
        assert_same_run(name, &spec(optimizer, Some(plateau.clone()), false));
    }
}

#[test]
fn a_checkpoint_of_another_spec_is_refused() {
    let adam = spec(pb::optimizer::Kind::Adam(pb::Adam::default()), None, false);
    let checkpoint = run(&adam, None, None).checkpoints.remove(0);
    let sgd = spec(pb::optimizer::Kind::Sgd(pb::Sgd::default()), None, false);
    assert!(!checkpoint.matches(&sgd, &data()));
    assert!(checkpoint.matches(&adam, &data()));
    match run(&sgd, Some(checkpoint), None).result {
        Err(TrainError::Checkpoint(message)) => {
            assert!(message.contains("another spec"), "{message}")
        }
        other => panic!("resumed from another spec's checkpoint: {other:?}"),
    }
}
