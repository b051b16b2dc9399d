//! SWA against torch.optim.swa_utils (tests/reference/torch_swa.py): SWALR's
//! learning rates, AveragedModel's averaged weights and update_bn's
//! BatchNorm statistics; and `train()` with SWA set, end to end.

use crate::common::{generator_alone, pseudo_random, regression_data};

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};
use kiln::v1 as pb;
use kiln_core::encoding::InputEncoding;
use kiln_core::prepare::Prepared;
use kiln_core::scaler::Scaler;
use kiln_core::spec::{
    Activation, BatchNormSpec, FanMode, Init, InitDistribution, InitKind, JobSpec, LayerSpec,
    LossKind, LossSpec, LrScheduleKind, LrScheduleSpec, Metric, OptimizerKind, OptimizerSpec,
    OutputActivation, SwaSpec, Task,
};
use kiln_train::loss::{Loss, TargetTensor};
use kiln_train::model::{Mlp, ModelArch};
use kiln_train::schedule::LrScheduler;
use kiln_train::swa::{update_bn, Swalr, WeightAverage};
use serde_json::{json, Value};

fn torch_reference(case: &Value) -> Value {
    crate::common::run_reference("torch_swa.py", case)
}

fn layer(units: usize) -> LayerSpec {
    LayerSpec {
        units,
        activation: Activation::Tanh,
        init: Init {
            kind: InitKind::Glorot,
            distribution: InitDistribution::Uniform,
            fan: FanMode::In,
        },
        dropout: 0.0,
        alpha_dropout: false,
        batch_norm: Some(BatchNormSpec {
            momentum: 0.1,
            eps: 1e-5,
        }),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-5 * b.abs().max(1.0)
}

/// The LR used in each epoch of torch's recipe: ExponentialLR until
/// swa_start, then SWALR; kiln's loop in train() does the same.
fn swalr_matches_torch(anneal_cos: bool, anneal_epochs: u32) {
    let (lr0, gamma, swa_lr, start_epoch, epochs) = (0.1, 0.9, 0.02, 4u32, 20u32);
    let swa = SwaSpec {
        start_epoch,
        swa_lr,
        anneal_epochs,
        anneal_cos,
    };
    let mut schedule = LrScheduler::new(
        &LrScheduleSpec {
            kind: LrScheduleKind::Exponential { gamma },
            warmup: None,
        },
        lr0,
        1,
        epochs,
    );
    let mut swalr: Option<Swalr> = None;
    let mut lrs = vec![];
    for epoch in 1..=epochs {
        lrs.push(swalr.as_ref().map_or(schedule.lr(), |s| s.lr()));
        if epoch > start_epoch {
            swalr
                .get_or_insert_with(|| Swalr::new(schedule.lr(), &swa))
                .step();
        } else {
            schedule.after_epoch(&|_: Metric| None);
        }
    }
    let reference = torch_reference(&json!({
        "kind": "swalr", "lr": lr0, "gamma": gamma, "swa_lr": swa_lr,
        "anneal_epochs": anneal_epochs,
        "anneal_strategy": if anneal_cos { "cos" } else { "linear" },
        // torch's epochs are 0-based: `epoch > swa_start` there is kiln's
        // `epoch > start_epoch` with swa_start = start_epoch - 1.
        "swa_start": start_epoch - 1, "epochs": epochs,
    }));
    let want: Vec<f64> = serde_json::from_value(reference["lrs"].clone()).unwrap();
    assert_eq!(lrs.len(), want.len());
    for (e, (a, b)) in lrs.iter().zip(&want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-12 * b.abs(),
            "epoch {}: kiln {a}, torch {b}",
            e + 1
        );
    }
    assert!((lrs[lrs.len() - 1] - swa_lr).abs() < 1e-12);
}

#[test]
fn swalr_cos_matches_torch() {
    swalr_matches_torch(true, 5);
}

