//! A SubmitSweepRequest validated into what a sweep's controller runs: the
//! base spec, the trial points, the metric and goal, the concurrency and the
//! early-termination policy. Errors name the request field (INVALID_ARGUMENT
//! on the wire).

use kiln::v1 as pb;
use kiln_core::spec::{JobSpec, Metric};
use kiln_core::FieldError;

use crate::policy::{Asha, Goal, MedianStopping};
use crate::pruning::Policy;
use crate::space::{Rng, SearchSpace, TrialParams};

/// RANDOM's trial budget when max_trials is unset.
pub const DEFAULT_RANDOM_TRIALS: usize = 10;

/// What the controller runs: everything validated.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The spec every trial starts from, as submitted.
    pub base: pb::JobSpec,
    /// Trial `i + 1`'s parameter values.
    pub points: Vec<TrialParams>,
    /// Where the best trial's model is served.
    pub model_name: String,
    /// What trials are ranked and judged by.
    pub metric: Metric,
    /// Which way `metric` is better (GOAL_AUTO resolved).
    pub goal: Goal,
    /// Trials unfinished at once, at most (at least 1).
    pub max_concurrent: usize,
    /// The early-termination policy, defaults filled in.
    pub policy: Policy,
}

/// Validates a request into a plan, and its trial specs up front: every grid
/// point, or the first random sample (the rest are checked as they start, so
/// a bad random draw fails one trial, not the sweep).
pub fn plan(request: &pb::SubmitSweepRequest, sweep_id: &str) -> Result<Plan, FieldError> {
    let base = request
        .base
        .clone()
        .ok_or_else(|| FieldError::new("base", "required"))?;
    let validated_base = JobSpec::from_proto(&base).map_err(|e| {
        let field = match e.field.strip_prefix("spec") {
            Some(rest) => format!("base{rest}"),
            None => e.field.clone(),
        };
        FieldError::new(field, e.message)
    })?;
    let metric = metric(&request.metric, validated_base.task)?;
    let goal = match pb::Goal::try_from(request.goal) {
        Ok(pb::Goal::Auto) if metric.higher_is_better() => Goal::Maximize,
        Ok(pb::Goal::Auto) | Ok(pb::Goal::Minimize) => Goal::Minimize,
        Ok(pb::Goal::Maximize) => Goal::Maximize,
        Err(_) => return Err(FieldError::new("goal", "unknown value")),
    };
    let model_name = if !request.model_name.is_empty() {
        kiln_core::spec::check_model_name("model_name", &request.model_name)?;
        request.model_name.clone()
    } else if !base.model_name.is_empty() {
        base.model_name.clone()
    } else {
        sweep_id.to_string()
    };
    let space = SearchSpace::from_proto(&request.search_space)?;
    let method = pb::SearchMethod::try_from(request.method)
        .map_err(|_| FieldError::new("method", "unknown value"))?;
    let points = points(&space, method, request)?;
    let check = match method {
        pb::SearchMethod::Grid => points.len(),
        pb::SearchMethod::Random => 1,
    };
    for (i, params) in points.iter().take(check).enumerate() {
        crate::trial_spec(&base, params, i as u32 + 1, sweep_id, &model_name)?;
    }
    let policy = policy(request.early_termination.as_ref())?;
    Ok(Plan {
        base,
        points,
        model_name,
        metric,
        goal,
        max_concurrent: request.max_concurrent_trials.max(1) as usize,
        policy,
    })
}

/// The requested metric (val_loss when unset), if the task reports it.
fn metric(name: &str, task: kiln_core::spec::Task) -> Result<Metric, FieldError> {
    if name.is_empty() {
        return Ok(Metric::ValLoss);
    }
    Metric::ALL
        .iter()
        .copied()
        .find(|m| m.name() == name && m.applies_to(task))
        .ok_or_else(|| {
            let names: Vec<_> = Metric::ALL
                .iter()
                .filter(|m| m.applies_to(task))
                .map(|m| m.name())
                .collect();
            FieldError::new(
                "metric",
                format!(
                    "\"{name}\" is not a metric of this task; one of {}",
                    names.join(", ")
                ),
            )
        })
}

