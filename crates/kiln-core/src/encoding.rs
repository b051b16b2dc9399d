//! How a model's input columns become its features: numeric columns pass
//! through, categorical columns become one 0/1 feature per category (one-hot).
//! Fitted when a job reads its data, stored with the model, and applied again
//! by Predict to raw rows.

use std::cell::Cell;
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
    /// How each column treats a missing cell and an unseen category, one per
    /// column. Empty for models saved before kiln filled missing values: for
    /// them both are errors, as they were then.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<ColumnRules>,
}

/// What a column does with a missing cell and with a category it did not see in training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnRules {
    /// What a missing cell becomes.
    pub missing: Fill,
    /// A 0/1 feature after the column's features: 1 where the cell was missing.
    pub indicator: bool,
    /// Categorical: an unseen category is an all-zero one-hot rather than an error.
    pub ignore_unseen: bool,
}

/// What a missing cell becomes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Fill {
    /// Nothing: a missing cell is an error (`MISSING_DROP_ROW` at Predict).
    Refuse,
    /// Numeric: this value, in the column's raw units.
    Value(f64),
    /// Categorical: this category's one-hot.
    Category(String),
    /// Categorical: the column's own category, the empty string in `categories`.
    OwnCategory,
    /// Not fitted yet: the training encoder writes NaN, and
    /// [`InputEncoding::fit_fills`] replaces this with the training split's statistic.
    Fit(Statistic),
}

/// A fill value fitted on the training split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Statistic {
    /// Mean of the column's present values.
    Mean,
    /// Median (the mean of the two middle values for an even count).
    Median,
    /// The most frequent value; the smallest on a tie.
    MostFrequent,
}

/// What columns without rules (models saved before missing values) do.
const STRICT: ColumnRules = ColumnRules {
    missing: Fill::Refuse,
    indicator: false,
    ignore_unseen: false,
};

/// Whether a cell's text means "no value": empty, or (any case) NA, N/A,
/// NaN, null or None, as pandas writes and reads them.
pub fn is_missing(text: &str) -> bool {
    text.is_empty()
        || ["na", "n/a", "nan", "null", "none"]
            .iter()
            .any(|m| text.eq_ignore_ascii_case(m))
}

impl InputEncoding {
    /// Numeric columns only: the features are the columns.
    pub fn numeric<S: ToString>(names: &[S]) -> Self {
        Self {
            columns: names
                .iter()
                .map(|n| InputColumn::Numeric(n.to_string()))
                .collect(),
            rules: Vec::new(),
        }
    }

    /// Column `j`'s rules.
    pub fn rules(&self, j: usize) -> &ColumnRules {
        self.rules.get(j).unwrap_or(&STRICT)
    }

    /// Names of the raw input columns.
    pub fn input_names(&self) -> Vec<String> {
        self.columns.iter().map(|c| c.name().to_string()).collect()
    }

    /// Names of the features the network sees: a one-hot feature is
    /// "column=value", a missing indicator "column:missing".
    pub fn feature_names(&self) -> Vec<String> {
        let mut names = Vec::with_capacity(self.width());
        for (j, c) in self.columns.iter().enumerate() {
            match c {
                InputColumn::Numeric(name) => names.push(name.clone()),
                InputColumn::OneHot {
                    name, categories, ..
                } => names.extend(categories.iter().map(|v| format!("{name}={v}"))),
            }
            if self.rules(j).indicator {
                names.push(format!("{}:missing", c.name()));
            }
        }
        names
    }

    /// Number of features.
    pub fn width(&self) -> usize {
        (0..self.columns.len()).map(|j| self.column_width(j)).sum()
    }

    /// Features of column `j`, its indicator included.
    fn column_width(&self, j: usize) -> usize {
        self.columns[j].width() + usize::from(self.rules(j).indicator)
    }

