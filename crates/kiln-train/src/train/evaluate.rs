//! Validation: the loss and metrics of an evaluation-mode model.

use burn::tensor::Tensor;
use kiln_core::prepare::{Prepared, SplitTargets};
use kiln_core::spec::Task;

use crate::loss::{Loss, TargetTensor};
use crate::model::Mlp;
use crate::report::EpochReport;

/// Rows per forward pass when evaluating; bounds memory on large validation sets.
const EVAL_CHUNK: usize = 16_384;

/// Validation loss and metrics of an evaluation-mode model. Regression errors
/// are reported in the target's original units.
pub(super) fn evaluate(
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

/// The index of the first largest value.
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

/// Regression errors over a validation split.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RegressionMetrics {
    /// Mean absolute error over every value.
    pub mae: f64,
    /// Root mean squared error over every value.
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
