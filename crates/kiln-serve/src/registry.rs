//! The model registry: every model name has versions 1, 2, ... (one per
//! successful job, or per import) and aliases such as `production` that point
//! at a version and move atomically. A version is loaded (its batcher running,
//! warmed up) or unloaded (only its artifact kept, ready to load again).
//!
//! Requests resolve a model once and hold the `Arc<ServedModel>` until they are
//! answered, so moving an alias or unloading a version never drops a request
//! already in flight.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use kiln_core::brief;
use kiln_core::spec::Task;
use kiln_train::{ModelArtifact, ModelMeta};

use crate::batcher::{BatcherConfig, BatcherHandle, StatsSnapshot};
use crate::journal::{RegistryJournal, SavedVersion};
use crate::ServeError;

/// The longest alias.
pub const MAX_ALIAS_LEN: usize = 128;

/// A loaded model version and its batcher.
pub struct ServedModel {
    /// Its model name.
    pub name: String,
    /// Its version number under that name.
    pub version: u32,
    /// The job that trained it; empty for an imported model.
    pub job_id: String,
    /// What it expects and answers (features, classes, scalers).
    pub meta: ModelMeta,
    /// The device it runs on ("cpu", "cuda:0").
    pub device: String,
    /// Its queue and workers.
    pub batcher: BatcherHandle,
}

/// One version as listed: loaded or not, with the aliases pointing at it.
#[derive(Debug, Clone)]
pub struct VersionInfo {
    /// Its model name.
    pub name: String,
    /// Its version number.
    pub version: u32,
    /// The job that trained it; empty for an imported model.
    pub job_id: String,
    /// What it expects and answers.
    pub meta: ModelMeta,
    /// The device it is (or would be) loaded on.
    pub device: String,
    /// Whether it answers Predict now.
    pub loaded: bool,
    /// The aliases pointing at it.
    pub aliases: Vec<String>,
    /// The batcher's counters while loaded.
    pub stats: Option<StatsSnapshot>,
    /// Why the version cannot be loaded (see [`ModelRegistry::restore`]).
    pub error: Option<String>,
}

/// Every model name's versions and aliases, loaded or not.
pub struct ModelRegistry {
    inner: RwLock<HashMap<String, Versions>>,
    /// Job id -> (name, version).
    by_job: RwLock<HashMap<String, (String, u32)>>,
    config: BatcherConfig,
    ready: AtomicBool,
    /// Where new versions and alias moves are saved; `None`: memory only.
    journal: Option<Arc<dyn RegistryJournal>>,
}

#[derive(Default)]
struct Versions {
    slots: BTreeMap<u32, Slot>,
    aliases: BTreeMap<String, u32>,
}

struct Slot {
    job_id: String,
    artifact: ModelArtifact,
    device: kiln_train::Device,
    device_name: String,
    loaded: Option<Arc<ServedModel>>,
    /// Set when the version cannot be served (its artifact failed its
    /// checks); `artifact` then holds only the metadata.
    error: Option<String>,
}

impl Slot {
    fn unservable(&self, name: &str, version: u32) -> Option<ServeError> {
        self.error.as_ref().map(|e| {
            ServeError::NotLoaded(format!(
                "model \"{name}\" version {version} cannot be served: {e}"
            ))
        })
    }
}

/// Which version a request means.
enum Selector<'a> {
    /// "": the newest (loaded, when serving) version.
    Latest,
    Number(u32),
    Alias(&'a str),
}

impl<'a> Selector<'a> {
    fn parse(version: &'a str) -> Self {
        match version {
            "" => Selector::Latest,
            v => v.parse().map_or(Selector::Alias(v), Selector::Number),
        }
    }
}

impl ModelRegistry {
    /// An empty registry whose versions batch with `config`.
    pub fn new(config: BatcherConfig) -> Self {
        Self {
            inner: RwLock::default(),
            by_job: RwLock::default(),
            config,
            ready: AtomicBool::new(true),
            journal: None,
        }
    }

