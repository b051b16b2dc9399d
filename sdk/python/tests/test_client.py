"""End-to-end tests of kiln_sdk against a running kiln-server (see conftest.py)."""

import copy
import json
import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import json_format

from kiln_sdk import KilnError, pb
from kiln_sdk._proto.kiln.v1 import inference_pb2, inference_pb2_grpc

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
EPOCHS = 6


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def rings_request(name, epochs=EPOCHS):
    """examples/rings.json (a SubmitJobRequest in JSON), shortened."""
    request = json.loads((EXAMPLES / "rings.json").read_text())
    spec = request["spec"]
    spec["modelName"] = name
    spec["training"]["epochs"] = epochs
    del spec["training"]["earlyStopping"]
    return request


def kinds(events):
    return [e.WhichOneof("kind") for e in events]


@pytest.fixture(scope="module")
def rings(client):
    """A rings job submitted from its dict, and every event watched to its end."""
    name = unique("sdk-rings")
    job = client.submit(rings_request(name))
    assert job.state == pb.JOB_STATE_QUEUED and job.model_name == name
    events = list(client.watch(job.id, timeout=120))
    return name, job, events


def test_watch_streams_epochs_then_finished(client, rings):
    name, job, events = rings
    assert [e.sequence for e in events] == list(range(len(events)))
    assert all(e.job_id == job.id for e in events)
    assert kinds(events)[:3] == ["state_changed", "data_report", "state_changed"]
    assert events[0].state_changed.state == pb.JOB_STATE_QUEUED
    assert events[1].data_report.rows_read > 0
    assert events[2].state_changed.state == pb.JOB_STATE_RUNNING
    assert events[2].state_changed.device
    epochs = [e.epoch for e in events if e.HasField("epoch")]
    assert [m.epoch for m in epochs] == list(range(1, EPOCHS + 1))
    assert all(np.isfinite(m.train_loss) and np.isfinite(m.val_loss) for m in epochs)
    assert kinds(events)[-1] == "finished"
    finished = events[-1].finished
    assert finished.reason == pb.STOP_REASON_COMPLETED
    assert finished.epochs_completed == EPOCHS and finished.model_name == name

    # A watcher whose stream broke resumes after the last event it saw.
    resumed = list(client.watch(job.id, from_sequence=3, timeout=120))
    assert resumed == events[3:]

    final = client.wait(job.id)  # a finished job: its events replay, then the job
    assert final.state == pb.JOB_STATE_SUCCEEDED
    assert final.epochs_completed == EPOCHS
    assert client.get(job.id) == final


def test_submit_wait_accepts_a_job_spec_message(client):
    request = rings_request(unique("sdk-rings-msg"), epochs=2)
    spec = json_format.ParseDict(request, pb.SubmitJobRequest())
    seen = []
    job = client.submit(spec.spec, wait=True, timeout=120)
    assert job.state == pb.JOB_STATE_SUCCEEDED and job.epochs_completed == 2
    client.wait(job.id, on_event=seen.append)
    assert [e.epoch.epoch for e in seen if e.HasField("epoch")] == [1, 2]


