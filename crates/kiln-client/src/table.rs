//! Predictions to and from CSV.
//!
//! Input: a CSV with a header row. When the model is known, its
//! `input_columns` are looked up in the header by name (order free, extra
//! columns ignored); each row is sent as a `TextRow`, so numbers and
//! categorical values both work. Output: for classification the header is
//! `class` and then `p_<label>` per class; for regression it is the target
//! columns.

use std::io::Write;

use crate::{pb, Error, Result};

/// Reads a CSV with a header row into `text_rows` for Predict. With `model`,
/// the cells are taken in the order of its `input_columns`, matched by name
/// in the header; without it, every column is sent in file order.
pub fn read_feature_csv(csv: &[u8], model: Option<&pb::ModelInfo>) -> Result<Vec<pb::TextRow>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(csv);
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| Error::Invalid(format!("CSV header: {e}")))?
        .iter()
        .map(str::to_string)
        .collect();
    let columns = model.map(|m| {
        if m.input_columns.is_empty() {
            &m.feature_columns
        } else {
            &m.input_columns
        }
    });
    let order: Vec<usize> = match columns {
        Some(columns) if !columns.is_empty() => columns
            .iter()
            .map(|c| {
                header.iter().position(|h| h == c).ok_or_else(|| {
                    Error::Invalid(format!(
                        "the CSV has no column {c:?}; model {} version {} reads the columns {}",
                        model.map(|m| m.name.as_str()).unwrap_or_default(),
                        model.map(|m| m.version).unwrap_or_default(),
                        columns.join(", ")
                    ))
                })
            })
            .collect::<Result<_>>()?,
        _ => (0..header.len()).collect(),
    };
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| Error::Invalid(format!("CSV row {}: {e}", i + 1)))?;
        let cells = order
            .iter()
            .map(|&j| record.get(j).unwrap_or_default().to_string())
            .collect();
        rows.push(pb::TextRow { cells });
    }
    Ok(rows)
}

/// Predictions as a table: a header and one record per input row.
#[derive(Debug, Clone)]
pub struct PredictionTable {
    pub header: Vec<String>,
    pub records: Vec<Vec<String>>,
    /// The server's answer (version, job id, timings).
    pub response: pb::PredictResponse,
}

impl PredictionTable {
    /// Lays out `response`; `model` names the classes or targets in the header.
    pub fn new(response: pb::PredictResponse, model: Option<&pb::ModelInfo>) -> PredictionTable {
        let classification = response
            .predictions
            .iter()
            .any(|p| !p.probabilities.is_empty())
            || model.is_some_and(|m| !m.classes.is_empty());
        let width = response
            .predictions
            .iter()
            .map(|p| {
                if classification {
                    p.probabilities.len()
                } else {
                    p.values.len()
                }
            })
            .max()
            .unwrap_or(0);
        let mut header = Vec::new();
        if classification {
            header.push("class".to_string());
            let classes = model.map(|m| m.classes.as_slice()).unwrap_or_default();
            for i in 0..width.max(classes.len()) {
                match classes.get(i) {
                    Some(label) => header.push(format!("p_{label}")),
                    None => header.push(format!("p_{i}")),
                }
            }
        } else {
            let targets = model
                .map(|m| m.target_columns.as_slice())
                .unwrap_or_default();
            for i in 0..width.max(targets.len()) {
                match targets.get(i) {
                    Some(name) => header.push(name.clone()),
                    None => header.push(format!("y{i}")),
                }
            }
        }
        let records = response
            .predictions
            .iter()
            .map(|p| {
                if classification {
                    std::iter::once(p.class_label.clone())
                        .chain(p.probabilities.iter().map(|v| v.to_string()))
                        .collect()
                } else {
                    p.values.iter().map(|v| v.to_string()).collect()
                }
            })
            .collect();
        PredictionTable {
            header,
            records,
            response,
        }
    }

    /// Writes the header and the records as CSV.
    pub fn write_csv(&self, out: impl Write) -> std::io::Result<()> {
        let mut writer = csv::Writer::from_writer(out);
        writer.write_record(&self.header)?;
        for record in &self.records {
            writer.write_record(record)?;
        }
        writer.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> pb::ModelInfo {
        pb::ModelInfo {
            name: "m".into(),
            version: 2,
            input_columns: vec!["x".into(), "shape".into()],
            classes: vec!["a".into(), "b".into()],
            ..Default::default()
        }
    }

    #[test]
    fn columns_are_matched_by_name() {
        let csv = b"shape,label,x\ncircle,a,0.5\n square , b ,1\n";
        let rows = read_feature_csv(csv, Some(&model())).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].cells, ["0.5", "circle"]);
        assert_eq!(rows[1].cells, ["1", "square"]);
        let rows = read_feature_csv(csv, None).unwrap();
        assert_eq!(rows[0].cells, ["circle", "a", "0.5"]);
    }

    #[test]
    fn a_missing_column_is_named() {
        let e = read_feature_csv(b"x,y\n1,2\n", Some(&model())).unwrap_err();
        assert!(e.to_string().contains("\"shape\""), "{e}");
    }

    #[test]
    fn classification_and_regression_headers() {
        let response = pb::PredictResponse {
            predictions: vec![pb::Prediction {
                probabilities: vec![0.25, 0.75],
                class_index: 1,
                class_label: "b".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let table = PredictionTable::new(response, Some(&model()));
        let mut out = Vec::new();
        table.write_csv(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "class,p_a,p_b\nb,0.25,0.75\n"
        );

        let response = pb::PredictResponse {
            predictions: vec![pb::Prediction {
                values: vec![1.5],
                ..Default::default()
            }],
            ..Default::default()
        };
        let regression = pb::ModelInfo {
            target_columns: vec!["y".into()],
            ..Default::default()
        };
        let table = PredictionTable::new(response, Some(&regression));
        assert_eq!(table.header, ["y"]);
        assert_eq!(table.records, [["1.5"]]);
    }
}
