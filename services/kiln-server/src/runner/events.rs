//! The trainer's reports as the job's recorded events (kiln.v1 protos), and
//! failures (errors, panics, libtorch's messages) as one readable line.

use kiln::v1 as pb;
use kiln_train::{EpochReport, GradientHealth, LrRangeReport, TrainEvent};
use pb::job_event::Kind;

pub fn failed(reason: pb::StopReason, message: String) -> Kind {
    Kind::Failed(failed_message(reason, message))
}

pub(super) fn failed_message(reason: pb::StopReason, message: String) -> pb::Failed {
    pb::Failed {
        reason: reason as i32,
        message,
        state: pb::JobState::Failed as i32,
        ..Default::default()
    }
}

/// A libtorch error as one readable line: tch's `Torch("...")` wrapper and
/// the C++ stack frames after the first line dropped.
pub(super) fn libtorch_summary(message: &str) -> &str {
    let inner = message.split_once("Torch(\"").map_or(message, |(_, m)| m);
    let end = [inner.find("\\n"), inner.find('\n'), inner.find("\")")]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(inner.len());
    inner[..end].trim()
}

pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// The event to record; `None` for health, which travels inside its epoch's.
pub(super) fn event_kind(event: TrainEvent) -> Option<Kind> {
    Some(match event {
        TrainEvent::Epoch(report) => Kind::Epoch(epoch_metrics(&report)),
        TrainEvent::Health(_) => return None,
        TrainEvent::LrPoint(p) => Kind::LrRangePoint(pb::LrRangePoint {
            iteration: p.iteration,
            learning_rate: p.learning_rate,
            loss: p.loss,
            smoothed_loss: p.smoothed_loss,
        }),
        TrainEvent::LrRange(r) => Kind::LrRangeResult(lr_range_result(&r)),
        TrainEvent::EarlyStopped {
            epoch,
            best_epoch,
            monitor,
            best_value,
        } => Kind::EarlyStopped(pb::EarlyStopped {
            epoch,
            best_epoch,
            monitor: monitor.name().into(),
            best_value,
        }),
    })
}

pub fn epoch_metrics(r: &EpochReport) -> pb::EpochMetrics {
    pb::EpochMetrics {
        epoch: r.epoch,
        train_loss: r.train_loss,
        val_loss: r.val_loss,
        val_accuracy: r.val_accuracy,
        val_log_loss: r.val_log_loss,
        val_roc_auc: r.val_roc_auc,
        val_pr_auc: r.val_pr_auc,
        val_f1: r.val_f1,
        val_balanced_accuracy: r.val_balanced_accuracy,
        val_mae: r.val_mae,
        val_rmse: r.val_rmse,
        val_r2: r.val_r2,
        learning_rate: r.learning_rate,
        epoch_seconds: r.epoch_seconds,
        samples_per_second: r.samples_per_second,
        improved: r.improved,
        momentum: r.momentum,
        gradient_health: None,
    }
}

pub(super) fn lr_range_result(r: &LrRangeReport) -> pb::LrRangeResult {
    pb::LrRangeResult {
        valley: r.suggestions.valley,
        steepest: r.suggestions.steepest,
        minimum: r.suggestions.minimum,
        chosen: r.chosen,
        iterations: r.iterations,
        diverged: r.diverged,
    }
}

pub(super) fn gradient_health(h: &GradientHealth) -> pb::GradientHealth {
    pb::GradientHealth {
        layers: h
            .layers
            .iter()
            .map(|l| pb::LayerHealth {
                layer: l.layer.clone(),
                grad_norm: l.grad_norm,
                weight_norm: l.weight_norm,
                update_ratio: l.update_ratio,
                dead_fraction: l.dead_fraction,
            })
            .collect(),
        vanishing: h.vanishing,
        exploding: h.exploding,
        detail: h.detail.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtorch_errors_become_one_line() {
        let panic = "called `Result::unwrap()` on an `Err` value: Torch(\"[enforce fail at \
                     alloc_cpu.cpp:124] err == 0. DefaultCPUAllocator: can't allocate memory: \
                     you tried to allocate 16 bytes.\\nframe #0: <unknown function>\")";
        assert_eq!(
            libtorch_summary(panic),
            "[enforce fail at alloc_cpu.cpp:124] err == 0. DefaultCPUAllocator: can't \
             allocate memory: you tried to allocate 16 bytes."
        );
        assert_eq!(libtorch_summary("index out of range"), "index out of range");
    }
}
