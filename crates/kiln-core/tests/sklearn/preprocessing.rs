//! Preprocessing against scikit-learn on a table with gaps and a rare class:
//! the fill values kiln fits on its training split equal `SimpleImputer`'s
//! fitted on the same rows, the stratified split holds each class's share as
//! `train_test_split(stratify=y)` does, and balanced class weights equal
//! `compute_class_weight("balanced")`.

use kiln::v1 as pb;
use kiln_core::data::{Dataset, Table};
use kiln_core::encoding::Fill;
use kiln_core::prepare::{prepare, Prepared};
use kiln_core::spec::{JobSpec, LossKind, LossSpec};

/// Reads `csv`, the training rows and the validation row count; prints the
/// imputers' statistics (a: mean, b: median, c and d: most frequent), the
/// per-class validation counts of `train_test_split(stratify=y)`, and the
/// balanced class weights of the training rows.
const SKLEARN_SCRIPT: &str = r#"
import io, sys
import numpy as np, pandas as pd
from sklearn.impute import SimpleImputer
from sklearn.model_selection import train_test_split
from sklearn.utils.class_weight import compute_class_weight

text = sys.stdin.read()
csv, train_rows, n_val = text.split("\n--\n")
frame = pd.read_csv(io.StringIO(csv), keep_default_na=False,
                    na_values=["", "NA", "N/A", "NaN", "nan", "null", "None"])
train = frame.iloc[[int(r) for r in train_rows.split()]]
def fit(column, strategy):
    return SimpleImputer(strategy=strategy).fit(train[[column]]).statistics_[0]
print(repr(float(fit("a", "mean"))))
print(repr(float(fit("b", "median"))))
print(repr(float(fit("c", "most_frequent"))))
print(fit("d", "most_frequent"))
y = frame["y"].to_numpy()
_, test = train_test_split(np.arange(len(y)), test_size=int(n_val), stratify=y, random_state=0)
print(" ".join(str(int((y[test] == c).sum())) for c in ["no", "yes"]))
weights = compute_class_weight("balanced", classes=np.array(["no", "yes"]), y=train["y"].to_numpy())
print(" ".join(repr(float(w)) for w in weights))
"#;

/// 400 rows: numbers in quarters (exact in f32), gaps written every way
/// pandas writes or reads them, a text column, and 5% "yes".
fn table() -> String {
    let gap = |i: usize| ["", "NA", "null", "NaN", "None", "N/A"][i % 6];
    let mut csv = String::from("a,b,c,d,e,y\n");
    for i in 0..400usize {
        let h = i.wrapping_mul(2654435761) % 1000;
        let a = match i % 7 {
            0 => gap(i).to_string(),
            _ => format!("{}", (h % 97) as f64 * 0.25),
        };
        let b = match i % 5 {
            0 => gap(i + 1).to_string(),
            _ => format!("{}", (h % 41) as f64 * 0.5 - 3.0),
        };
        let c = match i % 9 {
            0 => gap(i + 2).to_string(),
            _ => format!("{}", h % 4),
        };
        let d = match i % 11 {
            0 => gap(i + 3).to_string(),
            _ => ["oslo", "bergen", "tromso"][h % 3].to_string(),
        };
        let e = match i % 13 {
            0 => String::new(),
            _ => ["basic", "plus"][h % 2].to_string(),
        };
        let y = if i % 20 == 7 { "yes" } else { "no" };
        csv.push_str(&format!("{a},{b},{c},{d},{e},{y}\n"));
    }
    csv
}

fn strategy(s: pb::MissingStrategy) -> pb::MissingValues {
    pb::MissingValues {
        strategy: s as i32,
        ..Default::default()
    }
}

