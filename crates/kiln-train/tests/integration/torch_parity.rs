//! kiln's network, losses and optimizers step for step against PyTorch eager
//! (tests/reference/torch_steps.py): same initial weights, same data, same
//! hyper-parameters; the losses along the way and the final evaluation-mode
//! outputs (which go through BatchNorm's running statistics) must agree.

use crate::common::pseudo_random;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Int, Tensor, TensorData};
use kiln_core::spec::{
    Activation, BatchNormSpec, FanMode, Init, InitDistribution, InitKind, LayerSpec, LossKind,
    LossSpec, OptimizerKind, OptimizerSpec, OutputActivation, Task,
};
use kiln_train::loss::{Loss, TargetTensor};
use kiln_train::model::{Mlp, ModelArch};
use serde_json::{json, Value};

fn torch_reference(case: &Value) -> Value {
    crate::common::run_reference("torch_steps.py", case)
}

struct Case {
    task: Task,
    loss: LossKind,
    optimizer: OptimizerSpec,
    batch_norm: bool,
    activation: Activation,
}

fn run(case: Case) {
    let (rows, inputs, hidden, steps) = (16, 3, 8, 6);
    let outputs = match case.task {
        Task::Regression => 2,
        Task::Binary => 1,
        Task::Multiclass => 3,
    };
    let arch = ModelArch {
        task: case.task,
        inputs,
        hidden: vec![LayerSpec {
            units: hidden,
            activation: case.activation,
            init: Init {
                kind: InitKind::Glorot,
                distribution: InitDistribution::Uniform,
                fan: FanMode::In,
            },
            dropout: 0.0,
            alpha_dropout: false,
            batch_norm: case.batch_norm.then_some(BatchNormSpec {
                momentum: 0.1,
                eps: 1e-5,
            }),
        }],
        outputs,
        output_activation: OutputActivation::Identity,
    };
    let device = kiln_train::device::cpu();
    device.seed(11);
    let ad = device.clone().autodiff();
    let mut model = Mlp::new(&arch, &ad);
    let x = pseudo_random(rows * inputs, 1);
    let (y_json, target) = match case.task {
        Task::Regression => {
            let y = pseudo_random(rows * outputs, 2);
            let t = Tensor::<2>::from_data(TensorData::new(y.clone(), [rows, outputs]), &ad);
            (json!(y), TargetTensor::Values(t))
        }
        _ => {
            let classes = if case.task == Task::Binary { 2 } else { 3 };
            let y: Vec<i64> = (0..rows as i64).map(|i| (i * 7 + 3) % classes).collect();
            let t = Tensor::<1, Int>::from_data(TensorData::new(y.clone(), [rows]), &ad);
            (json!(y), TargetTensor::Classes(t))
        }
    };
    let optimizer_json = match case.optimizer.kind {
        OptimizerKind::Sgd {
            momentum,
            dampening,
            nesterov,
        } => json!({"kind": "sgd", "lr": case.optimizer.learning_rate, "momentum": momentum,
                    "dampening": dampening, "nesterov": nesterov, "weight_decay": case.optimizer.weight_decay}),
        OptimizerKind::Adam {
            beta1, beta2, eps, ..
        } => {
            json!({"kind": "adam", "lr": case.optimizer.learning_rate,
                    "beta1": beta1, "beta2": beta2, "eps": eps, "weight_decay": case.optimizer.weight_decay})
        }
        other => panic!("no reference for {other:?}"),
    };
    let activation = match case.activation {
        Activation::Tanh => "tanh",
        Activation::Relu => "relu",
        Activation::Sigmoid => "sigmoid",
        other => panic!("no reference for {other:?}"),
    };
    // Read the initial weights before any step (burn initializes lazily).
    let params: Vec<Value> = model
        .linear_parameters()
        .into_iter()
        .map(|(w, b)| json!([w, b]))
        .collect();
    let reference = torch_reference(&json!({
        "dims": [inputs, hidden, outputs],
        "params": params,
        "batch_norm": case.batch_norm,
        "activation": activation,
        "x": x,
        "y": y_json,
        "loss": match case.loss { LossKind::Mse => "mse", LossKind::CrossEntropy => "cross_entropy", LossKind::BinaryCrossEntropy => "bce", other => panic!("no reference for {other:?}") },
        "optimizer": optimizer_json,
        "steps": steps,
    }));

    let x_t = Tensor::<2>::from_data(TensorData::new(x.clone(), [rows, inputs]), &ad);
    let mut optimizer = kiln_train::optim::build(&case.optimizer);
    let mut losses = Vec::new();
    for _ in 0..steps {
        let l = Loss::new(&LossSpec::plain(case.loss), &ad)
            .forward(model.forward(x_t.clone()), &target);
        losses.push(l.clone().into_scalar::<f64>());
        let grads = GradientsParams::from_grads(l.backward(), &model);
        model = optimizer.step(case.optimizer.learning_rate, None, model, grads);
    }
    let eval = model.valid();
    let out = eval
        .forward(Tensor::<2>::from_data(
            TensorData::new(x, [rows, inputs]),
            &device,
        ))
        .into_data()
        .try_into_vec::<f32>()
        .unwrap();

    let close = |a: f64, b: f64| (a - b).abs() <= 2e-5 + 2e-4 * b.abs();
    let ref_losses: Vec<f64> = serde_json::from_value(reference["losses"].clone()).unwrap();
    for (step, (a, b)) in losses.iter().zip(&ref_losses).enumerate() {
        assert!(close(*a, *b), "loss at step {step}: kiln {a}, torch {b}");
    }
    let ref_out: Vec<f64> = serde_json::from_value(reference["eval_output"].clone()).unwrap();
    assert_eq!(out.len(), ref_out.len());
    for (i, (a, b)) in out.iter().zip(&ref_out).enumerate() {
        assert!(close(*a as f64, *b), "eval output {i}: kiln {a}, torch {b}");
    }
}