/// The trial points: the grid (cut to max_trials), or max_trials random
/// samples from the request's seed.
fn points(
    space: &SearchSpace,
    method: pb::SearchMethod,
    request: &pb::SubmitSweepRequest,
) -> Result<Vec<TrialParams>, FieldError> {
    Ok(match method {
        pb::SearchMethod::Grid => {
            let mut points = space.grid()?;
            if request.max_trials > 0 {
                points.truncate(request.max_trials as usize);
            }
            points
        }
        pb::SearchMethod::Random => {
            let n = match request.max_trials {
                0 => DEFAULT_RANDOM_TRIALS,
                n => n as usize,
            };
            let mut rng = Rng::new(request.seed);
            (0..n).map(|_| space.sample(&mut rng)).collect()
        }
    })
}

/// The early-termination policy with 0 fields replaced by the defaults.
fn policy(early_termination: Option<&pb::EarlyTermination>) -> Result<Policy, FieldError> {
    let or = |value: u32, default: u32| if value == 0 { default } else { value };
    Ok(match early_termination.and_then(|e| e.policy.as_ref()) {
        None => Policy::None,
        Some(pb::early_termination::Policy::Median(m)) => {
            let defaults = MedianStopping::default();
            Policy::Median(MedianStopping {
                grace_period: or(m.grace_period, defaults.grace_period),
                min_samples: if m.min_samples == 0 {
                    defaults.min_samples
                } else {
                    m.min_samples as usize
                },
            })
        }
        Some(pb::early_termination::Policy::Asha(a)) => {
            let defaults = Asha::default();
            // 0 means the default; 1 would never halve anything.
            if a.reduction_factor == 1 {
                return Err(FieldError::new(
                    "early_termination.asha.reduction_factor",
                    "must be >= 2",
                ));
            }
            Policy::Asha(Asha {
                min_epochs: or(a.min_epochs, defaults.min_epochs),
                reduction_factor: or(a.reduction_factor, defaults.reduction_factor),
            })
        }
    })
}

impl Plan {
    /// Trial `index`'s spec (its number is `index + 1`), as submitted and
    /// validated.
    pub fn trial_spec(
        &self,
        index: usize,
        sweep_id: &str,
    ) -> Result<(pb::JobSpec, JobSpec), FieldError> {
        crate::trial_spec(
            &self.base,
            &self.points[index],
            index as u32 + 1,
            sweep_id,
            &self.model_name,
        )
    }

    /// The epochs trial `index` was set to run (0 if its spec is invalid:
    /// such a trial failed at submission and is never followed).
    pub fn trial_epochs(&self, index: usize, sweep_id: &str) -> u32 {
        self.trial_spec(index, sweep_id)
            .map_or(0, |(_, spec)| spec.training.epochs)
    }

    /// The trials before any has started, in number order.
    pub fn trials(&self) -> Vec<pb::Trial> {
        self.points
            .iter()
            .enumerate()
            .map(|(i, params)| pb::Trial {
                number: i as u32 + 1,
                parameters: params
                    .iter()
                    .map(|(path, value)| pb::ParameterValue {
                        path: path.clone(),
                        value: Some(value.clone()),
                    })
                    .collect(),
                state: pb::JobState::Unspecified as i32,
                ..Default::default()
            })
            .collect()
    }

    /// A new sweep's record: running, no trial started, the request kept
    /// (a restart plans it again from there).
    pub fn new_sweep(
        &self,
        id: &str,
        request: pb::SubmitSweepRequest,
        created_at: prost_types::Timestamp,
    ) -> pb::Sweep {
        pb::Sweep {
            id: id.to_string(),
            state: pb::SweepState::Running as i32,
            model_name: self.model_name.clone(),
            metric: self.metric.name().to_string(),
            goal: self.goal.to_proto() as i32,
            total_trials: self.points.len() as u32,
            trials: self.trials(),
            created_at: Some(created_at),
            request: Some(request),
            ..Default::default()
        }
    }
}

impl Goal {
    /// The goal as a sweep records it.
    pub fn to_proto(self) -> pb::Goal {
        match self {
            Goal::Minimize => pb::Goal::Minimize,
            Goal::Maximize => pb::Goal::Maximize,
        }
    }

