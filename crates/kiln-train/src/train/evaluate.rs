//! Validation: the loss and metrics of an evaluation-mode model.

use burn::tensor::Tensor;
use kiln_core::metrics::{
    classes_at, classification_metrics, f1_threshold, ClassificationMetrics, ConfusionMatrix,
};
use kiln_core::prepare::{Prepared, SplitTargets};
use kiln_core::spec::{DecisionThreshold, Task};

use crate::loss::{Loss, TargetTensor};
use crate::model::Mlp;
use crate::outcome::ServedDecisions;
use crate::report::EpochReport;

/// Rows per forward pass when evaluating; bounds memory on large validation sets.
const EVAL_CHUNK: usize = 16_384;

/// Validation loss and metrics of an evaluation-mode model. Regression errors
/// are reported in the target's original units; classification adds
/// scikit-learn's probability and ranking metrics ([`logit_metrics`]).
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
    for (start, end, out) in forward_chunks(model, x, rows) {
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
            add_classification_metrics(&mut report, &outputs, classes, task, data.outputs);
        }
        (SplitTargets::Classes(classes), _) => {
            let k = data.outputs;
            let right = outputs
                .chunks(k)
                .zip(classes)
                .filter(|(row, &c)| argmax(row) == c as usize)
                .count();
            report.val_accuracy = Some(right as f64 / rows as f64);
            add_classification_metrics(&mut report, &outputs, classes, task, data.outputs);
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

/// The model's outputs for rows `start..end` of `x`, [`EVAL_CHUNK`] rows at a time.
fn forward_chunks<'a>(
    model: &'a Mlp,
    x: &'a Tensor<2>,
    rows: usize,
) -> impl Iterator<Item = (usize, usize, Tensor<2>)> + 'a {
    (0..rows).step_by(EVAL_CHUNK).map(move |start| {
        let end = (start + EVAL_CHUNK).min(rows);
        (start, end, model.forward(x.clone().slice(start..end)))
    })
}

/// The served model's decisions on the validation rows: the threshold it
/// serves with (given, or tuned for F1 on these rows) and its confusion
/// matrix. `None` for regression or without validation rows.
pub(super) fn served_decisions(
    model: &Mlp,
    task: Task,
    x: &Tensor<2>,
    data: &Prepared,
    threshold: Option<DecisionThreshold>,
) -> Option<ServedDecisions> {
    let SplitTargets::Classes(classes) = &data.validation.y else {
        return None;
    };
    if classes.is_empty() {
        return None;
    }
    let mut logits: Vec<f32> = Vec::new();
    for (_, _, out) in forward_chunks(model, x, data.validation.rows) {
        logits.extend(out.into_data().try_into_vec::<f32>().expect("f32 outputs"));
    }
    let probabilities = probabilities(&logits, task, data.outputs);
    let k = probabilities.len() / classes.len();
    let truth: Vec<usize> = classes.iter().map(|&c| c as usize).collect();
    let p1: Vec<f64> = probabilities.iter().skip(1).step_by(k).copied().collect();
    let threshold = match threshold {
        Some(DecisionThreshold::Fixed(t)) => Some(t),
        Some(DecisionThreshold::TuneForF1) => f1_threshold(&p1, &truth),
        None => None,
    };
    let predicted: Vec<usize> = match threshold {
        Some(t) => classes_at(&p1, t),
        None => probabilities
            .chunks(k)
            .map(kiln_core::metrics::argmax)
            .collect(),
    };
    Some(ServedDecisions {
        confusion: ConfusionMatrix::new(&truth, &predicted, k),
        threshold,
    })
}

/// Fills the report's classification metrics from the validation logits.
/// `val_accuracy` stays the logit-based count above: the same predictions
/// but for a logit so close to 0 that its probability rounds to one half.
fn add_classification_metrics(
    report: &mut EpochReport,
    logits: &[f32],
    classes: &[i64],
    task: Task,
    width: usize,
) {
    if classes.is_empty() {
        return; // No validation rows: nothing to score.
    }
    let m = logit_metrics(logits, classes, task, width);
    report.val_log_loss = Some(m.log_loss);
    report.val_roc_auc = m.roc_auc;
    report.val_pr_auc = m.pr_auc;
    report.val_f1 = Some(m.f1);
    report.val_balanced_accuracy = Some(m.balanced_accuracy);
}

