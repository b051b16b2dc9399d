//! `spec.training`: epochs, batch size, seed, early stopping and SWA, and the
//! checks that span the loss, optimizer and LR schedule it assembles.

use kiln::v1 as pb;

use super::check::{ensure, non_negative, positive, unknown_enum};
use super::loss::validate_loss;
use super::metric::{metric, mode_max};
use super::optimizer::{validate_clip, validate_optimizer};
use super::schedule::validate_schedule;
use super::{
    GradClip, LossSpec, LrScheduleKind, LrScheduleSpec, Metric, OptimizerKind, OptimizerSpec, Task,
};
use crate::error::Result;

/// The most epochs a job may train.
pub const MAX_EPOCHS: u32 = 100_000;
/// The largest mini-batch.
pub const MAX_BATCH_SIZE: u32 = 1 << 20;

/// `spec.training`, validated: how the model is trained.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingSpec {
    /// What is minimized.
    pub loss: LossSpec,
    /// How the weights are updated.
    pub optimizer: OptimizerSpec,
    /// How the learning rate moves.
    pub lr_schedule: LrScheduleSpec,
    /// Gradient clipping; `None`: none.
    pub grad_clip: Option<GradClip>,
    /// The most epochs to train; early stopping may stop sooner.
    pub epochs: u32,
    /// Rows per mini-batch.
    pub batch_size: u32,
    /// Stop when a metric stops improving; `None`: train every epoch.
    pub early_stopping: Option<EarlyStoppingSpec>,
    /// Seeds weight init, shuffling and dropout, for reproducible runs.
    pub seed: u64,
    /// Stochastic Weight Averaging; `None`: off.
    pub swa: Option<SwaSpec>,
    /// Train with the LR range test's suggestion instead of `optimizer.learning_rate`.
    pub auto_learning_rate: bool,
    /// Binary: the decision threshold the model serves with; `None`: 0.5.
    pub decision_threshold: Option<DecisionThreshold>,
}

/// A binary model's decision threshold on P(class 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DecisionThreshold {
    /// This value, in (0, 1).
    Fixed(f64),
    /// The value that maximizes F1 on the validation split.
    TuneForF1,
}

impl TrainingSpec {
    /// Epochs when `epochs` is unset (0).
    pub const DEFAULT_EPOCHS: u32 = 100;
    /// Mini-batch size when `batch_size` is unset (0).
    pub const DEFAULT_BATCH_SIZE: u32 = 32;
}

/// Stochastic Weight Averaging (torch.optim.swa_utils: AveragedModel, SWALR,
/// update_bn).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SwaSpec {
    /// 1-based: weights are averaged after every epoch `e > start_epoch`;
    /// always < epochs.
    pub start_epoch: u32,
    /// The learning rate SWALR anneals to and holds.
    pub swa_lr: f64,
    /// Epochs SWALR takes to anneal to `swa_lr`.
    pub anneal_epochs: u32,
    /// Cosine annealing (true) or linear (false).
    pub anneal_cos: bool,
}

impl SwaSpec {
    /// SWALR's `anneal_epochs` when unset (0), as torch.
    pub const DEFAULT_ANNEAL_EPOCHS: u32 = 10;
}

/// Keras-style early stopping.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EarlyStoppingSpec {
    /// The metric watched.
    pub monitor: Metric,
    /// true: the metric should rise ("max"); false: fall ("min").
    pub mode_max: bool,
    /// Epochs without improvement before stopping.
    pub patience: u32,
    /// The least change that counts as an improvement.
    pub min_delta: f64,
    /// The metric must beat it before patience counts (Keras' baseline).
    pub baseline: Option<f64>,
    /// Epochs (counted from 0, as Keras) ignored before watching starts.
    pub start_from_epoch: u32,
    /// Serve the best epoch's weights rather than the last epoch's.
    pub restore_best_weights: bool,
}

