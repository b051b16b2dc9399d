//! Requests for the unit tests.

use kiln::v1 as pb;

use crate::space::number;

/// A valid regression spec: y = 2x on 20 inline rows.
pub fn base() -> pb::JobSpec {
    pb::JobSpec {
        task: pb::Task::Regression as i32,
        data: Some(pb::DataSpec {
            source: Some(pb::data_spec::Source::Inline(pb::InlineData {
                columns: vec!["x".into(), "y".into()],
                rows: (0..20)
                    .map(|i| pb::Row {
                        values: vec![i as f64, 2.0 * i as f64],
                    })
                    .collect(),
            })),
            target_columns: vec!["y".into()],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A list of numbers as a search dimension.
pub fn values(xs: &[f64]) -> pb::Parameter {
    pb::Parameter {
        kind: Some(pb::parameter::Kind::Values(prost_types::ListValue {
            values: xs.iter().map(|&x| number(x)).collect(),
        })),
    }
}

/// A request over `base()` with these dimensions, the rest unset.
pub fn request(space: &[(&str, pb::Parameter)]) -> pb::SubmitSweepRequest {
    pb::SubmitSweepRequest {
        base: Some(base()),
        search_space: space
            .iter()
            .map(|(path, p)| (path.to_string(), p.clone()))
            .collect(),
        ..Default::default()
    }
}
