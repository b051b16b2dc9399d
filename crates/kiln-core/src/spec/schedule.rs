//! `spec.training.lr_schedule` (torch.optim.lr_scheduler, with a linear
//! warmup) and `spec.lr_range_test` (fastai's `lr_find`).

use kiln::v1 as pb;

use super::check::{beta, ensure, non_negative, positive, unknown_enum};
use super::metric::{metric, mode_max};
use super::{Metric, Task};
use crate::error::Result;

/// fastai `lr_find`'s settings (DESIGN.md): exponential from `start_lr` to
/// `end_lr` over `iterations` mini-batches, stop at 4x the minimum smoothed loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrRangeSpec {
    /// The first learning rate tried.
    pub start_lr: f64,
    /// The last learning rate tried.
    pub end_lr: f64,
    /// Mini-batches, one learning rate each.
    pub iterations: u32,
    /// Stop once the smoothed loss exceeds 4x its minimum.
    pub stop_on_divergence: bool,
    /// The suggestion `auto_learning_rate` trains with.
    pub suggestion: LrSuggestion,
}

impl LrRangeSpec {
    /// The fewest mini-batches a range test may take.
    pub const MIN_ITERATIONS: u32 = 6;
    /// The most mini-batches a range test may take.
    pub const MAX_ITERATIONS: u32 = 10_000;
}

impl Default for LrRangeSpec {
    fn default() -> Self {
        Self {
            start_lr: 1e-7,
            end_lr: 10.0,
            iterations: 100,
            stop_on_divergence: true,
            suggestion: LrSuggestion::Valley,
        }
    }
}

/// Which point of the LR range test's curve to suggest (fastai's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LrSuggestion {
    /// Two fifths into the longest valley of the curve (fastai's default).
    Valley,
    /// Where the smoothed loss falls fastest against log(lr).
    Steepest,
    /// One tenth of the learning rate at the smoothed loss's minimum.
    Minimum,
}

/// How the learning rate moves during training (torch.optim.lr_scheduler).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrScheduleSpec {
    /// The main schedule.
    pub kind: LrScheduleKind,
    /// Linear warmup (torch's LinearLR, stepped per epoch): the LR is scaled
    /// from `start_factor` up to 1 over `epochs` epochs, multiplying the main
    /// schedule (as ChainedScheduler does). None: no warmup.
    pub warmup: Option<Warmup>,
}

/// A linear warmup before the main schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Warmup {
    /// How many epochs the warmup takes.
    pub epochs: u32,
    /// The LR factor in the first epoch, in (0, 1].
    pub start_factor: f64,
}

impl Warmup {
    /// LinearLR's `start_factor`.
    pub const DEFAULT_START_FACTOR: f64 = 1.0 / 3.0;
}

/// The main learning-rate schedules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LrScheduleKind {
    /// The optimizer's learning rate throughout.
    Constant,
    /// StepLR, per epoch: lr * gamma^(epoch / step_size).
    Step {
        /// Epochs between decays.
        step_size: u32,
        /// Factor per decay.
        gamma: f64,
    },
    /// ExponentialLR, per epoch.
    Exponential {
        /// Factor per epoch.
        gamma: f64,
    },
    /// CosineAnnealingLR, per epoch.
    Cosine {
        /// Epochs of one half-cosine.
        t_max: u32,
        /// The learning rate it anneals to.
        eta_min: f64,
    },
    /// ReduceLROnPlateau, per epoch, on a logged metric.
    ReduceOnPlateau {
        /// The metric watched.
        monitor: Metric,
        /// true: "max" mode (the metric should rise); false: "min".
        mode_max: bool,
        /// The LR is multiplied by it on a plateau.
        factor: f64,
        /// Epochs without improvement before reducing.
        patience: u32,
        /// The least change that counts as an improvement.
        threshold: f64,
        /// true: "rel" threshold mode; false: "abs".
        threshold_rel: bool,
        /// Epochs to wait after a reduction before watching again.
        cooldown: u32,
        /// The learning rate never goes below it.
        min_lr: f64,
        /// Reductions smaller than this are skipped.
        eps: f64,
    },
    /// OneCycleLR, per batch. `total_steps` is epochs x batches per epoch.
    OneCycle {
        /// The peak learning rate.
        max_lr: f64,
        /// Share of the steps spent rising.
        pct_start: f64,
        /// true: "cos" annealing; false: "linear".
        anneal_cos: bool,
        /// The starting LR is `max_lr / div_factor`.
        div_factor: f64,
        /// The final LR is the starting LR / `final_div_factor`.
        final_div_factor: f64,
        /// torch's third phase: back to the starting LR, then down to the final LR.
        three_phase: bool,
        /// Cycle SGD momentum or Adam/NAdam beta1 inversely to the LR.
        cycle_momentum: bool,
        /// Momentum at the LR's peak.
        base_momentum: f64,
        /// Momentum at the LR's lowest.
        max_momentum: f64,
    },
}

