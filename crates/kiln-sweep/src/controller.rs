//! A sweep controller's decisions, fed by its trials' events: which trial
//! starts next (and whether by adopting a job from before a restart), which
//! trials are running, which epochs stop a trial, and when the leaderboard
//! moved. The server does the work: submitting, following, cancelling and
//! recording.

use std::collections::HashMap;

use kiln::v1 as pb;

use crate::adoption::Adoption;
use crate::plan::Plan;
use crate::pruning::Pruner;

/// How a trial starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// Its job was submitted before a restart, unrecorded: follow it.
    Adopt(Box<pb::Job>),
    /// Submit its job.
    Submit,
}

/// One sweep's controller state.
#[derive(Debug, Clone)]
pub struct Controller {
    total: usize,
    max_concurrent: usize,
    /// The next trial index to start.
    next: usize,
    /// Trial index -> job id, for the unfinished trials.
    running: HashMap<usize, String>,
    /// Trials taken over after a restart rather than submitted by this run.
    adopted: Vec<bool>,
    adoption: Adoption,
    pruner: Pruner,
    last_ranking: Vec<usize>,
}

impl Controller {
    /// The controller of `plan`'s sweep, resuming where `adoption` says: the
    /// trials it follows again are running (and adopted) from the start.
    pub fn new(plan: &Plan, sweep_id: &str, mut adoption: Adoption) -> Controller {
        let total = plan.points.len();
        let mut controller = Controller {
            total,
            max_concurrent: plan.max_concurrent,
            next: adoption.next,
            running: HashMap::new(),
            adopted: vec![false; total],
            adoption: Adoption::default(),
            pruner: Pruner::new(plan.policy, plan.goal, total),
            last_ranking: Vec::new(),
        };
        for (index, job_id) in std::mem::take(&mut adoption.follow) {
            controller.started(index, job_id, plan.trial_epochs(index, sweep_id), true);
        }
        controller.adoption = adoption;
        controller
    }

    /// The next trial to start, and how; `None` while `cancelled`, with
    /// `max_concurrent` trials unfinished, or with every trial started.
    pub fn next_start(&mut self, cancelled: bool) -> Option<(usize, Start)> {
        if cancelled || self.running.len() >= self.max_concurrent || self.next >= self.total {
            return None;
        }
        let index = self.next;
        self.next += 1;
        let start = match self.adoption.take(index as u32 + 1) {
            Some(job) => Start::Adopt(Box::new(job)),
            None => Start::Submit,
        };
        Some((index, start))
    }

    /// Trial `index` runs as `job_id` for `epochs` epochs; `adopted`: taken
    /// over after a restart, so it may have ended already.
    pub fn started(&mut self, index: usize, job_id: String, epochs: u32, adopted: bool) {
        self.pruner.set_budget(index, epochs);
        self.adopted[index] |= adopted;
        self.running.insert(index, job_id);
    }

    /// The running trials, `(index, job id)` in index order.
    pub fn running(&self) -> Vec<(usize, String)> {
        let mut running: Vec<_> = self
            .running
            .iter()
            .map(|(&i, job)| (i, job.clone()))
            .collect();
        running.sort();
        running
    }

    /// Trial `index`'s job while it runs; events of other trials are stale.
    pub fn job(&self, index: usize) -> Option<&str> {
        self.running.get(&index).map(String::as_str)
    }

    /// Trial `index` reported `value` (NaN: not reported) at `epoch`: the
    /// reason it stops, if it does. `still_running` is asked only for an
    /// adopted trial, which may be replaying the epochs of a job that ended
    /// long ago: only a trial still going is judged.
    pub fn on_epoch(
        &mut self,
        index: usize,
        epoch: u32,
        value: f64,
        still_running: impl FnOnce() -> bool,
    ) -> Option<String> {
        let judge = !self.pruner.is_pruned(index) && (!self.adopted[index] || still_running());
        self.pruner.on_epoch(index, epoch, value, judge)
    }

    /// Trial `index`'s job ended.
    pub fn ended(&mut self, index: usize) {
        self.running.remove(&index);
    }

    /// Whether no trial runs (with none left to start, the sweep is over).
    pub fn is_idle(&self) -> bool {
        self.running.is_empty()
    }

