//! What a sweep's controller takes over after a restart: the trials its
//! record shows started are followed again (their jobs come back on their
//! own), and a trial whose job was submitted in the instant before the kill,
//! before its job id was saved, is adopted rather than run twice.

use std::collections::HashMap;

use kiln::v1 as pb;

/// Whether a sweep's controller starts fresh or takes over after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// A new sweep: no trial has a job yet.
    No,
    /// A stored sweep that had not ended.
    AfterRestart,
}

/// The controller's starting point, from the sweep's record and its jobs.
#[derive(Debug, Clone, Default)]
pub struct Adoption {
    /// Trials the record shows started, `(index, job id)` in index order,
    /// to follow again from their first event.
    pub follow: Vec<(usize, String)>,
    /// The first trial index not started.
    pub next: usize,
    /// Jobs of the sweep whose trial the record shows unstarted, by trial
    /// number.
    unrecorded: HashMap<u32, pb::Job>,
}

impl Adoption {
    /// The starting point of a controller over `trials` (the record's, in
    /// number order). `sweep_jobs` lists the sweep's jobs, newest first; it
    /// is asked only after a restart, since a fresh sweep has none.
    pub fn new(
        resume: Resume,
        trials: &[pb::Trial],
        sweep_jobs: impl FnOnce() -> Vec<pb::Job>,
    ) -> Adoption {
        let unrecorded = match resume {
            Resume::AfterRestart => submitted_trials(sweep_jobs()),
            Resume::No => HashMap::new(),
        };
        // Trials start in number order, so the started ones are a prefix:
        // those with a job, or with an end but no job (their submission
        // failed; they are over and not followed).
        let started: Vec<(usize, &pb::Trial)> = trials
            .iter()
            .enumerate()
            .take_while(|(_, t)| !t.job_id.is_empty() || t.state() != pb::JobState::Unspecified)
            .collect();
        let follow = started
            .iter()
            .filter(|(_, t)| !t.job_id.is_empty())
            .map(|(i, t)| (*i, t.job_id.clone()))
            .collect();
        Adoption {
            follow,
            next: started.len(),
            unrecorded,
        }
    }

    /// The job already submitted for trial `number`, if any: the controller
    /// adopts it instead of submitting another. Each is handed out once.
    pub fn take(&mut self, number: u32) -> Option<pb::Job> {
        self.unrecorded.remove(&number)
    }
}

/// The jobs in `jobs` (newest first) by the trial number of their `trial`
/// label; for a trial with several, the newest.
pub fn submitted_trials(jobs: Vec<pb::Job>) -> HashMap<u32, pb::Job> {
    let mut by_trial = HashMap::new();
    for job in jobs {
        let trial = job.spec.as_ref().and_then(|s| s.labels.get("trial"));
        if let Some(number) = trial.and_then(|t| t.parse().ok()) {
            by_trial.entry(number).or_insert(job);
        }
    }
    by_trial
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(number: u32, job_id: &str, state: pb::JobState) -> pb::Trial {
        pb::Trial {
            number,
            job_id: job_id.into(),
            state: state as i32,
            ..Default::default()
        }
    }

    fn job(id: &str, trial: Option<&str>) -> pb::Job {
        pb::Job {
            id: id.into(),
            spec: Some(pb::JobSpec {
                labels: trial
                    .map(|t| [("trial".to_string(), t.to_string())].into())
                    .unwrap_or_default(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn unstarted(n: u32) -> Vec<pb::Trial> {
        (1..=n)
            .map(|i| trial(i, "", pb::JobState::Unspecified))
            .collect()
    }

    #[test]
    fn a_fresh_sweep_follows_nothing_and_never_lists_jobs() {
        let mut a = Adoption::new(Resume::No, &unstarted(3), || {
            panic!("a fresh sweep has no jobs to look up")
        });
        assert_eq!((a.follow.clone(), a.next), (vec![], 0));
        assert_eq!(a.take(1), None);
    }

    #[test]
    fn after_a_restart_started_trials_are_followed_and_the_rest_start() {
        use pb::JobState::*;
        let trials = [
            trial(1, "job-a", Succeeded), // ended: followed again all the same
            trial(2, "", Failed),         // its submission failed: over
            trial(3, "job-c", Running),
            trial(4, "", Unspecified), // the first not started
            trial(5, "job-e", Queued), // after a gap: not part of the prefix
        ];
        let mut a = Adoption::new(Resume::AfterRestart, &trials, Vec::new);
        assert_eq!(
            a.follow,
            [(0, "job-a".to_string()), (2, "job-c".to_string())]
        );
        assert_eq!(a.next, 3);
        assert_eq!(a.take(4), None); // no job: submitted afresh
    }

    #[test]
    fn a_job_submitted_before_its_id_was_saved_is_adopted_once() {
        use pb::JobState::*;
        let mut trials = unstarted(4);
        trials[0] = trial(1, "job-1", Succeeded);
        // Newest first, as the store lists them.
        let jobs = vec![
            job("job-2-again", Some("2")),
            job("job-2", Some("2")),
            job("job-1", Some("1")),
            job("no-label", None),
            job("bad-label", Some("two")),
        ];
        let mut a = Adoption::new(Resume::AfterRestart, &trials, || jobs);
        assert_eq!((a.follow.len(), a.next), (1, 1));
        assert_eq!(a.take(2).unwrap().id, "job-2-again");
        assert_eq!(a.take(2), None, "handed out once");
        assert_eq!(a.take(3), None);
        // Without a restart the same jobs would be ignored.
        let mut fresh = Adoption::new(Resume::No, &unstarted(4), || vec![job("job-2", Some("2"))]);
        assert_eq!(fresh.take(2), None);
    }

    #[test]
    fn submitted_trials_keeps_the_newest_job_per_trial() {
        let by_trial = submitted_trials(vec![
            job("new", Some("7")),
            job("old", Some("7")),
            job("x", Some("")),
            job("one", Some("1")),
        ]);
        let mut got: Vec<(u32, String)> = by_trial.into_iter().map(|(n, j)| (n, j.id)).collect();
        got.sort();
        assert_eq!(got, [(1, "one".to_string()), (7, "new".to_string())]);
    }
}
