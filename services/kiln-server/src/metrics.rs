//! Prometheus metrics, served at `GET /metrics` on the `metrics_listen`
//! address in the text exposition format (version 0.0.4).
//!
//! The `prometheus` crate keeps the registry and writes the text. Counters the
//! server updates as it goes (gRPC requests, epoch durations) are
//! process-wide statics registered in it; the job and batcher figures are
//! read from the job store and the model registry at scrape time by
//! [`Scrape`], a custom collector. hyper serves the HTTP/1.1 side.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};

use kiln::v1 as pb;
use kiln_serve::{ModelRegistry, StatsSnapshot};
use kiln_store::JobStore;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry, TextEncoder};
use tokio::net::TcpListener;

/// Distinct `method` label values kept; calls to further paths (a client
/// probing random names) are counted under "other".
const MAX_METHODS: usize = 256;

/// Upper bounds of the epoch duration histogram, in seconds.
const EPOCH_BUCKETS: [f64; 14] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
];

static GRPC_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let opts = Opts::new(
        "kiln_grpc_requests_total",
        "Finished gRPC requests, by method and status code.",
    );
    IntCounterVec::new(opts, &["method", "code"]).expect("valid metric")
});
static GRPC_METHODS: MethodCap = MethodCap(Mutex::new(BTreeSet::new()));
static UNSEEN_CATEGORIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let opts = Opts::new(
        "kiln_unseen_categories_total",
        "Categories Predict met that the model did not see in training, encoded as all-zero one-hots (UNSEEN_IGNORE), by model.",
    );
    IntCounterVec::new(opts, &["model"]).expect("valid metric")
});
static SCORINGS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let opts = Opts::new(
        "kiln_scorings_total",
        "Batch scorings (ScoreDataset) that ended, by model and outcome (finished, cancelled, failed).",
    );
    IntCounterVec::new(opts, &["model", "outcome"]).expect("valid metric")
});
static SCORED_ROWS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let opts = Opts::new(
        "kiln_scored_rows_total",
        "Rows batch scoring (ScoreDataset) ran through a model, by model.",
    );
    IntCounterVec::new(opts, &["model"]).expect("valid metric")
});
static MISSING_FILLED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let opts = Opts::new(
        "kiln_missing_values_filled_total",
        "Missing cells Predict filled with the model's training-time fill values, by model.",
    );
    IntCounterVec::new(opts, &["model"]).expect("valid metric")
});
/// The `model` label values of the Predict counters, capped like methods.
static MODELS: MethodCap = MethodCap(Mutex::new(BTreeSet::new()));
static EPOCH_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    let opts = HistogramOpts::new(
        "kiln_epoch_duration_seconds",
        "Wall-clock duration of training epochs.",
    )
    .buckets(EPOCH_BUCKETS.to_vec());
    Histogram::with_opts(opts).expect("valid metric")
});

/// The `method` label values handed out so far, at most [`MAX_METHODS`]:
/// each distinct value is a series kept for the life of the process.
struct MethodCap(Mutex<BTreeSet<String>>);

impl MethodCap {
    /// `method`, or "other" once the cap is reached by other names.
    fn label<'a>(&self, method: &'a str) -> &'a str {
        let mut known = self.0.lock().unwrap();
        if known.contains(method) {
            method
        } else if known.len() < MAX_METHODS {
            known.insert(method.to_owned());
            method
        } else {
            "other"
        }
    }
}

/// Counts one finished RPC. `method` is the gRPC path without its leading
/// slash ("kiln.v1.JobService/SubmitJob"), `code` the canonical status name.
pub fn grpc_request(method: &str, code: &'static str) {
    GRPC_REQUESTS
        .with_label_values(&[GRPC_METHODS.label(method), code])
        .inc();
}

/// Counts unseen categories one Predict request encoded as all zeros.
pub fn unseen_categories(model: &str, count: u64) {
    if count > 0 {
        UNSEEN_CATEGORIES
            .with_label_values(&[MODELS.label(model)])
            .inc_by(count);
    }
}

/// Counts a batch scoring that ended: "finished", "cancelled" or "failed".
pub fn scoring_ended(model: &str, outcome: &str) {
    SCORINGS
        .with_label_values(&[MODELS.label(model), outcome])
        .inc();
}

/// Counts rows a batch scoring ran through a model.
pub fn rows_scored(model: &str, rows: u64) {
    SCORED_ROWS
        .with_label_values(&[MODELS.label(model)])
        .inc_by(rows);
}

