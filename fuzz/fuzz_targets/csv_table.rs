//! A CSV upload: `Table::from_csv`, then, when it parses, a job's data spec
//! built from the first two input bytes (task, targets, features, categorical
//! columns, scalings, split) and the preprocessing a job runs on it.
//! Input: 2 choice bytes, then the CSV file.
#![no_main]

use std::collections::HashMap;

use kiln::v1 as pb;
use kiln_core::data::Table;
use kiln_core::spec::JobSpec;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&[a, b], csv)) = data.split_first_chunk::<2>() else {
        return;
    };
    let table = match Table::from_csv(csv) {
        Ok(table) => table,
        Err(e) => return common::named(&e),
    };
    let cols = &table.columns;
    let n = cols.len();
    let task = [
        pb::Task::Regression,
        pb::Task::BinaryClassification,
        pb::Task::MulticlassClassification,
    ][a as usize % 3];
    let mut targets = vec![if a & 4 == 0 { &cols[n - 1] } else { &cols[0] }.clone()];
    if a & 8 != 0 && task == pb::Task::Regression && n >= 3 {
        targets.push(if a & 4 == 0 { &cols[n - 2] } else { &cols[1] }.clone());
    }
    let features: Vec<String> = cols
        .iter()
        .filter(|c| !targets.contains(c))
        .cloned()
        .collect();
    let categorical: Vec<String> = match b & 3 {
        0 => vec![],
        1 => features.iter().take(1).cloned().collect(),
        2 => features.clone(),
        _ => vec!["not-a-column".into()],
    };
    let scaling = |bits: u8| {
        [
            pb::Scaling::Default,
            pb::Scaling::None,
            pb::Scaling::Standard,
            pb::Scaling::MinMax,
        ][bits as usize & 3] as i32
    };
    let mut column_scaling = HashMap::new();
    if a & 16 != 0 {
        if let Some(c) = features.iter().find(|c| !categorical.contains(c)) {
            column_scaling.insert(c.clone(), scaling(a >> 5));
        }
    }
    let proto = pb::JobSpec {
        task: task as i32,
        data: Some(pb::DataSpec {
            source: Some(pb::data_spec::Source::DatasetId("ds-fuzz".into())),
            target_columns: targets,
            feature_columns: if b & 4 != 0 { features } else { vec![] },
            validation_fraction: Some(if b & 0x80 != 0 { 0.5 } else { 0.2 }),
            split_seed: u64::from(b),
            feature_scaling: scaling(b >> 3),
            target_scaling: if task == pb::Task::Regression {
                scaling(b >> 5)
            } else {
                0
            },
            categorical_columns: categorical,
            column_scaling,
        }),
        ..Default::default()
    };
    // The choices above only make specs that validate; one that does not is
    // the spec target's business.
    if let Ok(spec) = JobSpec::from_proto(&proto) {
        common::prepare_job(&table, &spec);
    }
});
