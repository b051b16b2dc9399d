//! Uploaded datasets under `<data_dir>/datasets`: `<id>.csv` as uploaded, or
//! `<id>.npy` (NumPy arrays combined into one float32 matrix), next to
//! `<id>.json`, the metadata. Files are written to a temporary name, synced,
//! then renamed, so a crash never leaves a half-written dataset behind a valid id.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use kiln_core::data::Table;
use kiln_core::{npy, FieldError};
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
    #[serde(default)]
    pub format: DatasetFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetFormat {
    #[default]
    Csv,
    Npy,
}

impl DatasetFormat {
    fn extension(self) -> &'static str {
        match self {
            DatasetFormat::Csv => "csv",
            DatasetFormat::Npy => "npy",
        }
    }
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
                    Ok(Ok(meta)) if dir.join(data_file(&meta)).exists() => {
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

    /// Validates a CSV (header, rectangular rows) and stores it as uploaded.
    pub fn put_csv(&self, name: &str, csv: &[u8]) -> Result<DatasetMeta, DatasetError> {
        let table = Table::from_csv(csv)?;
        self.put(name, DatasetFormat::Csv, &table, csv)
    }

    /// Reads named `.npy` arrays into columns (see `Table::from_npy_arrays`)
    /// and stores them as one float32 matrix.
    pub fn put_npy(
        &self,
        name: &str,
        arrays: &[(String, Vec<u8>)],
    ) -> Result<DatasetMeta, DatasetError> {
        let table = Table::from_npy_arrays(arrays)?;
        let values = table.to_numbers().expect("arrays give numbers");
        let file = npy::write_f32_2d(values, table.rows(), table.columns.len());
        self.put(name, DatasetFormat::Npy, &table, &file)
    }

    fn put(
        &self,
        name: &str,
        format: DatasetFormat,
        table: &Table,
        file: &[u8],
    ) -> Result<DatasetMeta, DatasetError> {
        let meta = DatasetMeta {
            id: format!("ds-{}", uuid::Uuid::new_v4().simple()),
            name: if name.is_empty() {
                "dataset".into()
            } else {
                name.into()
            },
            columns: table.columns.clone(),
            rows: table.rows() as u64,
            size_bytes: file.len() as u64,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            format,
        };
        write_atomically(&self.dir.join(data_file(&meta)), file)?;
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
        let bytes = fs::read(self.dir.join(data_file(&meta)))?;
        Ok(match meta.format {
            DatasetFormat::Csv => Table::from_csv(&bytes)?,
            DatasetFormat::Npy => {
                let matrix = npy::read(&format!("dataset {}", meta.id), &bytes)?;
                Table::from_numbers(meta.columns.clone(), matrix.values)?
            }
        })
    }
}

fn data_file(meta: &DatasetMeta) -> String {
    format!("{}.{}", meta.id, meta.format.extension())
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
        let meta = store
            .put_csv("rings", b"x,y,label\n1,2,a\n3,4,b\n")
            .unwrap();
        assert_eq!(meta.columns, ["x", "y", "label"]);
        assert_eq!(meta.rows, 2);
        assert_eq!(store.load(&meta.id).unwrap().rows(), 2);
        let reopened = DatasetStore::open(&dir).unwrap();
        assert_eq!(reopened.get(&meta.id).unwrap(), meta);
        assert_eq!(reopened.list(), vec![meta]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn stores_npy_arrays_as_one_matrix() {
        let dir = temp_dir("npy");
        let store = DatasetStore::open(&dir).unwrap();
        let x = npy::write_f32_2d(&[1.0, 2.0, 3.0, 4.0], 2, 2);
        let y = npy::write_f32_2d(&[7.0, 9.0], 2, 1);
        let meta = store
            .put_npy("arrays", &[("x".into(), x), ("y".into(), y)])
            .unwrap();
        assert_eq!(meta.columns, ["x[0]", "x[1]", "y[0]"]);
        assert_eq!((meta.rows, meta.format), (2, DatasetFormat::Npy));
        let reopened = DatasetStore::open(&dir).unwrap();
        let table = reopened.load(&meta.id).unwrap();
        assert_eq!(table.columns, meta.columns);
        assert_eq!(table.to_numbers().unwrap(), [1.0, 2.0, 7.0, 3.0, 4.0, 9.0]);
        let err = store
            .put_npy("bad", &[("x".into(), b"nope".to_vec())])
            .unwrap_err();
        assert!(err
            .to_string()
            .starts_with("arrays[\"x\"]: not a .npy file"));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn rejects_malformed_csv_and_unknown_ids() {
        let dir = temp_dir("bad");
        let store = DatasetStore::open(&dir).unwrap();
        let err = store.put_csv("bad", b"a,b\n1,2,3\n").unwrap_err();
        assert_eq!(err.to_string(), "row 1: has 3 fields, the header has 2");
        assert!(store.list().is_empty());
        assert!(matches!(store.get("ds-x"), Err(DatasetError::NotFound(_))));
        fs::remove_dir_all(dir).unwrap();
    }
}
