//! Every job's TensorBoard event log (config key `tensorboard_dir`).
//!
//! A job's run directory is `<tensorboard_dir>/<model_name>/<job id>`, or
//! `<tensorboard_dir>/sweep-<id>/<job id>` for a job labelled `sweep=<id>` (a
//! sweep's trial; sweep ids already start with `sweep-`, which is not doubled),
//! so TensorBoard groups runs by model and a sweep's trials together. The run
//! holds the job's hyperparameters (HParams plugin: the same names for every
//! job, so the HParams tab compares all runs with the same columns), one
//! scalar per epoch for each tag in [`metric_tags`] and the other tags below
//! (step = epoch), and how the job ended.
//!
//! Logging never fails a job: the first IO error is logged with
//! `tracing::warn!` and the job goes on without its log.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kiln::v1 as pb;
use kiln_core::spec::{Activation, JobSpec, LossKind, LrScheduleKind, Metric, OptimizerKind, Task};
use kiln_tensorboard::{EventWriter, HParamValue, SessionStatus};
use kiln_train::{EpochReport, GradientHealth};

use crate::queued_job::QueuedJob;

/// A metric's scalar tag: `loss/train`, `loss/val`, `metrics/<name>`.
fn metric_tag(metric: Metric) -> String {
    match metric {
        Metric::TrainLoss => "loss/train".into(),
        Metric::ValLoss => "loss/val".into(),
        other => format!("metrics/{}", other.name()),
    }
}

/// The scalar tags the HParams tab shows as metrics, in every run (a tag the
/// job's task does not report stays empty): one per [`Metric`].
pub fn metric_tags() -> Vec<String> {
    Metric::ALL.into_iter().map(metric_tag).collect()
}

/// One job's event log; does nothing when logging is off or has failed.
pub struct JobLog {
    writer: Option<EventWriter>,
    job_id: String,
}

impl JobLog {
    /// Creates the job's run directory under `root` (`None`, or an empty
    /// path: logging off) and logs its hyperparameters.
    pub fn start(root: Option<&Path>, job: &QueuedJob) -> Self {
        let labels = &job.labels;
        let mut log = JobLog {
            writer: None,
            job_id: job.id.clone(),
        };
        let Some(root) = root.filter(|r| !r.as_os_str().is_empty()) else {
            return log;
        };
        let dir = run_dir(root, &job.id, &job.model_name, labels);
        let started = EventWriter::create(&dir).and_then(|mut w| {
            let hparams = hparams(&job.spec, labels);
            w.hparams(&hparams, &metric_tags())?;
            Ok(w)
        });
        match started {
            Ok(w) => {
                tracing::debug!(job = %job.id, run = %dir.display(), "tensorboard log started");
                log.writer = Some(w);
            }
            Err(e) => log.failed(&e),
        }
        log
    }

    /// Logs an epoch's scalars (and its gradient health) and flushes them, so
    /// a live TensorBoard sees the epoch.
    pub fn epoch(&mut self, report: &EpochReport, health: Option<&GradientHealth>) {
        let Some(w) = &mut self.writer else { return };
        let result = (|| {
            for (tag, value) in epoch_scalars(report, health) {
                w.scalar(&tag, report.epoch as i64, value as f32)?;
            }
            w.flush()
        })();
        if let Err(e) = result {
            self.failed(&e);
        }
    }

    /// Ends the run with the job's final event: SUCCESS when it finished,
    /// UNKNOWN when it was cancelled, FAILURE otherwise.
    pub fn end(mut self, final_event: &pb::job_event::Kind) {
        let Some(w) = &mut self.writer else { return };
        if let Err(e) = w.session_end(session_status(final_event)) {
            self.failed(&e);
        }
    }

    fn failed(&mut self, e: &std::io::Error) {
        tracing::warn!(job = %self.job_id, error = %e, "tensorboard log failed; the job goes on without it");
        self.writer = None;
    }
}

/// `<root>/<model_name>/<job id>`, or `<root>/sweep-<id>/<job id>` for a job
/// labelled `sweep=<id>` (`<root>/<id>/<job id>` when the id already starts
/// with `sweep-`, as the server's sweep ids do).
pub fn run_dir(
    root: &Path,
    job_id: &str,
    model_name: &str,
    labels: &HashMap<String, String>,
) -> PathBuf {
    let group = match labels.get("sweep") {
        Some(sweep) if sweep.starts_with("sweep-") => path_component(sweep),
        Some(sweep) => format!("sweep-{}", path_component(sweep)),
        None => path_component(model_name),
    };
    root.join(group).join(path_component(job_id))
}

