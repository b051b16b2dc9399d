//! From a dataset to what the trainer consumes: a seeded train/validation
//! split, with scalers fitted on the training rows only.

use rand::{seq::SliceRandom, SeedableRng};

use crate::data::{Dataset, Targets};
use crate::encoding::InputEncoding;
use crate::scaler::Scaler;
use crate::spec::{DataSpec, Scaling};

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
}

/// Number of validation rows for `rows` rows: rounded, at least 1, and leaving
/// at least 1 training row.
pub fn validation_rows(rows: usize, fraction: f64) -> usize {
    ((rows as f64 * fraction).round() as usize).clamp(1, rows.saturating_sub(1).max(1))
}

/// Splits `data` with the spec's seed and fraction, and scales both sides with scalers fitted on the training rows.
pub fn prepare(data: &Dataset, spec: &DataSpec) -> Prepared {
    let rows = data.rows();
    let width = data.width();
    let mut order: Vec<usize> = (0..rows).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(spec.split_seed));
    let n_val = validation_rows(rows, spec.validation_fraction);
    let (val_idx, train_idx) = order.split_at(n_val);

    let gather = |values: &[f32], per_row: usize, idx: &[usize]| -> Vec<f32> {
        idx.iter()
            .flat_map(|&r| values[r * per_row..(r + 1) * per_row].iter().copied())
            .collect()
    };
    let mut train_x = gather(&data.x, width, train_idx);
    let mut val_x = gather(&data.x, width, val_idx);
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
        encoding: data.encoding.clone(),
        feature_names: data.feature_names.clone(),
        target_names: data.target_names.clone(),
        class_labels,
        feature_scaler,
        target_scaler,
    }
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
            },
            feature_names: vec!["a".into(), "b".into(), "c=p".into(), "c=q".into()],
            target_names: vec!["y".into()],
            x: (0..40)
                .flat_map(|i| [i as f32, 3.0 * i as f32, (i % 2) as f32, (1 - i % 2) as f32])
                .collect(),
            targets: Targets::Values((0..40).map(|i| i as f32).collect()),
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
    fn validation_rows_are_bounded() {
        assert_eq!(validation_rows(2, 0.01), 1);
        assert_eq!(validation_rows(2, 0.99), 1);
        assert_eq!(validation_rows(10, 0.2), 2);
    }
}