    /// Saves every version added and every alias moved through `journal`.
    pub fn with_journal(mut self, journal: Arc<dyn RegistryJournal>) -> Self {
        self.journal = Some(journal);
        self
    }

    /// Whether the server has loaded what it should (readiness probes).
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Sets what [`ModelRegistry::ready`] answers.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Loads `artifact` on `device` (with a warm-up pass) as the next version
    /// of `name` and saves it in the journal, with `files`, the folder under
    /// the models directory that holds its files. A non-empty `job_id` also
    /// resolves to it.
    pub fn register(
        &self,
        name: &str,
        job_id: &str,
        files: &str,
        artifact: ModelArtifact,
        device: kiln_train::Device,
        device_name: &str,
    ) -> Result<Arc<ServedModel>, ServeError> {
        self.check_task(name, artifact.meta.arch.task)?;
        let batcher = BatcherHandle::spawn(name, &artifact, device.clone(), self.config)?;
        let mut inner = self.inner.write().unwrap();
        let versions = inner.entry(name.to_string()).or_default();
        // Checked again under the lock: another version may have come meanwhile.
        if let Some(held) = versions.task() {
            if held != artifact.meta.arch.task {
                return Err(task_mismatch(name, held, artifact.meta.arch.task));
            }
        }
        let mut version = versions.slots.keys().next_back().map_or(1, |v| v + 1);
        let journal = self.journal.as_ref();
        // A journal shared with other processes numbers versions for all.
        if let Some(shared) = journal.and_then(|j| j.next_version(name)) {
            version = version.max(shared);
        }
        let mut model = Arc::new(ServedModel {
            name: name.to_string(),
            version,
            job_id: job_id.to_string(),
            meta: artifact.meta.clone(),
            device: device_name.to_string(),
            batcher,
        });
        // Saved before it is served (under the lock, so versions are saved
        // in order): a version that a restart would not bring back is never
        // answered for. Should another process have taken the number
        // meanwhile, the next free one is tried (a few times).
        if let Some(journal) = journal {
            let mut tries = 0;
            loop {
                let saved = SavedVersion {
                    name,
                    version,
                    job_id,
                    files,
                    meta: &model.meta,
                };
                let Err(e) = journal.version_added(&saved) else {
                    break;
                };
                tries += 1;
                match journal.next_version(name) {
                    Some(next) if next > version && tries < 5 => {
                        version = next;
                        Arc::get_mut(&mut model).expect("not shared yet").version = next;
                    }
                    _ => {
                        if versions.slots.is_empty() {
                            inner.remove(name); // the entry made above, for nothing
                        }
                        return Err(ServeError::NotSaved(format!(
                            "model version not saved, so not served: {e}"
                        )));
                    }
                }
            }
        }
        versions.slots.insert(
            version,
            Slot {
                job_id: job_id.to_string(),
                artifact,
                device,
                device_name: device_name.to_string(),
                loaded: Some(model.clone()),
                error: None,
            },
        );
        if !job_id.is_empty() {
            let key = (name.to_string(), version);
            self.by_job.write().unwrap().insert(job_id.to_string(), key);
        }
        Ok(model)
    }

