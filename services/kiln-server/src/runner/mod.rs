//! Runs queued jobs: `max_concurrent_jobs` trainer threads per device (one by
//! default, so one job trains per device at a time) sharing the device's
//! queue; the rest wait QUEUED, in submission order. A finished
//! job's best model is written to the data directory and registered for
//! Predict before its final event is published.
//!
//! `job.rs` is one job's life on a trainer thread, step by step; `events.rs`
//! turns the trainer's reports into the job's recorded events.

mod events;
mod job;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Duration;

use kiln_core::spec::DeviceChoice;
use kiln_serve::ModelRegistry;
use kiln_store::JobStore;
use kiln_train::{Checkpoint, Device, ModelArtifact};

use crate::placement::{self, DeviceLoad, ServeDevice};

pub use crate::queued_job::QueuedJob;
pub use events::failed;

pub struct Runner {
    queues: Mutex<HashMap<String, mpsc::Sender<QueuedJob>>>,
    context: Arc<Context>,
    /// Trainer threads per device (the `max_concurrent_jobs` config key).
    threads_per_device: usize,
}

struct Context {
    store: Arc<JobStore>,
    models: Arc<ModelRegistry>,
    /// Where finished jobs' models are served.
    serve_device: ServeDevice,
    /// Jobs queued or running on each device, for DEVICE_AUTO's placement.
    load: DeviceLoad,
    models_dir: PathBuf,
    /// Root of the jobs' TensorBoard logs; `None`: off.
    tensorboard_dir: Option<PathBuf>,
    checkpoints: Checkpoints,
    /// Set by a shutdown: running jobs checkpoint and go back to QUEUED,
    /// queued ones stay queued.
    suspend: AtomicBool,
    /// Jobs in [`Context::run`] now; a shutdown waits for none.
    active: (Mutex<usize>, Condvar),
    /// The shared mode: jobs whose lease this process lost while it ran
    /// them; they stop at their next poll and write nothing more.
    lost: Mutex<HashSet<String>>,
    /// Notified when a job leaves this runner (room for the next).
    room: (Mutex<()>, Condvar),
    /// This process serves what it trains (the serve role); a trainer-only
    /// process unloads each model once it is registered.
    serves: AtomicBool,
}

/// Where training checkpoints live (`<data_dir>/checkpoints/<job id>.ckpt`,
/// and in the object store when there is one) and how often they are written.
#[derive(Clone)]
pub struct Checkpoints {
    pub dir: PathBuf,
    /// Epochs between checkpoints; 0: only on suspension.
    pub every_epochs: u32,
    /// Object storage: a checkpoint written here is pushed, one another
    /// trainer wrote is pulled.
    pub blobs: Option<Arc<kiln_store::Blobs>>,
}

impl Checkpoints {
    /// The shared mode, as a trainer takes a job: the job's checkpoint here
    /// made the store's (pulled, or a stale copy of an earlier attempt
    /// removed). An error leaves it unknown: the job is not to run now.
    pub fn refresh(&self, job_id: &str) -> std::io::Result<()> {
        let Some(blobs) = &self.blobs else {
            return Ok(());
        };
        if !blobs.pull(&Self::relative(job_id))? {
            let _ = std::fs::remove_file(self.path(job_id));
        }
        Ok(())
    }
}

impl Checkpoints {
    /// The job's checkpoint file.
    pub fn path(&self, job_id: &str) -> PathBuf {
        self.dir.join(format!("{job_id}.ckpt"))
    }

    /// Its path relative to the data directory (its key in the object store).
    fn relative(job_id: &str) -> PathBuf {
        PathBuf::from("checkpoints").join(format!("{job_id}.ckpt"))
    }

    /// The job's checkpoint; `None` when it has none. A file that is
    /// corrupted or of another format is reported and ignored.
    fn load(&self, job_id: &str) -> Option<Checkpoint> {
        let path = self.path(job_id);
        match Checkpoint::load(&path) {
            Ok(c) => Some(c),
            Err(kiln_train::CheckpointError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                None
            }
            Err(e) => {
                tracing::warn!(job = %job_id, error = %e, path = %path.display(), "checkpoint ignored");
                None
            }
        }
    }

