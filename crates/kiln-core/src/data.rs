//! Tabular data: a CSV, inline rows or NumPy arrays read into a table, then
//! the spec's feature and target columns pulled out as numbers, categorical
//! feature columns one-hot encoded.
//!
//! Rows are numbered from 1 for the first data row (the header is not a row);
//! every error names the row and the column.

use std::borrow::Cow;

use crate::encoding::{
    category_key, distinct_sorted, is_missing, parse_number, ColumnRules, Fill, InputColumn,
    InputEncoding, Statistic, MAX_CATEGORIES,
};
use crate::error::{FieldError, Result};
use crate::npy;
use crate::spec::{DataSpec, MissingStrategy, MissingValues, Task};

/// Defined with the spec, which bounds its column lists by it, so that data
/// depends on spec and not the other way round.
pub use crate::spec::MAX_COLUMNS;

/// A rectangular table with named columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// The header: one name per column.
    pub columns: Vec<String>,
    cells: Cells,
}

/// Row-major cells, `columns.len()` per row.
#[derive(Debug, Clone, PartialEq)]
enum Cells {
    /// From a CSV or inline rows: parsed when a job reads the column.
    Text(Vec<String>),
    /// From NumPy arrays: already numbers, finite or NaN (missing).
    Numbers(Vec<f32>),
}

