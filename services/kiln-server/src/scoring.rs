//! Batch scoring (`InferenceService.ScoreDataset`): every row of an uploaded
//! dataset through a model version, off the online path.
//!
//! The scorer builds its own copy of the model from the version's artifact,
//! on a blocking thread, so online Predict requests never queue behind a
//! batch in the version's batcher. Rows are encoded in chunks exactly as
//! Predict encodes `text_rows` (columns matched by name, missing cells filled,
//! unseen categories ignored or refused per the model's rules), and answered
//! as Predict answers them; the predictions are stored as a CSV dataset with
//! the columns `kiln predict` writes. When the table holds the model's target
//! column(s), the answer carries the epoch events' metrics (kiln-core's
//! classification metrics, kiln-train's regression metrics) and, for
//! classification, the confusion matrix.
//!
//! Progress is streamed after every chunk. The stream is the only link to
//! the client: once it is dropped (the client cancelled or went away), the
//! scorer stops at the next chunk and stores nothing.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use kiln::v1 as pb;
use kiln_core::data::Table;
use kiln_core::encoding::{category_key, is_missing, parse_number};
use kiln_core::metrics::{classification_metrics, ConfusionMatrix};
use kiln_core::spec::Task;
use kiln_serve::ServedModel;
use kiln_store::DatasetMeta;
use kiln_train::{ModelArtifact, Output, Predictor};
use tokio::sync::{mpsc, Semaphore};
use tonic::Status;

use crate::{datasets, metrics, status, Kiln};

/// Rows encoded and scored per forward pass (and per progress event).
pub const CHUNK_ROWS: usize = 4096;

/// Scorings that run at once; more wait for a slot. Each holds a table and a
/// copy of a model, and takes CPU from training and online serving.
const CONCURRENT_SCORINGS: usize = 2;
static SLOTS: Semaphore = Semaphore::const_new(CONCURRENT_SCORINGS);

/// Events in flight between the scorer and a slow reader.
const EVENT_BUFFER: usize = 8;

/// The stream ScoreDataset answers with.
pub type ScoreStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ScoreEvent, Status>> + Send>>;