    fn save(&self, job_id: &str, checkpoint: &Checkpoint) -> bool {
        let saved = checkpoint
            .save(&self.path(job_id))
            .map_err(|e| e.to_string());
        let stored = saved.and_then(|()| match &self.blobs {
            Some(blobs) => blobs
                .push(&Self::relative(job_id))
                .map_err(|e| e.to_string()),
            None => Ok(()),
        });
        match stored {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(job = %job_id, error = %e, "checkpoint not written");
                false
            }
        }
    }

    fn remove(&self, job_id: &str) {
        let _ = std::fs::remove_file(self.path(job_id));
        if let Some(blobs) = &self.blobs {
            let _ = blobs.remove(&Self::relative(job_id));
        }
    }
}

impl Runner {
    pub fn new(
        store: Arc<JobStore>,
        models: Arc<ModelRegistry>,
        serve_device: ServeDevice,
        models_dir: PathBuf,
        tensorboard_dir: Option<PathBuf>,
        checkpoints: Checkpoints,
    ) -> Self {
        Self {
            queues: Mutex::default(),
            threads_per_device: 1,
            context: Arc::new(Context {
                store,
                models,
                serve_device,
                load: DeviceLoad::default(),
                models_dir,
                tensorboard_dir,
                checkpoints,
                suspend: AtomicBool::new(false),
                active: Default::default(),
                lost: Mutex::default(),
                room: Default::default(),
                serves: AtomicBool::new(true),
            }),
        }
    }

    /// For a shutdown: running jobs stop at their next batch, write a
    /// checkpoint and go back to QUEUED; queued jobs are not started.
    pub fn suspend_all(&self) {
        self.context.suspend.store(true, Ordering::SeqCst);
    }

    /// Waits until no job is running (after [`suspend_all`](Self::suspend_all)),
    /// at most `timeout`; whether none is.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let (count, idle) = &self.context.active;
        let count = count.lock().unwrap();
        let (count, _) = idle.wait_timeout_while(count, timeout, |n| *n > 0).unwrap();
        *count == 0
    }

    /// Lets up to `jobs` jobs train at once on each device (at least 1): the
    /// number of trainer threads each device's queue gets.
    pub fn with_max_concurrent_jobs(mut self, jobs: usize) -> Self {
        self.threads_per_device = jobs.max(1);
        self
    }

    pub fn checkpoints(&self) -> Checkpoints {
        self.context.checkpoints.clone()
    }

    /// Whether models trained here stay loaded for Predict (the serve role).
    pub fn with_serving(self, serves: bool) -> Self {
        self.context.serves.store(serves, Ordering::SeqCst);
        self
    }

    /// Whether a shutdown began ([`suspend_all`](Self::suspend_all)).
    pub fn suspending(&self) -> bool {
        self.context.suspend.load(Ordering::SeqCst)
    }

    /// Jobs queued here or running here now.
    pub fn jobs_in_hand(&self) -> usize {
        self.context.load.total()
    }

    /// Jobs that train here at once: `max_concurrent_jobs` on each device.
    pub fn capacity(&self) -> usize {
        self.threads_per_device * kiln_train::device::cuda_device_count().max(1)
    }

    /// Waits until a job leaves this runner, at most `timeout`.
    pub fn wait_for_room(&self, timeout: Duration) {
        let (lock, room) = &self.context.room;
        let guard = lock.lock().unwrap();
        let _ = room.wait_timeout(guard, timeout).unwrap();
    }

    /// The shared mode: this process's lease on a job it runs ended; the job
    /// stops at its next poll, writing nothing more (another trainer has it).
    pub fn lose(&self, job_id: &str) {
        self.context.lost.lock().unwrap().insert(job_id.to_string());
    }

    /// The device a job with `choice` trains on and its name: for
    /// DEVICE_AUTO the least busy visible GPU (see [`crate::placement`]).
    pub fn place(&self, choice: DeviceChoice) -> Result<(Device, String), String> {
        let gpus = kiln_train::device::cuda_device_count();
        kiln_train::device::resolve(placement::place(choice, gpus, &self.context.load))
    }

    /// Queues a job on its device's trainer threads (started on first use).
    pub fn submit(&self, job: QueuedJob) {
        self.context.load.add(&job.device_name);
        let mut queues = self.queues.lock().unwrap();
        let queue = queues.entry(job.device_name.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel::<QueuedJob>();
            // The device's trainer threads take jobs from one queue, in order.
            let rx = Arc::new(Mutex::new(rx));
            for n in 0..self.threads_per_device {
                let context = self.context.clone();
                let rx = rx.clone();
                let name = if self.threads_per_device == 1 {
                    format!("train-{}", job.device_name)
                } else {
                    format!("train-{}-{n}", job.device_name)
                };
                std::thread::Builder::new()
                    .name(name)
                    .spawn(move || loop {
                        // Hold the lock only while taking a job, not while training it.
                        let next = rx.lock().unwrap().recv();
                        match next {
                            Ok(job) => {
                                let (id, device) = (job.id.clone(), job.device_name.clone());
                                context.run(job);
                                // The shared mode: the job ended here or
                                // went back to the queue for any trainer.
                                context.store.release_lease(&id);
                                context.lost.lock().unwrap().remove(&id);
                                context.load.done(&device);
                                context.room.1.notify_all();
                            }
                            Err(_) => return,
                        }
                    })
                    .expect("spawn trainer thread");
            }
            tx
        });
        queue
            .send(job)
            .expect("trainer threads live as long as the runner");
    }
}

