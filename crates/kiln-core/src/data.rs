//! Tabular data: a CSV (or inline rows) read into a table of cells, then the
//! spec's feature and target columns pulled out as numbers.
//!
//! Rows are numbered from 1 for the first data row (the header is not a row);
//! every error names the row and the column.

use crate::error::{FieldError, Result};
use crate::spec::{DataSpec, Task};

/// A rectangular table of text cells with named columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub columns: Vec<String>,
    /// Row-major cells, `columns.len()` per row.
    cells: Vec<String>,
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
        Ok(Table { columns, cells })
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
            // numeric check below rejects with the row and column.
            cells.extend(row.iter().map(|v| v.to_string()));
        }
        Ok(Table {
            columns: columns.to_vec(),
            cells,
        })
    }

    pub fn rows(&self) -> usize {
        if self.columns.is_empty() {
            0
        } else {
            self.cells.len() / self.columns.len()
        }
    }

    fn cell(&self, row: usize, col: usize) -> &str {
        &self.cells[row * self.columns.len() + col]
    }

    fn column_index(&self, field: &str, name: &str) -> Result<usize> {
        self.columns.iter().position(|c| c == name).ok_or_else(|| {
            FieldError::new(
                field,
                format!(
                    "no column \"{name}\" in the data (columns: {})",
                    self.columns.join(", ")
                ),
            )
        })
    }

    fn number(&self, row: usize, col: usize) -> Result<f64> {
        let text = self.cell(row, col);
        let at = || format!("row {}, column \"{}\"", row + 1, self.columns[col]);
        if text.is_empty() {
            return Err(FieldError::new(at(), "missing value"));
        }
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            Ok(_) => Err(FieldError::new(
                at(),
                format!("\"{text}\" is not finite (NaN and Inf are not allowed)"),
            )),
            Err(_) => Err(FieldError::new(at(), format!("\"{text}\" is not a number"))),
        }
    }
}

fn check_columns(columns: &[String]) -> Result<()> {
    if columns.is_empty() || columns.iter().all(String::is_empty) {
        return Err(FieldError::new("csv header", "no columns"));
    }
    for (i, c) in columns.iter().enumerate() {
        if c.is_empty() {
            return Err(FieldError::new(
                "csv header",
                format!("column {} has no name", i + 1),
            ));
        }
        if columns[..i].contains(c) {
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
    pub feature_names: Vec<String>,
    pub target_names: Vec<String>,
    /// Row-major, `feature_names.len()` per row.
    pub x: Vec<f32>,
    pub targets: Targets,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    /// Regression: row-major, one value per target column.
    Values(Vec<f32>),
    /// Classification: each row's class index into `labels`.
    Classes {
        index: Vec<i64>,
        labels: Vec<String>,
    },
}

impl Dataset {
    pub fn rows(&self) -> usize {
        if self.feature_names.is_empty() {
            0
        } else {
            self.x.len() / self.feature_names.len()
        }
    }

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
        let mut x = Vec::with_capacity(rows * features.len());
        for r in 0..rows {
            for &c in &features {
                x.push(table.number(r, c)? as f32);
            }
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
            feature_names: features.iter().map(|&j| table.columns[j].clone()).collect(),
            target_names: spec.target_columns.clone(),
            x,
            targets: targets_data,
        })
    }
}

/// Class labels are the column's distinct values, sorted numerically when they
/// are all numbers (so "2" < "10") and as text otherwise. Numeric labels are
/// written canonically, so "1" and "1.0" are one class.
fn class_targets(table: &Table, col: usize, task: Task, name: &str) -> Result<Targets> {
    let rows = table.rows();
    let mut raw = Vec::with_capacity(rows);
    for r in 0..rows {
        let text = table.cell(r, col);
        if text.is_empty() {
            return Err(FieldError::new(
                format!("row {}, column \"{name}\"", r + 1),
                "missing class label",
            ));
        }
        raw.push(text);
    }
    let numeric: Option<Vec<f64>> = raw
        .iter()
        .map(|t| t.parse::<f64>().ok().filter(|v| v.is_finite()))
        .collect();
    let keys: Vec<String> = match &numeric {
        Some(values) => values.iter().map(|v| v.to_string()).collect(),
        None => raw.iter().map(|t| t.to_string()).collect(),
    };
    let mut labels: Vec<String> = keys.clone();
    match &numeric {
        Some(_) => labels.sort_by(|a, b| {
            a.parse::<f64>()
                .unwrap()
                .total_cmp(&b.parse::<f64>().unwrap())
        }),
        None => labels.sort(),
    }
    labels.dedup();
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
    let index = keys.iter().map(|k| position[k.as_str()]).collect();
    Ok(Targets::Classes { index, labels })
}

#[cfg(test)]
mod tests {
    use super::*;
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
            "row 2, column \"a\": \"foo\" is not a number"
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
