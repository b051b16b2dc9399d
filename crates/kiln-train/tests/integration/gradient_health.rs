//! Gradient health in the training loop: a deep sigmoid network's gradients
//! vanish and are flagged, the same network with ReLU and He init is not;
//! the reported norms agree with the update SGD makes; a huge learning rate
//! ends the job as diverged, naming the epoch and the layer.

use crate::common::regression_prepared;
use kiln::v1 as pb;
use kiln_core::prepare::Prepared;
use kiln_core::spec::JobSpec;
use kiln_train::{GradientHealth, TrainError, TrainEvent};

fn data() -> Prepared {
    regression_prepared(256)
}

fn spec(activation: pb::Activation, depth: usize, learning_rate: f64, epochs: u32) -> JobSpec {
    let layer = pb::HiddenLayer {
        units: 32,
        activation: activation as i32,
        ..Default::default()
    };
    JobSpec::from_proto(&pb::JobSpec {
        task: pb::Task::Regression as i32,
        data: Some(pb::DataSpec {
            source: Some(pb::data_spec::Source::DatasetId("ds".into())),
            target_columns: vec!["y".into()],
            ..Default::default()
        }),
        model: Some(pb::ModelSpec {
            hidden_layers: vec![layer; depth],
            ..Default::default()
        }),
        training: Some(pb::TrainingSpec {
            epochs,
            batch_size: 32,
            optimizer: Some(pb::Optimizer {
                learning_rate: Some(learning_rate),
                kind: Some(pb::optimizer::Kind::Sgd(pb::Sgd::default())),
                ..Default::default()
            }),
            seed: 3,
            ..Default::default()
        }),
        ..Default::default()
    })
    .unwrap()
}

fn run(spec: &JobSpec) -> (Result<kiln_train::Trained, TrainError>, Vec<GradientHealth>) {
    let mut health = Vec::new();
    let device = kiln_train::device::cpu();
    let result = kiln_train::train(spec, &data(), &device, &|| false, &mut |e| {
        if let TrainEvent::Health(h) = e {
            health.push(h);
        }
    });
    (result, health)
}

#[test]
fn deep_sigmoid_gradients_vanish_and_relu_with_he_init_does_not() {
    let _alone = crate::common::generator_alone();
    // Sigmoid's derivative is at most 1/4: ten layers shrink the first
    // layer's gradient by about 4^-10 relative to the output layer's.
    let (result, sigmoid) = run(&spec(pb::Activation::Sigmoid, 10, 0.01, 2));
    result.unwrap();
    assert_eq!(sigmoid.len(), 2, "one health report per epoch");
    let first = &sigmoid[0];
    assert_eq!(first.epoch, 1);
    assert!(first.vanishing && !first.exploding, "{first:?}");
    assert!(first.detail.starts_with("hidden1:"), "{}", first.detail);
    let names: Vec<&str> = first.layers.iter().map(|l| l.layer.as_str()).collect();
    assert_eq!(names.len(), 11);
    assert_eq!((names[0], names[10]), ("hidden1", "output"));
    let ratio = first.layers[0].grad_norm / first.layers[10].grad_norm;
    assert!(ratio < 1e-4, "first/output gradient ratio {ratio}");
    // Sigmoid units cannot die: no dead-unit count.
    assert!(first.layers.iter().all(|l| l.dead_fraction.is_none()));

    let (result, relu) = run(&spec(pb::Activation::Relu, 10, 0.01, 2));
    result.unwrap();
    for h in &relu {
        assert!(!h.vanishing && !h.exploding, "{h:?}");
        let ratio = h.layers[0].grad_norm / h.layers[10].grad_norm;
        assert!(ratio > 1e-2, "first/output gradient ratio {ratio}");
        for l in &h.layers[..10] {
            let dead = l.dead_fraction.expect("ReLU layers report dead units");
            assert!((0.0..=1.0).contains(&dead));
        }
        assert_eq!(h.layers[10].dead_fraction, None);
    }
}

#[test]
fn reported_norms_agree_with_the_sgd_update() {
    let _alone = crate::common::generator_alone();
    // Plain SGD moves each weight by lr x its gradient: ||dW|| = lr ||g||.
    let lr = 0.05;
    let (result, health) = run(&spec(pb::Activation::Tanh, 2, lr, 3));
    result.unwrap();
    assert_eq!(health.len(), 3);
    for h in &health {
        for l in &h.layers {
            let update = l.update_ratio * l.weight_norm;
            let expected = lr * l.grad_norm;
            assert!(
                (update - expected).abs() <= 1e-4 * expected,
                "epoch {} {}: ||dW|| {update} vs lr ||g|| {expected}",
                h.epoch,
                l.layer
            );
            assert!(l.grad_norm > 0.0 && l.weight_norm > 0.0);
        }
    }
    // Weights change between epochs, so the reported norms do.
    assert_ne!(
        health[0].layers[0].weight_norm,
        health[2].layers[0].weight_norm
    );
}

#[test]
fn a_huge_learning_rate_diverges_naming_the_epoch_and_layer() {
    let _alone = crate::common::generator_alone();
    let (result, _) = run(&spec(pb::Activation::Relu, 3, 1e6, 5));
    let err = result.expect_err("training must diverge");
    let TrainError::Diverged { epoch, loss, layer } = &err else {
        panic!("expected Diverged, got {err:?}");
    };
    assert!(!loss.is_finite());
    assert!(*epoch <= 2, "diverged at epoch {epoch}");
    let layer = layer.as_ref().expect("the first non-finite layer is named");
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("training diverged at epoch {epoch}: ")),
        "{message}"
    );
    assert!(message.contains(&layer.layer), "{message}");
    assert!(
        ["hidden1", "hidden2", "hidden3", "output"].contains(&layer.layer.as_str()),
        "{layer:?}"
    );
}
