//! kiln_core::metrics against scikit-learn: every metric of
//! [`ClassificationMetrics`] must equal sklearn's to 1e-9 on generated
//! binary and 3-class predictions, with tied scores, a rare class (5%),
//! probabilities of exactly 0 and 1, and a class that never occurs.

use kiln_core::metrics::{classification_metrics, ClassificationMetrics};

const TOLERANCE: f64 = 1e-9;

/// Reads the cases from stdin (per case: `k`, the true classes, the
/// probabilities) and prints per case, with NaN where kiln says undefined:
/// log_loss roc_auc pr_auc f1 balanced_accuracy accuracy, then the
/// confusion matrix row by row.
const SKLEARN_SCRIPT: &str = r#"
import inspect, sys, warnings
import numpy as np
from sklearn import metrics
from sklearn.preprocessing import label_binarize

warnings.simplefilter("ignore")  # UndefinedMetricWarning and friends
# sklearn 1.9 renamed log_loss's y_pred to y_proba.
proba = "y_proba" if "y_proba" in inspect.signature(metrics.log_loss).parameters else "y_pred"
lines = sys.stdin.read().splitlines()
for i in range(0, len(lines), 3):
    k = int(lines[i])
    y = np.array([int(v) for v in lines[i + 1].split()])
    p = np.array([float(v) for v in lines[i + 2].split()]).reshape(-1, k)
    pred = p.argmax(axis=1)  # the first maximum, as kiln's argmax
    labels = list(range(k))
    every_class = set(y.tolist()) == set(labels)
    log_loss = metrics.log_loss(y, labels=labels, **{proba: p})
    if k == 2:
        # roc_auc_score returns nan (and warns) with a single class present.
        roc = metrics.roc_auc_score(y, p[:, 1]) if every_class else float("nan")
        # No positives: sklearn warns and scores 0; kiln says undefined.
        ap = metrics.average_precision_score(y, p[:, 1]) if 1 in y else float("nan")
        f1 = metrics.f1_score(y, pred, zero_division=0)
    else:
        # ovr needs every class; sklearn errors or returns nan otherwise.
        roc = (metrics.roc_auc_score(y, p, multi_class="ovr", average="macro")
               if every_class else float("nan"))
        ap = (metrics.average_precision_score(
                  label_binarize(y, classes=labels), p, average="macro")
              if every_class else float("nan"))
        f1 = metrics.f1_score(y, pred, average="macro", labels=labels, zero_division=0)
    values = [log_loss, roc, ap, f1,
              metrics.balanced_accuracy_score(y, pred),
              metrics.accuracy_score(y, pred)]
    cm = metrics.confusion_matrix(y, pred, labels=labels).ravel()
    print(" ".join([repr(float(v)) for v in values] + [str(int(c)) for c in cm]))
"#;

/// One set of predictions to score.
struct Case {
    name: &'static str,
    classes: usize,
    truth: Vec<i64>,
    probabilities: Vec<f64>,
}

/// splitmix64: reproducible cases without a dependency.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize
    }
}

/// True classes drawn with the given shares.
fn draw_classes(rng: &mut Rng, rows: usize, shares: &[f64]) -> Vec<i64> {
    (0..rows)
        .map(|_| {
            let u = rng.uniform();
            let mut total = 0.0;
            let class = shares.iter().position(|s| {
                total += s;
                u < total
            });
            class.unwrap_or(shares.len() - 1) as i64
        })
        .collect()
}

/// Softmax rows of logits that favour the true class by `signal`.
fn softmax_rows(rng: &mut Rng, truth: &[i64], classes: usize, signal: f64) -> Vec<f64> {
    let mut out = Vec::new();
    for &t in truth {
        let logits: Vec<f64> = (0..classes)
            .map(|c| 2.0 * rng.uniform() + if c as i64 == t { signal } else { 0.0 })
            .collect();
        out.extend(softmax(&logits));
    }
    out
}