fn prepared(csv: &str) -> (JobSpec, Prepared) {
    let proto = pb::JobSpec {
        task: pb::Task::BinaryClassification as i32,
        data: Some(pb::DataSpec {
            source: Some(pb::data_spec::Source::DatasetId("ds-x".into())),
            target_columns: vec!["y".into()],
            categorical_columns: vec!["d".into(), "e".into()],
            validation_fraction: Some(0.25),
            column_missing_values: [
                ("a", pb::MissingStrategy::MissingMean),
                ("b", pb::MissingStrategy::MissingMedian),
                ("c", pb::MissingStrategy::MissingMostFrequent),
                ("d", pb::MissingStrategy::MissingMostFrequent),
            ]
            .into_iter()
            .map(|(c, s)| (c.to_string(), strategy(s)))
            .collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let spec = JobSpec::from_proto(&proto).unwrap();
    let table = Table::from_csv(csv.as_bytes()).unwrap();
    let data = Dataset::from_table(&table, &spec.data, spec.task).unwrap();
    let prepared = prepare(&data, &spec.data);
    (spec, prepared)
}

#[test]
fn fills_split_and_class_weights_equal_scikit_learn() {
    let csv = table();
    let (spec, p) = prepared(&csv);
    let split = &p.report.split;
    let train_rows: Vec<String> = split.train.iter().map(usize::to_string).collect();
    let input = format!(
        "{csv}\n--\n{}\n--\n{}",
        train_rows.join(" "),
        split.validation.len()
    );
    let answer = crate::python::run(SKLEARN_SCRIPT, &input);
    let lines: Vec<&str> = answer.lines().collect();
    let number = |i: usize| lines[i].parse::<f64>().unwrap();

    let fill = |j: usize| p.encoding.rules[j].missing.clone();
    assert_eq!(fill(0), Fill::Value(number(0)), "a: mean");
    assert_eq!(fill(1), Fill::Value(number(1)), "b: median");
    assert_eq!(fill(2), Fill::Value(number(2)), "c: most frequent");
    assert_eq!(
        fill(3),
        Fill::Category(lines[3].to_string()),
        "d: most frequent"
    );
    assert_eq!(fill(4), Fill::OwnCategory, "e: the categorical default");
    // The report says the same, with every gap counted.
    let report: Vec<(&str, &str, u64, &str)> = p
        .report
        .filled
        .iter()
        .map(|f| (f.column.as_str(), f.strategy, f.cells, f.value.as_str()))
        .collect();
    let shown = |i: usize| number(i).to_string();
    let (a, b, c) = (shown(0), shown(1), shown(2));
    assert_eq!(
        report,
        [
            ("a", "mean", 58, a.as_str()),
            ("b", "median", 80, b.as_str()),
            ("c", "most_frequent", 45, c.as_str()),
            ("d", "most_frequent", 37, lines[3]),
            ("e", "own_category", 31, ""),
        ]
    );

    // Validation rows per class ("no", "yes"), as sklearn's stratified split.
    let labels: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap())
        .collect();
    let label = |r: usize| labels[r];
    let ours: Vec<usize> = ["no", "yes"]
        .map(|c| split.validation.iter().filter(|&&r| label(r) == c).count())
        .to_vec();
    let theirs: Vec<usize> = lines[4]
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(ours, theirs, "validation rows per class");
    assert_eq!(ours, [95, 5]);

    // compute_class_weight("balanced") on the training rows.
    let weights: Vec<f64> = lines[5]
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    let counts = p.train_class_counts();
    let mut ce = LossSpec::plain(LossKind::CrossEntropy);
    ce.balanced = true;
    let ours = ce.balanced_for(&counts).class_weights;
    assert!(
        ours.iter()
            .zip(&weights)
            .all(|(a, b)| (a - b).abs() < 1e-12),
        "{ours:?} vs {weights:?}"
    );
    let bce = LossSpec {
        balanced: true,
        ..spec.training.loss.clone()
    };
    let pos_weight = bce.balanced_for(&counts).pos_weight;
    assert!((pos_weight - weights[1] / weights[0]).abs() < 1e-12);
}