impl Table {
    /// Parses a CSV file with a header row. Ragged rows, an empty header and
    /// duplicate column names are errors.
    pub fn from_csv(bytes: &[u8]) -> Result<Table> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(bytes);
        let header = reader
            .headers()
            .map_err(|e| FieldError::new("csv header", e.to_string()))?;
        let columns: Vec<String> = header.iter().map(str::to_string).collect();
        check_columns(&columns)?;
        let mut cells = Vec::new();
        for (i, record) in reader.records().enumerate() {
            let row = i + 1;
            let record =
                record.map_err(|e| FieldError::new(format!("row {row}"), e.to_string()))?;
            if record.len() == 1 && record.get(0) == Some("") && columns.len() > 1 {
                continue; // a blank line
            }
            if record.len() != columns.len() {
                return Err(FieldError::new(
                    format!("row {row}"),
                    format!(
                        "has {} fields, the header has {}",
                        record.len(),
                        columns.len()
                    ),
                ));
            }
            cells.extend(record.iter().map(str::to_string));
        }
        Ok(Table {
            columns,
            cells: Cells::Text(cells),
        })
    }

    /// A table from inline numeric rows (`spec.data.inline`).
    pub fn from_inline(columns: &[String], rows: &[Vec<f64>]) -> Result<Table> {
        check_columns(columns)
            .map_err(|e| FieldError::new("spec.data.inline.columns", e.message))?;
        let mut cells = Vec::with_capacity(rows.len() * columns.len());
        for (i, row) in rows.iter().enumerate() {
            if row.len() != columns.len() {
                return Err(FieldError::new(
                    format!("spec.data.inline.rows[{i}]"),
                    format!(
                        "row {} has {} values, there are {} columns",
                        i + 1,
                        row.len(),
                        columns.len()
                    ),
                ));
            }
            // `{}` on f64 round-trips exactly; NaN/inf print as text that the
            // numeric check rejects with the row and column.
            cells.extend(row.iter().map(|v| v.to_string()));
        }
        Ok(Table {
            columns: columns.to_vec(),
            cells: Cells::Text(cells),
        })
    }

    /// A table of numbers, row-major (NaN where a value is missing); as `to_numbers` returns it.
    pub fn from_numbers(columns: Vec<String>, values: Vec<f32>) -> Result<Table> {
        check_columns(&columns)?;
        if !values.len().is_multiple_of(columns.len()) {
            return Err(FieldError::new(
                "values",
                format!(
                    "{} values are not rows of {} columns",
                    values.len(),
                    columns.len()
                ),
            ));
        }
        // NaN is a missing value; infinities are errors.
        if let Some(i) = values.iter().position(|v| v.is_infinite()) {
            let (row, col) = (i / columns.len() + 1, &columns[i % columns.len()]);
            return Err(FieldError::new(
                format!("row {row}, column \"{col}\""),
                format!(
                    "{} is not finite (Inf is not allowed; NaN is a missing value)",
                    values[i]
                ),
            ));
        }
        Ok(Table {
            columns,
            cells: Cells::Numbers(values),
        })
    }

    /// Columns from named NumPy arrays (`.npy` files) with the same number of
    /// rows: a 1-D array `y` is the column "y"; an array `x` of shape
    /// (rows, d1, ...) is flattened in C order into "x[0]", "x[1]", ...
    pub fn from_npy_arrays(arrays: &[(String, Vec<u8>)]) -> Result<Table> {
        if arrays.is_empty() {
            return Err(FieldError::new("arrays", "no arrays uploaded"));
        }
        let mut parsed = Vec::with_capacity(arrays.len());
        for (name, bytes) in arrays {
            let field = format!("arrays[\"{name}\"]");
            let array = npy::read(&field, bytes)?;
            let Some(&rows) = array.shape.first() else {
                return Err(FieldError::new(
                    field,
                    "is a scalar; arrays have a row dimension",
                ));
            };
            parsed.push((name, field, rows, array));
        }
        let rows = parsed[0].2;
        let mut columns = Vec::new();
        let mut widths = Vec::new();
        for (name, field, array_rows, array) in &parsed {
            if *array_rows != rows {
                return Err(FieldError::new(
                    field.as_str(),
                    format!(
                        "has {array_rows} rows (shape {:?}); arrays[\"{}\"] has {rows}",
                        array.shape, parsed[0].0
                    ),
                ));
            }
            // Checked: with 0 rows the data is empty whatever the other dimensions claim.
            let width = array.shape[1..]
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d))
                .filter(|&w| w <= MAX_COLUMNS - widths.iter().sum::<usize>())
                .ok_or_else(|| {
                    FieldError::new(
                        field.as_str(),
                        format!(
                            "shape {:?} makes more than {MAX_COLUMNS} columns",
                            array.shape
                        ),
                    )
                })?;
            if width == 0 {
                return Err(FieldError::new(
                    field.as_str(),
                    format!("shape {:?} has no columns", array.shape),
                ));
            }
            if array.shape.len() == 1 {
                columns.push(name.to_string());
            } else {
                columns.extend((0..width).map(|j| format!("{name}[{j}]")));
            }
            widths.push(width);
        }
        let total: usize = widths.iter().sum();
        let mut values = Vec::with_capacity(rows * total);
        for r in 0..rows {
            for ((_, _, _, array), &w) in parsed.iter().zip(&widths) {
                values.extend_from_slice(&array.values[r * w..(r + 1) * w]);
            }
        }
        Table::from_numbers(columns, values).map_err(|e| match &e.field[..] {
            "csv header" => FieldError::new("arrays", e.message),
            _ => e,
        })
    }

    /// The values, row-major, when the table holds numbers (from arrays).
    pub fn to_numbers(&self) -> Option<&[f32]> {
        match &self.cells {
            Cells::Numbers(values) => Some(values),
            Cells::Text(_) => None,
        }
    }

    /// Number of data rows (the header is not one).
    pub fn rows(&self) -> usize {
        let len = match &self.cells {
            Cells::Text(c) => c.len(),
            Cells::Numbers(v) => v.len(),
        };
        len.checked_div(self.columns.len()).unwrap_or(0)
    }

    /// The text of a cell (row and column from 0); a number as text for arrays.
    pub fn cell(&self, row: usize, col: usize) -> Cow<'_, str> {
        let i = row * self.columns.len() + col;
        match &self.cells {
            Cells::Text(cells) => Cow::Borrowed(&cells[i]),
            Cells::Numbers(values) => Cow::Owned(values[i].to_string()),
        }
    }

    fn column_index(&self, field: &str, name: &str) -> Result<usize> {
        self.columns.iter().position(|c| c == name).ok_or_else(|| {
            let mut shown: Vec<&str> = self.columns.iter().take(20).map(String::as_str).collect();
            if self.columns.len() > 20 {
                shown.push("...");
            }
            FieldError::new(
                field,
                format!(
                    "no column \"{name}\" in the data (columns: {})",
                    shown.join(", ")
                ),
            )
        })
    }

    /// Whether the cell holds no value (see [`is_missing`]; NaN in numbers).
    fn is_missing(&self, row: usize, col: usize) -> bool {
        match &self.cells {
            Cells::Numbers(values) => values[row * self.columns.len() + col].is_nan(),
            Cells::Text(cells) => is_missing(&cells[row * self.columns.len() + col]),
        }
    }

    fn at(&self, row: usize, col: usize) -> String {
        format!("row {}, column \"{}\"", row + 1, self.columns[col])
    }

    fn number(&self, row: usize, col: usize) -> Result<f64> {
        match &self.cells {
            Cells::Numbers(values) => Ok(values[row * self.columns.len() + col] as f64),
            Cells::Text(_) => parse_number(&self.cell(row, col))
                .map_err(|e| FieldError::new(self.at(row, col), e)),
        }
    }
}

fn check_columns(columns: &[String]) -> Result<()> {
    if columns.is_empty() || columns.iter().all(String::is_empty) {
        return Err(FieldError::new("csv header", "no columns"));
    }
    if columns.len() > MAX_COLUMNS {
        return Err(FieldError::new(
            "csv header",
            format!(
                "{} columns; a table may have at most {MAX_COLUMNS}",
                columns.len()
            ),
        ));
    }
    let mut seen = std::collections::HashSet::with_capacity(columns.len());
    for (i, c) in columns.iter().enumerate() {
        if c.is_empty() {
            return Err(FieldError::new(
                "csv header",
                format!("column {} has no name", i + 1),
            ));
        }
        if !seen.insert(c) {
            return Err(FieldError::new(
                "csv header",
                format!("column \"{c}\" appears twice"),
            ));
        }
    }
    Ok(())
}