/// `s` as one safe path component: characters other than letters, digits,
/// '-', '_' and '.' become '_', and "", "." and ".." get a leading '_'.
fn path_component(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.chars().all(|c| c == '.') {
        out.insert(0, '_');
    }
    out
}

/// The hyperparameters every job logs, the same names for every spec, then
/// `label.<key>` for each label (sorted by key).
pub fn hparams(spec: &JobSpec, labels: &HashMap<String, String>) -> Vec<(String, HParamValue)> {
    let t = &spec.training;
    let hidden = &spec.model.hidden;
    let hidden_layers = if hidden.is_empty() {
        "none".to_string()
    } else {
        hidden
            .iter()
            .map(|l| l.units.to_string())
            .collect::<Vec<_>>()
            .join("-")
    };
    let activation = match hidden.first() {
        None => "none",
        Some(first) => {
            let name = activation_name(first.activation);
            if hidden.iter().all(|l| activation_name(l.activation) == name) {
                name
            } else {
                "mixed"
            }
        }
    };
    let dropout = hidden.iter().map(|l| l.dropout).fold(0.0, f64::max);
    let mut out: Vec<(String, HParamValue)> = vec![
        ("task".into(), task_name(spec.task).into()),
        ("optimizer".into(), optimizer_name(&t.optimizer.kind).into()),
        ("learning_rate".into(), t.optimizer.learning_rate.into()),
        ("weight_decay".into(), t.optimizer.weight_decay.into()),
        ("batch_size".into(), t.batch_size.into()),
        ("epochs".into(), t.epochs.into()),
        ("hidden_layers".into(), hidden_layers.into()),
        ("activation".into(), activation.into()),
        ("dropout".into(), dropout.into()),
        (
            "batch_norm".into(),
            hidden.iter().any(|l| l.batch_norm.is_some()).into(),
        ),
        ("loss".into(), loss_name(t.loss.kind).into()),
        (
            "lr_schedule".into(),
            schedule_name(&t.lr_schedule.kind).into(),
        ),
        ("seed".into(), HParamValue::Number(t.seed as f64)),
    ];
    let mut keys: Vec<&String> = labels.keys().collect();
    keys.sort();
    for key in keys {
        out.push((format!("label.{key}"), labels[key].clone().into()));
    }
    out
}

/// An epoch's scalars by tag.
pub fn epoch_scalars(r: &EpochReport, health: Option<&GradientHealth>) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Metric::ALL
        .into_iter()
        .filter_map(|m| Some((metric_tag(m), r.metric(m)?)))
        .collect();
    out.push(("optimizer/learning_rate".into(), r.learning_rate));
    if let Some(m) = r.momentum {
        out.push(("optimizer/momentum".into(), m));
    }
    out.push(("time/epoch_seconds".into(), r.epoch_seconds));
    out.push(("time/samples_per_second".into(), r.samples_per_second));
    for l in health.map(|h| h.layers.as_slice()).unwrap_or_default() {
        let layer = path_component(&l.layer);
        out.push((format!("gradients/grad_norm/{layer}"), l.grad_norm));
        out.push((format!("gradients/weight_norm/{layer}"), l.weight_norm));
        out.push((format!("gradients/update_ratio/{layer}"), l.update_ratio));
        if let Some(d) = l.dead_fraction {
            out.push((format!("gradients/dead_fraction/{layer}"), d));
        }
    }
    out
}

fn session_status(final_event: &pb::job_event::Kind) -> SessionStatus {
    use pb::job_event::Kind;
    match final_event {
        Kind::Finished(_) => SessionStatus::Success,
        Kind::Failed(f) if f.state() == pb::JobState::Cancelled => SessionStatus::Unknown,
        Kind::Failed(_) => SessionStatus::Failure,
        _ => SessionStatus::Unknown,
    }
}

fn task_name(task: Task) -> &'static str {
    match task {
        Task::Regression => "regression",
        Task::Binary => "binary",
        Task::Multiclass => "multiclass",
    }
}

fn optimizer_name(kind: &OptimizerKind) -> &'static str {
    match kind {
        OptimizerKind::Sgd { .. } => "sgd",
        OptimizerKind::Adam { .. } => "adam",
        OptimizerKind::AdamW { .. } => "adamw",
        OptimizerKind::Nadam { .. } => "nadam",
        OptimizerKind::RmsProp { .. } => "rmsprop",
        OptimizerKind::Adamax { .. } => "adamax",
        OptimizerKind::Adagrad { .. } => "adagrad",
    }
}

