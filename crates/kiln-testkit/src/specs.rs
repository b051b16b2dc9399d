//! Small job specs and spec parts the end-to-end tests build on.

use kiln::v1 as pb;

/// A CPU regression job on `rows` inline rows (x = i, y = i mod 7) with one
/// ReLU layer of `units`; `epochs` large makes a job that runs for hours.
pub fn inline_regression(rows: usize, units: u32, epochs: u32, batch_size: u32) -> pb::JobSpec {
    pb::JobSpec {
        task: pb::Task::Regression as i32,
        data: Some(pb::DataSpec {
            source: Some(pb::data_spec::Source::Inline(pb::InlineData {
                columns: vec!["x".into(), "y".into()],
                rows: (0..rows)
                    .map(|i| pb::Row {
                        values: vec![i as f64, (i % 7) as f64],
                    })
                    .collect(),
            })),
            target_columns: vec!["y".into()],
            ..Default::default()
        }),
        model: Some(pb::ModelSpec {
            hidden_layers: vec![layer(units)],
            ..Default::default()
        }),
        training: Some(pb::TrainingSpec {
            epochs,
            batch_size,
            ..Default::default()
        }),
        device: pb::Device::Cpu as i32,
        ..Default::default()
    }
}

/// A hidden layer of `units` ReLU units.
pub fn layer(units: u32) -> pb::HiddenLayer {
    pb::HiddenLayer {
        units,
        activation: pb::Activation::Relu as i32,
        ..Default::default()
    }
}

/// A data spec that names an uploaded dataset and its target columns.
pub fn dataset_source(id: &str, targets: &[&str]) -> pb::DataSpec {
    pb::DataSpec {
        source: Some(pb::data_spec::Source::DatasetId(id.to_string())),
        target_columns: targets.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}
