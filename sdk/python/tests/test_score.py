"""Batch scoring of uploaded datasets (ScoreDataset) through kiln_sdk."""

import uuid

import numpy as np
import pandas as pd
import pytest

from kiln_sdk import KilnError, pb


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def colors(client):
    """A classifier trained on an uploaded DataFrame with a categorical text
    column and a few missing cells; the frame and the model's name."""
    rng = np.random.default_rng(7)
    n = 240
    frame = pd.DataFrame(
        {
            "x": rng.normal(size=n).round(4),
            "color": rng.choice(["red", "green", "blue"], size=n),
            "z": rng.normal(size=n).round(4),
        }
    )
    frame["label"] = np.where((frame.x > 0) ^ (frame.color == "red"), "yes", "no")
    frame.loc[[3, 70], "x"] = np.nan
    frame.loc[[11], "color"] = None
    name = unique("sdk-score")
    dataset = client.upload_dataset(frame, name=name)
    job = client.submit(
        {
            "modelName": name,
            "task": "TASK_BINARY_CLASSIFICATION",
            "data": {
                "datasetId": dataset.id,
                "targetColumns": ["label"],
                "featureColumns": ["x", "color", "z"],
                "categoricalColumns": ["color"],
            },
            "model": {"hiddenLayers": [{"units": 16, "activation": "ACTIVATION_RELU"}]},
            "training": {"epochs": 8, "batchSize": 32},
            "device": "DEVICE_CPU",
        },
        wait=True,
        timeout=120,
    )
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.message
    return name, frame, dataset


def test_score_returns_what_predict_returns(client, colors):
    name, frame, dataset = colors
    scored, metrics = client.score(name, name)
    expected = client.predict(name, frame)
    pd.testing.assert_frame_equal(scored, expected, check_exact=True)
    assert list(scored.columns) == ["class", "p_no", "p_yes"]
    assert scored.attrs["model_version"] == 1
    stored = client.get_dataset(scored.attrs["dataset_id"])
    assert stored.name == f"{name}-v1-scores" and stored.rows == len(frame)

    assert metrics is not None
    for key in ("accuracy", "log_loss", "roc_auc", "pr_auc", "f1", "balanced_accuracy"):
        assert 0.0 <= metrics[key] <= max(1.0, metrics["log_loss"]), key
    assert "mae" not in metrics
    assert metrics["rows_evaluated"] == len(frame) and metrics["rows_missing_target"] == 0
    cm = metrics["confusion_matrix"]
    assert list(cm.index) == ["no", "yes"] and list(cm.columns) == ["no", "yes"]
    assert cm.to_numpy().sum() == len(frame)
    right = (expected["class"] == frame["label"]).mean()
    assert metrics["accuracy"] == pytest.approx(right, abs=1e-12)

    # By pb.Dataset and by id, with an output name; evaluate gives the metrics.
    again, _ = client.score(name, dataset, version=1, output_name=unique("mine"))
    pd.testing.assert_frame_equal(again, expected, check_exact=True)
    evaluated = client.evaluate(name, dataset.id)
    assert {k: v for k, v in evaluated.items() if k != "confusion_matrix"} == {
        k: v for k, v in metrics.items() if k != "confusion_matrix"
    }


def test_score_without_target_and_errors(client, colors):
    name, frame, _ = colors
    features = frame[["z", "color", "x"]].head(20)
    dataset = client.upload_dataset(features, name=unique("sdk-features"))
    scored, metrics = client.score(name, dataset)
    assert metrics is None
    pd.testing.assert_frame_equal(scored, client.predict(name, features), check_exact=True)
    with pytest.raises(ValueError, match="nothing to evaluate"):
        client.evaluate(name, dataset)

    with pytest.raises(KilnError) as err:
        client.score(name, unique("no-such-dataset"))
    assert err.value.code.name == "NOT_FOUND"
    bad = client.upload_dataset(frame[["x", "z"]], name=unique("sdk-bad"))
    with pytest.raises(KilnError) as err:
        client.score(name, bad)
    assert err.value.code.name == "INVALID_ARGUMENT" and '"color"' in err.value.message