    /// For each feature, the input column it comes from and whether it is a
    /// 0/1 feature (one-hot or missing indicator), which is never scaled.
    pub fn feature_sources(&self) -> Vec<(&str, bool)> {
        let mut sources = Vec::with_capacity(self.width());
        for (j, c) in self.columns.iter().enumerate() {
            let one_hot = matches!(c, InputColumn::OneHot { .. });
            sources.extend(std::iter::repeat_n((c.name(), one_hot), c.width()));
            if self.rules(j).indicator {
                sources.push((c.name(), true));
            }
        }
        sources
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
            unseen: Cell::new(0),
            filled: Cell::new(0),
        }
    }

    /// Replaces every [`Fill::Fit`] with its statistic over the rows of `x`
    /// (the training split, row-major features with NaN where a cell was
    /// missing). A column with no value in those rows fills with 0 (numeric)
    /// or its first category.
    pub fn fit_fills(&mut self, x: &[f32]) {
        let width = self.width();
        let mut offset = 0;
        for j in 0..self.columns.len() {
            if let Fill::Fit(statistic) = self.rules(j).missing {
                let fill = match &self.columns[j] {
                    InputColumn::Numeric(_) => {
                        let present: Vec<f64> = x
                            .iter()
                            .skip(offset)
                            .step_by(width)
                            .filter(|v| !v.is_nan())
                            .map(|&v| v as f64)
                            .collect();
                        Fill::Value(statistic_of(statistic, present))
                    }
                    InputColumn::OneHot { categories, .. } => {
                        let mut counts = vec![0u64; categories.len()];
                        for row in x.chunks(width) {
                            let block = &row[offset..offset + categories.len()];
                            if let Some(hot) = block.iter().position(|&v| v == 1.0) {
                                counts[hot] += 1;
                            }
                        }
                        // The first maximum: categories are sorted, so the smallest.
                        let best =
                            counts
                                .iter()
                                .enumerate()
                                .fold(0, |b, (i, &c)| if c > counts[b] { i } else { b });
                        Fill::Category(categories.get(best).cloned().unwrap_or_default())
                    }
                };
                self.rules[j].missing = fill;
            }
            offset += self.column_width(j);
        }
    }

    /// Fills the missing values of feature rows (NaN; a one-hot block all
    /// NaN) with each column's fill, sets the column's indicator to 1 where it
    /// filled, and counts the filled cells per column into `filled`. Any other
    /// non-finite value, a partly NaN one-hot block and a missing value in a
    /// column without a fill are errors, named by `at(row, feature)`.
    pub fn fill_missing(
        &self,
        x: &mut [f32],
        filled: &mut [u64],
        at: impl Fn(usize, usize) -> String,
    ) -> Result<()> {
        let width = self.width();
        for (r, row) in x.chunks_mut(width.max(1)).enumerate() {
            let mut offset = 0;
            for (j, column) in self.columns.iter().enumerate() {
                let w = column.width();
                let block = &mut row[offset..offset + w];
                let nan = block.iter().filter(|v| v.is_nan()).count();
                if nan > 0 {
                    if nan < w {
                        let message = format!(
                            "NaN in part of column \"{}\"'s one-hot features; a missing value is NaN in all {w}",
                            column.name()
                        );
                        return Err(FieldError::new(at(r, offset), message));
                    }
                    self.fill_block(j, block)
                        .map_err(|m| FieldError::new(at(r, offset), m))?;
                    filled[j] += 1;
                    if self.rules(j).indicator {
                        row[offset + w] = 1.0;
                    }
                }
                offset += self.column_width(j);
            }
            if let Some(f) = row.iter().position(|v| !v.is_finite()) {
                let message = format!("{} is not finite (NaN means a missing value)", row[f]);
                return Err(FieldError::new(at(r, f), message));
            }
        }
        Ok(())
    }

    /// Column `j`'s fill written into its (all-NaN) features.
    fn fill_block(&self, j: usize, block: &mut [f32]) -> std::result::Result<(), String> {
        let rules = self.rules(j);
        match (&rules.missing, &self.columns[j]) {
            (Fill::Value(v), InputColumn::Numeric(_)) => block[0] = *v as f32,
            (Fill::Category(c), InputColumn::OneHot { categories, .. }) => {
                block.fill(0.0);
                if let Some(hot) = categories.iter().position(|k| k == c) {
                    block[hot] = 1.0;
                }
            }
            (Fill::OwnCategory, InputColumn::OneHot { categories, .. }) => {
                block.fill(0.0);
                match categories.iter().position(String::is_empty) {
                    Some(hot) => block[hot] = 1.0,
                    // Training had no gap in the column: a gap is an unseen category.
                    None if rules.ignore_unseen => {}
                    None => return Err(self.no_fill_message(j)),
                }
            }
            _ => return Err(self.no_fill_message(j)),
        }
        Ok(())
    }

    fn no_fill_message(&self, j: usize) -> String {
        match self.rules(j).missing {
            Fill::Refuse if !self.rules.is_empty() => {
                "missing value (the column's missing-value strategy is MISSING_DROP_ROW)".into()
            }
            Fill::OwnCategory => {
                "missing value (the column had none in training, and unseen categories are errors)"
                    .into()
            }
            _ => "missing value".into(),
        }
    }
}

