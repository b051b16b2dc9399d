"""Reference values and gradients of activations and losses, from torch.
Reads a JSON request on stdin, prints JSON. Float64 throughout."""
import json
import sys

import torch
import torch.nn.functional as F

req = json.load(sys.stdin)
out = {"activations": {}, "losses": {}}

x = torch.tensor(req["x"], dtype=torch.float64)
acts = {
    "relu": lambda t: F.relu(t),
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "leaky_relu": lambda t: F.leaky_relu(t, 0.2),
    "elu": lambda t: F.elu(t, 1.3),
    "selu": F.selu,
    "gelu": F.gelu,
    "softplus": F.softplus,
    "silu": F.silu,
    "rrelu_eval": lambda t: F.rrelu(t, 0.1, 0.3, training=False),
}
for name, fn in acts.items():
    t = x.clone().requires_grad_(True)
    y = fn(t)
    (y * torch.arange(1, len(x) + 1, dtype=torch.float64)).sum().backward()
    out["activations"][name] = {"y": y.tolist(), "grad": t.grad.tolist()}

# PReLU: gradient for the input and for the learned slope.
t = x.clone().requires_grad_(True)
w = torch.tensor([0.25], dtype=torch.float64, requires_grad=True)
y = F.prelu(t, w)
(y * torch.arange(1, len(x) + 1, dtype=torch.float64)).sum().backward()
out["activations"]["prelu"] = {"y": y.tolist(), "grad": t.grad.tolist(), "slope_grad": w.grad.tolist()}

for case in req["losses"]:
    z = torch.tensor(case["output"], dtype=torch.float64).reshape(case["rows"], -1).requires_grad_(True)
    kind = case["kind"]
    if kind == "mse":
        loss = F.mse_loss(z, torch.tensor(case["target"], dtype=torch.float64).reshape(z.shape))
    elif kind == "mae":
        loss = F.l1_loss(z, torch.tensor(case["target"], dtype=torch.float64).reshape(z.shape))
    elif kind == "huber":
        loss = F.huber_loss(z, torch.tensor(case["target"], dtype=torch.float64).reshape(z.shape), delta=case["delta"])
    elif kind == "cross_entropy":
        weight = torch.tensor(case["weights"], dtype=torch.float64) if case["weights"] else None
        loss = F.cross_entropy(z, torch.tensor(case["target"], dtype=torch.long), weight=weight,
                               label_smoothing=case["smoothing"])
    else:
        loss = F.binary_cross_entropy_with_logits(
            z, torch.tensor(case["target"], dtype=torch.float64).reshape(z.shape),
            pos_weight=torch.tensor([case["pos_weight"]], dtype=torch.float64))
    loss.backward()
    out["losses"][case["name"]] = {"loss": loss.item(), "grad": z.grad.flatten().tolist()}

print(json.dumps(out))
