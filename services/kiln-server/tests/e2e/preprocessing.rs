//! Data preprocessing through the real server: categorical CSV columns one-hot
//! encoded with the mapping stored in the model (and applied by Predict to raw
//! rows), and NumPy arrays written by numpy itself uploaded as a dataset.

use std::process::Command;

use kiln::v1 as pb;
use kiln_testkit::*;

/// The label depends on the category: x > 0 for circles, x < 0 for squares,
/// |x| > 0.5 for triangles. No numeric feature alone predicts it.
fn shapes_csv() -> (Vec<u8>, Vec<(f64, &'static str, &'static str)>) {
    let shapes = ["circle", "square", "triangle"];
    let mut rows = Vec::new();
    for i in 0..600 {
        let x = ((i * 37) % 200) as f64 / 100.0 - 1.0 + 0.0025;
        let shape = shapes[(i * 7 / 3) % 3];
        let label = match shape {
            "circle" => x > 0.0,
            "square" => x < 0.0,
            _ => x.abs() > 0.5,
        };
        rows.push((x, shape, if label { "yes" } else { "no" }));
    }
    let mut csv = String::from("x,shape,label\n");
    for (x, shape, label) in &rows {
        csv.push_str(&format!("{x},{shape},{label}\n"));
    }
    (csv.into_bytes(), rows)
}