/// torch.optim.lr_scheduler's defaults for the settings left unset.
impl LrScheduleKind {
    /// StepLR's `gamma`.
    pub const DEFAULT_STEP_GAMMA: f64 = 0.1;
    /// ReduceLROnPlateau's `factor`.
    pub const DEFAULT_PLATEAU_FACTOR: f64 = 0.1;
    /// ReduceLROnPlateau's `patience`.
    pub const DEFAULT_PLATEAU_PATIENCE: u32 = 10;
    /// ReduceLROnPlateau's `threshold`.
    pub const DEFAULT_PLATEAU_THRESHOLD: f64 = 1e-4;
    /// ReduceLROnPlateau's `eps`.
    pub const DEFAULT_PLATEAU_EPS: f64 = 1e-8;
    /// OneCycleLR's `pct_start`.
    pub const DEFAULT_ONE_CYCLE_PCT_START: f64 = 0.3;
    /// OneCycleLR's `base_momentum`.
    pub const DEFAULT_ONE_CYCLE_BASE_MOMENTUM: f64 = 0.85;
    /// OneCycleLR's `max_momentum`.
    pub const DEFAULT_ONE_CYCLE_MAX_MOMENTUM: f64 = 0.95;
    /// OneCycleLR's `div_factor`.
    pub const DEFAULT_ONE_CYCLE_DIV_FACTOR: f64 = 25.0;
    /// OneCycleLR's `final_div_factor`.
    pub const DEFAULT_ONE_CYCLE_FINAL_DIV_FACTOR: f64 = 1e4;
    /// OneCycleLR's `cycle_momentum`.
    pub const DEFAULT_ONE_CYCLE_CYCLE_MOMENTUM: bool = true;
}

pub(super) fn validate_lr_range_test(test: Option<&pb::LrRangeTest>) -> Result<LrRangeSpec> {
    let default = LrRangeSpec::default();
    let Some(t) = test else {
        return Ok(default);
    };
    let f = |name: &str| format!("spec.lr_range_test.{name}");
    let start_lr = positive(&f("start_lr"), t.start_lr, default.start_lr)?;
    let end_lr = positive(&f("end_lr"), t.end_lr, default.end_lr)?;
    ensure(end_lr > start_lr, &f("end_lr"), "must be above start_lr")?;
    let iterations = t.iterations.unwrap_or(default.iterations);
    let (min, max) = (LrRangeSpec::MIN_ITERATIONS, LrRangeSpec::MAX_ITERATIONS);
    ensure(
        (min..=max).contains(&iterations),
        &f("iterations"),
        &format!("must be between {min} and {max}"),
    )?;
    let suggestion = match pb::LrSuggestion::try_from(t.suggestion) {
        Ok(pb::LrSuggestion::Default | pb::LrSuggestion::Valley) => LrSuggestion::Valley,
        Ok(pb::LrSuggestion::Steepest) => LrSuggestion::Steepest,
        Ok(pb::LrSuggestion::Minimum) => LrSuggestion::Minimum,
        Err(_) => return Err(unknown_enum(&f("suggestion"), t.suggestion)),
    };
    Ok(LrRangeSpec {
        start_lr,
        end_lr,
        iterations,
        stop_on_divergence: t.stop_on_divergence.unwrap_or(default.stop_on_divergence),
        suggestion,
    })
}

