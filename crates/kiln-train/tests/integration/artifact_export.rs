//! A trained model exported as one safetensors file and imported again
//! predicts exactly what the original does, BatchNorm statistics and PReLU
//! slopes included; files that are not kiln models are refused.

use crate::common::regression_data;
use kiln::v1 as pb;
use kiln_core::encoding::InputEncoding;
use kiln_core::prepare::Prepared;
use kiln_core::scaler::Scaler;
use kiln_core::spec::JobSpec;
use kiln_train::artifact::ArtifactError;
use kiln_train::{ModelArtifact, Predictor};

fn trained_artifact() -> ModelArtifact {
    let _alone = crate::common::generator_alone();
    let spec = JobSpec::from_proto(&pb::JobSpec {
        task: pb::Task::Regression as i32,
        data: Some(pb::DataSpec {
            source: Some(pb::data_spec::Source::DatasetId("ds".into())),
            target_columns: vec!["y".into()],
            ..Default::default()
        }),
        model: Some(pb::ModelSpec {
            hidden_layers: vec![
                pb::HiddenLayer {
                    units: 8,
                    batch_norm: true,
                    activation: pb::Activation::Prelu as i32,
                    ..Default::default()
                },
                pb::HiddenLayer {
                    units: 4,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }),
        training: Some(pb::TrainingSpec {
            epochs: 3,
            batch_size: 16,
            seed: 4,
            ..Default::default()
        }),
        ..Default::default()
    })
    .unwrap();
    let data = Prepared {
        report: Default::default(),
        train: regression_data(64, 3, 1),
        validation: regression_data(16, 3, 2),
        width: 3,
        outputs: 1,
        encoding: InputEncoding::numeric(&["a", "b", "c"]),
        feature_names: vec!["a".into(), "b".into(), "c".into()],
        target_names: vec!["y".into()],
        class_labels: vec![],
        feature_scaler: Scaler {
            offset: vec![0.5, -1.0, 0.0],
            scale: vec![2.0, 1.0, 0.5],
        },
        target_scaler: Some(Scaler {
            offset: vec![3.0],
            scale: vec![4.0],
        }),
    };
    let device = kiln_train::device::cpu();
    let trained = kiln_train::train(&spec, &data, &device, &|| false, &mut |_| {}).unwrap();
    ModelArtifact::from_trained(&trained, &data).unwrap()
}

#[test]
fn exported_model_predicts_exactly_like_the_original() {
    let artifact = trained_artifact();
    let file = artifact.to_safetensors().unwrap();

    // A standard safetensors file: named F32 tensors, BatchNorm state included.
    let header_len = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&file[8..8 + header_len]).unwrap();
    let names: Vec<&String> = header.as_object().unwrap().keys().collect();
    for expected in ["running_mean", "running_var", "prelu", "output.weight"] {
        assert!(
            names.iter().any(|n| n.contains(expected)),
            "no tensor named like {expected} in {names:?}"
        );
    }
    assert!(header["__metadata__"]["kiln.model"].is_string());

    let imported = ModelArtifact::from_safetensors(&file).unwrap();
    assert_eq!(imported.meta, artifact.meta);
    let device = kiln_train::device::cpu();
    let rows: Vec<f32> = crate::common::pseudo_random(3 * 50, 9);
    let original = Predictor::new(&artifact, &device).unwrap().predict(&rows);
    let again = Predictor::new(&imported, &device).unwrap().predict(&rows);
    assert_eq!(original, again);
}

#[test]
fn files_that_are_not_kiln_models_are_refused() {
    let file = trained_artifact().to_safetensors().unwrap();
    let not_a_model = |bytes: &[u8]| match ModelArtifact::from_safetensors(bytes) {
        Err(ArtifactError::NotAModel(why)) => why,
        other => panic!("expected NotAModel, got {other:?}"),
    };
    assert_eq!(not_a_model(b"abc"), "shorter than a safetensors header");
    assert_eq!(not_a_model(&file[..40]), "truncated safetensors header");
    let mut no_meta = file.clone();
    let at = no_meta
        .windows(10)
        .position(|w| w == b"kiln.model")
        .unwrap();
    no_meta[at..at + 10].copy_from_slice(b"kiln.other");
    assert_eq!(
        not_a_model(&no_meta),
        "no \"kiln.model\" metadata in the safetensors header"
    );
    // Metadata that promises a wider network than the tensors hold (the
    // model JSON sits escaped inside the header's JSON).
    let mut wrong = file.clone();
    let at = wrong.windows(9).position(|w| w == b"units\\\":8").unwrap();
    wrong[at + 8] = b'9';
    assert!(matches!(
        ModelArtifact::from_safetensors(&wrong),
        Err(ArtifactError::Weights(_))
    ));
}
