//! From a dataset to what the trainer consumes: a seeded train/validation
//! split, with scalers fitted on the training rows only.

use rand::{seq::SliceRandom, SeedableRng};

use crate::data::{Dataset, RowCounts, Targets};
use crate::encoding::{Fill, InputColumn, InputEncoding};
use crate::error::FieldError;
use crate::scaler::Scaler;
use crate::spec::{DataSpec, MissingStrategy, Scaling};

/// One side of the split, already scaled.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// Row-major features, `width` per row.
    pub x: Vec<f32>,
    /// The targets of the same rows.
    pub y: SplitTargets,
    /// Number of rows on this side.
    pub rows: usize,
}

/// One side's targets, as the model takes them.
#[derive(Debug, Clone, PartialEq)]
pub enum SplitTargets {
    /// Regression targets (scaled by the target scaler), `outputs` per row.
    Values(Vec<f32>),
    /// Class indices.
    Classes(Vec<i64>),
}

/// Everything training needs, and everything Predict needs to undo.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// The rows the model trains on.
    pub train: Split,
    /// The held-out rows the epoch metrics are computed on.
    pub validation: Split,
    /// Features per row.
    pub width: usize,
    /// Regression: number of targets; classification: number of classes.
    pub outputs: usize,
    /// The input columns and how they became the features.
    pub encoding: InputEncoding,
    /// The features' names, in order.
    pub feature_names: Vec<String>,
    /// The target columns' names.
    pub target_names: Vec<String>,
    /// Classification: the label of each class index. Empty for regression.
    pub class_labels: Vec<String>,
    /// Fitted on the training rows; Predict applies it to every input.
    pub feature_scaler: Scaler,
    /// Regression only: maps scaled outputs back to target units.
    pub target_scaler: Option<Scaler>,
    /// What reading the data did: rows dropped, cells filled.
    pub report: DataReport,
}

/// How a table became the training data: rows dropped, missing cells filled.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DataReport {
    /// Rows read, and rows dropped before the split.
    pub rows: RowCounts,
    /// Every feature column with a missing cell, in column order.
    pub filled: Vec<ColumnFill>,
    /// The table rows (0-based) on each side of the split.
    pub split: SplitRows,
}

/// Which table rows went to training and which to validation, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SplitRows {
    /// The training split's rows.
    pub train: Vec<usize>,
    /// The validation split's rows.
    pub validation: Vec<usize>,
}

/// One column's missing cells and what filled them.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnFill {
    /// The column.
    pub column: String,
    /// As [`MissingStrategy::name`] says it.
    pub strategy: &'static str,
    /// Cells filled, in both splits.
    pub cells: u64,
    /// The fill: a number, a category, or "" for the column's own category.
    pub value: String,
    /// Whether a "was missing" feature was added.
    pub indicator: bool,
}

impl Prepared {
    /// Classification: the training split's rows per class; empty for regression.
    pub fn train_class_counts(&self) -> Vec<u64> {
        match &self.train.y {
            SplitTargets::Classes(classes) => class_counts(classes, self.outputs),
            SplitTargets::Values(_) => Vec::new(),
        }
    }
}

/// Number of validation rows for `rows` rows: rounded, at least 1, and leaving
/// at least 1 training row.
pub fn validation_rows(rows: usize, fraction: f64) -> usize {
    ((rows as f64 * fraction).round() as usize).clamp(1, rows.saturating_sub(1).max(1))
}

/// Refuses a split of `rows` rows at `fraction` that leaves fewer than 2
/// training rows (validation gets at least 1 row, see [`validation_rows`]):
/// a clear error rather than a model trained on one row.
pub fn check_split(rows: usize, fraction: f64) -> Result<(), FieldError> {
    let validation = ((rows as f64 * fraction).round() as usize).max(1);
    let training = rows.saturating_sub(validation);
    if training < 2 {
        return Err(FieldError::new(
            "spec.data.validation_fraction",
            format!(
                "{fraction} of {rows} rows leaves {training} training rows and {validation} \
                 validation rows; training needs at least 2 and validation 1: lower the \
                 fraction or add rows"
            ),
        ));
    }
    Ok(())
}

