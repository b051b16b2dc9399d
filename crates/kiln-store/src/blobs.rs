//! kiln's files in object storage (`object_store_url`): `s3://bucket/prefix`
//! (AWS or any S3-compatible store; endpoint and credentials from the usual
//! `AWS_*` variables), `gs://bucket/prefix`, `az://container/prefix`, or
//! `file:///dir` (a mounted directory).
//!
//! The data directory stays each process's working copy, now a cache of its
//! own: a dataset, checkpoint or model is written there as before, then
//! pushed under the same relative path (`datasets/…`, `checkpoints/…`,
//! `models/<folder>/…`; a job's TensorBoard run under `tensorboard/…` when
//! it ends) before it is recorded in the database; a process
//! that needs a file it does not have pulls it first. What is read is
//! checked as before (datasets' SHA-256, models' `SHA256SUMS`), so a file is
//! the same bytes wherever it is read.
//!
//! The async client runs on a small runtime of its own, so the stores'
//! synchronous callers (trainer threads, blocking tasks) can wait on it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path as Key;
use object_store::ObjectStore;

/// Files pushed to and pulled from an object store, mirroring a local root.
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    /// Where under the bucket kiln's files go (the URL's path).
    prefix: String,
    /// The local working copy: the data directory.
    root: PathBuf,
    /// `None` only while dropped.
    runtime: Option<tokio::runtime::Runtime>,
    url: String,
}

impl Drop for Blobs {
    /// Without waiting: a runtime must not be dropped (blocking) from
    /// async code, where the server's last handle may go.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Blobs({})", self.url)
    }
}

fn io(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("object store: {e}"))
}

