//! Writes TensorBoard event logs: scalars, and the HParams plugin's data so
//! TensorBoard's HParams tab can compare runs. No TensorFlow needed.
//!
//! # Format
//!
//! A run is a directory; TensorBoard reads every file in it whose name
//! contains `tfevents`. [`EventWriter`] creates one
//! `events.out.tfevents.<unix secs>.<hostname>.<pid>.kiln` file per writer.
//! The file is a sequence of TFRecord records, each
//!
//! ```text
//! u64 LE length | u32 LE masked crc32c(length bytes) | data | u32 LE masked crc32c(data)
//! ```
//!
//! with CRC-32C (Castagnoli) and `mask(c) = ((c >> 15) | (c << 17)) + 0xa282ead8`.
//! Each record's data is a serialized `tensorboard.Event` protobuf. The first
//! event carries `file_version = "brain.Event:2"`; the rest carry a `Summary`.
//!
//! * Scalars are written the way `torch.utils.tensorboard`'s
//!   `SummaryWriter.add_scalar` writes them: a `Summary.Value` with `tag` and
//!   `simple_value` (f32). TensorBoard's `EventAccumulator.Scalars(tag)` and
//!   the Scalars dashboard read these.
//! * Hyperparameters mirror `torch.utils.tensorboard.summary.hparams()` (what
//!   `SummaryWriter.add_hparams` writes): three values with tags
//!   `_hparams_/experiment`, `_hparams_/session_start_info` and
//!   `_hparams_/session_end_info`, each carrying `SummaryMetadata.plugin_data
//!   = {plugin_name: "hparams", content: HParamsPluginData (version 0)}`.
//!   Like TensorBoard's own `hp.hparams()` (summary_v2.py), the value is an
//!   empty `DT_FLOAT` tensor and the metadata's `data_class` is
//!   `DATA_CLASS_TENSOR`. The experiment is written into every run (as torch
//!   does); the HParams plugin takes the first run's experiment for its
//!   columns, so runs meant to be compared should log the same hparam names.
//!   A metric named in the experiment is the scalar with that tag in the same
//!   run.
//!
//! # References
//!
//! * tensorflow/tensorboard: `tensorboard/compat/proto/event.proto`,
//!   `summary.proto`, `tensor.proto`; `tensorboard/plugins/hparams/api.proto`,
//!   `plugin_data.proto`, `metadata.py`, `summary_v2.py`;
//!   `tensorboard/summary/writer/record_writer.py` (framing).
//! * pytorch/pytorch: `torch/utils/tensorboard/summary.py` (`scalar`,
//!   `hparams`) and `writer.py` (`add_hparams`).
//!
//! The messages are hand-written prost structs in [`proto`], holding only the
//! fields this crate sets.
//!
//! # Example
//!
//! ```no_run
//! use kiln_tensorboard::{EventWriter, HParamValue, SessionStatus};
//! # fn main() -> std::io::Result<()> {
//! let mut w = EventWriter::create(std::path::Path::new("runs/job-1"))?;
//! w.hparams(
//!     &[("lr", HParamValue::Number(1e-3)), ("optimizer", "adam".into())],
//!     &["loss"],
//! )?;
//! for step in 1..=10 {
//!     w.scalar("loss", step, 1.0 / step as f32)?;
//! }
//! w.session_end(SessionStatus::Success)?;
//! # Ok(())
//! # }
//! ```

mod crc32c;
pub mod proto;
pub mod record;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;

pub use crc32c::{crc32c, masked_crc32c};

/// The `file_version` of the first event in every file.
pub const FILE_VERSION: &str = "brain.Event:2";
/// The HParams plugin's name, its data version, and its tags
/// (tensorboard/plugins/hparams/metadata.py).
pub const HPARAMS_PLUGIN_NAME: &str = "hparams";
pub const HPARAMS_PLUGIN_DATA_VERSION: i32 = 0;
pub const EXPERIMENT_TAG: &str = "_hparams_/experiment";
pub const SESSION_START_INFO_TAG: &str = "_hparams_/session_start_info";
pub const SESSION_END_INFO_TAG: &str = "_hparams_/session_end_info";

/// A hyperparameter's value, as the HParams plugin types it.
#[derive(Clone, Debug, PartialEq)]
pub enum HParamValue {
    /// `DATA_TYPE_FLOAT64` (integers too).
    Number(f64),
    /// `DATA_TYPE_STRING`.
    Text(String),
    /// `DATA_TYPE_BOOL`.
    Bool(bool),
}

