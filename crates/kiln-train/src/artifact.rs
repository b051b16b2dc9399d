//! A trained model as files (weights plus everything Predict needs to turn
//! rows into answers), and the predictor that serves it.

use std::fs;
use std::path::Path;

use burn::module::Module;
use burn::store::{ModuleRecord, ModuleSnapshot, SafetensorsStore};
use burn::tensor::{activation, Bytes, Device, Tensor, TensorData};
use kiln_core::encoding::InputEncoding;
use kiln_core::prepare::Prepared;
use kiln_core::scaler::Scaler;
use kiln_core::spec::Task;
use serde::{Deserialize, Serialize};

use crate::model::{Mlp, ModelArch};
use crate::train::Trained;

const META_FILE: &str = "model.json";
const WEIGHTS_FILE: &str = "weights.bpk";
/// The safetensors metadata key holding `ModelMeta` as JSON in an exported model.
pub const SAFETENSORS_META_KEY: &str = "kiln.model";

/// Everything about a model but its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    pub arch: ModelArch,
    /// The input columns and their one-hot encodings; `feature_names` are its features.
    pub encoding: InputEncoding,
    pub feature_names: Vec<String>,
    pub target_names: Vec<String>,
    /// Classification: the label of each class index.
    pub class_labels: Vec<String>,
    pub feature_scaler: Scaler,
    pub target_scaler: Option<Scaler>,
    pub best_epoch: u32,
}

#[derive(Debug, Clone)]
pub struct ModelArtifact {
    pub meta: ModelMeta,
    /// burn's record of the network's weights and BatchNorm statistics.
    pub weights: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("model artifact I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("model artifact metadata: {0}")]
    Meta(#[from] serde_json::Error),
    #[error("model artifact weights: {0}")]
    Weights(String),
    #[error("not a kiln model file: {0}")]
    NotAModel(String),
}

impl ModelArtifact {
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
            },
            weights: weights.to_vec(),
        })
    }

    /// Writes `dir/model.json` and `dir/weights.bpk`, each through a temporary file.
    pub fn save(&self, dir: &Path) -> Result<(), ArtifactError> {
        fs::create_dir_all(dir)?;
        write_atomically(&dir.join(WEIGHTS_FILE), &self.weights)?;
        write_atomically(
            &dir.join(META_FILE),
            &serde_json::to_vec_pretty(&self.meta)?,
        )?;
        Ok(())
    }

    pub fn load(dir: &Path) -> Result<Self, ArtifactError> {
        Ok(Self {
            meta: serde_json::from_slice(&fs::read(dir.join(META_FILE))?)?,
            weights: fs::read(dir.join(WEIGHTS_FILE))?,
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

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes)?;
    fs::File::open(&tmp)?.sync_all()?;
    fs::rename(tmp, path)
}

/// What a model answers for a batch of rows.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Regression: `width` values per row, in the targets' original units.
    Values { values: Vec<f32>, width: usize },
    /// Classification: one probability per class per row.
    Probabilities { probs: Vec<f32>, classes: usize },
}

/// An evaluation-mode model on one device, with its scalers.
#[derive(Debug)]
pub struct Predictor {
    model: Mlp,
    pub meta: ModelMeta,
    device: Device,
}

impl Predictor {
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