impl EarlyStoppingSpec {
    /// Epochs without improvement before stopping, when `patience` is unset.
    pub const DEFAULT_PATIENCE: u32 = 10;
    /// Roll back to the best epoch's weights unless told otherwise.
    pub const DEFAULT_RESTORE_BEST_WEIGHTS: bool = true;
}

fn validate_threshold(d: &pb::DecisionThreshold, task: Task) -> Result<DecisionThreshold> {
    let field = "spec.training.decision_threshold";
    ensure(
        task == Task::Binary,
        field,
        "only applies to binary classification",
    )?;
    match (d.value, d.tune_for_f1) {
        (Some(v), false) => {
            ensure(
                v > 0.0 && v < 1.0,
                &format!("{field}.value"),
                "must be in (0, 1)",
            )?;
            Ok(DecisionThreshold::Fixed(v))
        }
        (None, true) => Ok(DecisionThreshold::TuneForF1),
        _ => Err(crate::error::FieldError::new(
            field,
            "set exactly one of value and tune_for_f1",
        )),
    }
}

pub(super) fn validate_training(t: pb::TrainingSpec, task: Task) -> Result<TrainingSpec> {
    let epochs = if t.epochs == 0 {
        TrainingSpec::DEFAULT_EPOCHS
    } else {
        t.epochs
    };
    ensure(
        epochs <= MAX_EPOCHS,
        "spec.training.epochs",
        &format!("at most {MAX_EPOCHS}"),
    )?;
    let batch_size = if t.batch_size == 0 {
        TrainingSpec::DEFAULT_BATCH_SIZE
    } else {
        t.batch_size
    };
    ensure(
        batch_size <= MAX_BATCH_SIZE,
        "spec.training.batch_size",
        &format!("at most {MAX_BATCH_SIZE}"),
    )?;
    let loss = validate_loss(t.loss.as_ref(), task)?;
    let optimizer = validate_optimizer(t.optimizer.as_ref())?;
    let lr_schedule = validate_schedule(t.lr_schedule.as_ref(), task, epochs)?;
    if let LrScheduleKind::OneCycle {
        cycle_momentum: true,
        ..
    } = lr_schedule.kind
    {
        let cycles = matches!(
            optimizer.kind,
            OptimizerKind::Sgd { .. }
                | OptimizerKind::Adam { .. }
                | OptimizerKind::AdamW { .. }
                | OptimizerKind::Nadam { .. }
        );
        let sgd_without_momentum =
            matches!(optimizer.kind, OptimizerKind::Sgd { momentum, .. } if momentum == 0.0);
        ensure(
            cycles && !sgd_without_momentum,
            "spec.training.lr_schedule.one_cycle.cycle_momentum",
            "needs SGD with momentum, Adam, AdamW or NAdam (as torch's OneCycleLR); set it to false",
        )?;
    }
    let grad_clip = t.grad_clip.as_ref().map(validate_clip).transpose()?;
    let early_stopping = t
        .early_stopping
        .as_ref()
        .map(|es| validate_early_stopping(es, task))
        .transpose()?;
    let swa = t
        .swa
        .as_ref()
        .map(|swa| validate_swa(swa, epochs, &lr_schedule))
        .transpose()?;
    Ok(TrainingSpec {
        loss,
        optimizer,
        lr_schedule,
        grad_clip,
        epochs,
        batch_size,
        early_stopping,
        seed: t.seed,
        swa,
        auto_learning_rate: t.optimizer.as_ref().is_some_and(|o| o.auto_learning_rate),
        decision_threshold: t
            .decision_threshold
            .as_ref()
            .map(|d| validate_threshold(d, task))
            .transpose()?,
    })
}

