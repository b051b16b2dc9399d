//! kiln's optimizers and gradient clipping against torch.optim and
//! torch.nn.utils (tests/reference/torch_optim.py): the same float32 network
//! (one tanh hidden layer, MSE), the same initial weights and data, full-batch
//! steps with the same hyper-parameters; the final parameters must agree.
//!
//! Tolerance: 1e-5 relative plus 1e-6 absolute. The forward and backward
//! passes (burn on libtorch vs torch autograd) and the optimizer updates
//! round differently at the ulp level (torch's CPU kernels fuse the
//! multiply-add in `add(alpha=)`, `addcmul_` and `lerp_`; burn has no fused
//! operation), and those ulps compound over the steps. For scale: torch's
//! own float32 runs of these cases differ from its float64 runs by as much
//! (up to ~6e-5 relative on parameters near 1e-3, ~1e-6 absolute), while a
//! wrong formula (eps before the bias correction or inside the square root,
//! Adagrad's lr decay off by one step, dampening on SGD's first buffer)
//! misses by orders of magnitude more. Run with `--nocapture` to see the
//! largest error each case reached.

use crate::common::pseudo_random;

use std::path::PathBuf;

use std::sync::Mutex;

use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};
use kiln_core::spec::{
    Activation, FanMode, GradClip, Init, InitDistribution, InitKind, LayerSpec, OptimizerKind,
    OptimizerSpec, OutputActivation, Task,
};
use kiln_train::model::{Mlp, ModelArch};
use kiln_train::optim::{self, clip_gradients};
use serde_json::{json, Value};

const ROWS: usize = 32;
const INPUTS: usize = 4;
const HIDDEN: usize = 16;
const OUTPUTS: usize = 2;

/// Runs the torch reference on a list of cases (one Python start for all).
fn torch_reference(cases: &[Value]) -> Vec<Value> {
    // KILN_OPTIM_DUMP=<dir>: keep each case's JSON there, to replay it
    // (for example in float64) by hand.
    if let Some(dir) = std::env::var_os("KILN_OPTIM_DUMP") {
        for case in cases {
            let name = case["name"].as_str().unwrap().replace(' ', "_");
            std::fs::write(
                PathBuf::from(&dir).join(name + ".json"),
                format!("[{case}]"),
            )
            .unwrap();
        }
    }
    let results: Vec<Value> =
        crate::common::run_reference("torch_optim.py", &Value::from(cases.to_vec()));
    assert_eq!(results.len(), cases.len());
    results
}

/// Inputs in [-1, 1] and two smooth targets of them.
fn data() -> (Vec<f32>, Vec<f32>) {
    let x = pseudo_random(ROWS * INPUTS, 3);
    let y = x
        .chunks(INPUTS)
        .flat_map(|r| [(r[0] + 2.0 * r[1]).sin(), r[2] * r[3] - 0.5 * r[0]])
        .collect();
    (x, y)
}

fn arch() -> ModelArch {
    ModelArch {
        task: Task::Regression,
        inputs: INPUTS,
        hidden: vec![LayerSpec {
            units: HIDDEN,
            activation: Activation::Tanh,
            init: Init {
                kind: InitKind::Glorot,
                distribution: InitDistribution::Uniform,
                fan: FanMode::In,
            },
            dropout: 0.0,
            alpha_dropout: false,
            batch_norm: None,
        }],
        outputs: OUTPUTS,
        output_activation: OutputActivation::Identity,
    }
}

type Params = Vec<(Vec<f32>, Vec<f32>)>;

static INIT: Mutex<()> = Mutex::new(());

/// A run: the hyper-parameters, and per-step learning rates / momenta
/// (None: the spec's learning rate, no override).
struct Run {
    spec: OptimizerSpec,
    steps: usize,
    lrs: Option<Vec<f64>>,
    momenta: Option<Vec<f64>>,
    clip: Option<GradClip>,
}

impl Run {
    fn new(lr: f64, weight_decay: f64, kind: OptimizerKind, steps: usize) -> Self {
        Run {
            spec: OptimizerSpec {
                learning_rate: lr,
                weight_decay,
                kind,
            },
            steps,
            lrs: None,
            momenta: None,
            clip: None,
        }
    }
}