pub(super) fn validate_schedule(
    schedule: Option<&pb::LrSchedule>,
    task: Task,
    epochs: u32,
) -> Result<LrScheduleSpec> {
    use pb::lr_schedule::Kind;
    let default = pb::LrSchedule::default();
    let schedule = schedule.unwrap_or(&default);
    let f = |name: &str| format!("spec.training.lr_schedule.{name}");
    let kind = match &schedule.kind {
        None | Some(Kind::Constant(_)) => LrScheduleKind::Constant,
        Some(Kind::Step(st)) => {
            ensure(
                st.step_size >= 1,
                &f("step.step_size"),
                "required, at least 1",
            )?;
            LrScheduleKind::Step {
                step_size: st.step_size,
                gamma: positive(
                    &f("step.gamma"),
                    st.gamma,
                    LrScheduleKind::DEFAULT_STEP_GAMMA,
                )?,
            }
        }
        Some(Kind::Exponential(e)) => {
            ensure(
                e.gamma > 0.0 && e.gamma <= 1.0,
                &f("exponential.gamma"),
                "required, in (0, 1]",
            )?;
            LrScheduleKind::Exponential { gamma: e.gamma }
        }
        Some(Kind::Cosine(c)) => LrScheduleKind::Cosine {
            // Unset: one half-cosine over the whole run.
            t_max: if c.t_max == 0 { epochs } else { c.t_max },
            eta_min: non_negative(&f("cosine.eta_min"), c.eta_min)?,
        },
        Some(Kind::ReduceOnPlateau(p)) => reduce_on_plateau(p, task)?,
        Some(Kind::OneCycle(o)) => one_cycle(o)?,
    };
    let warmup = schedule
        .warmup
        .as_ref()
        .map(|w| validate_warmup(w, &kind))
        .transpose()?;
    Ok(LrScheduleSpec { kind, warmup })
}

/// ReduceLROnPlateau's settings, torch's defaults for those unset.
fn reduce_on_plateau(p: &pb::ReduceLrOnPlateau, task: Task) -> Result<LrScheduleKind> {
    let f = |name: &str| format!("spec.training.lr_schedule.{name}");
    let monitor = metric(&f("reduce_on_plateau.monitor"), &p.monitor, task)?;
    let factor = p.factor.unwrap_or(LrScheduleKind::DEFAULT_PLATEAU_FACTOR);
    ensure(
        factor > 0.0 && factor < 1.0,
        &f("reduce_on_plateau.factor"),
        "must be in (0, 1)",
    )?;
    Ok(LrScheduleKind::ReduceOnPlateau {
        monitor,
        mode_max: mode_max(&f("reduce_on_plateau.mode"), p.mode, monitor)?,
        factor,
        patience: p
            .patience
            .unwrap_or(LrScheduleKind::DEFAULT_PLATEAU_PATIENCE),
        threshold: non_negative(
            &f("reduce_on_plateau.threshold"),
            p.threshold
                .unwrap_or(LrScheduleKind::DEFAULT_PLATEAU_THRESHOLD),
        )?,
        threshold_rel: match pb::ThresholdMode::try_from(p.threshold_mode) {
            Ok(pb::ThresholdMode::ThresholdDefault | pb::ThresholdMode::ThresholdRel) => true,
            Ok(pb::ThresholdMode::ThresholdAbs) => false,
            Err(_) => {
                return Err(unknown_enum(
                    &f("reduce_on_plateau.threshold_mode"),
                    p.threshold_mode,
                ))
            }
        },
        cooldown: p.cooldown,
        min_lr: non_negative(&f("reduce_on_plateau.min_lr"), p.min_lr)?,
        eps: non_negative(
            &f("reduce_on_plateau.eps"),
            p.eps.unwrap_or(LrScheduleKind::DEFAULT_PLATEAU_EPS),
        )?,
    })
}

