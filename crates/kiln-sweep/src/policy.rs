//! Early termination of weak trials, decided from the trials' per-epoch
//! metric values alone (epochs are the unit of time).
//!
//! - The median stopping rule, as Google Vizier (Golovin et al. 2017) states
//!   it and Ray Tune's `MedianStoppingRule` implements it: at epoch `t` a
//!   trial stops if its best value so far is strictly worse than the median of
//!   the running averages (epochs `grace_period..=t`, as Ray's `_running_mean`)
//!   of the *other* trials that reached epoch `t` (finished or still running),
//!   once at least `min_samples` such trials exist and `t >= grace_period`.
//!   Defaults: `min_samples = 3` (Ray's `min_samples_required=3`);
//!   `grace_period = 1` epoch (Ray's default of 60 is in seconds of
//!   `time_total_s`, which has no meaning in epochs; one epoch is the least
//!   progress a trial reports).
//! - ASHA, asynchronous successive halving (Li et al., "A System for Massively
//!   Parallel Hyperparameter Tuning", MLSys 2020), in its pruning form with
//!   early-stopping rate `s = 0`: rungs at epochs `r * eta^k` (below the
//!   trial's epochs); a trial reaching a rung is promoted only if its value at
//!   that epoch is among the top `floor(n / eta)` of the `n` values recorded at
//!   that rung so far, itself included, and at least the best one is promoted
//!   (Optuna's `SuccessiveHalvingPruner`, whose bootstrap lets the first trial
//!   through). Defaults follow Ray Tune's `ASHAScheduler` (`grace_period=1`,
//!   `reduction_factor=4`) and Optuna (`reduction_factor=4`,
//!   `min_early_stopping_rate=0`); the paper's experiments also use eta = 4
//!   (eta = 3 is Hyperband's and Ray's `HyperBandScheduler`'s default, not
//!   ASHA's).

use std::cmp::Ordering;
use std::collections::BTreeMap;

/// Which way a metric is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// Lower is better (losses, errors).
    Minimize,
    /// Higher is better (accuracy, R²).
    Maximize,
}

impl Goal {
    /// Whether `a` is strictly better than `b`. NaN is never better, and
    /// anything else is better than NaN.
    pub fn better(self, a: f64, b: f64) -> bool {
        match (a.is_nan(), b.is_nan()) {
            (true, _) => false,
            (false, true) => true,
            _ => match self {
                Goal::Minimize => a < b,
                Goal::Maximize => a > b,
            },
        }
    }

    /// Best first, NaN last.
    pub fn order(self, a: f64, b: f64) -> Ordering {
        if self.better(a, b) {
            Ordering::Less
        } else if self.better(b, a) {
            Ordering::Greater
        } else {
            Ordering::Equal
        }
    }

    /// The best of `values` (NaN only when all are NaN or there are none).
    pub fn best(self, values: &[f64]) -> f64 {
        values
            .iter()
            .copied()
            .fold(f64::NAN, |acc, v| if self.better(v, acc) { v } else { acc })
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The median stopping rule's settings (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MedianStopping {
    /// Epochs a trial runs before it can be stopped; the running averages
    /// start here.
    pub grace_period: u32,
    /// Other trials (that reached the epoch) needed for a median.
    pub min_samples: usize,
}

impl Default for MedianStopping {
    fn default() -> Self {
        Self {
            grace_period: 1,
            min_samples: 3,
        }
    }
}

impl MedianStopping {
    /// Whether the trial whose metric per epoch so far is `trial` (index 0 is
    /// epoch 1; it is at epoch `t = trial.len()`) stops, given the other
    /// trials' curves so far.
    pub fn should_stop(&self, goal: Goal, trial: &[f64], others: &[&[f64]]) -> bool {
        let t = trial.len();
        let grace = self.grace_period.max(1) as usize;
        if t == 0 || t < grace {
            return false;
        }
        let averages: Vec<f64> = others
            .iter()
            .filter(|curve| curve.len() >= t)
            .map(|curve| {
                let window = &curve[grace - 1..t];
                window.iter().sum::<f64>() / window.len() as f64
            })
            .filter(|m| !m.is_nan())
            .collect();
        if averages.len() < self.min_samples.max(1) {
            return false;
        }
        let median = median(averages);
        goal.better(median, goal.best(trial))
    }
}

/// ASHA's settings (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asha {
    /// r: the first rung's epoch.
    pub min_epochs: u32,
    /// eta.
    pub reduction_factor: u32,
}