/// The initial and final parameters, and the norms clipping returned.
fn kiln(run: &Run) -> (Params, Params, Vec<f64>) {
    let device = kiln_train::device::cpu();
    let ad = device.clone().autodiff();
    let (mut model, initial) = {
        // Seeding is global to libtorch and the weights are drawn at first
        // use: keep the tests' threads from drawing in between.
        let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
        device.seed(7);
        let model = Mlp::new(&arch(), &ad);
        let initial = model.linear_parameters();
        (model, initial)
    };
    let (x, y) = data();
    let x = Tensor::<2>::from_data(TensorData::new(x, [ROWS, INPUTS]), &ad);
    let y = Tensor::<2>::from_data(TensorData::new(y, [ROWS, OUTPUTS]), &ad);
    let mut optimizer = optim::build(&run.spec);
    let mut norms = Vec::new();
    for step in 0..run.steps {
        let lr = run.lrs.as_ref().map_or(run.spec.learning_rate, |l| l[step]);
        let momentum = run.momenta.as_ref().map(|m| m[step]);
        // kiln's MSE: the mean of the squared errors.
        let loss = (model.forward(x.clone()) - y.clone()).square().mean();
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        if let Some(clip) = &run.clip {
            if let Some(norm) = clip_gradients(&model, &mut grads, clip) {
                norms.push(norm);
            }
        }
        model = optimizer.step(lr, momentum, model, grads);
    }
    (initial, model.linear_parameters(), norms)
}

fn optimizer_json(spec: &OptimizerSpec) -> Value {
    let mut v = match spec.kind {
        OptimizerKind::Sgd {
            momentum,
            dampening,
            nesterov,
        } => {
            json!({"kind": "sgd", "momentum": momentum, "dampening": dampening, "nesterov": nesterov})
        }
        OptimizerKind::Adam {
            beta1,
            beta2,
            eps,
            amsgrad,
        } => {
            json!({"kind": "adam", "beta1": beta1, "beta2": beta2, "eps": eps, "amsgrad": amsgrad})
        }
        OptimizerKind::AdamW {
            beta1,
            beta2,
            eps,
            amsgrad,
        } => {
            json!({"kind": "adamw", "beta1": beta1, "beta2": beta2, "eps": eps, "amsgrad": amsgrad})
        }
        OptimizerKind::Nadam {
            beta1,
            beta2,
            eps,
            momentum_decay,
        } => json!({"kind": "nadam", "beta1": beta1, "beta2": beta2, "eps": eps,
                    "momentum_decay": momentum_decay}),
        OptimizerKind::RmsProp {
            alpha,
            eps,
            momentum,
            centered,
        } => json!({"kind": "rmsprop", "alpha": alpha, "eps": eps, "momentum": momentum,
                    "centered": centered}),
        OptimizerKind::Adamax { beta1, beta2, eps } => {
            json!({"kind": "adamax", "beta1": beta1, "beta2": beta2, "eps": eps})
        }
        OptimizerKind::Adagrad {
            lr_decay,
            initial_accumulator_value,
            eps,
        } => json!({"kind": "adagrad", "lr_decay": lr_decay,
                    "initial_accumulator_value": initial_accumulator_value, "eps": eps}),
    };
    v["lr"] = json!(spec.learning_rate);
    v["weight_decay"] = json!(spec.weight_decay);
    v
}

fn clip_json(clip: &GradClip) -> Value {
    match *clip {
        // JSON has no infinity: null stands for norm_type = inf.
        GradClip::Norm {
            max_norm,
            norm_type,
        } => json!({"kind": "norm", "max_norm": max_norm,
                    "norm_type": norm_type.is_finite().then_some(norm_type)}),
        GradClip::Value { clip_value } => json!({"kind": "value", "clip_value": clip_value}),
    }
}

fn torch_case(name: &str, run: &Run, initial: &Params) -> Value {
    let (x, y) = data();
    let params: Vec<Value> = initial.iter().map(|(w, b)| json!([w, b])).collect();
    json!({
        "name": name,
        "dims": [INPUTS, HIDDEN, OUTPUTS],
        "params": params,
        "x": x,
        "y": y,
        "steps": run.steps,
        "optimizer": optimizer_json(&run.spec),
        "lrs": run.lrs,
        "momenta": run.momenta,
        "clip": run.clip.as_ref().map(clip_json),
    })
}

const RTOL: f64 = 1e-5;
const ATOL: f64 = 1e-6;

