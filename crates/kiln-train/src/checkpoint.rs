//! Checkpoints: everything a training run needs to go on exactly as if it
//! had never stopped — the weights, the optimizer's state, the schedule, the
//! early-stopping and SWA state, the best epoch's weights, and where it was:
//! the epoch, and within it the next batch, the losses so far and the
//! gradient-health probe. The random streams need no state of their own:
//! the shuffle is replayed from the seed (one shuffle per epoch), and
//! stochastic layers draw from libtorch's generator reseeded at every step
//! from the seed and the step number.
//!
//! On disk: `KILNCKPT`, a format version, the sections (MessagePack for the
//! scalar state, burn records for the tensors), then the SHA-256 of all that
//! precedes it, checked on load. Written atomically (temporary file, fsync,
//! rename, fsync of the directory).

use std::path::Path;

use burn::module::Module;
use burn::store::ModuleRecord;
use burn::tensor::{Bytes, Device};
use kiln_core::prepare::Prepared;
use kiln_core::spec::JobSpec;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::early_stop::EarlyStopping;
use crate::health::ProbeValues;
use crate::model::{Mlp, ModelArch};
use crate::report::EpochReport;
use crate::schedule::LrScheduler;
use crate::swa::Swalr;

const MAGIC: &[u8; 8] = b"KILNCKPT";
/// Bumped whenever the layout of [`Progress`] or the sections changes; an
/// older checkpoint is then refused rather than misread.
const VERSION: u32 = 1;

/// Why a checkpoint cannot be saved or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading or writing the file failed.
    #[error("checkpoint I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are damaged: bad magic, checksum or layout.
    #[error("checkpoint corrupted: {0}")]
    Corrupt(String),
    /// Intact, but not for this kiln or this run.
    #[error("checkpoint unusable: {0}")]
    Unusable(String),
}

/// A training run's state between two optimizer steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub(crate) progress: Progress,
    pub(crate) model: Vec<u8>,
    pub(crate) optimizer: Vec<u8>,
    pub(crate) best_model: Option<Vec<u8>>,
    pub(crate) average: Option<Vec<u8>>,
}

/// The scalar part of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Progress {
    /// [`fingerprint`] of the spec and data it was taken with.
    pub fingerprint: String,
    /// The learning rate trained with (the LR range test's pick under "auto").
    pub learning_rate: f64,
    pub epochs_completed: u32,
    /// The next batch's first position in the epoch's order; 0 at an epoch boundary.
    pub next_row: usize,
    pub rows_seen: usize,
    /// This epoch's batch losses (mean per batch) and rows so far.
    pub batch_losses: Vec<f32>,
    pub batch_rows: Vec<f32>,
    /// This epoch's gradient-health probe, once its first step has run.
    pub probe: Option<ProbeValues>,
    /// Optimizer steps attempted so far (the stochastic layers' reseed counter).
    pub step: u64,
    pub schedule: LrScheduler,
    pub swalr: Option<Swalr>,
    pub stopper: EarlyStopping,
    /// The last finished epoch's report, and the best epoch's (whose weights
    /// are `best_model`).
    pub last: Option<EpochReport>,
    pub best: Option<EpochReport>,
    pub swa_averaged: u64,
    /// Training time before this checkpoint, summed over earlier runs.
    pub train_seconds: f64,
    /// lr and momentum of the last step (an epoch's report shows them).
    pub lr: f64,
    pub momentum: Option<f64>,
}

impl Checkpoint {
    /// Epochs finished before the checkpoint.
    pub fn epochs_completed(&self) -> u32 {
        self.progress.epochs_completed
    }

    /// Taken within an epoch (on suspension), not at its end.
    pub fn mid_epoch(&self) -> bool {
        self.progress.next_row > 0
    }

    /// Whether this checkpoint belongs to a run of `spec` on `data`.
    pub fn matches(&self, spec: &JobSpec, data: &Prepared) -> bool {
        self.progress.fingerprint == fingerprint(spec, data)
    }

