//! The leaderboard: trials ranked by their best value of the sweep's metric,
//! each trial's best kept as its epochs arrive, and the sweep's best trial.

use kiln::v1 as pb;

use crate::policy::Goal;

/// The indices of the trials with a value (not NaN), best first, ties by
/// number; the others are unranked.
pub fn ranking(trials: &[pb::Trial], goal: Goal) -> Vec<usize> {
    let mut ranked: Vec<usize> = (0..trials.len())
        .filter(|&i| trials[i].best_value.is_some_and(|v| !v.is_nan()))
        .collect();
    ranked.sort_by(|&a, &b| {
        goal.order(trials[a].best_value.unwrap(), trials[b].best_value.unwrap())
            .then(trials[a].number.cmp(&trials[b].number))
    });
    ranked
}

/// The leaderboard: the ranked trials with their 1-based rank, then the
/// unranked ones (rank 0) in their given order.
pub fn leaderboard(trials: &[pb::Trial], goal: Goal) -> Vec<pb::Trial> {
    let ranking = ranking(trials, goal);
    let mut out: Vec<pb::Trial> = ranking
        .iter()
        .enumerate()
        .map(|(place, &i)| pb::Trial {
            rank: place as u32 + 1,
            ..trials[i].clone()
        })
        .collect();
    out.extend(
        (0..trials.len())
            .filter(|i| !ranking.contains(i))
            .map(|i| pb::Trial {
                rank: 0,
                ..trials[i].clone()
            }),
    );
    out
}

/// The sweep's best trial: the highest on the leaderboard that succeeded
/// (a pruned or failed trial's model is never served).
pub fn best_trial(trials: &[pb::Trial], goal: Goal) -> Option<pb::Trial> {
    leaderboard(trials, goal)
        .into_iter()
        .find(|t| t.state() == pb::JobState::Succeeded)
}

/// Records an epoch of `trial` whose metric is `value` (NaN when the epoch
/// did not report it): its epochs completed, and its best value and metrics
/// when `value` beats the best so far.
pub fn record_epoch(trial: &mut pb::Trial, goal: Goal, m: &pb::EpochMetrics, value: f64) {
    trial.epochs_completed = m.epoch;
    let better = match trial.best_value {
        None => !value.is_nan(),
        Some(best) => goal.better(value, best),
    };
    if better {
        trial.best_value = Some(value);
        trial.best = Some(m.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(number: u32, best_value: Option<f64>, state: pb::JobState) -> pb::Trial {
        pb::Trial {
            number,
            best_value,
            state: state as i32,
            ..Default::default()
        }
    }

    fn numbers_and_ranks(board: &[pb::Trial]) -> Vec<(u32, u32)> {
        board.iter().map(|t| (t.number, t.rank)).collect()
    }

    #[test]
    fn ranks_by_value_ties_by_number_unranked_last_in_order() {
        use pb::JobState::*;
        let trials = [
            trial(1, None, Running),
            trial(2, Some(0.5), Succeeded),
            trial(3, Some(0.2), Running),
            trial(4, Some(f64::NAN), Failed),
            trial(5, Some(0.5), Succeeded),
            trial(6, Some(0.1), Cancelled),
            trial(7, None, Unspecified),
        ];
        assert_eq!(ranking(&trials, Goal::Minimize), [5, 2, 1, 4]);
        assert_eq!(
            numbers_and_ranks(&leaderboard(&trials, Goal::Minimize)),
            [(6, 1), (3, 2), (2, 3), (5, 4), (1, 0), (4, 0), (7, 0)]
        );
        // Maximizing reverses the values; the tie still goes to the lower
        // number, and the unranked keep their place at the end.
        assert_eq!(
            numbers_and_ranks(&leaderboard(&trials, Goal::Maximize)),
            [(2, 1), (5, 2), (3, 3), (6, 4), (1, 0), (4, 0), (7, 0)]
        );
        // The leaderboard keeps every field of the trial.
        assert_eq!(leaderboard(&trials, Goal::Minimize)[0].state(), Cancelled);
    }

    #[test]
    fn the_best_trial_is_the_highest_that_succeeded() {
        use pb::JobState::*;
        let trials = [
            trial(1, Some(0.9), Succeeded),
            trial(2, Some(0.1), Cancelled), // pruned: better but not served
            trial(3, Some(0.4), Succeeded),
            trial(4, None, Succeeded), // no value: ranks after every value
        ];
        assert_eq!(best_trial(&trials, Goal::Minimize).unwrap().number, 3);
        assert_eq!(best_trial(&trials, Goal::Maximize).unwrap().number, 1);
        assert_eq!(best_trial(&trials[3..], Goal::Minimize).unwrap().number, 4);
        assert_eq!(best_trial(&trials[1..2], Goal::Minimize), None);
        assert_eq!(best_trial(&[], Goal::Minimize), None);
    }

    #[test]
    fn an_epoch_replaces_the_best_only_when_better() {
        let epoch = |epoch, val_loss| pb::EpochMetrics {
            epoch,
            val_loss,
            ..Default::default()
        };
        let mut t = trial(1, None, pb::JobState::Running);
        // NaN first: epochs counted, no best yet.
        record_epoch(&mut t, Goal::Minimize, &epoch(1, 9.0), f64::NAN);
        assert_eq!((t.epochs_completed, t.best_value), (1, None));
        record_epoch(&mut t, Goal::Minimize, &epoch(2, 0.5), 0.5);
        assert_eq!((t.epochs_completed, t.best_value), (2, Some(0.5)));
        // Worse, equal and NaN leave the best (and its epoch) alone.
        for (e, v) in [(3, 0.7), (4, 0.5), (5, f64::NAN)] {
            record_epoch(&mut t, Goal::Minimize, &epoch(e, v), v);
            assert_eq!(t.epochs_completed, e);
            assert_eq!(t.best_value, Some(0.5));
            assert_eq!(t.best.as_ref().unwrap().epoch, 2);
        }
        record_epoch(&mut t, Goal::Minimize, &epoch(6, 0.25), 0.25);
        assert_eq!(t.best_value, Some(0.25));
        assert_eq!(t.best.as_ref().unwrap().epoch, 6);
    }
}
