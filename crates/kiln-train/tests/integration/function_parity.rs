//! Each activation and loss against torch: value and gradient on fixed
//! pseudo-random inputs (tests/reference/torch_functions.py).

use burn::tensor::{Int, Tensor, TensorData};
use kiln_core::spec::{Activation, LossKind, LossSpec};
use kiln_train::loss::{Loss, TargetTensor};
use kiln_train::model::activate;
use serde_json::{json, Value};

fn reference(request: &Value) -> Value {
    crate::common::run_reference("torch_functions.py", request)
}

fn values(v: &Value) -> Vec<f64> {
    serde_json::from_value(v.clone()).unwrap()
}

fn inputs(n: usize, seed: u64, scale: f64) -> Vec<f64> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (((s >> 40) as f64 / (1u64 << 24) as f64) * 2.0 - 1.0) * scale
        })
        .collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-5 + 1e-5 * w.abs();
        assert!(
            (*g as f64 - w).abs() <= tol,
            "{what}[{i}]: kiln {g}, torch {w}"
        );
    }
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

#[test]
fn activations_match_torch_values_and_gradients() {
    let _alone = crate::common::generator_alone();
    let x = inputs(64, 3, 4.0);
    let n = x.len();
    let reference = reference(&json!({"x": x, "losses": []}));
    let device = kiln_train::device::cpu();
    let ad = device.clone().autodiff();
    // A weighted sum gives each element its own upstream gradient.
    let weights: Vec<f32> = (1..=n).map(|i| i as f32).collect();
    let cases = [
        ("relu", Activation::Relu),
        ("tanh", Activation::Tanh),
        ("sigmoid", Activation::Sigmoid),
        (
            "leaky_relu",
            Activation::LeakyRelu {
                negative_slope: 0.2,
            },
        ),
        ("elu", Activation::Elu { alpha: 1.3 }),
        ("selu", Activation::Selu),
        ("gelu", Activation::Gelu),
        ("softplus", Activation::Softplus),
        ("silu", Activation::Silu),
    ];
    for (name, act) in cases {
        let xs: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let t = Tensor::<1>::from_data(TensorData::new(xs, [n]), &ad).require_grad();
        let y = activate(act, t.clone());
        let w = Tensor::<1>::from_data(TensorData::new(weights.clone(), [n]), &ad);
        let grads = (y.clone() * w).sum().backward();
        let grad = t.grad(&grads).unwrap();
        assert_close(
            &format!("{name} value"),
            &to_vec(y),
            &values(&reference["activations"][name]["y"]),
        );
        assert_close(
            &format!("{name} grad"),
            &to_vec(grad),
            &values(&reference["activations"][name]["grad"]),
        );
    }
    // PReLU as the Mlp applies it: gradients for the input and the slope.
    let xs: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let t = Tensor::<1>::from_data(TensorData::new(xs, [n]), &ad).require_grad();
    let slope = Tensor::<1>::from_data(TensorData::new(vec![0.25f32], [1]), &ad).require_grad();
    let y = burn::tensor::activation::prelu(t.clone(), slope.clone());
    let w = Tensor::<1>::from_data(TensorData::new(weights.clone(), [n]), &ad);
    let grads = (y.clone() * w).sum().backward();
    let prelu = &reference["activations"]["prelu"];
    assert_close("prelu value", &to_vec(y), &values(&prelu["y"]));
    assert_close(
        "prelu grad",
        &to_vec(t.grad(&grads).unwrap()),
        &values(&prelu["grad"]),
    );
    let slope_grad = to_vec(slope.grad(&grads).unwrap());
    let want = values(&prelu["slope_grad"]);
    assert!(
        (slope_grad[0] as f64 - want[0]).abs() <= 1e-4 * want[0].abs(),
        "prelu slope grad {slope_grad:?} vs {want:?}"
    );
    // RReLU in evaluation: the mean slope, off the autodiff device.
    let xs: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let y = activate(
        Activation::RRelu {
            lower: 0.1,
            upper: 0.3,
        },
        Tensor::<1>::from_data(TensorData::new(xs, [n]), &device),
    );
    assert_close(
        "rrelu eval",
        &to_vec(y),
        &values(&reference["activations"]["rrelu_eval"]["y"]),
    );
}

#[test]
fn rrelu_training_draws_slopes_from_its_range() {
    let _alone = crate::common::generator_alone();
    let device = kiln_train::device::cpu().autodiff();
    device.seed(3);
    let n = 20_000;
    let x = Tensor::<1>::from_data(TensorData::new(vec![-1.0f32; n], [n]), &device);
    let slopes: Vec<f32> = to_vec(activate(
        Activation::RRelu {
            lower: 0.1,
            upper: 0.3,
        },
        x,
    ))
    .iter()
    .map(|v| -v)
    .collect();
    assert!(slopes.iter().all(|&s| (0.1..=0.3).contains(&s)));
    let mean = slopes.iter().map(|&s| s as f64).sum::<f64>() / n as f64;
    // U(0.1, 0.3): mean 0.2, std of the mean 0.058 / sqrt(n) = 0.0004.
    assert!((mean - 0.2).abs() < 0.002, "mean slope {mean}");
}