    /// Puts back a version kept from before a restart under its own number,
    /// loaded. `artifact` is `Err((meta, why))` for a version that cannot be
    /// served (e.g. its files failed their checksums): it is listed, not
    /// loaded, with `why`, and every attempt to use it answers `why`. A
    /// version that fails to load is kept the same way; its error is returned.
    pub fn restore(
        &self,
        name: &str,
        version: u32,
        job_id: &str,
        artifact: Result<ModelArtifact, (ModelMeta, String)>,
        device: kiln_train::Device,
        device_name: &str,
    ) -> Result<(), ServeError> {
        let (artifact, loaded, error, result) = match artifact {
            Ok(artifact) => {
                match BatcherHandle::spawn(name, &artifact, device.clone(), self.config) {
                    Ok(batcher) => {
                        let model = Arc::new(ServedModel {
                            name: name.to_string(),
                            version,
                            job_id: job_id.to_string(),
                            meta: artifact.meta.clone(),
                            device: device_name.to_string(),
                            batcher,
                        });
                        (artifact, Some(model), None, Ok(()))
                    }
                    Err(e) => (artifact, None, Some(e.to_string()), Err(e)),
                }
            }
            Err((meta, why)) => (
                ModelArtifact {
                    meta,
                    weights: Vec::new(),
                },
                None,
                Some(why),
                Ok(()),
            ),
        };
        let mut inner = self.inner.write().unwrap();
        inner.entry(name.to_string()).or_default().slots.insert(
            version,
            Slot {
                job_id: job_id.to_string(),
                artifact,
                device,
                device_name: device_name.to_string(),
                loaded,
                error,
            },
        );
        if !job_id.is_empty() {
            let key = (name.to_string(), version);
            self.by_job.write().unwrap().insert(job_id.to_string(), key);
        }
        result
    }

    /// The loaded model answering for `name` (a model name, or the id of the
    /// job that trained it) at `version`: "" for the newest loaded version, a
    /// number, or an alias.
    pub fn resolve(&self, name: &str, version: &str) -> Result<Arc<ServedModel>, ServeError> {
        let (name, version) = self.by_job_id(name, version)?;
        let inner = self.inner.read().unwrap();
        let versions = inner
            .get(&name)
            .ok_or_else(|| ServeError::NotFound(format!("model \"{}\" not found", brief(&name))))?;
        if let Selector::Latest = Selector::parse(&version) {
            return versions
                .slots
                .values()
                .rev()
                .find_map(|s| s.loaded.clone())
                .ok_or_else(|| {
                    let why = versions
                        .slots
                        .iter()
                        .rev()
                        .find_map(|(&v, s)| s.unservable(&name, v));
                    match why {
                        Some(ServeError::NotLoaded(why)) => ServeError::NotLoaded(format!(
                            "no version of model \"{name}\" is loaded; {why}"
                        )),
                        _ => ServeError::NotLoaded(format!(
                            "no version of model \"{name}\" is loaded"
                        )),
                    }
                });
        }
        let number = versions.select(&name, &version)?;
        let slot = &versions.slots[&number];
        if let Some(error) = slot.unservable(&name, number) {
            return Err(error);
        }
        slot.loaded.clone().ok_or_else(|| {
            ServeError::NotLoaded(format!(
                "model \"{name}\" version {number} is not loaded (LoadModel loads it)"
            ))
        })
    }

    /// A job id stands for the version it trained, always: it is looked up
    /// before model names (which cannot have the form of a job id). With a
    /// job id, `version` may be "" or that version's number.
    fn by_job_id(&self, name: &str, version: &str) -> Result<(String, String), ServeError> {
        match self.by_job.read().unwrap().get(name) {
            Some((model, v)) if version.is_empty() || version == v.to_string() => {
                Ok((model.clone(), v.to_string()))
            }
            Some((model, v)) => Err(ServeError::NotFound(format!(
                "job \"{name}\" trained version {v} of model \"{model}\"; it has no version \"{}\"",
                brief(version)
            ))),
            None => Ok((name.to_string(), version.to_string())),
        }
    }

    /// The task `name`'s versions predict, if it has any: one model name
    /// holds one task.
    pub fn task(&self, name: &str) -> Option<Task> {
        self.inner.read().unwrap().get(name)?.task()
    }

    /// `Invalid` when `name` already holds versions of another task than `task`.
    pub fn check_task(&self, name: &str, task: Task) -> Result<(), ServeError> {
        match self.task(name) {
            Some(held) if held != task => Err(task_mismatch(name, held, task)),
            _ => Ok(()),
        }
    }

