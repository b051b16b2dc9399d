//! `spec.data`: where the rows come from, which columns are targets, features
//! and categories, how they are scaled, and the validation split.

use std::collections::{BTreeMap, HashSet};

use kiln::v1 as pb;
use serde::{Deserialize, Serialize};

use super::check::unknown_enum;
use super::Task;
use crate::error::{FieldError, Result};

/// The most columns a table may have (CSV, inline rows or NumPy arrays), and
/// so the most names a column list of the spec may hold.
pub const MAX_COLUMNS: usize = 1 << 16;

/// `spec.data`, validated: where the rows come from and how they become features and targets.
#[derive(Debug, Clone, PartialEq)]
pub struct DataSpec {
    /// A stored dataset or rows sent with the job.
    pub source: DataSource,
    /// The columns the model predicts; exactly one for classification.
    pub target_columns: Vec<String>,
    /// Empty: every column that is not a target.
    pub feature_columns: Vec<String>,
    /// Share of rows held out for validation, in (0, 1).
    pub validation_fraction: f64,
    /// Seeds the shuffle before the split, so a job's split is reproducible.
    pub split_seed: u64,
    /// How numeric feature columns are scaled unless `column_scaling` says otherwise.
    pub feature_scaling: Scaling,
    /// How regression targets are scaled; always `None` for classification.
    pub target_scaling: Scaling,
    /// Feature columns one-hot encoded (never scaled).
    pub categorical_columns: Vec<String>,
    /// Per-column overrides of `feature_scaling`.
    pub column_scaling: BTreeMap<String, Scaling>,
}

impl DataSpec {
    /// The share of rows held out for validation when unset.
    pub const DEFAULT_VALIDATION_FRACTION: f64 = 0.2;
}

/// Where a job's rows come from.
#[derive(Debug, Clone, PartialEq)]
pub enum DataSource {
    /// A dataset uploaded before, by id.
    Dataset(String),
    /// Rows sent inside the job spec.
    Inline {
        /// The column names.
        columns: Vec<String>,
        /// The rows, one value per column.
        rows: Vec<Vec<f64>>,
    },
}

/// How a column is scaled, fitted on the training rows only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scaling {
    /// Left as is.
    None,
    /// To zero mean and unit variance.
    Standard,
    /// To [0, 1].
    MinMax,
}

pub(super) fn validate_data(data: &pb::DataSpec, task: Task) -> Result<DataSpec> {
    let source = match &data.source {
        None => {
            return Err(FieldError::new(
                "spec.data",
                "set either dataset_id or inline",
            ))
        }
        Some(pb::data_spec::Source::DatasetId(id)) if id.is_empty() => {
            return Err(FieldError::new("spec.data.dataset_id", "must not be empty"))
        }
        Some(pb::data_spec::Source::DatasetId(id)) => DataSource::Dataset(id.clone()),
        Some(pb::data_spec::Source::Inline(inline)) => DataSource::Inline {
            columns: inline.columns.clone(),
            rows: inline.rows.iter().map(|r| r.values.clone()).collect(),
        },
    };
    if data.target_columns.is_empty() {
        return Err(FieldError::new("spec.data.target_columns", "required"));
    }
    if task.is_classification() && data.target_columns.len() != 1 {
        return Err(FieldError::new(
            "spec.data.target_columns",
            "classification takes exactly one target column",
        ));
    }
    check_unique("spec.data.target_columns", &data.target_columns)?;
    check_unique("spec.data.feature_columns", &data.feature_columns)?;
    let targets: HashSet<&String> = data.target_columns.iter().collect();
    if let Some(c) = data.feature_columns.iter().find(|c| targets.contains(c)) {
        return Err(FieldError::new(
            "spec.data.feature_columns",
            format!("\"{c}\" is also a target column"),
        ));
    }
    let validation_fraction = data
        .validation_fraction
        .unwrap_or(DataSpec::DEFAULT_VALIDATION_FRACTION);
    if !(validation_fraction > 0.0 && validation_fraction < 1.0) {
        return Err(FieldError::new(
            "spec.data.validation_fraction",
            "must be in (0, 1)",
        ));
    }
    check_unique("spec.data.categorical_columns", &data.categorical_columns)?;
    if let Some(c) = data
        .categorical_columns
        .iter()
        .find(|c| targets.contains(c))
    {
        return Err(FieldError::new(
            "spec.data.categorical_columns",
            format!("\"{c}\" is a target column; class labels need no encoding"),
        ));
    }
    let feature_scaling = scaling("spec.data.feature_scaling", data.feature_scaling)?;
    let categorical: HashSet<&String> = data.categorical_columns.iter().collect();
    let mut column_scaling = BTreeMap::new();
    for (column, &value) in &data.column_scaling {
        let field = format!("spec.data.column_scaling[\"{column}\"]");
        if categorical.contains(column) {
            return Err(FieldError::new(
                field,
                "a categorical column is one-hot encoded, never scaled",
            ));
        }
        if targets.contains(column) {
            return Err(FieldError::new(
                field,
                "is a target column; use spec.data.target_scaling",
            ));
        }
        let kind = match value {
            0 => feature_scaling,
            v => scaling(&field, v)?,
        };
        column_scaling.insert(column.clone(), kind);
    }
    let target_scaling = scaling("spec.data.target_scaling", data.target_scaling)?;
    if task.is_classification() && data.target_scaling != 0 {
        return Err(FieldError::new(
            "spec.data.target_scaling",
            "only applies to regression",
        ));
    }
    Ok(DataSpec {
        source,
        target_columns: data.target_columns.clone(),
        feature_columns: data.feature_columns.clone(),
        validation_fraction,
        split_seed: data.split_seed,
        feature_scaling,
        target_scaling: if task.is_classification() {
            Scaling::None
        } else {
            target_scaling
        },
        categorical_columns: data.categorical_columns.clone(),
        column_scaling,
    })
}

