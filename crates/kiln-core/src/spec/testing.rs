//! What the spec's unit tests share: the smallest valid spec and its errors.

use kiln::v1 as pb;

use super::JobSpec;

/// The smallest valid spec: multiclass on a dataset, target `y`.
pub(crate) fn minimal() -> pb::JobSpec {
    pb::JobSpec {
        task: pb::Task::MulticlassClassification as i32,
        data: Some(pb::DataSpec {
            source: Some(pb::data_spec::Source::DatasetId("ds-1".into())),
            target_columns: vec!["y".into()],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The error `JobSpec::from_proto` gives for `spec`.
pub(super) fn err(spec: &pb::JobSpec) -> String {
    JobSpec::from_proto(spec).unwrap_err().to_string()
}

/// Each case's error, for `minimal()` with that training spec, starts with
/// its expected text.
pub(super) fn assert_training_errors(cases: Vec<(pb::TrainingSpec, &str)>) {
    for (t, expected) in cases {
        let mut s = minimal();
        s.training = Some(t);
        let e = err(&s);
        assert!(e.starts_with(expected), "{e} (expected {expected})");
    }
}
