//! Prometheus metrics: a small hand-written registry rendered in the text
//! exposition format (version 0.0.4) and served at `GET /metrics` on the
//! `metrics_listen` address by a minimal HTTP/1.1 handler.
//!
//! Counters the server updates as it goes (gRPC requests, epoch durations)
//! live in process-wide statics; the job and batcher figures are read from
//! the job store and the model registry at scrape time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln::v1 as pb;
use kiln_serve::ModelRegistry;
use kiln_store::JobStore;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Distinct `method` label values kept; calls to further paths (a client
/// probing random names) are counted under "other".
const MAX_METHODS: usize = 256;

/// Upper bounds of the epoch duration histogram, in seconds.
const EPOCH_BUCKETS: [f64; 14] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
];

/// gRPC requests by (method, code).
static GRPC_REQUESTS: Mutex<BTreeMap<(String, &'static str), u64>> = Mutex::new(BTreeMap::new());
static EPOCH_SECONDS: Mutex<Histogram> = Mutex::new(Histogram::new(&EPOCH_BUCKETS));

/// A cumulative histogram with fixed upper bounds (+Inf implied).
struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative; one per bound).
    counts: [u64; EPOCH_BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    const fn new(bounds: &'static [f64; EPOCH_BUCKETS.len()]) -> Self {
        Self {
            bounds,
            counts: [0; EPOCH_BUCKETS.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| value <= b) {
            self.counts[i] += 1;
        }
        self.sum += value;
        self.count += 1;
    }
}

/// Counts one finished RPC. `method` is the gRPC path without its leading
/// slash ("kiln.v1.JobService/SubmitJob"), `code` the canonical status name.
pub fn grpc_request(method: &str, code: &'static str) {
    let mut map = GRPC_REQUESTS.lock().unwrap();
    let known = map.keys().any(|(m, _)| m == method);
    let methods = || {
        let mut names: Vec<&str> = map.keys().map(|(m, _)| m.as_str()).collect();
        names.dedup();
        names.len()
    };
    let method = if known || methods() < MAX_METHODS {
        method
    } else {
        "other"
    };
    *map.entry((method.to_string(), code)).or_default() += 1;
}

/// Records one training epoch's wall-clock duration.
pub fn observe_epoch(seconds: f64) {
    if seconds.is_finite() && seconds >= 0.0 {
        EPOCH_SECONDS.lock().unwrap().observe(seconds);
    }
}

/// Where the scrape-time figures come from.
pub struct Sources {
    pub store: Arc<JobStore>,
    pub models: Arc<ModelRegistry>,
}

/// A summary's (sum, count) out of a batcher snapshot.
type SumCount = fn(&kiln_serve::StatsSnapshot) -> (f64, u64);

/// Every metric in the text exposition format.
pub fn render(sources: &Sources) -> String {
    let mut out = Exposition::default();

    // Jobs by state, from the store.
    let mut states: BTreeMap<&'static str, u64> = [
        ("queued", 0),
        ("running", 0),
        ("succeeded", 0),
        ("failed", 0),
        ("cancelled", 0),
    ]
    .into_iter()
    .collect();
    for job in sources.store.list(None) {
        let state = match job.state() {
            pb::JobState::Queued | pb::JobState::Unspecified => "queued",
            pb::JobState::Running => "running",
            pb::JobState::Succeeded => "succeeded",
            pb::JobState::Failed => "failed",
            pb::JobState::Cancelled => "cancelled",
        };
        *states.entry(state).or_default() += 1;
    }
    out.family("kiln_jobs", "gauge", "Jobs known to the server, by state.");
    for (state, n) in &states {
        out.sample("kiln_jobs", &[("state", state)], *n as f64);
    }

    // Epoch durations, observed by the runner.
    out.family(
        "kiln_epoch_duration_seconds",
        "histogram",
        "Wall-clock duration of training epochs.",
    );
    {
        let h = EPOCH_SECONDS.lock().unwrap();
        let mut cumulative = 0;
        for (bound, n) in h.bounds.iter().zip(h.counts) {
            cumulative += n;
            out.sample(
                "kiln_epoch_duration_seconds_bucket",
                &[("le", &number(*bound))],
                cumulative as f64,
            );
        }
        out.sample(
            "kiln_epoch_duration_seconds_bucket",
            &[("le", "+Inf")],
            h.count as f64,
        );
        out.sample("kiln_epoch_duration_seconds_sum", &[], h.sum);
        out.sample("kiln_epoch_duration_seconds_count", &[], h.count as f64);
    }

    // gRPC requests, counted by the RPC layer.
    out.family(
        "kiln_grpc_requests_total",
        "counter",
        "Finished gRPC requests, by method and status code.",
    );
    for ((method, code), n) in GRPC_REQUESTS.lock().unwrap().iter() {
        out.sample(
            "kiln_grpc_requests_total",
            &[("method", method), ("code", code)],
            *n as f64,
        );
    }

    // Prediction batchers of the loaded model versions.
    let loaded: Vec<_> = sources
        .models
        .list()
        .into_iter()
        .filter_map(|v| Some((v.name, v.version.to_string(), v.stats?)))
        .collect();
    out.family(
        "kiln_predict_queue_depth",
        "gauge",
        "Prediction requests waiting in a loaded model version's queue.",
    );
    for (name, version, s) in &loaded {
        let labels = [("model", name.as_str()), ("version", version.as_str())];
        out.sample("kiln_predict_queue_depth", &labels, s.queue_depth as f64);
    }
    out.family(
        "kiln_predict_rejected_total",
        "counter",
        "Prediction requests refused (queue_full) or dropped past their deadline (deadline).",
    );
    for (name, version, s) in &loaded {
        for (reason, n) in [("queue_full", s.rejected_full), ("deadline", s.expired)] {
            let labels = [
                ("model", name.as_str()),
                ("version", version),
                ("reason", reason),
            ];
            out.sample("kiln_predict_rejected_total", &labels, n as f64);
        }
    }
    let summaries: [(&str, &str, SumCount); 3] = [
        (
            "kiln_predict_batch_rows",
            "Rows per prediction forward pass (batch size).",
            |s| (s.batch_rows as f64, s.batches),
        ),
        (
            "kiln_predict_queue_seconds",
            "Time answered prediction requests waited in the queue.",
            |s| (s.queue_seconds, s.requests),
        ),
        (
            "kiln_predict_compute_seconds",
            "Time prediction forward passes took.",
            |s| (s.compute_seconds, s.batches),
        ),
    ];
    for (family, help, pick) in summaries {
        out.family(family, "summary", help);
        for (name, version, s) in &loaded {
            let labels = [("model", name.as_str()), ("version", version.as_str())];
            let (sum, count) = pick(s);
            out.sample(&format!("{family}_sum"), &labels, sum);
            out.sample(&format!("{family}_count"), &labels, count as f64);
        }
    }
    out.text
}

