#!/usr/bin/env python3
"""Writes the example jobs and datasets in examples/ (deterministic; rerun to refresh).

- rings.json: binary classification of two concentric rings, inline data, for grpcurl.
- spirals.csv: three interleaved spirals (multi-class), for UploadDataset.
- regression.csv: y = sin(x1) * x2 + 0.5 * x3^2 + noise.
- churn.csv: a messy customer table (gaps written every way pandas writes
  them, text columns, 5% "yes") for the README's "your own CSV" walk-through.
"""
import json
import math
import random
from pathlib import Path

HERE = Path(__file__).parent


def rings(n, seed):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        radius = (1.0 if label == 0 else 2.2) + rng.gauss(0, 0.15)
        angle = rng.uniform(0, 2 * math.pi)
        rows.append([round(radius * math.cos(angle), 4), round(radius * math.sin(angle), 4), label])
    return rows


def spirals(n_per_class, classes, seed):
    rng = random.Random(seed)
    rows = []
    for c in range(classes):
        for i in range(n_per_class):
            r = i / n_per_class * 3.0 + 0.2
            t = 1.75 * i / n_per_class * 2 * math.pi + 2 * math.pi * c / classes
            rows.append([round(r * math.cos(t) + rng.gauss(0, 0.05), 5),
                         round(r * math.sin(t) + rng.gauss(0, 0.05), 5), f"arm{c}"])
    rng.shuffle(rows)
    return rows


def regression(n, seed):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        x = [rng.uniform(-3, 3) for _ in range(3)]
        y = math.sin(x[0]) * x[1] + 0.5 * x[2] ** 2 + rng.gauss(0, 0.1)
        rows.append([round(v, 5) for v in x] + [round(y, 5)])
    return rows


