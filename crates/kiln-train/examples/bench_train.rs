//! The kiln side of `make bench-train`: trains one MLP on a data directory
//! written by bench/bench_train.py, through the path a job takes
//! (`JobSpec::from_proto` -> `kiln_core::prepare` -> `kiln_train::train`), and
//! prints one JSON line: samples/s over the epochs after the first (a warm-up
//! epoch, discarded), the peak RSS (VmHWM) and the per-epoch times.
//!
//! ```sh
//! cargo run --release -p kiln-train --example bench_train -- \
//!     --data DIR --hidden 64,64 --batch 32 --epochs 6 --threads 2 --dropout 0.1
//! ```
//!
//! The data directory holds `meta.json` (`{"rows", "width", "classes"}`),
//! `x.f32` (row-major little-endian f32) and `y.i64` (class indices).

use std::time::Instant;

use kiln::v1 as pb;
use kiln_core::data::{Dataset, Targets};
use kiln_core::prepare::prepare;
use kiln_core::spec::JobSpec;
use kiln_train::TrainEvent;

struct Args {
    data: String,
    hidden: Vec<u32>,
    batch: u32,
    epochs: u32,
    threads: usize,
    dropout: f64,
    batch_norm: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        data: String::new(),
        hidden: Vec::new(),
        batch: 32,
        epochs: 6,
        threads: 2,
        dropout: 0.1,
        batch_norm: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--data" => args.data = value(),
            "--hidden" => {
                args.hidden = value()
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse().expect("--hidden: comma-separated units"))
                    .collect()
            }
            "--batch" => args.batch = value().parse().expect("--batch"),
            "--epochs" => args.epochs = value().parse().expect("--epochs"),
            "--threads" => args.threads = value().parse().expect("--threads"),
            "--dropout" => args.dropout = value().parse().expect("--dropout"),
            "--no-batch-norm" => args.batch_norm = false,
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(!args.data.is_empty(), "--data DIR is required");
    assert!(
        args.epochs >= 2,
        "--epochs counts the warm-up epoch: at least 2"
    );
    args
}

fn meta_field(meta: &str, name: &str) -> usize {
    let v: serde_json::Value = serde_json::from_str(meta).expect("meta.json");
    v[name]
        .as_u64()
        .unwrap_or_else(|| panic!("meta.json: {name}")) as usize
}

fn load(dir: &str) -> (Dataset, usize) {
    let meta = std::fs::read_to_string(format!("{dir}/meta.json")).expect("read meta.json");
    let (rows, width, classes) = (
        meta_field(&meta, "rows"),
        meta_field(&meta, "width"),
        meta_field(&meta, "classes"),
    );
    let xb = std::fs::read(format!("{dir}/x.f32")).expect("read x.f32");
    let yb = std::fs::read(format!("{dir}/y.i64")).expect("read y.i64");
    assert_eq!(xb.len(), rows * width * 4, "x.f32 size");
    assert_eq!(yb.len(), rows * 8, "y.i64 size");
    let x: Vec<f32> = xb
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    drop(xb);
    let index: Vec<i64> = yb
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let feature_names: Vec<String> = (0..width).map(|j| format!("f{j}")).collect();
    let dataset = Dataset {
        encoding: kiln_core::encoding::InputEncoding::numeric(&feature_names),
        feature_names,
        target_names: vec!["y".into()],
        x,
        targets: Targets::Classes {
            index,
            labels: (0..classes).map(|c| c.to_string()).collect(),
        },
        missing_cells: vec![0; width],
        rows: Default::default(),
        table_rows: (0..rows).collect(),
    };
    (dataset, classes)
}

/// The proto a client would send for this benchmark.
fn job_proto(args: &Args) -> pb::JobSpec {
    pb::JobSpec {
        task: pb::Task::MulticlassClassification as i32,
        data: Some(pb::DataSpec {
            source: Some(pb::data_spec::Source::DatasetId("bench".into())),
            target_columns: vec!["y".into()],
            validation_fraction: Some(0.2),
            split_seed: 0,
            feature_scaling: pb::Scaling::Standard as i32,
            ..Default::default()
        }),
        model: Some(pb::ModelSpec {
            hidden_layers: args
                .hidden
                .iter()
                .map(|&units| pb::HiddenLayer {
                    units,
                    activation: pb::Activation::Relu as i32,
                    dropout: args.dropout,
                    batch_norm: args.batch_norm,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        training: Some(pb::TrainingSpec {
            // Adam with torch's defaults (lr 1e-3, eps 1e-8), cross-entropy.
            optimizer: Some(pb::Optimizer {
                learning_rate: Some(1e-3),
                kind: Some(pb::optimizer::Kind::Adam(pb::Adam::default())),
                ..Default::default()
            }),
            epochs: args.epochs,
            batch_size: args.batch,
            seed: 0,
            ..Default::default()
        }),
        device: pb::Device::Cpu as i32,
        ..Default::default()
    }
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU seconds (user + system, all threads) this process has used so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    fields.iter().sum::<f64>() / 100.0
}

fn main() {
    let args = parse_args();
    kiln_train::device::set_threads(args.threads);
    let spec = JobSpec::from_proto(&job_proto(&args)).expect("valid job spec");
    let (device, _) = kiln_train::device::resolve(spec.device).expect("cpu device");
    let prepared = {
        let (dataset, classes) = load(&args.data);
        let prepared = prepare(&dataset, &spec.data);
        assert_eq!(prepared.outputs, classes);
        spec.check_against_data(prepared.outputs)
            .expect("spec matches data");
        prepared
    };

    let started = Instant::now();
    let mut epoch_ends: Vec<Instant> = Vec::new();
    let mut reports = Vec::new();
    let mut epoch_cpu: Vec<f64> = Vec::new();
    let trained = kiln_train::train(&spec, &prepared, &device, &|| false, &mut |event| {
        if let TrainEvent::Epoch(report) = event {
            epoch_ends.push(Instant::now());
            epoch_cpu.push(cpu_seconds());
            reports.push(report);
        }
    })
    .expect("training succeeds");
    assert_eq!(trained.epochs_completed, args.epochs);

    let rows = prepared.train.rows;
    let measured = epoch_ends.len() - 1;
    let seconds = (epoch_ends[measured] - epoch_ends[0]).as_secs_f64();
    let mut previous = started;
    let epoch_seconds: Vec<f64> = epoch_ends
        .iter()
        .map(|&t| {
            let s = (t - previous).as_secs_f64();
            previous = t;
            s
        })
        .collect();
    let last = reports.last().expect("an epoch report");
    let out = serde_json::json!({
        "side": "kiln",
        "train_rows": rows,
        "validation_rows": prepared.validation.rows,
        "measured_epochs": measured,
        "seconds": seconds,
        "cpu_seconds": epoch_cpu[measured] - epoch_cpu[0],
        "samples_per_second": (rows * measured) as f64 / seconds,
        "peak_rss_kib": vm_hwm_kib(),
        "epoch_seconds": epoch_seconds,
        "last": {
            "train_loss": last.train_loss,
            "val_loss": last.val_loss,
            "val_accuracy": last.val_accuracy,
        },
        "threads": tch::get_num_threads(),
    });
    println!("{out}");
}
