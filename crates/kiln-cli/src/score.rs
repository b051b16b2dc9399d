//! `kiln predict --dataset`, `kiln evaluate` and `kiln datasets download`:
//! scoring an uploaded dataset on the server, and fetching a stored file.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln_client::{pb, score_metrics, Client, DatasetRef};

use crate::{CliError, Outcome};

/// Writes `bytes` to `path`, or to stdout.
pub fn write_output(path: Option<&Path>, bytes: &[u8]) -> Result<(), CliError> {
    match path {
        Some(path) => std::fs::write(path, bytes).map_err(|source| {
            CliError::Kiln(kiln_client::Error::Io {
                path: path.to_path_buf(),
                source,
            })
        }),
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(bytes)?;
            out.flush()?;
            Ok(())
        }
    }
}

/// Scores the dataset on the server, with a progress bar on a terminal.
async fn score(
    client: &Client,
    model: &str,
    version: Option<&str>,
    dataset: &str,
) -> Result<pb::ScoreFinished, CliError> {
    let dataset = client.dataset_ref(dataset).await?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("{elapsed:>4} [{bar:25}] {pos}/{len} rows")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar
    });
    let finished = client
        .score_dataset_and_wait(model, version.unwrap_or(""), dataset, "", |p| {
            if let Some(bar) = &bar {
                bar.set_length(p.rows_total);
                bar.set_position(p.rows_done);
            }
        })
        .await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(finished?)
}

/// `kiln predict MODEL --dataset D [-o FILE]`.
pub async fn predict_dataset(
    client: &Client,
    model: &str,
    version: Option<&str>,
    dataset: &str,
    output: Option<PathBuf>,
) -> Outcome {
    let finished = score(client, model, version, dataset).await?;
    let predictions = finished.predictions.clone().unwrap_or_default();
    eprintln!(
        "scored {} rows with {model} version {}: predictions stored as dataset {} ({})",
        finished.rows_scored, finished.model_version, predictions.id, predictions.name
    );
    let csv = client.download_dataset(&predictions.id).await?;
    write_output(output.as_deref(), &csv)?;
    Ok(ExitCode::SUCCESS)
}

/// `kiln evaluate MODEL --dataset D`.
pub async fn evaluate(
    client: &Client,
    model: &str,
    version: Option<&str>,
    dataset: &str,
) -> Outcome {
    let finished = score(client, model, version, dataset).await?;
    if finished.metrics.is_none() {
        let why = if finished.rows_missing_target > 0 {
            "every row's target is missing"
        } else {
            "it has no target column of the model"
        };
        return Err(CliError::Usage(format!(
            "dataset {dataset:?} cannot evaluate {model}: {why}"
        )));
    }
    crate::output::print(&evaluation_text(model, dataset, &finished))?;
    Ok(ExitCode::SUCCESS)
}

/// The metrics, one per line, then the confusion matrix.
pub fn evaluation_text(model: &str, dataset: &str, f: &pb::ScoreFinished) -> String {
    let predictions = f.predictions.clone().unwrap_or_default();
    let mut rows: Vec<(String, String)> = vec![
        (
            "model".into(),
            format!("{model} version {}", f.model_version),
        ),
        ("dataset".into(), dataset.to_string()),
        ("rows".into(), f.rows_scored.to_string()),
        ("rows evaluated".into(), f.rows_evaluated.to_string()),
    ];
    if f.rows_missing_target > 0 {
        rows.push((
            "missing target".into(),
            format!("{} (rows left out of the metrics)", f.rows_missing_target),
        ));
    }
    for (name, v) in score_metrics(f) {
        rows.push((name.into(), format!("{v:.4}")));
    }
    rows.push((
        "predictions".into(),
        format!("dataset {} ({})", predictions.id, predictions.name),
    ));
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let mut text: String = rows
        .iter()
        .map(|(k, v)| format!("{k:width$}  {v}\n"))
        .collect();
    if let Some(cm) = &f.confusion_matrix {
        text.push_str("\nconfusion matrix (rows: true class, columns: predicted class)\n");
        text.push_str(&confusion_text(cm));
    }
    text
}

fn confusion_text(cm: &pb::ConfusionMatrix) -> String {
    let k = cm.labels.len();
    let mut cells: Vec<Vec<String>> = vec![std::iter::once(String::new())
        .chain(cm.labels.iter().cloned())
        .collect()];
    for (t, label) in cm.labels.iter().enumerate() {
        let counts = cm.counts.iter().skip(t * k).take(k).map(u64::to_string);
        cells.push(std::iter::once(label.clone()).chain(counts).collect());
    }
    let widths: Vec<usize> = (0..=k)
        .map(|j| {
            cells
                .iter()
                .map(|r| r[j].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for row in &cells {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(j, (c, &w))| match j {
                0 => format!("{c:<w$}"),
                _ => format!("{c:>w$}"),
            })
            .collect();
        text.push_str(line.join("  ").trim_end());
        text.push('\n');
    }
    text
}

/// `kiln datasets download D [-o FILE]`.
pub async fn download(client: &Client, dataset: &str, output: Option<&Path>) -> Outcome {
    let id = match client.dataset_ref(dataset).await? {
        DatasetRef::Id(id) => id,
        DatasetRef::Name(name) => client
            .datasets()
            .await?
            .into_iter()
            .find(|d| d.name == name)
            .map(|d| d.id)
            .ok_or_else(|| CliError::Usage(format!("no dataset with the id or name {name:?}")))?,
    };
    let file = client.download_dataset(&id).await?;
    write_output(output, &file)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confusion_matrix_is_a_labelled_table() {
        let cm = pb::ConfusionMatrix {
            labels: vec!["no".into(), "yes".into()],
            counts: vec![290, 10, 7, 293],
        };
        assert_eq!(
            confusion_text(&cm),
            "      no  yes\nno   290   10\nyes    7  293\n"
        );
    }
}