fn softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = logits.iter().map(|z| (z - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.iter().map(|e| e / sum).collect()
}

/// Binary rows `[1 - p, p]` from P(1) values.
fn binary_rows(p1: impl IntoIterator<Item = f64>) -> Vec<f64> {
    p1.into_iter().flat_map(|p| [1.0 - p, p]).collect()
}

fn cases() -> Vec<Case> {
    let mut rng = Rng(20_240_611);
    let mut cases = Vec::new();

    let truth = draw_classes(&mut rng, 300, &[0.6, 0.4]);
    let p1: Vec<f64> = truth
        .iter()
        .map(|&t| (0.35 * t as f64 + 0.65 * rng.uniform()).min(1.0))
        .collect();
    cases.push(Case {
        name: "binary",
        classes: 2,
        probabilities: binary_rows(p1),
        truth,
    });

    // Scores on a grid of tenths: long runs of ties, 0.5 among them.
    let truth = draw_classes(&mut rng, 200, &[0.5, 0.5]);
    let p1: Vec<f64> = truth
        .iter()
        .map(|&t| ((3 * t as usize + rng.below(8)) as f64 / 10.0).min(1.0))
        .collect();
    cases.push(Case {
        name: "binary, tied scores",
        classes: 2,
        probabilities: binary_rows(p1),
        truth,
    });

    let truth = draw_classes(&mut rng, 400, &[0.95, 0.05]);
    let p1: Vec<f64> = truth
        .iter()
        .map(|&t| 0.2 * t as f64 + 0.5 * rng.uniform())
        .collect();
    cases.push(Case {
        name: "binary, 5% positives",
        classes: 2,
        probabilities: binary_rows(p1),
        truth,
    });

    // 0 and 1 exactly, confident misses included: log loss clips them.
    let truth = draw_classes(&mut rng, 100, &[0.5, 0.5]);
    let p1: Vec<f64> = truth
        .iter()
        .map(|&t| match rng.below(4) {
            0 => 0.0,
            1 => 1.0,
            2 => t as f64,
            _ => rng.uniform(),
        })
        .collect();
    cases.push(Case {
        name: "binary, probabilities 0 and 1",
        classes: 2,
        probabilities: binary_rows(p1),
        truth,
    });

    let truth = draw_classes(&mut rng, 100, &[1.0, 0.0]);
    cases.push(Case {
        name: "binary, no positives",
        classes: 2,
        probabilities: binary_rows((0..100).map(|_| rng.uniform())),
        truth,
    });

    let truth = draw_classes(&mut rng, 300, &[0.3, 0.3, 0.4]);
    cases.push(Case {
        name: "3-class",
        classes: 3,
        probabilities: softmax_rows(&mut rng, &truth, 3, 1.0),
        truth,
    });

    // Integer logits in {0, 1}: equal logits give equal probabilities, so
    // scores tie across rows and argmax ties within them.
    let truth = draw_classes(&mut rng, 240, &[0.3, 0.3, 0.4]);
    let probabilities = truth
        .iter()
        .flat_map(|_| softmax(&[0, 1, 2].map(|_| rng.below(2) as f64)))
        .collect();
    cases.push(Case {
        name: "3-class, tied scores",
        classes: 3,
        probabilities,
        truth,
    });

    let truth = draw_classes(&mut rng, 400, &[0.55, 0.4, 0.05]);
    cases.push(Case {
        name: "3-class, 5% of class 2",
        classes: 3,
        probabilities: softmax_rows(&mut rng, &truth, 3, 0.7),
        truth,
    });

    // One-hot rows, right or wrong, and some halves.
    let truth = draw_classes(&mut rng, 120, &[0.3, 0.3, 0.4]);
    let probabilities = truth
        .iter()
        .flat_map(|&t| {
            let mut row = [0.0; 3];
            match rng.below(3) {
                0 => row[t as usize] = 1.0,
                1 => row[rng.below(3)] = 1.0,
                _ => {
                    row[rng.below(3)] += 0.5;
                    row[rng.below(3)] += 0.5;
                }
            }
            row
        })
        .collect();
    cases.push(Case {
        name: "3-class, probabilities 0 and 1",
        classes: 3,
        probabilities,
        truth,
    });

    let truth = draw_classes(&mut rng, 150, &[0.5, 0.5, 0.0]);
    cases.push(Case {
        name: "3-class, class 2 absent",
        classes: 3,
        probabilities: softmax_rows(&mut rng, &truth, 3, 1.0),
        truth,
    });
    cases
}

/// sklearn's answers, one line per case; panics (the test fails) when
/// Python or scikit-learn is missing.
fn sklearn_answers(cases: &[Case]) -> Vec<String> {
    let mut input = String::new();
    for case in cases {
        let join = |v: Vec<String>| v.join(" ");
        input.push_str(&format!("{}\n", case.classes));
        input.push_str(&join(case.truth.iter().map(i64::to_string).collect()));
        input.push('\n');
        // `{:?}` prints the shortest text that parses back to the same f64.
        input.push_str(&join(
            case.probabilities
                .iter()
                .map(|p| format!("{p:?}"))
                .collect(),
        ));
        input.push('\n');
    }
    let lines: Vec<String> = crate::python::run(SKLEARN_SCRIPT, &input)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), cases.len(), "one answer per case");
    lines
}