/// Counts missing cells one Predict request filled.
pub fn missing_filled(model: &str, count: u64) {
    if count > 0 {
        MISSING_FILLED
            .with_label_values(&[MODELS.label(model)])
            .inc_by(count);
    }
}

/// Records one training epoch's wall-clock duration.
pub fn observe_epoch(seconds: f64) {
    if seconds.is_finite() && seconds >= 0.0 {
        EPOCH_SECONDS.observe(seconds);
    }
}

/// Where the scrape-time figures come from.
pub struct Sources {
    pub store: Arc<JobStore>,
    pub models: Arc<ModelRegistry>,
}

/// The registry scraped: the process-wide statics and a [`Scrape`] of
/// `sources`.
fn registry(sources: Arc<Sources>) -> Registry {
    let registry = Registry::new();
    let collectors: [Box<dyn Collector>; 7] = [
        Box::new(GRPC_REQUESTS.clone()),
        Box::new(EPOCH_SECONDS.clone()),
        Box::new(UNSEEN_CATEGORIES.clone()),
        Box::new(MISSING_FILLED.clone()),
        Box::new(SCORINGS.clone()),
        Box::new(SCORED_ROWS.clone()),
        Box::new(Scrape::new(sources)),
    ];
    for collector in collectors {
        registry
            .register(collector)
            .expect("metric names are distinct");
    }
    registry
}

/// Every metric in `registry`, in the text exposition format.
fn render(registry: &Registry) -> prometheus::Result<String> {
    TextEncoder::new().encode_to_string(&registry.gather())
}

/// A summary's (sum, count) out of a batcher snapshot.
type SumCount = fn(&StatsSnapshot) -> (f64, u64);

/// A loaded model version's name, version and batcher figures.
type Loaded = (String, String, StatsSnapshot);

/// Reads the job and batcher figures when scraped: they live in the job
/// store and the model registry, not in the Prometheus registry.
struct Scrape {
    sources: Arc<Sources>,
    jobs: Desc,
    queue_depth: Desc,
    rejected: Desc,
    summaries: [(Desc, SumCount); 3],
}

fn desc(name: &str, help: &str, labels: &[&str]) -> Desc {
    let labels = labels.iter().map(|l| l.to_string()).collect();
    Desc::new(name.into(), help.into(), labels, HashMap::new()).expect("valid metric")
}

impl Scrape {
    fn new(sources: Arc<Sources>) -> Self {
        let model = ["model", "version"];
        Self {
            sources,
            jobs: desc("kiln_jobs", "Jobs known to the server, by state.", &["state"]),
            queue_depth: desc(
                "kiln_predict_queue_depth",
                "Prediction requests waiting in a loaded model version's queue.",
                &model,
            ),
            rejected: desc(
                "kiln_predict_rejected_total",
                "Prediction requests refused (queue_full) or dropped past their deadline (deadline).",
                &["model", "version", "reason"],
            ),
            summaries: [
                (
                    desc(
                        "kiln_predict_batch_rows",
                        "Rows per prediction forward pass (batch size).",
                        &model,
                    ),
                    |s| (s.batch_rows as f64, s.batches),
                ),
                (
                    desc(
                        "kiln_predict_queue_seconds",
                        "Time answered prediction requests waited in the queue.",
                        &model,
                    ),
                    |s| (s.queue_seconds, s.requests),
                ),
                (
                    desc(
                        "kiln_predict_compute_seconds",
                        "Time prediction forward passes took.",
                        &model,
                    ),
                    |s| (s.compute_seconds, s.batches),
                ),
            ],
        }
    }

    /// The families for jobs counted by state and the loaded versions' batchers.
    fn families(&self, jobs: &BTreeMap<&str, u64>, loaded: &[Loaded]) -> Vec<MetricFamily> {
        let mut out = vec![family(
            &self.jobs,
            MetricType::GAUGE,
            jobs.iter()
                .map(|(state, n)| gauge(labelled(&self.jobs, &[state]), *n as f64)),
        )];
        out.push(family(
            &self.queue_depth,
            MetricType::GAUGE,
            loaded.iter().map(|(name, version, s)| {
                gauge(
                    labelled(&self.queue_depth, &[name, version]),
                    s.queue_depth as f64,
                )
            }),
        ));
        out.push(family(
            &self.rejected,
            MetricType::COUNTER,
            loaded.iter().flat_map(|(name, version, s)| {
                [("queue_full", s.rejected_full), ("deadline", s.expired)].map(|(reason, n)| {
                    counter(labelled(&self.rejected, &[name, version, reason]), n as f64)
                })
            }),
        ));
        for (desc, pick) in &self.summaries {
            out.push(family(
                desc,
                MetricType::SUMMARY,
                loaded.iter().map(|(name, version, s)| {
                    let (sum, count) = pick(s);
                    summary(labelled(desc, &[name, version]), sum, count)
                }),
            ));
        }
        out
    }
}

