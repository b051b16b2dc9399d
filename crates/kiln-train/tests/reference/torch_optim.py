"""Reference for kiln-train's optimizer parity tests (tests/optim_parity.rs):
torch.optim and torch.nn.utils' clipping on the same network, weights and
data, in float32 like kiln. Reads a JSON list of cases on stdin, prints the
JSON list of their results.

The network is written with kiln's layout and operations (burn's Linear:
weight [in, out], y = x @ W + b; tanh hidden layer; MSE as mean of squares),
so that the forward and backward passes round as in kiln and the comparison
measures the optimizers. torch.optim does not care about the layout: its
updates are elementwise, and the clipping norms are over all elements.

Case fields: name (unused here); dtype (optional: "float64" measures how far
float32 itself is from exact, for diagnosis); dims [in, hidden, out];
params [[w, b], ...] (w flattened [in, out]); x, y (flattened); steps;
optimizer {kind, lr, weight_decay, ...}; optional lrs / momenta (one per
step, written into the param group before each step as a scheduler does:
"momentum" for SGD, betas[0] for the Adam family); optional clip
{kind: "norm", max_norm, norm_type (null: inf)} or {kind: "value", clip_value}.
Result: params (same layout), norms (clip_grad_norm_'s return per step).
"""
import json
import math
import sys

import torch

torch.set_num_threads(1)


def forward(params, x):
    """tanh(x @ W1 + b1) @ W2 + b2, tanh between every pair of layers."""
    h = x
    n = len(params) // 2
    for i in range(n):
        h = h.matmul(params[2 * i]) + params[2 * i + 1]
        if i < n - 1:
            h = torch.tanh(h)
    return h


def make_optimizer(params, opt):
    kind = opt["kind"]
    # foreach=False: the single-tensor code path (CPU's default anyway).
    common = {"lr": opt["lr"], "weight_decay": opt["weight_decay"], "foreach": False}
    if kind == "sgd":
        return torch.optim.SGD(params, momentum=opt["momentum"], dampening=opt["dampening"],
                               nesterov=opt["nesterov"], **common)
    if kind in ("adam", "adamw"):
        cls = torch.optim.Adam if kind == "adam" else torch.optim.AdamW
        return cls(params, betas=(opt["beta1"], opt["beta2"]), eps=opt["eps"],
                   amsgrad=opt["amsgrad"], **common)
    if kind == "nadam":
        return torch.optim.NAdam(params, betas=(opt["beta1"], opt["beta2"]), eps=opt["eps"],
                                 momentum_decay=opt["momentum_decay"], **common)
    if kind == "rmsprop":
        return torch.optim.RMSprop(params, alpha=opt["alpha"], eps=opt["eps"],
                                   momentum=opt["momentum"], centered=opt["centered"], **common)
    if kind == "adamax":
        return torch.optim.Adamax(params, betas=(opt["beta1"], opt["beta2"]), eps=opt["eps"],
                                  **common)
    if kind == "adagrad":
        return torch.optim.Adagrad(params, lr_decay=opt["lr_decay"],
                                   initial_accumulator_value=opt["initial_accumulator_value"],
                                   eps=opt["eps"], **common)
    raise SystemExit(f"unknown optimizer {kind}")


def run_case(case):
    dtype = torch.float64 if case.get("dtype") == "float64" else torch.float32
    dims = case["dims"]
    params = []
    for i, (w, b) in enumerate(case["params"]):
        params.append(torch.tensor(w, dtype=dtype).reshape(dims[i], dims[i + 1]).requires_grad_())
        params.append(torch.tensor(b, dtype=dtype).requires_grad_())
    x = torch.tensor(case["x"], dtype=dtype).reshape(-1, dims[0])
    y = torch.tensor(case["y"], dtype=dtype).reshape(x.shape[0], -1)
    optimizer = make_optimizer(params, case["optimizer"])
    clip = case.get("clip")
    norms = []
    for step in range(case["steps"]):
        group = optimizer.param_groups[0]
        if case.get("lrs") is not None:
            group["lr"] = case["lrs"][step]
        if case.get("momenta") is not None:
            m = case["momenta"][step]
            if "betas" in group:
                group["betas"] = (m, group["betas"][1])
            else:
                group["momentum"] = m
        optimizer.zero_grad()
        loss = (forward(params, x) - y).square().mean()
        loss.backward()
        if clip is not None:
            if clip["kind"] == "norm":
                norm_type = math.inf if clip["norm_type"] is None else clip["norm_type"]
                total = torch.nn.utils.clip_grad_norm_(params, clip["max_norm"], norm_type)
                norms.append(total.item())
            else:
                torch.nn.utils.clip_grad_value_(params, clip["clip_value"])
        optimizer.step()
    out = []
    for i in range(0, len(params), 2):
        out.append([params[i].detach().flatten().tolist(), params[i + 1].detach().tolist()])
    return {"params": out, "norms": norms}


print(json.dumps([run_case(case) for case in json.load(sys.stdin)]))