    /// The checkpoint as bytes: header, sections and checksum.
    pub fn to_bytes(&self) -> Vec<u8> {
        let progress = rmp_serde::to_vec_named(&self.progress).expect("progress serializes");
        let mut out = Vec::with_capacity(
            64 + progress.len()
                + self.model.len()
                + self.optimizer.len()
                + self.best_model.as_ref().map_or(0, Vec::len)
                + self.average.as_ref().map_or(0, Vec::len),
        );
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        for section in [
            Some(&progress),
            Some(&self.model),
            Some(&self.optimizer),
            self.best_model.as_ref(),
            self.average.as_ref(),
        ] {
            match section {
                Some(bytes) => {
                    out.push(1);
                    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
                    out.extend_from_slice(bytes);
                }
                None => out.push(0),
            }
        }
        let sum = Sha256::digest(&out);
        out.extend_from_slice(&sum);
        out
    }

    /// Parses and verifies bytes written by [`to_bytes`](Self::to_bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CheckpointError> {
        let corrupt = |why: &str| CheckpointError::Corrupt(why.to_string());
        if bytes.len() < MAGIC.len() + 4 + 32 || &bytes[..MAGIC.len()] != MAGIC {
            return Err(corrupt("not a kiln checkpoint"));
        }
        let (body, sum) = bytes.split_at(bytes.len() - 32);
        if Sha256::digest(body).as_slice() != sum {
            return Err(corrupt("SHA-256 mismatch"));
        }
        let version = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(CheckpointError::Unusable(format!(
                "format version {version}, this kiln reads {VERSION}"
            )));
        }
        let mut rest = &body[12..];
        let mut section = || -> Result<Option<Vec<u8>>, CheckpointError> {
            let (&flag, tail) = rest.split_first().ok_or_else(|| corrupt("truncated"))?;
            rest = tail;
            if flag == 0 {
                return Ok(None);
            }
            let len = rest
                .get(..8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
                .ok_or_else(|| corrupt("truncated"))?;
            let data = rest
                .get(8..8usize.saturating_add(len))
                .ok_or_else(|| corrupt("truncated"))?;
            rest = &rest[8 + len..];
            Ok(Some(data.to_vec()))
        };
        let missing = || corrupt("a required section is missing");
        let progress = section()?.ok_or_else(missing)?;
        let model = section()?.ok_or_else(missing)?;
        let optimizer = section()?.ok_or_else(missing)?;
        let best_model = section()?;
        let average = section()?;
        let progress = rmp_serde::from_slice(&progress)
            .map_err(|e| CheckpointError::Unusable(format!("state: {e}")))?;
        Ok(Self {
            progress,
            model,
            optimizer,
            best_model,
            average,
        })
    }

    /// Writes the checkpoint to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        kiln_core::files::write_atomically(path, &self.to_bytes())?;
        Ok(())
    }

    /// Reads and verifies the checkpoint at `path`.
    pub fn load(path: &Path) -> Result<Self, CheckpointError> {
        Self::from_bytes(&std::fs::read(path)?)
    }

    /// The epochs the checkpoint at `path` holds, read from its header and
    /// scalar section only (the weights are neither read nor checked:
    /// [`load`](Self::load) does that when the run continues). `None`: no
    /// readable checkpoint there.
    pub fn epochs_in(path: &Path) -> Option<u32> {
        use std::io::Read;
        let mut file = std::fs::File::open(path).ok()?;
        // Magic, version, the progress section's flag and length.
        let mut head = [0u8; 8 + 4 + 1 + 8];
        file.read_exact(&mut head).ok()?;
        let version = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
        if &head[..8] != MAGIC || version != VERSION || head[12] != 1 {
            return None;
        }
        let len = u64::from_le_bytes(head[13..21].try_into().expect("8 bytes"));
        let mut progress = Vec::new();
        file.take(len).read_to_end(&mut progress).ok()?;
        let progress: Progress = rmp_serde::from_slice(&progress).ok()?;
        Some(progress.epochs_completed)
    }
}

