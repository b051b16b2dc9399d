//! One training run, step by step: [`set_up`] builds the network, the
//! optimizer, the tensors and the run's progress ([`Run::resume`] replaces
//! them with a checkpoint's); each epoch then trains ([`Run::train_epoch`],
//! one [`Run::train_batch`] per batch), validates ([`Run::validate`]) and
//! does its bookkeeping ([`Run::end_epoch`]); [`Run::finish`] picks the
//! model to serve.
//!
//! The statements keep the order of the single function they were split
//! from: the random draws (lazy weight initialization, dropout masks) and
//! the floating-point operations happen in the same order, which the parity
//! and bit-exact resume tests depend on.

use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use kiln_core::prepare::Prepared;
use kiln_core::spec::{Activation, JobSpec, Metric};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

use super::evaluate::{evaluate, served_decisions};
use super::Control;
use crate::checkpoint::{self, Checkpoint, Progress};
use crate::early_stop::EarlyStopping;
use crate::health::{self, StepProbe};
use crate::loss::{Loss, TargetTensor};
use crate::model::{all_finite, Mlp, ModelArch};
use crate::optim::{self, KilnOptimizer};
use crate::outcome::{NonFinite, StopReason, TrainError, Trained};
use crate::report::{EpochReport, TrainEvent};
use crate::schedule::LrScheduler;
use crate::swa::{self, Swalr, WeightAverage};
use crate::tensors::{features, targets};

/// The training loop proper.
pub(super) fn run(
    spec: &JobSpec,
    fingerprint: String,
    data: &Prepared,
    device: &Device,
    mut control: Control,
    emit: &mut dyn FnMut(TrainEvent),
) -> Result<Trained, TrainError> {
    let (setup, mut state) = set_up(spec, fingerprint, data, device);
    if let Some(c) = control.resume.take() {
        state = state.resume(&setup, c)?;
    }
    // Cancel is polled before every batch and between the phases that take
    // long on their own: set-up, validation, the epoch's end (checkpoint),
    // and the served model's last evaluation.
    state.stop_if_cancelled(&control)?;
    // The order is shuffled once per epoch from the seed: replay the epochs done.
    let mut rng = StdRng::seed_from_u64(spec.training.seed);
    let mut order: Vec<i64> = (0..setup.rows as i64).collect();
    for _ in 0..state.progress.epochs_completed {
        order.shuffle(&mut rng);
    }
    let mut reason = StopReason::Completed;
    for epoch in state.progress.epochs_completed + 1..=spec.training.epochs {
        let epoch_start = Instant::now();
        order.shuffle(&mut rng);
        let (trained, train_loss, probe) = state.train_epoch(&setup, &control, epoch, &order)?;
        state = trained;
        state.stop_if_cancelled(&control)?;
        let (report, eval_model) =
            state.validate(&setup, emit, epoch, train_loss, probe, epoch_start)?;
        state.stop_if_cancelled(&control)?;
        if state.end_epoch(&setup, &mut control, emit, report, eval_model) {
            reason = StopReason::EarlyStopped;
            break;
        }
    }
    state.stop_if_cancelled(&control)?;
    Ok(state.finish(&setup, reason))
}

/// What stays fixed during a run: the spec, the data as tensors, the losses
/// and the batch layout.
struct Setup<'a> {
    spec: &'a JobSpec,
    data: &'a Prepared,
    /// The plain device: validation, checkpoints, SWA's model.
    device: &'a Device,
    /// Its autodiff twin, which training runs on.
    ad: Device,
    arch: ModelArch,
    started: Instant,
    train_x: Tensor<2>,
    train_y: TargetTensor,
    val_x: Tensor<2>,
    val_y: TargetTensor,
    train_loss_fn: Loss,
    val_loss_fn: Loss,
    has_batch_norm: bool,
    /// Layers that draw random numbers in training: libtorch's generator is
    /// reseeded before each of their steps, so a resumed run draws the same.
    stochastic: bool,
    /// Rows per batch, and rows in the training split.
    batch: usize,
    rows: usize,
    /// Optimizer steps per epoch: a last batch of one row is skipped with BatchNorm.
    steps_per_epoch: usize,
    /// Keep the best epoch's weights (else the last epoch's are served).
    restore_best: bool,
}

