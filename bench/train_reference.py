#!/usr/bin/env python3
"""PyTorch eager reference for `make bench-train`.

Trains the MLP that kiln's bench_train example trains, on the same data
files, the way a PyTorch user writes it: Linear -> BatchNorm1d -> ReLU ->
Dropout per hidden layer, a Linear output, CrossEntropyLoss, torch.optim.Adam
(its defaults: lr 1e-3, eps 1e-8, the single-tensor path on CPU), a fresh
torch.randperm shuffle every epoch, and a validation pass (eval mode,
no_grad) after every epoch. The train/validation split and the feature
scaling follow kiln's prepare(): a seeded shuffle, round(0.2 * rows)
validation rows, standard scaling fitted on the training rows.

Prints one JSON line: samples/s over the epochs after the first (a warm-up
epoch that is discarded, as on the kiln side), peak RSS (VmHWM) and the
per-epoch times.

    python bench/train_reference.py --data DIR --hidden 64,64 --batch 32 \
        --epochs 6 --threads 2 --dropout 0.1
"""

import argparse
import json
import os
import time

import numpy as np
import torch
from torch import nn


def vm_hwm_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def load(data_dir):
    with open(os.path.join(data_dir, "meta.json")) as f:
        meta = json.load(f)
    rows, width = meta["rows"], meta["width"]
    x = np.fromfile(os.path.join(data_dir, "x.f32"), dtype="<f4").reshape(rows, width)
    y = np.fromfile(os.path.join(data_dir, "y.i64"), dtype="<i8")
    return meta, x, y


def split_and_scale(x, y, fraction, seed):
    rows = x.shape[0]
    n_val = min(max(int(round(rows * fraction)), 1), max(rows - 1, 1))
    order = np.random.default_rng(seed).permutation(rows)
    val, train = order[:n_val], order[n_val:]
    x_train, x_val = x[train], x[val]
    mean = x_train.mean(axis=0, dtype=np.float64)
    std = x_train.std(axis=0, dtype=np.float64)  # population std, as kiln's scaler
    std[std == 0] = 1.0
    scale = lambda a: ((a - mean) / std).astype(np.float32)  # noqa: E731
    return scale(x_train), y[train], scale(x_val), y[val]


class Mlp(nn.Module):
    def __init__(self, inputs, hidden, outputs, dropout, batch_norm):
        super().__init__()
        layers = []
        width = inputs
        for units in hidden:
            linear = nn.Linear(width, units)
            # kiln's default for ReLU: He normal (fan_in), zero bias.
            nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
            nn.init.zeros_(linear.bias)
            layers.append(linear)
            if batch_norm:
                layers.append(nn.BatchNorm1d(units, eps=1e-5, momentum=0.1))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = units
        out = nn.Linear(width, outputs)
        # kiln's output layer: Glorot uniform, zero bias.
        nn.init.xavier_uniform_(out.weight)
        nn.init.zeros_(out.bias)
        layers.append(out)
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--hidden", required=True, help="comma-separated units, e.g. 64,64")
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--epochs", type=int, required=True, help="including the warm-up epoch")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--no-batch-norm", action="store_true")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--validation-fraction", type=float, default=0.2)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    meta, x, y = load(args.data)
    x_train, y_train, x_val, y_val = split_and_scale(
        x, y, args.validation_fraction, args.seed
    )
    del x, y
    x_train = torch.from_numpy(x_train)
    y_train = torch.from_numpy(y_train)
    x_val = torch.from_numpy(x_val)
    y_val = torch.from_numpy(y_val)
    hidden = [int(h) for h in args.hidden.split(",") if h]
    model = Mlp(meta["width"], hidden, meta["classes"], args.dropout, not args.no_batch_norm)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()
    rows = x_train.shape[0]
    batch = args.batch
    eval_chunk = 16384

    started = time.perf_counter()
    epoch_ends = []
    epoch_cpu = []
    history = []
    for _ in range(args.epochs):
        model.train()
        order = torch.randperm(rows)
        loss_sum = torch.zeros(())
        seen = 0
        for start in range(0, rows, batch):
            idx = order[start : start + batch]
            if idx.numel() == 1 and not args.no_batch_norm:
                continue  # BatchNorm refuses a training batch of one row (kiln skips it too)
            xb = x_train.index_select(0, idx)
            yb = y_train.index_select(0, idx)
            loss = loss_fn(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * idx.numel()
            seen += idx.numel()
        train_loss = loss_sum.item() / max(seen, 1)
        # Validation pass: eval mode, chunks of 16384 rows as kiln does.
        model.eval()
        val_loss, right = 0.0, 0
        with torch.no_grad():
            for start in range(0, x_val.shape[0], eval_chunk):
                xb = x_val[start : start + eval_chunk]
                yb = y_val[start : start + eval_chunk]
                out = model(xb)
                val_loss += loss_fn(out, yb).item() * xb.shape[0]
                right += (out.argmax(1) == yb).sum().item()
        epoch_ends.append(time.perf_counter())
        epoch_cpu.append(time.process_time())
        history.append(
            {
                "train_loss": train_loss,
                "val_loss": val_loss / x_val.shape[0],
                "val_accuracy": right / x_val.shape[0],
            }
        )

    measured = args.epochs - 1
    seconds = epoch_ends[-1] - epoch_ends[0]
    epoch_seconds = [b - a for a, b in zip([started] + epoch_ends[:-1], epoch_ends)]
    print(
        json.dumps(
            {
                "side": "torch",
                "train_rows": rows,
                "validation_rows": int(x_val.shape[0]),
                "measured_epochs": measured,
                "seconds": seconds,
                "cpu_seconds": epoch_cpu[-1] - epoch_cpu[0],
                "samples_per_second": rows * measured / seconds if measured > 0 else None,
                "peak_rss_kib": vm_hwm_kib(),
                "epoch_seconds": epoch_seconds,
                "last": history[-1],
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