fn validate_swa(swa: &pb::Swa, epochs: u32, schedule: &LrScheduleSpec) -> Result<SwaSpec> {
    let f = |name: &str| format!("spec.training.swa.{name}");
    ensure(
        !matches!(schedule.kind, LrScheduleKind::OneCycle { .. }),
        "spec.training.swa",
        "cannot be combined with lr_schedule.one_cycle: both set the learning rate",
    )?;
    ensure(
        swa.start_epoch >= 1,
        &f("start_epoch"),
        "required, at least 1",
    )?;
    ensure(
        swa.start_epoch < epochs,
        &f("start_epoch"),
        &format!("must be less than spec.training.epochs ({epochs})"),
    )?;
    let swa_lr = positive(&f("swa_lr"), Some(swa.swa_lr), 0.0)?;
    let anneal_cos = match pb::Anneal::try_from(swa.anneal_strategy) {
        Ok(pb::Anneal::Default | pb::Anneal::Cos) => true,
        Ok(pb::Anneal::Linear) => false,
        Err(_) => return Err(unknown_enum(&f("anneal_strategy"), swa.anneal_strategy)),
    };
    Ok(SwaSpec {
        start_epoch: swa.start_epoch,
        swa_lr,
        anneal_epochs: if swa.anneal_epochs == 0 {
            SwaSpec::DEFAULT_ANNEAL_EPOCHS
        } else {
            swa.anneal_epochs
        },
        anneal_cos,
    })
}