/// What changes during a run; a checkpoint holds all of it.
struct Run {
    model: Mlp,
    optimizer: KilnOptimizer,
    progress: Progress,
    /// The best epoch's weights (with `progress.best`).
    best_model: Option<Mlp>,
    /// The SWA running average.
    average: WeightAverage,
}

/// A fresh run of `spec` on `data`: the seeded network, the optimizer, the
/// tensors on the device and the progress of a run that has not started.
fn set_up<'a>(
    spec: &'a JobSpec,
    fingerprint: String,
    data: &'a Prepared,
    device: &'a Device,
) -> (Setup<'a>, Run) {
    let started = Instant::now();
    let training = &spec.training;
    let arch = ModelArch::for_job(spec, data);
    device.seed(training.seed);
    let ad = device.clone().autodiff();
    let model = Mlp::new(&arch, &ad);
    let optimizer = optim::build(&training.optimizer);

    let train_x = features(&data.train, data.width, &ad);
    let train_y = targets(&data.train, data.outputs, &ad);
    let val_x = features(&data.validation, data.width, device);
    let val_y = targets(&data.validation, data.outputs, device);
    let loss = training.loss.balanced_for(&data.train_class_counts());
    let train_loss_fn = Loss::new(&loss, &ad);
    let val_loss_fn = Loss::new(&loss, device);
    let has_batch_norm = arch.hidden.iter().any(|l| l.batch_norm.is_some());
    let stochastic = arch
        .hidden
        .iter()
        .any(|l| l.dropout > 0.0 || matches!(l.activation, Activation::RRelu { .. }));

    let batch = training.batch_size as usize;
    let rows = data.train.rows;
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
    let progress = Progress {
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
    let setup = Setup {
        spec,
        data,
        device,
        ad,
        arch,
        started,
        train_x,
        train_y,
        val_x,
        val_y,
        train_loss_fn,
        val_loss_fn,
        has_batch_norm,
        stochastic,
        batch,
        rows,
        steps_per_epoch,
        restore_best,
    };
    let run = Run {
        model,
        optimizer,
        progress,
        best_model: None,
        average: WeightAverage::new(),
    };
    (setup, run)
}

impl Run {
    /// This run continued from checkpoint `c` instead of from fresh weights.
    fn resume(mut self, setup: &Setup, c: Checkpoint) -> Result<Self, TrainError> {
        let unusable = |e: checkpoint::CheckpointError| TrainError::Checkpoint(e.to_string());
        // Loaded on the plain device and then made trainable, so every
        // tensor (BatchNorm's running statistics included) is of the kind
        // the backend's fast paths take, as in a fresh network.
        self.model = checkpoint::module_from(&c.model, &setup.arch, setup.device)
            .map_err(unusable)?
            .train();
        self.optimizer = self
            .optimizer
            .with_state(&c.optimizer)
            .map_err(TrainError::Checkpoint)?;
        self.best_model = match &c.best_model {
            Some(b) => {
                Some(checkpoint::module_from(b, &setup.arch, setup.device).map_err(unusable)?)
            }
            None => None,
        };
        if let Some(a) = &c.average {
            let a = checkpoint::module_from(a, &setup.arch, setup.device).map_err(unusable)?;
            self.average = WeightAverage::restored(a, c.progress.swa_averaged);
        }
        self.progress = c.progress;
        Ok(self)
    }

    /// Trains on the epoch's batches in `order`, from `progress.next_row` on
    /// (a run resumed mid-epoch). Returns the run after the epoch's steps,
    /// the epoch's mean training loss and its gradient-health probe.
    fn train_epoch(
        mut self,
        setup: &Setup,
        control: &Control,
        epoch: u32,
        order: &[i64],
    ) -> Result<(Self, f64, Option<StepProbe>), TrainError> {
        let order_t =
            Tensor::<1, Int>::from_data(TensorData::new(order.to_vec(), [order.len()]), &setup.ad);
        // Each batch's loss stays on the device, detached; they are weighted
        // and summed once per epoch: no host sync, and no libtorch work, per batch.
        let mut batch_losses: Vec<Tensor<1>> = Vec::with_capacity(setup.steps_per_epoch);
        let mut probe: Option<StepProbe> = None;
        if self.progress.next_row > 0 {
            // Resumed mid-epoch: the epoch's losses and probe so far.
            let n = self.progress.batch_losses.len();
            let done = std::mem::take(&mut self.progress.batch_losses);
            batch_losses.push(Tensor::from_data(TensorData::new(done, [n]), &setup.ad));
            probe = self
                .progress
                .probe
                .take()
                .map(|v| StepProbe::from_values(&v, setup.device));
        } else {
            self.progress.rows_seen = 0;
            self.progress.batch_rows.clear();
        }
        for start in (self.progress.next_row..setup.rows).step_by(setup.batch) {
            self.stop_if_cancelled(control)?;
            if (control.suspended)() {
                self.progress.next_row = start;
                self.progress.batch_losses = host_losses(batch_losses);
                self.progress.probe = probe.as_ref().map(StepProbe::values);
                return Err(TrainError::Suspended(Box::new(self.snapshot(setup))));
            }
            let end = (start + setup.batch).min(order.len());
            // torch's BatchNorm refuses a training batch of one row; skip it.
            if setup.has_batch_norm && end - start == 1 {
                continue;
            }
            let idx = order_t.clone().slice(start..end);
            self = self.train_batch(setup, idx, end - start, &mut batch_losses, &mut probe);
            (control.on_step)(epoch, end);
        }
        self.progress.next_row = 0;
        let batch_rows = std::mem::take(&mut self.progress.batch_rows);
        let train_loss =
            epoch_loss_sum(batch_losses, batch_rows) / self.progress.rows_seen.max(1) as f64;
        Ok((self, train_loss, probe))
    }

    /// One optimizer step on the training rows `idx` (`rows` of them). The
    /// batch's loss joins `batch_losses`; the epoch's first step fills `probe`.
    /// (By value: the optimizer takes the model by value.)
    fn train_batch(
        mut self,
        setup: &Setup,
        idx: Tensor<1, Int>,
        rows: usize,
        batch_losses: &mut Vec<Tensor<1>>,
        probe: &mut Option<StepProbe>,
    ) -> Self {
        let training = &setup.spec.training;
        let progress = &mut self.progress;
        if setup.stochastic {
            setup.device.seed(step_seed(training.seed, progress.step));
        }
        progress.step += 1;
        let x = setup.train_x.clone().select(0, idx.clone());
        let y = setup.train_y.select(idx);
        let batch_loss = setup.train_loss_fn.forward(self.model.forward(x), &y);
        batch_losses.push(batch_loss.clone().detach());
        progress.batch_rows.push(rows as f32);
        let mut grads = GradientsParams::from_grads(batch_loss.backward(), &self.model);
        if let Some(clip) = &training.grad_clip {
            optim::clip_gradients(&self.model, &mut grads, clip);
        }
        (progress.lr, progress.momentum) = match &progress.swalr {
            Some(s) => (s.lr(), None),
            None => (progress.schedule.lr(), progress.schedule.momentum()),
        };
        let probing = probe.is_none();
        if probing {
            *probe = Some(StepProbe::before_step(&self.model, &grads));
        }
        self.model = self
            .optimizer
            .step(progress.lr, progress.momentum, self.model, grads);
        if let Some(probe) = probe.as_mut().filter(|_| probing) {
            probe.after_step(&self.model);
        }
        progress.schedule.after_batch();
        progress.rows_seen += rows;
        self
    }

    /// [`TrainError::Cancelled`] when the job was cancelled.
    fn stop_if_cancelled(&self, control: &Control) -> Result<(), TrainError> {
        match (control.cancelled)() {
            true => Err(TrainError::Cancelled {
                epochs_completed: self.progress.epochs_completed,
            }),
            false => Ok(()),
        }
    }

    /// Checks the epoch's training loss, evaluates the model on the
    /// validation split and sends the epoch's gradient health. Returns the
    /// epoch's report (not yet judged by early stopping) and the
    /// evaluation-mode model.
    fn validate(
        &self,
        setup: &Setup,
        emit: &mut dyn FnMut(TrainEvent),
        epoch: u32,
        train_loss: f64,
        probe: Option<StepProbe>,
        epoch_start: Instant,
    ) -> Result<(EpochReport, Mlp), TrainError> {
        let data = setup.data;
        if !train_loss.is_finite() {
            return Err(TrainError::Diverged {
                epoch,
                loss: train_loss,
                layer: first_non_finite(
                    &self.model,
                    setup.train_x.clone().slice(0..setup.batch.min(setup.rows)),
                ),
            });
        }
        let eval_model = self.model.valid();
        let mut report = evaluate(
            &eval_model,
            &setup.val_loss_fn,
            setup.spec.task,
            &setup.val_x,
            &setup.val_y,
            data,
        );
        if let Some(probe) = probe {
            let sample = data.validation.rows.min(health::DEAD_UNIT_ROWS);
            let outputs = match sample {
                0 => Vec::new(),
                n => eval_model.layer_outputs(setup.val_x.clone().slice(0..n)),
            };
            emit(TrainEvent::Health(probe.finish(
                epoch,
                &eval_model,
                &outputs,
            )));
        }
        report.epoch = epoch;
        report.train_loss = train_loss;
        report.learning_rate = self.progress.lr;
        report.momentum = self.progress.momentum;
        report.epoch_seconds = epoch_start.elapsed().as_secs_f64();
        report.samples_per_second = self.progress.rows_seen as f64 / report.epoch_seconds.max(1e-9);
        Ok((report, eval_model))
    }

    /// The epoch's bookkeeping: early stopping's verdict and the best
    /// weights, the SWA average or the schedule's step, the epoch's events,
    /// and a checkpoint when one is due. Returns whether the run stops early.
    fn end_epoch(
        &mut self,
        setup: &Setup,
        control: &mut Control,
        emit: &mut dyn FnMut(TrainEvent),
        mut report: EpochReport,
        eval_model: Mlp,
    ) -> bool {
        let training = &setup.spec.training;
        let epoch = report.epoch;
        let progress = &mut self.progress;
        let monitored = report.metric(progress.stopper.monitor).unwrap_or(f64::NAN);
        let verdict = progress.stopper.update(epoch, monitored);
        report.improved = verdict.improved;
        if verdict.improved && setup.restore_best {
            progress.best = Some(report);
            self.best_model = Some(eval_model);
        }
        match &training.swa {
            // torch: `if epoch > swa_start: swa_model.update_parameters(model);
            // swa_scheduler.step() else: scheduler.step()`.
            Some(swa_spec) if epoch > swa_spec.start_epoch => {
                self.average.update(&self.model);
                progress.swa_averaged = self.average.n_averaged();
                let lr = progress.schedule.lr();
                progress
                    .swalr
                    .get_or_insert_with(|| Swalr::new(lr, swa_spec))
                    .step();
            }
            _ => progress.schedule.after_epoch(&|m| report.metric(m)),
        }
        progress.epochs_completed = epoch;
        progress.last = Some(report);
        emit(TrainEvent::Epoch(report));
        if verdict.stop {
            emit(TrainEvent::EarlyStopped {
                epoch,
                best_epoch: progress.stopper.best_epoch,
                monitor: progress.stopper.monitor,
                best_value: progress.stopper.best.unwrap_or(f64::NAN),
            });
            return true;
        }
        let every = control.checkpoint_every;
        if every > 0 && epoch.is_multiple_of(every) && epoch < training.epochs {
            let c = self.snapshot(setup);
            (control.on_checkpoint)(&c);
        }
        false
    }

    /// The finished run: the best epoch's weights (the last epoch's when
    /// restore_best_weights is off or no epoch was watched: start_from_epoch
    /// beyond the run), or the SWA model when it beats them.
    fn finish(self, setup: &Setup, reason: StopReason) -> Trained {
        let Run {
            model,
            progress,
            best_model,
            average,
            ..
        } = self;
        let train_seconds = progress.train_seconds + setup.started.elapsed().as_secs_f64();
        let last = progress.last;
        let (best, mut model) = match (progress.best.zip(best_model), last) {
            (Some(best), _) => best,
            (None, Some(last)) => (last, model.valid()),
            (None, None) => unreachable!("epochs >= 1 always runs an epoch"),
        };
        let mut swa_report = None;
        let mut served_swa = false;
        if let (Some(averaged), Some(last)) = (average.model(), last) {
            let monitor = progress.stopper.monitor;
            let (report, swa_model) =
                swa_evaluation(setup, averaged, progress.step, last, &best, monitor);
            if report.improved {
                model = swa_model;
                served_swa = true;
            }
            swa_report = Some(report);
        }
        let decisions = served_decisions(
            &model,
            setup.spec.task,
            &setup.val_x,
            setup.data,
            setup.spec.training.decision_threshold,
        );
        Trained {
            reason,
            model,
            arch: setup.arch.clone(),
            best,
            epochs_completed: progress.epochs_completed,
            train_seconds,
            swa: swa_report,
            served_swa,
            decisions,
        }
    }

    /// A checkpoint of the run as it stands.
    fn snapshot(&self, setup: &Setup) -> Checkpoint {
        let elapsed = setup.started.elapsed().as_secs_f64();
        let mut progress = self.progress.clone();
        progress.train_seconds += elapsed;
        Checkpoint {
            progress,
            model: checkpoint::module_bytes(&self.model),
            optimizer: self.optimizer.state_bytes(),
            best_model: self.best_model.as_ref().map(checkpoint::module_bytes),
            average: self.average.average().map(checkpoint::module_bytes),
        }
    }
}

/// SWA's end of run: recomputes BatchNorm statistics for the averaged
/// weights and evaluates them. Returns the SWA model's report, `improved`
/// when it beats the best epoch's by the monitor, and the SWA model.
fn swa_evaluation(
    setup: &Setup,
    averaged: Mlp,
    step: u64,
    last: EpochReport,
    best: &EpochReport,
    monitor: Metric,
) -> (EpochReport, Mlp) {
    let training = &setup.spec.training;
    let (batch, rows) = (setup.batch, setup.rows);
    let swa_start = Instant::now();
    if setup.stochastic {
        // update_bn runs in training mode: dropout draws too.
        setup.device.seed(step_seed(training.seed, step));
    }
    // update_bn over the training split in order, training batch size; a
    // last batch of one row is skipped (BatchNorm refuses it in training).
    let batches = (0..rows)
        .step_by(batch)
        .filter(|&start| !(setup.has_batch_norm && (start + batch).min(rows) - start == 1))
        .map(|start| {
            setup
                .train_x
                .clone()
                .slice(start..(start + batch).min(rows))
        });
    let swa_model = swa::update_bn(averaged, batches, setup.device);
    let mut report = evaluate(
        &swa_model,
        &setup.val_loss_fn,
        setup.spec.task,
        &setup.val_x,
        &setup.val_y,
        setup.data,
    );
    report.epoch = last.epoch;
    report.train_loss = last.train_loss;
    report.learning_rate = last.learning_rate;
    report.epoch_seconds = swa_start.elapsed().as_secs_f64();
    report.samples_per_second = rows as f64 / report.epoch_seconds.max(1e-9);
    let mode_max = training.early_stopping.as_ref().is_some_and(|e| e.mode_max);
    // The training loss is not measured for the SWA model: with the
    // train_loss monitor the best epoch's model is kept.
    let better = match (
        monitor != Metric::TrainLoss,
        report.metric(monitor),
        best.metric(monitor),
    ) {
        (true, Some(s), Some(b)) if mode_max => s > b,
        (true, Some(s), Some(b)) => s < b,
        _ => false,
    };
    report.improved = better;
    (report, swa_model)
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