def churn(n, seed):
    """Rows of age, income, city, plan, tenure, churn: the riskiest 5% churn."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        age = 18 + round(rng.random() * 60)
        income = round(rng.random() * 200) * 0.5
        city = rng.choice(["oslo", "bergen", "tromso", "bodo"])
        plan = rng.choice(["basic", "plus", "pro"])
        tenure = round(rng.random() * 120)
        risk = (0.06 * age + 2.0 * (city == "tromso") + 2.5 * (plan == "basic")
                - 0.03 * tenure + rng.random())
        rows.append([age, income, city, plan, tenure, risk])
    cut = sorted((r[5] for r in rows), reverse=True)[n // 20 - 1]
    gaps = ["", "NA", "null", "NaN", "N/A", "None"]
    lines = []
    for i, (age, income, city, plan, tenure, risk) in enumerate(rows):
        cells = [f"{age}", f"{income:g}", city, plan]
        for j, every, offset in [(0, 9, 4), (1, 7, 2), (2, 11, 5), (3, 13, 3)]:
            if i % every == offset:
                cells[j] = gaps[i % 6]
        lines.append(",".join(cells + [f"{tenure}", "yes" if risk >= cut else "no"]))
    return lines


def write_job(name, job):
    """Writes a job file with one inline row per line, so it stays readable."""
    inline = job["spec"]["data"].get("inline")
    rows = inline.pop("rows") if inline else None
    text = json.dumps(job, indent=1)
    if rows is not None:
        inline["rows"] = rows  # the dict is shared between jobs: put the rows back
        text = text.replace('"columns"', '"rows": [\n' + ",\n".join(json.dumps(r) for r in rows)
                            + '\n    ],\n    "columns"', 1)
    (HERE / name).write_text(text + "\n")


def main():
    job = {
        "spec": {
            "modelName": "rings",
            "task": "TASK_BINARY_CLASSIFICATION",
            "data": {
                "inline": {"columns": ["x", "y", "label"],
                           "rows": [{"values": r} for r in rings(400, 1)]},
                "targetColumns": ["label"],
                "validationFraction": 0.25,
                "splitSeed": 7,
            },
            "model": {"hiddenLayers": [
                {"units": 32, "activation": "ACTIVATION_RELU"},
                {"units": 32, "activation": "ACTIVATION_RELU"},
            ]},
            "training": {
                "optimizer": {"learningRate": 0.01, "adam": {}},
                "epochs": 60,
                "batchSize": 32,
                "earlyStopping": {"monitor": "val_loss", "patience": 10},
                "seed": 1,
            },
            "device": "DEVICE_AUTO",
        }
    }
    write_job("rings.json", job)

    ring_data = job["spec"]["data"]
    write_job("selu_alpha_dropout.json", {"spec": {
        "modelName": "rings-selu",
        "task": "TASK_BINARY_CLASSIFICATION",
        "data": ring_data,
        "model": {"hiddenLayers": [
            # SELU with LeCun normal init (the default for SELU) and AlphaDropout.
            {"units": 32, "activation": "ACTIVATION_SELU", "dropout": 0.05, "dropoutKind": "DROPOUT_ALPHA"},
            {"units": 32, "activation": "ACTIVATION_SELU", "dropout": 0.05, "dropoutKind": "DROPOUT_ALPHA"},
        ]},
        "training": {
            "optimizer": {"nadam": {}},
            "epochs": 40,
            "earlyStopping": {"patience": 10},
            "seed": 2,
        },
    }})
    write_job("sgd_nesterov_onecycle.json", {"spec": {
        "modelName": "rings-onecycle",
        "task": "TASK_BINARY_CLASSIFICATION",
        "data": ring_data,
        "model": {"hiddenLayers": [
            {"units": 32, "activation": "ACTIVATION_RELU", "batchNorm": True},
            {"units": 32, "activation": "ACTIVATION_RELU", "batchNorm": True},
        ]},
        "training": {
            "optimizer": {"sgd": {"momentum": 0.9, "nesterov": True}},
            # 1cycle: LR rises to max_lr then anneals; momentum cycles 0.95 -> 0.85 -> 0.95.
            "lrSchedule": {"oneCycle": {"maxLr": 0.1}},
            "gradClip": {"norm": {"maxNorm": 1.0}},
            "epochs": 30,
            "seed": 3,
        },
    }})
    reg_rows = regression(300, 4)
    write_job("huber_plateau.json", {"spec": {
        "modelName": "wave",
        "task": "TASK_REGRESSION",
        "data": {
            "inline": {"columns": ["x1", "x2", "x3", "y"], "rows": [{"values": r} for r in reg_rows]},
            "targetColumns": ["y"],
        },
        "model": {"hiddenLayers": [
            {"units": 64, "activation": "ACTIVATION_ELU"},
            {"units": 64, "activation": "ACTIVATION_ELU"},
        ]},
        "training": {
            "loss": {"kind": "LOSS_HUBER", "huberDelta": 1.0},
            "optimizer": {"learningRate": 0.01, "adam": {}},
            # Halve the LR when val_loss stalls for 3 epochs.
            "lrSchedule": {"reduceOnPlateau": {"factor": 0.5, "patience": 3}},
            "epochs": 60,
            "batchSize": 16,
            "earlyStopping": {"monitor": "val_mae", "patience": 12},
            "seed": 4,
        },
    }})
    with open(HERE / "spirals.csv", "w") as f:
        f.write("x,y,arm\n")
        for r in spirals(300, 3, 2):
            f.write(f"{r[0]},{r[1]},{r[2]}\n")
    with open(HERE / "regression.csv", "w") as f:
        f.write("x1,x2,x3,y\n")
        for r in regression(2000, 3):
            f.write(",".join(str(v) for v in r) + "\n")
    with open(HERE / "churn.csv", "w") as f:
        f.write("age,income,city,plan,tenure,churn\n")
        f.write("\n".join(churn(800, 18)) + "\n")


if __name__ == "__main__":
    main()