    /// The model name `name` means (itself, or the model a job id trained).
    pub fn resolve_name(&self, name: &str) -> String {
        self.by_job_id(name, "").expect("no version").0
    }

    /// Every registered version of `name`, loaded or not, oldest first.
    pub fn versions(&self, name: &str) -> Vec<u32> {
        let (name, _) = self.by_job_id(name, "").expect("no version");
        let inner = self.inner.read().unwrap();
        inner
            .get(&name)
            .map(|v| v.slots.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Loads (and warms up) a version; "" is the newest registered one.
    pub fn load(&self, name: &str, version: &str) -> Result<Arc<ServedModel>, ServeError> {
        let (name, version) = self.by_job_id(name, version)?;
        let (number, job_id, artifact, device, device_name) = {
            let inner = self.inner.read().unwrap();
            let versions = inner.get(&name).ok_or_else(|| {
                ServeError::NotFound(format!("model \"{}\" not found", brief(&name)))
            })?;
            let number = versions.select(&name, &version)?;
            let slot = &versions.slots[&number];
            if let Some(model) = &slot.loaded {
                return Ok(model.clone());
            }
            if let Some(error) = slot.unservable(&name, number) {
                return Err(error);
            }
            let s = (slot.job_id.clone(), slot.artifact.clone());
            (
                number,
                s.0,
                s.1,
                slot.device.clone(),
                slot.device_name.clone(),
            )
        };
        // Load outside the lock: warm-up takes a while and requests must flow.
        let batcher = BatcherHandle::spawn(&name, &artifact, device, self.config)?;
        let model = Arc::new(ServedModel {
            name: name.clone(),
            version: number,
            job_id,
            meta: artifact.meta,
            device: device_name,
            batcher,
        });
        let mut inner = self.inner.write().unwrap();
        let slot = inner
            .get_mut(&name)
            .and_then(|v| v.slots.get_mut(&number))
            .expect("versions are never removed");
        Ok(slot.loaded.get_or_insert(model).clone())
    }

    /// Stops serving a version (requests in flight finish); returns its number.
    pub fn unload(&self, name: &str, version: &str) -> Result<u32, ServeError> {
        let (name, version) = self.by_job_id(name, version)?;
        let mut inner = self.inner.write().unwrap();
        let versions = inner
            .get_mut(&name)
            .ok_or_else(|| ServeError::NotFound(format!("model \"{}\" not found", brief(&name))))?;
        let number = versions.select(&name, &version)?;
        versions.slots.get_mut(&number).expect("selected").loaded = None;
        Ok(number)
    }

    /// Points `alias` at `version` of `name` (a number, or another alias), atomically.
    pub fn set_alias(&self, name: &str, alias: &str, version: &str) -> Result<u32, ServeError> {
        let valid = !alias.is_empty()
            && alias.len() <= MAX_ALIAS_LEN
            && alias.parse::<u32>().is_err()
            && alias
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(ServeError::Invalid(format!(
                "alias: \"{}\" must be 1 to {MAX_ALIAS_LEN} letters, digits, '-', '_' or '.', and not a number",
                brief(alias)
            )));
        }
        if version.is_empty() {
            return Err(ServeError::Invalid("version: required".into()));
        }
        let mut inner = self.inner.write().unwrap();
        let versions = inner
            .get_mut(name)
            .ok_or_else(|| ServeError::NotFound(format!("model \"{}\" not found", brief(name))))?;
        let number = versions.select(name, version)?;
        // Saved first: an alias that a restart would not bring back never moves.
        if let Some(journal) = &self.journal {
            journal.alias_moved(name, alias, number).map_err(|e| {
                ServeError::NotSaved(format!("the alias was not saved, so it did not move: {e}"))
            })?;
        }
        versions.aliases.insert(alias.to_string(), number);
        Ok(number)
    }

    /// Puts back an alias saved before a restart (not saved again: a start
    /// on a full disk must still serve by alias).
    pub fn restore_alias(&self, name: &str, alias: &str, version: u32) -> Result<(), ServeError> {
        let mut inner = self.inner.write().unwrap();
        let versions = inner
            .get_mut(name)
            .ok_or_else(|| ServeError::NotFound(format!("model \"{}\" not found", brief(name))))?;
        let number = versions.select(name, &version.to_string())?;
        versions.aliases.insert(alias.to_string(), number);
        Ok(())
    }

    /// The artifact of a version ("" is the newest), for export.
    pub fn artifact(&self, name: &str, version: &str) -> Result<(u32, ModelArtifact), ServeError> {
        let (name, version) = self.by_job_id(name, version)?;
        let inner = self.inner.read().unwrap();
        let versions = inner
            .get(&name)
            .ok_or_else(|| ServeError::NotFound(format!("model \"{}\" not found", brief(&name))))?;
        let number = versions.select(&name, &version)?;
        let slot = &versions.slots[&number];
        if let Some(error) = slot.unservable(&name, number) {
            return Err(error);
        }
        Ok((number, slot.artifact.clone()))
    }

    /// The artifact of a version and the device it serves on, for work that
    /// builds its own copy of the model (batch scoring) rather than queueing
    /// on the version's batcher.
    pub fn artifact_and_device(
        &self,
        name: &str,
        version: u32,
    ) -> Result<(ModelArtifact, kiln_train::Device), ServeError> {
        let (name, _) = self.by_job_id(name, "")?;
        let inner = self.inner.read().unwrap();
        let slot = inner
            .get(&name)
            .and_then(|v| v.slots.get(&version))
            .ok_or_else(|| {
                ServeError::NotFound(format!(
                    "model \"{}\" has no version \"{version}\"",
                    brief(&name)
                ))
            })?;
        if let Some(error) = slot.unservable(&name, version) {
            return Err(error);
        }
        Ok((slot.artifact.clone(), slot.device.clone()))
    }

    /// Every version of every model, by name then version.
    pub fn list(&self) -> Vec<VersionInfo> {
        let inner = self.inner.read().unwrap();
        let mut names: Vec<_> = inner.keys().collect();
        names.sort();
        let mut all = Vec::new();
        for name in names {
            let versions = &inner[name];
            for (&version, slot) in &versions.slots {
                all.push(VersionInfo {
                    name: name.clone(),
                    version,
                    job_id: slot.job_id.clone(),
                    meta: slot.artifact.meta.clone(),
                    device: slot.device_name.clone(),
                    loaded: slot.loaded.is_some(),
                    aliases: versions
                        .aliases
                        .iter()
                        .filter(|(_, &v)| v == version)
                        .map(|(a, _)| a.clone())
                        .collect(),
                    stats: slot.loaded.as_ref().map(|m| m.batcher.stats()),
                    error: slot.error.clone(),
                });
            }
        }
        all
    }
}

fn task_mismatch(name: &str, held: Task, task: Task) -> ServeError {
    ServeError::Invalid(format!(
        "model \"{name}\" holds {} versions, not {}: one model name holds one task; use another name",
        held.to_proto().as_str_name(),
        task.to_proto().as_str_name()
    ))
}

impl Versions {
    /// The task of its versions (the first one's; all share it).
    fn task(&self) -> Option<Task> {
        self.slots
            .values()
            .next()
            .map(|s| s.artifact.meta.arch.task)
    }

    /// The version number `version` means: "" the newest, a number, or an alias.
    fn select(&self, name: &str, version: &str) -> Result<u32, ServeError> {
        let number = match Selector::parse(version) {
            Selector::Latest => self.slots.keys().next_back().copied(),
            Selector::Number(n) => Some(n).filter(|n| self.slots.contains_key(n)),
            Selector::Alias(alias) => self.aliases.get(alias).copied(),
        };
        number.ok_or_else(|| {
            ServeError::NotFound(format!(
                "model \"{name}\" has no version \"{}\"",
                brief(version)
            ))
        })
    }
}