#[test]
fn sgd_nesterov_with_weight_decay_and_batch_norm_matches_torch() {
    let _alone = crate::common::generator_alone();
    run(Case {
        task: Task::Regression,
        loss: LossKind::Mse,
        optimizer: OptimizerSpec {
            learning_rate: 0.1,
            weight_decay: 0.01,
            kind: OptimizerKind::Sgd {
                momentum: 0.9,
                dampening: 0.0,
                nesterov: true,
            },
        },
        batch_norm: true,
        activation: Activation::Tanh,
    });
}

#[test]
fn sgd_momentum_with_dampening_matches_torch() {
    let _alone = crate::common::generator_alone();
    run(Case {
        task: Task::Regression,
        loss: LossKind::Mse,
        optimizer: OptimizerSpec {
            learning_rate: 0.05,
            weight_decay: 0.0,
            kind: OptimizerKind::Sgd {
                momentum: 0.9,
                dampening: 0.3,
                nesterov: false,
            },
        },
        batch_norm: false,
        activation: Activation::Relu,
    });
}

#[test]
fn adam_cross_entropy_matches_torch() {
    let _alone = crate::common::generator_alone();
    run(Case {
        task: Task::Multiclass,
        loss: LossKind::CrossEntropy,
        optimizer: OptimizerSpec {
            learning_rate: 0.01,
            weight_decay: 1e-3,
            kind: OptimizerKind::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                amsgrad: false,
            },
        },
        // Not with BatchNorm: the bias before a BatchNorm has a zero gradient
        // up to rounding noise, which Adam rescales to full-size steps, so
        // f32 and f64 runs drift apart for reasons that are not kiln's.
        batch_norm: false,
        activation: Activation::Relu,
    });
}

#[test]
fn adam_binary_cross_entropy_matches_torch() {
    let _alone = crate::common::generator_alone();
    run(Case {
        task: Task::Binary,
        loss: LossKind::BinaryCrossEntropy,
        optimizer: OptimizerSpec {
            learning_rate: 0.02,
            weight_decay: 0.0,
            kind: OptimizerKind::Adam {
                beta1: 0.8,
                beta2: 0.99,
                eps: 1e-8,
                amsgrad: false,
            },
        },
        batch_norm: false,
        activation: Activation::Sigmoid,
    });
}

/// torch.nn.init's spreads: kaiming_normal_ std = gain / sqrt(fan_in),
/// xavier_uniform_ bound = sqrt(6 / (fan_in + fan_out)); biases start at 0.
#[test]
fn initializers_have_torch_spreads() {
    let _alone = crate::common::generator_alone();
    let (fan_in, units) = (400, 500);
    let layer = |kind, distribution| LayerSpec {
        units,
        activation: Activation::Relu,
        init: Init {
            kind,
            distribution,
            fan: FanMode::In,
        },
        dropout: 0.0,
        alpha_dropout: false,
        batch_norm: None,
    };
    let device = kiln_train::device::cpu();
    device.seed(5);
    for (kind, distribution, expected_std) in [
        (
            InitKind::He,
            InitDistribution::Normal,
            (2.0 / fan_in as f64).sqrt(),
        ),
        (
            InitKind::Lecun,
            InitDistribution::Normal,
            (1.0 / fan_in as f64).sqrt(),
        ),
        (
            InitKind::He,
            InitDistribution::Uniform,
            (2.0 / fan_in as f64).sqrt(),
        ),
        (
            InitKind::Glorot,
            InitDistribution::Uniform,
            (2.0 / (fan_in + units) as f64).sqrt(),
        ),
        (
            InitKind::Glorot,
            InitDistribution::Normal,
            (2.0 / (fan_in + units) as f64).sqrt(),
        ),
    ] {
        let arch = ModelArch {
            task: Task::Regression,
            inputs: fan_in,
            hidden: vec![layer(kind, distribution)],
            outputs: 1,
            output_activation: OutputActivation::Identity,
        };
        let params = Mlp::new(&arch, &device).linear_parameters();
        let (w, b) = &params[0];
        assert!(b.iter().all(|&v| v == 0.0), "biases start at zero");
        let n = w.len() as f64;
        let mean = w.iter().map(|&v| v as f64).sum::<f64>() / n;
        let std = (w.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        // 200k samples: the sample std is within 1% of the true one.
        assert!(
            (std / expected_std - 1.0).abs() < 0.01,
            "{kind:?} {distribution:?}: std {std}, expected {expected_std}"
        );
        if distribution == InitDistribution::Uniform {
            let bound = expected_std * 3f64.sqrt();
            assert!(
                w.iter().all(|&v| (v as f64).abs() <= bound + 1e-7),
                "{kind:?}: values beyond ±{bound}"
            );
        }
    }
}
