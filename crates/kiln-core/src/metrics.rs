//! Classification metrics of one set of predictions, each equal to
//! scikit-learn's function of the same name (the kiln-core test
//! `classification_metrics` checks them against it to 1e-9).
//!
//! Input: per-row class probabilities, row-major with `k` per row (binary is
//! `k = 2`, `[P(0), P(1)]`), and the true class index of each row. Binary
//! scores class 1 as the positive class; with `k > 2` the ranking and F1
//! metrics are macro averages of one-vs-rest scores over the `k` classes.

/// What [`classification_metrics`] measures.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassificationMetrics {
    /// Mean cross-entropy of the true class' probability, clipped to
    /// `[eps, 1 - eps]` (`sklearn.metrics.log_loss` with `labels=range(k)`).
    pub log_loss: f64,
    /// Area under the ROC curve, tied scores counting half (`roc_auc_score`;
    /// `multi_class="ovr", average="macro"` when `k > 2`). `None` when a
    /// class has no rows, so it has no positives or no negatives to rank.
    pub roc_auc: Option<f64>,
    /// Average precision, the step-wise area under the precision-recall
    /// curve (`average_precision_score`; the macro average of one-vs-rest
    /// scores when `k > 2`). `None` when a class scored has no rows, so its
    /// recall is undefined (class 1 for binary, any class otherwise).
    pub pr_auc: Option<f64>,
    /// F1 of the argmax predictions: class 1's when binary, the macro average
    /// over the `k` classes otherwise; 0 where a class is neither true nor
    /// predicted (`f1_score`, `zero_division=0`).
    pub f1: f64,
    /// Mean recall over the classes present in the true classes
    /// (`balanced_accuracy_score`).
    pub balanced_accuracy: f64,
    /// Share of rows whose argmax is the true class (`accuracy_score`).
    pub accuracy: f64,
    /// Rows by true class and argmax class.
    pub confusion_matrix: ConfusionMatrix,
}

/// A `k`×`k` table of row counts: rows are the true class, columns the
/// predicted one (`sklearn.metrics.confusion_matrix` with `labels=range(k)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfusionMatrix {
    classes: usize,
    counts: Vec<u64>,
}

impl ConfusionMatrix {
    /// Counts each `(truth[i], predicted[i])` pair over `classes` classes.
    ///
    /// # Panics
    /// When the slices differ in length or a class is not in `0..classes`.
    pub fn new(truth: &[usize], predicted: &[usize], classes: usize) -> Self {
        assert_eq!(truth.len(), predicted.len(), "one prediction per row");
        let mut counts = vec![0; classes * classes];
        for (&t, &p) in truth.iter().zip(predicted) {
            assert!(t < classes && p < classes, "class out of range");
            counts[t * classes + p] += 1;
        }
        Self { classes, counts }
    }

    /// The number of classes, `k`.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Rows of class `truth` predicted as `predicted`.
    pub fn count(&self, truth: usize, predicted: usize) -> u64 {
        self.counts[truth * self.classes + predicted]
    }

    /// As the API carries it: the class labels and the counts, row-major.
    pub fn to_proto(&self, labels: &[String]) -> kiln::v1::ConfusionMatrix {
        kiln::v1::ConfusionMatrix {
            labels: labels.to_vec(),
            counts: self.counts.clone(),
        }
    }

    /// The table as rows (true class) of columns (predicted class).
    pub fn rows(&self) -> Vec<Vec<u64>> {
        self.counts
            .chunks(self.classes)
            .map(<[u64]>::to_vec)
            .collect()
    }

    fn true_total(&self, class: usize) -> u64 {
        (0..self.classes).map(|p| self.count(class, p)).sum()
    }

    fn predicted_total(&self, class: usize) -> u64 {
        (0..self.classes).map(|t| self.count(t, class)).sum()
    }

    fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Share of rows on the diagonal.
    pub fn accuracy(&self) -> f64 {
        let right: u64 = (0..self.classes).map(|c| self.count(c, c)).sum();
        right as f64 / self.total() as f64
    }

    /// `2·TP / (2·TP + FP + FN)` of `class`; 0 when the class is neither
    /// true nor predicted (scikit-learn's `zero_division=0`).
    pub fn f1(&self, class: usize) -> f64 {
        let tp = self.count(class, class) as f64;
        let denominator = (self.true_total(class) + self.predicted_total(class)) as f64;
        if denominator == 0.0 {
            0.0
        } else {
            2.0 * tp / denominator
        }
    }

