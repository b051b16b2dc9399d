//! Job files: a `SubmitJobRequest` in the proto3 JSON mapping (what grpcurl
//! takes), written as JSON or YAML, read through the proto descriptors. The
//! same machinery reads any kiln message ([`load_message_file`]), e.g. a
//! `SubmitSweepRequest` ([`load_sweep_file`]).

use std::path::Path;
use std::sync::OnceLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor};

use crate::{pb, Error, Result};

/// How a job file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobFileFormat {
    Json,
    Yaml,
}

impl JobFileFormat {
    /// By extension: `.json`, or `.yaml` / `.yml`.
    pub fn from_path(path: &Path) -> Option<JobFileFormat> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "json" => Some(JobFileFormat::Json),
            "yaml" | "yml" => Some(JobFileFormat::Yaml),
            _ => None,
        }
    }
}

/// Reads a job file (`.json`, `.yaml` or `.yml`): a `SubmitJobRequest` in the
/// proto3 JSON mapping, as grpcurl takes it (field names in lowerCamelCase or
/// as in the proto, enums by name). An unknown field or enum value is an
/// error naming it, e.g. `job.yaml: spec.training: unrecognized field name 'epoch'`.
pub fn load_job_file(path: impl AsRef<Path>) -> Result<pb::SubmitJobRequest> {
    load_message_file(path, "kiln.v1.SubmitJobRequest")
}

/// Reads a sweep file: a `SubmitSweepRequest` in the proto3 JSON mapping, as
/// JSON or YAML (see [`load_job_file`]).
pub fn load_sweep_file(path: impl AsRef<Path>) -> Result<pb::SubmitSweepRequest> {
    load_message_file(path, "kiln.v1.SubmitSweepRequest")
}

/// Parses a sweep from text; see [`load_sweep_file`].
pub fn parse_sweep(text: &str, format: JobFileFormat) -> Result<pb::SubmitSweepRequest> {
    parse_message(text, format, "kiln.v1.SubmitSweepRequest")
}

/// Reads a file holding the kiln message `message_name` (a full name such as
/// `kiln.v1.SubmitSweepRequest`) in the proto3 JSON mapping, as JSON or YAML.
pub fn load_message_file<M: Message + Default>(
    path: impl AsRef<Path>,
    message_name: &str,
) -> Result<M> {
    let path = path.as_ref();
    let job_error = |message: String| Error::JobFile {
        path: path.to_path_buf(),
        message,
    };
    let format = JobFileFormat::from_path(path).ok_or_else(|| {
        job_error("unknown job file type: the name must end in .json, .yaml or .yml".into())
    })?;
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_message(&text, format, message_name).map_err(|e| match e {
        Error::JobFile { message, .. } => job_error(message),
        other => other,
    })
}

/// Parses a job from text; see [`load_job_file`].
///
/// ```
/// use kiln_client::{parse_job, pb, JobFileFormat};
///
/// let yaml = "
/// spec:
///   modelName: rings
///   task: TASK_BINARY_CLASSIFICATION
///   data: { datasetId: ds-1, targetColumns: [label] }
///   training: { epochs: 5 }
/// ";
/// let request = parse_job(yaml, JobFileFormat::Yaml)?;
/// let spec = request.spec.unwrap();
/// assert_eq!(spec.task(), pb::Task::BinaryClassification);
/// assert_eq!(spec.training.unwrap().epochs, 5);
///
/// let err = parse_job(r#"{"spec": {"modelNmae": "x"}}"#, JobFileFormat::Json).unwrap_err();
/// assert!(err.to_string().contains("modelNmae"));
/// # Ok::<(), kiln_client::Error>(())
/// ```
pub fn parse_job(text: &str, format: JobFileFormat) -> Result<pb::SubmitJobRequest> {
    parse_message(text, format, "kiln.v1.SubmitJobRequest")
}

/// Parses the kiln message `message_name` from JSON or YAML text in the
/// proto3 JSON mapping; errors name the field path.
pub fn parse_message<M: Message + Default>(
    text: &str,
    format: JobFileFormat,
    message_name: &str,
) -> Result<M> {
    let job_error = |message: String| Error::JobFile {
        path: "<job>".into(),
        message,
    };
    let value: serde_json::Value = match format {
        JobFileFormat::Json => serde_json::from_str(text).map_err(|e| job_error(e.to_string()))?,
        JobFileFormat::Yaml => {
            serde_norway::from_str(text).map_err(|e| job_error(e.to_string()))?
        }
    };
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    let mut track = serde_path_to_error::Track::new();
    let descriptor = descriptor(message_name)
        .ok_or_else(|| job_error(format!("no message {message_name} in kiln's protos")))?;
    let message = DynamicMessage::deserialize_with_options(
        descriptor,
        serde_path_to_error::Deserializer::new(&value, &mut track),
        &options,
    )
    .map_err(|e| {
        let path = track.path().to_string();
        if path == "." || path.is_empty() {
            job_error(e.to_string())
        } else {
            job_error(format!("{path}: {e}"))
        }
    })?;
    M::decode(message.encode_to_vec().as_slice())
        .map_err(|e| job_error(format!("cannot convert the message: {e}")))
}

