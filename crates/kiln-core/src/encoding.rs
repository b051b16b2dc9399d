//! How a model's input columns become its features: numeric columns pass
//! through, categorical columns become one 0/1 feature per category (one-hot).
//! Fitted when a job reads its data, stored with the model, and applied again
//! by Predict to raw rows.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::{FieldError, Result};

/// Most distinct values a categorical column may have.
pub const MAX_CATEGORIES: usize = 1024;

/// One input column of a model and how it becomes features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum InputColumn {
    /// A numeric column, one feature, by name.
    Numeric(String),
    /// A categorical column, one-hot encoded: one feature per category.
    OneHot {
        /// The column's name.
        name: String,
        /// Sorted; the feature for `categories[i]` is the column's i-th.
        categories: Vec<String>,
        /// All categories are numbers: values are compared as numbers, so "1" and "1.0" match.
        numeric: bool,
    },
}

impl InputColumn {
    /// The column's name in the data.
    pub fn name(&self) -> &str {
        match self {
            InputColumn::Numeric(name) | InputColumn::OneHot { name, .. } => name,
        }
    }

    fn width(&self) -> usize {
        match self {
            InputColumn::Numeric(_) => 1,
            InputColumn::OneHot { categories, .. } => categories.len(),
        }
    }
}

/// The input columns of a model, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputEncoding {
    /// The columns, in the order of their features.
    pub columns: Vec<InputColumn>,
}

impl InputEncoding {
    /// Numeric columns only: the features are the columns.
    pub fn numeric<S: ToString>(names: &[S]) -> Self {
        Self {
            columns: names
                .iter()
                .map(|n| InputColumn::Numeric(n.to_string()))
                .collect(),
        }
    }

    /// Names of the raw input columns.
    pub fn input_names(&self) -> Vec<String> {
        self.columns.iter().map(|c| c.name().to_string()).collect()
    }

    /// Names of the features the network sees: a one-hot feature is "column=value".
    pub fn feature_names(&self) -> Vec<String> {
        self.columns
            .iter()
            .flat_map(|c| match c {
                InputColumn::Numeric(name) => vec![name.clone()],
                InputColumn::OneHot {
                    name, categories, ..
                } => categories.iter().map(|v| format!("{name}={v}")).collect(),
            })
            .collect()
    }

    /// Number of features.
    pub fn width(&self) -> usize {
        self.columns.iter().map(InputColumn::width).sum()
    }

    /// For each feature, the input column it comes from and whether it is one-hot.
    pub fn feature_sources(&self) -> Vec<(&str, bool)> {
        self.columns
            .iter()
            .flat_map(|c| {
                let one_hot = matches!(c, InputColumn::OneHot { .. });
                std::iter::repeat_n((c.name(), one_hot), c.width())
            })
            .collect()
    }

    /// An encoder for rows of these columns, its category lookups built once.
    pub fn encoder(&self) -> Encoder<'_> {
        let lookups = self
            .columns
            .iter()
            .map(|c| match c {
                InputColumn::Numeric(_) => HashMap::new(),
                InputColumn::OneHot { categories, .. } => categories
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (v.as_str(), i))
                    .collect(),
            })
            .collect();
        Encoder {
            encoding: self,
            lookups,
            training: false,
        }
    }
}

/// Encodes rows of raw cells with an encoding's category lookups built once.
pub struct Encoder<'a> {
    encoding: &'a InputEncoding,
    lookups: Vec<HashMap<&'a str, usize>>,
    training: bool,
}

impl Encoder<'_> {
    /// Errors on a non-numeric value point to `spec.data.categorical_columns`.
    pub fn for_training(mut self) -> Self {
        self.training = true;
        self
    }

    /// Appends the features of one row. `cell(j)` is the text of input column
    /// `j`; `at(j)` names that cell in errors, e.g. `row 3, column "color"`.
    pub fn encode<S: AsRef<str>>(
        &self,
        cell: impl Fn(usize) -> S,
        at: impl Fn(usize) -> String,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        for (j, column) in self.encoding.columns.iter().enumerate() {
            let text = cell(j);
            let text = text.as_ref();
            match column {
                InputColumn::Numeric(_) => {
                    let value = parse_number(text).map_err(|e| {
                        let hint = match self.training && !text.is_empty() {
                            true => " (list the column in spec.data.categorical_columns to one-hot encode it)",
                            false => "",
                        };
                        FieldError::new(at(j), format!("{e}{hint}"))
                    })?;
                    out.push(value as f32);
                }
                InputColumn::OneHot {
                    categories,
                    numeric,
                    ..
                } => {
                    let key = category_key(text, *numeric);
                    let Some(&hot) = self.lookups[j].get(key.as_str()) else {
                        let shown: Vec<_> = categories
                            .iter()
                            .take(20)
                            .map(|c| format!("\"{c}\""))
                            .collect();
                        let more = if categories.len() > 20 { ", ..." } else { "" };
                        return Err(FieldError::new(
                            at(j),
                            format!(
                                "\"{text}\" is not a category seen in training ({}{more})",
                                shown.join(", ")
                            ),
                        ));
                    };
                    let start = out.len();
                    out.resize(start + categories.len(), 0.0);
                    out[start + hot] = 1.0;
                }
            }
        }
        Ok(())
    }
}

