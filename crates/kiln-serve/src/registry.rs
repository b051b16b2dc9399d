//! Models being served, by name. Each finished job registers its model under
//! the job id and under its model name; a later job with the same model name
//! replaces the earlier one as a new version, atomically.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use kiln_train::{ModelArtifact, ModelMeta};

use crate::batcher::{BatcherConfig, BatcherHandle};
use crate::ServeError;

/// A loaded model and its prediction worker.
pub struct ServedModel {
    pub name: String,
    /// 1, 2, ... per name.
    pub version: u32,
    pub job_id: String,
    pub meta: ModelMeta,
    pub device: String,
    pub batcher: BatcherHandle,
}

#[derive(Default)]
pub struct ModelRegistry {
    inner: RwLock<Inner>,
    config: BatcherConfig,
}

#[derive(Default)]
struct Inner {
    by_name: HashMap<String, Arc<ServedModel>>,
    by_job: HashMap<String, Arc<ServedModel>>,
}

impl ModelRegistry {
    pub fn new(config: BatcherConfig) -> Self {
        Self {
            inner: RwLock::default(),
            config,
        }
    }

    /// Loads `artifact` on `device` (with a warm-up pass) and makes it answer
    /// for `name` and for `job_id`.
    pub fn register(
        &self,
        name: &str,
        job_id: &str,
        artifact: ModelArtifact,
        device: kiln_train::Device,
        device_name: &str,
    ) -> Result<Arc<ServedModel>, ServeError> {
        let meta = artifact.meta.clone();
        let batcher = BatcherHandle::spawn(name, artifact, device, self.config)?;
        let mut inner = self.inner.write().unwrap();
        let version = inner.by_name.get(name).map_or(1, |m| m.version + 1);
        let model = Arc::new(ServedModel {
            name: name.to_string(),
            version,
            job_id: job_id.to_string(),
            meta,
            device: device_name.to_string(),
            batcher,
        });
        inner.by_name.insert(name.to_string(), model.clone());
        inner.by_job.insert(job_id.to_string(), model.clone());
        Ok(model)
    }

    /// The model serving `name`: a model name first, else a job id.
    pub fn get(&self, name: &str) -> Option<Arc<ServedModel>> {
        let inner = self.inner.read().unwrap();
        inner
            .by_name
            .get(name)
            .or_else(|| inner.by_job.get(name))
            .cloned()
    }

    /// The current version of every model name, sorted by name.
    pub fn list(&self) -> Vec<Arc<ServedModel>> {
        let mut all: Vec<_> = self
            .inner
            .read()
            .unwrap()
            .by_name
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}
