//! Serving load benchmark, for `make bench-serve`: drives kiln's Predict at
//! several concurrencies for a fixed time and prints throughput and latency,
//! next to the same model's raw in-process batched forward pass (the upper
//! bound) and the same service with batching off.
//!
//! It starts the release kiln-server twice: once as configured (dynamic
//! batching on) and once with `KILN_MAX_BATCH_ROWS=1` (every request is its own
//! forward pass). It trains a small MLP on the first, exports it and imports
//! it into the second, so both serve the identical model; the raw figure loads
//! the same exported file in this process.
//!
//! ```sh
//! cargo build --release -p kiln-server
//! cargo run --release -p kiln-serve --example bench_serve -- \
//!     --duration 5 --concurrency 1,8,64 --threads 1
//! ```
//!
//! Options (defaults in brackets): --server PATH [target/release/kiln-server],
//! --duration SECS per measurement [5], --warmup SECS before each [1],
//! --concurrency LIST [1,8,64], --rows-per-request N [1], --threads N libtorch
//! threads of the servers and of the raw forward [1], --clients-per-conn N
//! clients sharing one HTTP/2 connection [8], --features N [32],
//! --hidden LIST [256,256], --classes N [3], --epochs N [2],
//! --max-queue-delay-ms MS of the batching server [its default, 0].
//!
//! Besides throughput and latency it prints, per load, the core time the
//! server process and this load generator spent per request, and the same
//! load of `grpc.health.v1.Health/Check` calls: a unary call that does no
//! work, the floor under any RPC on this stack and machine. From these it
//! derives what the machine allows at best, next to each target.
//!
//! With `--peer mlserver` it instead compares kiln with a peer over the Open
//! Inference Protocol: the same exported model served by kiln and by
//! MLServer (installed into `--python`'s venv on first use), each server
//! pinned to the CPUs before the slash of `--pin` and this load generator to
//! those after it (default `0/1` on a machine with two or more cores), with
//! the same libtorch/torch thread count. It checks that both return the same
//! probabilities (to 1e-5), then measures, alternating, kiln's ModelInfer
//! (raw and typed tensors) and MLServer's with adaptive batching off and on
//! (--mlserver-batch SIZE,MS [64,1]; --mlserver-workers N, its
//! `parallel_workers` [0: inference in the server process; its default, 1,
//! fails to start with the uvloop it installs]). --python PATH [the venv
//! of `make setup`: $KILN_PYTHON, else $KILN_CACHE/venv/bin/python].

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use kiln::v1 as pb;
use pb::inference_service_client::InferenceServiceClient;
use pb::job_service_client::JobServiceClient;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

mod mlserver;
mod oip;
mod peer;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Args {
    server: PathBuf,
    duration: f64,
    warmup: f64,
    concurrency: Vec<usize>,
    rows_per_request: usize,
    threads: usize,
    clients_per_conn: usize,
    features: usize,
    hidden: Vec<u32>,
    classes: usize,
    epochs: u32,
    max_queue_delay_ms: Option<f64>,
    /// `--peer mlserver`: the peer comparison instead of the default run.
    peer: Option<String>,
    python: PathBuf,
    /// CPUs for the servers and for this load generator (taskset lists).
    pin: Option<(String, String)>,
    mlserver_batching: mlserver::Batching,
    /// MLServer's `parallel_workers` (0: inference in the server process).
    mlserver_workers: usize,
}

