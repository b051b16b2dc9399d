//! Uploaded datasets under `<data_dir>/datasets`: `<id>.csv` as uploaded, or
//! `<id>.npy` (NumPy arrays combined into one float32 matrix), next to
//! `<id>.json`, the metadata. Files are written to a temporary name, synced,
//! then renamed, so a crash never leaves a half-written dataset behind a valid id.
//!
//! Each file's SHA-256 is recorded in its metadata and checked whenever the
//! dataset is read: a damaged file is reported ([`DatasetError::Corrupt`]),
//! never trained on. With a database ([`DatasetStore::open_with_db`]) the
//! metadata lives in SQLite; the `<id>.json` files are then only read once, to
//! take in datasets stored before the database existed.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use kiln_core::data::Table;
use kiln_core::files::{sha256_hex, write_atomically};
use kiln_core::{npy, FieldError};
use serde::{Deserialize, Serialize};

use crate::storage::Storage;

/// An uploaded dataset as listed and stored (JSON in the database).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetMeta {
    /// Its generated id.
    pub id: String,
    /// The name given at upload.
    pub name: String,
    /// Column names (CSV header, or the arrays of an NPY upload).
    pub columns: Vec<String>,
    /// Data rows.
    pub rows: u64,
    /// The stored file's size.
    pub size_bytes: u64,
    /// Seconds since the Unix epoch.
    pub created_unix: i64,
    /// The nanoseconds within that second: which of two uploads in one
    /// second is the newer (0 for datasets stored before it was kept).
    #[serde(default)]
    pub created_nanos: u32,
    /// CSV or NPY.
    #[serde(default)]
    pub format: DatasetFormat,
    /// Hex SHA-256 of the data file; `None` for datasets stored before checksums.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl DatasetMeta {
    /// Orders datasets by when they were uploaded (the id breaks a tie).
    fn age_key(&self) -> (i64, u32, &str) {
        (self.created_unix, self.created_nanos, &self.id)
    }
}

/// How a dataset's file is encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetFormat {
    /// Comma-separated text with a header.
    #[default]
    Csv,
    /// NumPy `.npy` arrays.
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