impl Blobs {
    /// The store at `url`, mirroring `root`. Checks that it can be listed.
    pub fn open(url: &str, root: &Path) -> Result<Blobs, String> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            format!("object_store_url \"{url}\": no scheme (s3://, gs://, az://, file://)")
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let built: Result<Arc<dyn ObjectStore>, object_store::Error> = match scheme {
            "s3" | "s3a" => object_store::aws::AmazonS3Builder::from_env()
                .with_url(format!("s3://{bucket}"))
                .build()
                .map(|s| Arc::new(s) as _),
            "gs" => object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(format!("gs://{bucket}"))
                .build()
                .map(|s| Arc::new(s) as _),
            "az" | "abfs" | "abfss" => object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(format!("{scheme}://{bucket}"))
                .build()
                .map(|s| Arc::new(s) as _),
            "file" => {
                let dir = format!("/{}", rest.trim_start_matches('/'));
                std::fs::create_dir_all(&dir)
                    .map_err(|e| format!("object_store_url {url}: {e}"))?;
                object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .map(|s| Arc::new(s) as _)
            }
            other => {
                return Err(format!(
                    "object_store_url \"{url}\": \"{other}\" is not a store kiln knows \
                     (s3://, gs://, az://, file://)"
                ))
            }
        };
        let store = built.map_err(|e| format!("object_store_url {url}: {e}"))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kiln-blobs")
            .enable_all()
            .build()
            .map_err(|e| format!("object store runtime: {e}"))?;
        let blobs = Blobs {
            store,
            prefix: if scheme == "file" {
                String::new()
            } else {
                prefix.trim_matches('/').to_string()
            },
            root: root.to_path_buf(),
            runtime: Some(runtime),
            url: url.to_string(),
        };
        // Reachable, with these credentials: refused here rather than at the
        // first upload. One request (a key nobody writes), whatever the
        // bucket holds.
        let (store, probe) = (blobs.store.clone(), blobs.key(Path::new(".kiln-probe")));
        match blobs.run(async move { store.head(&probe).await }) {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(blobs),
            Err(e) => Err(format!("object_store_url {url}: cannot reach it: {e}")),
        }
    }

    /// Runs `fut` on the store's runtime and waits for it (from any thread).
    fn run<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let runtime = self.runtime.as_ref().expect("not dropped");
        runtime.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .expect("the object store's runtime runs while Blobs lives")
    }

    fn key(&self, rel: &Path) -> Key {
        let rel = rel.to_string_lossy();
        match self.prefix.is_empty() {
            true => Key::from(rel.as_ref()),
            false => Key::from(format!("{}/{rel}", self.prefix)),
        }
    }

    /// Uploads `<root>/<rel>` to the store.
    pub fn push(&self, rel: &Path) -> std::io::Result<()> {
        self.put(&self.root.join(rel), rel)
    }

    /// Uploads the file `local` as `rel`.
    fn put(&self, local: &Path, rel: &Path) -> std::io::Result<()> {
        let bytes = std::fs::read(local)?;
        let (store, key) = (self.store.clone(), self.key(rel));
        self.run(async move { store.put(&key, bytes.into()).await })
            .map(|_| ())
            .map_err(io)
    }

    /// Uploads every file under `dir` (anywhere on this machine) as
    /// `<rel_dir>/…` in the store.
    pub fn push_tree(&self, dir: &Path, rel_dir: &Path) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let (local, rel) = (entry.path(), rel_dir.join(entry.file_name()));
            if entry.file_type()?.is_dir() {
                self.push_tree(&local, &rel)?;
            } else {
                self.put(&local, &rel)?;
            }
        }
        Ok(())
    }

    /// Uploads every file under `<root>/<rel_dir>`.
    pub fn push_dir(&self, rel_dir: &Path) -> std::io::Result<()> {
        self.push_tree(&self.root.join(rel_dir), rel_dir)
    }

    /// Downloads `rel` to `<root>/<rel>` (written atomically) if the store
    /// has it; whether it did.
    pub fn pull(&self, rel: &Path) -> std::io::Result<bool> {
        let (store, key) = (self.store.clone(), self.key(rel));
        let got = self.run(async move {
            match store.get(&key).await {
                Ok(found) => found.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        match got.map_err(io)? {
            None => Ok(false),
            Some(bytes) => {
                let path = self.root.join(rel);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                kiln_core::files::write_atomically(&path, &bytes)?;
                Ok(true)
            }
        }
    }

    /// Downloads every file under `rel_dir` the local copy lacks; how many
    /// files the store has there.
    pub fn pull_dir(&self, rel_dir: &Path) -> std::io::Result<usize> {
        let listed = self.list(rel_dir).map_err(io)?;
        for rel in &listed {
            if !self.root.join(rel).is_file() {
                self.pull(rel)?;
            }
        }
        Ok(listed.len())
    }

    /// `rel` if it is not here yet: pulled from the store (a file another
    /// process wrote). Whether it is here now.
    pub fn ensure(&self, rel: &Path) -> bool {
        if self.root.join(rel).is_file() {
            return true;
        }
        match self.pull(rel) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(file = %rel.display(), error = %e, "cannot pull from the object store");
                false
            }
        }
    }

    /// Removes `rel` from the store (a missing one is no error).
    pub fn remove(&self, rel: &Path) -> std::io::Result<()> {
        let (store, key) = (self.store.clone(), self.key(rel));
        match self.run(async move { store.delete(&key).await }) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(io(e)),
        }
    }

    /// The files under `rel_dir` in the store, relative to the root.
    fn list(&self, rel_dir: &Path) -> Result<Vec<PathBuf>, object_store::Error> {
        let (store, prefix) = (self.store.clone(), self.key(rel_dir));
        let strip = match self.prefix.is_empty() {
            true => String::new(),
            false => format!("{}/", self.prefix),
        };
        self.run(async move {
            let metas: Vec<_> = store.list(Some(&prefix)).try_collect().await?;
            Ok(metas
                .into_iter()
                .map(|m| {
                    let key = m.location.to_string();
                    PathBuf::from(key.strip_prefix(&strip).unwrap_or(&key))
                })
                .collect())
        })
    }
}