impl Collector for Scrape {
    fn desc(&self) -> Vec<&Desc> {
        let mut all = vec![&self.jobs, &self.queue_depth, &self.rejected];
        all.extend(self.summaries.iter().map(|(d, _)| d));
        all
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // Every state is written, 0 included, so a state's series exists
        // before its first job.
        let mut states: BTreeMap<&str, u64> =
            ["queued", "running", "succeeded", "failed", "cancelled"]
                .into_iter()
                .map(|state| (state, 0))
                .collect();
        for job in self.sources.store.list(None) {
            let state = match job.state() {
                pb::JobState::Queued | pb::JobState::Unspecified => "queued",
                pb::JobState::Running => "running",
                pb::JobState::Succeeded => "succeeded",
                pb::JobState::Failed => "failed",
                pb::JobState::Cancelled => "cancelled",
            };
            *states.entry(state).or_default() += 1;
        }
        let loaded: Vec<Loaded> = self
            .sources
            .models
            .list()
            .into_iter()
            .filter_map(|v| Some((v.name, v.version.to_string(), v.stats?)))
            .collect();
        self.families(&states, &loaded)
    }
}

/// A family named and described by `desc`. One with no metrics is left out
/// of the exposition by the registry.
fn family(
    desc: &Desc,
    kind: MetricType,
    metrics: impl IntoIterator<Item = proto::Metric>,
) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(desc.fq_name.clone());
    family.set_help(desc.help.clone());
    family.set_field_type(kind);
    family.set_metric(metrics.into_iter().collect());
    family
}

/// A metric with `desc`'s label names and these `values`, in order.
fn labelled(desc: &Desc, values: &[&str]) -> proto::Metric {
    let labels = desc
        .variable_labels
        .iter()
        .zip(values)
        .map(|(name, value)| {
            let mut pair = proto::LabelPair::default();
            pair.set_name(name.clone());
            pair.set_value(value.to_string());
            pair
        })
        .collect();
    let mut metric = proto::Metric::default();
    metric.set_label(labels);
    metric
}

fn gauge(mut metric: proto::Metric, value: f64) -> proto::Metric {
    let mut gauge = proto::Gauge::default();
    gauge.set_value(value);
    metric.set_gauge(gauge);
    metric
}

fn counter(mut metric: proto::Metric, value: f64) -> proto::Metric {
    let mut counter = proto::Counter::default();
    counter.set_value(value);
    metric.set_counter(counter);
    metric
}

/// A summary with `_sum` and `_count` only: the batchers keep no quantiles.
fn summary(mut metric: proto::Metric, sum: f64, count: u64) -> proto::Metric {
    let mut summary = proto::Summary::default();
    summary.set_sample_sum(sum);
    summary.set_sample_count(count);
    metric.set_summary(summary);
    metric
}

/// Answers scrapes on `listener` until the process exits.
pub async fn serve(listener: TcpListener, sources: Arc<Sources>) {
    let registry = registry(sources);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let registry = registry.clone();
        // A task per connection: a slow client holds up only its own.
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = respond(&request, &registry);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                // Also bounds the wait for a first request: idle clients go.
                .header_read_timeout(Duration::from_secs(10))
                // One request per connection: scrapes come further apart
                // than the timeout above, so a kept connection would only
                // race its own close.
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "metrics: connection failed");
            }
        });
    }
}