/// Why a dataset call failed.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// No dataset with that id.
    #[error("dataset \"{}\" not found", kiln_core::brief(.0))]
    NotFound(String),
    /// The upload is not a readable table (the field says where).
    #[error("{0}")]
    Invalid(#[from] FieldError),
    /// Reading or writing its file failed.
    #[error("dataset storage: {0}")]
    Io(#[from] std::io::Error),
    /// Its file no longer matches its checksum.
    #[error("dataset \"{id}\" is corrupted: {why}; upload it again")]
    Corrupt {
        /// The dataset.
        id: String,
        /// What does not match.
        why: String,
    },
    /// The database failed.
    #[error("dataset storage: {0}")]
    Db(#[from] crate::db::DbError),
}

impl DatasetError {
    /// Whether storing failed for lack of space.
    pub fn is_out_of_space(&self) -> bool {
        match self {
            DatasetError::Io(e) => crate::storage::io_out_of_space(e),
            DatasetError::Db(e) => e.is_out_of_space(),
            _ => false,
        }
    }
}

/// Uploaded datasets: files under the data directory, metadata in storage.
pub struct DatasetStore {
    dir: PathBuf,
    metas: RwLock<HashMap<String, DatasetMeta>>,
    db: Option<Arc<dyn Storage>>,
    /// Object storage, with `dir` as its `datasets/` (the shared mode).
    blobs: Option<Arc<crate::Blobs>>,
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
                    Ok(Ok(meta))
                        if check_dataset_id(&meta.id).is_ok()
                            && is_regular_file(&dir.join(data_file(&meta))) =>
                    {
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
            db: None,
            blobs: None,
        })
    }

    /// Opens `dir` with the metadata kept in `db`; `<id>.json` files of
    /// datasets the database does not know yet are taken in.
    pub fn open_with_db(
        dir: impl Into<PathBuf>,
        db: Arc<dyn Storage>,
    ) -> Result<Self, DatasetError> {
        let mut store = Self::open(dir)?;
        let legacy = std::mem::take(store.metas.get_mut().unwrap());
        let mut metas = HashMap::new();
        for json in db.datasets()? {
            match serde_json::from_str::<DatasetMeta>(&json) {
                Ok(meta) => {
                    metas.insert(meta.id.clone(), meta);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "skipping unreadable dataset metadata in the database")
                }
            }
        }
        for (id, meta) in legacy {
            if let std::collections::hash_map::Entry::Vacant(slot) = metas.entry(id) {
                put_meta(db.as_ref(), &meta)?;
                slot.insert(meta);
            }
        }
        store.metas = RwLock::new(metas);
        store.db = Some(db);
        Ok(store)
    }

    /// Keeps every dataset's file in `blobs` too (pushed before its
    /// metadata is recorded; pulled when a process lacks it).
    pub fn with_blobs(mut self, blobs: Arc<crate::Blobs>) -> Self {
        self.blobs = Some(blobs);
        self
    }

    /// Takes in the datasets another process recorded in a shared database
    /// (their files are in the shared directory); how many were new.
    pub fn sync(&self) -> Result<usize, DatasetError> {
        let Some(db) = self.db.as_ref().filter(|db| db.shared()) else {
            return Ok(0);
        };
        let mut new = 0;
        for json in db.datasets()? {
            let Ok(meta) = serde_json::from_str::<DatasetMeta>(&json) else {
                continue;
            };
            if let std::collections::hash_map::Entry::Vacant(slot) =
                self.metas.write().unwrap().entry(meta.id.clone())
            {
                slot.insert(meta);
                new += 1;
            }
        }
        Ok(new)
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
        if name.chars().count() > MAX_DATASET_NAME_LEN {
            return Err(FieldError::new(
                "name",
                format!("at most {MAX_DATASET_NAME_LEN} characters"),
            )
            .into());
        }
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
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
            created_unix: since_epoch.as_secs() as i64,
            created_nanos: since_epoch.subsec_nanos(),
            format,
            sha256: Some(sha256_hex(file)),
        };
        let path = self.dir.join(data_file(&meta));
        write_atomically(&path, file)?;
        if let Some(blobs) = &self.blobs {
            // In the object store before it is recorded: any process that
            // lists it can read it.
            if let Err(e) = blobs.push(&Path::new("datasets").join(data_file(&meta))) {
                let _ = fs::remove_file(&path);
                return Err(e.into());
            }
        }
        let recorded = match &self.db {
            Some(db) => put_meta(db.as_ref(), &meta),
            None => {
                let json = serde_json::to_vec_pretty(&meta).expect("metadata serializes");
                write_atomically(&self.dir.join(format!("{}.json", meta.id)), &json)
                    .map_err(DatasetError::from)
            }
        };
        if let Err(e) = recorded {
            // Not recorded, so never listed: its file would only take space.
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        self.metas
            .write()
            .unwrap()
            .insert(meta.id.clone(), meta.clone());
        Ok(meta)
    }

    /// A dataset's metadata.
    pub fn get(&self, id: &str) -> Result<DatasetMeta, DatasetError> {
        check_dataset_id(id).map_err(|m| FieldError::new("dataset_id", m))?;
        let known = || self.metas.read().unwrap().get(id).cloned();
        // The shared mode: one uploaded on another replica a moment ago.
        let meta = known().or_else(|| self.sync().ok().and_then(|_| known()));
        meta.ok_or_else(|| DatasetError::NotFound(id.to_string()))
    }

    /// The newest dataset uploaded under `name`.
    pub fn newest_named(&self, name: &str) -> Option<DatasetMeta> {
        // The shared mode: what the other replicas uploaded counts too.
        let _ = self.sync();
        self.metas
            .read()
            .unwrap()
            .values()
            .filter(|m| m.name == name)
            .max_by(|a, b| a.age_key().cmp(&b.age_key()))
            .cloned()
    }

    /// Newest first.
    pub fn list(&self) -> Vec<DatasetMeta> {
        let mut all: Vec<_> = self.metas.read().unwrap().values().cloned().collect();
        all.sort_by(|a, b| b.age_key().cmp(&a.age_key()));
        all
    }

    /// Reads and parses a stored dataset, checking it against its checksum.
    pub fn load(&self, id: &str) -> Result<Table, DatasetError> {
        let (meta, bytes) = self.read_file(id)?;
        Ok(match meta.format {
            DatasetFormat::Csv => Table::from_csv(&bytes)?,
            DatasetFormat::Npy => {
                let matrix = npy::read(&format!("dataset {}", meta.id), &bytes)?;
                Table::from_numbers(meta.columns.clone(), matrix.values)?
            }
        })
    }

    /// A stored dataset's metadata and file (the CSV as uploaded, or the
    /// `.npy` matrix), checked against its checksum.
    pub fn read_file(&self, id: &str) -> Result<(DatasetMeta, Vec<u8>), DatasetError> {
        let meta = self.get(id)?;
        let path = self.dir.join(data_file(&meta));
        if let Some(blobs) = &self.blobs {
            blobs.ensure(&Path::new("datasets").join(data_file(&meta)));
        }
        // Only regular files inside the datasets directory: a symlink put
        // there could point anywhere on the server.
        if fs::symlink_metadata(&path).is_ok_and(|m| !m.is_file()) {
            tracing::warn!(path = %path.display(), "refusing a dataset file that is not a regular file");
            return Err(DatasetError::NotFound(id.to_string()));
        }
        let corrupt = |why: String| DatasetError::Corrupt {
            id: meta.id.clone(),
            why,
        };
        // Relative to the data directory: messages never show server paths.
        let shown = format!("datasets/{}", data_file(&meta));
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(corrupt(format!("its file {shown} is missing")))
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(expected) = &meta.sha256 {
            let actual = sha256_hex(&bytes);
            if &actual != expected {
                return Err(corrupt(format!(
                    "the SHA-256 of {shown} is {actual}, but {expected} was recorded when it was stored"
                )));
            }
        }
        Ok((meta, bytes))
    }
}

