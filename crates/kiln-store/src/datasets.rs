//! Uploaded datasets: the CSV file and its metadata under `<data_dir>/datasets`.
//! Files are written to a temporary name, synced, then renamed, so a crash
//! never leaves a half-written dataset behind a valid id.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use kiln_core::data::Table;
use kiln_core::FieldError;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetMeta {
    pub id: String,
    pub name: String,
    pub columns: Vec<String>,
    pub rows: u64,
    pub size_bytes: u64,
    /// Seconds since the Unix epoch.
    pub created_unix: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("dataset \"{0}\" not found")]
    NotFound(String),
    #[error("{0}")]
    Invalid(#[from] FieldError),
    #[error("dataset storage: {0}")]
    Io(#[from] std::io::Error),
}

pub struct DatasetStore {
    dir: PathBuf,
    metas: RwLock<HashMap<String, DatasetMeta>>,
}

impl DatasetStore {
    /// Opens (and creates) `dir`, loading the metadata of datasets already there.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, DatasetError> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        let mut metas = HashMap::new();
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "json") {
                match fs::read(&path).map(|b| serde_json::from_slice::<DatasetMeta>(&b)) {
                    Ok(Ok(meta)) if dir.join(format!("{}.csv", meta.id)).exists() => {
                        metas.insert(meta.id.clone(), meta);
                    }
                    _ => {
                        tracing::warn!(path = %path.display(), "skipping unreadable dataset metadata")
                    }
                }
            }
        }
        Ok(Self {
            dir,
            metas: RwLock::new(metas),
        })
    }

    /// Validates a CSV (header, rectangular rows) and stores it.
    pub fn put(&self, name: &str, csv: &[u8]) -> Result<DatasetMeta, DatasetError> {
        let table = Table::from_csv(csv)?;
        let meta = DatasetMeta {
            id: format!("ds-{}", uuid::Uuid::new_v4().simple()),
            name: if name.is_empty() {
                "dataset".into()
            } else {
                name.into()
            },
            columns: table.columns.clone(),
            rows: table.rows() as u64,
            size_bytes: csv.len() as u64,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
        };
        write_atomically(&self.dir.join(format!("{}.csv", meta.id)), csv)?;
        let json = serde_json::to_vec_pretty(&meta).expect("metadata serializes");
        write_atomically(&self.dir.join(format!("{}.json", meta.id)), &json)?;
        self.metas
            .write()
            .unwrap()
            .insert(meta.id.clone(), meta.clone());
        Ok(meta)
    }

    pub fn get(&self, id: &str) -> Result<DatasetMeta, DatasetError> {
        self.metas
            .read()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| DatasetError::NotFound(id.to_string()))
    }

    /// Newest first.
    pub fn list(&self) -> Vec<DatasetMeta> {
        let mut all: Vec<_> = self.metas.read().unwrap().values().cloned().collect();
        all.sort_by(|a, b| (b.created_unix, &b.id).cmp(&(a.created_unix, &a.id)));
        all
    }

    /// Reads and parses a stored dataset.
    pub fn load(&self, id: &str) -> Result<Table, DatasetError> {
        let meta = self.get(id)?;
        let bytes = fs::read(self.dir.join(format!("{}.csv", meta.id)))?;
        Ok(Table::from_csv(&bytes)?)
    }
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kiln-store-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn stores_lists_and_reopens() {
        let dir = temp_dir("reopen");
        let store = DatasetStore::open(&dir).unwrap();
        let meta = store.put("rings", b"x,y,label\n1,2,a\n3,4,b\n").unwrap();
        assert_eq!(meta.columns, ["x", "y", "label"]);
        assert_eq!(meta.rows, 2);
        assert_eq!(store.load(&meta.id).unwrap().rows(), 2);
        let reopened = DatasetStore::open(&dir).unwrap();
        assert_eq!(reopened.get(&meta.id).unwrap(), meta);
        assert_eq!(reopened.list(), vec![meta]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn rejects_malformed_csv_and_unknown_ids() {
        let dir = temp_dir("bad");
        let store = DatasetStore::open(&dir).unwrap();
        let err = store.put("bad", b"a,b\n1,2,3\n").unwrap_err();
        assert_eq!(err.to_string(), "row 1: has 3 fields, the header has 2");
        assert!(store.list().is_empty());
        assert!(matches!(store.get("ds-x"), Err(DatasetError::NotFound(_))));
        fs::remove_dir_all(dir).unwrap();
    }
}
