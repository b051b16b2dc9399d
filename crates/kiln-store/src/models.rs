//! The model registry's saved state: each version (name, number, the job
//! that trained it, the folder of its files, its metadata as JSON) and each
//! alias. The registry writes through it as it changes (kiln-serve's
//! `RegistryJournal`, which the server implements with this), and a restart
//! reads it back before anything listens.

use std::sync::Arc;

use crate::db::{DbError, ModelRow};
use crate::storage::Storage;

/// Versions and aliases in the database.
pub struct ModelCatalog {
    db: Arc<dyn Storage>,
}

/// Everything the catalog holds, as a restart reads it.
pub struct SavedRegistry {
    /// Every version, by name then number.
    pub versions: Vec<ModelRow>,
    /// Every alias as (model name, alias, version), by name then alias.
    pub aliases: Vec<(String, String, u32)>,
}

impl ModelCatalog {
    /// The catalog in `db`.
    pub fn new(db: Arc<dyn Storage>) -> Self {
        Self { db }
    }

    /// Records a new version (or replaces the record of the same number).
    pub fn add_version(&self, version: &ModelRow) -> Result<(), DbError> {
        self.db.put_model(version)
    }

    /// The next version number of `name` as a shared database sees it
    /// (`None` for the embedded one: the registry in memory counts).
    pub fn next_version(&self, name: &str) -> Result<Option<u32>, DbError> {
        self.db.next_model_version(name)
    }

    /// Forgets a version and the aliases pointing at it.
    pub fn remove_version(&self, name: &str, version: u32) -> Result<(), DbError> {
        self.db.delete_model(name, version)
    }

    /// Points `alias` of `name` at `version`.
    pub fn set_alias(&self, name: &str, alias: &str, version: u32) -> Result<(), DbError> {
        self.db.set_alias(name, alias, version)
    }

    /// Every version and alias.
    pub fn load(&self) -> Result<SavedRegistry, DbError> {
        Ok(SavedRegistry {
            versions: self.db.models()?,
            aliases: self.db.aliases()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    fn row(name: &str, version: u32) -> ModelRow {
        ModelRow {
            name: name.into(),
            version,
            job_id: format!("job-{version}"),
            artifact: format!("job-{version}"),
            meta: "{}".into(),
        }
    }

    #[test]
    fn versions_and_aliases_come_back_and_removal_takes_its_aliases() {
        let catalog = ModelCatalog::new(Arc::new(Db::open_in_memory().unwrap()));
        catalog.add_version(&row("m", 2)).unwrap();
        catalog.add_version(&row("m", 1)).unwrap();
        catalog.set_alias("m", "prod", 1).unwrap();
        catalog.set_alias("m", "canary", 2).unwrap();
        catalog.set_alias("m", "prod", 2).unwrap();
        let saved = catalog.load().unwrap();
        let numbers: Vec<u32> = saved.versions.iter().map(|v| v.version).collect();
        assert_eq!(numbers, [1, 2]);
        assert_eq!(
            saved.aliases,
            [
                ("m".into(), "canary".into(), 2),
                ("m".into(), "prod".into(), 2)
            ]
        );
        catalog.remove_version("m", 2).unwrap();
        let saved = catalog.load().unwrap();
        assert_eq!(saved.versions.len(), 1);
        assert!(saved.aliases.is_empty(), "{:?}", saved.aliases);
    }
}