/// AlphaDropout keeps a standardized input standardized (its reason to exist)
/// and is the identity in evaluation.
#[test]
fn alpha_dropout_preserves_mean_and_variance() {
    let _alone = crate::common::generator_alone();
    use kiln_train::model::AlphaDropout;
    let device = kiln_train::device::cpu();
    let ad = device.clone().autodiff();
    ad.seed(9);
    let n = 200_000;
    let x = Tensor::<1>::random([n], burn::tensor::Distribution::Normal(0.0, 1.0), &ad);
    let y: Vec<f64> = to_vec(AlphaDropout::new(0.2).forward(x))
        .iter()
        .map(|&v| v as f64)
        .collect();
    let mean = y.iter().sum::<f64>() / n as f64;
    let var = y.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
    assert!(
        mean.abs() < 0.01 && (var - 1.0).abs() < 0.02,
        "mean {mean}, var {var}"
    );
    // Each output is one of torch's two values; for x = 0.7, p = 0.5 torch's
    // F.alpha_dropout gives 1.3996773567841838 (kept) or -0.7791939305180315.
    let x = Tensor::<1>::from_data(TensorData::new(vec![0.7f32; 64], [64]), &ad);
    for v in to_vec(AlphaDropout::new(0.5).forward(x)) {
        let (kept, dropped) = (1.399_677_356_784_183_8, -0.779_193_930_518_031_5);
        assert!(
            (v as f64 - kept).abs() < 1e-6 || (v as f64 - dropped).abs() < 1e-6,
            "{v}"
        );
    }
    let x = Tensor::<1>::from_data(TensorData::new(vec![0.5f32, -1.0], [2]), &device);
    assert_eq!(to_vec(AlphaDropout::new(0.2).forward(x)), [0.5, -1.0]);
}

struct LossCase {
    name: &'static str,
    spec: LossSpec,
    rows: usize,
    output: Vec<f64>,
    target: Value,
}

#[test]
fn losses_match_torch_values_and_gradients() {
    let rows = 12;
    let regression = |name, kind, delta| LossCase {
        name,
        spec: LossSpec {
            huber_delta: delta,
            ..LossSpec::plain(kind)
        },
        rows,
        output: inputs(rows * 2, 5, 3.0),
        target: json!(inputs(rows * 2, 6, 3.0)),
    };
    let classes: Vec<i64> = (0..rows as i64).map(|i| (i * 5 + 1) % 4).collect();
    let ce = |name, smoothing, weights: Vec<f64>| LossCase {
        name,
        spec: LossSpec {
            label_smoothing: smoothing,
            class_weights: weights,
            ..LossSpec::plain(LossKind::CrossEntropy)
        },
        rows,
        output: inputs(rows * 4, 7, 4.0),
        target: json!(classes),
    };
    let binary: Vec<i64> = (0..rows as i64).map(|i| (i * 7 + 2) % 3 % 2).collect();
    let bce = |name, pos_weight| LossCase {
        name,
        spec: LossSpec {
            pos_weight,
            ..LossSpec::plain(LossKind::BinaryCrossEntropy)
        },
        rows,
        // Large logits too: the stable form must hold.
        output: inputs(rows, 8, 40.0),
        target: json!(binary),
    };
    let cases = vec![
        regression("mse", LossKind::Mse, 1.0),
        regression("mae", LossKind::Mae, 1.0),
        regression("huber", LossKind::Huber, 0.7),
        ce("ce", 0.0, vec![]),
        ce("ce_smooth", 0.1, vec![]),
        ce("ce_weighted", 0.0, vec![1.0, 2.0, 0.5, 3.0]),
        ce("ce_weighted_smooth", 0.2, vec![1.0, 2.0, 0.5, 3.0]),
        bce("bce", 1.0),
        bce("bce_pos_weight", 3.0),
    ];
    let request: Vec<Value> = cases
        .iter()
        .map(|c| {
            let kind = match c.spec.kind {
                LossKind::Mse => "mse",
                LossKind::Mae => "mae",
                LossKind::Huber => "huber",
                LossKind::CrossEntropy => "cross_entropy",
                LossKind::BinaryCrossEntropy => "bce",
            };
            json!({"name": c.name, "kind": kind, "rows": c.rows, "output": c.output, "target": c.target,
                   "delta": c.spec.huber_delta, "smoothing": c.spec.label_smoothing,
                   "weights": c.spec.class_weights, "pos_weight": c.spec.pos_weight})
        })
        .collect();
    let reference = reference(&json!({"x": [0.0], "losses": request}));
    let ad = kiln_train::device::cpu().autodiff();
    for c in cases {
        let width = c.output.len() / c.rows;
        let out: Vec<f32> = c.output.iter().map(|&v| v as f32).collect();
        let z = Tensor::<2>::from_data(TensorData::new(out, [c.rows, width]), &ad).require_grad();
        let target = match c.spec.kind {
            LossKind::Mse | LossKind::Mae | LossKind::Huber => {
                let y: Vec<f32> = values(&c.target).iter().map(|&v| v as f32).collect();
                TargetTensor::Values(Tensor::from_data(TensorData::new(y, [c.rows, width]), &ad))
            }
            _ => {
                let y: Vec<i64> = serde_json::from_value(c.target.clone()).unwrap();
                TargetTensor::Classes(Tensor::<1, Int>::from_data(
                    TensorData::new(y, [c.rows]),
                    &ad,
                ))
            }
        };
        let loss = Loss::new(&c.spec, &ad).forward(z.clone(), &target);
        let grads = loss.clone().backward();
        let want = &reference["losses"][c.name];
        assert_close(
            &format!("{} loss", c.name),
            &to_vec(loss),
            &[want["loss"].as_f64().unwrap()],
        );
        assert_close(
            &format!("{} grad", c.name),
            &to_vec(z.grad(&grads).unwrap()),
            &values(&want["grad"]),
        );
    }
}