/// Identifies a spec and the shape of its prepared data.
pub(crate) fn fingerprint(spec: &JobSpec, data: &Prepared) -> String {
    let text = format!(
        "{spec:?}|{}|{}|{}|{}",
        data.train.rows, data.validation.rows, data.width, data.outputs
    );
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `model`'s weights and parameter ids. Through `valid()`, which first
/// folds in BatchNorm's pending running-statistics update (a record read
/// straight from a training model can be one step behind).
pub(crate) fn module_bytes(model: &Mlp) -> Vec<u8> {
    model
        .valid()
        .into_record()
        .into_bytes()
        .expect("a model record serializes")
        .to_vec()
}

/// `arch`'s network on `device` with the weights (and parameter ids, which
/// the optimizer's state is keyed by) of `bytes`.
pub(crate) fn module_from(
    bytes: &[u8],
    arch: &ModelArch,
    device: &Device,
) -> Result<Mlp, CheckpointError> {
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes.to_vec()))
        .map_err(|e| CheckpointError::Corrupt(format!("weights: {e}")))?;
    Ok(Mlp::new(arch, device).load_record(record))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::spec::{LrScheduleKind, LrScheduleSpec};

    fn sample() -> Checkpoint {
        Checkpoint {
            progress: Progress {
                fingerprint: "f".into(),
                learning_rate: 0.1,
                epochs_completed: 3,
                next_row: 64,
                rows_seen: 64,
                batch_losses: vec![0.5, f32::INFINITY],
                batch_rows: vec![32.0, 32.0],
                probe: None,
                step: 11,
                schedule: LrScheduler::new(
                    &LrScheduleSpec {
                        kind: LrScheduleKind::Constant,
                        warmup: None,
                    },
                    0.1,
                    4,
                    10,
                ),
                swalr: None,
                stopper: EarlyStopping::new(None),
                last: None,
                best: None,
                swa_averaged: 0,
                train_seconds: 1.5,
                lr: f64::INFINITY,
                momentum: Some(f64::NAN),
            },
            model: vec![1, 2, 3],
            optimizer: vec![4, 5],
            best_model: None,
            average: Some(vec![6]),
        }
    }

    #[test]
    fn round_trips_bit_for_bit_with_non_finite_values() {
        let c = sample();
        let back = Checkpoint::from_bytes(&c.to_bytes()).unwrap();
        assert_eq!(back.progress.lr, f64::INFINITY);
        assert!(back.progress.momentum.unwrap().is_nan());
        assert_eq!(back.progress.batch_losses, c.progress.batch_losses);
        assert_eq!(back.model, c.model);
        assert_eq!(back.optimizer, c.optimizer);
        assert_eq!(back.best_model, None);
        assert_eq!(back.average, Some(vec![6]));
        assert_eq!(back.to_bytes(), c.to_bytes());
        let path = std::env::temp_dir().join(format!("kiln-ckpt-{}.ckpt", std::process::id()));
        c.save(&path).unwrap();
        assert_eq!(Checkpoint::epochs_in(&path), Some(3));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(Checkpoint::epochs_in(&path), None);
    }

    #[test]
    fn any_flipped_byte_or_truncation_is_detected() {
        let bytes = sample().to_bytes();
        for at in [0, 9, 20, bytes.len() / 2, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x40;
            assert!(
                matches!(
                    Checkpoint::from_bytes(&bad),
                    Err(CheckpointError::Corrupt(_))
                ),
                "byte {at}"
            );
        }
        assert!(Checkpoint::from_bytes(&bytes[..bytes.len() - 5]).is_err());
        assert!(Checkpoint::from_bytes(b"").is_err());
    }
}