/// The exposition content type, with the charset the text is written in.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The answer to one request; hyper leaves the body out for HEAD.
fn respond<B>(request: &Request<B>, registry: &Registry) -> Response<Full<Bytes>> {
    let plain = |status, body: &str| {
        let mut response = Response::new(Full::from(body.to_owned()));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    };
    if request.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "not found: try /metrics\n");
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match render(registry) {
        Ok(text) => {
            let mut response = Response::new(Full::from(text));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
            response
        }
        Err(e) => {
            tracing::warn!(error = %e, "metrics: cannot encode");
            plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// An empty job store and model registry.
    fn empty_sources() -> Arc<Sources> {
        Arc::new(Sources {
            store: Arc::new(
                JobStore::with_db(Arc::new(kiln_store::Db::open_in_memory().unwrap())).unwrap(),
            ),
            models: Arc::new(ModelRegistry::new(Default::default())),
        })
    }

    #[test]
    fn methods_past_the_cap_are_counted_as_other() {
        let cap = MethodCap(Mutex::new(BTreeSet::new()));
        for i in 0..MAX_METHODS {
            assert_eq!(cap.label(&format!("m/{i}")), format!("m/{i}"));
        }
        assert_eq!(cap.label("m/0"), "m/0", "known names stay");
        assert_eq!(cap.label("late/Method"), "other");
    }

    #[test]
    fn scrape_families_are_written_with_their_types_labels_and_summaries() {
        let scrape = Scrape::new(empty_sources());
        let jobs = [("queued", 1), ("succeeded", 2)].into_iter().collect();
        let stats = StatsSnapshot {
            queue_depth: 3,
            requests: 4,
            rejected_full: 5,
            expired: 6,
            batches: 2,
            batch_rows: 7,
            queue_seconds: 0.5,
            compute_seconds: 0.25,
            ..Default::default()
        };
        let loaded = [("m\"x".to_string(), "1".to_string(), stats)];
        let text = TextEncoder::new()
            .encode_to_string(&scrape.families(&jobs, &loaded))
            .unwrap();
        let model = r#"model="m\"x",version="1""#;
        for line in [
            "# HELP kiln_jobs Jobs known to the server, by state.".to_string(),
            "# TYPE kiln_jobs gauge".into(),
            r#"kiln_jobs{state="queued"} 1"#.into(),
            r#"kiln_jobs{state="succeeded"} 2"#.into(),
            "# TYPE kiln_predict_queue_depth gauge".into(),
            format!("kiln_predict_queue_depth{{{model}}} 3"),
            "# TYPE kiln_predict_rejected_total counter".into(),
            format!(r#"kiln_predict_rejected_total{{{model},reason="queue_full"}} 5"#),
            format!(r#"kiln_predict_rejected_total{{{model},reason="deadline"}} 6"#),
            "# TYPE kiln_predict_batch_rows summary".into(),
            format!("kiln_predict_batch_rows_sum{{{model}}} 7"),
            format!("kiln_predict_batch_rows_count{{{model}}} 2"),
            format!("kiln_predict_queue_seconds_sum{{{model}}} 0.5"),
            format!("kiln_predict_queue_seconds_count{{{model}}} 4"),
            format!("kiln_predict_compute_seconds_sum{{{model}}} 0.25"),
            format!("kiln_predict_compute_seconds_count{{{model}}} 2"),
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
        assert!(!text.contains("quantile"), "{text}");
    }

    #[test]
    fn the_registry_holds_every_family_once() {
        grpc_request("kiln.v1.JobService/ListJobs", "OK");
        observe_epoch(0.2);
        let text = render(&registry(empty_sources())).unwrap();
        // Other tests in this binary count into the same statics: only what
        // this one adds is certain.
        for start in [
            "# TYPE kiln_grpc_requests_total counter\n",
            r#"kiln_grpc_requests_total{code="OK",method="kiln.v1.JobService/ListJobs"} "#,
            "# TYPE kiln_epoch_duration_seconds histogram\n",
            r#"kiln_epoch_duration_seconds_bucket{le="0.01"} "#,
            r#"kiln_epoch_duration_seconds_bucket{le="1800"} "#,
            r#"kiln_epoch_duration_seconds_bucket{le="+Inf"} "#,
            "kiln_epoch_duration_seconds_count ",
            "# TYPE kiln_jobs gauge\n",
            "kiln_jobs{state=\"running\"} 0\n",
        ] {
            assert!(text.contains(start), "no {start:?} in:\n{text}");
        }
        assert_eq!(text.matches("# TYPE ").count(), 3, "{text}");
    }

    #[test]
    fn requests_are_answered_by_path_and_method() {
        let registry = registry(empty_sources());
        let answer = |method, uri| {
            let request = Request::builder().method(method).uri(uri);
            respond(&request.body(()).unwrap(), &registry)
        };
        let ok = answer(Method::GET, "/metrics?debug=1");
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(ok.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        let post = answer(Method::POST, "/metrics");
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[header::ALLOW], "GET, HEAD");
        assert_eq!(answer(Method::GET, "/").status(), StatusCode::NOT_FOUND);
    }

    /// HEAD over a real connection gets headers only, while another client
    /// sits idle on its own connection.
    #[tokio::test]
    async fn head_is_answered_beside_an_idle_client() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, empty_sources()));
        let _idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"HEAD /metrics HTTP/1.1\r\nHost: kiln\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
            .await
            .expect("answered, and closed after one request")
            .unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(
            response.contains(&format!("content-type: {CONTENT_TYPE}\r\n")),
            "{response}"
        );
        assert!(response.ends_with("\r\n\r\n"), "no body: {response}");
    }
}
