//! Time to first epoch, for `make bench-train`: starts a kiln-server, uploads
//! a small CSV dataset, then, `--jobs` times, measures from the SubmitJob call
//! to the first epoch event on WatchJob (and lets the job finish before the
//! next one). The first job after the server starts is reported apart: it
//! also pays for the trainer thread and libtorch's first use. Prints one JSON
//! line.
//!
//! ```sh
//! cargo run --release -p kiln-train --example bench_ttfe -- \
//!     --server target/release/kiln-server --jobs 5 --threads 2
//! ```

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln::v1 as pb;
use pb::dataset_service_client::DatasetServiceClient;
use pb::job_event::Kind;
use pb::job_service_client::JobServiceClient;

const ROWS: usize = 1000;
const FEATURES: usize = 10;
const EPOCHS: u32 = 3;

fn arg(name: &str) -> Option<String> {
    let mut it = std::env::args().skip_while(|a| a != name);
    it.next()?;
    it.next()
}

/// A small binary-classification CSV: `FEATURES` columns and a label.
fn csv() -> Vec<u8> {
    let mut out = String::new();
    for j in 0..FEATURES {
        out.push_str(&format!("f{j},"));
    }
    out.push_str("label\n");
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    };
    for _ in 0..ROWS {
        let row: Vec<f64> = (0..FEATURES).map(|_| next()).collect();
        let score: f64 = row
            .iter()
            .enumerate()
            .map(|(j, v)| v * (j as f64 - 4.5))
            .sum();
        for v in &row {
            out.push_str(&format!("{v:.5},"));
        }
        out.push_str(if score > 0.0 { "1\n" } else { "0\n" });
    }
    out.into_bytes()
}

fn spec(dataset_id: &str) -> pb::JobSpec {
    let layer = |units| pb::HiddenLayer {
        units,
        activation: pb::Activation::Relu as i32,
        ..Default::default()
    };
    pb::JobSpec {
        task: pb::Task::BinaryClassification as i32,
        data: Some(pb::DataSpec {
            source: Some(pb::data_spec::Source::DatasetId(dataset_id.into())),
            target_columns: vec!["label".into()],
            ..Default::default()
        }),
        model: Some(pb::ModelSpec {
            hidden_layers: vec![layer(32), layer(32)],
            ..Default::default()
        }),
        training: Some(pb::TrainingSpec {
            epochs: EPOCHS,
            batch_size: 32,
            ..Default::default()
        }),
        device: pb::Device::Cpu as i32,
        ..Default::default()
    }
}

#[tokio::main]
async fn main() {
    let server = arg("--server").unwrap_or_else(|| "target/release/kiln-server".into());
    let jobs: usize = arg("--jobs").map_or(5, |v| v.parse().expect("--jobs"));
    let threads = arg("--threads").unwrap_or_else(|| "2".into());
    let data_dir = std::env::temp_dir().join(format!("kiln-bench-ttfe-{}", std::process::id()));

    let spawned = Instant::now();
    let mut child = Command::new(&server)
        .env("KILN_LISTEN", "127.0.0.1:0")
        .env("KILN_DATA_DIR", &data_dir)
        .env("KILN_TORCH_THREADS", &threads)
        .env("KILN_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {server}: {e}"));
    let mut banner = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut banner)
        .expect("read the server banner");
    let startup = spawned.elapsed().as_secs_f64();
    let addr = banner
        .trim()
        .strip_prefix("kiln-server listening on ")
        .unwrap_or_else(|| panic!("unexpected banner {banner:?}"))
        .to_string();

    let result = run(&addr, jobs).await;
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&data_dir);
    let (first, warm, submit) = result;

    let mut sorted = warm.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied();
    let out = serde_json::json!({
        "server": server,
        "server_startup_seconds": startup,
        "rows": ROWS,
        "features": FEATURES,
        "first_job_seconds": first,
        "warm_jobs_seconds": warm,
        "warm_median_seconds": median,
        "submit_rpc_seconds": submit,
    });
    println!("{out}");
}

/// (first job's time to first epoch, the later jobs', each SubmitJob's latency).
async fn run(addr: &str, jobs: usize) -> (f64, Vec<f64>, Vec<f64>) {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to kiln-server");
    let mut datasets = DatasetServiceClient::new(channel.clone());
    let mut client = JobServiceClient::new(channel);
    let upload = pb::UploadDatasetRequest {
        name: "bench-ttfe".into(),
        chunk: csv(),
        ..Default::default()
    };
    let dataset = datasets
        .upload_dataset(tokio_stream::iter([upload]))
        .await
        .expect("upload the dataset")
        .into_inner();

    let mut times = Vec::new();
    let mut submits = Vec::new();
    for _ in 0..jobs.max(1) {
        let t0 = Instant::now();
        let job = client
            .submit_job(pb::SubmitJobRequest {
                spec: Some(spec(&dataset.id)),
            })
            .await
            .expect("SubmitJob")
            .into_inner();
        submits.push(t0.elapsed().as_secs_f64());
        let mut stream = client
            .watch_job(pb::WatchJobRequest {
                job_id: job.id.clone(),
                ..Default::default()
            })
            .await
            .expect("WatchJob")
            .into_inner();
        let mut first_epoch = None;
        loop {
            let event = tokio::time::timeout(Duration::from_secs(300), stream.message())
                .await
                .expect("a job event within 5 minutes")
                .expect("WatchJob stream");
            let Some(event) = event else { break };
            match event.kind {
                Some(Kind::Epoch(_)) if first_epoch.is_none() => {
                    first_epoch = Some(t0.elapsed().as_secs_f64());
                }
                Some(Kind::Finished(_)) => break,
                Some(Kind::Failed(f)) => panic!("the job failed: {}", f.message),
                _ => {}
            }
        }
        times.push(first_epoch.expect("an epoch event"));
    }
    let first = times.remove(0);
    (first, times, submits)
}