/// The mismatches between kiln's metrics and sklearn's line for one case.
fn mismatches(case: &Case, ours: &ClassificationMetrics, sklearn: &str) -> Vec<String> {
    let fields: Vec<&str> = sklearn.split_whitespace().collect();
    let value = |i: usize| fields[i].parse::<f64>().expect("a float");
    let named = [
        ("log_loss", Some(ours.log_loss)),
        ("roc_auc", ours.roc_auc),
        ("pr_auc", ours.pr_auc),
        ("f1", Some(ours.f1)),
        ("balanced_accuracy", Some(ours.balanced_accuracy)),
        ("accuracy", Some(ours.accuracy)),
    ];
    let mut out = Vec::new();
    for (i, (name, ours)) in named.into_iter().enumerate() {
        // NaN in sklearn's line: undefined, which kiln says with None.
        let theirs = Some(value(i)).filter(|v| !v.is_nan());
        let equal = match (ours, theirs) {
            (Some(a), Some(b)) => (a - b).abs() <= TOLERANCE,
            (a, b) => a.is_none() && b.is_none(),
        };
        if !equal {
            out.push(format!(
                "{}: {name}: kiln {ours:?}, sklearn {theirs:?}",
                case.name
            ));
        }
    }
    let matrix: Vec<u64> = fields[named.len()..]
        .iter()
        .map(|c| c.parse().expect("a count"))
        .collect();
    let ours: Vec<u64> = ours.confusion_matrix.rows().concat();
    if ours != matrix {
        out.push(format!(
            "{}: confusion_matrix: kiln {ours:?}, sklearn {matrix:?}",
            case.name
        ));
    }
    out
}

#[test]
fn every_metric_equals_scikit_learn() {
    let cases = cases();
    let answers = sklearn_answers(&cases);
    let mut failures = Vec::new();
    for (case, answer) in cases.iter().zip(&answers) {
        let ours = classification_metrics(&case.probabilities, &case.truth, case.classes);
        failures.extend(mismatches(case, &ours, answer));
    }
    // Every mismatch at once, so a broken formula shows all it breaks.
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_cases_cover_what_they_say() {
    let cases = cases();
    let share = |case: &Case, class: i64| {
        case.truth.iter().filter(|&&t| t == class).count() as f64 / case.truth.len() as f64
    };
    let rare = cases.iter().find(|c| c.name == "binary, 5% positives");
    assert!((0.02..0.08).contains(&share(rare.unwrap(), 1)));
    let extreme = cases
        .iter()
        .find(|c| c.name == "binary, probabilities 0 and 1")
        .unwrap();
    // Certain misses: P(true class) = 0.
    assert!(extreme
        .truth
        .iter()
        .enumerate()
        .any(|(i, &t)| extreme.probabilities[2 * i + t as usize] == 0.0));
    let tied = cases.iter().find(|c| c.name == "3-class, tied scores");
    let rows: Vec<&[f64]> = tied.unwrap().probabilities.chunks(3).collect();
    assert!(rows.iter().any(|r| r[0] == r[1] && r[0] >= r[2]));
}