/// The numbers a job trains on, before the split.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// How the input columns became the features (one-hot for categorical
    /// ones); fills still to be fitted are [`crate::encoding::Fill::Fit`].
    pub encoding: InputEncoding,
    /// The encoding's feature names.
    pub feature_names: Vec<String>,
    /// The target columns' names, in the spec's order.
    pub target_names: Vec<String>,
    /// Row-major, `feature_names.len()` per row; NaN where a missing cell
    /// waits for a fill fitted on the training split.
    pub x: Vec<f32>,
    /// Each row's target values or class.
    pub targets: Targets,
    /// Missing cells per input column, over the rows kept.
    pub missing_cells: Vec<u64>,
    /// Rows read and rows dropped for missing values.
    pub rows: RowCounts,
    /// The table row (0-based) of each dataset row.
    pub table_rows: Vec<usize>,
}

/// Rows read from a table, and rows dropped before the split.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowCounts {
    /// Data rows in the table.
    pub read: u64,
    /// Dropped: a target cell was missing.
    pub dropped_missing_target: u64,
    /// Dropped: a `MISSING_DROP_ROW` column's cell was missing (counted for
    /// the first such column of the row), in column order.
    pub dropped_by_column: Vec<(String, u64)>,
}

/// What Predict and training read for one feature column.
struct FeatureColumn {
    index: usize,
    categorical: bool,
    missing: MissingValues,
}

/// Most bad cells listed in a refused table's error, and rows shown per column.
const SHOWN_ROWS: usize = 5;

/// What a job trains on, before the split.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    /// Regression: row-major, one value per target column.
    Values(Vec<f32>),
    /// Classification: each row's class index into `labels`.
    Classes {
        /// Each row's class.
        index: Vec<i64>,
        /// Each class's label, sorted numerically or as text.
        labels: Vec<String>,
    },
}

impl Dataset {
    /// Number of rows (0 without features).
    pub fn rows(&self) -> usize {
        if self.feature_names.is_empty() {
            0
        } else {
            self.x.len() / self.feature_names.len()
        }
    }

    /// Features per row.
    pub fn width(&self) -> usize {
        self.feature_names.len()
    }

    /// Pulls the spec's features and targets out of `table`: drops the rows
    /// a missing value rules out, checks every cell (naming each bad column),
    /// and encodes the rest.
    pub fn from_table(table: &Table, spec: &DataSpec, task: Task) -> Result<Dataset> {
        let targets: Vec<usize> = spec
            .target_columns
            .iter()
            .enumerate()
            .map(|(i, c)| table.column_index(&format!("spec.data.target_columns[{i}]"), c))
            .collect::<Result<_>>()?;
        let features = feature_columns(table, spec, &targets)?;
        let (kept, rows) = kept_rows(table, &targets, &features);
        if kept.len() < 2 {
            let dropped = table.rows() - kept.len();
            let why = match dropped {
                0 => String::new(),
                n => format!(" ({n} of {} dropped for missing values)", table.rows()),
            };
            return Err(FieldError::new(
                "spec.data",
                format!(
                    "needs at least 2 rows to split into train and validation, has {}{why}",
                    kept.len()
                ),
            ));
        }
        let numeric_targets = match task.is_classification() {
            true => &[][..],
            false => &targets[..],
        };
        check_numbers(table, &kept, &features, numeric_targets)?;
        let encoding = fit_encoding(table, &kept, &features, spec)?;
        let encoder = encoding.encoder().for_training();
        let mut x = Vec::with_capacity(kept.len() * encoding.width());
        for &r in &kept {
            encoder.encode(
                |j| table.cell(r, features[j].index),
                |j| table.at(r, features[j].index),
                &mut x,
            )?;
        }
        let missing_cells = features
            .iter()
            .map(|f| {
                kept.iter()
                    .filter(|&&r| table.is_missing(r, f.index))
                    .count() as u64
            })
            .collect();
        let targets_data = if task.is_classification() {
            class_targets(table, &kept, targets[0], task, &spec.target_columns[0])?
        } else {
            let mut y = Vec::with_capacity(kept.len() * targets.len());
            for &r in &kept {
                for &c in &targets {
                    y.push(table.number(r, c)? as f32);
                }
            }
            Targets::Values(y)
        };
        Ok(Dataset {
            feature_names: encoding.feature_names(),
            encoding,
            target_names: spec.target_columns.clone(),
            x,
            targets: targets_data,
            missing_cells,
            rows,
            table_rows: kept,
        })
    }
}

