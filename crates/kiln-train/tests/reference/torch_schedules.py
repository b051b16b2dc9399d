"""Reference for kiln-train's schedule parity tests (tests/schedule_parity.rs):
torch.optim.lr_scheduler driven over a long run on a dummy parameter.

Reads a JSON list of cases on stdin and prints a JSON list of results, one per
case: {"lr": [...], "momentum": [...] or null}. Every number goes out as the
bits of its IEEE-754 double (an unsigned integer), so that no decimal
round trip (serde_json's parser is not always correctly rounded) blurs the
comparison.

Epoch schedules: lr[e] is the LR used in epoch e + 1 (after e scheduler steps),
for e in 0..=epochs (the last one is the LR after the final step). OneCycle:
lr[k] (and momentum[k]) is the value for optimizer step k + 1, for k in
0..=total_steps.

A case: {"base_lr", "epochs", "steps_per_epoch", "optimizer": "sgd" | "adam",
"kind": {"type": "constant" | "step" | "exponential" | "cosine" | "plateau" |
"onecycle", ...torch's arguments}, "warmup": null | {"epochs", "start_factor"},
"metrics": [number or null (NaN)] (plateau only, one per epoch)}.
"""
import json
import math
import struct
import sys

import torch
from torch.optim import lr_scheduler as S


def build(case, opt):
    k = case["kind"]
    t = k["type"]
    if t == "constant":
        return None
    if t == "step":
        return S.StepLR(opt, step_size=k["step_size"], gamma=k["gamma"])
    if t == "exponential":
        return S.ExponentialLR(opt, gamma=k["gamma"])
    if t == "cosine":
        return S.CosineAnnealingLR(opt, T_max=k["t_max"], eta_min=k["eta_min"])
    if t == "plateau":
        return S.ReduceLROnPlateau(
            opt,
            mode=k["mode"],
            factor=k["factor"],
            patience=k["patience"],
            threshold=k["threshold"],
            threshold_mode=k["threshold_mode"],
            cooldown=k["cooldown"],
            min_lr=k["min_lr"],
            eps=k["eps"],
        )
    if t == "onecycle":
        return S.OneCycleLR(
            opt,
            max_lr=k["max_lr"],
            epochs=case["epochs"],
            steps_per_epoch=case["steps_per_epoch"],
            pct_start=k["pct_start"],
            anneal_strategy=k["anneal_strategy"],
            cycle_momentum=k["cycle_momentum"],
            base_momentum=k["base_momentum"],
            max_momentum=k["max_momentum"],
            div_factor=k["div_factor"],
            final_div_factor=k["final_div_factor"],
            three_phase=k["three_phase"],
        )
    raise ValueError(t)


def run(case):
    torch.set_default_dtype(torch.float64)
    p = torch.nn.Parameter(torch.zeros(3))
    if case["optimizer"] == "adam":
        opt = torch.optim.Adam([p], lr=case["base_lr"], betas=(0.9, 0.999))
    else:
        opt = torch.optim.SGD([p], lr=case["base_lr"], momentum=0.9)
    group = opt.param_groups[0]

    def optimizer_step():
        p.grad = torch.zeros_like(p)
        opt.step()

    kind = case["kind"]["type"]
    if kind == "onecycle":
        # OneCycleLR is not chainable: kiln ignores a warmup with it.
        sched = build(case, opt)
        cycle = case["kind"]["cycle_momentum"]

        def momentum():
            if not cycle:
                return None
            return group["betas"][0] if case["optimizer"] == "adam" else group["momentum"]

        lrs, moms = [], []
        total = case["epochs"] * case["steps_per_epoch"]
        for _ in range(total):
            lrs.append(group["lr"])
            moms.append(momentum())
            optimizer_step()
            sched.step()
        lrs.append(group["lr"])
        moms.append(momentum())
        return {"lr": lrs, "momentum": moms if cycle else None}

    # The warmup is built first and stepped first (ChainedScheduler order).
    warm = None
    if case["warmup"] is not None and case["warmup"]["epochs"] > 0:
        warm = S.LinearLR(
            opt,
            start_factor=case["warmup"]["start_factor"],
            end_factor=1.0,
            total_iters=case["warmup"]["epochs"],
        )
    main = build(case, opt)

    if kind == "plateau":
        # ChainedScheduler refuses ReduceLROnPlateau: step both by hand.
        def step(e):
            m = case["metrics"][e]
            if warm is not None:
                warm.step()
            main.step(math.nan if m is None else m)
    else:
        chain = [s for s in (warm, main) if s is not None]
        sched = S.ChainedScheduler(chain, optimizer=opt) if chain else None

        def step(e):
            if sched is not None:
                sched.step()

    lrs = []
    for e in range(case["epochs"]):
        lrs.append(group["lr"])
        optimizer_step()
        step(e)
    lrs.append(group["lr"])
    return {"lr": lrs, "momentum": None}


def bits(x):
    return struct.unpack("<Q", struct.pack("<d", float(x)))[0]


def encode(result):
    return {
        "lr": [bits(v) for v in result["lr"]],
        "momentum": None if result["momentum"] is None else [bits(v) for v in result["momentum"]],
    }


cases = json.load(sys.stdin)
json.dump([encode(run(c)) for c in cases], sys.stdout)