/// OneCycleLR's settings, torch's defaults for those unset.
fn one_cycle(o: &pb::OneCycleLr) -> Result<LrScheduleKind> {
    let f = |name: &str| format!("spec.training.lr_schedule.{name}");
    let pct_start = o
        .pct_start
        .unwrap_or(LrScheduleKind::DEFAULT_ONE_CYCLE_PCT_START);
    ensure(
        pct_start > 0.0 && pct_start < 1.0,
        &f("one_cycle.pct_start"),
        "must be in (0, 1)",
    )?;
    ensure(
        !o.three_phase || pct_start <= 0.5,
        &f("one_cycle.pct_start"),
        "must be at most 0.5 with three_phase (the phases would overlap)",
    )?;
    let base_momentum = beta(
        &f("one_cycle.base_momentum"),
        o.base_momentum,
        LrScheduleKind::DEFAULT_ONE_CYCLE_BASE_MOMENTUM,
    )?;
    let max_momentum = beta(
        &f("one_cycle.max_momentum"),
        o.max_momentum,
        LrScheduleKind::DEFAULT_ONE_CYCLE_MAX_MOMENTUM,
    )?;
    ensure(
        base_momentum <= max_momentum,
        &f("one_cycle.base_momentum"),
        "must not exceed max_momentum",
    )?;
    Ok(LrScheduleKind::OneCycle {
        max_lr: positive(&f("one_cycle.max_lr"), Some(o.max_lr), 0.0)?,
        pct_start,
        anneal_cos: match pb::Anneal::try_from(o.anneal_strategy) {
            Ok(pb::Anneal::Default | pb::Anneal::Cos) => true,
            Ok(pb::Anneal::Linear) => false,
            Err(_) => {
                return Err(unknown_enum(
                    &f("one_cycle.anneal_strategy"),
                    o.anneal_strategy,
                ))
            }
        },
        div_factor: positive(
            &f("one_cycle.div_factor"),
            o.div_factor,
            LrScheduleKind::DEFAULT_ONE_CYCLE_DIV_FACTOR,
        )?,
        final_div_factor: positive(
            &f("one_cycle.final_div_factor"),
            o.final_div_factor,
            LrScheduleKind::DEFAULT_ONE_CYCLE_FINAL_DIV_FACTOR,
        )?,
        three_phase: o.three_phase,
        cycle_momentum: o
            .cycle_momentum
            .unwrap_or(LrScheduleKind::DEFAULT_ONE_CYCLE_CYCLE_MOMENTUM),
        base_momentum,
        max_momentum,
    })
}

