//! Which trials a sweep's early-termination policy stops, decided from the
//! epochs its trials have reported so far (see [`crate::policy`] for the
//! rules themselves).

use crate::policy::{Asha, AshaRungs, Goal, MedianStopping};

/// The early-termination policy in force.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Policy {
    /// Every trial runs its epochs.
    None,
    /// The median stopping rule.
    Median(MedianStopping),
    /// Asynchronous successive halving.
    Asha(Asha),
}

/// One sweep's pruning state: every trial's metric per epoch, the epochs
/// each was set to run (ASHA's rungs lie below it), the values recorded at
/// ASHA's rungs, and which trials were stopped.
#[derive(Debug, Clone)]
pub struct Pruner {
    policy: Policy,
    goal: Goal,
    curves: Vec<Vec<f64>>,
    budgets: Vec<u32>,
    pruned: Vec<bool>,
    rungs: AshaRungs,
}

impl Pruner {
    /// A pruner for `trials` trials, none started.
    pub fn new(policy: Policy, goal: Goal, trials: usize) -> Self {
        Self {
            policy,
            goal,
            curves: vec![Vec::new(); trials],
            budgets: vec![0; trials],
            pruned: vec![false; trials],
            rungs: AshaRungs::default(),
        }
    }

    /// Trial `index` runs `epochs` epochs.
    pub fn set_budget(&mut self, index: usize, epochs: u32) {
        self.budgets[index] = epochs;
    }

