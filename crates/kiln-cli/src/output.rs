//! What `kiln` prints: tables, the live progress of a job and its summary.

use std::io::Write;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln_client::{epoch_metrics, pb, planned_epochs, state_name, stop_reason_name};
use prost_types::Timestamp;

/// Writes to stdout; a closed pipe comes back as an error (BrokenPipe) instead of a panic.
pub fn print(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Columns padded to their widest cell, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            l.push_str(cell);
            if i + 1 < cells.len() {
                let pad = widths[i].saturating_sub(cell.chars().count());
                l.extend(std::iter::repeat_n(' ', pad));
            }
        }
        text.push_str(l.trim_end());
        text.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    text
}

fn num(v: f64) -> String {
    if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e5) {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

fn time(t: &Option<Timestamp>) -> String {
    match t {
        Some(t) => Timestamp {
            seconds: t.seconds,
            nanos: 0,
        }
        .to_string(),
        None => "-".into(),
    }
}

fn seconds(t: &Timestamp) -> f64 {
    t.seconds as f64 + f64::from(t.nanos) * 1e-9
}

fn first_metric(m: Option<&pb::EpochMetrics>) -> String {
    m.and_then(|m| epoch_metrics(m).into_iter().next())
        .map(|(name, v)| format!("{name}={}", num(v)))
        .unwrap_or_else(|| "-".into())
}

fn abbreviate(items: &[String], max: usize) -> String {
    let text = items.join(",");
    if text.chars().count() <= max {
        text
    } else {
        let mut t: String = text.chars().take(max.saturating_sub(3)).collect();
        t.push_str("...");
        t
    }
}

pub fn jobs_table(jobs: &[pb::Job]) -> String {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.clone(),
                j.model_name.clone(),
                state_name(j.state()).to_string(),
                format!("{}/{}", j.epochs_completed, planned_epochs(j)),
                j.best
                    .as_ref()
                    .map(|b| b.epoch.to_string())
                    .unwrap_or_else(|| "-".into()),
                j.best
                    .as_ref()
                    .map(|b| num(b.val_loss))
                    .unwrap_or_else(|| "-".into()),
                first_metric(j.best.as_ref()),
                time(&j.created_at),
            ]
        })
        .collect();
    table(
        &[
            "ID", "MODEL", "STATE", "EPOCHS", "BEST", "VAL_LOSS", "METRIC", "CREATED",
        ],
        &rows,
    )
}

pub fn models_table(models: &[pb::ModelInfo]) -> String {
    let rows: Vec<Vec<String>> = models
        .iter()
        .map(|m| {
            let task = m.task().as_str_name();
            let outputs = if m.classes.is_empty() {
                &m.target_columns
            } else {
                &m.classes
            };
            vec![
                m.name.clone(),
                m.version.to_string(),
                m.job_id.clone(),
                task.strip_prefix("TASK_").unwrap_or(task).to_lowercase(),
                if m.loaded { "yes" } else { "no" }.to_string(),
                if m.aliases.is_empty() {
                    "-".into()
                } else {
                    m.aliases.join(",")
                },
                abbreviate(&m.input_columns, 40),
                abbreviate(outputs, 30),
                m.metrics
                    .as_ref()
                    .map(|b| num(b.val_loss))
                    .unwrap_or_else(|| "-".into()),
                first_metric(m.metrics.as_ref()),
            ]
        })
        .collect();
    table(
        &[
            "NAME", "VERSION", "JOB", "TASK", "LOADED", "ALIASES", "INPUTS", "OUTPUTS", "VAL_LOSS",
            "METRIC",
        ],
        &rows,
    )
}

pub fn datasets_table(datasets: &[pb::Dataset]) -> String {
    let rows: Vec<Vec<String>> = datasets
        .iter()
        .map(|d| {
            let format = d.format().as_str_name();
            vec![
                d.id.clone(),
                d.name.clone(),
                format
                    .strip_prefix("DATASET_FORMAT_")
                    .unwrap_or(format)
                    .to_lowercase(),
                d.rows.to_string(),
                abbreviate(&d.columns, 50),
                d.size_bytes.to_string(),
                time(&d.created_at),
            ]
        })
        .collect();
    table(
        &[
            "ID", "NAME", "FORMAT", "ROWS", "COLUMNS", "BYTES", "CREATED",
        ],
        &rows,
    )
}