/// Checks the request, reads the table and matches its columns (errors come
/// back as the call's status), then scores it on a blocking thread.
pub async fn start(
    kiln: Arc<Kiln>,
    model: Arc<ServedModel>,
    request: pb::ScoreDatasetRequest,
) -> Result<ScoreStream, Status> {
    use pb::score_dataset_request::Dataset;
    let dataset = match request.dataset {
        Some(Dataset::DatasetId(id)) => kiln.datasets.get(&id).map_err(status::dataset)?,
        Some(Dataset::DatasetName(name)) if name.is_empty() => {
            return Err(Status::invalid_argument("dataset_name: required"))
        }
        Some(Dataset::DatasetName(name)) => kiln.datasets.newest_named(&name).ok_or_else(|| {
            Status::not_found(format!("no dataset named \"{}\"", kiln_core::brief(&name)))
        })?,
        None => {
            return Err(Status::invalid_argument(
                "dataset: set dataset_id or dataset_name",
            ))
        }
    };
    let output_name = match request.output_name.trim() {
        "" => format!("{}-v{}-scores", model.name, model.version),
        name => name.to_string(),
    };
    let (artifact, device) = kiln
        .models
        .artifact_and_device(&model.name, model.version)
        .map_err(status::serve)?;
    let permit = SLOTS
        .acquire()
        .await
        .map_err(|_| Status::unavailable("batch scoring is closed"))?;
    let datasets = kiln.datasets.clone();
    let plan = tokio::task::spawn_blocking(move || {
        let table = datasets.load(&dataset.id).map_err(status::dataset)?;
        Plan::new(&model, artifact, device, dataset, table, output_name)
    })
    .await
    .map_err(|e| Status::internal(format!("loading the dataset panicked: {e}")))??;
    let (tx, rx) = mpsc::channel(EVENT_BUFFER);
    let stopping = kiln.stopping.clone();
    let datasets = kiln.datasets.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let name = plan.model_name.clone();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            plan.score(&tx, &datasets, &stopping)
        }));
        let result = result.unwrap_or_else(|_| {
            Err(Status::internal(format!(
                "scoring with model \"{name}\" panicked"
            )))
        });
        let outcome = match &result {
            Ok(Some(_)) => "finished",
            Ok(None) => "cancelled",
            Err(_) => "failed",
        };
        metrics::scoring_ended(&name, outcome);
        match result {
            Ok(Some(finished)) => {
                let event = pb::ScoreEvent {
                    kind: Some(pb::score_event::Kind::Finished(finished)),
                };
                let _ = tx.blocking_send(Ok(event));
            }
            Ok(None) => tracing::info!(model = %name, "scoring stopped: the client left"),
            Err(status) => {
                let _ = tx.blocking_send(Err(status));
            }
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// A table matched to a model: what to score and where its columns are.
struct Plan {
    model_name: String,
    version: u32,
    job_id: String,
    artifact: ModelArtifact,
    device: kiln_train::Device,
    dataset: DatasetMeta,
    table: Table,
    /// The table's column for each of the model's input columns.
    inputs: Vec<usize>,
    /// The table's columns of the model's targets, when it has all of them.
    targets: Option<Vec<usize>>,
    output_name: String,
}

impl Plan {
    fn new(
        model: &ServedModel,
        artifact: ModelArtifact,
        device: kiln_train::Device,
        dataset: DatasetMeta,
        table: Table,
        output_name: String,
    ) -> Result<Self, Status> {
        let position = |name: &str| table.columns.iter().position(|c| c == name);
        let names = artifact.meta.encoding.input_names();
        let missing: Vec<String> = names
            .iter()
            .filter(|n| position(n).is_none())
            .map(|n| format!("\"{n}\""))
            .collect();
        if !missing.is_empty() {
            return Err(Status::invalid_argument(format!(
                "dataset \"{}\" ({}) has no column {}; model \"{}\" version {} reads the columns {}",
                dataset.name,
                dataset.id,
                missing.join(", "),
                model.name,
                model.version,
                names.join(", ")
            )));
        }
        let inputs = names
            .iter()
            .map(|n| position(n).expect("checked"))
            .collect();
        let targets = artifact
            .meta
            .target_names
            .iter()
            .map(|n| position(n))
            .collect::<Option<Vec<_>>>()
            .filter(|t| !t.is_empty());
        Ok(Self {
            model_name: model.name.clone(),
            version: model.version,
            job_id: model.job_id.clone(),
            artifact,
            device,
            dataset,
            table,
            inputs,
            targets,
            output_name,
        })
    }

    /// Scores every chunk, sending progress; `None` when the client left
    /// (nothing is stored then).
    fn score(
        &self,
        tx: &mpsc::Sender<Result<pb::ScoreEvent, Status>>,
        datasets: &kiln_store::DatasetStore,
        stopping: &tokio::sync::watch::Receiver<bool>,
    ) -> Result<Option<pb::ScoreFinished>, Status> {
        let started = Instant::now();
        let meta = &self.artifact.meta;
        let predictor = Predictor::new(&self.artifact, &self.device).map_err(|e| {
            Status::internal(format!("building model \"{}\": {e}", self.model_name))
        })?;
        let encoder = meta.encoding.encoder();
        let table = &self.table;
        let rows = table.rows();
        let classification = meta.arch.task != Task::Regression;
        let mut csv = csv::Writer::from_writer(Vec::new());
        csv.write_record(self.header())
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut evaluation = self.targets.as_ref().map(|t| Evaluation::new(self, t));
        let mut features = Vec::with_capacity(CHUNK_ROWS.min(rows) * meta.arch.inputs);
        let mut record = Vec::new();
        for start in (0..rows).step_by(CHUNK_ROWS) {
            if tx.is_closed() {
                return Ok(None);
            }
            if *stopping.borrow() {
                return Err(status::shutting_down());
            }
            let end = (start + CHUNK_ROWS).min(rows);
            features.clear();
            for r in start..end {
                encoder
                    .encode(
                        |j| table.cell(r, self.inputs[j]),
                        |j| {
                            format!(
                                "row {}, column \"{}\"",
                                r + 1,
                                table.columns[self.inputs[j]]
                            )
                        },
                        &mut features,
                    )
                    .map_err(status::invalid)?;
            }
            let output = predictor.predict(&features);
            metrics::rows_scored(&self.model_name, (end - start) as u64);
            let (values, width) = match &output {
                Output::Values { values, width } => (values, *width),
                Output::Probabilities { probs, classes } => (probs, *classes),
            };
            for row in values.chunks(width) {
                record.clear();
                if classification {
                    let best = meta.class_of(row);
                    record.push(meta.class_labels.get(best).cloned().unwrap_or_default());
                }
                record.extend(row.iter().map(|&v| (v as f64).to_string()));
                csv.write_record(&record)
                    .map_err(|e| Status::internal(e.to_string()))?;
            }
            if let Some(evaluation) = &mut evaluation {
                evaluation.add(self, start, values, width)?;
            }
            let progress = pb::ScoreEvent {
                kind: Some(pb::score_event::Kind::Progress(pb::ScoreProgress {
                    rows_done: end as u64,
                    rows_total: rows as u64,
                })),
            };
            if tx.blocking_send(Ok(progress)).is_err() {
                return Ok(None);
            }
        }
        metrics::unseen_categories(&self.model_name, encoder.unseen());
        metrics::missing_filled(&self.model_name, encoder.filled());
        let bytes = csv
            .into_inner()
            .map_err(|e| Status::internal(e.to_string()))?;
        if tx.is_closed() {
            return Ok(None);
        }
        let stored = datasets
            .put_csv(&self.output_name, &bytes)
            .map_err(status::dataset)?;
        tracing::info!(
            model = %self.model_name,
            version = self.version,
            dataset = %self.dataset.id,
            predictions = %stored.id,
            rows,
            "dataset scored"
        );
        let mut finished = pb::ScoreFinished {
            predictions: Some(datasets::to_proto(stored)),
            rows_scored: rows as u64,
            model_version: self.version,
            job_id: self.job_id.clone(),
            ..Default::default()
        };
        if let Some(evaluation) = evaluation {
            evaluation.finish(self, &mut finished);
        }
        finished.seconds = started.elapsed().as_secs_f64();
        Ok(Some(finished))
    }

    /// The columns `kiln predict` writes: `class` and `p_<label>` per class,
    /// or the target columns.
    fn header(&self) -> Vec<String> {
        let meta = &self.artifact.meta;
        match meta.arch.task {
            Task::Regression => meta.target_names.clone(),
            _ => std::iter::once("class".to_string())
                .chain(meta.class_labels.iter().map(|l| format!("p_{l}")))
                .collect(),
        }
    }
}

/// The targets read so far, next to the model's outputs for the same rows.
struct Evaluation {
    columns: Vec<usize>,
    /// Classification: each label's class index, keyed as training keyed them.
    classes: Option<(std::collections::HashMap<String, i64>, bool)>,
    /// Outputs of the rows with a target: probabilities (f64, as Predict
    /// answers) or values.
    outputs: Vec<f64>,
    truth_classes: Vec<i64>,
    truth_values: Vec<f32>,
    predicted_values: Vec<f32>,
    missing: u64,
    /// Outputs per row: classes, or targets.
    width: usize,
}

impl Evaluation {
    fn new(plan: &Plan, columns: &[usize]) -> Self {
        let meta = &plan.artifact.meta;
        let classes = (meta.arch.task != Task::Regression).then(|| {
            // Training writes numeric labels canonically ("1.0" is "1").
            let numeric = meta.class_labels.iter().all(|l| parse_number(l).is_ok());
            let index = meta
                .class_labels
                .iter()
                .enumerate()
                .map(|(i, l)| (l.clone(), i as i64))
                .collect();
            (index, numeric)
        });
        Self {
            columns: columns.to_vec(),
            classes,
            outputs: Vec::new(),
            truth_classes: Vec::new(),
            truth_values: Vec::new(),
            predicted_values: Vec::new(),
            missing: 0,
            width: columns.len(),
        }
    }

    /// Adds the rows from `start` on, whose outputs are `values`.
    fn add(
        &mut self,
        plan: &Plan,
        start: usize,
        values: &[f32],
        width: usize,
    ) -> Result<(), Status> {
        let table = &plan.table;
        self.width = width;
        for (i, row) in values.chunks(width).enumerate() {
            let r = start + i;
            let at = |c: usize| format!("row {}, column \"{}\"", r + 1, table.columns[c]);
            if self.columns.iter().any(|&c| is_missing(&table.cell(r, c))) {
                self.missing += 1;
                continue;
            }
            match &self.classes {
                Some((index, numeric)) => {
                    let c = self.columns[0];
                    let text = table.cell(r, c);
                    let class = index.get(&category_key(&text, *numeric)).ok_or_else(|| {
                        let labels: Vec<String> = plan
                            .artifact
                            .meta
                            .class_labels
                            .iter()
                            .take(20)
                            .map(|l| format!("\"{l}\""))
                            .collect();
                        Status::invalid_argument(format!(
                            "{}: \"{text}\" is not a class of model \"{}\" ({})",
                            at(c),
                            plan.model_name,
                            labels.join(", ")
                        ))
                    })?;
                    self.truth_classes.push(*class);
                    self.outputs.extend(row.iter().map(|&p| p as f64));
                }
                None => {
                    for &c in &self.columns {
                        let v = parse_number(&table.cell(r, c))
                            .map_err(|e| Status::invalid_argument(format!("{}: {e}", at(c))))?;
                        self.truth_values.push(v as f32);
                    }
                    self.predicted_values.extend_from_slice(row);
                }
            }
        }
        Ok(())
    }

    fn finish(self, plan: &Plan, finished: &mut pb::ScoreFinished) {
        finished.rows_missing_target = self.missing;
        let meta = &plan.artifact.meta;
        match &self.classes {
            Some(_) if !self.truth_classes.is_empty() => {
                let k = self.width;
                let m = classification_metrics(&self.outputs, &self.truth_classes, k);
                finished.rows_evaluated = self.truth_classes.len() as u64;
                finished.metrics = Some(pb::EpochMetrics {
                    val_accuracy: Some(m.accuracy),
                    val_log_loss: Some(m.log_loss),
                    val_roc_auc: m.roc_auc,
                    val_pr_auc: m.pr_auc,
                    val_f1: Some(m.f1),
                    val_balanced_accuracy: Some(m.balanced_accuracy),
                    ..Default::default()
                });
                // As Predict decides: at the model's threshold when it has one.
                let predicted: Vec<usize> = self
                    .outputs
                    .chunks(k)
                    .map(|row| meta.class_of(&row.iter().map(|&p| p as f32).collect::<Vec<_>>()))
                    .collect();
                let truth: Vec<usize> = self.truth_classes.iter().map(|&c| c as usize).collect();
                let cm = ConfusionMatrix::new(&truth, &predicted, k);
                finished.confusion_matrix = Some(cm.to_proto(&meta.class_labels));
            }
            None if !self.truth_values.is_empty() => {
                let width = self.width;
                let m = kiln_train::train::regression_metrics(
                    &self.predicted_values,
                    &self.truth_values,
                    width,
                );
                finished.rows_evaluated = (self.truth_values.len() / width) as u64;
                finished.metrics = Some(pb::EpochMetrics {
                    val_mae: Some(m.mae),
                    val_rmse: Some(m.rmse),
                    val_r2: Some(m.r2),
                    ..Default::default()
                });
            }
            _ => {}
        }
    }
}
