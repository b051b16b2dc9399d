//! The training loop: shuffled mini-batches on the device, one report per
//! epoch, the best epoch's weights kept, early stopping, cancellation within
//! one batch.

use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use kiln_core::prepare::{Prepared, Split, SplitTargets};
use kiln_core::spec::{Activation, JobSpec, Metric, Task};
use rand::{seq::SliceRandom, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, Checkpoint, Progress};
use crate::early_stop::EarlyStopping;
use crate::health::{self, GradientHealth, StepProbe};
use crate::loss::{Loss, TargetTensor};
use crate::lr_find::{lr_range_test, LrPoint, LrRangeReport};
use crate::model::{all_finite, Mlp, ModelArch};
use crate::optim::{self, KilnOptimizer};
use crate::schedule::LrScheduler;
use crate::swa::{self, Swalr, WeightAverage};

/// Rows per forward pass when evaluating; bounds memory on large validation sets.
const EVAL_CHUNK: usize = 16_384;

/// Metrics of one epoch.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct EpochReport {
    pub epoch: u32,
    pub train_loss: f64,
    pub val_loss: f64,
    pub val_accuracy: Option<f64>,
    pub val_mae: Option<f64>,
    pub val_rmse: Option<f64>,
    pub val_r2: Option<f64>,
    pub learning_rate: f64,
    /// Momentum or beta1 when a 1cycle schedule cycles it.
    pub momentum: Option<f64>,
    pub epoch_seconds: f64,
    pub samples_per_second: f64,
    /// The best epoch so far by the monitor: its weights are kept.
    pub improved: bool,
}