impl From<f64> for HParamValue {
    fn from(v: f64) -> Self {
        HParamValue::Number(v)
    }
}
impl From<f32> for HParamValue {
    fn from(v: f32) -> Self {
        HParamValue::Number(v as f64)
    }
}
impl From<i64> for HParamValue {
    fn from(v: i64) -> Self {
        HParamValue::Number(v as f64)
    }
}
impl From<u32> for HParamValue {
    fn from(v: u32) -> Self {
        HParamValue::Number(v as f64)
    }
}
impl From<usize> for HParamValue {
    fn from(v: usize) -> Self {
        HParamValue::Number(v as f64)
    }
}
impl From<bool> for HParamValue {
    fn from(v: bool) -> Self {
        HParamValue::Bool(v)
    }
}
impl From<&str> for HParamValue {
    fn from(v: &str) -> Self {
        HParamValue::Text(v.to_string())
    }
}
impl From<String> for HParamValue {
    fn from(v: String) -> Self {
        HParamValue::Text(v)
    }
}

/// How a session (run) ended: `tensorboard.hparams.Status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionStatus {
    Unknown,
    Success,
    Failure,
    Running,
}

impl From<SessionStatus> for proto::Status {
    fn from(s: SessionStatus) -> Self {
        match s {
            SessionStatus::Unknown => proto::Status::Unknown,
            SessionStatus::Success => proto::Status::Success,
            SessionStatus::Failure => proto::Status::Failure,
            SessionStatus::Running => proto::Status::Running,
        }
    }
}

/// Appends events to one new event file in a run directory. Writes are
/// buffered: call [`flush`](Self::flush) to make them visible to a live
/// TensorBoard (dropping the writer flushes too, ignoring errors).
/// [`hparams`](Self::hparams) and [`session_end`](Self::session_end) flush.
pub struct EventWriter {
    out: BufWriter<File>,
    path: PathBuf,
}

impl EventWriter {
    /// Creates `run_dir` (and its parents) and a new event file in it, and
    /// writes the `file_version` event.
    pub fn create(run_dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(run_dir)?;
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let base = format!(
            "events.out.tfevents.{secs}.{}.{}",
            hostname(),
            std::process::id()
        );
        // Two writers on one run dir in the same second: number the later.
        let mut n = 0u32;
        let (file, path) = loop {
            let name = if n == 0 {
                format!("{base}.kiln")
            } else {
                format!("{base}.{n}.kiln")
            };
            let path = run_dir.join(name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => break (f, path),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return Err(e),
            }
        };
        let mut w = EventWriter {
            out: BufWriter::new(file),
            path,
        };
        w.write_event(proto::Event {
            wall_time: now(),
            step: 0,
            what: Some(proto::event::What::FileVersion(FILE_VERSION.to_string())),
        })?;
        w.flush()?;
        Ok(w)
    }

    /// The event file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Logs `value` for `tag` at `step`, stamped with the current time.
    pub fn scalar(&mut self, tag: &str, step: i64, value: f32) -> io::Result<()> {
        self.scalar_at(tag, step, value, now())
    }

    /// Logs `value` for `tag` at `step` with an explicit `wall_time`
    /// (seconds since the Unix epoch).
    pub fn scalar_at(
        &mut self,
        tag: &str,
        step: i64,
        value: f32,
        wall_time: f64,
    ) -> io::Result<()> {
        self.write_summary(
            step,
            wall_time,
            proto::SummaryValue {
                tag: tag.to_string(),
                metadata: None,
                value: Some(proto::summary_value::Value::SimpleValue(value)),
            },
        )
    }

