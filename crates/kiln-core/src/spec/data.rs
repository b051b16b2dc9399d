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
    /// How missing cells are filled, for every column it applies to.
    pub missing_values: MissingValues,
    /// Per-column overrides of `missing_values`.
    pub column_missing_values: BTreeMap<String, MissingValues>,
    /// Whether Predict ignores categories unseen in training (else an error).
    pub ignore_unseen: bool,
    /// Per-column overrides of `ignore_unseen`.
    pub column_ignore_unseen: BTreeMap<String, bool>,
    /// Stratified by class (classification) or a plain shuffle.
    pub stratified: bool,
}

/// `spec.data.missing_values`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MissingValues {
    /// `None`: the default for the column's kind.
    pub strategy: Option<MissingStrategy>,
    /// `MissingStrategy::Constant`'s value.
    pub constant: f64,
    /// Add a 0/1 "was missing" feature when the column has a gap.
    pub add_indicator: bool,
}

/// How a column's missing cells are filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingStrategy {
    /// Numeric: the training split's mean.
    Mean,
    /// Numeric: the training split's median.
    Median,
    /// Numeric: a given value.
    Constant,
    /// Either kind: the training split's most frequent value.
    MostFrequent,
    /// Categorical: a category of its own.
    OwnCategory,
    /// Either kind: the row is dropped before the split.
    DropRow,
}

impl MissingStrategy {
    /// The default for a column: the median for numeric columns (robust to
    /// the skew and outliers of real tables), a category of its own for
    /// categorical ones (keeps "was missing" as information).
    pub fn default_for(categorical: bool) -> Self {
        match categorical {
            true => MissingStrategy::OwnCategory,
            false => MissingStrategy::Median,
        }
    }

    /// Whether the strategy applies to a column of this kind.
    pub fn applies_to(self, categorical: bool) -> bool {
        match self {
            MissingStrategy::Mean | MissingStrategy::Median | MissingStrategy::Constant => {
                !categorical
            }
            MissingStrategy::OwnCategory => categorical,
            MissingStrategy::MostFrequent | MissingStrategy::DropRow => true,
        }
    }

    /// As the data report names it.
    pub fn name(self) -> &'static str {
        match self {
            MissingStrategy::Mean => "mean",
            MissingStrategy::Median => "median",
            MissingStrategy::Constant => "constant",
            MissingStrategy::MostFrequent => "most_frequent",
            MissingStrategy::OwnCategory => "own_category",
            MissingStrategy::DropRow => "drop_row",
        }
    }
}

impl DataSpec {
    /// How column `name` (categorical or not) fills its missing cells: its
    /// own setting, else the spec-wide one where it applies, else the default.
    pub fn missing_for(&self, name: &str, categorical: bool) -> MissingValues {
        let chosen = self
            .column_missing_values
            .get(name)
            .copied()
            .unwrap_or(self.missing_values);
        let strategy = chosen
            .strategy
            .filter(|s| s.applies_to(categorical))
            .unwrap_or(MissingStrategy::default_for(categorical));
        MissingValues {
            strategy: Some(strategy),
            ..chosen
        }
    }

    /// Whether column `name` encodes an unseen category as all zeros.
    pub fn ignore_unseen_for(&self, name: &str) -> bool {
        *self
            .column_ignore_unseen
            .get(name)
            .unwrap_or(&self.ignore_unseen)
    }
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
    /// The newest dataset uploaded under this name; the server resolves it
    /// to [`DataSource::Dataset`] when it accepts the job.
    DatasetName(String),
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
                "set one of dataset_id, dataset_name or inline",
            ))
        }
        Some(pb::data_spec::Source::DatasetId(id)) if id.is_empty() => {
            return Err(FieldError::new("spec.data.dataset_id", "must not be empty"))
        }
        Some(pb::data_spec::Source::DatasetId(id)) => DataSource::Dataset(id.clone()),
        Some(pb::data_spec::Source::DatasetName(name)) if name.is_empty() => {
            return Err(FieldError::new(
                "spec.data.dataset_name",
                "must not be empty",
            ))
        }
        Some(pb::data_spec::Source::DatasetName(name)) => DataSource::DatasetName(name.clone()),
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
    let missing_values = validate_missing(
        "spec.data.missing_values",
        data.missing_values.as_ref(),
        None,
    )?;
    let mut column_missing_values = BTreeMap::new();
    for (column, value) in &data.column_missing_values {
        let field = format!("spec.data.column_missing_values[\"{column}\"]");
        if targets.contains(column) {
            return Err(FieldError::new(
                field,
                "is a target column; a row with a missing target is dropped",
            ));
        }
        let kind = Some(categorical.contains(column));
        column_missing_values.insert(column.clone(), validate_missing(&field, Some(value), kind)?);
    }
    let ignore_unseen = unseen("spec.data.unseen_categories", data.unseen_categories)?;
    let mut column_ignore_unseen = BTreeMap::new();
    for (column, &value) in &data.column_unseen_categories {
        let field = format!("spec.data.column_unseen_categories[\"{column}\"]");
        if !categorical.contains(column) {
            return Err(FieldError::new(
                field,
                "is not in spec.data.categorical_columns",
            ));
        }
        let ignore = match value {
            0 => ignore_unseen,
            v => unseen(&field, v)?,
        };
        column_ignore_unseen.insert(column.clone(), ignore);
    }
    let stratified = match pb::SplitKind::try_from(data.split) {
        Ok(pb::SplitKind::SplitDefault) => task.is_classification(),
        Ok(pb::SplitKind::SplitRandom) => false,
        Ok(pb::SplitKind::SplitStratified) if task.is_classification() => true,
        Ok(pb::SplitKind::SplitStratified) => {
            return Err(FieldError::new(
                "spec.data.split",
                "SPLIT_STRATIFIED needs classes: it applies to classification",
            ))
        }
        Err(_) => return Err(unknown_enum("spec.data.split", data.split)),
    };
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
        missing_values,
        column_missing_values,
        ignore_unseen,
        column_ignore_unseen,
        stratified,
    })
}