impl Args {
    fn parse() -> Args {
        let mut args = Args {
            server: "target/release/kiln-server".into(),
            duration: 5.0,
            warmup: 1.0,
            concurrency: vec![1, 8, 64],
            rows_per_request: 1,
            threads: 1,
            clients_per_conn: 8,
            features: 32,
            hidden: vec![256, 256],
            classes: 3,
            epochs: 2,
            max_queue_delay_ms: None,
            peer: None,
            python: default_python(),
            pin: None,
            mlserver_batching: mlserver::Batching {
                max_batch_size: 64,
                max_batch_time: 0.001,
            },
            mlserver_workers: 0,
        };
        let raw: Vec<String> = std::env::args().skip(1).collect();
        let mut it = raw.iter();
        let list = |v: &str| -> Vec<usize> {
            v.split(',')
                .map(|s| s.trim().parse().expect("a comma-separated list of numbers"))
                .collect()
        };
        while let Some(flag) = it.next() {
            if flag == "--help" || flag == "-h" {
                println!("see the doc comment of crates/kiln-serve/examples/bench_serve.rs");
                std::process::exit(0);
            }
            let value = it
                .next()
                .unwrap_or_else(|| panic!("{flag} needs a value"))
                .as_str();
            let num = |v: &str| -> f64 { v.parse().unwrap_or_else(|_| panic!("{flag}: {v:?}")) };
            match flag.as_str() {
                "--server" => args.server = value.into(),
                "--duration" => args.duration = num(value),
                "--warmup" => args.warmup = num(value),
                "--concurrency" => args.concurrency = list(value),
                "--rows-per-request" => args.rows_per_request = num(value).max(1.0) as usize,
                "--threads" => args.threads = num(value).max(1.0) as usize,
                "--clients-per-conn" => args.clients_per_conn = num(value).max(1.0) as usize,
                "--features" => args.features = num(value).max(1.0) as usize,
                "--hidden" => args.hidden = list(value).into_iter().map(|u| u as u32).collect(),
                "--classes" => args.classes = num(value).max(2.0) as usize,
                "--epochs" => args.epochs = num(value).max(1.0) as u32,
                "--max-queue-delay-ms" => args.max_queue_delay_ms = Some(num(value).max(0.0)),
                "--peer" if value == "mlserver" => args.peer = Some(value.into()),
                "--peer" => panic!("--peer: only mlserver is known, got {value:?}"),
                "--python" => args.python = value.into(),
                "--pin" => {
                    let (server, client) = value
                        .split_once('/')
                        .unwrap_or_else(|| panic!("--pin SERVER_CPUS/CLIENT_CPUS, got {value:?}"));
                    args.pin = Some((server.into(), client.into()));
                }
                "--mlserver-workers" => args.mlserver_workers = num(value) as usize,
                "--mlserver-batch" => {
                    let v = list(value);
                    assert_eq!(v.len(), 2, "--mlserver-batch SIZE,MS");
                    args.mlserver_batching = mlserver::Batching {
                        max_batch_size: v[0],
                        max_batch_time: v[1] as f64 / 1e3,
                    };
                }
                other => panic!("unknown option {other} (see --help)"),
            }
        }
        args
    }
}

/// The venv `make` sets up: `$KILN_PYTHON`, else `$KILN_CACHE/venv` (by
/// default under `~/.cache/kiln`); never the system's Python.
fn default_python() -> PathBuf {
    if let Some(python) = std::env::var_os("KILN_PYTHON") {
        return python.into();
    }
    let cache = std::env::var_os("KILN_CACHE").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/kiln"),
        PathBuf::from,
    );
    cache.join("venv/bin/python")
}

/// A kiln-server child process with its own data directory.
struct Server {
    child: Child,
    addr: String,
    data_dir: PathBuf,
}

impl Server {
    /// Starts `bin`, pinned to `cpus` (a taskset list) when given.
    fn start(bin: &Path, tag: &str, env: &[(&str, String)], cpus: Option<&str>) -> Server {
        let data_dir =
            std::env::temp_dir().join(format!("kiln-bench-serve-{}-{tag}", std::process::id()));
        let mut child = pinned(bin, cpus)
            .env("KILN_LISTEN", "127.0.0.1:0")
            .env("KILN_DATA_DIR", &data_dir)
            .env("KILN_LOG", "warn")
            // Two servers run at once: no Prometheus listener (its port is one).
            .env("KILN_METRICS_LISTEN", "")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "start {}: {e} (build it: cargo build --release -p kiln-server)",
                    bin.display()
                )
            });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        // Log lines before the banner are passed on to stderr.
        let addr = loop {
            let mut line = String::new();
            if stdout.read_line(&mut line).expect("read server banner") == 0 {
                let _ = child.kill();
                panic!("{} exited before its banner", bin.display());
            }
            match line.trim().strip_prefix("kiln-server listening on ") {
                Some(addr) => break addr.to_string(),
                None => eprint!("{line}"),
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = stdout.read_to_end(&mut sink);
        });
        Server {
            child,
            addr,
            data_dir,
        }
    }

    async fn channel(&self) -> Channel {
        self.endpoint().channel().await
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint {
            addr: self.addr.clone(),
            pid: self.child.id(),
        }
    }
}

