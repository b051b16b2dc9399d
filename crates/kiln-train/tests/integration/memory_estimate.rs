//! kiln_core::budget's estimate, by which admission refuses a job that would
//! exhaust the machine, against the memory training really takes. Each case
//! trains in a process of its own (this test binary, run again on the
//! ignored `measure_one`) and reports how far its resident memory rose above
//! where it stood before training: VmHWM minus VmRSS, from /proc/self/status.
//! The estimate must be within a factor of [`FACTOR`] of that, either way.

use std::process::Command;

use kiln::v1 as pb;
use kiln_core::budget::{human_bytes, MemoryEstimate};
use kiln_core::encoding::InputEncoding;
use kiln_core::prepare::Prepared;
use kiln_core::scaler::Scaler;
use kiln_core::spec::JobSpec;

use crate::common::regression_data;

/// How far the estimate may be from the measured rise, either way.
const FACTOR: f64 = 2.0;

/// A network and its data, each case dominated by a different part of the
/// estimate: the weights and Adam's state, the data, one batch's activations.
struct Case {
    name: &'static str,
    inputs: usize,
    hidden: &'static [u32],
    batch_size: u32,
    train_rows: usize,
}

const CASES: [Case; 3] = [
    Case {
        name: "wide layers",
        inputs: 256,
        hidden: &[2048, 2048],
        batch_size: 128,
        train_rows: 512,
    },
    Case {
        name: "many rows",
        inputs: 128,
        hidden: &[32],
        batch_size: 256,
        train_rows: 200_000,
    },
    Case {
        name: "big batches",
        inputs: 64,
        hidden: &[1024, 1024],
        batch_size: 4096,
        train_rows: 8192,
    },
];

const VALIDATION_ROWS: usize = 1024;

fn job(case: &Case) -> (JobSpec, Prepared) {
    let spec = JobSpec::from_proto(&pb::JobSpec {
        task: pb::Task::Regression as i32,
        data: Some(pb::DataSpec {
            source: Some(pb::data_spec::Source::DatasetId("ds".into())),
            target_columns: vec!["y".into()],
            ..Default::default()
        }),
        model: Some(pb::ModelSpec {
            hidden_layers: case
                .hidden
                .iter()
                .map(|&units| pb::HiddenLayer {
                    units,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        training: Some(pb::TrainingSpec {
            epochs: 1,
            batch_size: case.batch_size,
            ..Default::default()
        }),
        ..Default::default()
    })
    .unwrap();
    let names: Vec<String> = (0..case.inputs).map(|j| format!("x{j}")).collect();
    let data = Prepared {
        report: Default::default(),
        train: regression_data(case.train_rows, case.inputs, 1),
        validation: regression_data(VALIDATION_ROWS, case.inputs, 2),
        width: case.inputs,
        outputs: 1,
        encoding: InputEncoding::numeric(&names),
        feature_names: names,
        target_names: vec!["y".into()],
        class_labels: vec![],
        feature_scaler: Scaler::identity(case.inputs),
        target_scaler: None,
    };
    (spec, data)
}

/// A field of /proc/self/status, in bytes.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Run by [`the_estimate_is_within_a_factor_of_the_measured_peak`] in a
/// process of its own, with the case in `KILN_MEMORY_CASE`.
#[test]
#[ignore = "run in a process of its own by the_estimate_is_within_a_factor_of_the_measured_peak"]
fn measure_one() {
    let Ok(index) = std::env::var("KILN_MEMORY_CASE") else {
        return;
    };
    let (spec, data) = job(&CASES[index.parse::<usize>().unwrap()]);
    let device = kiln_train::device::cpu();
    let before = status_bytes("VmRSS:");
    kiln_train::train(&spec, &data, &device, &|| false, &mut |_| {}).unwrap();
    let peak = status_bytes("VmHWM:");
    println!("rise {}", peak.saturating_sub(before));
}

#[test]
fn the_estimate_is_within_a_factor_of_the_measured_peak() {
    let exe = std::env::current_exe().unwrap();
    let mut report = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        let (spec, data) = job(case);
        let estimate =
            MemoryEstimate::for_job(&spec, data.width, 1, data.train.rows, data.validation.rows)
                .total();
        let out = Command::new(&exe)
            .args(["memory_estimate::measure_one", "--exact", "--ignored"])
            .args(["--nocapture", "--test-threads", "1"])
            .env("KILN_MEMORY_CASE", i.to_string())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {stdout}{}",
            case.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let rise: u64 = stdout
            .lines()
            .find_map(|l| l.split("rise ").nth(1))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("{}: no measurement in {stdout}", case.name))
            .parse()
            .unwrap();
        let ratio = estimate as f64 / rise.max(1) as f64;
        report.push(format!(
            "{}: estimate {}, measured rise {}, ratio {ratio:.2}",
            case.name,
            human_bytes(estimate),
            human_bytes(rise)
        ));
        assert!(
            (1.0 / FACTOR..=FACTOR).contains(&ratio),
            "{}",
            report.join("\n")
        );
    }
    println!("{}", report.join("\n"));
}
