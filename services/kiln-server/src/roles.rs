//! What a process does. `api,serve,trainer` (the default) is the whole of
//! kiln in one process, and the only set the embedded store (SQLite, one
//! process) runs. On a shared database (`database_url`) each process takes
//! any non-empty set of:
//!
//! - `api`: the job, dataset and sweep services;
//! - `serve`: Predict, OIP and the registry, following it in the database
//!   ([`crate::follower`]);
//! - `trainer`: takes queued jobs by lease and trains them
//!   ([`crate::leases`]).
//!
//! A call needs the roles that do its work: the registry's writes
//! (SetAlias, ImportModel, ScoreDataset) and SubmitSweep (whose controller
//! registers the best trial's model) need `api` and `serve`. A call for a
//! role the process lacks is refused with FAILED_PRECONDITION naming the
//! role; GetJob and WatchJob are answered everywhere.

/// The roles a process has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub api: bool,
    pub serve: bool,
    pub trainer: bool,
}

impl Roles {
    /// `roles` as written: a comma-separated set; `shared`: a shared
    /// database is configured (else only the whole set runs).
    pub fn parse(text: &str, shared: bool) -> Result<Roles, String> {
        let mut roles = Roles {
            api: false,
            serve: false,
            trainer: false,
        };
        for role in text.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            match role {
                "api" => roles.api = true,
                "serve" => roles.serve = true,
                "trainer" => roles.trainer = true,
                other => {
                    return Err(format!(
                        "roles: \"{other}\" is not a role; any of api, serve, trainer"
                    ))
                }
            }
        }
        if !(roles.api || roles.serve || roles.trainer) {
            return Err("roles: empty; any of api, serve, trainer (all three by default)".into());
        }
        if !roles.all() && !shared {
            return Err(format!(
                "roles: \"{text}\" splits kiln across processes, which share their state in a \
                 database: set database_url (without it, only \"api,serve,trainer\")"
            ));
        }
        Ok(roles)
    }

    /// Everything in one process.
    pub fn all(&self) -> bool {
        self.api && self.serve && self.trainer
    }

    /// The role a call at `path` (`/package.Service/Method`) needs that
    /// this process lacks; `None` when it is answered here.
    pub fn missing_for(&self, path: &str) -> Option<&'static str> {
        const FOLLOWED: [&str; 2] = ["/kiln.v1.JobService/GetJob", "/kiln.v1.JobService/WatchJob"];
        const API: [&str; 3] = [
            "/kiln.v1.JobService/",
            "/kiln.v1.DatasetService/",
            "/kiln.v1.SweepService/",
        ];
        const SERVE: [&str; 2] = [
            "/kiln.v1.InferenceService/",
            "/inference.GRPCInferenceService/",
        ];
        const BOTH: [&str; 4] = [
            "/kiln.v1.InferenceService/SetAlias",
            "/kiln.v1.InferenceService/ImportModel",
            "/kiln.v1.InferenceService/ScoreDataset",
            "/kiln.v1.SweepService/SubmitSweep",
        ];
        if FOLLOWED.contains(&path) {
            return None;
        }
        let needs_api = BOTH.contains(&path) || API.iter().any(|p| path.starts_with(p));
        let needs_serve = BOTH.contains(&path) || SERVE.iter().any(|p| path.starts_with(p));
        if needs_api && !self.api {
            return Some("api");
        }
        if needs_serve && !self.serve {
            return Some("serve");
        }
        None
    }
}

impl std::fmt::Display for Roles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = [
            (self.api, "api"),
            (self.serve, "serve"),
            (self.trainer, "trainer"),
        ];
        let held: Vec<&str> = names.iter().filter(|(h, _)| *h).map(|(_, n)| *n).collect();
        f.write_str(&held.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(text: &str) -> Roles {
        Roles::parse(text, true).unwrap()
    }

    #[test]
    fn any_set_on_a_shared_database_and_only_all_without() {
        assert!(Roles::parse("api,serve,trainer", false).unwrap().all());
        assert!(Roles::parse("trainer, api ,serve", false).unwrap().all());
        for split in [
            "api",
            "serve",
            "trainer",
            "api,serve",
            "api,trainer",
            "serve,trainer",
        ] {
            assert_eq!(roles(split).to_string(), split);
            let alone = Roles::parse(split, false).unwrap_err();
            assert!(alone.contains("set database_url"), "{alone}");
        }
        for wrong in ["", " , ", "serve,gpu"] {
            assert!(
                Roles::parse(wrong, true).unwrap_err().starts_with("roles:"),
                "{wrong}"
            );
        }
    }

    #[test]
    fn a_call_is_refused_where_its_role_is_missing() {
        let api_paths = [
            "/kiln.v1.JobService/SubmitJob",
            "/kiln.v1.JobService/ListJobs",
            "/kiln.v1.JobService/CancelJob",
            "/kiln.v1.DatasetService/UploadDataset",
            "/kiln.v1.SweepService/SubmitSweep",
            "/kiln.v1.InferenceService/SetAlias",
            "/kiln.v1.InferenceService/ImportModel",
        ];
        let serve_paths = [
            "/kiln.v1.InferenceService/Predict",
            "/kiln.v1.InferenceService/ListModels",
            "/inference.GRPCInferenceService/ModelInfer",
        ];
        let everywhere = [
            "/kiln.v1.JobService/GetJob",
            "/kiln.v1.JobService/WatchJob",
            "/grpc.health.v1.Health/Check",
        ];
        let (serve, trainer, all) = (roles("serve"), roles("trainer"), roles("api,serve,trainer"));
        let api = roles("api");
        for path in api_paths {
            assert_eq!(serve.missing_for(path), Some("api"), "{path}");
            assert_eq!(trainer.missing_for(path), Some("api"), "{path}");
            assert_eq!(all.missing_for(path), None, "{path}");
        }
        for path in serve_paths {
            assert_eq!(serve.missing_for(path), None, "{path}");
            assert_eq!(trainer.missing_for(path), Some("serve"), "{path}");
        }
        for path in everywhere {
            for r in [serve, trainer, all, api] {
                assert_eq!(r.missing_for(path), None, "{path}");
            }
        }
        // The registry's writes and a sweep need both.
        for path in [
            "/kiln.v1.InferenceService/SetAlias",
            "/kiln.v1.SweepService/SubmitSweep",
        ] {
            assert_eq!(api.missing_for(path), Some("serve"), "{path}");
            assert_eq!(serve.missing_for(path), Some("api"), "{path}");
        }
        assert_eq!(api.missing_for("/kiln.v1.JobService/SubmitJob"), None);
        assert_eq!(api.missing_for("/kiln.v1.SweepService/GetSweep"), None);
        assert_eq!(
            api.missing_for("/kiln.v1.InferenceService/Predict"),
            Some("serve")
        );
    }
}
