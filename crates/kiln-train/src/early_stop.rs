//! Which epoch is best, and when to stop: Keras' `EarlyStopping` semantics
//! (absolute `min_delta`, `patience` counted in epochs without improvement,
//! stop once `wait >= patience`, `baseline`, `start_from_epoch`).

use kiln_core::spec::{EarlyStoppingSpec, Metric};
use serde::{Deserialize, Serialize};

/// Keras' EarlyStopping state: the best value so far and the epochs waited.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EarlyStopping {
    /// The metric watched.
    pub monitor: Metric,
    mode_max: bool,
    min_delta: f64,
    /// `None`: track the best epoch but never stop.
    patience: Option<u32>,
    baseline: Option<f64>,
    start_from_epoch: u32,
    wait: u32,
    /// The best monitored value so far.
    pub best: Option<f64>,
    /// The epoch that had it (0 before any).
    pub best_epoch: u32,
}

/// What one epoch's value means for the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// This epoch is the new best: keep its weights.
    pub improved: bool,
    /// Stop training after this epoch.
    pub stop: bool,
}

impl EarlyStopping {
    /// Without a spec: track the lowest `val_loss`, never stop.
    pub fn new(spec: Option<&EarlyStoppingSpec>) -> Self {
        Self {
            monitor: spec.map_or(Metric::ValLoss, |s| s.monitor),
            mode_max: spec.is_some_and(|s| s.mode_max),
            min_delta: spec.map_or(0.0, |s| s.min_delta),
            patience: spec.map(|s| s.patience),
            baseline: spec.and_then(|s| s.baseline),
            start_from_epoch: spec.map_or(0, |s| s.start_from_epoch),
            wait: 0,
            best: None,
            best_epoch: 0,
        }
    }

    /// Keras' `_is_improvement`: min_delta is subtracted in the metric's direction.
    fn beats(&self, value: f64, reference: Option<f64>) -> bool {
        match reference {
            None => !value.is_nan(),
            Some(r) if self.mode_max => value - self.min_delta > r,
            Some(r) => value + self.min_delta < r,
        }
    }

    /// Feeds the monitored value of `epoch` (1-based; Keras counts from 0).
    /// A NaN never improves.
    pub fn update(&mut self, epoch: u32, value: f64) -> Verdict {
        let keras_epoch = epoch - 1;
        if keras_epoch < self.start_from_epoch {
            return Verdict {
                improved: false,
                stop: false,
            };
        }
        self.wait += 1;
        if self.beats(value, self.best) {
            self.best = Some(value);
            self.best_epoch = epoch;
            // Patience restarts only once the baseline is beaten too.
            if self.baseline.is_none() || self.beats(value, self.baseline) {
                self.wait = 0;
            }
            return Verdict {
                improved: true,
                stop: false,
            };
        }
        let stop = self
            .patience
            .is_some_and(|p| self.wait >= p && keras_epoch > 0);
        Verdict {
            improved: false,
            stop,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(monitor: Metric, patience: u32, min_delta: f64) -> EarlyStoppingSpec {
        EarlyStoppingSpec {
            monitor,
            mode_max: monitor.higher_is_better(),
            patience,
            min_delta,
            baseline: None,
            start_from_epoch: 0,
            restore_best_weights: true,
        }
    }

    /// Runs a curve and returns (epoch stopped at, best epoch).
    fn run(es: &mut EarlyStopping, curve: &[f64]) -> (u32, u32) {
        for (i, &v) in curve.iter().enumerate() {
            if es.update(i as u32 + 1, v).stop {
                return (i as u32 + 1, es.best_epoch);
            }
        }
        (curve.len() as u32, es.best_epoch)
    }

    #[test]
    fn matches_keras_on_a_loss_curve() {
        // keras.callbacks.EarlyStopping(monitor="val_loss", patience=2) on
        // [1.0, 0.8, 0.85, 0.9, 0.7] stops after the 4th epoch, best epoch 2.
        let mut es = EarlyStopping::new(Some(&spec(Metric::ValLoss, 2, 0.0)));
        assert_eq!(run(&mut es, &[1.0, 0.8, 0.85, 0.9, 0.7]), (4, 2));
    }

    #[test]
    fn min_delta_is_absolute_and_mode_follows_the_metric() {
        // An improvement of 0.05 with min_delta 0.1 does not count.
        let mut es = EarlyStopping::new(Some(&spec(Metric::ValLoss, 1, 0.1)));
        assert_eq!(run(&mut es, &[1.0, 0.95, 0.5]), (2, 1));
        // Accuracy goes up.
        let mut es = EarlyStopping::new(Some(&spec(Metric::ValAccuracy, 1, 0.0)));
        assert_eq!(run(&mut es, &[0.5, 0.6, 0.7, 0.65]), (4, 3));
        // patience 0 stops at the first epoch without improvement.
        let mut es = EarlyStopping::new(Some(&spec(Metric::ValLoss, 0, 0.0)));
        assert_eq!(run(&mut es, &[1.0, 0.9, 0.9]), (3, 2));
    }

    #[test]
    fn without_a_spec_tracks_the_best_val_loss_and_never_stops() {
        let mut es = EarlyStopping::new(None);
        assert_eq!(run(&mut es, &[1.0, 0.5, 2.0, 3.0, 4.0, 5.0]), (6, 2));
        assert_eq!(es.best, Some(0.5));
    }

    // The expected values below are what keras.callbacks.EarlyStopping
    // (Keras 3.15.1) decided on the same scripted logs; tests/integration/early_stop_keras.rs
    // runs Keras itself on many more.

    #[test]
    fn baseline_keeps_patience_counting_until_beaten() {
        // EarlyStopping(patience=2, baseline=0.5) on val_loss [0.9, 0.8, 0.7]:
        // every epoch improves on the best, so no stop, though the baseline is
        // never beaten; [0.9, 0.95, 0.97]: wait reaches 2 at index 1.
        let mut s = spec(Metric::ValLoss, 2, 0.0);
        s.baseline = Some(0.5);
        let mut es = EarlyStopping::new(Some(&s));
        assert_eq!(run(&mut es, &[0.9, 0.8, 0.7]), (3, 3));
        let mut es = EarlyStopping::new(Some(&s));
        assert_eq!(run(&mut es, &[0.9, 0.95, 0.97]), (2, 1));
        // Beating the baseline resets patience.
        let mut es = EarlyStopping::new(Some(&s));
        assert_eq!(run(&mut es, &[0.9, 0.4, 0.45, 0.46, 0.47]), (4, 2));
    }

    #[test]
    fn start_from_epoch_ignores_the_first_epochs() {
        // EarlyStopping(patience=1, start_from_epoch=2) on [0.1, 0.2, 0.9, 1.0, 0.5]:
        // epochs 0 and 1 are ignored; best=0.9 at index 2; 1.0 -> wait 1 -> stop at index 3.
        let mut s = spec(Metric::ValLoss, 1, 0.0);
        s.start_from_epoch = 2;
        let mut es = EarlyStopping::new(Some(&s));
        assert_eq!(run(&mut es, &[0.1, 0.2, 0.9, 1.0, 0.5]), (4, 3));
    }

    #[test]
    fn explicit_mode_overrides_the_metric_direction() {
        let mut s = spec(Metric::ValLoss, 1, 0.0);
        s.mode_max = true;
        let mut es = EarlyStopping::new(Some(&s));
        assert_eq!(run(&mut es, &[1.0, 2.0, 1.5]), (3, 2));
    }
}
