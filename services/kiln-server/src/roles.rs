//! What a process does. `api,serve,trainer` (the default) is the whole of
//! kiln in one process. `serve` is a serving replica: it shares the
//! database (`database_url`) and the model files with the process that
//! trains, follows the registry there ([`crate::follower`]) and answers
//! Predict, OIP and the registry's reads; calls that write or that need the
//! job runner are refused with FAILED_PRECONDITION, naming the role to send
//! them to. Other combinations come with the leases of the shared mode.

/// The roles a process has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Roles {
    /// api, serve and trainer: everything.
    All,
    /// serve only: a replica that follows the registry.
    Serve,
}

impl Roles {
    /// `roles` as written: a comma-separated set.
    pub fn parse(text: &str) -> Result<Roles, String> {
        let mut roles: Vec<&str> = text.split(',').map(str::trim).collect();
        roles.sort_unstable();
        roles.dedup();
        match roles.as_slice() {
            ["api", "serve", "trainer"] => Ok(Roles::All),
            ["serve"] => Ok(Roles::Serve),
            _ => Err(format!(
                "roles: \"{text}\" is not one this kiln-server runs; \"api,serve,trainer\" \
                 (everything in one process) or \"serve\" (a serving replica following the \
                 shared database)"
            )),
        }
    }
}

/// Whether a serve-only replica refuses the call at `path` (a gRPC path,
/// `/package.Service/Method`): everything of the job, dataset and sweep
/// services but following a job (GetJob, WatchJob, read from the shared
/// database), and the registry's writes.
pub fn refused_when_serving_only(path: &str) -> bool {
    const FOLLOWED: [&str; 2] = ["/kiln.v1.JobService/GetJob", "/kiln.v1.JobService/WatchJob"];
    if FOLLOWED.contains(&path) {
        return false;
    }
    const WRITERS: [&str; 3] = [
        "/kiln.v1.JobService/",
        "/kiln.v1.DatasetService/",
        "/kiln.v1.SweepService/",
    ];
    const REGISTRY_WRITES: [&str; 3] = ["SetAlias", "ImportModel", "ScoreDataset"];
    WRITERS.iter().any(|p| path.starts_with(p))
        || path
            .strip_prefix("/kiln.v1.InferenceService/")
            .is_some_and(|method| REGISTRY_WRITES.contains(&method))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_all_or_serve() {
        assert_eq!(Roles::parse("api,serve,trainer"), Ok(Roles::All));
        assert_eq!(Roles::parse("trainer, api ,serve"), Ok(Roles::All));
        assert_eq!(Roles::parse("serve"), Ok(Roles::Serve));
        for other in ["", "api", "trainer", "api,serve", "serve,gpu"] {
            assert!(
                Roles::parse(other).unwrap_err().starts_with("roles:"),
                "{other}"
            );
        }
    }

    #[test]
    fn a_serving_replica_refuses_writes_and_jobs() {
        for refused in [
            "/kiln.v1.JobService/SubmitJob",
            "/kiln.v1.JobService/ListJobs",
            "/kiln.v1.JobService/CancelJob",
            "/kiln.v1.DatasetService/UploadDataset",
            "/kiln.v1.SweepService/SubmitSweep",
            "/kiln.v1.InferenceService/SetAlias",
            "/kiln.v1.InferenceService/ImportModel",
        ] {
            assert!(refused_when_serving_only(refused), "{refused}");
        }
        for served in [
            "/kiln.v1.InferenceService/Predict",
            "/kiln.v1.JobService/GetJob",
            "/kiln.v1.JobService/WatchJob",
            "/kiln.v1.InferenceService/ListModels",
            "/inference.GRPCInferenceService/ModelInfer",
            "/grpc.health.v1.Health/Check",
        ] {
            assert!(!refused_when_serving_only(served), "{served}");
        }
    }
}