/// A message of the descriptors compiled into the `kiln` crate.
fn descriptor(name: &str) -> Option<MessageDescriptor> {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(kiln::FILE_DESCRIPTOR_SET)
            .expect("kiln's file descriptor set decodes")
    })
    .get_message_by_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn examples() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples")
    }

    fn err(text: &str, format: JobFileFormat) -> String {
        parse_job(text, format).unwrap_err().to_string()
    }

    #[test]
    fn the_example_sweep_loads() {
        let sweep = load_sweep_file(examples().join("sweep.yaml")).unwrap();
        assert_eq!(sweep.method(), pb::SearchMethod::Grid);
        assert_eq!(sweep.search_space.len(), 2);
        assert!(sweep
            .search_space
            .contains_key("training.optimizer.learning_rate"));
        assert!(sweep.base.unwrap().data.is_some());
        assert!(matches!(
            sweep.early_termination.and_then(|e| e.policy),
            Some(pb::early_termination::Policy::Asha(_))
        ));
        let e = parse_sweep("base: {}\nsearch_spaec: {}\n", JobFileFormat::Yaml).unwrap_err();
        assert!(e.to_string().contains("search_spaec"), "{e}");
    }

    #[test]
    fn every_example_job_loads() {
        let mut loaded = 0;
        for entry in std::fs::read_dir(examples()).unwrap() {
            let path = entry.unwrap().path();
            if JobFileFormat::from_path(&path).is_none() {
                continue;
            }
            if path.file_stem().is_some_and(|s| s == "sweep") {
                continue; // a SubmitSweepRequest, tested above
            }
            let request = load_job_file(&path).unwrap_or_else(|e| panic!("{e}"));
            let spec = request.spec.expect("a spec");
            assert!(spec.task != 0, "{}: no task", path.display());
            assert!(spec.data.is_some(), "{}: no data", path.display());
            loaded += 1;
        }
        assert!(loaded >= 5, "only {loaded} example jobs");
    }

    #[test]
    fn yaml_example_equals_its_json() {
        let yaml = load_job_file(examples().join("rings.yaml")).unwrap();
        let json = load_job_file(examples().join("rings.json")).unwrap();
        assert_eq!(yaml, json);
        let spec = json.spec.unwrap();
        assert_eq!(spec.model_name, "rings");
        assert_eq!(spec.task(), pb::Task::BinaryClassification);
        let data = spec.data.unwrap();
        match data.source {
            Some(pb::data_spec::Source::Inline(inline)) => assert_eq!(inline.rows.len(), 400),
            other => panic!("unexpected source {other:?}"),
        }
        assert_eq!(spec.training.unwrap().epochs, 60);
    }

    #[test]
    fn snake_case_and_camel_case_names_both_work() {
        let a = parse_job(
            r#"{"spec": {"model_name": "m", "training": {"batch_size": 8}}}"#,
            JobFileFormat::Json,
        )
        .unwrap();
        let b = parse_job(
            "spec: {modelName: m, training: {batchSize: 8}}",
            JobFileFormat::Yaml,
        )
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.spec.unwrap().training.unwrap().batch_size, 8);
    }

    #[test]
    fn unknown_fields_are_named() {
        let e = err("spec:\n  training:\n    epochz: 3\n", JobFileFormat::Yaml);
        assert!(e.contains("epochz"), "{e}");
        assert!(e.contains("spec.training"), "{e}");
        let e = err(r#"{"spec": {}, "extra": 1}"#, JobFileFormat::Json);
        assert!(e.contains("extra"), "{e}");
    }

    #[test]
    fn wrong_enum_values_are_named() {
        let e = err("spec:\n  task: TASK_CLUSTERING\n", JobFileFormat::Yaml);
        assert!(e.contains("spec.task"), "{e}");
        assert!(e.contains("TASK_CLUSTERING"), "{e}");
        let e = err(
            r#"{"spec": {"model": {"hiddenLayers": [{"units": 4}, {"activation": "RELU"}]}}}"#,
            JobFileFormat::Json,
        );
        assert!(e.contains("spec.model.hiddenLayers[1].activation"), "{e}");
    }

    #[test]
    fn wrong_types_and_syntax_are_errors() {
        let e = err(
            "spec:\n  training:\n    epochs: many\n",
            JobFileFormat::Yaml,
        );
        assert!(e.contains("spec.training.epochs"), "{e}");
        assert!(parse_job("spec: [", JobFileFormat::Yaml).is_err());
        assert!(parse_job("{", JobFileFormat::Json).is_err());
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("kiln-client-jobfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.yml");
        std::fs::write(&bad, "spec:\n  modelNam: x\n").unwrap();
        let e = load_job_file(&bad).unwrap_err().to_string();
        assert!(e.starts_with(&bad.display().to_string()), "{e}");
        assert!(e.contains("modelNam"), "{e}");
        let txt = dir.join("job.txt");
        std::fs::write(&txt, "{}").unwrap();
        assert!(load_job_file(&txt)
            .unwrap_err()
            .to_string()
            .contains(".yaml"));
        assert!(matches!(
            load_job_file(dir.join("missing.json")),
            Err(Error::Io { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
