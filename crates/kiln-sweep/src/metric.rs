//! A sweep metric's value in an epoch's metrics.
//!
//! Stand-in until kiln-core has one table from `Metric` to its
//! `EpochMetrics` field; swap [`epoch_value`] for that when it lands.

use kiln::v1 as pb;
use kiln_core::spec::Metric;

/// `metric`'s value in `m`; `None` for an optional metric the epoch did not
/// report (val_accuracy of a regression, say).
pub fn epoch_value(metric: Metric, m: &pb::EpochMetrics) -> Option<f64> {
    match metric {
        Metric::TrainLoss => Some(m.train_loss),
        Metric::ValLoss => Some(m.val_loss),
        Metric::ValAccuracy => m.val_accuracy,
        Metric::ValMae => m.val_mae,
        Metric::ValRmse => m.val_rmse,
        Metric::ValR2 => m.val_r2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_reads_its_own_field() {
        let m = pb::EpochMetrics {
            epoch: 3,
            train_loss: 1.0,
            val_loss: 2.0,
            val_accuracy: Some(3.0),
            val_mae: Some(4.0),
            val_rmse: Some(5.0),
            val_r2: Some(6.0),
            learning_rate: 7.0,
            ..Default::default()
        };
        let got: Vec<Option<f64>> = Metric::ALL.iter().map(|&k| epoch_value(k, &m)).collect();
        assert_eq!(
            got,
            [
                Some(1.0),
                Some(2.0),
                Some(3.0),
                Some(4.0),
                Some(5.0),
                Some(6.0)
            ]
        );
        // The names agree with the store's metric_value (order_by), which
        // the server used before.
        let names: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
        assert_eq!(
            names,
            [
                "train_loss",
                "val_loss",
                "val_accuracy",
                "val_mae",
                "val_rmse",
                "val_r2"
            ]
        );
        let unreported = pb::EpochMetrics::default();
        assert_eq!(epoch_value(Metric::ValAccuracy, &unreported), None);
        assert_eq!(epoch_value(Metric::ValR2, &unreported), None);
        assert_eq!(epoch_value(Metric::ValLoss, &unreported), Some(0.0));
    }
}