/// Asserts `a` within `RTOL * |b| + ATOL` of `b` everywhere; returns the
/// largest relative error (over values with |b| >= 1e-3) and the largest
/// absolute error, for the report.
fn assert_close(name: &str, a: &[f64], b: &[f64]) -> (f64, f64) {
    assert_eq!(a.len(), b.len(), "{name}: lengths");
    let mut max_rel = 0.0f64;
    let mut max_abs = 0.0f64;
    for (i, (&a, &b)) in a.iter().zip(b).enumerate() {
        let err = (a - b).abs();
        assert!(
            err <= RTOL * b.abs() + ATOL,
            "{name}: value {i}: kiln {a}, torch {b} (error {err:e})"
        );
        max_abs = max_abs.max(err);
        if b.abs() >= 1e-3 {
            max_rel = max_rel.max(err / b.abs());
        }
    }
    (max_rel, max_abs)
}

fn flat(p: &Params) -> Vec<f64> {
    p.iter()
        .flat_map(|(w, b)| w.iter().chain(b))
        .map(|&v| v as f64)
        .collect()
}

/// Runs each case in kiln and in torch and compares the final parameters
/// (and the norms clipping reported); returns kiln's final parameters.
fn check(cases: &[(&str, &Run)]) -> Vec<Params> {
    let kiln_runs: Vec<_> = cases.iter().map(|(_, run)| kiln(run)).collect();
    let torch_cases: Vec<Value> = cases
        .iter()
        .zip(&kiln_runs)
        .map(|((name, run), (initial, _, _))| torch_case(name, run, initial))
        .collect();
    let torch_runs = torch_reference(&torch_cases);
    let mut finals = Vec::new();
    for (((name, run), (initial, kiln_final, kiln_norms)), torch_run) in
        cases.iter().zip(kiln_runs).zip(torch_runs)
    {
        let torch_final: Params = serde_json::from_value(torch_run["params"].clone()).unwrap();
        let torch_norms: Vec<f64> = serde_json::from_value(torch_run["norms"].clone()).unwrap();
        let moved = flat(&initial)
            .iter()
            .zip(flat(&torch_final))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(
            moved > 1e-3,
            "{name}: the parameters barely moved ({moved})"
        );
        let (rel, abs) = assert_close(name, &flat(&kiln_final), &flat(&torch_final));
        let norms = if kiln_norms.is_empty() {
            String::new()
        } else {
            let (rel, _) = assert_close(&format!("{name} norms"), &kiln_norms, &torch_norms);
            format!(", clip norms {rel:.1e}")
        };
        eprintln!(
            "{name}: {} steps, max relative error {rel:.1e} (max absolute {abs:.1e}){norms}",
            run.steps
        );
        finals.push(kiln_final);
    }
    finals
}

const STEPS: usize = 60;

fn sgd(momentum: f64, dampening: f64, nesterov: bool) -> OptimizerKind {
    OptimizerKind::Sgd {
        momentum,
        dampening,
        nesterov,
    }
}

fn adam(beta1: f64, beta2: f64, eps: f64, amsgrad: bool) -> OptimizerKind {
    OptimizerKind::Adam {
        beta1,
        beta2,
        eps,
        amsgrad,
    }
}

fn adamw(beta1: f64, beta2: f64, eps: f64, amsgrad: bool) -> OptimizerKind {
    OptimizerKind::AdamW {
        beta1,
        beta2,
        eps,
        amsgrad,
    }
}

fn nadam(beta1: f64, beta2: f64, eps: f64, momentum_decay: f64) -> OptimizerKind {
    OptimizerKind::Nadam {
        beta1,
        beta2,
        eps,
        momentum_decay,
    }
}

fn rmsprop(eps: f64, momentum: f64, centered: bool) -> OptimizerKind {
    OptimizerKind::RmsProp {
        alpha: 0.99,
        eps,
        momentum,
        centered,
    }
}

// Some cases use a large eps, comparable to sqrt(v): there, where eps is
// added (after the bias correction in Adam, after the square root in
// RMSprop, inside the max in Adamax) changes the result far beyond the
// tolerance; with eps = 1e-8 it would not show.