/// A statistic of present values (0 when there are none).
fn statistic_of(statistic: Statistic, mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match statistic {
        Statistic::Mean => values.iter().sum::<f64>() / n as f64,
        Statistic::Median if n % 2 == 1 => values[n / 2],
        Statistic::Median => (values[n / 2 - 1] + values[n / 2]) / 2.0,
        Statistic::MostFrequent => {
            // Sorted: runs of equal values; the first longest run is the smallest mode.
            let (mut best, mut best_len, mut i) = (values[0], 0, 0);
            while i < n {
                let run = values[i..].iter().take_while(|&&v| v == values[i]).count();
                if run > best_len {
                    (best, best_len) = (values[i], run);
                }
                i += run;
            }
            best
        }
    }
}

/// Encodes rows of raw cells with an encoding's category lookups built once.
pub struct Encoder<'a> {
    encoding: &'a InputEncoding,
    lookups: Vec<HashMap<&'a str, usize>>,
    training: bool,
    unseen: Cell<u64>,
    filled: Cell<u64>,
}

impl Encoder<'_> {
    /// Errors on a non-numeric value point to `spec.data.categorical_columns`.
    pub fn for_training(mut self) -> Self {
        self.training = true;
        self
    }

    /// Unseen categories encoded as all-zero one-hots so far.
    pub fn unseen(&self) -> u64 {
        self.unseen.get()
    }

    /// Missing cells given their column's fill so far.
    pub fn filled(&self) -> u64 {
        self.filled.get()
    }

    /// Appends the features of one row. `cell(j)` is the text of input column
    /// `j`; `at(j)` names that cell in errors, e.g. `row 3, column "color"`.
    /// A missing cell takes the column's fill; one still to be fitted is NaN.
    pub fn encode<S: AsRef<str>>(
        &self,
        cell: impl Fn(usize) -> S,
        at: impl Fn(usize) -> String,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        for (j, column) in self.encoding.columns.iter().enumerate() {
            let text = cell(j);
            let text = text.as_ref();
            let missing = is_missing(text);
            let start = out.len();
            out.resize(start + column.width(), 0.0);
            let block = &mut out[start..];
            if missing {
                if matches!(self.encoding.rules(j).missing, Fill::Fit(_)) {
                    block.fill(f32::NAN);
                } else {
                    self.encoding
                        .fill_block(j, block)
                        .map_err(|m| FieldError::new(at(j), m))?;
                    self.filled.set(self.filled.get() + 1);
                }
            } else {
                self.encode_present(j, text, block)
                    .map_err(|m| FieldError::new(at(j), m))?;
            }
            if self.encoding.rules(j).indicator {
                out.push(if missing { 1.0 } else { 0.0 });
            }
        }
        Ok(())
    }

    /// A present cell's features into `block` (zeros on entry).
    fn encode_present(
        &self,
        j: usize,
        text: &str,
        block: &mut [f32],
    ) -> std::result::Result<(), String> {
        match &self.encoding.columns[j] {
            InputColumn::Numeric(_) => {
                block[0] = parse_number(text).map_err(|e| {
                    let hint = match self.training && text.parse::<f64>().is_err() {
                        true => " (list the column in spec.data.categorical_columns to one-hot encode it)",
                        false => "",
                    };
                    format!("{e}{hint}")
                })? as f32;
            }
            InputColumn::OneHot {
                categories,
                numeric,
                ..
            } => {
                let key = category_key(text, *numeric);
                match self.lookups[j].get(key.as_str()) {
                    Some(&hot) => block[hot] = 1.0,
                    None if self.encoding.rules(j).ignore_unseen => {
                        self.unseen.set(self.unseen.get() + 1);
                    }
                    None => return Err(unseen_message(text, categories)),
                }
            }
        }
        Ok(())
    }
}