    /// Whether `ranking` differs from the last one seen (then it is kept):
    /// the leaderboard is published only when it moves.
    pub fn leaderboard_moved(&mut self, ranking: Vec<usize>) -> bool {
        if ranking == self.last_ranking {
            return false;
        }
        self.last_ranking = ranking;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adoption::Resume;
    use crate::plan::plan;
    use crate::testing::{self, values};
    use pb::JobState::*;

    /// A 4-trial grid (epochs 3, 8, 3, 8), at most 2 at once, ASHA with
    /// eta 2 (rungs at epochs 1 and 2, and 4 for 8 epochs).
    fn request() -> pb::SubmitSweepRequest {
        pb::SubmitSweepRequest {
            max_concurrent_trials: 2,
            early_termination: Some(pb::EarlyTermination {
                policy: Some(pb::early_termination::Policy::Asha(pb::Asha {
                    min_epochs: 1,
                    reduction_factor: 2,
                })),
            }),
            ..testing::request(&[
                ("training.epochs", values(&[3.0, 8.0])),
                ("training.batch_size", values(&[4.0, 8.0])),
            ])
        }
    }

    fn trial(number: u32, job_id: &str, state: pb::JobState) -> pb::Trial {
        pb::Trial {
            number,
            job_id: job_id.into(),
            state: state as i32,
            ..Default::default()
        }
    }

    #[test]
    fn trials_start_in_order_under_the_concurrency_cap() {
        let plan = plan(&request(), "s").unwrap();
        let adoption = Adoption::new(Resume::No, &plan.trials(), Vec::new);
        let mut c = Controller::new(&plan, "s", adoption);
        assert!(c.is_idle());
        assert_eq!(c.next_start(false), Some((0, Start::Submit)));
        c.started(0, "j0".into(), 3, false);
        // A trial whose submission failed never runs: the next one starts.
        assert_eq!(c.next_start(false), Some((1, Start::Submit)));
        assert_eq!(c.next_start(false), Some((2, Start::Submit)));
        c.started(2, "j2".into(), 8, false);
        assert_eq!(c.next_start(false), None, "two running");
        assert_eq!(c.job(0), Some("j0"));
        assert_eq!(c.job(1), None);
        c.ended(0);
        assert_eq!(c.job(0), None, "its late events are ignored");
        assert_eq!(c.next_start(true), None, "cancelled");
        assert_eq!(c.next_start(false), Some((3, Start::Submit)));
        c.started(3, "j3".into(), 8, false);
        c.ended(2);
        assert_eq!(c.next_start(false), None, "every trial started");
        assert!(!c.is_idle());
        c.ended(3);
        assert!(c.is_idle());
    }

    #[test]
    fn after_a_restart_started_trials_run_and_an_unrecorded_job_is_adopted() {
        let plan = plan(&request(), "s").unwrap();
        let mut trials = plan.trials();
        trials[0] = trial(1, "j1", Succeeded);
        let unrecorded = pb::Job {
            id: "j2".into(),
            state: Running as i32,
            spec: Some(pb::JobSpec {
                labels: [("trial".to_string(), "2".to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let jobs = vec![unrecorded.clone()];
        let adoption = Adoption::new(Resume::AfterRestart, &trials, || jobs);
        let mut c = Controller::new(&plan, "s", adoption);
        assert_eq!(c.running(), [(0, "j1".to_string())]);
        assert_eq!(
            c.next_start(false),
            Some((1, Start::Adopt(Box::new(unrecorded))))
        );
        c.started(1, "j2".into(), plan.trial_epochs(1, "s"), true);
        assert_eq!(c.next_start(false), None);
        c.ended(0);
        assert_eq!(c.next_start(false), Some((2, Start::Submit)));
    }

    #[test]
    fn only_adopted_trials_still_running_are_judged() {
        let plan = plan(&request(), "s").unwrap();
        // Grid order: batch_size slowest, then epochs: 3, 8, 3, 8.
        assert_eq!(
            (0..4)
                .map(|i| plan.trial_epochs(i, "s"))
                .collect::<Vec<_>>(),
            [3, 8, 3, 8]
        );
        let mut trials = plan.trials();
        trials[0] = trial(1, "j1", Running);
        trials[1] = trial(2, "j2", Succeeded);
        let adoption = Adoption::new(Resume::AfterRestart, &trials, Vec::new);
        let mut c = Controller::new(&plan, "s", adoption);
        // Trial 2 replays its epochs after having ended: never judged, but
        // its rung values are not recorded either.
        assert_eq!(c.on_epoch(1, 1, 0.1, || false), None);
        // Trial 1 is still going: judged, first at rung 0, promoted.
        assert_eq!(c.on_epoch(0, 1, 0.5, || true), None);
        c.started(2, "j3".into(), 3, false);
        // Trial 3 was submitted by this run: judged without asking. It is
        // worse than trial 1 at rung 0 (n 2, k 1).
        let stop = c.on_epoch(2, 1, 0.9, || panic!("not adopted: not asked"));
        assert_eq!(stop, Some("stopped by ASHA at epoch 1 (rung 0)".into()));
        // Stopped once: not judged (nor asked about) again.
        assert_eq!(c.on_epoch(2, 2, 9.0, || panic!("not asked")), None);
    }

    #[test]
    fn the_leaderboard_is_published_when_it_moves() {
        let plan = plan(&request(), "s").unwrap();
        let mut c = Controller::new(&plan, "s", Adoption::default());
        assert!(!c.leaderboard_moved(vec![]), "empty at first");
        assert!(c.leaderboard_moved(vec![1]));
        assert!(!c.leaderboard_moved(vec![1]));
        assert!(c.leaderboard_moved(vec![0, 1]));
        assert!(c.leaderboard_moved(vec![1, 0]));
    }
}