/// Splits `data` with the spec's seed and fraction (stratified by class when
/// the spec says so), fits the missing-value fills and the scalers on the
/// training rows, and fills and scales both sides.
pub fn prepare(data: &Dataset, spec: &DataSpec) -> Prepared {
    let rows = data.rows();
    let width = data.width();
    let n_val = validation_rows(rows, spec.validation_fraction);
    let order = match (&data.targets, spec.stratified) {
        (Targets::Classes { index, labels }, true) => {
            stratified_order(index, labels.len(), n_val, spec.split_seed)
        }
        _ => {
            let mut order: Vec<usize> = (0..rows).collect();
            order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(spec.split_seed));
            order
        }
    };
    let (val_idx, train_idx) = order.split_at(n_val);

    let gather = |values: &[f32], per_row: usize, idx: &[usize]| -> Vec<f32> {
        idx.iter()
            .flat_map(|&r| values[r * per_row..(r + 1) * per_row].iter().copied())
            .collect()
    };
    let mut train_x = gather(&data.x, width, train_idx);
    let mut val_x = gather(&data.x, width, val_idx);
    let mut encoding = data.encoding.clone();
    encoding.fit_fills(&train_x);
    let mut filled = vec![0; encoding.columns.len()];
    for x in [&mut train_x, &mut val_x] {
        encoding
            .fill_missing(x, &mut filled, |_, _| String::new())
            .expect("the training encoder left only NaN gaps, and every one has a fill");
    }
    // One-hot features stay 0/1; the others take their column's scaling.
    let kinds: Vec<Scaling> = data
        .encoding
        .feature_sources()
        .into_iter()
        .map(|(column, one_hot)| match one_hot {
            true => Scaling::None,
            false => *spec
                .column_scaling
                .get(column)
                .unwrap_or(&spec.feature_scaling),
        })
        .collect();
    let feature_scaler = Scaler::fit_columns(&kinds, &train_x);
    feature_scaler.transform(&mut train_x);
    feature_scaler.transform(&mut val_x);

    let (train_y, val_y, outputs, class_labels, target_scaler) = match &data.targets {
        Targets::Values(y) => {
            let t = data.target_names.len();
            let mut train_y = gather(y, t, train_idx);
            let mut val_y = gather(y, t, val_idx);
            let scaler = Scaler::fit(spec.target_scaling, &train_y, t);
            scaler.transform(&mut train_y);
            scaler.transform(&mut val_y);
            (
                SplitTargets::Values(train_y),
                SplitTargets::Values(val_y),
                t,
                Vec::new(),
                Some(scaler),
            )
        }
        Targets::Classes { index, labels } => {
            let pick = |idx: &[usize]| idx.iter().map(|&r| index[r]).collect();
            (
                SplitTargets::Classes(pick(train_idx)),
                SplitTargets::Classes(pick(val_idx)),
                labels.len(),
                labels.clone(),
                None,
            )
        }
    };
    Prepared {
        train: Split {
            x: train_x,
            y: train_y,
            rows: train_idx.len(),
        },
        validation: Split {
            x: val_x,
            y: val_y,
            rows: val_idx.len(),
        },
        width,
        outputs,
        report: DataReport {
            rows: data.rows.clone(),
            filled: fill_report(&encoding, &data.missing_cells, spec),
            split: SplitRows {
                train: train_idx.iter().map(|&r| data.table_rows[r]).collect(),
                validation: val_idx.iter().map(|&r| data.table_rows[r]).collect(),
            },
        },
        encoding,
        feature_names: data.feature_names.clone(),
        target_names: data.target_names.clone(),
        class_labels,
        feature_scaler,
        target_scaler,
    }
}

