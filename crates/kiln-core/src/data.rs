//! Tabular data: a CSV, inline rows or NumPy arrays read into a table, then
//! the spec's feature and target columns pulled out as numbers, categorical
//! feature columns one-hot encoded.
//!
//! Rows are numbered from 1 for the first data row (the header is not a row);
//! every error names the row and the column.

use std::borrow::Cow;

use crate::encoding::{
    category_key, distinct_sorted, parse_number, InputColumn, InputEncoding, MAX_CATEGORIES,
};
use crate::error::{FieldError, Result};
use crate::npy;
use crate::spec::{DataSpec, Task};

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
    /// From NumPy arrays: already numbers, all finite.
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

    /// A table of finite numbers, row-major; as `to_numbers` returns it.
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
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            let (row, col) = (i / columns.len() + 1, &columns[i % columns.len()]);
            return Err(FieldError::new(
                format!("row {row}, column \"{col}\""),
                format!("{} is not finite (NaN and Inf are not allowed)", values[i]),
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

    fn cell(&self, row: usize, col: usize) -> Cow<'_, str> {
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
    /// How the input columns became the features (one-hot for categorical ones).
    pub encoding: InputEncoding,
    /// The encoding's feature names.
    pub feature_names: Vec<String>,
    /// The target columns' names, in the spec's order.
    pub target_names: Vec<String>,
    /// Row-major, `feature_names.len()` per row.
    pub x: Vec<f32>,
    /// Each row's target values or class.
    pub targets: Targets,
}

/// What the model learns to predict: values (regression) or classes.
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

    /// Pulls the spec's features and targets out of `table`.
    pub fn from_table(table: &Table, spec: &DataSpec, task: Task) -> Result<Dataset> {
        let targets: Vec<usize> = spec
            .target_columns
            .iter()
            .enumerate()
            .map(|(i, c)| table.column_index(&format!("spec.data.target_columns[{i}]"), c))
            .collect::<Result<_>>()?;
        let features: Vec<usize> = if spec.feature_columns.is_empty() {
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
        if features.is_empty() {
            return Err(FieldError::new(
                "spec.data.feature_columns",
                "no feature columns left",
            ));
        }
        let rows = table.rows();
        if rows < 2 {
            return Err(FieldError::new(
                "spec.data",
                format!("needs at least 2 rows to split into train and validation, has {rows}"),
            ));
        }
        let encoding = fit_encoding(table, &features, spec)?;
        let encoder = encoding.encoder().for_training();
        let mut x = Vec::with_capacity(rows * encoding.width());
        for r in 0..rows {
            encoder.encode(
                |j| table.cell(r, features[j]),
                |j| table.at(r, features[j]),
                &mut x,
            )?;
        }
        let targets_data = if task.is_classification() {
            class_targets(table, targets[0], task, &spec.target_columns[0])?
        } else {
            let mut y = Vec::with_capacity(rows * targets.len());
            for r in 0..rows {
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
        })
    }
}

/// One input column per feature column: one-hot with the categories found in
/// the data for the spec's categorical columns, numeric for the others. Also
/// checks that `column_scaling` names feature columns.
fn fit_encoding(table: &Table, features: &[usize], spec: &DataSpec) -> Result<InputEncoding> {
    let is_feature = |name: &str| features.iter().any(|&j| table.columns[j] == name);
    let categorical = spec.categorical_columns.iter().enumerate();
    let named = categorical
        .map(|(i, name)| (format!("spec.data.categorical_columns[{i}]"), name))
        .chain(
            spec.column_scaling
                .keys()
                .map(|name| (format!("spec.data.column_scaling[\"{name}\"]"), name)),
        );
    for (field, name) in named {
        table.column_index(&field, name)?;
        if !is_feature(name) {
            let message = format!("\"{name}\" is not a feature column");
            return Err(FieldError::new(field, message));
        }
    }
    let mut columns = Vec::with_capacity(features.len());
    for &j in features {
        let name = table.columns[j].clone();
        if !spec.categorical_columns.contains(&name) {
            columns.push(InputColumn::Numeric(name));
            continue;
        }
        let texts: Vec<Cow<str>> = (0..table.rows()).map(|r| table.cell(r, j)).collect();
        if let Some(r) = texts.iter().position(|t| t.is_empty()) {
            return Err(FieldError::new(table.at(r, j), "missing value"));
        }
        let (categories, numeric) = distinct_sorted(texts.iter().map(|t| t.as_ref()));
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
    Ok(InputEncoding { columns })
}

/// Class labels are the column's distinct values, sorted numerically when they
/// are all numbers (so "2" < "10") and as text otherwise. Numeric labels are
/// written canonically, so "1" and "1.0" are one class.
fn class_targets(table: &Table, col: usize, task: Task, name: &str) -> Result<Targets> {
    let rows = table.rows();
    let raw: Vec<Cow<str>> = (0..rows).map(|r| table.cell(r, col)).collect();
    if let Some(r) = raw.iter().position(|t| t.is_empty()) {
        return Err(FieldError::new(
            format!("row {}, column \"{name}\"", r + 1),
            "missing class label",
        ));
    }
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
        let t = Table::from_csv(b"a,y\n1,2\nNaN,3\n").unwrap();
        let e = Dataset::from_table(&t, &spec(&["y"], &[]), Task::Regression).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("row 2, column \"a\": \"NaN\" is not finite"));
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
        let t = Table::from_csv(b"x,color,y\n1,red,0\n2,,1\n").unwrap();
        let mut s = spec(&["y"], &[]);
        s.categorical_columns = vec!["color".into()];
        let e = Dataset::from_table(&t, &s, Task::Binary).unwrap_err();
        assert_eq!(e.to_string(), "row 2, column \"color\": missing value");
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
        let nan = npy("<f4", "(2, 1)", &f32_le(&[0.0, f32::NAN]));
        let e = Table::from_npy_arrays(&[("x".into(), nan)]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("row 2, column \"x[0]\": NaN is not finite"),
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
        let t = Table::from_inline(&cols, &[vec![1.0, 2.0], vec![f64::NAN, 1.0]]).unwrap();
        let e = Dataset::from_table(&t, &spec(&["y"], &[]), Task::Regression).unwrap_err();
        assert!(e.to_string().starts_with("row 2, column \"a\""));
        let t = Table::from_inline(&cols, &[vec![0.1, 2.0], vec![1e-30, 1.0]]).unwrap();
        let d = Dataset::from_table(&t, &spec(&["y"], &[]), Task::Regression).unwrap();
        assert_eq!(d.x, [0.1, 1e-30]);
    }
}