    /// The goal of a stored sweep (which holds a resolved goal; anything but
    /// MAXIMIZE reads as MINIMIZE).
    pub fn of_sweep(sweep: &pb::Sweep) -> Goal {
        match sweep.goal() {
            pb::Goal::Maximize => Goal::Maximize,
            _ => Goal::Minimize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::number;
    use crate::testing::{base, request, values};

    fn lr(xs: &[f64]) -> (&'static str, pb::Parameter) {
        ("training.optimizer.learning_rate", values(xs))
    }

    /// The error as the server sends it (INVALID_ARGUMENT's message).
    fn error(request: &pb::SubmitSweepRequest) -> String {
        plan(request, "sweep-1").unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_filled_in() {
        let p = plan(&request(&[lr(&[0.1, 0.01])]), "sweep-1").unwrap();
        assert_eq!(p.points.len(), 2);
        assert_eq!(
            p.points[1],
            [("training.optimizer.learning_rate".into(), number(0.01))]
        );
        assert_eq!(p.model_name, "sweep-1");
        assert_eq!(p.metric, Metric::ValLoss);
        assert_eq!(p.goal, Goal::Minimize);
        assert_eq!(p.max_concurrent, 1);
        assert_eq!(p.policy, Policy::None);
        assert_eq!(p.base, base());
        assert_eq!(p.trial_epochs(0, "sweep-1"), 100); // kiln-core's default
    }

    #[test]
    fn every_field_of_the_request_is_honoured() {
        let mut r = request(&[lr(&[0.1, 0.01, 0.001])]);
        r.max_trials = 2;
        r.max_concurrent_trials = 3;
        r.metric = "val_r2".into();
        r.model_name = "best".into();
        let p = plan(&r, "s").unwrap();
        assert_eq!(p.points.len(), 2, "the grid cut to max_trials");
        assert_eq!((p.metric, p.goal), (Metric::ValR2, Goal::Maximize));
        assert_eq!((p.model_name.as_str(), p.max_concurrent), ("best", 3));
        r.goal = pb::Goal::Minimize as i32;
        r.model_name.clear();
        r.base.as_mut().unwrap().model_name = "from-base".into();
        let p = plan(&r, "s").unwrap();
        assert_eq!(
            (p.goal, p.model_name.as_str()),
            (Goal::Minimize, "from-base")
        );
        // val_mae's AUTO goal is to minimize; MAXIMIZE overrides it.
        r.metric = "val_mae".into();
        r.goal = pb::Goal::Auto as i32;
        assert_eq!(plan(&r, "s").unwrap().goal, Goal::Minimize);
        r.goal = pb::Goal::Maximize as i32;
        assert_eq!(plan(&r, "s").unwrap().goal, Goal::Maximize);
    }

    #[test]
    fn random_sweeps_draw_max_trials_from_the_seed() {
        let mut r = request(&[(
            "training.optimizer.learning_rate",
            pb::Parameter {
                kind: Some(pb::parameter::Kind::LogUniform(pb::Range {
                    low: 1e-4,
                    high: 1e-1,
                })),
            },
        )]);
        r.method = pb::SearchMethod::Random as i32;
        let p = plan(&r, "s").unwrap();
        assert_eq!(p.points.len(), DEFAULT_RANDOM_TRIALS);
        r.max_trials = 3;
        r.seed = 7;
        let a = plan(&r, "s").unwrap().points;
        assert_eq!(a.len(), 3);
        assert_eq!(a, plan(&r, "s").unwrap().points, "same seed, same trials");
        r.seed = 8;
        assert_ne!(a, plan(&r, "s").unwrap().points);
    }

    #[test]
    fn early_termination_defaults() {
        let mut r = request(&[lr(&[0.1])]);
        let mut with = |policy| {
            r.early_termination = Some(pb::EarlyTermination {
                policy: Some(policy),
            });
            plan(&r, "s").map(|p| p.policy)
        };
        use pb::early_termination::Policy as P;
        assert_eq!(
            with(P::Median(pb::MedianStopping::default())),
            Ok(Policy::Median(MedianStopping {
                grace_period: 1,
                min_samples: 3
            }))
        );
        assert_eq!(
            with(P::Median(pb::MedianStopping {
                grace_period: 2,
                min_samples: 5
            })),
            Ok(Policy::Median(MedianStopping {
                grace_period: 2,
                min_samples: 5
            }))
        );
        assert_eq!(
            with(P::Asha(pb::Asha::default())),
            Ok(Policy::Asha(Asha {
                min_epochs: 1,
                reduction_factor: 4
            }))
        );
        assert_eq!(
            with(P::Asha(pb::Asha {
                min_epochs: 2,
                reduction_factor: 3
            })),
            Ok(Policy::Asha(Asha {
                min_epochs: 2,
                reduction_factor: 3
            }))
        );
        assert_eq!(
            with(P::Asha(pb::Asha {
                min_epochs: 0,
                reduction_factor: 1
            }))
            .unwrap_err()
            .to_string(),
            "early_termination.asha.reduction_factor: must be >= 2"
        );
    }

    #[test]
    fn each_invalid_request_names_its_field() {
        let ok = || request(&[lr(&[0.1])]);
        let mut r = ok();
        r.base = None;
        assert_eq!(error(&r), "base: required");
        let mut r = ok();
        r.base.as_mut().unwrap().data = None;
        assert_eq!(error(&r), "base.data: required");
        let mut r = ok();
        r.metric = "val_accuracy".into();
        assert_eq!(
            error(&r),
            "metric: \"val_accuracy\" is not a metric of this task; one of \
             train_loss, val_loss, val_mae, val_rmse, val_r2"
        );
        let mut r = ok();
        r.goal = 9;
        assert_eq!(error(&r), "goal: unknown value");
        let mut r = ok();
        r.model_name = "no spaces".into();
        assert!(
            error(&r).starts_with("model_name: must be 1 to"),
            "{}",
            error(&r)
        );
        assert_eq!(
            error(&request(&[])),
            "search_space: required: at least one parameter"
        );
        let mut r = ok();
        r.method = 9;
        assert_eq!(error(&r), "method: unknown value");
        let r = request(&[(
            "training.optimizer.learning_rate",
            pb::Parameter {
                kind: Some(pb::parameter::Kind::Uniform(pb::Range {
                    low: 0.1,
                    high: 0.2,
                })),
            },
        )]);
        assert!(error(&r).starts_with(
            "search_space[\"training.optimizer.learning_rate\"]: SEARCH_METHOD_GRID takes lists"
        ));
        // Every grid point is checked, not only the first.
        let r = request(&[lr(&[0.1, -1.0])]);
        assert!(
            error(&r).starts_with(
                "search_space[\"training.optimizer.learning_rate\"]: value -1 makes an invalid spec"
            ),
            "{}",
            error(&r)
        );
        // ... unless max_trials cuts it off first.
        let mut r = request(&[lr(&[0.1, -1.0])]);
        r.max_trials = 1;
        assert!(plan(&r, "s").is_ok());
        // RANDOM checks its first draw.
        let mut r = request(&[("model.hidden_layers[3].units", values(&[4.0]))]);
        r.method = pb::SearchMethod::Random as i32;
        assert!(error(&r).starts_with("search_space[\"model.hidden_layers[3].units\"]"));
    }

    #[test]
    fn errors_come_in_request_order() {
        // A bad metric and a bad method: the metric is named.
        let mut r = request(&[lr(&[0.1])]);
        r.metric = "nope".into();
        r.method = 9;
        assert!(error(&r).starts_with("metric:"));
        // A bad search space and a bad policy: the search space.
        let mut r = request(&[]);
        r.early_termination = Some(pb::EarlyTermination {
            policy: Some(pb::early_termination::Policy::Asha(pb::Asha {
                min_epochs: 1,
                reduction_factor: 1,
            })),
        });
        assert!(error(&r).starts_with("search_space:"));
    }

    #[test]
    fn a_new_sweep_record() {
        let mut r = request(&[lr(&[0.1, 0.01])]);
        r.metric = "val_r2".into();
        let p = plan(&r, "sweep-1").unwrap();
        let at = prost_types::Timestamp {
            seconds: 5,
            nanos: 0,
        };
        let sweep = p.new_sweep("sweep-1", r.clone(), at);
        assert_eq!(
            sweep,
            pb::Sweep {
                id: "sweep-1".into(),
                state: pb::SweepState::Running as i32,
                model_name: "sweep-1".into(),
                metric: "val_r2".into(),
                goal: pb::Goal::Maximize as i32,
                total_trials: 2,
                trials: p.trials(),
                created_at: Some(at),
                request: Some(r),
                ..Default::default()
            }
        );
        let numbers: Vec<(u32, i32)> = sweep.trials.iter().map(|t| (t.number, t.state)).collect();
        assert_eq!(numbers, [(1, 0), (2, 0)]);
        assert_eq!(sweep.trials[1].parameters[0].value, Some(number(0.01)));
        assert_eq!(Goal::of_sweep(&sweep), Goal::Maximize);
        assert_eq!(Goal::of_sweep(&pb::Sweep::default()), Goal::Minimize);
    }
}
