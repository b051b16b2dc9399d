#!/usr/bin/env python3
"""`make bench-train`: kiln's training engine against PyTorch eager.

For each configuration, writes one synthetic classification dataset, then
trains the same MLP on it with kiln (crates/kiln-train/examples/bench_train.rs,
the real `kiln_train::train` path) and with PyTorch (bench/train_reference.py),
each in its own process, interleaved kiln, torch, kiln, torch ... so both see
the same machine load. Both discard a warm-up epoch. Then measures time to
first epoch against a running kiln-server (examples/bench_ttfe.rs). Prints a
table; --json FILE also writes every measurement.

    python bench/bench_train.py --kiln target/release/examples/bench_train \
        --ttfe target/release/examples/bench_ttfe --server target/release/kiln-server
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

# name, inputs, hidden, classes, batch, rows (before the 80/20 split), epochs
# (the first is a warm-up). Sizes give each measurement a few seconds on a
# 2-core machine at 2 threads.
CONFIGS = [
    ("tabular 30-64-64-2 b32", 30, [64, 64], 2, 32, 50_000, 4),
    ("mnist 784-256-256-10 b128", 784, [256, 256], 10, 128, 25_000, 4),
    ("wide 512-1024x3-10 b256", 512, [1024, 1024, 1024], 10, 256, 10_000, 4),
]
TARGETS = {"tabular": 1.3, "mnist": 1.0, "wide": 1.0}
DROPOUT = 0.1
# A run during which other processes kept fewer cores than this busy is clean.
CLEAN_CORES = 0.2


def generate(directory, rows, width, classes, seed=0):
    """Gaussian features, labels from a noisy random linear teacher."""
    meta_path = os.path.join(directory, "meta.json")
    meta = {"rows": rows, "width": width, "classes": classes, "seed": seed}
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            if json.load(f) == meta:
                return
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, width), dtype=np.float32)
    w = rng.standard_normal((width, classes), dtype=np.float32) / np.sqrt(width)
    noise = 0.3 * rng.standard_normal((rows, classes), dtype=np.float32)
    y = np.argmax(x @ w + noise, axis=1).astype("<i8")
    x.astype("<f4").tofile(os.path.join(directory, "x.f32"))
    y.tofile(os.path.join(directory, "y.i64"))
    with open(meta_path, "w") as f:
        json.dump(meta, f)


def load():
    return "%.2f %.2f %.2f" % os.getloadavg()


def busy_seconds():
    """CPU seconds spent busy by the whole machine so far (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7]
    return busy / os.sysconf("SC_CLK_TCK")


def children_cpu():
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def wait_quiet(max_wait, threshold=0.25):
    """Waits (up to max_wait s) for a 2 s window in which other processes
    use less than `threshold` cores. Returns the cores they used in the last window."""
    deadline = time.monotonic() + max_wait
    while True:
        b0, t0 = busy_seconds(), time.monotonic()
        time.sleep(2.0)
        other = (busy_seconds() - b0) / (time.monotonic() - t0)
        if other < threshold or time.monotonic() >= deadline:
            return other
        print(f"    (waiting for a quiet machine: others use {other:.2f} cores, load {load()})",
              flush=True)
        time.sleep(10.0)