impl Context {
    fn run(&self, job: QueuedJob) {
        if self.suspend.load(Ordering::SeqCst) {
            return; // shutting down: it stays QUEUED and runs after the restart
        }
        *self.active.0.lock().unwrap() += 1;
        // Counted down however run_job ends, a panic outside training included.
        struct Done<'a>(&'a (Mutex<usize>, Condvar));
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                let mut count = self.0 .0.lock().unwrap_or_else(|e| e.into_inner());
                *count -= 1;
                self.0 .1.notify_all();
            }
        }
        let _done = Done(&self.active);
        self.run_job(job);
    }

    /// Whether this process lost its lease on the job (the shared mode).
    fn is_lost(&self, job_id: &str) -> bool {
        self.lost.lock().unwrap().contains(job_id)
    }

    /// Writes the best model to `<data_dir>/models/<job id>` (one folder per
    /// lease attempt in the shared mode) and serves it; on failure nothing
    /// of it is left. `Err(true)`: for lack of space.
    fn publish(
        &self,
        job: &QueuedJob,
        trained: &kiln_train::Trained,
    ) -> Result<(), (bool, String)> {
        let artifact =
            ModelArtifact::from_trained(trained, &job.data).map_err(|e| (false, e.to_string()))?;
        let files = job.model_files();
        let dir = self.models_dir.join(&files);
        let pushed = || match &self.checkpoints.blobs {
            Some(blobs) => blobs.push_dir(&PathBuf::from("models").join(&files)),
            None => Ok(()),
        };
        // Registered under its files' folder (in the object store first,
        // when there is one); the registry saves the version so that a
        // restart serves it again.
        let published = match artifact.save(&dir) {
            Err(e) => Err((e.is_out_of_space(), e.to_string())),
            Ok(()) if let Err(e) = pushed() => Err((false, format!("model files not stored: {e}"))),
            Ok(()) => self
                .models
                .register(
                    &job.model_name,
                    &job.id,
                    &files,
                    artifact,
                    self.serve_device.device.clone(),
                    &self.serve_device.name,
                )
                .map(|model| {
                    if !self.serves.load(Ordering::SeqCst) {
                        let _ = self.models.unload(&model.name, &model.version.to_string());
                    }
                })
                .map_err(|e| {
                    let full = matches!(e, kiln_serve::ServeError::NotSaved(_))
                        && self.store.write_fault().is_some_and(|f| f.out_of_space);
                    (full, e.to_string())
                }),
        };
        if published.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        published
    }
}