fn shapes_job(dataset: &str, categorical: bool) -> pb::JobSpec {
    let mut data = dataset_source(dataset, &["label"]);
    if categorical {
        data.categorical_columns = vec!["shape".into()];
        // Unseen shapes are errors here (the default ignores them).
        data.column_unseen_categories =
            [("shape".into(), pb::UnseenCategories::UnseenError as i32)].into();
    }
    pb::JobSpec {
        task: pb::Task::BinaryClassification as i32,
        model_name: "shapes".into(),
        data: Some(data),
        model: Some(pb::ModelSpec {
            hidden_layers: vec![layer(32), layer(32)],
            ..Default::default()
        }),
        training: Some(pb::TrainingSpec {
            epochs: 60,
            batch_size: 32,
            seed: 5,
            optimizer: Some(pb::Optimizer {
                learning_rate: Some(0.01),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn categorical_columns_are_one_hot_encoded_and_served_from_raw_rows() {
    let server = Server::start();
    let (csv, rows) = shapes_csv();
    let dataset = upload(&server, "shapes", &csv, 4096).await.unwrap();

    // Without categorical_columns the text column is refused, naming it.
    let err = submit(&server, shapes_job(&dataset.id, false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("column \"shape\"")
            && err.message().contains("spec.data.categorical_columns"),
        "{}",
        err.message()
    );

    let job = submit(&server, shapes_job(&dataset.id, true))
        .await
        .unwrap();
    let events = watch_all(&server, &job.id).await;
    let best = finished(&events).best.unwrap();
    assert!(
        best.val_accuracy.unwrap() >= 0.95,
        "validation accuracy {:?}",
        best.val_accuracy
    );

    let models = list_models(&server).await;
    let info = &models[0];
    assert_eq!(info.input_columns, ["x", "shape"]);
    assert_eq!(
        info.feature_columns,
        ["x", "shape=circle", "shape=square", "shape=triangle"]
    );
    assert_eq!(
        info.categorical_columns,
        [pb::CategoricalColumn {
            column: "shape".into(),
            categories: vec!["circle".into(), "square".into(), "triangle".into()],
        }]
    );

    // Raw rows, encoded by the model, give exactly what the encoded rows give.
    let text_rows = rows
        .iter()
        .map(|(x, shape, _)| pb::TextRow {
            cells: vec![x.to_string(), shape.to_string()],
        })
        .collect();
    let one_hot_rows = rows
        .iter()
        .map(|(x, shape, _)| {
            let mut values = vec![*x];
            values.extend(["circle", "square", "triangle"].map(|s| f64::from(s == *shape)));
            pb::Row { values }
        })
        .collect();
    let inference = server.inference().await;
    let predict = |request: pb::PredictRequest| {
        let mut inference = inference.clone();
        async move { inference.predict(request).await.map(|r| r.into_inner()) }
    };
    let from_text = predict(pb::PredictRequest {
        model: "shapes".into(),
        text_rows,
        ..Default::default()
    })
    .await
    .unwrap();
    let from_features = predict(pb::PredictRequest {
        model: "shapes".into(),
        rows: one_hot_rows,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(from_text.predictions, from_features.predictions);
    let correct = from_text
        .predictions
        .iter()
        .zip(&rows)
        .filter(|(p, (_, _, label))| p.class_label == *label)
        .count();
    assert!(
        correct as f64 / rows.len() as f64 >= 0.95,
        "{correct} of {} rows right",
        rows.len()
    );

    // A category never seen in training, and a row of the wrong width.
    let err = predict(pb::PredictRequest {
        model: "shapes".into(),
        text_rows: vec![pb::TextRow {
            cells: vec!["0.3".into(), "hexagon".into()],
        }],
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "text_rows[0].cells[1] (column \"shape\"): \"hexagon\" is not a category seen in \
         training (\"circle\", \"square\", \"triangle\")"
    );
    let err = predict(pb::PredictRequest {
        model: "shapes".into(),
        text_rows: vec![pb::TextRow {
            cells: vec!["0.3".into()],
        }],
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert!(
        err.message()
            .starts_with("text_rows[0]: has 1 cells; model \"shapes\" reads 2 columns (x, shape)"),
        "{}",
        err.message()
    );
}

/// 6x6 uint8 "images" of three classes (a horizontal bar, a vertical bar, a
/// diagonal) with noise, and int64 labels, saved by numpy.
const MAKE_IMAGES: &str = r#"
import sys, numpy as np
rng = np.random.default_rng(3)
n = 480
y = rng.integers(0, 3, size=n).astype(np.int64)
x = rng.integers(0, 60, size=(n, 6, 6)).astype(np.uint8)
for i in range(n):
    k = rng.integers(1, 5)
    if y[i] == 0: x[i, k, :] = 255
    elif y[i] == 1: x[i, :, k] = 255
    else: x[i][np.eye(6, dtype=bool)] = 255
np.save(sys.argv[1] + "/x.npy", x)
np.save(sys.argv[1] + "/y.npy", y)
np.save(sys.argv[1] + "/one_row.npy", np.zeros(1))
"#;

#[tokio::test]
async fn numpy_arrays_upload_train_and_predict() {
    let dir = std::env::temp_dir().join(format!("kiln-npy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let status = Command::new(venv_tool("KILN_PYTHON", "python"))
        .args(["-c", MAKE_IMAGES])
        .arg(&dir)
        .status()
        .expect("run python");
    assert!(status.success());
    let x = std::fs::read(dir.join("x.npy")).unwrap();
    let y = std::fs::read(dir.join("y.npy")).unwrap();
    let one_row = std::fs::read(dir.join("one_row.npy")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    let server = Server::start();
    let mut datasets = server.datasets().await;
    // Chunks of the two files interleaved: each array is reassembled by name.
    let chunk = |array: &str, bytes: &[u8]| pb::UploadDatasetRequest {
        name: "bars".into(),
        format: pb::DatasetFormat::Npy as i32,
        array: array.into(),
        chunk: bytes.to_vec(),
    };
    let (x1, x2) = x.split_at(x.len() / 2);
    let (y1, y2) = y.split_at(100);
    let messages = vec![
        chunk("x", x1),
        chunk("y", y1),
        chunk("x", x2),
        chunk("y", y2),
    ];
    let dataset = datasets
        .upload_dataset(tokio_stream::iter(messages))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dataset.rows, 480);
    assert_eq!(dataset.format, pb::DatasetFormat::Npy as i32);
    assert_eq!(dataset.columns.len(), 37);
    assert_eq!(
        (
            &dataset.columns[0][..],
            &dataset.columns[35][..],
            &dataset.columns[36][..]
        ),
        ("x[0]", "x[35]", "y")
    );

    // Arrays that disagree on the number of rows are refused, naming the array.
    let err = datasets
        .upload_dataset(tokio_stream::iter(vec![
            chunk("x", &x),
            chunk("y", &one_row),
        ]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().starts_with("arrays[\"y\"]: has 1 rows"),
        "{}",
        err.message()
    );

    let spec = pb::JobSpec {
        task: pb::Task::MulticlassClassification as i32,
        model_name: "bars".into(),
        data: Some(dataset_source(&dataset.id, &["y"])),
        model: Some(pb::ModelSpec {
            hidden_layers: vec![layer(64)],
            ..Default::default()
        }),
        training: Some(pb::TrainingSpec {
            epochs: 30,
            batch_size: 32,
            seed: 1,
            ..Default::default()
        }),
        ..Default::default()
    };
    let job = submit(&server, spec).await.unwrap();
    let events = watch_all(&server, &job.id).await;
    let best = finished(&events).best.unwrap();
    assert!(
        best.val_accuracy.unwrap() >= 0.95,
        "validation accuracy {:?}",
        best.val_accuracy
    );
    let models = list_models(&server).await;
    assert_eq!(models[0].classes, ["0", "1", "2"]);
}