    /// Recall of `class`; `None` when no row is of that class.
    pub fn recall(&self, class: usize) -> Option<f64> {
        let rows = self.true_total(class);
        (rows > 0).then(|| self.count(class, class) as f64 / rows as f64)
    }

    /// Mean recall over the classes that have rows: classes only ever
    /// predicted would divide by zero, and scikit-learn drops them.
    pub fn balanced_accuracy(&self) -> f64 {
        let recalls: Vec<f64> = (0..self.classes).filter_map(|c| self.recall(c)).collect();
        mean(&recalls)
    }
}

/// The decision threshold on P(class 1) that maximizes F1 of class 1 when
/// rows with `p >= t` are predicted 1 (`None` without rows). Candidates are
/// the distinct probabilities, the smallest of the best wins; the threshold
/// returned is halfway between it and the next lower probability (half of
/// it when there is none), so that the f32 rounding of the same rows at
/// Predict cannot move a row across it.
pub fn f1_threshold(p1: &[f64], truth: &[usize]) -> Option<f64> {
    let mut rows: Vec<(f64, bool)> = p1
        .iter()
        .copied()
        .zip(truth.iter().map(|&t| t == 1))
        .collect();
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    let positives = rows.iter().filter(|r| r.1).count() as f64;
    let (mut tp, mut predicted) = (0.0, 0.0);
    let mut best: Option<(f64, f64)> = None;
    let mut i = 0;
    while i < rows.len() {
        // Every row tied at this probability is predicted 1 together.
        let t = rows[i].0;
        while i < rows.len() && rows[i].0 == t {
            tp += f64::from(u8::from(rows[i].1));
            predicted += 1.0;
            i += 1;
        }
        let f1 = 2.0 * tp / (predicted + positives);
        // Going down the thresholds, `>=` keeps the smallest of equal bests.
        if best.is_none_or(|(b, _)| f1 >= b) {
            let below = rows.get(i).map_or(0.0, |r| r.0);
            best = Some((f1, (t + below) / 2.0));
        }
    }
    best.map(|(_, t)| t)
}

/// Classes of binary rows predicted 1 where P(class 1) reaches `threshold`.
pub fn classes_at(p1: &[f64], threshold: f64) -> Vec<usize> {
    p1.iter().map(|&p| usize::from(p >= threshold)).collect()
}

/// Every metric of [`ClassificationMetrics`] for `probabilities` (row-major,
/// `classes` per row) against the true class of each row.
///
/// # Panics
/// When `classes < 2`, there are no rows, `probabilities` does not hold
/// `classes` values per true class, or a true class is not in `0..classes`.
pub fn classification_metrics(
    probabilities: &[f64],
    truth: &[i64],
    classes: usize,
) -> ClassificationMetrics {
    assert!(classes >= 2, "classification needs two classes or more");
    assert!(!truth.is_empty(), "metrics of no rows");
    assert_eq!(
        probabilities.len(),
        truth.len() * classes,
        "`classes` probabilities per row"
    );
    let truth: Vec<usize> = truth
        .iter()
        .map(|&c| {
            usize::try_from(c)
                .ok()
                .filter(|&c| c < classes)
                .expect("true class out of range")
        })
        .collect();
    let predicted: Vec<usize> = probabilities.chunks(classes).map(argmax).collect();
    let confusion_matrix = ConfusionMatrix::new(&truth, &predicted, classes);
    ClassificationMetrics {
        log_loss: log_loss(probabilities, &truth, classes),
        roc_auc: one_vs_rest(probabilities, &truth, classes, roc_auc),
        pr_auc: one_vs_rest(probabilities, &truth, classes, average_precision),
        f1: f1(&confusion_matrix),
        balanced_accuracy: confusion_matrix.balanced_accuracy(),
        accuracy: confusion_matrix.accuracy(),
        confusion_matrix,
    }
}

/// The index of the first largest probability (numpy's `argmax`), so a
/// binary row predicts class 1 only when P(1) > P(0).
pub fn argmax(row: &[f64]) -> usize {
    let mut best = 0;
    for (i, &p) in row.iter().enumerate() {
        if p > row[best] {
            best = i;
        }
    }
    best
}