#[test]
fn swalr_linear_matches_torch() {
    swalr_matches_torch(false, 3);
}

#[test]
fn swalr_one_anneal_epoch_matches_torch() {
    swalr_matches_torch(true, 1);
}

fn arch(hidden: Vec<LayerSpec>, inputs: usize, outputs: usize) -> ModelArch {
    ModelArch {
        task: Task::Regression,
        inputs,
        hidden,
        outputs,
        output_activation: OutputActivation::Identity,
    }
}

#[test]
fn averaged_weights_match_averaged_model() {
    let _alone = generator_alone();
    let (rows, inputs, outputs, steps, lr) = (12, 3, 2, 5, 0.1);
    let arch = arch(vec![layer(6)], inputs, outputs);
    let device = kiln_train::device::cpu();
    device.seed(3);
    let ad = device.clone().autodiff();
    let mut model = Mlp::new(&arch, &ad);
    let params: Vec<Value> = model
        .linear_parameters()
        .into_iter()
        .map(|(w, b)| json!([w, b]))
        .collect();
    let x = pseudo_random(rows * inputs, 7);
    let y = pseudo_random(rows * outputs, 8);
    let x_t = Tensor::<2>::from_data(TensorData::new(x.clone(), [rows, inputs]), &ad);
    let target = TargetTensor::Values(Tensor::<2>::from_data(
        TensorData::new(y.clone(), [rows, outputs]),
        &ad,
    ));
    let sgd = OptimizerSpec {
        learning_rate: lr,
        weight_decay: 0.0,
        kind: OptimizerKind::Sgd {
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
        },
    };
    let mut optimizer = kiln_train::optim::build(&sgd);
    let mut average = WeightAverage::new();
    for _ in 0..steps {
        let l = Loss::new(&LossSpec::plain(LossKind::Mse), &ad)
            .forward(model.forward(x_t.clone()), &target);
        let grads = GradientsParams::from_grads(l.backward(), &model);
        model = optimizer.step(lr, None, model, grads);
        average.update(&model);
    }
    assert_eq!(average.n_averaged(), steps as u64);
    let reference = torch_reference(&json!({
        "kind": "average", "dims": [inputs, 6, outputs], "params": params,
        "x": x, "y": y, "lr": lr, "steps": steps,
    }));
    let want: Vec<Vec<f64>> = serde_json::from_value(reference["params"].clone()).unwrap();
    let got = average.model().unwrap().trainable_parameters();
    // linear 0 (w, b), BatchNorm (gamma, beta), output (w, b).
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.into_iter().zip(&want).enumerate() {
        let g = g.into_data().try_into_vec::<f32>().unwrap();
        assert_eq!(g.len(), w.len(), "parameter {i}");
        for (j, (a, b)) in g.iter().zip(w).enumerate() {
            assert!(
                close(*a as f64, *b),
                "parameter {i}[{j}]: kiln {a}, torch {b}"
            );
        }
    }
}

#[test]
fn update_bn_matches_torch() {
    let _alone = generator_alone();
    let (rows, inputs, outputs, batch) = (20, 4, 2, 6);
    let arch = arch(vec![layer(5), layer(3)], inputs, outputs);
    let device = kiln_train::device::cpu();
    device.seed(5);
    let model = Mlp::new(&arch, &device);
    let params: Vec<Value> = model
        .linear_parameters()
        .into_iter()
        .map(|(w, b)| json!([w, b]))
        .collect();
    let x = pseudo_random(rows * inputs, 9);
    let x_t = Tensor::<2>::from_data(TensorData::new(x.clone(), [rows, inputs]), &device);
    // Disturb the running statistics first: update_bn must reset them.
    let ad = device.clone().autodiff();
    let model = model.fork(&ad).train();
    let _ = model.forward(x_t.clone().to_device(&ad).mul_scalar(3.0).add_scalar(1.0));
    let batches: Vec<Tensor<2>> = (0..rows)
        .step_by(batch)
        .map(|s| x_t.clone().slice(s..(s + batch).min(rows)))
        .collect();
    let model = update_bn(model.valid(), batches, &device);
    let out = model
        .forward(x_t)
        .into_data()
        .try_into_vec::<f32>()
        .unwrap();
    let reference = torch_reference(&json!({
        "kind": "update_bn", "dims": [inputs, 5, 3, outputs], "params": params,
        "x": x, "batch": batch,
    }));
    let want: Vec<f64> = serde_json::from_value(reference["eval_output"].clone()).unwrap();
    assert_eq!(out.len(), want.len());
    for (i, (a, b)) in out.iter().zip(&want).enumerate() {
        assert!(close(*a as f64, *b), "eval output {i}: kiln {a}, torch {b}");
    }
}