/// The feature columns (the spec's, or every non-target column), each with
/// its missing-value setting. Checks that the spec's per-column settings name
/// feature columns.
fn feature_columns(
    table: &Table,
    spec: &DataSpec,
    targets: &[usize],
) -> Result<Vec<FeatureColumn>> {
    let indices: Vec<usize> = if spec.feature_columns.is_empty() {
        (0..table.columns.len())
            .filter(|j| !targets.contains(j))
            .collect()
    } else {
        spec.feature_columns
            .iter()
            .enumerate()
            .map(|(i, c)| table.column_index(&format!("spec.data.feature_columns[{i}]"), c))
            .collect::<Result<_>>()?
    };
    if indices.is_empty() {
        return Err(FieldError::new(
            "spec.data.feature_columns",
            "no feature columns left",
        ));
    }
    let is_feature = |name: &str| indices.iter().any(|&j| table.columns[j] == name);
    let categorical = spec.categorical_columns.iter().enumerate();
    let named = categorical
        .map(|(i, name)| (format!("spec.data.categorical_columns[{i}]"), name))
        .chain(
            spec.column_scaling
                .keys()
                .map(|name| (format!("spec.data.column_scaling[\"{name}\"]"), name)),
        )
        .chain(spec.column_missing_values.keys().map(|name| {
            let field = format!("spec.data.column_missing_values[\"{name}\"]");
            (field, name)
        }));
    for (field, name) in named {
        table.column_index(&field, name)?;
        if !is_feature(name) {
            let message = format!("\"{name}\" is not a feature column");
            return Err(FieldError::new(field, message));
        }
    }
    Ok(indices
        .into_iter()
        .map(|index| {
            let categorical = spec.categorical_columns.contains(&table.columns[index]);
            FeatureColumn {
                index,
                categorical,
                missing: spec.missing_for(&table.columns[index], categorical),
            }
        })
        .collect())
}

/// The rows training keeps: not those with a missing target, nor those with
/// a missing cell in a `MISSING_DROP_ROW` column; and what was dropped.
fn kept_rows(
    table: &Table,
    targets: &[usize],
    features: &[FeatureColumn],
) -> (Vec<usize>, RowCounts) {
    let drop_row: Vec<&FeatureColumn> = features
        .iter()
        .filter(|f| f.missing.strategy == Some(MissingStrategy::DropRow))
        .collect();
    let mut counts = RowCounts {
        read: table.rows() as u64,
        ..Default::default()
    };
    let mut by_column = vec![0u64; drop_row.len()];
    let mut kept = Vec::with_capacity(table.rows());
    for r in 0..table.rows() {
        if targets.iter().any(|&c| table.is_missing(r, c)) {
            counts.dropped_missing_target += 1;
        } else if let Some(k) = drop_row.iter().position(|f| table.is_missing(r, f.index)) {
            by_column[k] += 1;
        } else {
            kept.push(r);
        }
    }
    counts.dropped_by_column = drop_row
        .iter()
        .zip(by_column)
        .filter(|(_, n)| *n > 0)
        .map(|(f, n)| (table.columns[f.index].clone(), n))
        .collect();
    (kept, counts)
}

/// Every present cell of the numeric feature and target columns must be a
/// finite number. The error names the first bad cell, and every bad column
/// with its count and first rows.
fn check_numbers(
    table: &Table,
    kept: &[usize],
    features: &[FeatureColumn],
    targets: &[usize],
) -> Result<()> {
    let numeric = features
        .iter()
        .filter(|f| !f.categorical)
        .map(|f| f.index)
        .chain(targets.iter().copied());
    let mut first: Option<FieldError> = None;
    let mut columns = Vec::new();
    let mut total = 0;
    for c in numeric {
        let bad: Vec<usize> = kept
            .iter()
            .copied()
            .filter(|&r| !table.is_missing(r, c) && table.number(r, c).is_err())
            .collect();
        if bad.is_empty() {
            continue;
        }
        if first.is_none() {
            let mut error = table.number(bad[0], c).unwrap_err();
            if !targets.contains(&c) && table.cell(bad[0], c).parse::<f64>().is_err() {
                error.message +=
                    " (list the column in spec.data.categorical_columns to one-hot encode it)";
            }
            first = Some(error);
        }
        total += bad.len();
        let shown: Vec<String> = bad
            .iter()
            .take(SHOWN_ROWS)
            .map(|r| (r + 1).to_string())
            .collect();
        let more = if bad.len() > SHOWN_ROWS { ", ..." } else { "" };
        let rows = if bad.len() == 1 { "row" } else { "rows" };
        columns.push(format!(
            "column \"{}\": {} ({rows} {}{more})",
            table.columns[c],
            bad.len(),
            shown.join(", ")
        ));
    }
    match first {
        None => Ok(()),
        Some(error) if total == 1 => Err(error),
        Some(mut error) => {
            error.message += &format!("; {total} bad cells in all: {}", columns.join("; "));
            Err(error)
        }
    }
}