    /// Logs this run's hyperparameters and the scalar tags that are its
    /// metrics, as the HParams plugin's experiment and session start info
    /// (at step 0). Names must be distinct. Call once per run, before or
    /// after logging scalars; end the run with
    /// [`session_end`](Self::session_end).
    pub fn hparams<K: AsRef<str>, M: AsRef<str>>(
        &mut self,
        hparams: &[(K, HParamValue)],
        metrics: &[M],
    ) -> io::Result<()> {
        let time = now();
        let mut values = BTreeMap::new();
        let mut infos = Vec::with_capacity(hparams.len());
        for (name, value) in hparams {
            let name = name.as_ref();
            let (kind, r#type) = match value {
                HParamValue::Number(v) => (
                    proto::value::Kind::NumberValue(*v),
                    proto::DataType::Float64,
                ),
                HParamValue::Text(v) => (
                    proto::value::Kind::StringValue(v.clone()),
                    proto::DataType::String,
                ),
                HParamValue::Bool(v) => (proto::value::Kind::BoolValue(*v), proto::DataType::Bool),
            };
            let value = proto::Value { kind: Some(kind) };
            if values.insert(name.to_string(), value).is_some() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("hparam {name:?} given twice"),
                ));
            }
            infos.push(proto::HParamInfo {
                name: name.to_string(),
                r#type: r#type as i32,
            });
        }
        let experiment = proto::Experiment {
            time_created_secs: time,
            hparam_infos: infos,
            metric_infos: metrics
                .iter()
                .map(|tag| proto::MetricInfo {
                    name: Some(proto::MetricName {
                        group: String::new(),
                        tag: tag.as_ref().to_string(),
                    }),
                })
                .collect(),
        };
        let start = proto::SessionStartInfo {
            hparams: values,
            start_time_secs: time,
        };
        use proto::hparams_plugin_data::Data;
        self.write_hparams(EXPERIMENT_TAG, time, Data::Experiment(experiment))?;
        self.write_hparams(SESSION_START_INFO_TAG, time, Data::SessionStartInfo(start))?;
        self.flush()
    }

    /// Marks the run's session as ended with `status`, for the HParams tab.
    pub fn session_end(&mut self, status: SessionStatus) -> io::Result<()> {
        let time = now();
        let end = proto::SessionEndInfo {
            status: proto::Status::from(status) as i32,
            end_time_secs: time,
        };
        self.write_hparams(
            SESSION_END_INFO_TAG,
            time,
            proto::hparams_plugin_data::Data::SessionEndInfo(end),
        )?;
        self.flush()
    }

    /// Flushes buffered events to the file.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn write_hparams(
        &mut self,
        tag: &str,
        wall_time: f64,
        data: proto::hparams_plugin_data::Data,
    ) -> io::Result<()> {
        let content = proto::HParamsPluginData {
            version: HPARAMS_PLUGIN_DATA_VERSION,
            data: Some(data),
        }
        .encode_to_vec();
        let value = proto::SummaryValue {
            tag: tag.to_string(),
            metadata: Some(proto::SummaryMetadata {
                plugin_data: Some(proto::PluginData {
                    plugin_name: HPARAMS_PLUGIN_NAME.to_string(),
                    content,
                }),
                data_class: proto::DataClass::Tensor as i32,
            }),
            // hparams metadata.NULL_TENSOR: an empty float vector.
            value: Some(proto::summary_value::Value::Tensor(proto::TensorProto {
                dtype: proto::DT_FLOAT,
                tensor_shape: Some(proto::TensorShapeProto {
                    dim: vec![proto::TensorShapeDim { size: 0 }],
                }),
            })),
        };
        self.write_summary(0, wall_time, value)
    }

    fn write_summary(
        &mut self,
        step: i64,
        wall_time: f64,
        value: proto::SummaryValue,
    ) -> io::Result<()> {
        self.write_event(proto::Event {
            wall_time,
            step,
            what: Some(proto::event::What::Summary(proto::Summary {
                value: vec![value],
            })),
        })
    }

    fn write_event(&mut self, event: proto::Event) -> io::Result<()> {
        record::write_record(&mut self.out, &event.encode_to_vec())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        let _ = self.out.flush();
    }
}