/// A seeded order whose first `n_val` rows hold each class in its share of
/// all rows, as scikit-learn's `train_test_split(stratify=y)`: each class
/// gets the floor of its share, and the rows left over go to the classes with
/// the largest remainders (the larger class, then the lower index, on a tie).
pub fn stratified_order(classes: &[i64], k: usize, n_val: usize, seed: u64) -> Vec<usize> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); k];
    for (r, &c) in classes.iter().enumerate() {
        members[c as usize].push(r);
    }
    let n = classes.len() as f64;
    let share = |c: usize| members[c].len() as f64 * n_val as f64 / n;
    let mut take: Vec<usize> = (0..k).map(|c| share(c).floor() as usize).collect();
    let mut by_remainder: Vec<usize> = (0..k).collect();
    by_remainder.sort_by(|&a, &b| {
        let (ra, rb) = (share(a) - share(a).floor(), share(b) - share(b).floor());
        rb.total_cmp(&ra)
            .then(members[b].len().cmp(&members[a].len()))
            .then(a.cmp(&b))
    });
    let mut left = n_val - take.iter().sum::<usize>();
    for &c in by_remainder.iter().cycle().take(k * (left + 1)) {
        if left == 0 {
            break;
        }
        if take[c] < members[c].len() {
            take[c] += 1;
            left -= 1;
        }
    }
    let (mut validation, mut train) = (Vec::with_capacity(n_val), Vec::new());
    for (c, rows) in members.iter_mut().enumerate() {
        rows.shuffle(&mut rng);
        validation.extend_from_slice(&rows[..take[c]]);
        train.extend_from_slice(&rows[take[c]..]);
    }
    // Mixed, so that neither side is ordered by class.
    validation.shuffle(&mut rng);
    train.shuffle(&mut rng);
    validation.extend(train);
    validation
}

/// Per feature column with a gap: its strategy, cells and fitted fill.
fn fill_report(encoding: &InputEncoding, missing: &[u64], spec: &DataSpec) -> Vec<ColumnFill> {
    encoding
        .columns
        .iter()
        .enumerate()
        .filter(|&(j, _)| missing.get(j).copied().unwrap_or(0) > 0)
        .map(|(j, column)| {
            let categorical = matches!(column, InputColumn::OneHot { .. });
            let strategy = spec
                .missing_for(column.name(), categorical)
                .strategy
                .unwrap_or(MissingStrategy::default_for(categorical));
            let rules = encoding.rules(j);
            ColumnFill {
                column: column.name().to_string(),
                strategy: strategy.name(),
                cells: missing[j],
                value: match &rules.missing {
                    Fill::Value(v) => v.to_string(),
                    Fill::Category(c) => c.clone(),
                    _ => String::new(),
                },
                indicator: rules.indicator,
            }
        })
        .collect()
}

