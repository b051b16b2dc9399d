//! What every target checks once an input got through parsing: the
//! preprocessing a job runs on the table, and that errors name a field.

use kiln_core::data::{Dataset, Table};
use kiln_core::prepare::prepare;
use kiln_core::spec::JobSpec;
use kiln_core::FieldError;

/// An error must say where it is (a field path, a row, a column).
pub fn named(e: &FieldError) {
    assert!(!e.field.is_empty(), "an error without a field: {e:?}");
}

/// The spec's features and targets out of `table`, then the split and the
/// scalers, as a submitted job prepares its data.
pub fn prepare_job(table: &Table, spec: &JobSpec) {
    match Dataset::from_table(table, &spec.data, spec.task) {
        Ok(data) => {
            let p = prepare(&data, &spec.data);
            assert_eq!(p.train.rows + p.validation.rows, data.rows());
            assert!(p.train.rows >= 1 && p.validation.rows >= 1);
            assert_eq!(p.train.x.len(), p.train.rows * p.width);
            if let Err(e) = spec.check_against_data(p.outputs) {
                named(&e);
            }
        }
        Err(e) => named(&e),
    }
}
