//! Sweeps' saved records: each sweep's request, state and trials, replaced
//! whenever a trial starts or ends and when the sweep ends. A restart reads
//! them back and starts the unfinished sweeps' controllers again.

use std::sync::Arc;

use kiln::v1 as pb;

use crate::db::DbError;
use crate::storage::Storage;

/// Sweep records in the database.
pub struct SweepRecords {
    db: Arc<dyn Storage>,
}

impl SweepRecords {
    /// The sweep records in `db`.
    pub fn new(db: Arc<dyn Storage>) -> Self {
        Self { db }
    }

    /// Saves `sweep`'s record, replacing the one saved before.
    pub fn save(&self, sweep: &pb::Sweep) -> Result<(), DbError> {
        self.db.put_sweep(sweep)
    }

    /// Every sweep's last record, in submission order.
    pub fn load(&self) -> Result<Vec<pb::Sweep>, DbError> {
        self.db.sweeps()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    #[test]
    fn the_last_record_of_each_sweep_comes_back_in_submission_order() {
        let records = SweepRecords::new(Arc::new(Db::open_in_memory().unwrap()));
        let sweep = |id: &str, state: pb::SweepState| pb::Sweep {
            id: id.into(),
            state: state as i32,
            ..Default::default()
        };
        records.save(&sweep("a", pb::SweepState::Running)).unwrap();
        records.save(&sweep("b", pb::SweepState::Running)).unwrap();
        records
            .save(&sweep("a", pb::SweepState::Succeeded))
            .unwrap();
        let loaded = records.load().unwrap();
        let got: Vec<(&str, i32)> = loaded.iter().map(|s| (s.id.as_str(), s.state)).collect();
        assert_eq!(
            got,
            [
                ("a", pb::SweepState::Succeeded as i32),
                ("b", pb::SweepState::Running as i32)
            ]
        );
    }
}