fn check_unique(field: &str, names: &[String]) -> Result<()> {
    if names.len() > MAX_COLUMNS {
        return Err(FieldError::new(
            field,
            format!("at most {MAX_COLUMNS} columns"),
        ));
    }
    // A set: the lists come from the request, however long it is.
    let mut seen = HashSet::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        if name.is_empty() {
            return Err(FieldError::new(
                format!("{field}[{i}]"),
                "must not be empty",
            ));
        }
        if !seen.insert(name) {
            return Err(FieldError::new(
                format!("{field}[{i}]"),
                format!("\"{name}\" is listed twice"),
            ));
        }
    }
    Ok(())
}

fn scaling(field: &str, value: i32) -> Result<Scaling> {
    match pb::Scaling::try_from(value) {
        Ok(pb::Scaling::Default | pb::Scaling::Standard) => Ok(Scaling::Standard),
        Ok(pb::Scaling::None) => Ok(Scaling::None),
        Ok(pb::Scaling::MinMax) => Ok(Scaling::MinMax),
        Err(_) => Err(unknown_enum(field, value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::testing::{err, minimal};
    use crate::spec::JobSpec;

    #[test]
    fn data_preprocessing_is_validated() {
        let data = |f: &dyn Fn(&mut pb::DataSpec)| {
            let mut s = minimal();
            f(s.data.as_mut().unwrap());
            s
        };
        let s = data(&|d| {
            d.categorical_columns = vec!["color".into()];
            d.feature_scaling = pb::Scaling::MinMax as i32;
            d.column_scaling = [
                ("age".to_string(), pb::Scaling::None as i32),
                ("h".to_string(), pb::Scaling::Default as i32),
            ]
            .into();
        });
        let spec = JobSpec::from_proto(&s).unwrap().data;
        assert_eq!(spec.categorical_columns, ["color"]);
        assert_eq!(spec.column_scaling["age"], Scaling::None);
        assert_eq!(
            spec.column_scaling["h"],
            Scaling::MinMax,
            "DEFAULT means feature_scaling"
        );
        type Edit<'a> = &'a dyn Fn(&mut pb::DataSpec);
        let cases: Vec<(Edit, &str)> = vec![
            (
                &|d| d.categorical_columns = vec!["y".into()],
                "spec.data.categorical_columns: \"y\" is a target column; class labels need no encoding",
            ),
            (
                &|d| d.categorical_columns = vec!["c".into(), "c".into()],
                "spec.data.categorical_columns[1]: \"c\" is listed twice",
            ),
            (
                &|d| {
                    d.categorical_columns = vec!["c".into()];
                    d.column_scaling = [("c".to_string(), 1)].into();
                },
                "spec.data.column_scaling[\"c\"]: a categorical column is one-hot encoded, never scaled",
            ),
            (
                &|d| d.column_scaling = [("y".to_string(), 1)].into(),
                "spec.data.column_scaling[\"y\"]: is a target column; use spec.data.target_scaling",
            ),
            (
                &|d| d.column_scaling = [("a".to_string(), 9)].into(),
                "spec.data.column_scaling[\"a\"]: unknown value 9",
            ),
        ];
        for (edit, want) in cases {
            assert_eq!(err(&data(edit)), want);
        }
    }

    /// Column lists come from the request: checked with sets, and bounded.
    #[test]
    fn long_column_lists_are_checked_quickly() {
        let names = |n: usize| (0..n).map(|i| format!("c{i}")).collect::<Vec<_>>();
        let mut s = minimal();
        let data = s.data.as_mut().unwrap();
        data.feature_columns = names(MAX_COLUMNS);
        data.feature_columns.push("c0".into());
        let started = std::time::Instant::now();
        assert!(err(&s).starts_with("spec.data.feature_columns: at most 65536 columns"));
        let data = s.data.as_mut().unwrap();
        data.feature_columns.truncate(MAX_COLUMNS);
        data.feature_columns[MAX_COLUMNS - 1] = "c7".into();
        assert_eq!(
            err(&s),
            "spec.data.feature_columns[65535]: \"c7\" is listed twice"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
