//! Where the registry saves itself. Every version it adds and every alias
//! move is written through a [`RegistryJournal`] before the call that made it
//! returns, so a restart serves the same versions under the same numbers and
//! aliases. The server's journal is kiln-store's model catalog; a registry
//! without one (tests, benchmarks) keeps everything in memory.

use kiln_train::ModelMeta;

/// A version as saved: what a restart needs to serve it again.
pub struct SavedVersion<'a> {
    /// The model's name.
    pub name: &'a str,
    /// Its version number under that name.
    pub version: u32,
    /// The job that trained it; empty for an imported model.
    pub job_id: &'a str,
    /// The folder, under the models directory, that holds its files.
    pub files: &'a str,
    /// Its metadata (kept with the record too, so that a version whose files
    /// are damaged can still be listed).
    pub meta: &'a ModelMeta,
}

/// The registry's durable record of versions and aliases.
pub trait RegistryJournal: Send + Sync {
    /// Records a new version.
    fn version_added(&self, version: &SavedVersion) -> Result<(), String>;
    /// Records that `alias` of `name` now points at `version`.
    fn alias_moved(&self, name: &str, alias: &str, version: u32) -> Result<(), String>;
    /// The number the next version of `name` gets where the journal is
    /// shared with other processes (`None`: this registry's own count).
    fn next_version(&self, name: &str) -> Option<u32> {
        let _ = name;
        None
    }
}