#[test]
fn sgd_matches_torch() {
    let _alone = crate::common::generator_alone();
    check(&[
        (
            "sgd plain",
            &Run::new(0.1, 1e-2, sgd(0.0, 0.0, false), STEPS),
        ),
        (
            "sgd momentum",
            &Run::new(0.05, 0.0, sgd(0.9, 0.0, false), STEPS),
        ),
        (
            "sgd momentum+dampening",
            &Run::new(0.05, 1e-3, sgd(0.9, 0.3, false), STEPS),
        ),
        (
            "sgd nesterov",
            &Run::new(0.05, 5e-3, sgd(0.9, 0.0, true), STEPS),
        ),
    ]);
}

#[test]
fn adam_matches_torch() {
    let _alone = crate::common::generator_alone();
    check(&[
        (
            "adam",
            &Run::new(0.01, 1e-2, adam(0.9, 0.999, 1e-8, false), STEPS),
        ),
        (
            "adam large eps",
            &Run::new(0.01, 0.0, adam(0.9, 0.999, 1e-2, false), STEPS),
        ),
        (
            "adam amsgrad",
            &Run::new(0.01, 0.0, adam(0.8, 0.99, 1e-8, true), STEPS),
        ),
        (
            "adam amsgrad+decay large eps",
            &Run::new(0.005, 1e-3, adam(0.9, 0.999, 1e-3, true), STEPS),
        ),
    ]);
}

#[test]
fn adamw_matches_torch() {
    let _alone = crate::common::generator_alone();
    check(&[
        (
            "adamw",
            &Run::new(0.01, 0.1, adamw(0.9, 0.999, 1e-8, false), STEPS),
        ),
        (
            "adamw amsgrad large eps",
            &Run::new(0.01, 0.05, adamw(0.85, 0.99, 1e-3, true), STEPS),
        ),
    ]);
}

#[test]
fn nadam_matches_torch() {
    let _alone = crate::common::generator_alone();
    check(&[
        (
            "nadam",
            &Run::new(0.005, 1e-2, nadam(0.9, 0.999, 1e-8, 4e-3), STEPS),
        ),
        (
            "nadam large eps",
            &Run::new(0.01, 1e-2, nadam(0.9, 0.999, 1e-3, 4e-3), STEPS),
        ),
        (
            "nadam fast momentum decay",
            &Run::new(0.005, 0.0, nadam(0.8, 0.99, 1e-6, 0.1), STEPS),
        ),
    ]);
}

#[test]
fn rmsprop_matches_torch() {
    let _alone = crate::common::generator_alone();
    check(&[
        (
            "rmsprop",
            &Run::new(0.005, 0.0, rmsprop(1e-8, 0.0, false), STEPS),
        ),
        (
            "rmsprop large eps",
            &Run::new(0.005, 1e-2, rmsprop(1e-2, 0.0, false), STEPS),
        ),
        (
            "rmsprop centered+momentum",
            &Run::new(0.002, 1e-2, rmsprop(1e-8, 0.9, true), STEPS),
        ),
        (
            "rmsprop momentum large eps",
            &Run::new(0.002, 0.0, rmsprop(1e-3, 0.5, false), STEPS),
        ),
        (
            "rmsprop centered",
            &Run::new(0.002, 0.0, rmsprop(1e-8, 0.0, true), STEPS),
        ),
    ]);
}

#[test]
fn adamax_matches_torch() {
    let _alone = crate::common::generator_alone();
    let adamax = |eps| OptimizerKind::Adamax {
        beta1: 0.9,
        beta2: 0.999,
        eps,
    };
    check(&[
        ("adamax", &Run::new(0.01, 1e-2, adamax(1e-8), STEPS)),
        (
            "adamax large eps",
            &Run::new(0.01, 0.0, adamax(1e-2), STEPS),
        ),
    ]);
}

#[test]
fn adagrad_matches_torch() {
    let _alone = crate::common::generator_alone();
    let adagrad = |lr_decay, initial_accumulator_value, eps| OptimizerKind::Adagrad {
        lr_decay,
        initial_accumulator_value,
        eps,
    };
    check(&[
        (
            "adagrad lr_decay",
            &Run::new(0.05, 1e-2, adagrad(0.01, 0.1, 1e-10), STEPS),
        ),
        (
            "adagrad",
            &Run::new(0.05, 0.0, adagrad(0.0, 0.0, 1e-10), STEPS),
        ),
        (
            "adagrad large eps",
            &Run::new(0.05, 0.0, adagrad(0.05, 0.0, 1e-2), STEPS),
        ),
    ]);
}

