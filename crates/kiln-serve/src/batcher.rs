//! One model's dynamic batcher: `instances` worker threads, each owning a copy
//! of the model, share one bounded queue. A free worker takes the oldest
//! request, adds whatever else is queued up to `max_batch_rows`, waits at
//! most `max_queue_delay` for more (0 by default: TEI's policy, no waiting),
//! runs one forward pass and hands each request its own rows back.
//!
//! A full queue is refused at once. Requests whose caller has gone or whose
//! deadline has passed are dropped before compute.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use kiln_train::{ModelArtifact, Output, Predictor};
use tokio::sync::oneshot;

use crate::ServeError;

/// How a loaded version batches its requests (the server's configuration).
#[derive(Debug, Clone, Copy)]
pub struct BatcherConfig {
    /// Rows per forward pass, at most (a single larger request runs alone).
    pub max_batch_rows: usize,
    /// Requests that may wait; more are refused with `QueueFull`.
    pub queue_capacity: usize,
    /// How long a worker holding a partial batch waits for more rows.
    pub max_queue_delay: Duration,
    /// Worker threads per model, each with its own copy of the model.
    pub instances: usize,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        Self {
            max_batch_rows: 1024,
            queue_capacity: 1024,
            max_queue_delay: Duration::ZERO,
            instances: 1,
        }
    }
}

/// One request's answer, with where its time went.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The model's output for the request's rows.
    pub output: Output,
    /// How long the request waited in the queue.
    pub queue_time: Duration,
    /// How long the forward pass that answered it took.
    pub compute_time: Duration,
    /// Rows in the forward pass that served this request.
    pub batch_rows: usize,
}

/// Counters for telemetry, updated lock-free by the workers.
#[derive(Debug, Default)]
pub struct BatcherStats {
    queue_depth: AtomicUsize,
    requests: AtomicU64,
    rejected_full: AtomicU64,
    expired: AtomicU64,
    batches: AtomicU64,
    batch_rows: AtomicU64,
    max_batch_rows: AtomicU64,
    queue_micros: AtomicU64,
    compute_micros: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StatsSnapshot {
    /// Requests waiting now.
    pub queue_depth: usize,
    /// Requests answered.
    pub requests: u64,
    /// Refused because the queue was full.
    pub rejected_full: u64,
    /// Dropped because their deadline passed before compute.
    pub expired: u64,
    /// Forward passes, and the rows they covered.
    pub batches: u64,
    /// Rows in all forward passes so far.
    pub batch_rows: u64,
    /// The largest forward pass so far, in rows.
    pub max_batch_rows: u64,
    /// Summed over answered requests.
    pub queue_seconds: f64,
    /// Summed over forward passes.
    pub compute_seconds: f64,
}

impl BatcherStats {
    /// The counters as they stand.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            queue_depth: self.queue_depth.load(Ordering::Relaxed),
            requests: get(&self.requests),
            rejected_full: get(&self.rejected_full),
            expired: get(&self.expired),
            batches: get(&self.batches),
            batch_rows: get(&self.batch_rows),
            max_batch_rows: get(&self.max_batch_rows),
            queue_seconds: get(&self.queue_micros) as f64 * 1e-6,
            compute_seconds: get(&self.compute_micros) as f64 * 1e-6,
        }
    }
}

struct Request {
    rows: Vec<f32>,
    enqueued: Instant,
    deadline: Option<Instant>,
    reply: oneshot::Sender<Result<Answer, ServeError>>,
}

impl Request {
    /// Nobody will read the answer: the caller left or the deadline passed.
    fn abandoned(&self, now: Instant) -> bool {
        self.reply.is_closed() || self.deadline.is_some_and(|d| d <= now)
    }
}

/// The sending side of a model's workers. Dropping every handle stops them
/// once the queue is drained.
#[derive(Clone)]
pub struct BatcherHandle {
    tx: mpsc::SyncSender<Request>,
    width: usize,
    stats: Arc<BatcherStats>,
}

impl BatcherHandle {
    /// Starts the workers, each building its predictor (on `device`) and
    /// running a warm-up forward pass before this returns.
    pub fn spawn(
        name: &str,
        artifact: &ModelArtifact,
        device: kiln_train::Device,
        config: BatcherConfig,
    ) -> Result<Self, ServeError> {
        let (tx, rx) = mpsc::sync_channel::<Request>(config.queue_capacity.max(1));
        let queue = Arc::new(Mutex::new(Queue { rx, carry: None }));
        let stats = Arc::new(BatcherStats::default());
        let (ready_tx, ready_rx) = mpsc::channel();
        let instances = config.instances.max(1);
        for i in 0..instances {
            let (artifact, device) = (artifact.clone(), device.clone());
            let (queue, stats, ready_tx) = (queue.clone(), stats.clone(), ready_tx.clone());
            thread::Builder::new()
                .name(format!("predict-{name}-{i}"))
                .spawn(move || {
                    let predictor = match Predictor::new(&artifact, &device) {
                        Ok(p) => p,
                        Err(e) => {
                            let _ = ready_tx.send(Err(ServeError::Load(e.to_string())));
                            return;
                        }
                    };
                    predictor.predict(&vec![0.0; predictor.width()]);
                    let _ = ready_tx.send(Ok(()));
                    drop(ready_tx);
                    serve(&predictor, &queue, &stats, &config);
                })
                .map_err(|e| ServeError::Load(e.to_string()))?;
        }
        for _ in 0..instances {
            ready_rx
                .recv()
                .map_err(|_| ServeError::Load("prediction worker died while loading".into()))??;
        }
        Ok(Self {
            tx,
            width: artifact.meta.arch.inputs,
            stats,
        })
    }