impl Default for Asha {
    fn default() -> Self {
        Self {
            min_epochs: 1,
            reduction_factor: 4,
        }
    }
}

impl Asha {
    /// The rung epochs below `max_epochs`: r, r*eta, r*eta^2, ...
    pub fn rungs(&self, max_epochs: u32) -> Vec<u32> {
        let mut rungs = Vec::new();
        let mut epoch = self.min_epochs.max(1) as u64;
        while epoch < max_epochs as u64 {
            rungs.push(epoch as u32);
            epoch *= self.reduction_factor.max(2) as u64;
        }
        rungs
    }

    /// The rung (0-based) at `epoch`, if one is there below `max_epochs`.
    pub fn rung_at(&self, epoch: u32, max_epochs: u32) -> Option<usize> {
        self.rungs(max_epochs).iter().position(|&e| e == epoch)
    }
}

/// The values recorded at each rung of one sweep.
#[derive(Debug, Default, Clone)]
pub struct AshaRungs {
    values: BTreeMap<usize, Vec<f64>>,
}

impl AshaRungs {
    /// Records `value` at `rung` and says whether the trial is promoted
    /// (continues): `value` must be at least as good as the k-th best value
    /// at the rung, k = max(1, floor(n / eta)), n counting this one.
    pub fn promote(&mut self, asha: &Asha, goal: Goal, rung: usize, value: f64) -> bool {
        let recorded = self.values.entry(rung).or_default();
        recorded.push(value);
        if value.is_nan() {
            return false;
        }
        let mut sorted = recorded.clone();
        sorted.sort_by(|a, b| goal.order(*a, *b));
        let k = (sorted.len() / asha.reduction_factor.max(2) as usize).max(1);
        !goal.better(sorted[k - 1], value)
    }