/// OneCycle-like schedules: the learning rate rises and falls while the
/// momentum (or beta1) falls and rises, written each step as torch's
/// scheduler writes `param_group["lr"]` and `["momentum"]` / `["betas"][0]`.
fn cycled(mut run: Run) -> Run {
    let n = run.steps;
    let base = run.spec.learning_rate;
    let phase = |t: usize| (std::f64::consts::PI * t as f64 / (n - 1) as f64).sin();
    run.lrs = Some((0..n).map(|t| base * (0.1 + 0.9 * phase(t))).collect());
    run.momenta = Some((0..n).map(|t| 0.95 - 0.1 * phase(t)).collect());
    run
}

#[test]
fn momentum_override_matches_torch_param_group_writes() {
    let _alone = crate::common::generator_alone();
    let steps = 20;
    let runs = [
        ("sgd cycled momentum", sgd(0.9, 0.0, false), 0.1, 1e-3),
        (
            "sgd nesterov cycled momentum",
            sgd(0.9, 0.0, true),
            0.1,
            0.0,
        ),
        (
            "adam cycled beta1",
            adam(0.9, 0.999, 1e-8, false),
            0.02,
            1e-3,
        ),
        (
            "adamw cycled beta1",
            adamw(0.9, 0.999, 1e-8, false),
            0.02,
            1e-2,
        ),
        (
            "nadam cycled beta1",
            nadam(0.9, 0.999, 1e-3, 4e-3),
            0.02,
            0.0,
        ),
    ]
    .map(|(name, kind, lr, wd)| (name, cycled(Run::new(lr, wd, kind, steps))));
    let cases: Vec<(&str, &Run)> = runs.iter().map(|(name, run)| (*name, run)).collect();
    let finals = check(&cases);
    // The overrides took effect: without them the runs end elsewhere.
    for ((name, run), cycled_final) in runs.iter().zip(finals) {
        let plain = Run {
            momenta: None,
            lrs: run.lrs.clone(),
            ..Run::new(
                run.spec.learning_rate,
                run.spec.weight_decay,
                run.spec.kind,
                steps,
            )
        };
        let (_, plain_final, _) = kiln(&plain);
        assert_ne!(flat(&cycled_final), flat(&plain_final), "{name}");
    }
}

#[test]
fn gradient_clipping_matches_torch() {
    let _alone = crate::common::generator_alone();
    let steps = 5;
    let clipped = |clip| Run {
        clip: Some(clip),
        ..Run::new(0.5, 0.0, sgd(0.0, 0.0, false), steps)
    };
    let runs = [
        (
            "clip norm 2",
            GradClip::Norm {
                max_norm: 0.1,
                norm_type: 2.0,
            },
        ),
        (
            "clip norm inf",
            GradClip::Norm {
                max_norm: 0.02,
                norm_type: f64::INFINITY,
            },
        ),
        (
            "clip norm 3",
            GradClip::Norm {
                max_norm: 0.05,
                norm_type: 3.0,
            },
        ),
        (
            "clip norm 1",
            GradClip::Norm {
                max_norm: 0.5,
                norm_type: 1.0,
            },
        ),
        ("clip value", GradClip::Value { clip_value: 0.02 }),
    ]
    .map(|(name, clip)| (name, clipped(clip)));
    let cases: Vec<(&str, &Run)> = runs.iter().map(|(name, run)| (*name, run)).collect();
    let finals = check(&cases);
    // Clipping was active: without it the runs end elsewhere.
    let (_, unclipped, norms) = kiln(&Run::new(0.5, 0.0, sgd(0.0, 0.0, false), steps));
    assert!(norms.is_empty());
    for ((name, _), clipped_final) in runs.iter().zip(finals) {
        assert_ne!(
            flat(&clipped_final),
            flat(&unclipped),
            "{name}: clipping had no effect"
        );
    }
    // A norm below max_norm leaves the gradients exactly as they were.
    let (_, loose, norms) = kiln(&clipped(GradClip::Norm {
        max_norm: 1e6,
        norm_type: 2.0,
    }));
    assert_eq!(norms.len(), steps);
    assert!(norms.iter().all(|&n| n > 0.0 && n < 1e6));
    assert_eq!(flat(&loose), flat(&unclipped));
}