fn validate_early_stopping(es: &pb::EarlyStopping, task: Task) -> Result<EarlyStoppingSpec> {
    let f = |name: &str| format!("spec.training.early_stopping.{name}");
    let monitor = metric(&f("monitor"), &es.monitor, task)?;
    if let Some(b) = es.baseline {
        ensure(b.is_finite(), &f("baseline"), "must be finite")?;
    }
    Ok(EarlyStoppingSpec {
        monitor,
        mode_max: mode_max(&f("mode"), es.mode, monitor)?,
        patience: es.patience.unwrap_or(EarlyStoppingSpec::DEFAULT_PATIENCE),
        min_delta: non_negative(&f("min_delta"), es.min_delta)?,
        baseline: es.baseline,
        start_from_epoch: es.start_from_epoch,
        restore_best_weights: es
            .restore_best_weights
            .unwrap_or(EarlyStoppingSpec::DEFAULT_RESTORE_BEST_WEIGHTS),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::testing::{assert_training_errors, err, minimal};
    use crate::spec::JobSpec;

    #[test]
    fn swa_is_validated_with_field_paths() {
        let swa = |swa: pb::Swa, lr_schedule: Option<pb::LrSchedule>| {
            let mut s = minimal();
            s.training = Some(pb::TrainingSpec {
                epochs: 20,
                swa: Some(swa),
                lr_schedule,
                ..Default::default()
            });
            s
        };
        let ok = pb::Swa {
            start_epoch: 5,
            swa_lr: 0.05,
            ..Default::default()
        };
        let spec = JobSpec::from_proto(&swa(ok, None)).unwrap();
        assert_eq!(
            spec.training.swa,
            Some(SwaSpec {
                start_epoch: 5,
                swa_lr: 0.05,
                anneal_epochs: 10,
                anneal_cos: true,
            })
        );
        let cases = [
            (
                pb::Swa {
                    start_epoch: 0,
                    ..ok
                },
                "spec.training.swa.start_epoch: required, at least 1",
            ),
            (
                pb::Swa {
                    start_epoch: 20,
                    ..ok
                },
                "spec.training.swa.start_epoch: must be less than spec.training.epochs (20)",
            ),
            (
                pb::Swa { swa_lr: 0.0, ..ok },
                "spec.training.swa.swa_lr: must be > 0",
            ),
            (
                pb::Swa {
                    anneal_strategy: 7,
                    ..ok
                },
                "spec.training.swa.anneal_strategy: unknown value 7",
            ),
        ];
        for (bad, expected) in cases {
            assert_eq!(err(&swa(bad, None)), expected);
        }
        let one_cycle = pb::LrSchedule {
            kind: Some(pb::lr_schedule::Kind::OneCycle(pb::OneCycleLr {
                max_lr: 0.1,
                ..Default::default()
            })),
            warmup: None,
        };
        assert!(err(&swa(ok, Some(one_cycle))).starts_with("spec.training.swa: cannot be combined"));
    }

    /// The classification metrics are monitors; the scores among them
    /// (here average precision) are maximized unless told otherwise.
    #[test]
    fn early_stopping_watches_pr_auc_maximizing_by_default() {
        let with_monitor = |task: pb::Task, monitor: &str, mode: pb::Mode| {
            let mut s = minimal();
            s.task = task as i32;
            s.training = Some(pb::TrainingSpec {
                early_stopping: Some(pb::EarlyStopping {
                    monitor: monitor.into(),
                    mode: mode as i32,
                    ..Default::default()
                }),
                ..Default::default()
            });
            s
        };
        let binary = pb::Task::BinaryClassification;
        let es = |spec: pb::JobSpec| JobSpec::from_proto(&spec).unwrap().training.early_stopping;
        let pr_auc = es(with_monitor(binary, "val_pr_auc", pb::Mode::Auto)).unwrap();
        assert_eq!(pr_auc.monitor, Metric::ValPrAuc);
        assert!(pr_auc.mode_max);
        let min = es(with_monitor(binary, "val_pr_auc", pb::Mode::Min)).unwrap();
        assert!(!min.mode_max);
        let log_loss = es(with_monitor(binary, "val_log_loss", pb::Mode::Auto)).unwrap();
        assert_eq!(log_loss.monitor, Metric::ValLogLoss);
        assert!(!log_loss.mode_max);
        let regression = with_monitor(pb::Task::Regression, "val_pr_auc", pb::Mode::Auto);
        assert!(err(&regression).starts_with(
            "spec.training.early_stopping.monitor: \"val_pr_auc\" is not a metric of this task"
        ));
    }

    /// One bad value per early-stopping field, each refused with its path.
    #[test]
    fn early_stopping_errors_name_the_field() {
        let cases: Vec<(pb::TrainingSpec, &str)> = vec![(
            pb::TrainingSpec {
                early_stopping: Some(pb::EarlyStopping {
                    min_delta: -0.1,
                    ..Default::default()
                }),
                ..Default::default()
            },
            "spec.training.early_stopping.min_delta: must be >= 0",
        )];
        assert_training_errors(cases);
    }

    #[test]
    fn decision_thresholds_are_binary_and_one_of_two() {
        use crate::spec::testing::minimal;
        let with = |task: pb::Task, d: pb::DecisionThreshold| {
            let mut s = minimal();
            s.task = task as i32;
            s.training = Some(pb::TrainingSpec {
                decision_threshold: Some(d),
                ..Default::default()
            });
            crate::spec::JobSpec::from_proto(&s).map(|j| j.training.decision_threshold)
        };
        let value = |v: f64| pb::DecisionThreshold {
            value: Some(v),
            ..Default::default()
        };
        let tune = pb::DecisionThreshold {
            tune_for_f1: true,
            ..Default::default()
        };
        let binary = pb::Task::BinaryClassification;
        assert_eq!(
            with(binary, value(0.3)).unwrap(),
            Some(DecisionThreshold::Fixed(0.3))
        );
        assert_eq!(
            with(binary, tune).unwrap(),
            Some(DecisionThreshold::TuneForF1)
        );
        let err = |r: crate::error::Result<_>| r.unwrap_err().to_string();
        assert_eq!(
            err(with(binary, value(1.0))),
            "spec.training.decision_threshold.value: must be in (0, 1)"
        );
        assert_eq!(
            err(with(
                binary,
                pb::DecisionThreshold {
                    value: Some(0.2),
                    tune_for_f1: true
                }
            )),
            "spec.training.decision_threshold: set exactly one of value and tune_for_f1"
        );
        assert_eq!(
            err(with(pb::Task::MulticlassClassification, tune)),
            "spec.training.decision_threshold: only applies to binary classification"
        );
    }
}