/// Mean of `-ln p(true class)`. scikit-learn 1.9 clips to `[eps, 1 - eps]`
/// (float64's machine epsilon) so a confident miss costs -ln(eps) ≈ 36
/// instead of infinity; it no longer renormalizes rows after clipping.
pub fn log_loss(probabilities: &[f64], truth: &[usize], classes: usize) -> f64 {
    let eps = f64::EPSILON;
    let losses: Vec<f64> = probabilities
        .chunks(classes)
        .zip(truth)
        .map(|(row, &t)| -row[t].clamp(eps, 1.0 - eps).ln())
        .collect();
    mean(&losses)
}

/// Class 1's binary `score` when there are two classes, else the macro mean
/// of every class' one-vs-rest score; `None` when any score is.
fn one_vs_rest(
    probabilities: &[f64],
    truth: &[usize],
    classes: usize,
    score: fn(&[f64], &[bool]) -> Option<f64>,
) -> Option<f64> {
    let binary_score = |class: usize| {
        let scores: Vec<f64> = probabilities
            .iter()
            .skip(class)
            .step_by(classes)
            .copied()
            .collect();
        let positive: Vec<bool> = truth.iter().map(|&t| t == class).collect();
        score(&scores, &positive)
    };
    if classes == 2 {
        return binary_score(1);
    }
    let per_class: Option<Vec<f64>> = (0..classes).map(binary_score).collect();
    per_class.map(|s| mean(&s))
}

/// Class 1's F1 when binary, the unweighted mean over all classes otherwise
/// (`f1_score`'s `average="binary"` and `average="macro"`).
fn f1(matrix: &ConfusionMatrix) -> f64 {
    if matrix.classes() == 2 {
        return matrix.f1(1);
    }
    let per_class: Vec<f64> = (0..matrix.classes()).map(|c| matrix.f1(c)).collect();
    mean(&per_class)
}

/// Positives and negatives ranked at or above each distinct score, highest
/// score first (scikit-learn's `_binary_clf_curve`): rows with tied scores
/// enter together, as one threshold.
fn ranked_counts(scores: &[f64], positive: &[bool]) -> Vec<(u64, u64)> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    // total_cmp: a NaN score (a diverged model) must not panic the sort.
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut points = Vec::new();
    let (mut tp, mut fp) = (0, 0);
    for (i, &row) in order.iter().enumerate() {
        if positive[row] {
            tp += 1;
        } else {
            fp += 1;
        }
        let last_of_tie = order
            .get(i + 1)
            .is_none_or(|&next| scores[next] != scores[row]);
        if last_of_tie {
            points.push((tp, fp));
        }
    }
    points
}

/// Trapezoidal area under the ROC curve through every threshold; a tie of
/// positives and negatives is a diagonal segment, so it counts half.
/// `None` without both positives and negatives.
fn roc_auc(scores: &[f64], positive: &[bool]) -> Option<f64> {
    let points = ranked_counts(scores, positive);
    let &(positives, negatives) = points.last()?;
    if positives == 0 || negatives == 0 {
        return None;
    }
    let (mut area, mut previous) = (0.0, (0, 0));
    for &(tp, fp) in &points {
        // Counts stay integers until the end: twice the area in TP·FP units.
        area += ((fp - previous.1) * (tp + previous.0)) as f64;
        previous = (tp, fp);
    }
    Some(area / (2.0 * positives as f64 * negatives as f64))
}