fn activation_name(a: Activation) -> &'static str {
    match a {
        Activation::Relu => "relu",
        Activation::Tanh => "tanh",
        Activation::Sigmoid => "sigmoid",
        Activation::LeakyRelu { .. } => "leaky_relu",
        Activation::Elu { .. } => "elu",
        Activation::Selu => "selu",
        Activation::Gelu => "gelu",
        Activation::Softplus => "softplus",
        Activation::Silu => "silu",
        Activation::RRelu { .. } => "rrelu",
        Activation::PRelu { .. } => "prelu",
    }
}

fn loss_name(kind: LossKind) -> &'static str {
    match kind {
        LossKind::Mse => "mse",
        LossKind::Mae => "mae",
        LossKind::Huber => "huber",
        LossKind::CrossEntropy => "cross_entropy",
        LossKind::BinaryCrossEntropy => "binary_cross_entropy",
    }
}

fn schedule_name(kind: &LrScheduleKind) -> &'static str {
    match kind {
        LrScheduleKind::Constant => "constant",
        LrScheduleKind::Step { .. } => "step",
        LrScheduleKind::Exponential { .. } => "exponential",
        LrScheduleKind::Cosine { .. } => "cosine",
        LrScheduleKind::ReduceOnPlateau { .. } => "reduce_on_plateau",
        LrScheduleKind::OneCycle { .. } => "one_cycle",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn runs_group_by_model_or_sweep() {
        let root = Path::new("/tb");
        assert_eq!(
            run_dir(root, "job-1", "rings", &labels(&[("team", "a")])),
            Path::new("/tb/rings/job-1")
        );
        assert_eq!(
            run_dir(root, "job-2", "s1-trial-3", &labels(&[("sweep", "s1")])),
            Path::new("/tb/sweep-s1/job-2")
        );
        assert_eq!(
            run_dir(
                root,
                "job-5",
                "m-trial-0",
                &labels(&[("sweep", "sweep-0a1b")])
            ),
            Path::new("/tb/sweep-0a1b/job-5")
        );
        // Names never leave the root.
        assert_eq!(
            run_dir(root, "job-3", "..", &labels(&[])),
            Path::new("/tb/_../job-3")
        );
        assert_eq!(
            run_dir(root, "job-4", "m", &labels(&[("sweep", "../x y")])),
            Path::new("/tb/sweep-.._x_y/job-4")
        );
    }

    #[test]
    fn hparams_have_the_same_names_for_every_spec() {
        let minimal = pb::JobSpec {
            task: pb::Task::Regression as i32,
            data: Some(pb::DataSpec {
                source: Some(pb::data_spec::Source::Inline(pb::InlineData {
                    columns: vec!["x".into(), "y".into()],
                    rows: vec![
                        pb::Row {
                            values: vec![0.0, 0.0],
                        },
                        pb::Row {
                            values: vec![1.0, 1.0],
                        },
                    ],
                })),
                target_columns: vec!["y".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut rich = minimal.clone();
        rich.task = pb::Task::BinaryClassification as i32;
        rich.model = Some(pb::ModelSpec {
            hidden_layers: vec![
                pb::HiddenLayer {
                    units: 64,
                    activation: pb::Activation::Relu as i32,
                    dropout: 0.25,
                    ..Default::default()
                },
                pb::HiddenLayer {
                    units: 32,
                    activation: pb::Activation::Tanh as i32,
                    ..Default::default()
                },
            ],
            ..Default::default()
        });
        let names = |spec: &pb::JobSpec| -> Vec<(String, HParamValue)> {
            hparams(&JobSpec::from_proto(spec).unwrap(), &labels(&[]))
        };
        let (a, b) = (names(&minimal), names(&rich));
        let keys =
            |h: &[(String, HParamValue)]| h.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        assert_eq!(keys(&a), keys(&b));
        let get = |h: &[(String, HParamValue)], k: &str| {
            h.iter().find(|(n, _)| n == k).unwrap().1.clone()
        };
        assert_eq!(get(&a, "hidden_layers"), "none".into());
        assert_eq!(get(&a, "activation"), "none".into());
        assert_eq!(get(&b, "hidden_layers"), "64-32".into());
        assert_eq!(get(&b, "activation"), "mixed".into());
        assert_eq!(get(&b, "dropout"), HParamValue::Number(0.25));
        assert_eq!(get(&b, "task"), "binary".into());

        let with_labels = hparams(
            &JobSpec::from_proto(&minimal).unwrap(),
            &labels(&[("sweep", "s"), ("arm", "x")]),
        );
        let extra: Vec<_> = keys(&with_labels)[a.len()..].to_vec();
        assert_eq!(extra, ["label.arm", "label.sweep"]);
    }
}