def test_predict_returns_arrays_equal_to_the_generated_stub(client, rings, addr):
    name, job, _ = rings
    x = np.array([[1.0, 0.0], [0.0, 2.2], [0.1, -1.1], [-2.0, 1.0]])
    got = client.predict(name, x)
    assert got.outputs.shape == (4, 2) and got.outputs.dtype == np.float64
    assert np.all((got.outputs >= 0) & (got.outputs <= 1))
    np.testing.assert_allclose(got.outputs.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(got.class_index, got.outputs.argmax(axis=1))
    assert got.classes.tolist() == [str(i) for i in got.class_index]
    assert got.job_id == job.id and got.model_version == 1

    with grpc.insecure_channel(addr) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        raw = stub.Predict(
            inference_pb2.PredictRequest(
                model=name, rows=[pb.Row(values=list(r)) for r in x]
            )
        )
    np.testing.assert_array_equal(
        got.outputs, np.array([list(p.probabilities) for p in raw.predictions])
    )
    assert [p.class_label for p in raw.predictions] == got.classes.tolist()

    # By version, and by job id; a 1-D array is one row.
    one = client.predict(name, x[1], version=1)
    # One row and four take different BLAS kernels: equal to float rounding.
    np.testing.assert_allclose(one.outputs, got.outputs[1:2], rtol=1e-5)
    np.testing.assert_array_equal(client.predict(job.id, x).outputs, got.outputs)


def test_models_and_jobs(client, rings):
    name, job, _ = rings
    infos = [m for m in client.models() if m.name == name]
    assert len(infos) == 1
    info = infos[0]
    assert info.version == 1 and info.loaded and info.job_id == job.id
    assert list(info.classes) == ["0", "1"] and list(info.feature_columns) == ["x", "y"]
    assert job.id in [j.id for j in client.jobs()]
    assert job.id in [j.id for j in client.jobs(state="SUCCEEDED")]
    assert job.id not in [j.id for j in client.jobs(state=pb.JOB_STATE_RUNNING)]


def test_csv_upload_then_train(client):
    dataset = client.upload_dataset(EXAMPLES / "spirals.csv", chunk_bytes=4096)
    assert dataset.name == "spirals" and dataset.format == pb.DATASET_FORMAT_CSV
    assert list(dataset.columns) == ["x", "y", "arm"] and dataset.rows == 900
    assert client.get_dataset(dataset.id) == dataset
    assert dataset.id in [d.id for d in client.datasets()]

    name = unique("sdk-spirals")
    job = client.submit(
        {
            "modelName": name,
            "task": "TASK_MULTICLASS_CLASSIFICATION",
            "data": {"datasetId": dataset.id, "targetColumns": ["arm"]},
            "model": {"hiddenLayers": [{"units": 16, "activation": "ACTIVATION_RELU"}]},
            "training": {"optimizer": {"learningRate": 0.01, "adam": {}}, "epochs": 3},
        },
        wait=True,
        timeout=120,
    )
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.message
    got = client.predict(name, [[0.5, -0.2], [-0.3, 0.1]])
    assert got.outputs.shape == (2, 3)
    assert set(got.classes) <= {"arm0", "arm1", "arm2"}


def test_npy_upload_then_train_regression(client):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2)).astype(np.float32)
    y = 2.0 * x[:, 0] - x[:, 1] + 0.05 * rng.normal(size=400)
    dataset = client.upload_dataset({"x": x, "y": y}, name="linear", chunk_bytes=1000)
    assert dataset.format == pb.DATASET_FORMAT_NPY and dataset.rows == 400
    assert list(dataset.columns) == ["x[0]", "x[1]", "y"]

    name = unique("sdk-linear")
    job = client.submit(
        {
            "spec": {
                "modelName": name,
                "task": "TASK_REGRESSION",
                "data": {"datasetId": dataset.id, "targetColumns": ["y"], "splitSeed": 3},
                "model": {"hiddenLayers": [{"units": 16, "activation": "ACTIVATION_RELU"}]},
                "training": {
                    "optimizer": {"learningRate": 0.01, "adam": {}},
                    "epochs": 30,
                    "seed": 1,
                },
            }
        },
        wait=True,
        timeout=120,
    )
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.message
    assert job.best.val_r2 > 0.8, job.best

    test_x = rng.normal(size=(50, 2))
    got = client.predict(name, test_x)
    assert got.outputs.shape == (50, 1) and got.class_index is None and got.classes is None
    want = 2.0 * test_x[:, 0] - test_x[:, 1]
    assert np.corrcoef(got.outputs[:, 0], want)[0, 1] > 0.9

    # A 3-D array is flattened into columns x[0..3]; a single array is named x.
    cube = client.upload_dataset(rng.integers(0, 255, size=(10, 2, 2), dtype=np.uint8))
    assert list(cube.columns) == ["x[0]", "x[1]", "x[2]", "x[3]"] and cube.rows == 10


def test_invalid_spec_raises_invalid_argument_naming_the_field(client):
    request = rings_request(unique("sdk-bad"))
    request["spec"]["training"]["optimizer"]["learningRate"] = -1.0
    with pytest.raises(KilnError) as err:
        client.submit(request)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "spec.training.optimizer.learning_rate" in err.value.message

    bad_layer = copy.deepcopy(rings_request(unique("sdk-bad")))
    bad_layer["spec"]["model"]["hiddenLayers"][1]["units"] = 0
    with pytest.raises(KilnError) as err:
        client.submit(bad_layer)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.message.startswith("spec.model.hidden_layers[1].units")

    # Not proto3 JSON at all: refused before any call, the same way.
    with pytest.raises(KilnError) as err:
        client.submit({"spec": {"epochz": 3}})
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "epochz" in err.value.message


def test_unknown_model_and_job_are_not_found(client):
    with pytest.raises(KilnError) as err:
        client.predict("sdk-no-such-model", np.zeros((1, 2)))
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(KilnError) as err:
        list(client.watch("job-does-not-exist"))
    assert err.value.code == grpc.StatusCode.NOT_FOUND


def test_cancel(client):
    job = client.submit(rings_request(unique("sdk-cancel"), epochs=100_000))
    client.cancel(job.id)
    final = client.wait(job.id, timeout=60)
    assert final.state == pb.JOB_STATE_CANCELLED
    assert final.stop_reason == pb.STOP_REASON_CANCELLED