/// A finite number, or why the text is not one.
pub fn parse_number(text: &str) -> std::result::Result<f64, String> {
    if text.is_empty() {
        return Err("missing value".into());
    }
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(_) => Err(format!(
            "\"{text}\" is not finite (NaN and Inf are not allowed)"
        )),
        Err(_) => Err(format!("\"{text}\" is not a number")),
    }
}

/// The distinct values among `texts`, sorted numerically when all are finite
/// numbers (so "2" < "10", and "1" and "1.0" are one value) and as text
/// otherwise; and whether they are numeric. Used for class labels and categories.
pub fn distinct_sorted<'a>(texts: impl Iterator<Item = &'a str> + Clone) -> (Vec<String>, bool) {
    let numeric = texts.clone().all(|t| parse_number(t).is_ok());
    let mut values: Vec<String> = texts.map(|t| category_key(t, numeric)).collect();
    if numeric {
        values.sort_by(|a, b| {
            let (a, b) = (a.parse::<f64>().unwrap(), b.parse::<f64>().unwrap());
            a.total_cmp(&b)
        });
    } else {
        values.sort();
    }
    values.dedup();
    (values, numeric)
}

/// How a value is written among numeric categories (canonical number) or text ones.
pub fn category_key(text: &str, numeric: bool) -> String {
    match numeric.then(|| text.parse::<f64>().ok()).flatten() {
        Some(v) => v.to_string(),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoding() -> InputEncoding {
        InputEncoding {
            columns: vec![
                InputColumn::Numeric("x".into()),
                InputColumn::OneHot {
                    name: "color".into(),
                    categories: vec!["blue".into(), "red".into()],
                    numeric: false,
                },
                InputColumn::OneHot {
                    name: "code".into(),
                    categories: vec!["2".into(), "10".into()],
                    numeric: true,
                },
            ],
        }
    }

    fn encode(row: [&str; 3]) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        encoding()
            .encoder()
            .encode(|j| row[j], |j| format!("cell {j}"), &mut out)?;
        Ok(out)
    }

    #[test]
    fn one_hot_encodes_categories_and_passes_numbers_through() {
        let e = encoding();
        assert_eq!(e.width(), 5);
        assert_eq!(e.input_names(), ["x", "color", "code"]);
        assert_eq!(
            e.feature_names(),
            ["x", "color=blue", "color=red", "code=2", "code=10"]
        );
        assert_eq!(
            e.feature_sources(),
            [
                ("x", false),
                ("color", true),
                ("color", true),
                ("code", true),
                ("code", true)
            ]
        );
        assert_eq!(
            encode(["1.5", "red", "10"]).unwrap(),
            [1.5, 0.0, 1.0, 0.0, 1.0]
        );
        assert_eq!(
            encode(["-2", "blue", "2.0"]).unwrap(),
            [-2.0, 1.0, 0.0, 1.0, 0.0]
        );
    }

    #[test]
    fn unknown_categories_and_bad_numbers_name_the_cell() {
        let e = encode(["1", "green", "2"]).unwrap_err().to_string();
        assert_eq!(
            e,
            "cell 1: \"green\" is not a category seen in training (\"blue\", \"red\")"
        );
        let e = encode(["one", "red", "2"]).unwrap_err().to_string();
        assert_eq!(e, "cell 0: \"one\" is not a number");
        assert!(encode(["1", "red", "3"]).is_err());
    }

    #[test]
    fn distinct_values_sort_numerically_or_as_text() {
        let (v, numeric) = distinct_sorted(["10", "2", "2.0", "1"].into_iter());
        assert_eq!(
            (v, numeric),
            (vec!["1".into(), "2".into(), "10".into()], true)
        );
        let (v, numeric) = distinct_sorted(["b", "10", "a", "b"].into_iter());
        assert_eq!(
            (v, numeric),
            (vec!["10".into(), "a".into(), "b".into()], false)
        );
    }
}