/// The final state of a job, one field per line.
pub fn job_summary(job: &pb::Job, model: Option<&pb::ModelInfo>) -> String {
    let mut rows: Vec<Vec<String>> = vec![
        vec!["job".into(), job.id.clone()],
        vec!["state".into(), state_name(job.state()).into()],
    ];
    if job.stop_reason != 0 {
        rows.push(vec![
            "stop reason".into(),
            stop_reason_name(job.stop_reason()).into(),
        ]);
    }
    if !job.message.is_empty() {
        rows.push(vec!["message".into(), job.message.clone()]);
    }
    rows.push(vec![
        "epochs".into(),
        format!("{}/{}", job.epochs_completed, planned_epochs(job)),
    ]);
    if let Some(best) = &job.best {
        rows.push(vec!["best epoch".into(), best.epoch.to_string()]);
        rows.push(vec!["train_loss".into(), num(best.train_loss)]);
        rows.push(vec!["val_loss".into(), num(best.val_loss)]);
        for (name, v) in epoch_metrics(best) {
            rows.push(vec![name.into(), num(v)]);
        }
    }
    if let Some(r) = &job.lr_range {
        rows.push(vec!["lr valley".into(), num(r.valley)]);
        rows.push(vec!["lr steepest".into(), num(r.steepest)]);
        rows.push(vec!["lr minimum/10".into(), num(r.minimum)]);
        if let Some(chosen) = r.chosen {
            rows.push(vec!["lr chosen".into(), num(chosen)]);
        }
    }
    match model {
        Some(m) => rows.push(vec![
            "model".into(),
            format!("{} version {}", m.name, m.version),
        ]),
        None => rows.push(vec![
            "model".into(),
            format!("{} (not served)", job.model_name),
        ]),
    }
    if !job.device.is_empty() {
        rows.push(vec!["device".into(), job.device.clone()]);
    }
    if let (Some(start), Some(end)) = (&job.started_at, &job.finished_at) {
        rows.push(vec![
            "train time".into(),
            format!("{:.1}s", seconds(end) - seconds(start)),
        ]);
    }
    let width = rows.iter().map(|r| r[0].len()).max().unwrap_or(0);
    rows.iter()
        .map(|r| format!("{:width$}  {}\n", r[0], r[1]))
        .collect()
}

/// A job's live progress on stderr: a bar per epoch on a terminal, one line
/// per event otherwise.
pub struct Progress {
    bar: Option<ProgressBar>,
    total: u32,
}