    /// Records trial `index`'s value at `epoch` (NaN: not reported) and, if
    /// `judge` (the trial is still going) and it was not stopped before,
    /// decides whether it stops now: the reason, if so.
    ///
    /// Every epoch joins the curves, judged or not, so that the median rule
    /// compares against every trial's whole history; ASHA records a value at
    /// a rung only when it judges the trial there.
    pub fn on_epoch(
        &mut self,
        index: usize,
        epoch: u32,
        value: f64,
        judge: bool,
    ) -> Option<String> {
        self.curves[index].push(value);
        if self.pruned[index] || !judge {
            return None;
        }
        let reason = match self.policy {
            Policy::None => None,
            Policy::Median(rule) => {
                let others: Vec<&[f64]> = self
                    .curves
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != index)
                    .map(|(_, c)| c.as_slice())
                    .collect();
                rule.should_stop(self.goal, &self.curves[index], &others)
                    .then(|| format!("stopped by the median stopping rule at epoch {epoch}"))
            }
            Policy::Asha(asha) => asha
                .rung_at(epoch, self.budgets[index])
                .filter(|&rung| !self.rungs.promote(&asha, self.goal, rung, value))
                .map(|rung| format!("stopped by ASHA at epoch {epoch} (rung {rung})")),
        };
        if reason.is_some() {
            self.pruned[index] = true;
        }
        reason
    }

    /// Whether trial `index` was stopped.
    pub fn is_pruned(&self, index: usize) -> bool {
        self.pruned[index]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `(trial, epoch, value)` events in order; the stop reasons.
    fn run(pruner: &mut Pruner, events: &[(usize, u32, f64)]) -> Vec<(usize, String)> {
        events
            .iter()
            .filter_map(|&(i, epoch, value)| pruner.on_epoch(i, epoch, value, true).map(|r| (i, r)))
            .collect()
    }

    #[test]
    fn no_policy_never_stops() {
        let mut p = Pruner::new(Policy::None, Goal::Minimize, 2);
        assert_eq!(run(&mut p, &[(0, 1, 0.1), (1, 1, 9.0), (1, 2, 9.0)]), []);
    }

    #[test]
    fn median_rule_on_interleaved_epochs() {
        let rule = MedianStopping {
            grace_period: 1,
            min_samples: 2,
        };
        let mut p = Pruner::new(Policy::Median(rule), Goal::Minimize, 5);
        let stopped = run(
            &mut p,
            &[
                // Fewer than 2 other trials at epoch 1: no median yet.
                (0, 1, 1.0),
                (1, 1, 0.8),
                // Others at epoch 1: {1.0, 0.8}, median 0.9; 0.95 is worse.
                (2, 1, 0.95),
                // Others {1.0, 0.8, 0.95}, median 0.95; 0.85 is better.
                (3, 1, 0.85),
                // No other trial has 2 epochs yet.
                (0, 2, 0.9),
                // Only trial 0 has 2 epochs: one sample.
                (1, 2, 0.6),
                // Means over epochs 1..=2: trial 0 0.95, trial 1 0.7, median
                // 0.825; trial 3's best, 0.85, is worse.
                (3, 2, 0.9),
                // Trial 2 was stopped: its last epoch (the job winding down)
                // is recorded but not judged again.
                (2, 2, 5.0),
            ],
        );
        assert_eq!(
            stopped,
            [
                (
                    2,
                    "stopped by the median stopping rule at epoch 1".to_string()
                ),
                (
                    3,
                    "stopped by the median stopping rule at epoch 2".to_string()
                ),
            ]
        );
        assert!(p.is_pruned(2) && p.is_pruned(3));
        assert!(!p.is_pruned(0) && !p.is_pruned(1));
        // Trial 4 (epoch 1 not judged): at epoch 2 the others' means are
        // 0.95, 0.7, 2.975 (the stopped trial 2 still counts) and 0.875:
        // median 0.9125. Without trial 2 it would be 0.875.
        assert_eq!(p.on_epoch(4, 1, 0.95, false), None);
        let mut worse = p.clone();
        assert_eq!(p.on_epoch(4, 2, 0.91, true), None);
        assert_eq!(
            worse.on_epoch(4, 2, 0.93, true),
            Some("stopped by the median stopping rule at epoch 2".into())
        );
    }

    #[test]
    fn an_unjudged_epoch_counts_for_others_but_stops_nothing() {
        let rule = MedianStopping {
            grace_period: 1,
            min_samples: 1,
        };
        let mut p = Pruner::new(Policy::Median(rule), Goal::Maximize, 3);
        assert_eq!(p.on_epoch(1, 1, 0.9, true), None); // no other sample
        let mut judged = p.clone();
        assert_eq!(
            judged.on_epoch(0, 1, 0.1, true),
            Some("stopped by the median stopping rule at epoch 1".into())
        );
        // The same epoch of a trial no longer going (followed again after a
        // restart, already ended): not stopped.
        assert_eq!(p.on_epoch(0, 1, 0.1, false), None);
        assert!(!p.is_pruned(0));
        // Its value is a sample all the same: the median of {0.9, 0.1} is
        // 0.5 and 0.6 beats it (against 0.9 alone it would stop).
        assert_eq!(p.on_epoch(2, 1, 0.6, true), None);
    }

    #[test]
    fn asha_judges_at_rungs_below_each_trials_budget() {
        let asha = Asha {
            min_epochs: 1,
            reduction_factor: 2,
        };
        let mut p = Pruner::new(Policy::Asha(asha), Goal::Minimize, 4);
        for i in 0..3 {
            p.set_budget(i, 4); // rungs at epochs 1 and 2
        }
        p.set_budget(3, 1); // no rung below 1 epoch
        let stopped = run(
            &mut p,
            &[
                (0, 1, 0.5),  // rung 0, first: promoted
                (1, 1, 0.7),  // n 2, k 1: worse than 0.5
                (2, 1, 0.4),  // best: promoted
                (3, 1, 9.0),  // budget 1: never judged
                (0, 2, 0.3),  // rung 1, first: promoted
                (0, 3, 9.0),  // epoch 3 is no rung
                (2, 2, 0.35), // rung 1, n 2, k 1: 0.3 is better
                (1, 2, 0.0),  // already stopped
            ],
        );
        assert_eq!(
            stopped,
            [
                (1, "stopped by ASHA at epoch 1 (rung 0)".to_string()),
                (2, "stopped by ASHA at epoch 2 (rung 1)".to_string()),
            ]
        );
        assert_eq!(p.rungs.count(0), 3);
        assert_eq!(p.rungs.count(1), 2);
        assert!(!p.is_pruned(3) && !p.is_pruned(0));
    }

    #[test]
    fn asha_records_nothing_for_unjudged_trials() {
        let mut p = Pruner::new(Policy::Asha(Asha::default()), Goal::Minimize, 2);
        p.set_budget(0, 8);
        p.set_budget(1, 8);
        // A trial followed again after a restart that had already ended:
        // its rung value is not recorded, so trial 1 is first at rung 0.
        assert_eq!(p.on_epoch(0, 1, 0.1, false), None);
        assert_eq!(p.rungs.count(0), 0);
        assert_eq!(p.on_epoch(1, 1, 0.9, true), None);
        // A NaN at a rung stops the trial.
        let mut q = Pruner::new(Policy::Asha(Asha::default()), Goal::Minimize, 1);
        q.set_budget(0, 8);
        assert_eq!(
            q.on_epoch(0, 1, f64::NAN, true),
            Some("stopped by ASHA at epoch 1 (rung 0)".into())
        );
    }
}