def run_json(cmd):
    started = time.perf_counter()
    b0, c0 = busy_seconds(), children_cpu()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    own = children_cpu() - c0
    other = max(busy_seconds() - b0 - own, 0.0)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"bench-train: {' '.join(cmd)} failed with {proc.returncode}")
    line = [l for l in proc.stdout.splitlines() if l.startswith("{")][-1]
    result = json.loads(line)
    result["process_seconds"] = wall
    result["cpu_seconds"] = own
    # Cores that other processes kept busy while this one ran: the noise.
    result["other_cores"] = other / wall
    return result


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--kiln", default="target/release/examples/bench_train")
    p.add_argument("--ttfe", default="target/release/examples/bench_ttfe")
    p.add_argument("--server", default="target/release/kiln-server")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="kiln/torch pairs per configuration")
    p.add_argument("--data-dir", default="target/bench-train-data")
    p.add_argument("--only", default="", help="comma-separated config prefixes (tabular,mnist,wide)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the row counts")
    p.add_argument("--ttfe-jobs", type=int, default=5)
    p.add_argument("--skip-ttfe", action="store_true")
    p.add_argument("--json", help="write every measurement to this file")
    p.add_argument("--wait-quiet", type=float, default=120.0,
                   help="before each run, wait up to this many seconds for other processes"
                        " to leave the CPUs (0: don't wait)")
    args = p.parse_args()

    only = [o for o in args.only.split(",") if o]
    configs = [c for c in CONFIGS if not only or any(c[0].startswith(o) for o in only)]
    print(f"bench-train: {args.threads} threads, {args.rounds} rounds, "
          f"{os.cpu_count()} CPUs, load {load()}", flush=True)
    results = {}
    for name, width, hidden, classes, batch, rows, epochs in configs:
        rows = int(rows * args.scale)
        key = name.split()[0]
        directory = os.path.join(args.data_dir, f"{key}-{rows}")
        generate(directory, rows, width, classes)
        common = ["--data", directory, "--hidden", ",".join(map(str, hidden)),
                  "--batch", str(batch), "--epochs", str(epochs),
                  "--threads", str(args.threads), "--dropout", str(DROPOUT)]
        kiln_cmd = [args.kiln] + common
        torch_cmd = [args.python, os.path.join(HERE, "train_reference.py")] + common
        runs = []
        for r in range(args.rounds):
            # Alternate which side goes first, so neither always follows the other.
            order = [("kiln", kiln_cmd), ("torch", torch_cmd)]
            if r % 2:
                order.reverse()
            pair = {}
            for side, cmd in order:
                if args.wait_quiet > 0:
                    wait_quiet(args.wait_quiet)
                before = load()
                out = run_json(cmd)
                out["load_before"] = before
                out["load_after"] = load()
                pair[side] = out
                print(f"  {name:27} round {r + 1} {side:5} {out['samples_per_second']:9.0f} samples/s"
                      f"  rss {out['peak_rss_kib'] / 1024:6.0f} MiB"
                      f"  epochs {' '.join('%.2f' % s for s in out['epoch_seconds'])} s"
                      f"  val_acc {out['last']['val_accuracy']:.3f}  load {before}"
                      f"  others {out['other_cores']:.2f} cores", flush=True)
            runs.append(pair)
        results[name] = {"key": key, "runs": runs}

    ttfe = None
    if not args.skip_ttfe:
        if args.wait_quiet > 0:
            wait_quiet(args.wait_quiet)
        before = load()
        ttfe = run_json([args.ttfe, "--server", args.server, "--jobs", str(args.ttfe_jobs),
                         "--threads", str(args.threads)])
        ttfe["load_before"] = before

    print()
    print(f"{'config':27} {'kiln samples/s':>15} {'torch samples/s':>16} {'ratio':>6} "
          f"{'(range)':>13} {'target':>7} {'kiln RSS':>9} {'torch RSS':>10} {'others':>7}")
    for name, res in results.items():
        runs = res["runs"]
        ratios = [r["kiln"]["samples_per_second"] / r["torch"]["samples_per_second"] for r in runs]
        best = {}
        for side in ("kiln", "torch"):
            # The best run per side, among the clean ones (other processes
            # used under CLEAN_CORES while it ran) when there are any.
            sides = [r[side] for r in runs]
            clean = [o for o in sides if o["other_cores"] < CLEAN_CORES]
            best[side] = max(clean or sides, key=lambda o: o["samples_per_second"])
        kiln, torch = best["kiln"]["samples_per_second"], best["torch"]["samples_per_second"]
        ratio = kiln / torch
        target = TARGETS[res["key"]]
        rss_k = max(r["kiln"]["peak_rss_kib"] for r in runs) / 1024
        rss_t = max(r["torch"]["peak_rss_kib"] for r in runs) / 1024
        others = max(best["kiln"]["other_cores"], best["torch"]["other_cores"])
        res.update(kiln_best=kiln, torch_best=torch, ratio=ratio, paired_ratios=ratios,
                   target=target, met=ratio >= target, others=others)
        print(f"{name:27} {kiln:15.0f} {torch:16.0f} {ratio:6.2f} "
              f"{'%.2f-%.2f' % (min(ratios), max(ratios)):>13} "
              f"{'>=%.1f' % target:>7}{'' if ratio >= target else '!':1} "
              f"{rss_k:6.0f} MiB {rss_t:7.0f} MiB {others:7.2f}"
              f"{'' if others < CLEAN_CORES else '  (noisy)'}")
    print("samples/s: training rows x measured epochs / their wall time (validation included),"
          " best run per side, among the clean runs if any; ratio = kiln / torch; range = the"
          " paired rounds' ratios; RSS = peak (VmHWM) of each side's process; others = cores other"
          f" processes kept busy during the two runs shown (clean: < {CLEAN_CORES})")
    if ttfe:
        warm = ttfe["warm_median_seconds"]
        print(f"time to first epoch (SubmitJob -> first epoch event, {ttfe['rows']} rows x "
              f"{ttfe['features']} features, {os.path.basename(args.server)}): first job "
              f"{ttfe['first_job_seconds'] * 1000:.0f} ms, later jobs median "
              f"{(warm or 0) * 1000:.0f} ms; server start to listening "
              f"{ttfe['server_startup_seconds'] * 1000:.0f} ms; load {ttfe['load_before']}")
    print(f"load after: {load()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"configs": results, "ttfe": ttfe, "threads": args.threads}, f, indent=1)


if __name__ == "__main__":
    main()