impl Progress {
    pub fn new(job: &pb::Job, terminal: bool) -> Progress {
        let total = planned_epochs(job);
        let bar = terminal.then(|| {
            let bar =
                ProgressBar::with_draw_target(Some(u64::from(total)), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{elapsed:>4} [{bar:25}] epoch {pos}/{len} {wide_msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(state_name(job.state()).to_string());
            bar
        });
        Progress { bar, total }
    }

    pub fn event(&mut self, event: &pb::JobEvent) {
        use pb::job_event::Kind;
        let Some(kind) = &event.kind else { return };
        match (&self.bar, kind) {
            (Some(bar), Kind::Epoch(m)) => {
                bar.set_position(u64::from(m.epoch));
                bar.set_message(epoch_bar_text(m));
                if let Some(warning) = gradient_warning(m) {
                    bar.println(warning);
                }
            }
            (None, Kind::Epoch(m)) => {
                eprintln!("{}", event_text(kind, self.total));
                if let Some(warning) = gradient_warning(m) {
                    eprintln!("{warning}");
                }
            }
            (Some(bar), Kind::StateChanged(s)) => bar.set_message(state_text(s)),
            (Some(bar), other) => bar.println(event_text(other, self.total)),
            (None, other) => eprintln!("{}", event_text(other, self.total)),
        }
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            // The summary that follows repeats the final numbers.
            bar.finish_and_clear();
        }
    }
}

fn epoch_text(m: &pb::EpochMetrics) -> String {
    let mut text = format!(
        "train_loss {} val_loss {}",
        num(m.train_loss),
        num(m.val_loss)
    );
    for (name, v) in epoch_metrics(m) {
        text.push_str(&format!(" {name} {}", num(v)));
    }
    if m.improved {
        text.push_str(" *");
    }
    text
}

/// The bar's short form of an epoch's numbers, to fit a terminal line.
fn epoch_bar_text(m: &pb::EpochMetrics) -> String {
    let mut text = format!("loss {} val {}", num(m.train_loss), num(m.val_loss));
    for (name, v) in epoch_metrics(m) {
        let short = match name.strip_prefix("val_").unwrap_or(name) {
            "accuracy" => "acc",
            "balanced_accuracy" => "bal_acc",
            short => short,
        };
        text.push_str(&format!(" {short} {}", num(v)));
    }
    if m.improved {
        text.push_str(" *");
    }
    text
}

/// A line for an epoch whose gradients were flagged as vanishing or exploding.
fn gradient_warning(m: &pb::EpochMetrics) -> Option<String> {
    let health = m.gradient_health.as_ref()?;
    let kind = match (health.vanishing, health.exploding) {
        (true, true) => "vanishing and exploding",
        (true, false) => "vanishing",
        (false, true) => "exploding",
        (false, false) => return None,
    };
    Some(format!(
        "warning: epoch {}: {kind} gradients: {}",
        m.epoch, health.detail
    ))
}

fn state_text(s: &pb::StateChanged) -> String {
    let mut text = state_name(s.state()).to_string();
    if !s.device.is_empty() {
        text.push_str(" on ");
        text.push_str(&s.device);
    }
    text
}

fn event_text(kind: &pb::job_event::Kind, total: u32) -> String {
    use pb::job_event::Kind;
    match kind {
        Kind::StateChanged(s) => format!("state {}", state_text(s)),
        Kind::Epoch(m) => format!("epoch {}/{total} {}", m.epoch, epoch_text(m)),
        Kind::EarlyStopped(e) => format!(
            "early stopped after epoch {}: best epoch {} ({} {})",
            e.epoch,
            e.best_epoch,
            e.monitor,
            num(e.best_value)
        ),
        Kind::Finished(f) => {
            let mut text = format!(
                "finished ({}): best epoch {} of {}, model {}",
                stop_reason_name(f.reason()),
                f.best_epoch,
                f.epochs_completed,
                f.model_name
            );
            if let Some(t) = f.decision_threshold {
                text.push_str(&format!(", decision threshold {}", num(t)));
            }
            if let Some(m) = &f.confusion_matrix {
                text.push_str(&format!("; {}", confusion_text(m)));
            }
            text
        }
        Kind::Failed(f) => format!(
            "{} ({}): {}",
            state_name(f.state()),
            stop_reason_name(f.reason()),
            f.message
        ),
        Kind::LrRangePoint(p) => format!(
            "lr range test: iteration {} lr {} loss {} smoothed {}",
            p.iteration,
            num(p.learning_rate),
            num(p.loss),
            num(p.smoothed_loss)
        ),
        Kind::LrRangeResult(r) => {
            let mut text = format!(
                "lr range test: {} iterations{}; suggestions: valley {}, steepest {}, minimum/10 {}",
                r.iterations,
                if r.diverged { " (stopped: loss diverged)" } else { "" },
                num(r.valley),
                num(r.steepest),
                num(r.minimum)
            );
            if let Some(chosen) = r.chosen {
                text.push_str(&format!("; training at lr {}", num(chosen)));
            }
            text
        }
        Kind::DataReport(r) => data_report_text(r),
    }
}

/// "confusion (true\predicted) no: 150 3, yes: 2 5".
fn confusion_text(m: &pb::ConfusionMatrix) -> String {
    let k = m.labels.len().max(1);
    let rows: Vec<String> = m
        .labels
        .iter()
        .zip(m.counts.chunks(k))
        .map(|(label, row)| {
            let counts: Vec<String> = row.iter().map(u64::to_string).collect();
            format!("{label}: {}", counts.join(" "))
        })
        .collect();
    format!("confusion (true\\predicted) {}", rows.join(", "))
}

/// "data: 1000 rows read, 3 dropped (missing target); filled: age 12 cells
/// with median 41, city 5 cells with own category".
fn data_report_text(r: &pb::DataReport) -> String {
    let mut dropped: Vec<String> = Vec::new();
    if r.rows_dropped_missing_target > 0 {
        dropped.push(format!("{} missing target", r.rows_dropped_missing_target));
    }
    for c in &r.rows_dropped_by_column {
        dropped.push(format!("{} missing {}", c.count, c.column));
    }
    let mut text = format!("data: {} rows read", r.rows_read);
    if !dropped.is_empty() {
        text.push_str(&format!(", dropped {}", dropped.join(", ")));
    }
    if !r.filled.is_empty() {
        let filled: Vec<String> = r
            .filled
            .iter()
            .map(|f| {
                let value = match f.strategy.as_str() {
                    "own_category" => "its own category".to_string(),
                    _ => match f.value.parse::<f64>() {
                        Ok(v) => format!("{} {}", f.strategy, num(v)),
                        Err(_) => format!("{} {}", f.strategy, f.value),
                    },
                };
                let indicator = if f.indicator { " (+ indicator)" } else { "" };
                format!("{} {} cells with {value}{indicator}", f.column, f.cells)
            })
            .collect();
        text.push_str(&format!("; filled: {}", filled.join(", ")));
    }
    text
}

fn value_text(v: &Option<prost_types::Value>) -> String {
    use prost_types::value::Kind;
    match v.as_ref().and_then(|v| v.kind.as_ref()) {
        Some(Kind::NumberValue(x)) if x.fract() == 0.0 && x.abs() < 1e15 => {
            format!("{}", *x as i64)
        }
        Some(Kind::NumberValue(x)) => format!("{x}"),
        Some(Kind::StringValue(s)) => s.clone(),
        Some(Kind::BoolValue(b)) => b.to_string(),
        _ => "-".into(),
    }
}

/// The last path segment, for a column header: `learning_rate`,
/// `hidden_layers[0].units` keeps its index.
fn short_path(path: &str) -> String {
    let parts: Vec<&str> = path.split('.').collect();
    match parts.as_slice() {
        [.., parent, last] if parent.contains('[') => format!("{parent}.{last}"),
        [.., last] => last.to_string(),
        [] => path.to_string(),
    }
}

/// A sweep's state and its leaderboard, best first.
pub fn sweep_summary(sweep: &pb::Sweep) -> String {
    let state = sweep.state().as_str_name();
    let mut text = format!(
        "sweep {}  {}  model {}  {} {} ({} trials)\n",
        sweep.id,
        state.strip_prefix("SWEEP_STATE_").unwrap_or(state),
        sweep.model_name,
        match sweep.goal() {
            pb::Goal::Maximize => "maximize",
            _ => "minimize",
        },
        sweep.metric,
        sweep.total_trials,
    );
    if !sweep.message.is_empty() {
        text.push_str(&sweep.message);
        text.push('\n');
    }
    let paths: Vec<String> = sweep
        .trials
        .first()
        .map(|t| t.parameters.iter().map(|p| p.path.clone()).collect())
        .unwrap_or_default();
    let mut header: Vec<String> = vec!["RANK".into(), "TRIAL".into(), "JOB".into(), "STATE".into()];
    header.extend(paths.iter().map(|p| short_path(p)));
    header.extend([sweep.metric.to_uppercase(), "BEST".into(), "EPOCHS".into()]);
    let rows: Vec<Vec<String>> = sweep
        .trials
        .iter()
        .map(|t| {
            let mut row = vec![
                if t.rank == 0 {
                    "-".into()
                } else {
                    t.rank.to_string()
                },
                t.number.to_string(),
                if t.job_id.is_empty() {
                    "-".into()
                } else {
                    t.job_id.clone()
                },
                if t.pruned {
                    "PRUNED".into()
                } else {
                    state_name(t.state()).to_string()
                },
            ];
            row.extend(t.parameters.iter().map(|p| value_text(&p.value)));
            row.push(t.best_value.map(num).unwrap_or_else(|| "-".into()));
            row.push(
                t.best
                    .as_ref()
                    .map(|b| b.epoch.to_string())
                    .unwrap_or_else(|| "-".into()),
            );
            row.push(t.epochs_completed.to_string());
            row
        })
        .collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    text.push_str(&table(&header, &rows));
    text
}

/// One line per sweep event worth a line while following.
pub fn sweep_event_text(kind: &pb::sweep_event::Kind) -> Option<String> {
    use pb::sweep_event::Kind;
    let params = |t: &pb::Trial| {
        t.parameters
            .iter()
            .map(|p| format!("{}={}", short_path(&p.path), value_text(&p.value)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    Some(match kind {
        Kind::TrialStarted(t) => {
            format!("trial {} started: {} ({})", t.number, t.job_id, params(t))
        }
        Kind::TrialPruned(p) => format!("trial {} {}", p.trial, p.reason),
        Kind::TrialFinished(t) => format!(
            "trial {} {}: best {} after {} epochs",
            t.number,
            if t.pruned {
                "PRUNED"
            } else {
                state_name(t.state())
            },
            t.best_value.map(num).unwrap_or_else(|| "-".into()),
            t.epochs_completed
        ),
        Kind::SweepFinished(s) => format!("sweep ended: {}", s.message),
        Kind::TrialEpoch(_) | Kind::Leaderboard(_) => return None,
    })
}

/// Jobs side by side: the differing spec fields, the best metrics, and the
/// validation loss per epoch.
pub fn comparison(c: &pb::CompareJobsResponse) -> String {
    let mut header: Vec<String> = vec!["".into()];
    header.extend(c.jobs.iter().map(|j| j.id.clone()));
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut row = |name: String, cells: Vec<String>| {
        let mut r = vec![name];
        r.extend(cells);
        rows.push(r);
    };
    row(
        "model".into(),
        c.jobs.iter().map(|j| j.model_name.clone()).collect(),
    );
    row(
        "state".into(),
        c.jobs
            .iter()
            .map(|j| state_name(j.state()).to_string())
            .collect(),
    );
    for d in &c.differences {
        row(
            d.path.clone(),
            d.values
                .iter()
                .map(|v| {
                    if v.is_empty() {
                        "(default)".into()
                    } else {
                        v.clone()
                    }
                })
                .collect(),
        );
    }
    row(
        "best epoch".into(),
        c.jobs
            .iter()
            .map(|j| j.best.as_ref().map_or("-".into(), |b| b.epoch.to_string()))
            .collect(),
    );
    row(
        "best val_loss".into(),
        c.jobs
            .iter()
            .map(|j| j.best.as_ref().map_or("-".into(), |b| num(b.val_loss)))
            .collect(),
    );
    let metric_names: Vec<&str> = c
        .jobs
        .iter()
        .filter_map(|j| j.best.as_ref())
        .flat_map(|b| epoch_metrics(b).into_iter().map(|(n, _)| n))
        .fold(Vec::new(), |mut names, n| {
            if !names.contains(&n) {
                names.push(n);
            }
            names
        });
    for name in metric_names {
        row(
            format!("best {name}"),
            c.jobs
                .iter()
                .map(|j| {
                    j.best
                        .as_ref()
                        .and_then(|b| epoch_metrics(b).into_iter().find(|(n, _)| *n == name))
                        .map_or("-".into(), |(_, v)| num(v))
                })
                .collect(),
        );
    }
    let longest = c.curves.iter().map(|k| k.epochs.len()).max().unwrap_or(0);
    for e in 0..longest {
        row(
            format!("epoch {} val_loss", e + 1),
            c.curves
                .iter()
                .map(|k| k.epochs.get(e).map_or("".into(), |m| num(m.val_loss)))
                .collect(),
        );
    }
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    table(&header, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_columns() {
        let t = table(
            &["A", "BB"],
            &[vec!["xxx".into(), "y".into()], vec!["z".into(), "".into()]],
        );
        assert_eq!(t, "A    BB\nxxx  y\nz\n");
    }

    #[test]
    fn the_bar_shortens_metric_names() {
        let m = pb::EpochMetrics {
            train_loss: 0.5,
            val_loss: 0.25,
            val_accuracy: Some(0.75),
            val_roc_auc: Some(0.875),
            val_balanced_accuracy: Some(0.5),
            ..Default::default()
        };
        assert_eq!(
            epoch_bar_text(&m),
            "loss 0.5000 val 0.2500 acc 0.7500 roc_auc 0.8750 bal_acc 0.5000"
        );
    }

    #[test]
    fn flagged_gradients_get_a_warning_line() {
        let mut m = pb::EpochMetrics {
            epoch: 3,
            gradient_health: Some(pb::GradientHealth::default()),
            ..Default::default()
        };
        assert_eq!(gradient_warning(&m), None);
        let health = m.gradient_health.as_mut().unwrap();
        health.vanishing = true;
        health.detail = "hidden1: gradient norm 1e-9".into();
        assert_eq!(
            gradient_warning(&m).unwrap(),
            "warning: epoch 3: vanishing gradients: hidden1: gradient norm 1e-9"
        );
    }
}