fn job(swa: pb::Swa, early_stopping: Option<pb::EarlyStopping>) -> JobSpec {
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
                batch_norm: true,
                ..Default::default()
            }],
            ..Default::default()
        }),
        training: Some(pb::TrainingSpec {
            epochs: 8,
            batch_size: 16,
            optimizer: Some(pb::Optimizer {
                learning_rate: Some(0.05),
                kind: Some(pb::optimizer::Kind::Sgd(pb::Sgd {
                    momentum: 0.9,
                    ..Default::default()
                })),
                ..Default::default()
            }),
            swa: Some(swa),
            early_stopping,
            seed: 1,
            ..Default::default()
        }),
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn train_with_swa_reports_and_serves_by_the_monitor() {
    let _alone = generator_alone();
    let inputs = 3;
    let data = Prepared {
        report: Default::default(),
        train: regression_data(100, inputs, 21),
        validation: regression_data(30, inputs, 42),
        width: inputs,
        outputs: 1,
        encoding: InputEncoding::numeric(&["a", "b", "c"]),
        feature_names: vec!["a".into(), "b".into(), "c".into()],
        target_names: vec!["y".into()],
        class_labels: vec![],
        feature_scaler: Scaler::identity(inputs),
        target_scaler: None,
    };
    let device = kiln_train::device::cpu();
    let swa = pb::Swa {
        start_epoch: 3,
        swa_lr: 0.02,
        anneal_epochs: 2,
        ..Default::default()
    };
    let mut lrs = vec![];
    let trained = kiln_train::train(&job(swa, None), &data, &device, &|| false, &mut |e| {
        if let kiln_train::TrainEvent::Epoch(r) = e {
            lrs.push(r.learning_rate);
        }
    })
    .unwrap();
    let report = trained.swa.expect("an SWA report");
    assert_eq!(report.epoch, 8);
    assert!(report.val_loss.is_finite());
    assert_eq!(trained.served_swa, report.val_loss < trained.best.val_loss);
    // The main schedule (constant 0.05) through epoch 4, then SWALR to 0.02.
    assert_eq!(lrs[..4], [0.05; 4]);
    assert!(lrs[4] < 0.05 && lrs[4] > 0.02);
    assert!(
        lrs[5..].iter().all(|&lr| (lr - 0.02).abs() < 1e-12),
        "{lrs:?}"
    );

    // Monitor val_loss with mode max: the choice flips to the larger loss.
    let maximize = pb::EarlyStopping {
        monitor: "val_loss".into(),
        mode: pb::Mode::Max as i32,
        patience: Some(100),
        ..Default::default()
    };
    let trained_max = kiln_train::train(
        &job(swa, Some(maximize)),
        &data,
        &device,
        &|| false,
        &mut |_| {},
    )
    .unwrap();
    let report_max = trained_max.swa.expect("an SWA report");
    assert_eq!(
        trained_max.served_swa,
        report_max.val_loss > trained_max.best.val_loss
    );
    // Same seed and data, same weights: early stopping only changes which
    // epoch counts as best, so the SWA model is the same.
    assert!((report_max.val_loss - report.val_loss).abs() < 1e-9);
}