/// A `MissingValues` message; `categorical` is the column's kind, when the
/// setting is for one column (a spec-wide strategy applies where it fits).
fn validate_missing(
    field: &str,
    value: Option<&pb::MissingValues>,
    categorical: Option<bool>,
) -> Result<MissingValues> {
    let Some(value) = value else {
        return Ok(MissingValues::default());
    };
    let strategy = match pb::MissingStrategy::try_from(value.strategy) {
        Ok(pb::MissingStrategy::MissingDefault) => None,
        Ok(pb::MissingStrategy::MissingMean) => Some(MissingStrategy::Mean),
        Ok(pb::MissingStrategy::MissingMedian) => Some(MissingStrategy::Median),
        Ok(pb::MissingStrategy::MissingConstant) => Some(MissingStrategy::Constant),
        Ok(pb::MissingStrategy::MissingMostFrequent) => Some(MissingStrategy::MostFrequent),
        Ok(pb::MissingStrategy::MissingOwnCategory) => Some(MissingStrategy::OwnCategory),
        Ok(pb::MissingStrategy::MissingDropRow) => Some(MissingStrategy::DropRow),
        Err(_) => return Err(unknown_enum(&format!("{field}.strategy"), value.strategy)),
    };
    if let (Some(s), Some(categorical)) = (strategy, categorical) {
        if !s.applies_to(categorical) {
            let kind = if categorical {
                "a categorical"
            } else {
                "a numeric"
            };
            return Err(FieldError::new(
                format!("{field}.strategy"),
                format!("{s:?} does not apply to {kind} column"),
            ));
        }
    }
    if !value.constant.is_finite() {
        return Err(FieldError::new(
            format!("{field}.constant"),
            "must be finite",
        ));
    }
    if value.constant != 0.0 && strategy != Some(MissingStrategy::Constant) {
        return Err(FieldError::new(
            format!("{field}.constant"),
            "only applies to MISSING_CONSTANT",
        ));
    }
    Ok(MissingValues {
        strategy,
        constant: value.constant,
        add_indicator: value.add_indicator,
    })
}

/// `UnseenCategories`: whether to ignore (the default) rather than refuse.
fn unseen(field: &str, value: i32) -> Result<bool> {
    match pb::UnseenCategories::try_from(value) {
        Ok(pb::UnseenCategories::UnseenDefault | pb::UnseenCategories::UnseenIgnore) => Ok(true),
        Ok(pb::UnseenCategories::UnseenError) => Ok(false),
        Err(_) => Err(unknown_enum(field, value)),
    }
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

    fn missing(strategy: pb::MissingStrategy) -> pb::MissingValues {
        pb::MissingValues {
            strategy: strategy as i32,
            ..Default::default()
        }
    }

    #[test]
    fn missing_values_default_by_column_kind() {
        let mut s = minimal();
        let d = s.data.as_mut().unwrap();
        d.missing_values = Some(missing(pb::MissingStrategy::MissingMean));
        let spec = JobSpec::from_proto(&s).unwrap().data;
        assert_eq!(
            spec.missing_for("a", false).strategy,
            Some(MissingStrategy::Mean)
        );
        assert_eq!(
            spec.missing_for("c", true).strategy,
            Some(MissingStrategy::OwnCategory),
            "a numeric-only spec-wide strategy leaves categorical columns at their default"
        );
        assert!(
            spec.ignore_unseen && spec.stratified,
            "classification is stratified"
        );
        s.task = pb::Task::Regression as i32;
        assert!(!JobSpec::from_proto(&s).unwrap().data.stratified);
        s.data.as_mut().unwrap().split = pb::SplitKind::SplitStratified as i32;
        assert_eq!(
            err(&s),
            "spec.data.split: SPLIT_STRATIFIED needs classes: it applies to classification"
        );
        let spec = JobSpec::from_proto(&minimal()).unwrap().data;
        assert_eq!(
            spec.missing_for("a", false).strategy,
            Some(MissingStrategy::Median)
        );
    }

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
            (
                &|d| {
                    d.categorical_columns = vec!["c".into()];
                    d.column_missing_values = [("c".to_string(), missing(pb::MissingStrategy::MissingMean))].into();
                },
                "spec.data.column_missing_values[\"c\"].strategy: Mean does not apply to a categorical column",
            ),
            (
                &|d| d.column_missing_values = [("a".to_string(), missing(pb::MissingStrategy::MissingOwnCategory))].into(),
                "spec.data.column_missing_values[\"a\"].strategy: OwnCategory does not apply to a numeric column",
            ),
            (
                &|d| d.column_missing_values = [("y".to_string(), missing(pb::MissingStrategy::MissingMean))].into(),
                "spec.data.column_missing_values[\"y\"]: is a target column; a row with a missing target is dropped",
            ),
            (
                &|d| d.missing_values = Some(pb::MissingValues { constant: 1.0, ..Default::default() }),
                "spec.data.missing_values.constant: only applies to MISSING_CONSTANT",
            ),
            (
                &|d| d.column_unseen_categories = [("a".to_string(), 1)].into(),
                "spec.data.column_unseen_categories[\"a\"]: is not in spec.data.categorical_columns",
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
