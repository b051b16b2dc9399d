"""Reference for kiln-train's SWA tests (tests/swa_parity.rs):
torch.optim.swa_utils' SWALR, AveragedModel and update_bn on the same inputs.
Reads a JSON case on stdin, prints JSON."""
import json
import sys

import torch
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn

case = json.load(sys.stdin)
torch.set_default_dtype(torch.float64)  # the reference itself adds no rounding


def build(dims, params, batch_norm):
    layers = []
    for i in range(len(dims) - 1):
        linear = torch.nn.Linear(dims[i], dims[i + 1])
        w, b = params[i]
        # kiln (burn) stores [in, out]; torch [out, in].
        linear.weight.data = torch.tensor(w).reshape(dims[i], dims[i + 1]).T.contiguous()
        linear.bias.data = torch.tensor(b)
        layers.append(linear)
        if i < len(dims) - 2:
            if batch_norm:
                layers.append(torch.nn.BatchNorm1d(dims[i + 1], momentum=0.1, eps=1e-5))
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers)


def flat_params(model):
    # kiln's order and layout: weights as [in, out].
    out = []
    for p in model.parameters():
        out.append((p.T if p.dim() == 2 else p).flatten().tolist())
    return out


if case["kind"] == "swalr":
    # torch's recipe, with 0-based epochs: the main scheduler and SWALR are
    # both built up front; after epoch e, `if e > swa_start: swa_scheduler.step()
    # else: scheduler.step()`. Records the LR used in each epoch.
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=case["lr"])
    scheduler = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=case["gamma"])
    swa_scheduler = SWALR(opt, swa_lr=case["swa_lr"], anneal_epochs=case["anneal_epochs"],
                          anneal_strategy=case["anneal_strategy"])
    lrs = []
    for epoch in range(case["epochs"]):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if epoch > case["swa_start"]:
            swa_scheduler.step()
        else:
            scheduler.step()
    print(json.dumps({"lrs": lrs}))
elif case["kind"] == "average":
    dims = case["dims"]
    model = build(dims, case["params"], True)
    swa_model = AveragedModel(model)
    x = torch.tensor(case["x"]).reshape(-1, dims[0])
    y = torch.tensor(case["y"]).reshape(x.shape[0], -1)
    opt = torch.optim.SGD(model.parameters(), lr=case["lr"])
    model.train()
    for _ in range(case["steps"]):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        swa_model.update_parameters(model)
    print(json.dumps({"params": flat_params(swa_model.module)}))
elif case["kind"] == "update_bn":
    dims = case["dims"]
    model = build(dims, case["params"], True)
    x = torch.tensor(case["x"]).reshape(-1, dims[0])
    loader = [x[s:s + case["batch"]] for s in range(0, x.shape[0], case["batch"])]
    update_bn(loader, model)
    model.eval()
    with torch.no_grad():
        out = model(x)
    stats = [[m.running_mean.tolist(), m.running_var.tolist()]
             for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    print(json.dumps({"eval_output": out.flatten().tolist(), "stats": stats}))