fn put_meta(db: &dyn Storage, meta: &DatasetMeta) -> Result<(), DatasetError> {
    let json = serde_json::to_string(meta).expect("metadata serializes");
    Ok(db.put_dataset(&meta.id, &meta.name, meta.created_unix, &json)?)
}

/// Longest dataset name (the label given at upload) accepted.
pub const MAX_DATASET_NAME_LEN: usize = 128;

/// Longest dataset id accepted.
pub const MAX_DATASET_ID_LEN: usize = 128;

/// Dataset ids are names inside the datasets directory, never paths: 1 to
/// [`MAX_DATASET_ID_LEN`] ASCII letters, digits, '-' and '_' (so no '/', no
/// "..", nothing absolute). The server makes them as `ds-<hex>`.
pub fn check_dataset_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_DATASET_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be a dataset id (1 to {MAX_DATASET_ID_LEN} letters, digits, '-' or '_', \
             as UploadDataset returns), not a path"
        ))
    }
}

/// A regular file, not a symlink (nor a directory).
fn is_regular_file(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_file())
}

fn data_file(meta: &DatasetMeta) -> String {
    format!("{}.{}", meta.id, meta.format.extension())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

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
        let (read, bytes) = store.read_file(&meta.id).unwrap();
        assert_eq!(
            (read, &bytes[..]),
            (meta.clone(), &b"x,y,label\n1,2,a\n3,4,b\n"[..])
        );
        let reopened = DatasetStore::open(&dir).unwrap();
        assert_eq!(reopened.get(&meta.id).unwrap(), meta);
        assert_eq!(reopened.list(), vec![meta]);
        fs::remove_dir_all(dir).unwrap();
    }

    /// Uploads a few microseconds apart (one second, as the database keeps
    /// it): the name means the last one, every time.
    #[test]
    fn a_name_means_its_newest_upload() {
        let dir = temp_dir("newest");
        let store = DatasetStore::open(&dir).unwrap();
        for round in 0..20 {
            let first = store.put_csv("same", b"a,b\n1,2\n").unwrap();
            let second = store.put_csv("same", b"a,b\n3,4\n").unwrap();
            assert_eq!(
                store.newest_named("same").unwrap().id,
                second.id,
                "round {round}"
            );
            assert_eq!(store.list()[0].id, second.id);
            assert_ne!(first.id, second.id);
        }
        assert!(store.newest_named("other").is_none());
    }

    #[test]
    fn refuses_a_dataset_name_over_the_limit() {
        let dir = temp_dir("long-name");
        let store = DatasetStore::open(&dir).unwrap();
        let long = "n".repeat(MAX_DATASET_NAME_LEN + 1);
        let err = store.put_csv(&long, b"x,y\n1,2\n").unwrap_err();
        assert!(
            matches!(&err, DatasetError::Invalid(f) if f.field == "name"),
            "{err}"
        );
        assert!(store.list().is_empty());
        let ok = "n".repeat(MAX_DATASET_NAME_LEN);
        assert_eq!(store.put_csv(&ok, b"x,y\n1,2\n").unwrap().name, ok);
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
    fn keeps_metadata_in_the_database_and_detects_corruption() {
        let dir = temp_dir("db");
        let db = Arc::new(Db::open_in_memory().unwrap());
        // A dataset stored before the database is taken in.
        let legacy = DatasetStore::open(&dir)
            .unwrap()
            .put_csv("old", b"a,b\n1,2\n")
            .unwrap();
        let store = DatasetStore::open_with_db(&dir, db.clone()).unwrap();
        let meta = store.put_csv("rings", b"x,y\n1,2\n3,4\n").unwrap();
        assert!(!dir.join(format!("{}.json", meta.id)).exists());
        let reopened = DatasetStore::open_with_db(&dir, db).unwrap();
        assert_eq!(reopened.get(&meta.id).unwrap(), meta);
        assert_eq!(reopened.get(&legacy.id).unwrap(), legacy);
        assert_eq!(reopened.load(&meta.id).unwrap().rows(), 2);

        let file = dir.join(format!("{}.csv", meta.id));
        fs::write(&file, b"x,y\n1,2\n3,5\n").unwrap();
        let err = reopened.load(&meta.id).unwrap_err();
        assert!(matches!(err, DatasetError::Corrupt { .. }), "{err}");
        assert!(
            err.to_string().contains("is corrupted: the SHA-256 of"),
            "{err}"
        );
        fs::remove_file(&file).unwrap();
        let err = reopened.load(&meta.id).unwrap_err();
        assert!(err.to_string().contains("is missing"), "{err}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn ids_are_never_paths_and_symlinks_are_refused() {
        let dir = temp_dir("paths");
        let store = DatasetStore::open(&dir).unwrap();
        for id in ["../x", "..", "/etc/passwd", "a/b", "ds-1.csv", "", "a\\b"] {
            let err = store.get(id).unwrap_err();
            assert!(matches!(err, DatasetError::Invalid(_)), "{id:?}: {err}");
            assert!(err
                .to_string()
                .starts_with("dataset_id: must be a dataset id"));
            assert!(matches!(store.load(id), Err(DatasetError::Invalid(_))));
        }
        // Metadata planted in the directory: an escaping id, and a data
        // file that is a symlink to a file outside.
        let outside = dir.with_extension("outside.csv");
        fs::write(&outside, b"a,b\n1,2\n").unwrap();
        let meta = |id: &str| {
            format!(
                r#"{{"id":"{id}","name":"x","columns":["a","b"],"rows":1,"size_bytes":8,"created_unix":0}}"#
            )
        };
        fs::write(dir.join("escape.json"), meta("../outside")).unwrap();
        fs::write(dir.join("ds-link.json"), meta("ds-link")).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("ds-link.csv")).unwrap();
        let reopened = DatasetStore::open(&dir).unwrap();
        assert!(reopened.list().is_empty());
        assert!(matches!(
            reopened.get("ds-link"),
            Err(DatasetError::NotFound(_))
        ));
        // A file swapped for a symlink after the store opened.
        let stored = reopened.put_csv("ok", b"a,b\n1,2\n").unwrap();
        let file = dir.join(format!("{}.csv", stored.id));
        fs::remove_file(&file).unwrap();
        std::os::unix::fs::symlink(&outside, &file).unwrap();
        assert!(matches!(
            reopened.load(&stored.id),
            Err(DatasetError::NotFound(_))
        ));
        fs::remove_file(outside).unwrap();
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
