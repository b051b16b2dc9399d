//! The registry's journal in the server: kiln-store's model catalog, so
//! that the registry saves its own versions and aliases.

use std::sync::Arc;

use kiln_serve::{RegistryJournal, SavedVersion};
use kiln_store::{ModelCatalog, ModelRow};

/// [`ModelCatalog`] as the registry's [`RegistryJournal`].
pub struct CatalogJournal(pub Arc<ModelCatalog>);

impl RegistryJournal for CatalogJournal {
    fn version_added(&self, v: &SavedVersion) -> Result<(), String> {
        let row = ModelRow {
            name: v.name.to_string(),
            version: v.version,
            job_id: v.job_id.to_string(),
            artifact: v.files.to_string(),
            meta: serde_json::to_string(v.meta).map_err(|e| e.to_string())?,
        };
        self.0.add_version(&row).map_err(|e| e.to_string())
    }

    fn alias_moved(&self, name: &str, alias: &str, version: u32) -> Result<(), String> {
        self.0
            .set_alias(name, alias, version)
            .map_err(|e| e.to_string())
    }

    fn next_version(&self, name: &str) -> Option<u32> {
        self.0.next_version(name).ok().flatten()
    }
}
