//! Learning-rate schedules, number for number as `torch.optim.lr_scheduler`
//! (torch 2.9) computes them. Pure arithmetic: no burn here.
//!
//! The scheduler holds the optimizer's current learning rate the way torch's
//! `param_group["lr"]` does and updates it with the *same* formulas torch's
//! `get_lr` applies when `step()` is called without an epoch argument, in the
//! same order of floating-point operations. That matters: torch's schedules
//! are recursive (each step multiplies the current LR), and its recursive
//! cosine differs from the closed form once the run goes past `T_max`.
//!
//! When each schedule steps:
//!
//! | kind | torch class | steps |
//! |---|---|---|
//! | `Constant` | (none) | never |
//! | `Step` | `StepLR` | after every epoch |
//! | `Exponential` | `ExponentialLR` | after every epoch |
//! | `Cosine` | `CosineAnnealingLR` | after every epoch (runs on past `t_max`, rising again with period `2 * t_max`) |
//! | `ReduceOnPlateau` | `ReduceLROnPlateau` | after every epoch, on the monitored metric |
//! | `OneCycle` | `OneCycleLR` | after every optimizer step (batch) |
//!
//! torch steps an epoch scheduler after each epoch, so the LR used during
//! epoch `e` (1-based) is the LR after `e - 1` scheduler steps: call
//! [`LrScheduler::lr`] before the epoch's batches and
//! [`LrScheduler::after_epoch`] after them.
//!
//! Warmup is torch's `LinearLR(start_factor, end_factor=1.0,
//! total_iters=warmup.epochs)`, stepped per epoch and applied before the main
//! schedule in each step, exactly as
//! `ChainedScheduler([LinearLR(..), main])` does (both schedulers built on the
//! same optimizer, the warmup first). With `ReduceOnPlateau`, which
//! `ChainedScheduler` refuses, the two are stepped by hand in that order:
//! `warmup.step(); plateau.step(metric)`. With `OneCycle` the warmup is
//! ignored: OneCycleLR sets the LR outright every batch (it is not
//! chainable in torch) and has its own warm-up phase (`pct_start`); a spec
//! validator should reject that combination.
//!
//! ReduceOnPlateau and a missing metric: `None` is treated as NaN, and torch
//! treats NaN as it does any value that is not an improvement (every
//! comparison with NaN is false), so the epoch counts as a bad epoch.
//!
//! Degenerate parameters that torch rejects or divides by zero on
//! (`step_size == 0`, `t_max == 0`, `epochs * steps_per_epoch == 0`) are
//! clamped to 1 here so that nothing panics; a spec validator should reject
//! them. `Warmup { epochs: 0, .. }` is no warmup at all (torch's
//! `LinearLR(total_iters=0)` would scale the LR by `start_factor` forever).

use std::f64::consts::PI;

use kiln_core::spec::{LrScheduleKind, LrScheduleSpec, Metric};
use serde::{Deserialize, Serialize};

/// The learning rate (and, for 1cycle, the momentum) for every optimizer step.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LrScheduler {
    /// torch's `param_group["lr"]`: the LR for the next optimizer step.
    lr: f64,
    /// torch's `base_lrs[0]` (`initial_lr`): the optimizer's LR before any
    /// scheduler touched it.
    base_lr: f64,
    /// Epoch steps taken (torch's `last_epoch` of the epoch schedulers).
    epoch: u64,
    warmup: Option<LinearWarmup>,
    main: Main,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