/// A command for `program`, run under `taskset -c cpus` when `cpus` is given.
fn pinned(program: &Path, cpus: Option<&str>) -> Command {
    match cpus {
        Some(cpus) => {
            let mut command = Command::new("taskset");
            command.args(["-c", cpus]).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// What the load generator drives: a server's address, and its process,
/// whose core time is charged to the requests.
pub struct Endpoint {
    addr: String,
    pid: u32,
}

impl Endpoint {
    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.addr))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// A deterministic pseudo-random value in [0, 1).
fn value(i: usize, j: usize) -> f64 {
    let h = (i as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add((j as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F));
    ((h ^ (h >> 29)) % 10_007) as f64 / 10_007.0
}

fn feature_row(i: usize, features: usize) -> Vec<f64> {
    (0..features).map(|j| value(i, j)).collect()
}

/// Rows as one row-major f32 buffer, as OIP's FP32 tensors carry them.
fn flat_f32(rows: &[pb::Row]) -> Vec<f32> {
    rows.iter()
        .flat_map(|r| r.values.iter().map(|&v| v as f32))
        .collect()
}

fn job(args: &Args) -> pb::JobSpec {
    let n = 512;
    let rows = (0..n)
        .map(|i| {
            let mut values = feature_row(i, args.features);
            let class = ((values[0] + values[1 % args.features]) * args.classes as f64 / 2.0)
                .floor()
                .min(args.classes as f64 - 1.0);
            values.push(class);
            pb::Row { values }
        })
        .collect();
    let mut columns: Vec<String> = (0..args.features).map(|j| format!("x{j}")).collect();
    columns.push("label".into());
    pb::JobSpec {
        task: pb::Task::MulticlassClassification as i32,
        model_name: "bench".into(),
        data: Some(pb::DataSpec {
            source: Some(pb::data_spec::Source::Inline(pb::InlineData {
                columns,
                rows,
            })),
            target_columns: vec!["label".into()],
            ..Default::default()
        }),
        model: Some(pb::ModelSpec {
            hidden_layers: args
                .hidden
                .iter()
                .map(|&units| pb::HiddenLayer {
                    units,
                    activation: pb::Activation::Relu as i32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        training: Some(pb::TrainingSpec {
            epochs: args.epochs,
            batch_size: 64,
            seed: 1,
            ..Default::default()
        }),
        device: pb::Device::Cpu as i32,
        ..Default::default()
    }
}

/// Trains the benchmark model on `server` and returns its exported safetensors file.
async fn train_and_export(server: &Server, args: &Args) -> Result<Vec<u8>, BoxError> {
    let mut jobs = JobServiceClient::new(server.channel().await);
    let submitted = jobs
        .submit_job(pb::SubmitJobRequest {
            spec: Some(job(args)),
        })
        .await?
        .into_inner();
    let mut events = jobs
        .watch_job(pb::WatchJobRequest {
            job_id: submitted.id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut last = None;
    while let Some(event) = events.message().await? {
        last = event.kind;
    }
    match last {
        Some(pb::job_event::Kind::Finished(_)) => {}
        other => return Err(format!("training job did not succeed: {other:?}").into()),
    }
    let mut inference = InferenceServiceClient::new(server.channel().await);
    let mut stream = inference
        .export_model(pb::ModelRef {
            model: "bench".into(),
            version: String::new(),
        })
        .await?
        .into_inner();
    let mut file = Vec::new();
    while let Some(chunk) = stream.message().await? {
        file.extend_from_slice(&chunk.chunk);
    }
    Ok(file)
}

async fn import(server: &Server, file: &[u8]) -> Result<(), BoxError> {
    let messages: Vec<pb::ImportModelRequest> = file
        .chunks(1 << 20)
        .enumerate()
        .map(|(i, c)| pb::ImportModelRequest {
            name: if i == 0 {
                "bench".into()
            } else {
                String::new()
            },
            chunk: c.to_vec(),
        })
        .collect();
    InferenceServiceClient::new(server.channel().await)
        .import_model(tokio_stream::iter(messages))
        .await?;
    Ok(())
}

struct Load {
    requests: usize,
    /// Core time per request (warm-up included) of the server process and of
    /// this load generator, in µs.
    server_cpu_us: f64,
    client_cpu_us: f64,
    errors: usize,
    rows_per_s: f64,
    requests_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    mean_batch_rows: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len() - 1);
    sorted[i]
}

/// What the load generator calls.
#[derive(Clone, Copy)]
enum Call {
    Predict,
    /// `grpc.health.v1.Health/Check` on the same server: a unary call that
    /// does no work, the floor under any unary RPC on this stack and machine.
    HealthCheck,
    /// Open Inference Protocol ModelInfer on `model`.
    Oip {
        model: &'static str,
        encoding: oip::Encoding,
    },
}

/// `concurrency` clients, each sending one request at a time for
/// `warmup + duration`; only requests started after the warm-up count.
async fn load(server: &Endpoint, args: &Args, concurrency: usize, call: Call) -> Load {
    let connections = concurrency.div_ceil(args.clients_per_conn);
    let mut channels = Vec::new();
    for _ in 0..connections {
        channels.push(server.channel().await);
    }
    let pid = server.pid;
    let (server_cpu, client_cpu) = (cpu_seconds(&pid.to_string()), cpu_seconds("self"));
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.duration);
    let mut tasks = Vec::new();
    for client in 0..concurrency {
        let channel = channels[client % connections].clone();
        let mut inference = InferenceServiceClient::new(channel.clone());
        let mut health = HealthClient::new(channel.clone());
        let mut infer = GrpcInferenceServiceClient::new(channel);
        let rows: Vec<pb::Row> = (0..args.rows_per_request)
            .map(|r| pb::Row {
                values: feature_row(1_000_000 + client * 1000 + r, args.features),
            })
            .collect();
        let infer_request = match call {
            Call::Oip { model, encoding } => Some(oip::request(
                model,
                &flat_f32(&rows),
                args.features,
                encoding,
            )),
            _ => None,
        };
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut errors, mut batch_rows) = (Vec::new(), 0usize, 0u64);
            let mut sent_all = 0usize;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                sent_all += 1;
                let result = match call {
                    Call::Predict => inference
                        .predict(pb::PredictRequest {
                            model: "bench".into(),
                            rows: rows.clone(),
                            ..Default::default()
                        })
                        .await
                        .map(|r| r.into_inner().batch_rows as u64),
                    Call::HealthCheck => {
                        health.check(HealthCheckRequest::default()).await.map(|_| 0)
                    }
                    Call::Oip { .. } => {
                        let request = infer_request.clone().expect("built above");
                        infer.model_infer(request).await.map(|_| 0)
                    }
                };
                if sent < measure_from {
                    continue;
                }
                match result {
                    Ok(rows) => {
                        latencies.push(sent.elapsed().as_secs_f64() * 1e3);
                        batch_rows += rows;
                    }
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors, batch_rows, sent_all)
        }));
    }
    let (mut latencies, mut errors, mut batch_rows, mut sent_all) = (Vec::new(), 0, 0u64, 0);
    for task in tasks {
        let (l, e, b, s) = task.await.expect("client task");
        latencies.extend(l);
        errors += e;
        batch_rows += b;
        sent_all += s;
    }
    let per_request = |seconds: f64| seconds * 1e6 / sent_all.max(1) as f64;
    let server_cpu_us = per_request(cpu_seconds(&pid.to_string()) - server_cpu);
    let client_cpu_us = per_request(cpu_seconds("self") - client_cpu);
    latencies.sort_by(f64::total_cmp);
    let requests = latencies.len();
    Load {
        requests,
        server_cpu_us,
        client_cpu_us,
        errors,
        rows_per_s: (requests * args.rows_per_request) as f64 / args.duration,
        requests_per_s: requests as f64 / args.duration,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        // OIP answers do not say how many rows their batch had.
        mean_batch_rows: match call {
            Call::Oip { .. } => f64::NAN,
            _ => batch_rows as f64 / requests.max(1) as f64,
        },
    }
}

/// User plus system time of a whole process (`self` or a pid), from
/// `/proc/<pid>/stat`, in seconds; NaN where there is no such file.
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields, in USER_HZ ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) / 100.0,
        _ => f64::NAN,
    }
}