/// kiln-core's classification metrics of a classifier's logits (`width` per
/// row) against the true classes.
pub fn logit_metrics(
    logits: &[f32],
    classes: &[i64],
    task: Task,
    width: usize,
) -> ClassificationMetrics {
    let probabilities = probabilities(logits, task, width);
    let k = probabilities.len() / classes.len();
    classification_metrics(&probabilities, classes, k)
}

/// Class probabilities in f64, `k` per row: `[1 - p, p]` with `p` the
/// sigmoid of a binary model's one logit, else the softmax of the row.
/// f64 so that near-certain rows keep their distance from 0 and 1.
pub fn probabilities(logits: &[f32], task: Task, width: usize) -> Vec<f64> {
    if task == Task::Binary {
        return logits
            .iter()
            .flat_map(|&z| {
                let p = 1.0 / (1.0 + (-f64::from(z)).exp());
                [1.0 - p, p]
            })
            .collect();
    }
    logits.chunks(width).flat_map(softmax).collect()
}

/// The softmax of one row, shifted by its maximum so no exponential overflows.
fn softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &z| m.max(z.into()));
    let exp: Vec<f64> = row.iter().map(|&z| (f64::from(z) - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
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

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    /// ln(1 + e^x): -ln σ(-x), the binary log loss by another road.
    fn softplus(x: f64) -> f64 {
        x.exp().ln_1p()
    }

    #[test]
    fn binary_logits_score_through_their_sigmoid() {
        // P(1) = σ(z) ≈ 0.119, 0.622, 0.5, 0.953 for classes 0, 0, 1, 1.
        let logits = [-2.0, 0.5, 0.0, 3.0];
        let p = probabilities(&logits, Task::Binary, 1);
        assert_eq!(p.len(), 8);
        assert!(close(p[3], 1.0 / (1.0 + (-0.5f64).exp())));
        let m = logit_metrics(&logits, &[0, 0, 1, 1], Task::Binary, 1);
        // -ln(1 - σ(z)) = softplus(z), -ln σ(z) = softplus(-z).
        let log_loss = (softplus(-2.0) + softplus(0.5) + softplus(0.0) + softplus(-3.0)) / 4.0;
        assert!(close(m.log_loss, log_loss));
        // Pairs (positive above negative): 0.5 beats 0.119 only, 0.953 both.
        assert!(close(m.roc_auc.unwrap(), 0.75));
        // Ranked: + (precision 1, recall 1/2), -, + (precision 2/3, recall 1).
        assert!(close(m.pr_auc.unwrap(), 0.5 + 0.5 * 2.0 / 3.0));
        // Logit 0 is a tie, so class 0: predictions 0, 1, 0, 1.
        assert_eq!(m.confusion_matrix.rows(), [[1, 1], [1, 1]]);
        assert!(close(m.f1, 0.5));
        assert!(close(m.balanced_accuracy, 0.5));
        assert!(close(m.accuracy, 0.5));
    }

    #[test]
    fn multiclass_logits_score_through_their_softmax() {
        let logits = [
            2.0, 1.0, 0.0, // class 0, predicted 0
            0.0, 3.0, 0.0, // class 1, predicted 1
            1.0, 1.0, 1.0, // class 2, a three-way tie: predicted 0
        ];
        let m = logit_metrics(&logits, &[0, 1, 2], Task::Multiclass, 3);
        let lse = |row: &[f64]| row.iter().map(|z| z.exp()).sum::<f64>().ln();
        let log_loss =
            ((lse(&[2.0, 1.0, 0.0]) - 2.0) + (lse(&[0.0, 3.0, 0.0]) - 3.0) + 3f64.ln()) / 3.0;
        assert!(close(m.log_loss, log_loss));
        assert_eq!(m.confusion_matrix.rows(), [[1, 0, 0], [0, 1, 0], [1, 0, 0]]);
        // Per-class F1: 2/3, 1, 0.
        assert!(close(m.f1, (2.0 / 3.0 + 1.0) / 3.0));
        assert!(close(m.balanced_accuracy, 2.0 / 3.0));
        // Each class' own row has its highest probability of that class.
        assert_eq!((m.roc_auc, m.pr_auc), (Some(1.0), Some(1.0)));
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.1, 0.7, 0.7, 0.2]), 1);
    }
}