    /// Its counters as they stand.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Queues `rows` (row-major, `width` per row) and waits for the answer,
    /// or until `deadline`.
    pub async fn predict(
        &self,
        rows: Vec<f32>,
        deadline: Option<Instant>,
    ) -> Result<Answer, ServeError> {
        if rows.is_empty() || !rows.len().is_multiple_of(self.width) {
            return Err(ServeError::WrongWidth {
                expected: self.width,
                values: rows.len(),
            });
        }
        if deadline.is_some_and(|d| d <= Instant::now()) {
            self.stats.expired.fetch_add(1, Ordering::Relaxed);
            return Err(ServeError::DeadlineExceeded);
        }
        let (reply, answer) = oneshot::channel();
        let request = Request {
            rows,
            enqueued: Instant::now(),
            deadline,
            reply,
        };
        self.stats.queue_depth.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.tx.try_send(request) {
            self.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
            return Err(match e {
                mpsc::TrySendError::Full(_) => {
                    self.stats.rejected_full.fetch_add(1, Ordering::Relaxed);
                    ServeError::QueueFull
                }
                mpsc::TrySendError::Disconnected(_) => ServeError::Stopped,
            });
        }
        let answer = match deadline {
            Some(d) => tokio::time::timeout_at(d.into(), answer)
                .await
                .map_err(|_| ServeError::DeadlineExceeded)?,
            None => answer.await,
        };
        answer.map_err(|_| ServeError::Stopped)?
    }
}

/// The worker loop: take a batch off the shared queue, compute it, answer.
fn serve(
    predictor: &Predictor,
    queue: &Mutex<Queue>,
    stats: &BatcherStats,
    config: &BatcherConfig,
) {
    let width = predictor.width();
    loop {
        let Some(batch) = next_batch(queue, width, stats, config) else {
            return;
        };
        let now = Instant::now();
        let (live, abandoned): (Vec<_>, Vec<_>) =
            batch.into_iter().partition(|r| !r.abandoned(now));
        for request in abandoned {
            stats.expired.fetch_add(1, Ordering::Relaxed);
            let _ = request.reply.send(Err(ServeError::DeadlineExceeded));
        }
        let batch = live;
        if batch.is_empty() {
            continue;
        }
        let started = Instant::now();
        let input: Vec<f32> = batch.iter().flat_map(|r| r.rows.iter().copied()).collect();
        let output = predictor.predict(&input);
        let compute_time = started.elapsed();
        let total_rows = input.len() / width;
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats
            .batch_rows
            .fetch_add(total_rows as u64, Ordering::Relaxed);
        stats
            .max_batch_rows
            .fetch_max(total_rows as u64, Ordering::Relaxed);
        stats
            .compute_micros
            .fetch_add(compute_time.as_micros() as u64, Ordering::Relaxed);
        let mut offset = 0;
        for request in batch {
            let n = request.rows.len() / width;
            let queue_time = started.duration_since(request.enqueued);
            stats.requests.fetch_add(1, Ordering::Relaxed);
            stats
                .queue_micros
                .fetch_add(queue_time.as_micros() as u64, Ordering::Relaxed);
            let answer = Answer {
                output: slice_rows(&output, offset, n),
                queue_time,
                compute_time,
                batch_rows: total_rows,
            };
            offset += n;
            let _ = request.reply.send(Ok(answer));
        }
    }
}

/// The shared receiving side, with the request that did not fit in the
/// last batch (a channel cannot take it back at its front).
struct Queue {
    rx: mpsc::Receiver<Request>,
    carry: Option<Request>,
}

/// Blocks for the oldest request, then takes what else fits in the row budget:
/// what is queued now, and what arrives within `max_queue_delay`. The queue
/// lock is held while gathering, so one worker fills one batch at a time.
/// `None` when every handle is gone and the queue is empty.
fn next_batch(
    queue: &Mutex<Queue>,
    width: usize,
    stats: &BatcherStats,
    config: &BatcherConfig,
) -> Option<Vec<Request>> {
    let mut queue = queue
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let first = match queue.carry.take() {
        Some(r) => r,
        None => queue.rx.recv().ok()?,
    };
    let mut rows = first.rows.len() / width;
    let mut batch = vec![first];
    let gather_until = Instant::now() + config.max_queue_delay;
    while rows < config.max_batch_rows {
        let next = match queue.rx.try_recv() {
            Ok(r) => r,
            Err(mpsc::TryRecvError::Disconnected) => break,
            Err(mpsc::TryRecvError::Empty) => {
                let left = gather_until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match queue.rx.recv_timeout(left) {
                    Ok(r) => r,
                    Err(_) => break,
                }
            }
        };
        let n = next.rows.len() / width;
        if rows + n > config.max_batch_rows {
            queue.carry = Some(next);
            break;
        }
        rows += n;
        batch.push(next);
    }
    stats.queue_depth.fetch_sub(batch.len(), Ordering::Relaxed);
    Some(batch)
}

fn slice_rows(output: &Output, start: usize, n: usize) -> Output {
    match output {
        Output::Values { values, width } => Output::Values {
            values: values[start * width..(start + n) * width].to_vec(),
            width: *width,
        },
        Output::Probabilities { probs, classes } => Output::Probabilities {
            probs: probs[start * classes..(start + n) * classes].to_vec(),
            classes: *classes,
        },
    }
}