/// Σ (Rₙ − Rₙ₋₁)·Pₙ over thresholds, highest first: precision at each
/// threshold weighted by the recall it adds, without interpolation
/// (`average_precision_score`). `None` without positives.
fn average_precision(scores: &[f64], positive: &[bool]) -> Option<f64> {
    let points = ranked_counts(scores, positive);
    let &(positives, _) = points.last()?;
    if positives == 0 {
        return None;
    }
    let (mut sum, mut previous_tp) = (0.0, 0);
    for &(tp, fp) in &points {
        let recall_gain = (tp - previous_tp) as f64 / positives as f64;
        sum += recall_gain * tp as f64 / (tp + fp) as f64;
        previous_tp = tp;
    }
    Some(sum)
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn binary_metrics_match_hand_computation() {
        // P(1) = 0.1, 0.4, 0.35, 0.8 for classes 0, 0, 1, 1 (sklearn's docs).
        let p = [0.9, 0.1, 0.6, 0.4, 0.65, 0.35, 0.2, 0.8];
        let m = classification_metrics(&p, &[0, 0, 1, 1], 2);
        assert!(close(m.roc_auc.unwrap(), 0.75));
        assert!(close(m.pr_auc.unwrap(), 0.5 * 1.0 + 0.5 * (2.0 / 3.0)));
        let log_loss = -(0.9f64.ln() + 0.6f64.ln() + 0.35f64.ln() + 0.8f64.ln()) / 4.0;
        assert!(close(m.log_loss, log_loss));
        // Predictions 0, 0, 0, 1: TP 1, FN 1, FP 0.
        assert_eq!(m.confusion_matrix.rows(), [[2, 0], [1, 1]]);
        assert!(close(m.f1, 2.0 / 3.0));
        assert!(close(m.balanced_accuracy, (1.0 + 0.5) / 2.0));
        assert!(close(m.accuracy, 0.75));
    }

    #[test]
    fn ties_count_half_and_enter_the_precision_curve_together() {
        // Every score tied: AUC 0.5, precision at the one threshold = 1/2.
        let p = [0.5; 8];
        let m = classification_metrics(&p, &[0, 1, 0, 1], 2);
        assert!(close(m.roc_auc.unwrap(), 0.5));
        assert!(close(m.pr_auc.unwrap(), 0.5));
        // A tie predicts class 0, the first maximum.
        assert_eq!(m.confusion_matrix.rows(), [[2, 0], [2, 0]]);
        assert!(close(m.f1, 0.0));
    }

    #[test]
    fn undefined_scores_are_none_and_certain_misses_are_clipped() {
        let p = [0.0, 1.0, 1.0, 0.0];
        let m = classification_metrics(&p, &[0, 0], 2);
        assert_eq!((m.roc_auc, m.pr_auc), (None, None));
        assert!(close(m.log_loss, -(f64::EPSILON.ln()) / 2.0));
        // Class 1 never occurs: balanced accuracy is class 0's recall.
        assert!(close(m.balanced_accuracy, 0.5));
    }

    #[test]
    fn multiclass_scores_are_macro_averages() {
        let p = [
            0.7, 0.2, 0.1, //
            0.2, 0.5, 0.3, //
            0.1, 0.3, 0.6, //
            0.4, 0.4, 0.2, //
        ];
        let m = classification_metrics(&p, &[0, 1, 2, 1], 3);
        // Predictions 0, 1, 2, 0 (first maximum).
        assert_eq!(m.confusion_matrix.rows(), [[1, 0, 0], [1, 1, 0], [0, 0, 1]]);
        assert!(close(m.f1, (2.0 / 3.0 + 2.0 / 3.0 + 1.0) / 3.0));
        assert!(close(m.balanced_accuracy, (1.0 + 0.5 + 1.0) / 3.0));
        // Every class ranks its positives first: each one-vs-rest AUC is 1,
        // except class 1 (0.5, 0.4 vs 0.2, 0.3): also 1.
        assert!(close(m.roc_auc.unwrap(), 1.0));
        assert!(close(m.pr_auc.unwrap(), 1.0));
        let missing = classification_metrics(&p, &[0, 1, 1, 1], 3);
        assert_eq!((missing.roc_auc, missing.pr_auc), (None, None));
    }

    /// F1 of each candidate by hand: rows (0.9, 1) (0.8, 0) (0.6, 1) (0.6, 0)
    /// (0.2, 1): t=0.9 -> 2/4, t=0.8 -> 2/5, t=0.6 -> 4/7, t=0.2 -> 6/8.
    #[test]
    fn the_f1_threshold_is_the_best_and_smallest_on_a_tie() {
        let p1 = [0.6, 0.9, 0.2, 0.8, 0.6];
        let truth = [0, 1, 1, 0, 1];
        assert_eq!(f1_threshold(&p1, &truth), Some(0.1), "half of the lowest");
        // Without the last positive: t=0.9 -> 2/3, t=0.6 -> 4/6: equal, smallest wins.
        // Halfway down to the next probability, 0.2.
        assert_eq!(
            f1_threshold(&[0.9, 0.8, 0.6, 0.6, 0.2], &[1, 0, 1, 0, 0]),
            Some(0.4)
        );
        assert_eq!(f1_threshold(&[], &[]), None);
        assert_eq!(classes_at(&p1, 0.6), [1, 1, 0, 1, 1]);
    }
}