/// Seconds since the Unix epoch, as TensorBoard's `wall_time`.
fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The host name for the file name (Linux: /proc; else `$HOSTNAME`), kept to
/// characters safe in a file name.
fn hostname() -> String {
    let raw = fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    if name.is_empty() {
        "localhost".to_string()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{event::What, hparams_plugin_data::Data, summary_value};

    fn events(w: &EventWriter) -> Vec<proto::Event> {
        let bytes = fs::read(w.path()).unwrap();
        record::read_records(&bytes)
            .unwrap()
            .iter()
            .map(|r| proto::Event::decode(r.as_slice()).unwrap())
            .collect()
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "kiln-tensorboard-{name}-{}-{}",
            std::process::id(),
            now()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn writes_file_version_scalars_and_hparams() {
        let dir = temp_dir("unit");
        let mut w = EventWriter::create(&dir.join("run")).unwrap();
        let name = w.path().file_name().unwrap().to_str().unwrap().to_string();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        assert!(name.ends_with(".kiln"), "{name}");
        w.scalar("loss", 1, 0.0).unwrap();
        w.scalar_at("loss", 2, 0.5, 123.25).unwrap();
        w.hparams(
            &[
                ("lr", 0.1.into()),
                ("opt", "sgd".into()),
                ("nesterov", true.into()),
            ],
            &["loss"],
        )
        .unwrap();
        w.session_end(SessionStatus::Failure).unwrap();
        let ev = events(&w);
        assert_eq!(ev.len(), 6);
        assert_eq!(ev[0].what, Some(What::FileVersion("brain.Event:2".into())));

        let value = |e: &proto::Event| match &e.what {
            Some(What::Summary(s)) => {
                assert_eq!(s.value.len(), 1);
                s.value[0].clone()
            }
            other => panic!("not a summary: {other:?}"),
        };
        // A zero scalar is still written as a simple_value.
        let v = value(&ev[1]);
        assert_eq!((v.tag.as_str(), ev[1].step), ("loss", 1));
        assert_eq!(v.value, Some(summary_value::Value::SimpleValue(0.0)));
        assert_eq!(ev[2].wall_time, 123.25);
        assert_eq!(
            value(&ev[2]).value,
            Some(summary_value::Value::SimpleValue(0.5))
        );

        let plugin = |v: &proto::SummaryValue| {
            let pd = v.metadata.as_ref().unwrap().plugin_data.as_ref().unwrap();
            assert_eq!(pd.plugin_name, "hparams");
            let data = proto::HParamsPluginData::decode(pd.content.as_slice()).unwrap();
            assert_eq!(data.version, 0);
            data.data.unwrap()
        };
        let tags: Vec<String> = ev[3..].iter().map(|e| value(e).tag).collect();
        assert_eq!(
            tags,
            [EXPERIMENT_TAG, SESSION_START_INFO_TAG, SESSION_END_INFO_TAG]
        );
        let Data::Experiment(exp) = plugin(&value(&ev[3])) else {
            panic!()
        };
        let infos: Vec<(String, i32)> = exp
            .hparam_infos
            .iter()
            .map(|i| (i.name.clone(), i.r#type))
            .collect();
        assert_eq!(
            infos,
            [("lr".into(), 3), ("opt".into(), 1), ("nesterov".into(), 2)]
        );
        assert_eq!(exp.metric_infos[0].name.as_ref().unwrap().tag, "loss");
        let Data::SessionStartInfo(start) = plugin(&value(&ev[4])) else {
            panic!()
        };
        assert_eq!(
            start.hparams["lr"].kind,
            Some(proto::value::Kind::NumberValue(0.1))
        );
        assert_eq!(
            start.hparams["opt"].kind,
            Some(proto::value::Kind::StringValue("sgd".into()))
        );
        assert_eq!(
            start.hparams["nesterov"].kind,
            Some(proto::value::Kind::BoolValue(true))
        );
        let Data::SessionEndInfo(end) = plugin(&value(&ev[5])) else {
            panic!()
        };
        assert_eq!(end.status, 2);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hparams_tensor_is_tensorboards_null_tensor() {
        // metadata.NULL_TENSOR.SerializeToString() in tensorboard 2.21.
        let t = proto::TensorProto {
            dtype: proto::DT_FLOAT,
            tensor_shape: Some(proto::TensorShapeProto {
                dim: vec![proto::TensorShapeDim { size: 0 }],
            }),
        };
        assert_eq!(t.encode_to_vec(), [0x08, 0x01, 0x12, 0x02, 0x12, 0x00]);
    }

    #[test]
    fn duplicate_hparam_is_rejected_and_two_writers_get_two_files() {
        let dir = temp_dir("dup");
        let mut a = EventWriter::create(&dir).unwrap();
        let b = EventWriter::create(&dir).unwrap();
        assert_ne!(a.path(), b.path());
        let err = a
            .hparams(
                &[("x".to_string(), 1.0.into()), ("x".to_string(), 2.0.into())],
                &[] as &[&str],
            )
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        drop((a, b));
        fs::remove_dir_all(&dir).unwrap();
    }
}
