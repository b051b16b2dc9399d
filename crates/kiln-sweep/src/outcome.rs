//! How a sweep ends: its end state and the message that says why.

use kiln::v1 as pb;
use kiln_core::spec::Metric;

/// Whether a sweep in `state` has ended.
pub fn is_ended(state: pb::SweepState) -> bool {
    matches!(
        state,
        pb::SweepState::Succeeded | pb::SweepState::Failed | pb::SweepState::Cancelled
    )
}

/// A sweep's end state and message. `best`: the best trial (see
/// [`crate::leaderboard::best_trial`]) and its model's registration under
/// `model_name`, the version or why it failed. A cancelled sweep stays
/// cancelled even if its best trial was served; otherwise it succeeds only
/// if that model is served.
pub fn ending(
    cancelled: bool,
    best: Option<(&pb::Trial, &Result<u32, String>)>,
    metric: Metric,
    model_name: &str,
) -> (pb::SweepState, String) {
    let (served, message) = match best {
        None => (false, "no trial succeeded".to_string()),
        Some((best, Ok(version))) => (
            true,
            format!(
                "best trial {} ({}): {} {}; served as model \"{model_name}\" version {version}",
                best.number,
                best.job_id,
                metric.name(),
                best.best_value
                    .map(crate::format_number)
                    .unwrap_or_default(),
            ),
        ),
        Some((best, Err(e))) => (
            false,
            format!(
                "best trial {} ({}), but serving it as \"{model_name}\" failed: {e}",
                best.number, best.job_id
            ),
        ),
    };
    let state = if cancelled {
        pb::SweepState::Cancelled
    } else if served {
        pb::SweepState::Succeeded
    } else {
        pb::SweepState::Failed
    };
    (state, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::SweepState::*;

    #[test]
    fn ended_states() {
        let ended: Vec<bool> = [Unspecified, Running, Succeeded, Failed, Cancelled]
            .into_iter()
            .map(is_ended)
            .collect();
        assert_eq!(ended, [false, false, true, true, true]);
    }

    #[test]
    fn end_state_and_message() {
        let best = pb::Trial {
            number: 3,
            job_id: "job-3".into(),
            best_value: Some(0.25),
            ..Default::default()
        };
        let served = Ok(2);
        let failed = Err("no artifact".to_string());
        assert_eq!(
            ending(false, Some((&best, &served)), Metric::ValLoss, "m"),
            (
                Succeeded,
                "best trial 3 (job-3): val_loss 0.25; served as model \"m\" version 2".into()
            )
        );
        assert_eq!(
            ending(false, Some((&best, &failed)), Metric::ValLoss, "m"),
            (
                Failed,
                "best trial 3 (job-3), but serving it as \"m\" failed: no artifact".into()
            )
        );
        assert_eq!(
            ending(false, None, Metric::ValLoss, "m"),
            (Failed, "no trial succeeded".into())
        );
        // Cancelled wins, whatever was served.
        assert_eq!(
            ending(true, Some((&best, &served)), Metric::ValLoss, "m").0,
            Cancelled
        );
        assert_eq!(ending(true, None, Metric::ValLoss, "m").0, Cancelled);
        // Whole values print without a fraction; no value prints nothing.
        let whole = pb::Trial {
            best_value: Some(1.0),
            ..best.clone()
        };
        let none = pb::Trial {
            best_value: None,
            ..best
        };
        assert!(ending(false, Some((&whole, &served)), Metric::ValR2, "m")
            .1
            .contains("val_r2 1;"));
        assert!(ending(false, Some((&none, &served)), Metric::ValR2, "m")
            .1
            .contains("val_r2 ;"));
    }
}