struct LinearWarmup {
    start_factor: f64,
    total_iters: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
enum Main {
    Constant,
    Step { step_size: u64, gamma: f64 },
    Exponential { gamma: f64 },
    Cosine { t_max: u64, eta_min: f64 },
    Plateau(Plateau),
    OneCycle(OneCycle),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Plateau {
    monitor: Metric,
    mode_max: bool,
    factor: f64,
    patience: u64,
    threshold: f64,
    threshold_rel: bool,
    cooldown: u64,
    min_lr: f64,
    eps: f64,
    best: f64,
    num_bad_epochs: u64,
    cooldown_counter: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct OneCycle {
    /// `(end_step, start_lr, end_lr, start_momentum, end_momentum)` per phase.
    phases: Vec<Phase>,
    anneal_cos: bool,
    cycle_momentum: bool,
    total_steps: u64,
    /// Optimizer steps taken (torch's `last_epoch` for OneCycleLR).
    step: u64,
    momentum: f64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
struct Phase {
    end_step: f64,
    start_lr: f64,
    end_lr: f64,
    start_momentum: f64,
    end_momentum: f64,
}

impl Plateau {
    /// ReduceLROnPlateau's state before its first step, from a
    /// `ReduceOnPlateau` schedule kind.
    fn new(kind: &LrScheduleKind) -> Self {
        let LrScheduleKind::ReduceOnPlateau {
            monitor,
            mode_max,
            factor,
            patience,
            threshold,
            threshold_rel,
            cooldown,
            min_lr,
            eps,
        } = *kind
        else {
            unreachable!("Plateau::new takes a ReduceOnPlateau kind")
        };
        Plateau {
            monitor,
            mode_max,
            factor,
            patience: u64::from(patience),
            threshold,
            threshold_rel,
            cooldown: u64::from(cooldown),
            min_lr,
            eps,
            best: if mode_max {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            },
            num_bad_epochs: 0,
            cooldown_counter: 0,
        }
    }
}

impl OneCycle {
    /// OneCycleLR's phases and state before its first step, from a
    /// `OneCycle` schedule kind.
    fn new(kind: &LrScheduleKind, steps_per_epoch: usize, epochs: u32) -> Self {
        let LrScheduleKind::OneCycle {
            max_lr,
            pct_start,
            anneal_cos,
            div_factor,
            final_div_factor,
            three_phase,
            cycle_momentum,
            base_momentum,
            max_momentum,
        } = *kind
        else {
            unreachable!("OneCycle::new takes a OneCycle kind")
        };

        let total_steps = (steps_per_epoch.max(1) as u64 * u64::from(epochs)).max(1);
        let total = total_steps as f64;
        let initial_lr = max_lr / div_factor;
        let min_lr = initial_lr / final_div_factor;
        let phases = if three_phase {
            vec![
                Phase {
                    end_step: pct_start * total - 1.0,
                    start_lr: initial_lr,
                    end_lr: max_lr,
                    start_momentum: max_momentum,
                    end_momentum: base_momentum,
                },
                Phase {
                    end_step: 2.0 * pct_start * total - 2.0,
                    start_lr: max_lr,
                    end_lr: initial_lr,
                    start_momentum: base_momentum,
                    end_momentum: max_momentum,
                },
                Phase {
                    end_step: total - 1.0,
                    start_lr: initial_lr,
                    end_lr: min_lr,
                    start_momentum: max_momentum,
                    end_momentum: max_momentum,
                },
            ]
        } else {
            vec![
                Phase {
                    end_step: pct_start * total - 1.0,
                    start_lr: initial_lr,
                    end_lr: max_lr,
                    start_momentum: max_momentum,
                    end_momentum: base_momentum,
                },
                Phase {
                    end_step: total - 1.0,
                    start_lr: max_lr,
                    end_lr: min_lr,
                    start_momentum: base_momentum,
                    end_momentum: max_momentum,
                },
            ]
        };
        OneCycle {
            phases,
            anneal_cos,
            cycle_momentum,
            total_steps,
            step: 0,
            momentum: max_momentum,
        }
    }
}

impl LrScheduler {
    /// `base_lr`: the optimizer's learning rate. `steps_per_epoch`: optimizer
    /// steps per epoch (>= 1). `epochs`: the epoch budget (OneCycle's
    /// `total_steps = epochs * steps_per_epoch`). OneCycle ignores `base_lr`:
    /// as in torch, its LR starts at `max_lr / div_factor`.
    pub fn new(spec: &LrScheduleSpec, base_lr: f64, steps_per_epoch: usize, epochs: u32) -> Self {
        let main = match spec.kind {
            LrScheduleKind::Constant => Main::Constant,
            LrScheduleKind::Step { step_size, gamma } => Main::Step {
                step_size: u64::from(step_size.max(1)),
                gamma,
            },
            LrScheduleKind::Exponential { gamma } => Main::Exponential { gamma },
            LrScheduleKind::Cosine { t_max, eta_min } => Main::Cosine {
                t_max: u64::from(t_max.max(1)),
                eta_min,
            },
            LrScheduleKind::ReduceOnPlateau { .. } => Main::Plateau(Plateau::new(&spec.kind)),
            LrScheduleKind::OneCycle { .. } => {
                Main::OneCycle(OneCycle::new(&spec.kind, steps_per_epoch, epochs))
            }
        };
        let warmup = match (spec.warmup, &main) {
            (_, Main::OneCycle(_)) => None,
            (Some(w), _) if w.epochs > 0 => Some(LinearWarmup {
                start_factor: w.start_factor,
                total_iters: u64::from(w.epochs),
            }),
            _ => None,
        };
        let mut s = LrScheduler {
            lr: base_lr,
            base_lr,
            epoch: 0,
            warmup,
            main,
        };
        // torch's constructors take an "initial step" (last_epoch -1 -> 0).
        // LinearLR's scales the LR by start_factor; OneCycleLR's sets it to
        // max_lr / div_factor (and the momentum to max_momentum); the others
        // leave it as it is.
        if let Some(w) = s.warmup {
            s.lr *= w.start_factor;
        }
        if let Main::OneCycle(oc) = &mut s.main {
            s.lr = oc.compute();
        }
        s
    }

    /// The LR to use for the next optimizer step.
    pub fn lr(&self) -> f64 {
        self.lr
    }

    /// For OneCycle with `cycle_momentum`: the momentum (SGD) or beta1 (Adam,
    /// NAdam) for the next optimizer step. Otherwise None: the optimizer's
    /// own momentum stands.
    pub fn momentum(&self) -> Option<f64> {
        match &self.main {
            Main::OneCycle(oc) if oc.cycle_momentum => Some(oc.momentum),
            _ => None,
        }
    }

    /// Call after every optimizer step. OneCycle advances here; the epoch
    /// schedules ignore it. Past OneCycle's `total_steps` (where torch would
    /// raise) the LR and momentum stay at their values for step
    /// `total_steps`.
    pub fn after_batch(&mut self) {
        if let Main::OneCycle(oc) = &mut self.main {
            if oc.step < oc.total_steps {
                oc.step += 1;
                self.lr = oc.compute();
            }
        }
    }

    /// Call after every epoch with a lookup of that epoch's metrics.
    /// Warmup and the epoch schedules advance here (warmup first, as
    /// `ChainedScheduler([warmup, main])`); OneCycle ignores it.
    /// ReduceOnPlateau reads its monitor: a `None` (or NaN) value is a bad
    /// epoch, as NaN is in torch.
    pub fn after_epoch(&mut self, metric: &dyn Fn(Metric) -> Option<f64>) {
        if matches!(self.main, Main::OneCycle(_)) {
            return;
        }
        self.epoch += 1;
        let e = self.epoch;
        if let Some(w) = self.warmup {
            // LinearLR.get_lr with end_factor = 1.0 (last_epoch >= 1 here).
            if e <= w.total_iters {
                let end_factor = 1.0;
                self.lr *= 1.0
                    + (end_factor - w.start_factor)
                        / (w.total_iters as f64 * w.start_factor
                            + (e - 1) as f64 * (end_factor - w.start_factor));
            }
        }
        match &mut self.main {
            Main::Constant | Main::OneCycle(_) => {}
            Main::Step { step_size, gamma } => {
                if e.is_multiple_of(*step_size) {
                    self.lr *= *gamma;
                }
            }
            Main::Exponential { gamma } => self.lr *= *gamma,
            Main::Cosine { t_max, eta_min } => {
                let (t, eta_min) = (*t_max, *eta_min);
                // Python's `(e - 1 - T) % (2 T) == 0`, with Python's modulo.
                if ((e as i128) - 1 - (t as i128)).rem_euclid(2 * t as i128) == 0 {
                    self.lr += (self.base_lr - eta_min) * (1.0 - (PI / t as f64).cos()) / 2.0;
                } else {
                    self.lr = (1.0 + (PI * e as f64 / t as f64).cos())
                        / (1.0 + (PI * (e - 1) as f64 / t as f64).cos())
                        * (self.lr - eta_min)
                        + eta_min;
                }
            }
            Main::Plateau(p) => {
                let current = metric(p.monitor).unwrap_or(f64::NAN);
                p.step(current, &mut self.lr);
            }
        }
    }

    /// Whether the schedule steps per batch (OneCycle) or per epoch (all
    /// others, and the warmup).
    pub fn per_batch(&self) -> bool {
        matches!(self.main, Main::OneCycle(_))
    }
}

impl Plateau {
    fn is_better(&self, a: f64) -> bool {
        match (self.mode_max, self.threshold_rel) {
            (false, true) => a < self.best * (1.0 - self.threshold),
            (false, false) => a < self.best - self.threshold,
            (true, true) => a > self.best * (self.threshold + 1.0),
            (true, false) => a > self.best + self.threshold,
        }
    }

    /// ReduceLROnPlateau.step(current).
    fn step(&mut self, current: f64, lr: &mut f64) {
        if self.is_better(current) {
            self.best = current;
            self.num_bad_epochs = 0;
        } else {
            self.num_bad_epochs += 1;
        }
        if self.cooldown_counter > 0 {
            self.cooldown_counter -= 1;
            self.num_bad_epochs = 0; // bad epochs in cooldown do not count
        }
        if self.num_bad_epochs > self.patience {
            let old_lr = *lr;
            let scaled = old_lr * self.factor;
            // Python's max(scaled, min_lr): the first unless the second is larger.
            let new_lr = if self.min_lr > scaled {
                self.min_lr
            } else {
                scaled
            };
            if old_lr - new_lr > self.eps {
                *lr = new_lr;
            }
            self.cooldown_counter = self.cooldown;
            self.num_bad_epochs = 0;
        }
    }
}

impl OneCycle {
    /// OneCycleLR.get_lr at `self.step`; updates the momentum, returns the LR.
    fn compute(&mut self) -> f64 {
        let step = self.step as f64;
        let last = self.phases.len() - 1;
        let mut start_step = 0.0;
        for (i, phase) in self.phases.iter().enumerate() {
            if step <= phase.end_step || i == last {
                let span = phase.end_step - start_step;
                // torch raises ZeroDivisionError here; only degenerate
                // pct_start values get here, and then at the phase's end.
                let pct = if span == 0.0 {
                    1.0
                } else {
                    (step - start_step) / span
                };
                let lr = self.anneal(phase.start_lr, phase.end_lr, pct);
                if self.cycle_momentum {
                    self.momentum = self.anneal(phase.start_momentum, phase.end_momentum, pct);
                }
                return lr;
            }
            start_step = phase.end_step;
        }
        unreachable!("the last phase always matches")
    }

    fn anneal(&self, start: f64, end: f64, pct: f64) -> f64 {
        if self.anneal_cos {
            let cos_out = (PI * pct).cos() + 1.0;
            end + (start - end) / 2.0 * cos_out
        } else {
            (end - start) * pct + start
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::spec::Warmup;

    fn spec(kind: LrScheduleKind) -> LrScheduleSpec {
        LrScheduleSpec { kind, warmup: None }
    }

    fn no_metric(_: Metric) -> Option<f64> {
        None
    }

    /// LR used in epochs 1..=n.
    fn epoch_lrs(s: &mut LrScheduler, n: usize) -> Vec<f64> {
        (0..n)
            .map(|_| {
                let lr = s.lr();
                s.after_epoch(&no_metric);
                lr
            })
            .collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1e-300)
    }

    #[test]
    fn constant_never_moves() {
        let mut s = LrScheduler::new(&spec(LrScheduleKind::Constant), 0.1, 10, 50);
        assert!(!s.per_batch());
        for _ in 0..20 {
            s.after_batch();
        }
        assert!(epoch_lrs(&mut s, 50).iter().all(|&lr| lr == 0.1));
        assert_eq!(s.momentum(), None);
    }

    #[test]
    fn step_decays_every_step_size_epochs() {
        let kind = LrScheduleKind::Step {
            step_size: 3,
            gamma: 0.5,
        };
        let mut s = LrScheduler::new(&spec(kind), 1.0, 7, 10);
        let lrs = epoch_lrs(&mut s, 10);
        assert_eq!(lrs, [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125]);
    }

    #[test]
    fn exponential_multiplies_each_epoch() {
        let kind = LrScheduleKind::Exponential { gamma: 0.9 };
        let mut s = LrScheduler::new(&spec(kind), 0.2, 1, 30);
        let lrs = epoch_lrs(&mut s, 30);
        for (e, lr) in lrs.iter().enumerate() {
            assert!(close(*lr, 0.2 * 0.9f64.powi(e as i32)), "{e}: {lr}");
        }
    }

    #[test]
    fn cosine_reaches_eta_min_at_t_max_and_rises_after() {
        let kind = LrScheduleKind::Cosine {
            t_max: 10,
            eta_min: 0.01,
        };
        let mut s = LrScheduler::new(&spec(kind), 0.1, 1, 41);
        let lrs = epoch_lrs(&mut s, 41);
        assert_eq!(lrs[0], 0.1);
        assert!(close(lrs[10], 0.01));
        assert!(lrs[11] > lrs[10], "rises again past t_max");
        assert!((lrs[20] - 0.1).abs() < 1e-12, "back to base at 2 t_max");
        assert!((lrs[30] - 0.01).abs() < 1e-12);
        for w in lrs[..=10].windows(2) {
            assert!(w[1] < w[0]);
        }
    }

    #[test]
    fn warmup_ramps_linearly_to_the_main_schedule() {
        let s = LrScheduleSpec {
            kind: LrScheduleKind::Constant,
            warmup: Some(Warmup {
                epochs: 4,
                start_factor: 0.2,
            }),
        };
        let mut s = LrScheduler::new(&s, 1.0, 3, 10);
        let lrs = epoch_lrs(&mut s, 8);
        let want = [0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0, 1.0];
        for (lr, w) in lrs.iter().zip(want) {
            assert!(close(*lr, w), "{lrs:?}");
        }
    }

    #[test]
    fn warmup_is_ignored_by_one_cycle() {
        let kind = LrScheduleKind::OneCycle {
            max_lr: 1.0,
            pct_start: 0.3,
            anneal_cos: true,
            div_factor: 25.0,
            final_div_factor: 1e4,
            three_phase: false,
            cycle_momentum: false,
            base_momentum: 0.85,
            max_momentum: 0.95,
        };
        let plain = LrScheduler::new(&spec(kind), 0.1, 5, 4);
        let warm = LrScheduler::new(
            &LrScheduleSpec {
                kind,
                warmup: Some(Warmup {
                    epochs: 2,
                    start_factor: 0.1,
                }),
            },
            0.1,
            5,
            4,
        );
        assert_eq!(plain.lr(), warm.lr());
        assert_eq!(plain.momentum(), None);
    }

    fn plateau(patience: u32, cooldown: u32) -> LrScheduleKind {
        LrScheduleKind::ReduceOnPlateau {
            monitor: Metric::ValLoss,
            mode_max: false,
            factor: 0.5,
            patience,
            threshold: 0.0,
            threshold_rel: false,
            cooldown,
            min_lr: 0.0,
            eps: 1e-8,
        }
    }

    fn run_plateau(kind: LrScheduleKind, metrics: &[Option<f64>]) -> Vec<f64> {
        let mut s = LrScheduler::new(&spec(kind), 1.0, 1, metrics.len() as u32);
        metrics
            .iter()
            .map(|&m| {
                s.after_epoch(&move |which| {
                    assert_eq!(which, Metric::ValLoss);
                    m
                });
                s.lr()
            })
            .collect()
    }

    #[test]
    fn plateau_reduces_when_bad_epochs_exceed_patience() {
        // patience 2: the third bad epoch in a row reduces.
        let lrs = run_plateau(plateau(2, 0), &[Some(1.0), Some(1.0), Some(1.0), Some(1.0)]);
        assert_eq!(lrs, [1.0, 1.0, 1.0, 0.5]);
        // an improvement resets the count.
        let lrs = run_plateau(
            plateau(1, 0),
            &[Some(1.0), Some(2.0), Some(0.5), Some(2.0), Some(2.0)],
        );
        assert_eq!(lrs, [1.0, 1.0, 1.0, 1.0, 0.5]);
    }

    #[test]
    fn plateau_missing_metric_is_a_bad_epoch_like_nan() {
        let a = run_plateau(plateau(0, 0), &[Some(1.0), None, None]);
        let b = run_plateau(plateau(0, 0), &[Some(1.0), Some(f64::NAN), Some(f64::NAN)]);
        assert_eq!(a, [1.0, 0.5, 0.25]);
        assert_eq!(a, b);
    }

    #[test]
    fn plateau_cooldown_ignores_bad_epochs() {
        let lrs = run_plateau(
            plateau(0, 2),
            &[Some(1.0), Some(2.0), Some(2.0), Some(2.0), Some(2.0)],
        );
        assert_eq!(lrs, [1.0, 0.5, 0.5, 0.5, 0.25]);
    }

    #[test]
    fn one_cycle_shape_and_momentum() {
        let kind = LrScheduleKind::OneCycle {
            max_lr: 0.1,
            pct_start: 0.25,
            anneal_cos: true,
            div_factor: 25.0,
            final_div_factor: 1e4,
            three_phase: false,
            cycle_momentum: true,
            base_momentum: 0.85,
            max_momentum: 0.95,
        };
        let mut s = LrScheduler::new(&spec(kind), 123.0, 10, 10);
        assert!(s.per_batch());
        assert!(close(s.lr(), 0.1 / 25.0));
        assert!(close(s.momentum().unwrap(), 0.95));
        let mut lrs = vec![];
        let mut moms = vec![];
        for _ in 0..100 {
            lrs.push(s.lr());
            moms.push(s.momentum().unwrap());
            s.after_batch();
            s.after_epoch(&no_metric); // ignored
        }
        // peak at step pct_start * total - 1 = 24
        let peak = lrs
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        assert_eq!(peak, 24);
        assert!(close(lrs[24], 0.1));
        assert!(close(moms[24], 0.85));
        assert!(close(lrs[99], 0.1 / 25.0 / 1e4));
        assert!(close(moms[99], 0.95));
        // past total_steps it holds still instead of failing
        let held = s.lr();
        s.after_batch();
        assert_eq!(s.lr(), held);
    }
}