/// One input column per feature column: one-hot with the categories found in
/// the kept rows for the spec's categorical columns (the empty string among
/// them for a column filling gaps with a category of its own), numeric for
/// the others; and each column's rules for missing cells and unseen categories.
fn fit_encoding(
    table: &Table,
    kept: &[usize],
    features: &[FeatureColumn],
    spec: &DataSpec,
) -> Result<InputEncoding> {
    let mut columns = Vec::with_capacity(features.len());
    let mut rules = Vec::with_capacity(features.len());
    for f in features {
        let name = table.columns[f.index].clone();
        let gaps = kept.iter().any(|&r| table.is_missing(r, f.index));
        if gaps && kept.iter().all(|&r| table.is_missing(r, f.index)) {
            return Err(FieldError::new(
                format!("column \"{name}\""),
                "has no values (every cell is missing); leave it out of spec.data.feature_columns",
            ));
        }
        let strategy = f
            .missing
            .strategy
            .unwrap_or(MissingStrategy::default_for(f.categorical));
        rules.push(ColumnRules {
            missing: match strategy {
                MissingStrategy::Mean => Fill::Fit(Statistic::Mean),
                MissingStrategy::Median => Fill::Fit(Statistic::Median),
                MissingStrategy::MostFrequent => Fill::Fit(Statistic::MostFrequent),
                MissingStrategy::Constant => Fill::Value(f.missing.constant),
                MissingStrategy::OwnCategory => Fill::OwnCategory,
                MissingStrategy::DropRow => Fill::Refuse,
            },
            indicator: f.missing.add_indicator && gaps,
            ignore_unseen: f.categorical && spec.ignore_unseen_for(&name),
        });
        if !f.categorical {
            columns.push(InputColumn::Numeric(name));
            continue;
        }
        let texts: Vec<Cow<str>> = kept
            .iter()
            .map(|&r| table.cell(r, f.index))
            .filter(|t| !is_missing(t))
            .collect();
        let (mut categories, numeric) = distinct_sorted(texts.iter().map(|t| t.as_ref()));
        if gaps && strategy == MissingStrategy::OwnCategory {
            categories.push(String::new());
        }
        if categories.len() > MAX_CATEGORIES {
            return Err(FieldError::new(
                format!("column \"{name}\""),
                format!(
                    "has {} distinct values; a categorical column may have at most {MAX_CATEGORIES}",
                    categories.len()
                ),
            ));
        }
        columns.push(InputColumn::OneHot {
            name,
            categories,
            numeric,
        });
    }
    Ok(InputEncoding { columns, rules })
}