/// Class counts of the training split, in class order.
pub fn class_counts(classes: &[i64], k: usize) -> Vec<u64> {
    let mut counts = vec![0; k];
    for &c in classes {
        counts[c as usize] += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::InputColumn;
    use crate::spec::DataSource;

    fn dataset(rows: usize) -> Dataset {
        Dataset {
            encoding: InputEncoding::numeric(&["a"]),
            feature_names: vec!["a".into()],
            target_names: vec!["y".into()],
            x: (0..rows).map(|i| i as f32).collect(),
            targets: Targets::Values((0..rows).map(|i| 10.0 * i as f32).collect()),
            missing_cells: vec![0],
            rows: Default::default(),
            table_rows: (0..rows).collect(),
        }
    }

    fn spec(seed: u64) -> DataSpec {
        DataSpec {
            source: DataSource::Dataset("d".into()),
            target_columns: vec!["y".into()],
            feature_columns: vec![],
            validation_fraction: 0.25,
            split_seed: seed,
            feature_scaling: Scaling::None,
            target_scaling: Scaling::None,
            categorical_columns: vec![],
            column_scaling: Default::default(),
            missing_values: Default::default(),
            column_missing_values: Default::default(),
            ignore_unseen: true,
            column_ignore_unseen: Default::default(),
            stratified: false,
        }
    }

    #[test]
    fn split_is_seeded_disjoint_and_complete() {
        let p = prepare(&dataset(100), &spec(7));
        assert_eq!((p.train.rows, p.validation.rows), (75, 25));
        let mut all: Vec<f32> = p.train.x.iter().chain(&p.validation.x).copied().collect();
        all.sort_by(f32::total_cmp);
        assert_eq!(all, (0..100).map(|i| i as f32).collect::<Vec<_>>());
        // Targets travel with their rows.
        let SplitTargets::Values(y) = &p.train.y else {
            panic!()
        };
        assert!(p.train.x.iter().zip(y).all(|(x, y)| *y == 10.0 * x));
        assert_eq!(prepare(&dataset(100), &spec(7)), p);
        assert_ne!(prepare(&dataset(100), &spec(8)).train.x, p.train.x);
    }

    #[test]
    fn scalers_are_fitted_on_training_rows_only() {
        let mut s = spec(1);
        s.feature_scaling = Scaling::Standard;
        let p = prepare(&dataset(40), &s);
        let n = p.train.rows as f32;
        let mean: f32 = p.train.x.iter().sum::<f32>() / n;
        assert!(mean.abs() < 1e-5, "training features are centred");
        let raw_train_mean: f64 = p
            .train
            .x
            .iter()
            .map(|&v| v as f64 * p.feature_scaler.scale[0] + p.feature_scaler.offset[0])
            .sum::<f64>()
            / n as f64;
        assert!((raw_train_mean - p.feature_scaler.offset[0]).abs() < 1e-4);
    }

    #[test]
    fn one_hot_features_are_never_scaled_and_columns_override_scaling() {
        let data = Dataset {
            encoding: InputEncoding {
                columns: vec![
                    InputColumn::Numeric("a".into()),
                    InputColumn::Numeric("b".into()),
                    InputColumn::OneHot {
                        name: "c".into(),
                        categories: vec!["p".into(), "q".into()],
                        numeric: false,
                    },
                ],
                rules: Vec::new(),
            },
            feature_names: vec!["a".into(), "b".into(), "c=p".into(), "c=q".into()],
            target_names: vec!["y".into()],
            x: (0..40)
                .flat_map(|i| [i as f32, 3.0 * i as f32, (i % 2) as f32, (1 - i % 2) as f32])
                .collect(),
            targets: Targets::Values((0..40).map(|i| i as f32).collect()),
            missing_cells: vec![0; 3],
            rows: Default::default(),
            table_rows: (0..40).collect(),
        };
        let mut s = spec(3);
        s.feature_scaling = Scaling::Standard;
        s.column_scaling = [("b".to_string(), Scaling::MinMax)].into();
        let p = prepare(&data, &s);
        let column = |j: usize| {
            p.train
                .x
                .iter()
                .skip(j)
                .step_by(4)
                .copied()
                .collect::<Vec<_>>()
        };
        let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
        assert!(mean(&column(0)).abs() < 1e-5, "a is standardised");
        let b = column(1);
        assert_eq!(b.iter().copied().fold(f32::INFINITY, f32::min), 0.0);
        assert_eq!(b.iter().copied().fold(f32::NEG_INFINITY, f32::max), 1.0);
        for j in [2, 3] {
            assert!(
                column(j).iter().all(|&v| v == 0.0 || v == 1.0),
                "one-hot stays 0/1"
            );
        }
        assert_eq!(p.feature_scaler.scale[2..], [1.0, 1.0]);
        assert_eq!(p.feature_scaler.offset[2..], [0.0, 0.0]);
    }

    #[test]
    fn splits_leaving_under_two_training_rows_are_refused() {
        assert!(check_split(3, 0.2).is_ok());
        assert!(check_split(10, 0.8).is_ok());
        let e = check_split(2, 0.2).unwrap_err();
        assert_eq!(e.field, "spec.data.validation_fraction");
        assert!(
            e.message
                .contains("leaves 1 training rows and 1 validation rows"),
            "{e}"
        );
        let e = check_split(10, 0.9).unwrap_err();
        assert!(
            e.message
                .contains("0.9 of 10 rows leaves 1 training rows and 9"),
            "{e}"
        );
    }

    #[test]
    fn validation_rows_are_bounded() {
        assert_eq!(validation_rows(2, 0.01), 1);
        assert_eq!(validation_rows(2, 0.99), 1);
        assert_eq!(validation_rows(10, 0.2), 2);
    }

    #[test]
    fn fills_are_fitted_on_training_rows_and_reported() {
        // Column a: present values i for i % 3 != 0; the fill is the
        // training rows' median, which the validation rows do not move.
        let csv: String = (0..40)
            .map(|i| {
                let a = if i % 3 == 0 {
                    String::new()
                } else {
                    i.to_string()
                };
                let c = if i % 5 == 0 {
                    ""
                } else if i < 30 {
                    "p"
                } else {
                    "q"
                };
                format!("{a},{c},{i}\n")
            })
            .collect();
        let table = crate::data::Table::from_csv(format!("a,c,y\n{csv}").as_bytes()).unwrap();
        let mut s = spec(5);
        s.categorical_columns = vec!["c".into()];
        s.column_missing_values = [(
            "c".to_string(),
            crate::spec::MissingValues {
                strategy: Some(MissingStrategy::MostFrequent),
                ..Default::default()
            },
        )]
        .into();
        let data = Dataset::from_table(&table, &s, crate::spec::Task::Regression).unwrap();
        let p = prepare(&data, &s);
        // Train rows' raw a values (targets are the row numbers).
        let SplitTargets::Values(y) = &p.train.y else {
            panic!()
        };
        let mut present: Vec<f64> = y
            .iter()
            .map(|&v| v as usize)
            .filter(|i| i % 3 != 0)
            .map(|i| i as f64)
            .collect();
        present.sort_by(f64::total_cmp);
        let n = present.len();
        let median = if n % 2 == 1 {
            present[n / 2]
        } else {
            (present[n / 2 - 1] + present[n / 2]) / 2.0
        };
        assert_eq!(p.encoding.rules[0].missing, Fill::Value(median));
        assert_eq!(p.encoding.rules[1].missing, Fill::Category("p".into()));
        assert_eq!(p.report.filled.len(), 2);
        assert_eq!(p.report.filled[0].column, "a");
        assert_eq!(p.report.filled[0].strategy, "median");
        assert_eq!(p.report.filled[0].cells, 14);
        assert_eq!(p.report.filled[0].value, median.to_string());
        assert_eq!(
            (
                p.report.filled[1].strategy,
                p.report.filled[1].cells,
                p.report.filled[1].value.as_str()
            ),
            ("most_frequent", 8, "p")
        );
        assert!(p
            .train
            .x
            .iter()
            .chain(&p.validation.x)
            .all(|v| v.is_finite()));
    }

    #[test]
    fn stratified_split_keeps_class_shares() {
        // 5% positives: 10 of 200. A fifth held out keeps 2 positives there.
        let classes: Vec<i64> = (0..200).map(|i| i64::from(i % 20 == 0)).collect();
        let order = stratified_order(&classes, 2, 40, 3);
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, (0..200).collect::<Vec<_>>(), "a permutation");
        let positives = |rows: &[usize]| rows.iter().filter(|&&r| classes[r] == 1).count();
        assert_eq!((positives(&order[..40]), positives(&order[40..])), (2, 8));
        // Remainders: 3 classes of 7, 7 and 6 rows, 5 held out: 7*5/20 = 1.75,
        // 1.75, 1.5 -> floors 1, 1, 1 and the two largest remainders get one more.
        let classes: Vec<i64> = (0..20).map(|i| [0, 1, 2][i % 3]).collect();
        let order = stratified_order(&classes, 3, 5, 0);
        let count = |c: i64| order[..5].iter().filter(|&&r| classes[r] == c).count();
        assert_eq!((count(0), count(1), count(2)), (2, 2, 1));
        assert_ne!(stratified_order(&classes, 3, 5, 1), order, "seeded");
    }

    #[test]
    fn class_counts_count_each_class() {
        let y: Vec<i64> = [0; 6].into_iter().chain([1; 3]).chain([2]).collect();
        assert_eq!(class_counts(&y, 4), [6, 3, 1, 0]);
    }
}
