//! A job spec from bytes: protobuf (what SubmitJob receives) or, when the input
//! starts with '{', proto3 JSON (what `kiln submit job.json` and grpcurl send),
//! validated by `JobSpec::from_proto`; a valid spec with inline rows goes on
//! through the table, the split and the scalers.
#![no_main]

use kiln::v1 as pb;
use kiln_core::data::Table;
use kiln_core::spec::{DataSource, JobSpec};
use libfuzzer_sys::fuzz_target;
use prost::Message;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let proto = if data.first() == Some(&b'{') {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        match kiln_client::parse_job(text, kiln_client::JobFileFormat::Json) {
            Ok(pb::SubmitJobRequest { spec: Some(spec) }) => spec,
            _ => return,
        }
    } else {
        match pb::JobSpec::decode(data) {
            Ok(spec) => spec,
            Err(_) => return,
        }
    };
    match JobSpec::from_proto(&proto) {
        Ok(spec) => {
            if let DataSource::Inline { columns, rows } = &spec.data.source {
                match Table::from_inline(columns, rows) {
                    Ok(table) => common::prepare_job(&table, &spec),
                    Err(e) => common::named(&e),
                }
            }
        }
        Err(e) => assert!(e.field.starts_with("spec"), "not a spec field: {e}"),
    }
});