/// Raw in-process forward passes of `batch` rows for about `seconds`:
/// (rows/s, p50 ms per pass).
fn raw_forward(predictor: &kiln_train::Predictor, batch: usize, seconds: f64) -> (f64, f64) {
    let width = predictor.width();
    let input: Vec<f32> = (0..batch * width)
        .map(|k| value(k / width, k % width) as f32)
        .collect();
    for _ in 0..20 {
        predictor.predict(&input);
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds {
        let t = Instant::now();
        std::hint::black_box(predictor.predict(&input));
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let total: f64 = times.iter().sum::<f64>() / 1e3;
    let rows_per_s = (times.len() * batch) as f64 / total;
    times.sort_by(f64::total_cmp);
    (rows_per_s, percentile(&times, 0.5))
}

/// The load measured at concurrency `c`.
fn at(loads: &[(usize, Load)], c: usize) -> Option<&Load> {
    loads.iter().find(|x| x.0 == c).map(|x| &x.1)
}

/// The three targets, each next to what this machine allows at best, judged
/// from the health Check floor and the core time per request.
fn summarize(
    args: &Args,
    cores: usize,
    raw: &[(usize, f64, f64)],
    on: &[(usize, Load)],
    off: &[(usize, Load)],
    floor: &[(usize, Load)],
    predictor: &kiln_train::Predictor,
) {
    let raw_rows = |b: usize| raw.iter().find(|r| r.0 == b).map_or(f64::NAN, |r| r.1);
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    let rpr = args.rows_per_request as f64;
    let top = *args.concurrency.iter().max().unwrap_or(&1);
    if let (Some(svc), Some(unb), Some(nop)) = (at(on, top), at(off, top), at(floor, top)) {
        let vs_raw = svc.rows_per_s / raw_rows(64);
        println!(
            "1. service@{top} / raw forward (batch 64): {vs_raw:.2}  (target >= 0.80: {})",
            verdict(vs_raw >= 0.8)
        );
        // No unary call goes faster than one that does nothing.
        let nop_rows = nop.requests_per_s * rpr;
        println!(
            "   at best here: {:.2}, the health Check's {:.0} calls/s at {rpr} row(s) each",
            nop_rows / raw_rows(64),
            nop.requests_per_s
        );
        // Client and server share the cores: cores / core time per request.
        let per_request = svc.server_cpu_us + svc.client_cpu_us;
        let cap_rows = cores as f64 * 1e6 / per_request * rpr;
        println!(
            "   core time per Predict: server {:.0} µs + client {:.0} µs; {cores} core(s) allow {:.2}; \
             0.80 needs <= {:.0} µs",
            svc.server_cpu_us,
            svc.client_cpu_us,
            cap_rows / raw_rows(64),
            cores as f64 * 1e6 * rpr / (0.8 * raw_rows(64))
        );
        // The batches the service formed, run raw: the gap left is overhead.
        let mean_batch = (svc.mean_batch_rows.round() as usize).max(1);
        let (raw_mean, _) = raw_forward(predictor, mean_batch, args.duration.clamp(0.5, 3.0));
        println!(
            "   raw forward at the service's mean batch ({mean_batch} rows): {raw_mean:.0} rows/s; \
             service / that: {:.2}",
            svc.rows_per_s / raw_mean
        );
        let vs_off = svc.rows_per_s / unb.rows_per_s;
        println!(
            "2. service@{top} / unbatched@{top}: {vs_off:.2}  (target >= 3x: {})",
            verdict(vs_off >= 3.0)
        );
        // Batching at best takes the forward pass out of a call; the call
        // itself still costs the floor's core time.
        println!(
            "   at best here, when the cores are the limit: {:.2} (unbatched {:.0} µs per call, \
             health Check {:.0} µs)",
            (unb.server_cpu_us + unb.client_cpu_us) / (nop.server_cpu_us + nop.client_cpu_us),
            unb.server_cpu_us + unb.client_cpu_us,
            nop.server_cpu_us + nop.client_cpu_us
        );
    }
    let raw_p50 = raw
        .iter()
        .find(|r| r.0 == args.rows_per_request)
        .map_or(f64::NAN, |r| r.2);
    if let (Some(svc), Some(nop)) = (at(on, 1), at(floor, 1)) {
        let overhead = svc.p50_ms - raw_p50;
        println!(
            "3. p50 overhead @1 over one raw {rpr}-row forward ({raw_p50:.3} ms): {overhead:.3} ms  \
             (target < 0.3 ms: {})",
            verdict(overhead < 0.3)
        );
        println!(
            "   a health Check's p50 @1, the round trip alone: {:.3} ms",
            nop.p50_ms
        );
    }
}

/// The network, request size and timing of the measurements.
fn print_model_line(args: &Args) {
    let arch: Vec<String> = args.hidden.iter().map(|u| u.to_string()).collect();
    println!(
        "model: MLP {} -> [{}] -> {} (ReLU), multiclass; {} row(s) per request; {} s per point after {} s warm-up",
        args.features,
        arch.join(", "),
        args.classes,
        args.rows_per_request,
        args.duration,
        args.warmup
    );
}

/// The column names of [`print_load`]'s rows, the first being `title`.
fn print_load_header(title: &str) {
    println!(
        "{title:<22} {:>5} {:>11} {:>11} {:>9} {:>9} {:>10} {:>8} {:>6} {:>9} {:>9}",
        "conc",
        "rows/s",
        "req/s",
        "p50 ms",
        "p99 ms",
        "avg batch",
        "reqs",
        "errs",
        "srv µs/r",
        "cli µs/r"
    );
}

fn print_load(label: &str, concurrency: usize, l: &Load) {
    let batch = match l.mean_batch_rows {
        b if b.is_nan() => "-".to_string(),
        b => format!("{b:.1}"),
    };
    println!(
        "{label:<22} {concurrency:>5} {:>11.0} {:>11.0} {:>9.3} {:>9.3} {batch:>10} {:>8} {:>6} {:>9.0} {:>9.0}",
        l.rows_per_s,
        l.requests_per_s,
        l.p50_ms,
        l.p99_ms,
        l.requests,
        l.errors,
        l.server_cpu_us,
        l.client_cpu_us
    );
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let threads = args.threads.to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    if args.peer.is_some() {
        return peer::compare(&args, cores).await;
    }

    eprintln!("training the benchmark model on a first kiln-server ...");
    let mut batched_env = vec![("KILN_TORCH_THREADS", threads.clone())];
    if let Some(ms) = args.max_queue_delay_ms {
        batched_env.push(("KILN_MAX_QUEUE_DELAY_MS", ms.to_string()));
    }
    let batched = Server::start(&args.server, "batched", &batched_env, None);
    let file = train_and_export(&batched, &args).await?;
    let unbatched = Server::start(
        &args.server,
        "unbatched",
        &[
            ("KILN_TORCH_THREADS", threads.clone()),
            ("KILN_MAX_BATCH_ROWS", "1".into()),
        ],
        None,
    );
    import(&unbatched, &file).await?;

    eprintln!("raw in-process forward passes ...");
    kiln_train::device::set_threads(args.threads);
    let artifact = kiln_train::ModelArtifact::from_safetensors(&file)?;
    let predictor = kiln_train::Predictor::new(&artifact, &kiln_train::device::cpu())?;
    let raw_seconds = args.duration.clamp(0.5, 3.0);
    let mut batches = vec![1, args.rows_per_request, 64, 1024];
    batches.sort_unstable();
    batches.dedup();
    let raw: Vec<(usize, f64, f64)> = batches
        .into_iter()
        .map(|b| {
            let (rows_per_s, p50) = raw_forward(&predictor, b, raw_seconds);
            (b, rows_per_s, p50)
        })
        .collect();

    let mut on = Vec::new();
    let mut off = Vec::new();
    let mut floor = Vec::new();
    for &c in &args.concurrency {
        eprintln!("load: concurrency {c}, batching on ...");
        on.push((c, load(&batched.endpoint(), &args, c, Call::Predict).await));
        eprintln!("load: concurrency {c}, batching off ...");
        off.push((
            c,
            load(&unbatched.endpoint(), &args, c, Call::Predict).await,
        ));
        eprintln!("load: concurrency {c}, health Check ...");
        floor.push((
            c,
            load(&batched.endpoint(), &args, c, Call::HealthCheck).await,
        ));
    }

    println!();
    print_model_line(&args);
    println!(
        "libtorch threads: {} (servers and raw); {} client(s) per HTTP/2 connection; \
         client, both servers and the raw forward share this machine's {cores} core(s)",
        args.threads, args.clients_per_conn
    );
    println!();
    println!(
        "{:<22} {:>5} {:>11} {:>11} {:>9} {:>9}",
        "raw forward (in-proc)", "batch", "rows/s", "passes/s", "p50 ms", ""
    );
    for &(b, rows_per_s, p50) in &raw {
        println!(
            "{:<22} {b:>5} {rows_per_s:>11.0} {:>11.0} {p50:>9.3}",
            "Predictor::predict",
            rows_per_s / b as f64
        );
    }
    println!();
    print_load_header("service (Predict)");
    for (c, l) in &on {
        print_load("batching on", *c, l);
    }
    for (c, l) in &off {
        print_load("batching off (max 1)", *c, l);
    }
    for (c, l) in &floor {
        print_load("health Check (floor)", *c, l);
    }

    println!();
    summarize(&args, cores, &raw, &on, &off, &floor, &predictor);
    Ok(())
}
