//! A trained model as files (weights plus everything Predict needs to turn
//! rows into answers), and the predictor that serves it.
//!
//! On disk a model is a directory: `weights.bpk`, `model.json` and
//! `SHA256SUMS` (the SHA-256 of the other two, in `sha256sum` format, so
//! `sha256sum -c SHA256SUMS` checks them too). Each file is written to a
//! temporary name, fsynced, renamed and the directory fsynced; `SHA256SUMS`
//! goes last. [`ModelArtifact::load`] verifies both files against it and
//! reports a mismatch as [`ArtifactError::Corrupt`].

use std::fs;
use std::path::Path;

use burn::module::Module;
use burn::store::{ModuleRecord, ModuleSnapshot, SafetensorsStore};
use burn::tensor::{activation, Bytes, Device, Tensor, TensorData};
use kiln_core::encoding::InputEncoding;
use kiln_core::files::{sha256_hex, write_atomically};
use kiln_core::prepare::Prepared;
use kiln_core::scaler::Scaler;
use kiln_core::spec::Task;
use serde::{Deserialize, Serialize};

use crate::model::{Mlp, ModelArch};
use crate::outcome::Trained;

const META_FILE: &str = "model.json";
const WEIGHTS_FILE: &str = "weights.bpk";
const SUMS_FILE: &str = "SHA256SUMS";
/// The safetensors metadata key holding `ModelMeta` as JSON in an exported model.
pub const SAFETENSORS_META_KEY: &str = "kiln.model";

/// Everything about a model but its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    /// The network's shape.
    pub arch: ModelArch,
    /// The input columns and their one-hot encodings; `feature_names` are its features.
    pub encoding: InputEncoding,
    /// The features' names, in input order.
    pub feature_names: Vec<String>,
    /// The target columns' names.
    pub target_names: Vec<String>,
    /// Classification: the label of each class index.
    pub class_labels: Vec<String>,
    /// Standardizes the input features as in training.
    pub feature_scaler: Scaler,
    /// Regression: maps the network's outputs back to the targets' units.
    pub target_scaler: Option<Scaler>,
    /// The epoch whose weights these are.
    pub best_epoch: u32,
    /// Binary: P(class 1) at and above which the class is 1; `None`: the
    /// more probable class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_threshold: Option<f64>,
}

impl ModelMeta {
    /// The class of one row of probabilities: the first most probable, or
    /// for a binary model with a threshold, 1 where P(class 1) reaches it.
    pub fn class_of(&self, probabilities: &[f32]) -> usize {
        match (self.decision_threshold, probabilities) {
            (Some(t), [_, p1]) => usize::from(f64::from(*p1) >= t),
            _ => crate::train::argmax(probabilities),
        }
    }
}

/// A model as saved: its metadata and its weights.
#[derive(Debug, Clone)]
pub struct ModelArtifact {
    /// Everything but the weights.
    pub meta: ModelMeta,
    /// burn's record of the network's weights and BatchNorm statistics.
    pub weights: Vec<u8>,
}