impl EpochReport {
    pub fn metric(&self, metric: Metric) -> Option<f64> {
        match metric {
            Metric::TrainLoss => Some(self.train_loss),
            Metric::ValLoss => Some(self.val_loss),
            Metric::ValAccuracy => self.val_accuracy,
            Metric::ValMae => self.val_mae,
            Metric::ValRmse => self.val_rmse,
            Metric::ValR2 => self.val_r2,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum TrainEvent {
    /// The epoch's gradient health; sent just before its `Epoch` event.
    Health(GradientHealth),
    /// One iteration of the LR range test.
    LrPoint(LrPoint),
    /// The LR range test's suggestions; with `auto_learning_rate`, before
    /// training starts at the chosen one.
    LrRange(LrRangeReport),
    Epoch(EpochReport),
    EarlyStopped {
        epoch: u32,
        best_epoch: u32,
        monitor: Metric,
        best_value: f64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Completed,
    EarlyStopped,
}

/// A finished training run: the best epoch's model, not the last one's.
#[derive(Debug)]
pub struct Trained {
    pub reason: StopReason,
    pub model: Mlp,
    pub arch: ModelArch,
    pub best: EpochReport,
    pub epochs_completed: u32,
    pub train_seconds: f64,
    /// With SWA (and at least one epoch averaged): the averaged model's
    /// validation metrics after update_bn; `epoch` is the last epoch,
    /// `train_loss` and `learning_rate` the last epoch's.
    pub swa: Option<EpochReport>,
    /// `model` is the SWA model: it beat the best epoch's by the monitor.
    pub served_swa: bool,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrainError {
    #[error("cancelled after {epochs_completed} epochs")]
    Cancelled { epochs_completed: u32 },
    #[error("LR range test: {0}")]
    LrRangeTest(String),
    /// Stopped on request at a batch boundary; the checkpoint continues it.
    #[error("suspended after {} epochs", .0.epochs_completed())]
    Suspended(Box<Checkpoint>),
    /// The checkpoint to resume from cannot be used.
    #[error("cannot resume: {0}")]
    Checkpoint(String),
    #[error("training diverged at epoch {epoch}: the training loss is {loss}{}", located(.layer))]
    Diverged {
        epoch: u32,
        loss: f64,
        /// The first layer, input side first, that went non-finite: its
        /// weights, or else its output on a training batch.
        layer: Option<NonFinite>,
    },
}

/// Where a diverged network first holds a NaN or an infinity.
#[derive(Debug, Clone, PartialEq)]
pub struct NonFinite {
    /// "hidden1", ..., "output".
    pub layer: String,
    /// Its weights or bias (true), or only its output (false).
    pub in_weights: bool,
}

fn located(layer: &Option<NonFinite>) -> String {
    match layer {
        Some(NonFinite {
            layer,
            in_weights: true,
        }) => format!("; {layer} is the first layer with non-finite weights"),
        Some(NonFinite {
            layer,
            in_weights: false,
        }) => format!("; {layer} is the first layer with a non-finite output"),
        None => String::new(),
    }
}

/// How a run is driven from outside: cancellation, suspension, checkpoints.
pub struct Control<'a> {
    /// Polled before every batch: stop and drop the run.
    pub cancelled: &'a dyn Fn() -> bool,
    /// Polled before every batch: stop, handing back a checkpoint of that
    /// exact point ([`TrainError::Suspended`]).
    pub suspended: &'a dyn Fn() -> bool,
    /// Called after every optimizer step with the epoch (1-based) and the
    /// training rows of it done so far.
    pub on_step: &'a dyn Fn(u32, usize),
    /// After every this many epochs (0: never), `on_checkpoint` receives a
    /// checkpoint; it is called after that epoch's event was emitted.
    pub checkpoint_every: u32,
    pub on_checkpoint: &'a mut dyn FnMut(&Checkpoint),
    /// Continue from this checkpoint instead of from fresh weights.
    pub resume: Option<Checkpoint>,
}

/// Trains `spec`'s network on `data`. `cancelled` is polled before every
/// batch; `emit` receives each event as it happens.
pub fn train(
    spec: &JobSpec,
    data: &Prepared,
    device: &Device,
    cancelled: &dyn Fn() -> bool,
    emit: &mut dyn FnMut(TrainEvent),
) -> Result<Trained, TrainError> {
    let control = Control {
        cancelled,
        suspended: &|| false,
        on_step: &|_, _| {},
        checkpoint_every: 0,
        on_checkpoint: &mut |_| {},
        resume: None,
    };
    train_with(spec, data, device, control, emit)
}

/// [`train`] with checkpoints, suspension and resumption. A resumed run
/// continues bit for bit as the uninterrupted run would have (on the same
/// device and thread count): it emits the events from where the checkpoint
/// was taken on.
pub fn train_with(
    spec: &JobSpec,
    data: &Prepared,
    device: &Device,
    control: Control,
    emit: &mut dyn FnMut(TrainEvent),
) -> Result<Trained, TrainError> {
    let fingerprint = checkpoint::fingerprint(spec, data);
    if control
        .resume
        .as_ref()
        .is_some_and(|c| c.progress.fingerprint != fingerprint)
    {
        return Err(TrainError::Checkpoint(
            "the checkpoint was taken with another spec or other data".into(),
        ));
    }
    if !spec.training.auto_learning_rate {
        return run(spec, fingerprint, data, device, control, emit);
    }
    // Learning rate "auto": the range test on its own copy of the network,
    // then training from the same seed at its suggestion. A resumed run
    // keeps the rate chosen before its checkpoint.
    let chosen = match &control.resume {
        Some(c) => c.progress.learning_rate,
        None => {
            let mut report = lr_range_test(spec, data, device, control.cancelled, emit)?;
            let chosen = report.suggestions.pick(spec.lr_range_test.suggestion);
            report.chosen = Some(chosen);
            emit(TrainEvent::LrRange(report));
            chosen
        }
    };
    let mut spec = spec.clone();
    spec.training.auto_learning_rate = false;
    spec.training.optimizer.learning_rate = chosen;
    run(&spec, fingerprint, data, device, control, emit)
}

/// The training loop proper.
fn run(
    spec: &JobSpec,
    fingerprint: String,
    data: &Prepared,
    device: &Device,
    mut control: Control,
    emit: &mut dyn FnMut(TrainEvent),
) -> Result<Trained, TrainError> {
    let started = Instant::now();
    let training = &spec.training;
    let arch = model_arch(spec, data);
    device.seed(training.seed);
    let ad = device.clone().autodiff();
    let mut model = Mlp::new(&arch, &ad);
    let mut optimizer = optim::build(&training.optimizer);

    let train_x = features(&data.train, data.width, &ad);
    let train_y = targets(&data.train, data.outputs, &ad);
    let val_x = features(&data.validation, data.width, device);
    let val_y = targets(&data.validation, data.outputs, device);
    let train_loss_fn = Loss::new(&training.loss, &ad);
    let val_loss_fn = Loss::new(&training.loss, device);
    let has_batch_norm = arch.hidden.iter().any(|l| l.batch_norm.is_some());
    // Layers that draw random numbers in training: libtorch's generator is
    // reseeded before each of their steps, so a resumed run draws the same.
    let stochastic = arch
        .hidden
        .iter()
        .any(|l| l.dropout > 0.0 || matches!(l.activation, Activation::RRelu { .. }));

    let batch = training.batch_size as usize;
    let rows = data.train.rows;
    // Optimizer steps per epoch: a last batch of one row is skipped with BatchNorm.
    let skips_last = has_batch_norm && rows % batch == 1;
    let steps_per_epoch = rows.div_ceil(batch) - usize::from(skips_last);
    let schedule = LrScheduler::new(
        &training.lr_schedule,
        training.optimizer.learning_rate,
        steps_per_epoch.max(1),
        training.epochs,
    );
    let restore_best = training
        .early_stopping
        .as_ref()
        .is_none_or(|e| e.restore_best_weights);
    let mut p = Progress {
        fingerprint,
        learning_rate: training.optimizer.learning_rate,
        epochs_completed: 0,
        next_row: 0,
        rows_seen: 0,
        batch_losses: Vec::new(),
        batch_rows: Vec::new(),
        probe: None,
        step: 0,
        lr: schedule.lr(),
        momentum: schedule.momentum(),
        schedule,
        // SWA: past swa.start_epoch, SWALR sets the LR and the weights are averaged.
        swalr: None,
        stopper: EarlyStopping::new(training.early_stopping.as_ref()),
        last: None,
        best: None,
        swa_averaged: 0,
        train_seconds: 0.0,
    };
    // The best epoch's weights (with `p.best`), and the SWA running average.
    let mut best_model: Option<Mlp> = None;
    let mut average = WeightAverage::new();
    if let Some(c) = control.resume.take() {
        let unusable = |e: checkpoint::CheckpointError| TrainError::Checkpoint(e.to_string());
        // Loaded on the plain device and then made trainable, so every
        // tensor (BatchNorm's running statistics included) is of the kind
        // the libtorch fast paths take, as in a fresh network.
        model = checkpoint::module_from(&c.model, &arch, device)
            .map_err(unusable)?
            .train();
        optimizer = optimizer
            .with_state(&c.optimizer)
            .map_err(TrainError::Checkpoint)?;
        best_model = match &c.best_model {
            Some(b) => Some(checkpoint::module_from(b, &arch, device).map_err(unusable)?),
            None => None,
        };
        if let Some(a) = &c.average {
            let a = checkpoint::module_from(a, &arch, device).map_err(unusable)?;
            average = WeightAverage::restored(a, c.progress.swa_averaged);
        }
        p = c.progress;
    }

    // The order is shuffled once per epoch from the seed: replay the epochs done.
    let mut rng = rand::rngs::StdRng::seed_from_u64(training.seed);
    let mut order: Vec<i64> = (0..rows as i64).collect();
    for _ in 0..p.epochs_completed {
        order.shuffle(&mut rng);
    }
    let mut reason = StopReason::Completed;

    for epoch in p.epochs_completed + 1..=training.epochs {
        let epoch_start = Instant::now();
        order.shuffle(&mut rng);
        let order_t =
            Tensor::<1, Int>::from_data(TensorData::new(order.clone(), [order.len()]), &ad);
        // Each batch's loss stays on the device, detached; they are weighted
        // and summed once per epoch: no host sync, and no libtorch work, per batch.
        let mut batch_losses: Vec<Tensor<1>> = Vec::with_capacity(steps_per_epoch);
        let mut probe: Option<StepProbe> = None;
        if p.next_row > 0 {
            // Resumed mid-epoch: the epoch's losses and probe so far.
            let n = p.batch_losses.len();
            let done = std::mem::take(&mut p.batch_losses);
            batch_losses.push(Tensor::from_data(TensorData::new(done, [n]), &ad));
            probe = p.probe.take().map(|v| StepProbe::from_values(&v, device));
        } else {
            p.rows_seen = 0;
            p.batch_rows.clear();
        }
        for start in (p.next_row..rows).step_by(batch) {
            if (control.cancelled)() {
                return Err(TrainError::Cancelled {
                    epochs_completed: p.epochs_completed,
                });
            }
            if (control.suspended)() {
                p.next_row = start;
                p.batch_losses = host_losses(batch_losses);
                p.probe = probe.as_ref().map(StepProbe::values);
                let elapsed = started.elapsed().as_secs_f64();
                let c = snapshot(&p, elapsed, &model, &optimizer, &best_model, &average);
                return Err(TrainError::Suspended(Box::new(c)));
            }
            let end = (start + batch).min(order.len());
            // torch's BatchNorm refuses a training batch of one row; skip it.
            if has_batch_norm && end - start == 1 {
                continue;
            }
            if stochastic {
                device.seed(step_seed(training.seed, p.step));
            }
            p.step += 1;
            let idx = order_t.clone().slice(start..end);
            let x = train_x.clone().select(0, idx.clone());
            let y = train_y.select(idx);
            let batch_loss = train_loss_fn.forward(model.forward(x), &y);
            batch_losses.push(batch_loss.clone().detach());
            p.batch_rows.push((end - start) as f32);
            let mut grads = GradientsParams::from_grads(batch_loss.backward(), &model);
            if let Some(clip) = &training.grad_clip {
                optim::clip_gradients(&model, &mut grads, clip);
            }
            (p.lr, p.momentum) = match &p.swalr {
                Some(s) => (s.lr(), None),
                None => (p.schedule.lr(), p.schedule.momentum()),
            };
            let probing = probe.is_none();
            if probing {
                probe = Some(StepProbe::before_step(&model, &grads));
            }
            model = optimizer.step(p.lr, p.momentum, model, grads);
            if let Some(probe) = probe.as_mut().filter(|_| probing) {
                probe.after_step(&model);
            }
            p.schedule.after_batch();
            p.rows_seen += end - start;
            (control.on_step)(epoch, end);
        }
        p.next_row = 0;
        let rows_seen = p.rows_seen;
        let train_loss = epoch_loss_sum(batch_losses, std::mem::take(&mut p.batch_rows))
            / rows_seen.max(1) as f64;
        if !train_loss.is_finite() {
            return Err(TrainError::Diverged {
                epoch,
                loss: train_loss,
                layer: first_non_finite(&model, train_x.clone().slice(0..batch.min(rows))),
            });
        }
        let eval_model = model.valid();
        let mut report = evaluate(&eval_model, &val_loss_fn, spec.task, &val_x, &val_y, data);
        if let Some(probe) = probe {
            let sample = data.validation.rows.min(health::DEAD_UNIT_ROWS);
            let outputs = match sample {
                0 => Vec::new(),
                n => eval_model.layer_outputs(val_x.clone().slice(0..n)),
            };
            emit(TrainEvent::Health(probe.finish(
                epoch,
                &eval_model,
                &outputs,
            )));
        }
        report.epoch = epoch;
        report.train_loss = train_loss;
        report.learning_rate = p.lr;
        report.momentum = p.momentum;
        report.epoch_seconds = epoch_start.elapsed().as_secs_f64();
        report.samples_per_second = rows_seen as f64 / report.epoch_seconds.max(1e-9);
        let monitored = report.metric(p.stopper.monitor).unwrap_or(f64::NAN);
        let verdict = p.stopper.update(epoch, monitored);
        report.improved = verdict.improved;
        if verdict.improved && restore_best {
            p.best = Some(report);
            best_model = Some(eval_model);
        }
        match &training.swa {
            // torch: `if epoch > swa_start: swa_model.update_parameters(model);
            // swa_scheduler.step() else: scheduler.step()`.
            Some(swa_spec) if epoch > swa_spec.start_epoch => {
                average.update(&model);
                p.swa_averaged = average.n_averaged();
                let lr = p.schedule.lr();
                p.swalr
                    .get_or_insert_with(|| Swalr::new(lr, swa_spec))
                    .step();
            }
            _ => p.schedule.after_epoch(&|m| report.metric(m)),
        }
        p.epochs_completed = epoch;
        p.last = Some(report);
        emit(TrainEvent::Epoch(report));
        if verdict.stop {
            emit(TrainEvent::EarlyStopped {
                epoch,
                best_epoch: p.stopper.best_epoch,
                monitor: p.stopper.monitor,
                best_value: p.stopper.best.unwrap_or(f64::NAN),
            });
            reason = StopReason::EarlyStopped;
            break;
        }
        let every = control.checkpoint_every;
        if every > 0 && epoch % every == 0 && epoch < training.epochs {
            let elapsed = started.elapsed().as_secs_f64();
            let c = snapshot(&p, elapsed, &model, &optimizer, &best_model, &average);
            (control.on_checkpoint)(&c);
        }
    }
    let train_seconds = p.train_seconds + started.elapsed().as_secs_f64();
    let last = p.last;
    // Serve the best epoch's weights; the last epoch's when restore_best_weights
    // is off or no epoch was watched (start_from_epoch beyond the run).
    let (best, mut model) = match (p.best.zip(best_model), last) {
        (Some(best), _) => best,
        (None, Some(last)) => (last, model.valid()),
        (None, None) => unreachable!("epochs >= 1 always runs an epoch"),
    };
    // SWA: recompute BatchNorm statistics for the averaged weights, evaluate,
    // and serve the better of the two by the monitor.
    let mut swa_report = None;
    let mut served_swa = false;
    if let (Some(averaged), Some(last)) = (average.model(), last) {
        let swa_start = Instant::now();
        if stochastic {
            // update_bn runs in training mode: dropout draws too.
            device.seed(step_seed(training.seed, p.step));
        }
        // update_bn over the training split in order, training batch size; a
        // last batch of one row is skipped (BatchNorm refuses it in training).
        let batches = (0..rows)
            .step_by(batch)
            .filter(|&start| !(has_batch_norm && (start + batch).min(rows) - start == 1))
            .map(|start| train_x.clone().slice(start..(start + batch).min(rows)));
        let swa_model = swa::update_bn(averaged, batches, device);
        let mut report = evaluate(&swa_model, &val_loss_fn, spec.task, &val_x, &val_y, data);
        report.epoch = last.epoch;
        report.train_loss = last.train_loss;
        report.learning_rate = last.learning_rate;
        report.epoch_seconds = swa_start.elapsed().as_secs_f64();
        report.samples_per_second = rows as f64 / report.epoch_seconds.max(1e-9);
        let mode_max = training.early_stopping.as_ref().is_some_and(|e| e.mode_max);
        // The training loss is not measured for the SWA model: with the
        // train_loss monitor the best epoch's model is kept.
        let better = match (
            p.stopper.monitor != Metric::TrainLoss,
            report.metric(p.stopper.monitor),
            best.metric(p.stopper.monitor),
        ) {
            (true, Some(s), Some(b)) if mode_max => s > b,
            (true, Some(s), Some(b)) => s < b,
            _ => false,
        };
        report.improved = better;
        if better {
            model = swa_model;
            served_swa = true;
        }
        swa_report = Some(report);
    }
    Ok(Trained {
        reason,
        model,
        arch,
        best,
        epochs_completed: p.epochs_completed,
        train_seconds,
        swa: swa_report,
        served_swa,
    })
}

/// A checkpoint of the run as it stands.
fn snapshot(
    p: &Progress,
    elapsed: f64,
    model: &Mlp,
    optimizer: &KilnOptimizer,
    best_model: &Option<Mlp>,
    average: &WeightAverage,
) -> Checkpoint {
    let mut progress = p.clone();
    progress.train_seconds += elapsed;
    Checkpoint {
        progress,
        model: checkpoint::module_bytes(model),
        optimizer: optimizer.state_bytes(),
        best_model: best_model.as_ref().map(checkpoint::module_bytes),
        average: average.average().map(checkpoint::module_bytes),
    }
}

/// The generator seed before optimizer step `step` (SplitMix64's finalizer
/// over the job's seed and the step).
fn step_seed(seed: u64, step: u64) -> u64 {
    let mut z = seed.wrapping_add(step.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The batch losses so far, read to the host.
fn host_losses(losses: Vec<Tensor<1>>) -> Vec<f32> {
    if losses.is_empty() {
        return Vec::new();
    }
    Tensor::cat(losses, 0)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 losses")
}

/// The first layer with non-finite weights, or else the first whose output
/// on `x` is non-finite.
fn first_non_finite(model: &Mlp, x: Tensor<2>) -> Option<NonFinite> {
    if let Some(layer) = model.first_non_finite_layer() {
        return Some(NonFinite {
            layer,
            in_weights: true,
        });
    }
    let outputs = model.layer_outputs(x.detach());
    model
        .layer_names()
        .into_iter()
        .zip(outputs)
        .find(|(_, out)| !all_finite(out.clone().detach()))
        .map(|(layer, _)| NonFinite {
            layer,
            in_weights: false,
        })
}

/// The sum of each batch's mean loss times its rows, read from the device.
fn epoch_loss_sum(losses: Vec<Tensor<1>>, rows: Vec<f32>) -> f64 {
    if losses.is_empty() {
        return 0.0;
    }
    let device = losses[0].device();
    let n = rows.len();
    let rows = Tensor::<1>::from_data(TensorData::new(rows, [n]), &device);
    (Tensor::cat(losses, 0) * rows).sum().into_scalar::<f64>()
}

/// The network `spec` describes for `data`'s width and outputs.
pub(crate) fn model_arch(spec: &JobSpec, data: &Prepared) -> ModelArch {
    ModelArch {
        task: spec.task,
        inputs: data.width,
        hidden: spec.model.hidden.clone(),
        outputs: ModelArch::output_units(spec.task, data.outputs),
        output_activation: spec.model.output_activation,
    }
}

pub(crate) fn features(split: &Split, width: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(
        TensorData::new(split.x.clone(), [split.rows, width]),
        device,
    )
}

pub(crate) fn targets(split: &Split, outputs: usize, device: &Device) -> TargetTensor {
    match &split.y {
        SplitTargets::Values(v) => TargetTensor::Values(Tensor::from_data(
            TensorData::new(v.clone(), [split.rows, outputs]),
            device,
        )),
        SplitTargets::Classes(c) => TargetTensor::Classes(Tensor::from_data(
            TensorData::new(c.clone(), [split.rows]),
            device,
        )),
    }
}

/// Validation loss and metrics of an evaluation-mode model. Regression errors
/// are reported in the target's original units.
fn evaluate(
    model: &Mlp,
    loss: &Loss,
    task: Task,
    x: &Tensor<2>,
    y: &TargetTensor,
    data: &Prepared,
) -> EpochReport {
    let rows = data.validation.rows;
    let mut loss_sum = 0.0;
    let mut outputs: Vec<f32> = Vec::new();
    for start in (0..rows).step_by(EVAL_CHUNK) {
        let end = (start + EVAL_CHUNK).min(rows);
        let out = model.forward(x.clone().slice(start..end));
        loss_sum += loss
            .forward(out.clone(), &y.slice_rows(start, end))
            .into_scalar::<f64>()
            * (end - start) as f64;
        outputs.extend(out.into_data().try_into_vec::<f32>().expect("f32 outputs"));
    }
    let mut report = EpochReport {
        val_loss: loss_sum / rows as f64,
        ..Default::default()
    };
    match (&data.validation.y, task) {
        (SplitTargets::Classes(classes), Task::Binary) => {
            let right = outputs
                .iter()
                .zip(classes)
                .filter(|(z, &c)| (**z > 0.0) == (c == 1))
                .count();
            report.val_accuracy = Some(right as f64 / rows as f64);
        }
        (SplitTargets::Classes(classes), _) => {
            let k = data.outputs;
            let right = outputs
                .chunks(k)
                .zip(classes)
                .filter(|(row, &c)| argmax(row) == c as usize)
                .count();
            report.val_accuracy = Some(right as f64 / rows as f64);
        }
        (SplitTargets::Values(scaled_y), _) => {
            let mut pred = outputs;
            let mut truth = scaled_y.clone();
            if let Some(scaler) = &data.target_scaler {
                scaler.inverse(&mut pred);
                scaler.inverse(&mut truth);
            }
            let m = regression_metrics(&pred, &truth, data.outputs);
            report.val_mae = Some(m.mae);
            report.val_rmse = Some(m.rmse);
            report.val_r2 = Some(m.r2);
        }
    }
    report
}

pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv {
                (i, v)
            } else {
                (bi, bv)
            }
        })
        .0
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RegressionMetrics {
    pub mae: f64,
    pub rmse: f64,
    /// Coefficient of determination, averaged over the target columns.
    pub r2: f64,
}

/// MAE and RMSE over every value, and R² per column then averaged
/// (scikit-learn's `r2_score` with `multioutput="uniform_average"`).
pub fn regression_metrics(pred: &[f32], truth: &[f32], width: usize) -> RegressionMetrics {
    let n = truth.len() as f64;
    let (mut abs, mut sq) = (0.0, 0.0);
    for (p, t) in pred.iter().zip(truth) {
        let e = (*p as f64) - (*t as f64);
        abs += e.abs();
        sq += e * e;
    }
    let rows = truth.len() / width;
    let r2 = (0..width)
        .map(|j| {
            let col = |v: &[f32]| {
                v.iter()
                    .skip(j)
                    .step_by(width)
                    .map(|&x| x as f64)
                    .collect::<Vec<_>>()
            };
            let (p, t) = (col(pred), col(truth));
            let mean = t.iter().sum::<f64>() / rows as f64;
            let ss_tot: f64 = t.iter().map(|v| (v - mean).powi(2)).sum();
            let ss_res: f64 = p.iter().zip(&t).map(|(p, t)| (p - t).powi(2)).sum();
            if ss_tot > 0.0 {
                1.0 - ss_res / ss_tot
            } else if ss_res == 0.0 {
                1.0
            } else {
                0.0
            }
        })
        .sum::<f64>()
        / width as f64;
    RegressionMetrics {
        mae: abs / n,
        rmse: (sq / n).sqrt(),
        r2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_metrics_match_hand_computation() {
        // Two targets; column 0 perfect, column 1 off by 1 everywhere.
        let truth = [1.0, 0.0, 2.0, 2.0, 3.0, 4.0];
        let pred = [1.0, 1.0, 2.0, 3.0, 3.0, 5.0];
        let m = regression_metrics(&pred, &truth, 2);
        assert!((m.mae - 0.5).abs() < 1e-12);
        assert!((m.rmse - 0.5f64.sqrt()).abs() < 1e-12);
        // Column 1: mean 2, ss_tot 8, ss_res 3 -> r2 = 5/8; column 0: 1.
        assert!((m.r2 - (1.0 + 5.0 / 8.0) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.1, 0.7, 0.7, 0.2]), 1);
    }
}
