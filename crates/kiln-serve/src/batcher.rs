//! One model's prediction worker: a dedicated thread that owns the predictor
//! and merges whatever requests are queued when it becomes free into one
//! forward pass of at most `max_batch_rows` rows (TEI's policy: no waiting).
//! The queue is bounded; a full queue is refused at once.

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use kiln_train::{ModelArtifact, Output, Predictor};
use tokio::sync::oneshot;

use crate::ServeError;

#[derive(Debug, Clone, Copy)]
pub struct BatcherConfig {
    /// Rows per forward pass, at most (a single larger request runs alone).
    pub max_batch_rows: usize,
    /// Requests that may wait; more are refused with `QueueFull`.
    pub queue_capacity: usize,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        Self {
            max_batch_rows: 1024,
            queue_capacity: 1024,
        }
    }
}

/// One request's answer, with where its time went.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub output: Output,
    pub queue_time: Duration,
    pub compute_time: Duration,
    /// Rows in the forward pass that served this request.
    pub batch_rows: usize,
}

struct Request {
    rows: Vec<f32>,
    enqueued: Instant,
    reply: oneshot::Sender<Answer>,
}

/// The sending side of a model's worker. Dropping every handle stops the worker.
#[derive(Clone)]
pub struct BatcherHandle {
    tx: mpsc::SyncSender<Request>,
    width: usize,
}

impl BatcherHandle {
    /// Starts the worker thread, builds the predictor there (on `device`) and
    /// runs a warm-up forward pass before returning.
    pub fn spawn(
        name: &str,
        artifact: ModelArtifact,
        device: kiln_train::Device,
        config: BatcherConfig,
    ) -> Result<Self, ServeError> {
        let (tx, rx) = mpsc::sync_channel::<Request>(config.queue_capacity);
        let (ready_tx, ready_rx) = mpsc::channel();
        let width = artifact.meta.arch.inputs;
        thread::Builder::new()
            .name(format!("predict-{name}"))
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
                serve(&predictor, &rx, config.max_batch_rows);
            })
            .map_err(|e| ServeError::Load(e.to_string()))?;
        ready_rx
            .recv()
            .map_err(|_| ServeError::Load("prediction worker died while loading".into()))??;
        Ok(Self { tx, width })
    }

    /// Queues `rows` (row-major, `width` per row) and waits for the answer.
    pub async fn predict(&self, rows: Vec<f32>) -> Result<Answer, ServeError> {
        if rows.is_empty() || !rows.len().is_multiple_of(self.width) {
            return Err(ServeError::WrongWidth {
                expected: self.width,
                values: rows.len(),
            });
        }
        let (reply, answer) = oneshot::channel();
        let request = Request {
            rows,
            enqueued: Instant::now(),
            reply,
        };
        self.tx.try_send(request).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => ServeError::QueueFull,
            mpsc::TrySendError::Disconnected(_) => ServeError::Stopped,
        })?;
        answer.await.map_err(|_| ServeError::Stopped)
    }
}

/// The worker loop: block for one request, take what else is queued up to the
/// row budget, run one forward pass, hand each request its own rows back.
fn serve(predictor: &Predictor, rx: &mpsc::Receiver<Request>, max_rows: usize) {
    let width = predictor.width();
    let mut carry: Option<Request> = None;
    loop {
        let first = match carry.take() {
            Some(r) => r,
            None => match rx.recv() {
                Ok(r) => r,
                Err(_) => return,
            },
        };
        let mut batch = vec![first];
        let mut rows = batch[0].rows.len() / width;
        while let Ok(next) = rx.try_recv() {
            let n = next.rows.len() / width;
            if rows + n > max_rows {
                carry = Some(next);
                break;
            }
            rows += n;
            batch.push(next);
        }
        // Requests whose caller has gone are not computed.
        batch.retain(|r| !r.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let started = Instant::now();
        let input: Vec<f32> = batch.iter().flat_map(|r| r.rows.iter().copied()).collect();
        let output = predictor.predict(&input);
        let compute_time = started.elapsed();
        let total_rows = input.len() / width;
        let mut offset = 0;
        for request in batch {
            let n = request.rows.len() / width;
            let answer = Answer {
                output: slice_rows(&output, offset, n),
                queue_time: started.duration_since(request.enqueued),
                compute_time,
                batch_rows: total_rows,
            };
            offset += n;
            let _ = request.reply.send(answer);
        }
    }
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