fn unseen_message(text: &str, categories: &[String]) -> String {
    let shown: Vec<_> = categories
        .iter()
        .take(20)
        .map(|c| format!("\"{c}\""))
        .collect();
    let more = if categories.len() > 20 { ", ..." } else { "" };
    format!(
        "\"{text}\" is not a category seen in training ({}{more})",
        shown.join(", ")
    )
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
            rules: Vec::new(),
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

    fn with_rules(rules: Vec<ColumnRules>) -> InputEncoding {
        let mut e = encoding();
        e.columns[1] = InputColumn::OneHot {
            name: "color".into(),
            categories: vec!["blue".into(), "red".into(), String::new()],
            numeric: false,
        };
        e.rules = rules;
        e
    }

    fn rule(missing: Fill, indicator: bool, ignore_unseen: bool) -> ColumnRules {
        ColumnRules {
            missing,
            indicator,
            ignore_unseen,
        }
    }

    #[test]
    fn predict_fills_gaps_and_ignores_unseen_categories_as_told() {
        let e = with_rules(vec![
            rule(Fill::Value(2.5), true, false),
            rule(Fill::OwnCategory, false, false),
            rule(Fill::Category("10".into()), false, true),
        ]);
        assert_eq!(e.width(), 7);
        assert_eq!(e.feature_names()[1], "x:missing");
        assert_eq!(
            e.feature_sources()[1],
            ("x", true),
            "indicators are never scaled"
        );
        let enc = e.encoder();
        let mut out = Vec::new();
        let at = |j: usize| format!("cell {j}");
        enc.encode(|j| ["NA", "", "null"][j], at, &mut out).unwrap();
        assert_eq!(out, [2.5, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0]);
        out.clear();
        enc.encode(|j| ["1", "red", "7"][j], at, &mut out).unwrap();
        assert_eq!(
            out,
            [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0],
            "7 is unseen: all zeros"
        );
        assert_eq!(enc.unseen(), 1);
        let err = enc
            .encode(|j| ["1", "green", "2"][j], at, &mut out)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cell 1: \"green\" is not a category seen in training (\"blue\", \"red\", \"\")"
        );
        let strict = with_rules(vec![
            rule(Fill::Refuse, false, false),
            rule(Fill::OwnCategory, false, false),
            rule(Fill::Refuse, false, false),
        ]);
        let err = strict
            .encoder()
            .encode(|j| ["", "red", "2"][j], at, &mut out)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cell 0: missing value (the column's missing-value strategy is MISSING_DROP_ROW)"
        );
        // A model saved before missing values refuses gaps as it did.
        let err = encoding()
            .encoder()
            .encode(|j| ["", "red", "2"][j], at, &mut out)
            .unwrap_err();
        assert_eq!(err.to_string(), "cell 0: missing value");
    }

    #[test]
    fn feature_rows_fill_nan_and_refuse_the_rest() {
        let e = with_rules(vec![
            rule(Fill::Value(2.5), true, false),
            rule(Fill::Category("red".into()), false, false),
            rule(Fill::Refuse, false, false),
        ]);
        let nan = f32::NAN;
        let mut x = vec![
            nan, 0.0, nan, nan, nan, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0,
        ];
        let mut filled = [0; 3];
        e.fill_missing(&mut x, &mut filled, |r, f| format!("rows[{r}].values[{f}]"))
            .unwrap();
        assert_eq!(x[..7], [2.5, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0]);
        assert_eq!(x[7..], [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0]);
        assert_eq!(filled, [1, 1, 0]);
        let err = |mut x: Vec<f32>| {
            e.fill_missing(&mut x, &mut [0; 3], |r, f| format!("rows[{r}].values[{f}]"))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(vec![1.0, 0.0, nan, 1.0, 0.0, 1.0, 0.0]),
            "rows[0].values[2]: NaN in part of column \"color\"'s one-hot features; a missing value is NaN in all 3"
        );
        assert_eq!(
            err(vec![1.0, 0.0, 1.0, 0.0, 0.0, nan, nan]),
            "rows[0].values[5]: missing value (the column's missing-value strategy is MISSING_DROP_ROW)"
        );
        assert_eq!(
            err(vec![f32::INFINITY, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0]),
            "rows[0].values[0]: inf is not finite (NaN means a missing value)"
        );
    }

    #[test]
    fn statistics_match_their_definitions() {
        assert_eq!(statistic_of(Statistic::Mean, vec![1.0, 2.0, 6.0]), 3.0);
        assert_eq!(statistic_of(Statistic::Median, vec![5.0, 1.0, 2.0]), 2.0);
        assert_eq!(
            statistic_of(Statistic::Median, vec![4.0, 1.0, 2.0, 8.0]),
            3.0
        );
        assert_eq!(
            statistic_of(Statistic::MostFrequent, vec![3.0, 1.0, 3.0, 1.0, 2.0]),
            1.0
        );
        assert_eq!(statistic_of(Statistic::Mean, vec![]), 0.0);
    }
}