/// Class labels are the column's distinct values, sorted numerically when they
/// are all numbers (so "2" < "10") and as text otherwise. Numeric labels are
/// written canonically, so "1" and "1.0" are one class.
fn class_targets(
    table: &Table,
    kept: &[usize],
    col: usize,
    task: Task,
    name: &str,
) -> Result<Targets> {
    // Rows with a missing label were dropped already.
    let raw: Vec<Cow<str>> = kept.iter().map(|&r| table.cell(r, col)).collect();
    let (labels, numeric) = distinct_sorted(raw.iter().map(|t| t.as_ref()));
    let expected = match task {
        Task::Binary => labels.len() == 2,
        _ => labels.len() >= 2,
    };
    if !expected {
        let want = if task == Task::Binary {
            "exactly 2"
        } else {
            "at least 2"
        };
        let shown: Vec<_> = labels.iter().take(10).map(|l| format!("\"{l}\"")).collect();
        return Err(FieldError::new(
            format!("column \"{name}\""),
            format!(
                "{task:?} classification needs {want} classes, found {} ({})",
                labels.len(),
                shown.join(", ")
            ),
        ));
    }
    let position: std::collections::HashMap<&str, i64> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i as i64))
        .collect();
    let index = raw
        .iter()
        .map(|t| position[category_key(t, numeric).as_str()])
        .collect();
    Ok(Targets::Classes { index, labels })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::npy::testing::{f32_le, npy};
    use crate::spec::{DataSource, Scaling};

    fn spec(targets: &[&str], features: &[&str]) -> DataSpec {
        DataSpec {
            source: DataSource::Dataset("d".into()),
            target_columns: targets.iter().map(|s| s.to_string()).collect(),
            feature_columns: features.iter().map(|s| s.to_string()).collect(),
            validation_fraction: 0.2,
            split_seed: 0,
            feature_scaling: Scaling::Standard,
            target_scaling: Scaling::Standard,
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
    fn reads_features_and_regression_targets() {
        let t = Table::from_csv(b"a,b,y\n1,2,3\n4,5,6\n").unwrap();
        let d = Dataset::from_table(&t, &spec(&["y"], &[]), Task::Regression).unwrap();
        assert_eq!(d.feature_names, ["a", "b"]);
        assert_eq!(d.x, [1.0, 2.0, 4.0, 5.0]);
        assert_eq!(d.targets, Targets::Values(vec![3.0, 6.0]));
        let d = Dataset::from_table(&t, &spec(&["y", "a"], &["b"]), Task::Regression).unwrap();
        assert_eq!(d.x, [2.0, 5.0]);
        assert_eq!(d.targets, Targets::Values(vec![3.0, 1.0, 6.0, 4.0]));
    }

    #[test]
    fn class_labels_sort_numerically_or_as_text() {
        let t = Table::from_csv(b"x,y\n1,10\n2,2\n3,2.0\n4,1\n").unwrap();
        let d = Dataset::from_table(&t, &spec(&["y"], &[]), Task::Multiclass).unwrap();
        assert_eq!(
            d.targets,
            Targets::Classes {
                index: vec![2, 1, 1, 0],
                labels: vec!["1".into(), "2".into(), "10".into()]
            }
        );
        let t = Table::from_csv(b"x,y\n1,cat\n2,dog\n3,cat\n").unwrap();
        let d = Dataset::from_table(&t, &spec(&["y"], &[]), Task::Binary).unwrap();
        assert_eq!(
            d.targets,
            Targets::Classes {
                index: vec![0, 1, 0],
                labels: vec!["cat".into(), "dog".into()]
            }
        );
    }

    #[test]
    fn errors_name_row_and_column() {
        let e = Table::from_csv(b"a,b\n1,2\n3\n").unwrap_err();
        assert_eq!(e.to_string(), "row 2: has 1 fields, the header has 2");
        let t = Table::from_csv(b"a,y\n1,2\nfoo,3\n").unwrap();
        let e = Dataset::from_table(&t, &spec(&["y"], &[]), Task::Regression).unwrap_err();
        assert_eq!(
            e.to_string(),
            "row 2, column \"a\": \"foo\" is not a number \
             (list the column in spec.data.categorical_columns to one-hot encode it)"
        );
        let t = Table::from_csv(b"a,y\n1,2\ninf,3\n").unwrap();
        let e = Dataset::from_table(&t, &spec(&["y"], &[]), Task::Regression).unwrap_err();
        assert_eq!(
            e.to_string(),
            "row 2, column \"a\": \"inf\" is not finite (NaN and Inf are not allowed)"
        );
        let t = Table::from_csv(b"a,y\n1,inf\n2,3\n").unwrap();
        let e = Dataset::from_table(&t, &spec(&["y"], &[]), Task::Regression).unwrap_err();
        assert!(e.to_string().starts_with("row 1, column \"y\""));
        let e = Dataset::from_table(&t, &spec(&["z"], &[]), Task::Regression).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("spec.data.target_columns[0]: no column \"z\""));
        let t = Table::from_csv(b"a,y\n1,a\n2,b\n3,c\n").unwrap();
        let e = Dataset::from_table(&t, &spec(&["y"], &[]), Task::Binary).unwrap_err();
        assert!(e.to_string().contains("needs exactly 2 classes, found 3"));
        assert!(Table::from_csv(b"a,a\n1,2\n").is_err());
    }

    #[test]
    fn categorical_columns_are_one_hot_encoded() {
        let t = Table::from_csv(b"x,color,size,y\n1,red,2,0\n2,blue,10,1\n3,red,2.0,1\n").unwrap();
        let mut s = spec(&["y"], &[]);
        s.categorical_columns = vec!["color".into(), "size".into()];
        let d = Dataset::from_table(&t, &s, Task::Binary).unwrap();
        assert_eq!(d.encoding.input_names(), ["x", "color", "size"]);
        assert_eq!(
            d.feature_names,
            ["x", "color=blue", "color=red", "size=2", "size=10"]
        );
        #[rustfmt::skip]
        assert_eq!(d.x, [
            1.0, 0.0, 1.0, 1.0, 0.0,
            2.0, 1.0, 0.0, 0.0, 1.0,
            3.0, 0.0, 1.0, 1.0, 0.0,
        ]);

        s.categorical_columns = vec!["nope".into()];
        let e = Dataset::from_table(&t, &s, Task::Binary).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("spec.data.categorical_columns[0]: no column \"nope\""));
        let mut s = spec(&["y"], &["x"]);
        s.categorical_columns = vec!["color".into()];
        let e = Dataset::from_table(&t, &s, Task::Binary).unwrap_err();
        assert_eq!(
            e.to_string(),
            "spec.data.categorical_columns[0]: \"color\" is not a feature column"
        );
    }

    #[test]
    fn npy_arrays_become_columns() {
        let x: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let x_npy = npy("<f4", "(3, 2, 2)", &f32_le(&x));
        let y_npy = npy("<i8", "(3,)", &[0i64, 1, 0].map(i64::to_le_bytes).concat());
        let t = Table::from_npy_arrays(&[("x".into(), x_npy), ("y".into(), y_npy)]).unwrap();
        assert_eq!(t.columns, ["x[0]", "x[1]", "x[2]", "x[3]", "y"]);
        assert_eq!(t.rows(), 3);
        let d = Dataset::from_table(&t, &spec(&["y"], &[]), Task::Binary).unwrap();
        assert_eq!(&d.x[4..8], [4.0, 5.0, 6.0, 7.0]);
        assert_eq!(
            d.targets,
            Targets::Classes {
                index: vec![0, 1, 0],
                labels: vec!["0".into(), "1".into()]
            }
        );
        let short = npy("<f4", "(2,)", &f32_le(&[0.0, 1.0]));
        let x_npy = npy("<f4", "(3, 2, 2)", &f32_le(&x));
        let e = Table::from_npy_arrays(&[("x".into(), x_npy), ("y".into(), short)]).unwrap_err();
        assert!(
            e.to_string().starts_with("arrays[\"y\"]: has 2 rows"),
            "{e}"
        );
        // NaN is a missing value; Inf is an error.
        let nan = npy("<f4", "(2, 1)", &f32_le(&[0.0, f32::NAN]));
        let t = Table::from_npy_arrays(&[("x".into(), nan)]).unwrap();
        assert!(t.is_missing(1, 0) && !t.is_missing(0, 0));
        let inf = npy("<f4", "(2, 1)", &f32_le(&[0.0, f32::INFINITY]));
        let e = Table::from_npy_arrays(&[("x".into(), inf)]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("row 2, column \"x[0]\": inf is not finite"),
            "{e}"
        );
    }

    /// 0 rows make an empty array whatever the other dimensions claim, and 0
    /// columns any number of rows: both were accepted, and a huge claimed
    /// dimension built billions of column names or looped over the rows.
    #[test]
    fn npy_shapes_are_bounded() {
        let arrays = |shape: &str| vec![("x".to_string(), npy("<f4", shape, &[]))];
        let e = Table::from_npy_arrays(&arrays("(0, 1000000000000)")).unwrap_err();
        assert!(e.message.contains("more than 65536 columns"), "{e}");
        let huge = format!("(0, {}, {})", 1u64 << 40, 1u64 << 40);
        let e = Table::from_npy_arrays(&arrays(&huge)).unwrap_err();
        assert!(e.message.contains("more than 65536 columns"), "{e}");
        let e = Table::from_npy_arrays(&arrays("(1099511627776, 0)")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "arrays[\"x\"]: shape [1099511627776, 0] has no columns"
        );
        // Two arrays count together.
        let wide = npy("<f4", "(1, 40000)", &f32_le(&[0.0; 40000]));
        let two = [("x".to_string(), wide.clone()), ("y".to_string(), wide)];
        let e = Table::from_npy_arrays(&two).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("arrays[\"y\"]: shape [1, 40000] makes more"),
            "{e}"
        );
    }

    #[test]
    fn column_count_is_bounded() {
        let header = (0..=MAX_COLUMNS)
            .map(|i| format!("c{i}"))
            .collect::<Vec<_>>();
        let e = Table::from_csv(header.join(",").as_bytes()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "csv header: 65537 columns; a table may have at most 65536"
        );
        let ok = Table::from_csv(header[..MAX_COLUMNS].join(",").as_bytes()).unwrap();
        assert_eq!(ok.columns.len(), MAX_COLUMNS);
    }

    #[test]
    fn inline_rows_check_width_and_finiteness() {
        let cols = vec!["a".to_string(), "y".to_string()];
        let e = Table::from_inline(&cols, &[vec![1.0, 2.0], vec![1.0]]).unwrap_err();
        assert!(e.to_string().starts_with("spec.data.inline.rows[1]:"));
        let t = Table::from_inline(&cols, &[vec![1.0, 2.0], vec![f64::INFINITY, 1.0]]).unwrap();
        let e = Dataset::from_table(&t, &spec(&["y"], &[]), Task::Regression).unwrap_err();
        assert!(e.to_string().starts_with("row 2, column \"a\""));
        let t = Table::from_inline(&cols, &[vec![1.0, 2.0], vec![f64::NAN, 1.0]]).unwrap();
        let d = Dataset::from_table(&t, &spec(&["y"], &[]), Task::Regression).unwrap();
        assert_eq!(d.missing_cells, [1], "NaN in inline rows is missing");
        let t = Table::from_inline(&cols, &[vec![0.1, 2.0], vec![1e-30, 1.0]]).unwrap();
        let d = Dataset::from_table(&t, &spec(&["y"], &[]), Task::Regression).unwrap();
        assert_eq!(d.x, [0.1, 1e-30]);
    }

    fn missing_spec(categorical: &[&str]) -> DataSpec {
        let mut s = spec(&["y"], &[]);
        s.categorical_columns = categorical.iter().map(|c| c.to_string()).collect();
        s
    }

    #[test]
    fn missing_markers_are_gaps_in_any_case() {
        for marker in ["", "NA", "n/a", "NaN", "nan", "NULL", "None", "none"] {
            assert!(is_missing(marker), "{marker:?}");
        }
        for present in ["0", "NAN1", "nil", "-", "?"] {
            assert!(!is_missing(present), "{present:?}");
        }
        let t = Table::from_csv(b"a,c,y\n1,red,0\n,NA,1\nnull,blue,0\n4,None,1\n").unwrap();
        let d = Dataset::from_table(&t, &missing_spec(&["c"]), Task::Binary).unwrap();
        assert_eq!(d.missing_cells, [2, 2]);
        // Numeric gaps wait for the fitted median (NaN); categorical ones take
        // their own category, the empty string, last among the categories.
        assert_eq!(d.feature_names, ["a", "c=blue", "c=red", "c="]);
        let row = |r: usize| d.x[r * 4..(r + 1) * 4].to_vec();
        assert_eq!(row(0), [1.0, 0.0, 1.0, 0.0]);
        assert!(row(1)[0].is_nan());
        assert_eq!(row(1)[1..], [0.0, 0.0, 1.0]);
        assert_eq!(row(3), [4.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn missing_targets_and_drop_row_columns_drop_rows_and_count_them() {
        let t = Table::from_csv(b"a,b,y\n1,1,1\n2,,2\n,3,\n4,4,NA\n5,5,5\n6,6,6\n").unwrap();
        let mut s = spec(&["y"], &[]);
        s.column_missing_values = [(
            "b".to_string(),
            MissingValues {
                strategy: Some(MissingStrategy::DropRow),
                ..Default::default()
            },
        )]
        .into();
        let d = Dataset::from_table(&t, &s, Task::Regression).unwrap();
        assert_eq!(d.targets, Targets::Values(vec![1.0, 5.0, 6.0]));
        assert_eq!(
            d.rows,
            RowCounts {
                read: 6,
                dropped_missing_target: 2,
                dropped_by_column: vec![("b".into(), 1)],
            }
        );
        assert_eq!(d.missing_cells, [0, 0]);
        let t = Table::from_csv(b"a,y\n1,\n2,3\n").unwrap();
        let e = Dataset::from_table(&t, &spec(&["y"], &[]), Task::Regression).unwrap_err();
        assert_eq!(
            e.to_string(),
            "spec.data: needs at least 2 rows to split into train and validation, has 1 (1 of 2 dropped for missing values)"
        );
        let t = Table::from_csv(b"a,b,y\n1,,1\n2,,2\n").unwrap();
        let e = Dataset::from_table(&t, &spec(&["y"], &[]), Task::Regression).unwrap_err();
        assert!(
            e.to_string().starts_with("column \"b\": has no values"),
            "{e}"
        );
    }

    #[test]
    fn indicators_follow_their_column_where_it_has_gaps() {
        let t = Table::from_csv(b"a,b,c,y\n1,1,x,0\n,2,,1\n3,3,x,0\n").unwrap();
        let mut s = missing_spec(&["c"]);
        s.missing_values = MissingValues {
            strategy: Some(MissingStrategy::Mean),
            add_indicator: true,
            ..Default::default()
        };
        let d = Dataset::from_table(&t, &s, Task::Binary).unwrap();
        // b has no gap: no indicator. c keeps its default (mean is numeric only).
        assert_eq!(
            d.feature_names,
            ["a", "a:missing", "b", "c=x", "c=", "c:missing"]
        );
        assert_eq!(d.encoding.rules[0].missing, Fill::Fit(Statistic::Mean));
        assert_eq!(d.encoding.rules[2].missing, Fill::OwnCategory);
        assert!(d.x[6].is_nan());
        assert_eq!(d.x[7..12], [1.0, 2.0, 0.0, 1.0, 1.0]);
        assert_eq!(d.x[..6], [1.0, 0.0, 1.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn a_refused_table_names_every_bad_column() {
        let t = Table::from_csv(
            b"a,b,y\nx,1,1\n2,inf,2\nz,3,?\nw,4,4\n5,5,5\n6,6,q\n7,7,7\n8,8,8\n9,9,9\n",
        )
        .unwrap();
        let e = Dataset::from_table(&t, &spec(&["y"], &[]), Task::Regression).unwrap_err();
        assert_eq!(
            e.to_string(),
            "row 1, column \"a\": \"x\" is not a number (list the column in spec.data.categorical_columns to one-hot encode it); \
             6 bad cells in all: column \"a\": 3 (rows 1, 3, 4); column \"b\": 1 (row 2); column \"y\": 2 (rows 3, 6)"
        );
        let rows: String = (0..8).map(|i| format!("x{i},{i}\n")).collect();
        let t = Table::from_csv(format!("a,y\n{rows}").as_bytes()).unwrap();
        let e = Dataset::from_table(&t, &spec(&["y"], &[]), Task::Regression).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("8 bad cells in all: column \"a\": 8 (rows 1, 2, 3, 4, 5, ...)"),
            "{e}"
        );
    }
}
