//! The training stack's levers through the real server: the LR a schedule
//! sets is the LR the epochs report, and the same seed gives the same run.

use kiln::v1 as pb;
use kiln_testkit::*;

fn job(schedule: pb::lr_schedule::Kind, seed: u64) -> pb::JobSpec {
    let rows: Vec<pb::Row> = (0..160)
        .map(|i| {
            let x = i as f64 / 40.0 - 2.0;
            pb::Row {
                values: vec![x, (3.0 * x).sin() + 0.5 * x],
            }
        })
        .collect();
    pb::JobSpec {
        task: pb::Task::Regression as i32,
        data: Some(pb::DataSpec {
            source: Some(pb::data_spec::Source::Inline(pb::InlineData {
                columns: vec!["x".into(), "y".into()],
                rows,
            })),
            target_columns: vec!["y".into()],
            ..Default::default()
        }),
        model: Some(pb::ModelSpec {
            hidden_layers: vec![
                pb::HiddenLayer {
                    units: 32,
                    activation: pb::Activation::Prelu as i32,
                    batch_norm: true,
                    ..Default::default()
                },
                pb::HiddenLayer {
                    units: 32,
                    activation: pb::Activation::Rrelu as i32,
                    dropout: 0.1,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }),
        training: Some(pb::TrainingSpec {
            optimizer: Some(pb::Optimizer {
                learning_rate: Some(0.02),
                kind: Some(pb::optimizer::Kind::Rmsprop(pb::RmsProp {
                    momentum: 0.5,
                    centered: true,
                    ..Default::default()
                })),
                ..Default::default()
            }),
            lr_schedule: Some(pb::LrSchedule {
                kind: Some(schedule),
                warmup: None,
            }),
            grad_clip: Some(pb::GradClip {
                kind: Some(pb::grad_clip::Kind::Value(pb::ClipByValue {
                    clip_value: 0.5,
                })),
            }),
            epochs: 9,
            batch_size: 16,
            seed,
            ..Default::default()
        }),
        device: pb::Device::Cpu as i32,
        ..Default::default()
    }
}

async fn run(server: &Server, spec: pb::JobSpec) -> Vec<pb::EpochMetrics> {
    let job = submit(server, spec).await.unwrap();
    let events = watch_all(server, &job.id).await;
    finished(&events);
    epochs(&events)
}

#[tokio::test]
async fn step_schedule_sets_the_reported_lr_and_seeds_reproduce() {
    let server = Server::start();
    let step = || {
        pb::lr_schedule::Kind::Step(pb::StepLr {
            step_size: 3,
            gamma: Some(0.5),
        })
    };
    let first = run(&server, job(step(), 7)).await;
    let lrs: Vec<f64> = first.iter().map(|e| e.learning_rate).collect();
    // torch's StepLR(step_size=3, gamma=0.5) stepped after each epoch.
    let expected = [0.02, 0.02, 0.02, 0.01, 0.01, 0.01, 0.005, 0.005, 0.005];
    for (got, want) in lrs.iter().zip(expected) {
        assert!((got - want).abs() < 1e-12, "{lrs:?}");
    }
    // Same spec and seed on the same device: the same metrics, epoch by epoch.
    let again = run(&server, job(step(), 7)).await;
    let losses = |run: &[pb::EpochMetrics]| -> Vec<(f64, f64)> {
        run.iter().map(|e| (e.train_loss, e.val_loss)).collect()
    };
    assert_eq!(losses(&first), losses(&again));
    // Another seed: another run.
    let other = run(&server, job(step(), 8)).await;
    assert_ne!(losses(&first), losses(&other));
}