/// Why a model artifact cannot be saved or loaded.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// Reading or writing a file failed.
    #[error("model artifact I/O: {0}")]
    Io(#[from] std::io::Error),
    /// `model.json` does not parse.
    #[error("model artifact metadata: {0}")]
    Meta(#[from] serde_json::Error),
    /// The weights do not serialize or do not fit the network.
    #[error("model artifact weights: {0}")]
    Weights(String),
    /// Not a safetensors file that carries kiln's model metadata.
    #[error("not a kiln model file: {0}")]
    NotAModel(String),
    /// A file does not match its checksum, or is missing.
    #[error("model artifact corrupted: {0}")]
    Corrupt(String),
}

impl ArtifactError {
    /// Whether writing failed for lack of space.
    pub fn is_out_of_space(&self) -> bool {
        matches!(self, ArtifactError::Io(e) if kiln_core::files::is_out_of_space(e))
    }
}

impl ModelArtifact {
    /// The artifact of a finished run on `data` (its encoding and scalers).
    pub fn from_trained(trained: &Trained, data: &Prepared) -> Result<Self, ArtifactError> {
        let weights = trained
            .model
            .clone()
            .into_record()
            .into_bytes()
            .map_err(|e| ArtifactError::Weights(format!("{e:?}")))?;
        Ok(Self {
            meta: ModelMeta {
                arch: trained.arch.clone(),
                encoding: data.encoding.clone(),
                feature_names: data.feature_names.clone(),
                target_names: data.target_names.clone(),
                class_labels: data.class_labels.clone(),
                feature_scaler: data.feature_scaler.clone(),
                target_scaler: data.target_scaler.clone(),
                best_epoch: trained.best.epoch,
                decision_threshold: trained.decisions.as_ref().and_then(|d| d.threshold),
            },
            weights: weights.to_vec(),
        })
    }

    /// Writes `dir/weights.bpk`, `dir/model.json` and then `dir/SHA256SUMS`,
    /// each atomically (temporary file, fsync, rename, fsync of the directory).
    pub fn save(&self, dir: &Path) -> Result<(), ArtifactError> {
        fs::create_dir_all(dir)?;
        if let Some(parent) = dir.parent() {
            fs::File::open(parent)?.sync_all()?;
        }
        let meta = serde_json::to_vec_pretty(&self.meta)?;
        // A stale checksum file must never vouch for half-replaced files.
        if let Err(e) = fs::remove_file(dir.join(SUMS_FILE)) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(e.into());
            }
        }
        write_atomically(&dir.join(WEIGHTS_FILE), &self.weights)?;
        write_atomically(&dir.join(META_FILE), &meta)?;
        let sums = format!(
            "{}  {WEIGHTS_FILE}\n{}  {META_FILE}\n",
            sha256_hex(&self.weights),
            sha256_hex(&meta)
        );
        write_atomically(&dir.join(SUMS_FILE), sums.as_bytes())?;
        Ok(())
    }

    /// Reads a directory written by [`save`](Self::save), checking every file
    /// against `SHA256SUMS`.
    pub fn load(dir: &Path) -> Result<Self, ArtifactError> {
        // Named by its last two components (`models/<job id>`): the message
        // reaches clients, who have no business with the server's paths.
        let mut shown: Vec<_> = dir.iter().rev().take(2).collect();
        shown.reverse();
        let shown: std::path::PathBuf = shown.into_iter().collect();
        let corrupt = |why: String| ArtifactError::Corrupt(format!("{}: {why}", shown.display()));
        let read = |name: &str| {
            fs::read(dir.join(name)).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => corrupt(format!("{name} is missing")),
                _ => ArtifactError::Io(e),
            })
        };
        let sums = String::from_utf8(read(SUMS_FILE)?)
            .map_err(|_| corrupt(format!("{SUMS_FILE} is not text")))?;
        let expected = |name: &str| {
            sums.lines()
                .find_map(|l| l.strip_suffix(name)?.strip_suffix("  "))
                .map(str::to_string)
                .ok_or_else(|| corrupt(format!("{SUMS_FILE} has no checksum for {name}")))
        };
        let mut files = Vec::new();
        for name in [META_FILE, WEIGHTS_FILE] {
            let bytes = read(name)?;
            let (want, got) = (expected(name)?, sha256_hex(&bytes));
            if want != got {
                return Err(corrupt(format!(
                    "{name} has SHA-256 {got}, but {want} was recorded when it was saved"
                )));
            }
            files.push(bytes);
        }
        let weights = files.pop().expect("two files");
        let meta = files.pop().expect("two files");
        Ok(Self {
            meta: serde_json::from_slice(&meta)?,
            weights,
        })
    }

    /// The network, with its weights, on `device`.
    fn model(&self, device: &Device) -> Result<Mlp, ArtifactError> {
        let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(self.weights.clone()))
            .map_err(|e| ArtifactError::Weights(format!("{e:?}")))?;
        Ok(Mlp::new(&self.meta.arch, device).load_record(record))
    }

    /// One portable file: a safetensors file with every parameter and
    /// BatchNorm statistic as a named F32 tensor, and the metadata (as JSON)
    /// under the key `kiln.model`.
    pub fn to_safetensors(&self) -> Result<Vec<u8>, ArtifactError> {
        let model = self.model(&crate::device::cpu())?;
        let mut store = SafetensorsStore::from_bytes(None)
            .metadata(SAFETENSORS_META_KEY, serde_json::to_string(&self.meta)?);
        model
            .save_into(&mut store)
            .map_err(|e| ArtifactError::Weights(e.to_string()))?;
        store
            .get_bytes()
            .map_err(|e| ArtifactError::Weights(e.to_string()))
    }

    /// Reads a file written by `to_safetensors`; every tensor the network
    /// needs must be there with its shape.
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self, ArtifactError> {
        let meta: ModelMeta = serde_json::from_str(&safetensors_metadata(bytes)?)?;
        let mut model = Mlp::new(&meta.arch, &crate::device::cpu());
        let mut store = SafetensorsStore::from_bytes(Some(bytes.to_vec()));
        model
            .load_from(&mut store)
            .map_err(|e| ArtifactError::Weights(e.to_string()))?;
        let weights = model
            .into_record()
            .into_bytes()
            .map_err(|e| ArtifactError::Weights(format!("{e:?}")))?;
        Ok(Self {
            meta,
            weights: weights.to_vec(),
        })
    }
}

