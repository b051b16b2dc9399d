"""DataFrames in and out (upload, predict by column name), JobFailed, job
and sweep files, sweeps and compare, against a running kiln-server."""

import json
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from google.protobuf import json_format

import kiln_sdk
from kiln_sdk import JobFailed, KilnError, frames, pb

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def rings_spec(name, epochs=2, rows=120):
    """examples/rings.json's JobSpec, shortened."""
    spec = json.loads((EXAMPLES / "rings.json").read_text())["spec"]
    spec["modelName"] = name
    spec["training"]["epochs"] = epochs
    spec["training"].pop("earlyStopping", None)
    spec["data"]["inline"]["rows"] = spec["data"]["inline"]["rows"][:rows]
    return spec


def mixed_frame(n=240, seed=1):
    """Two numeric columns, a categorical text column and a text label."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "a": rng.normal(size=n),
            "b": rng.normal(size=n),
            "color": rng.choice(["red", "green", "blue"], n),
        }
    )
    frame["label"] = np.where((frame.a + frame.b > 0) ^ (frame.color == "red"), "yes", "no")
    return frame


def mixed_spec(name, dataset_id, epochs=4):
    return {
        "modelName": name,
        "task": "TASK_BINARY_CLASSIFICATION",
        "data": {
            "datasetId": dataset_id,
            "targetColumns": ["label"],
            "categoricalColumns": ["color"],
            "splitSeed": 2,
        },
        "model": {"hiddenLayers": [{"units": 8, "activation": "ACTIVATION_RELU"}]},
        "training": {"optimizer": {"learningRate": 0.01, "adam": {}}, "epochs": epochs, "seed": 1},
    }


@pytest.fixture(scope="module")
def mixed(client):
    """A model trained on a DataFrame upload with a categorical text column."""
    frame = mixed_frame()
    dataset = client.upload_dataset(frame, name="sdk-mixed")
    name = unique("sdk-mixed")
    job = client.submit(mixed_spec(name, dataset.id), wait=True, timeout=120)
    return name, job, frame, dataset


def test_upload_dataframe_round_trips(client, mixed):
    name, job, frame, dataset = mixed
    assert dataset.format == pb.DATASET_FORMAT_CSV and dataset.name == "sdk-mixed"
    assert list(dataset.columns) == ["a", "b", "color", "label"] and dataset.rows == len(frame)
    # The bytes sent are the frame's CSV, floats at full precision.
    assert dataset.size_bytes == len(frame.to_csv(index=False).encode())
    assert client.get_dataset(dataset.id) == dataset
    assert job.state == pb.JOB_STATE_SUCCEEDED and job.train_rows + job.validation_rows == len(frame)
    info = client.model_info(name)
    assert list(info.input_columns) == ["a", "b", "color"]
    assert list(info.feature_columns) == ["a", "b", "color=blue", "color=green", "color=red"]

    # A named index is a column; a Series is a one-column dataset.
    indexed = client.upload_dataset(frame.rename_axis("id"), name="sdk-indexed")
    assert list(indexed.columns) == ["id", "a", "b", "color", "label"]
    series = client.upload_dataset(frame["a"])
    assert list(series.columns) == ["a"] and series.rows == len(frame)
    with pytest.raises(TypeError):
        client.upload_dataset(object())


def test_categorical_frame_equals_explicit_text_rows(client, mixed):
    name, job, frame, _ = mixed
    rows = frame.head(20)
    got = client.predict(name, rows)
    assert list(got.columns) == ["class", "p_no", "p_yes"]
    assert got.index.equals(rows.index)
    assert got.attrs == {"model_version": 1, "job_id": job.id}

    raw = client.inference_stub.Predict(
        pb.PredictRequest(
            model=name,
            text_rows=[
                pb.TextRow(cells=[repr(float(r.a)), repr(float(r.b)), r.color])
                for r in rows.itertuples()
            ],
        )
    )
    want = np.array([list(p.probabilities) for p in raw.predictions])
    np.testing.assert_array_equal(got[["p_no", "p_yes"]].to_numpy(), want)
    assert got["class"].tolist() == [p.class_label for p in raw.predictions]


def test_shuffled_columns_predict_like_ordered_ones(client, mixed):
    name, _, frame, _ = mixed
    rows = frame.head(30).copy()
    rows.index = rows.index * 10 + 7  # any index comes back as it went in
    ordered = client.predict(name, rows[["a", "b", "color"]])
    shuffled = rows.assign(note="ignored")[["label", "color", "note", "b", "a"]]
    pd.testing.assert_frame_equal(client.predict(name, shuffled), ordered, check_exact=True)
    assert ordered.index.equals(rows.index)
    # A dict of columns is a frame; a Series is one row.
    by_dict = client.predict(name, {c: rows[c].tolist() for c in ["color", "b", "a"]})
    np.testing.assert_array_equal(by_dict[["p_no", "p_yes"]].to_numpy(), ordered[["p_no", "p_yes"]].to_numpy())
    one = client.predict(name, rows.iloc[3])
    assert one["class"].iloc[0] == ordered["class"].iloc[3]
    np.testing.assert_allclose(one["p_yes"].iloc[0], ordered["p_yes"].iloc[3], rtol=1e-6)


def test_large_frames_go_in_chunks(client, mixed, monkeypatch):
    name, _, frame, _ = mixed
    whole = client.predict(name, frame)
    monkeypatch.setattr(frames, "PREDICT_CHUNK_ROWS", 7)
    sent = []
    real = client.inference_stub.Predict
    monkeypatch.setattr(
        client.inference_stub, "Predict", lambda req, **kw: sent.append(req) or real(req, **kw)
    )
    chunked = client.predict(name, frame)
    assert [len(r.text_rows) for r in sent] == [7] * (len(frame) // 7) + [len(frame) % 7]
    assert [r.version for r in sent] == [""] + ["1"] * (len(sent) - 1)
    pd.testing.assert_frame_equal(chunked, whole, check_exact=False, rtol=1e-6)


def test_a_missing_column_raises_value_error_naming_it(client, mixed):
    name, _, frame, _ = mixed
    with pytest.raises(ValueError) as err:
        client.predict(name, frame.drop(columns=["color"]))
    message = str(err.value)
    assert "'color'" in message and "['a', 'b', 'color']" in message


def test_model_info_is_refetched_for_a_new_version(client):
    name = unique("sdk-versions")
    first = pd.DataFrame({"a": np.linspace(-1, 1, 40), "b": np.linspace(1, -1, 40)})
    first["y"] = first.a - first.b
    spec = {
        "modelName": name,
        "task": "TASK_REGRESSION",
        "data": {"targetColumns": ["y"]},
        "training": {"epochs": 2},
    }
    spec["data"]["datasetId"] = client.upload_dataset(first).id
    client.submit(spec, wait=True, timeout=120)
    assert client.predict(name, first).attrs["model_version"] == 1
    # Version 2 reads other columns; the cached info of version 1 must not be used.
    second = first.rename(columns={"a": "c"})
    spec["data"]["datasetId"] = client.upload_dataset(second).id
    client.submit(spec, wait=True, timeout=120)
    got = client.predict(name, second)
    assert got.attrs["model_version"] == 2 and list(got.columns) == ["y"]
    assert client.predict(name, first, version=1).attrs["model_version"] == 1
    # Version 3 reads the same columns: the answer's version tells the cache is stale.
    client.submit(spec, wait=True, timeout=120)
    sent = []
    real = client.inference_stub.Predict
    client.inference_stub.Predict = lambda req, **kw: sent.append(req) or real(req, **kw)
    try:
        got = client.predict(name, second)
    finally:
        client.inference_stub.Predict = real
    assert got.attrs["model_version"] == 3 and len(sent) == 2


def test_regression_frame_returns_the_target_column(client):
    dataset = client.upload_dataset(EXAMPLES / "regression.csv")
    name = unique("sdk-regression")
    job = client.submit(
        {
            "modelName": name,
            "task": "TASK_REGRESSION",
            "data": {"datasetId": dataset.id, "targetColumns": ["y"]},
            "training": {"epochs": 3, "seed": 1},
        },
        wait=True,
        timeout=120,
    )
    assert job.state == pb.JOB_STATE_SUCCEEDED
    table = pd.read_csv(EXAMPLES / "regression.csv").tail(25)
    got = client.predict(name, table)
    assert list(got.columns) == ["y"] and got.index.equals(table.index)
    assert got["y"].dtype == np.float64
    # Positional numpy rows (feature order) keep their meaning and agree.
    positional = client.predict(name, table[["x1", "x2", "x3"]].to_numpy())
    np.testing.assert_allclose(got["y"].to_numpy(), positional.outputs[:, 0], rtol=1e-6)


def test_a_failing_job_raises_job_failed(client):
    spec = rings_spec(unique("sdk-diverge"), epochs=20, rows=400)
    spec["training"]["batchSize"] = 16
    spec["training"]["optimizer"] = {"learningRate": 1e6, "sgd": {}}
    with pytest.raises(JobFailed) as err:
        client.submit(spec, wait=True, timeout=120)
    failed = err.value
    assert failed.reason == "STOP_REASON_DIVERGED" and failed.state == "JOB_STATE_FAILED"
    assert failed.message.startswith("training diverged at epoch")
    assert failed.job.state == pb.JOB_STATE_FAILED and failed.job.message == failed.message
    assert "DIVERGED" in str(failed)


def test_progress_bar_and_its_missing_tqdm(client, capsys, monkeypatch):
    job = client.submit(rings_spec(unique("sdk-progress")), wait=True, progress=True, timeout=120)
    assert job.state == pb.JOB_STATE_SUCCEEDED
    assert "2/2" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import tqdm.auto fails
    with pytest.raises(ImportError, match="pip install tqdm"):
        client.wait(job.id, progress=True)


def test_yaml_job_files_like_the_cli(client, tmp_path):
    as_yaml = kiln_sdk.load_job_file(EXAMPLES / "rings.yaml")
    as_json = json_format.ParseDict(
        json.loads((EXAMPLES / "rings.json").read_text()), pb.SubmitJobRequest()
    )
    assert as_yaml == as_json

    path = tmp_path / "job.yml"
    name = unique("sdk-yaml")
    path.write_text(yaml.safe_dump({"spec": rings_spec(name)}))
    job = client.submit(str(path), wait=True, timeout=120)
    assert job.state == pb.JOB_STATE_SUCCEEDED and job.model_name == name
    bare = tmp_path / "bare.yaml"  # a bare JobSpec, snake_case names, 1e-3 as YAML reads it
    bare.write_text(
        "model_name: sdk-bare\ntask: TASK_BINARY_CLASSIFICATION\n"
        "data:\n  target_columns: [label]\n  inline: {columns: [x, y, label], rows: "
        + json.dumps(rings_spec(name)["data"]["inline"]["rows"])
        + "}\ntraining: {epochs: 1, optimizer: {learning_rate: 1e-3, adam: {}}}\n"
    )
    request = kiln_sdk.load_job_file(bare)
    assert request.spec.training.optimizer.learning_rate == 1e-3
    assert client.submit_file(bare, wait=True, timeout=120).epochs_completed == 1

    bad = tmp_path / "bad.yaml"
    bad.write_text("spec:\n  training:\n    epochz: 3\n")
    with pytest.raises(KilnError) as err:
        client.submit(bad)
    assert "bad.yaml" in err.value.message and "epochz" in err.value.message


def test_sweep_then_compare(client, tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "modelName": unique("sdk-sweep"),
                "maxTrials": 2,
                "searchSpace": {"training.optimizer.learning_rate": {"values": [0.03, 0.003]}},
                "base": rings_spec(""),
            }
        )
    )
    assert kiln_sdk.load_sweep_file(path).max_trials == 2
    sweep = client.submit_sweep(path, wait=True, timeout=120)
    assert sweep.state == pb.SWEEP_STATE_SUCCEEDED, sweep.message
    assert len(sweep.trials) == 2 and sweep.best_job_id
    assert sweep.id in [s.id for s in client.sweeps()] and client.get_sweep(sweep.id) == sweep
    job_ids = [t.job_id for t in sweep.trials]
    assert sorted(j.id for j in client.jobs(sweep_id=sweep.id)) == sorted(job_ids)

    comparison = client.compare(*job_ids)
    assert [j.id for j in comparison.jobs] == job_ids
    assert "training.optimizer.learning_rate" in [d.path for d in comparison.differences]
    assert [len(c.epochs) for c in comparison.curves] == [2, 2]
    assert client.compare(job_ids) == comparison


def test_missing_cells_are_filled(client):
    """NaN in a numeric and a categorical column, in training (counted in the
    job's data report) and in Predict (filled with the reported value)."""
    frame = mixed_frame(n=120, seed=4)
    frame.loc[[3, 17, 40], "a"] = np.nan
    frame.loc[[5, 17, 60], "color"] = None
    dataset = client.upload_dataset(frame, name="sdk-missing")
    name = unique("sdk-missing")
    job = client.submit(mixed_spec(name, dataset.id, epochs=2), wait=True, timeout=120)
    assert job.state == pb.JOB_STATE_SUCCEEDED
    filled = {f.column: f for f in job.data_report.filled}
    assert (filled["a"].strategy, filled["a"].cells) == ("median", 3)
    assert (filled["color"].strategy, filled["color"].cells) == ("own_category", 3)
    rows = frame.head(20).copy()
    rows.loc[[0, 1], "a"] = np.nan
    rows.loc[2, "color"] = np.nan
    got = client.predict(name, rows)
    assert got.index.equals(rows.index) and got["class"].isin(["no", "yes"]).all()
    assert np.isfinite(got[["p_no", "p_yes"]].to_numpy()).all()
    by_hand = rows.copy()
    by_hand.loc[[0, 1], "a"] = float(filled["a"].value)
    pd.testing.assert_frame_equal(client.predict(name, by_hand).loc[[0, 1]], got.loc[[0, 1]])


def test_cells_are_the_text_to_csv_writes():
    """Predict's cells equal the uploaded CSV's, whatever the dtype (no server)."""
    frame = pd.DataFrame(
        {
            "f64": [1 / 3, np.nan, 1e300],
            "f32": np.array([0.1, np.nan, 2], dtype=np.float32),
            "i": [1, 2, 3],
            "nullable": pd.array([1, None, 3], dtype="Int64"),
            "cat": pd.Categorical(["a", None, "b"]),
            "flag": [True, False, True],
            "mixed": [0.1 + 0.2, None, "x"],
        }
    )
    csv_rows = [line.split(",") for line in frames.frame_csv(frame).decode().splitlines()[1:]]
    assert frames.text_rows(frame, list(frame.columns)) == csv_rows
    # numpy scalars in object cells (a Series turned into a row holds them)
    row = pd.DataFrame(
        {c: pd.Series([v], dtype=object) for c, v in
         {"f64": np.float64(1 / 3), "f32": np.float32(0.1), "i": np.int64(1)}.items()}
    )
    assert frames.text_rows(row, ["f64", "f32", "i"]) == [["0.3333333333333333", "0.1", "1"]]
