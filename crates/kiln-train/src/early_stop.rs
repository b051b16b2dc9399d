//! Which epoch is best, and when to stop: Keras' `EarlyStopping` semantics
//! (absolute `min_delta`, `patience` counted in epochs without improvement,
//! stop once `wait >= patience`), with the best epoch's weights always kept.

use kiln_core::spec::{EarlyStoppingSpec, Metric};

#[derive(Debug, Clone)]
pub struct EarlyStopping {
    pub monitor: Metric,
    min_delta: f64,
    /// `None`: track the best epoch but never stop.
    patience: Option<u32>,
    wait: u32,
    pub best: Option<f64>,
    pub best_epoch: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// This epoch is the new best: keep its weights.
    pub improved: bool,
    /// Stop training after this epoch.
    pub stop: bool,
}

impl EarlyStopping {
    pub fn new(spec: Option<&EarlyStoppingSpec>) -> Self {
        Self {
            monitor: spec.map_or(Metric::ValLoss, |s| s.monitor),
            min_delta: spec.map_or(0.0, |s| s.min_delta),
            patience: spec.map(|s| s.patience),
            wait: 0,
            best: None,
            best_epoch: 0,
        }
    }

    /// Feeds the monitored value of `epoch` (1-based). A NaN never improves.
    pub fn update(&mut self, epoch: u32, value: f64) -> Verdict {
        let improved = match self.best {
            None => !value.is_nan(),
            Some(best) if self.monitor.higher_is_better() => value - self.min_delta > best,
            Some(best) => value + self.min_delta < best,
        };
        if improved {
            self.best = Some(value);
            self.best_epoch = epoch;
            self.wait = 0;
        } else {
            self.wait += 1;
        }
        let stop = self.patience.is_some_and(|p| !improved && self.wait >= p);
        Verdict { improved, stop }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(monitor: Metric, patience: u32, min_delta: f64) -> EarlyStoppingSpec {
        EarlyStoppingSpec {
            monitor,
            patience,
            min_delta,
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
}