/// The `kiln.model` entry of a safetensors file's `__metadata__`: the header
/// is an 8-byte little-endian length, then that many bytes of JSON.
fn safetensors_metadata(bytes: &[u8]) -> Result<String, ArtifactError> {
    let not_a_model = |why: &str| ArtifactError::NotAModel(why.to_string());
    let len = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
        .ok_or_else(|| not_a_model("shorter than a safetensors header"))?;
    let header = bytes
        .get(8..8usize.saturating_add(len))
        .ok_or_else(|| not_a_model("truncated safetensors header"))?;
    let header: serde_json::Value =
        serde_json::from_slice(header).map_err(|_| not_a_model("unreadable safetensors header"))?;
    header["__metadata__"][SAFETENSORS_META_KEY]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| not_a_model("no \"kiln.model\" metadata in the safetensors header"))
}

/// What a model answers for a batch of rows.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Regression: `width` values per row, in the targets' original units.
    Values {
        /// Row-major, `width` per row.
        values: Vec<f32>,
        /// Targets per row.
        width: usize,
    },
    /// Classification: one probability per class per row.
    Probabilities {
        /// Row-major, `classes` per row.
        probs: Vec<f32>,
        /// Classes per row (2 for a binary task).
        classes: usize,
    },
}

/// An evaluation-mode model on one device, with its scalers.
#[derive(Debug)]
pub struct Predictor {
    model: Mlp,
    /// The model's metadata.
    pub meta: ModelMeta,
    device: Device,
}

impl Predictor {
    /// Loads `artifact`'s network onto `device` in evaluation mode.
    pub fn new(artifact: &ModelArtifact, device: &Device) -> Result<Self, ArtifactError> {
        Ok(Self {
            model: artifact.model(device)?,
            meta: artifact.meta.clone(),
            device: device.clone(),
        })
    }

    /// Features per row.
    pub fn width(&self) -> usize {
        self.meta.arch.inputs
    }

    /// Predicts for row-major `rows` (a multiple of `width()` values), in order.
    pub fn predict(&self, rows: &[f32]) -> Output {
        let width = self.width();
        let n = rows.len() / width;
        let mut x = rows.to_vec();
        self.meta.feature_scaler.transform(&mut x);
        let x = Tensor::<2>::from_data(TensorData::new(x, [n, width]), &self.device);
        let out = self.model.forward(x);
        let to_vec = |t: Tensor<2>| t.into_data().try_into_vec::<f32>().expect("f32 outputs");
        match self.meta.arch.task {
            Task::Regression => {
                let mut values = to_vec(out);
                if let Some(scaler) = &self.meta.target_scaler {
                    scaler.inverse(&mut values);
                }
                Output::Values {
                    values,
                    width: self.meta.arch.outputs,
                }
            }
            Task::Binary => {
                let p1 = to_vec(activation::sigmoid(out));
                let probs = p1.iter().flat_map(|&p| [1.0 - p, p]).collect();
                Output::Probabilities { probs, classes: 2 }
            }
            Task::Multiclass => Output::Probabilities {
                probs: to_vec(activation::softmax(out, 1)),
                classes: self.meta.arch.outputs,
            },
        }
    }
}