#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{key}=\"{}\"", escape_label(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", number(value));
    }
}

fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A sample value or `le` bound as Prometheus writes it.
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{value}")
    }
}

/// Answers scrapes on `listener` until the process exits.
pub async fn serve(listener: TcpListener, sources: Arc<Sources>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let sources = sources.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &sources).await {
                tracing::debug!(error = %e, "metrics: connection failed");
            }
        });
    }
}

/// Largest request head read.
const MAX_HEAD: usize = 16 << 10;

/// Answers one request and closes the connection.
async fn handle(mut stream: TcpStream, sources: &Sources) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 2048];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            if head.len() > MAX_HEAD {
                return Ok(false);
            }
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok(false);
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(true)
    })
    .await;
    let complete = match read {
        Ok(result) => result?,
        Err(_) => return Ok(()), // idle client
    };
    let (status, extra, body, send_body) = if !complete {
        ("400 Bad Request", "", "bad request\n".to_string(), true)
    } else {
        let head = String::from_utf8_lossy(&head);
        let mut parts = head.lines().next().unwrap_or("").split(' ');
        let (method, target, version) = (parts.next(), parts.next(), parts.next());
        let path = target.map(|t| t.split('?').next().unwrap_or(""));
        match (method, path, version) {
            (Some(m), Some(p), Some(v)) if v.starts_with("HTTP/1.") => match (m, p) {
                ("GET" | "HEAD", "/metrics") => ("200 OK", "", render(sources), m == "GET"),
                (_, "/metrics") => (
                    "405 Method Not Allowed",
                    "Allow: GET, HEAD\r\n",
                    "method not allowed\n".into(),
                    true,
                ),
                _ => (
                    "404 Not Found",
                    "",
                    "not found: try /metrics\n".into(),
                    m != "HEAD",
                ),
            },
            _ => ("400 Bad Request", "", "bad request\n".into(), true),
        }
    };
    let content_type = if status.starts_with("200") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if send_body {
        response.extend_from_slice(body.as_bytes());
    }
    stream.write_all(&response).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_numbers_written_as_prometheus_does() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(3.0), "3");
        let mut e = Exposition::default();
        e.family("x_total", "counter", "Line one\nline two.");
        e.sample("x_total", &[("method", "a/\"b\"")], 2.0);
        assert_eq!(
            e.text,
            "# HELP x_total Line one\\nline two.\n# TYPE x_total counter\nx_total{method=\"a/\\\"b\\\"\"} 2\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_inf() {
        let mut h = Histogram::new(&EPOCH_BUCKETS);
        h.observe(0.2);
        h.observe(0.2);
        h.observe(1e6);
        assert_eq!(h.count, 3);
        assert_eq!(h.counts.iter().sum::<u64>(), 2, "1e6 lands only in +Inf");
    }
}