/// A warmup before the main schedule, which must not be one_cycle.
fn validate_warmup(w: &pb::Warmup, kind: &LrScheduleKind) -> Result<Warmup> {
    let f = |name: &str| format!("spec.training.lr_schedule.{name}");
    ensure(
        !matches!(kind, LrScheduleKind::OneCycle { .. }),
        &f("warmup"),
        "one_cycle has its own warm-up phase (pct_start)",
    )?;
    ensure(w.epochs >= 1, &f("warmup.epochs"), "required, at least 1")?;
    let start_factor = w.start_factor.unwrap_or(Warmup::DEFAULT_START_FACTOR);
    ensure(
        start_factor > 0.0 && start_factor <= 1.0,
        &f("warmup.start_factor"),
        "must be in (0, 1]",
    )?;
    Ok(Warmup {
        epochs: w.epochs,
        start_factor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::testing::{assert_training_errors, err, minimal};
    use crate::spec::JobKind;
    use crate::spec::JobSpec;

    #[test]
    fn lr_range_test_defaults_are_fastais_and_bad_settings_name_the_field() {
        let spec = JobSpec::from_proto(&minimal()).unwrap();
        assert_eq!(spec.kind, JobKind::Train);
        assert_eq!(spec.lr_range_test, LrRangeSpec::default());
        assert_eq!(
            (spec.lr_range_test.start_lr, spec.lr_range_test.end_lr),
            (1e-7, 10.0)
        );
        assert_eq!(spec.lr_range_test.iterations, 100);
        assert!(!spec.training.auto_learning_rate);

        let with = |t: pb::LrRangeTest| pb::JobSpec {
            kind: pb::JobKind::LrRangeTest as i32,
            lr_range_test: Some(t),
            ..minimal()
        };
        let ok = JobSpec::from_proto(&with(pb::LrRangeTest {
            iterations: Some(50),
            suggestion: pb::LrSuggestion::Steepest as i32,
            stop_on_divergence: Some(false),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(ok.kind, JobKind::LrRangeTest);
        assert_eq!(ok.lr_range_test.iterations, 50);
        assert_eq!(ok.lr_range_test.suggestion, LrSuggestion::Steepest);
        assert!(!ok.lr_range_test.stop_on_divergence);
        assert_eq!(
            err(&with(pb::LrRangeTest {
                start_lr: Some(1.0),
                end_lr: Some(0.5),
                ..Default::default()
            })),
            "spec.lr_range_test.end_lr: must be above start_lr"
        );
        assert_eq!(
            err(&with(pb::LrRangeTest {
                iterations: Some(5),
                ..Default::default()
            })),
            "spec.lr_range_test.iterations: must be between 6 and 10000"
        );
        assert_eq!(
            err(&pb::JobSpec {
                kind: 9,
                ..minimal()
            }),
            "spec.kind: unknown value 9"
        );
    }

    /// One bad value per schedule field, each refused with its path.
    #[test]
    fn schedule_errors_name_the_field() {
        use pb::lr_schedule;
        let sched = |kind: lr_schedule::Kind| pb::TrainingSpec {
            lr_schedule: Some(pb::LrSchedule {
                kind: Some(kind),
                warmup: None,
            }),
            ..Default::default()
        };
        let cases: Vec<(pb::TrainingSpec, &str)> = vec![
            (
                sched(lr_schedule::Kind::Step(pb::StepLr::default())),
                "spec.training.lr_schedule.step.step_size: required, at least 1",
            ),
            (
                sched(lr_schedule::Kind::Exponential(pb::ExponentialLr {
                    gamma: 1.5,
                })),
                "spec.training.lr_schedule.exponential.gamma: required, in (0, 1]",
            ),
            (
                sched(lr_schedule::Kind::ReduceOnPlateau(pb::ReduceLrOnPlateau {
                    monitor: "val_r2".into(),
                    ..Default::default()
                })),
                "spec.training.lr_schedule.reduce_on_plateau.monitor:",
            ),
            (
                sched(lr_schedule::Kind::OneCycle(pb::OneCycleLr::default())),
                "spec.training.lr_schedule.one_cycle.max_lr: must be > 0",
            ),
        ];
        assert_training_errors(cases);
    }

    /// Settings left unset get torch's values.
    #[test]
    fn schedule_defaults_are_torchs() {
        use pb::lr_schedule::Kind;
        let schedule = |kind: Kind, warmup: Option<pb::Warmup>| {
            let mut s = minimal();
            s.training = Some(pb::TrainingSpec {
                epochs: 40,
                lr_schedule: Some(pb::LrSchedule {
                    kind: Some(kind),
                    warmup,
                }),
                ..Default::default()
            });
            JobSpec::from_proto(&s).unwrap().training.lr_schedule
        };
        let step = schedule(
            Kind::Step(pb::StepLr {
                step_size: 5,
                ..Default::default()
            }),
            Some(pb::Warmup {
                epochs: 2,
                ..Default::default()
            }),
        );
        assert_eq!(
            step.kind,
            LrScheduleKind::Step {
                step_size: 5,
                gamma: 0.1
            }
        );
        assert_eq!(
            step.warmup,
            Some(Warmup {
                epochs: 2,
                start_factor: 1.0 / 3.0
            })
        );
        assert_eq!(
            schedule(Kind::Cosine(pb::CosineLr::default()), None).kind,
            LrScheduleKind::Cosine {
                t_max: 40,
                eta_min: 0.0
            }
        );
        assert_eq!(
            schedule(
                Kind::ReduceOnPlateau(pb::ReduceLrOnPlateau::default()),
                None
            )
            .kind,
            LrScheduleKind::ReduceOnPlateau {
                monitor: Metric::ValLoss,
                mode_max: false,
                factor: 0.1,
                patience: 10,
                threshold: 1e-4,
                threshold_rel: true,
                cooldown: 0,
                min_lr: 0.0,
                eps: 1e-8,
            }
        );
        let one_cycle = pb::OneCycleLr {
            max_lr: 0.1,
            ..Default::default()
        };
        assert_eq!(
            schedule(Kind::OneCycle(one_cycle), None).kind,
            LrScheduleKind::OneCycle {
                max_lr: 0.1,
                pct_start: 0.3,
                anneal_cos: true,
                div_factor: 25.0,
                final_div_factor: 1e4,
                three_phase: false,
                cycle_momentum: true,
                base_momentum: 0.85,
                max_momentum: 0.95,
            }
        );
    }
}
