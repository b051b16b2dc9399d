//! An NPY upload: `npy::read` and `Table::from_npy_arrays` on one array or two
//! (input byte 0 odd: the rest is split at the offset in bytes 1-2), then a
//! regression on the last column through the split and the scalers.
#![no_main]

use kiln::v1 as pb;
use kiln_core::data::Table;
use kiln_core::npy;
use kiln_core::spec::JobSpec;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let arrays: Vec<(String, Vec<u8>)> = match rest.split_first_chunk::<2>() {
        Some((&at, rest)) if mode & 1 == 1 => {
            let at = usize::from(u16::from_le_bytes(at)).min(rest.len());
            let (x, y) = rest.split_at(at);
            vec![("x".into(), x.to_vec()), ("y".into(), y.to_vec())]
        }
        _ => vec![("x".into(), rest.to_vec())],
    };
    for (name, bytes) in &arrays {
        if let Ok(a) = npy::read(name, bytes) {
            assert_eq!(a.values.len(), a.shape.iter().product::<usize>());
        }
    }
    let table = match Table::from_npy_arrays(&arrays) {
        Ok(table) => table,
        Err(e) => return common::named(&e),
    };
    let target = table.columns.last().expect("a table has columns").clone();
    let proto = pb::JobSpec {
        task: pb::Task::Regression as i32,
        data: Some(pb::DataSpec {
            source: Some(pb::data_spec::Source::DatasetId("ds-fuzz".into())),
            target_columns: vec![target],
            split_seed: u64::from(mode),
            ..Default::default()
        }),
        ..Default::default()
    };
    let spec = JobSpec::from_proto(&proto).expect("a valid spec");
    common::prepare_job(&table, &spec);
});