    /// How many values a rung holds.
    pub fn count(&self, rung: usize) -> usize {
        self.values.get(&rung).map_or(0, Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goal_orders_and_handles_nan() {
        assert!(Goal::Minimize.better(1.0, 2.0));
        assert!(Goal::Maximize.better(2.0, 1.0));
        assert!(Goal::Minimize.better(5.0, f64::NAN));
        assert!(!Goal::Minimize.better(f64::NAN, 5.0));
        assert_eq!(Goal::Minimize.best(&[3.0, 1.0, 2.0]), 1.0);
        assert_eq!(Goal::Maximize.best(&[0.5, f64::NAN, 0.9]), 0.9);
        assert!(Goal::Maximize.best(&[]).is_nan());
    }

    #[test]
    fn median_rule_by_hand() {
        let rule = MedianStopping {
            grace_period: 2,
            min_samples: 3,
        };
        let a = [1.0, 0.8, 0.6, 0.4]; // running means over epochs 2..=3: 0.7
        let b = [1.0, 0.9, 0.9, 0.9]; // 0.9
        let c = [2.0, 1.2, 1.0]; // 1.1
        let short = [0.1]; // only reached epoch 1: not a sample at t = 3
                           // Median of {0.7, 0.9, 1.1} = 0.9.
                           // Best 0.95 > 0.9: worse than the median, stop.
        assert!(rule.should_stop(Goal::Minimize, &[1.5, 1.0, 0.95], &[&a, &b, &c, &short]));
        // Best 0.85 < 0.9: keep.
        assert!(!rule.should_stop(Goal::Minimize, &[1.5, 1.0, 0.85], &[&a, &b, &c]));
        // Equal to the median is not strictly worse.
        assert!(!rule.should_stop(Goal::Minimize, &[1.5, 0.9, 1.0], &[&a, &b, &c]));
        // Inside the grace period: never.
        assert!(!rule.should_stop(Goal::Minimize, &[9.0], &[&a, &b, &c]));
        // Too few trials reached epoch 3.
        assert!(!rule.should_stop(Goal::Minimize, &[1.5, 1.0, 0.95], &[&a, &b, &short]));
        // Even count: median of {0.7, 0.9, 1.1, 0.8} is (0.8 + 0.9) / 2 = 0.85.
        let d = [0.0, 0.8, 0.8];
        assert!(rule.should_stop(Goal::Minimize, &[1.0, 0.87, 0.9], &[&a, &b, &c, &d]));
        assert!(!rule.should_stop(Goal::Minimize, &[1.0, 0.84, 0.9], &[&a, &b, &c, &d]));
    }

    #[test]
    fn median_rule_maximizing() {
        let rule = MedianStopping::default(); // grace 1, 3 samples
        let others: [&[f64]; 3] = [&[0.5, 0.7], &[0.6, 0.8], &[0.9, 0.9]];
        // At t = 2 the running means are 0.6, 0.7, 0.9: median 0.7.
        assert!(rule.should_stop(Goal::Maximize, &[0.5, 0.65], &others));
        assert!(!rule.should_stop(Goal::Maximize, &[0.5, 0.75], &others));
        // At t = 1: 0.5, 0.6, 0.9, median 0.6.
        assert!(rule.should_stop(Goal::Maximize, &[0.55], &others));
    }

    #[test]
    fn asha_rungs() {
        let asha = Asha::default();
        assert_eq!(asha.rungs(100), [1, 4, 16, 64]);
        assert_eq!(asha.rungs(64), [1, 4, 16]);
        assert_eq!(asha.rungs(1), Vec::<u32>::new());
        let eta3 = Asha {
            min_epochs: 2,
            reduction_factor: 3,
        };
        assert_eq!(eta3.rungs(30), [2, 6, 18]);
        assert_eq!(eta3.rung_at(6, 30), Some(1));
        assert_eq!(eta3.rung_at(5, 30), None);
        assert_eq!(eta3.rung_at(18, 18), None);
    }

    #[test]
    fn asha_promotes_the_top_fraction_asynchronously() {
        let asha = Asha::default(); // eta 4
        let mut rungs = AshaRungs::default();
        let g = Goal::Minimize;
        // The first trial at a rung is always promoted (k = max(1, 1/4) = 1).
        assert!(rungs.promote(&asha, g, 0, 0.5));
        // n = 2, k = 1: must match the best (0.5).
        assert!(!rungs.promote(&asha, g, 0, 0.7));
        assert!(rungs.promote(&asha, g, 0, 0.4));
        // n = 4 {0.5, 0.7, 0.4, 0.45}, k = 1: best 0.4.
        assert!(!rungs.promote(&asha, g, 0, 0.45));
        // n = 8, k = 2: {0.4, 0.45, 0.5, 0.7, 0.9, 0.9, 0.9, x}.
        for _ in 0..3 {
            assert!(!rungs.promote(&asha, g, 0, 0.9));
        }
        // Sorted with 0.42: 0.4, 0.42, ... second best is 0.42: promoted.
        assert!(rungs.promote(&asha, g, 0, 0.42));
        assert_eq!(rungs.count(0), 8);
        // Rungs are independent.
        assert!(rungs.promote(&asha, g, 1, 0.6));
        assert!(!rungs.promote(&asha, g, 0, f64::NAN));
    }

    #[test]
    fn asha_maximizing_with_eta_2() {
        let asha = Asha {
            min_epochs: 1,
            reduction_factor: 2,
        };
        let mut rungs = AshaRungs::default();
        let g = Goal::Maximize;
        assert!(rungs.promote(&asha, g, 0, 0.6));
        // n = 2, k = 1: 0.9 beats 0.6.
        assert!(rungs.promote(&asha, g, 0, 0.9));
        // n = 3, k = 1: best 0.9; 0.7 is not.
        assert!(!rungs.promote(&asha, g, 0, 0.7));
        // n = 4, k = 2: {0.9, 0.8, 0.7, 0.6}: second best 0.8, so 0.8 is in.
        assert!(rungs.promote(&asha, g, 0, 0.8));
    }
}
