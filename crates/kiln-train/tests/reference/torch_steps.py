"""Reference for kiln-train's parity tests: the same network, weights, data and
optimizer steps in PyTorch eager. Reads a JSON case on stdin, prints JSON."""
import json
import sys

import torch

case = json.load(sys.stdin)
torch.set_default_dtype(torch.float64)  # the reference itself adds no rounding
dims = case["dims"]
acts = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU, "sigmoid": torch.nn.Sigmoid}
layers = []
for i in range(len(dims) - 1):
    linear = torch.nn.Linear(dims[i], dims[i + 1])
    w, b = case["params"][i]
    # kiln (burn) stores [in, out]; torch [out, in].
    linear.weight.data = torch.tensor(w).reshape(dims[i], dims[i + 1]).T.contiguous()
    linear.bias.data = torch.tensor(b)
    layers.append(linear)
    if i < len(dims) - 2:
        if case["batch_norm"]:
            layers.append(torch.nn.BatchNorm1d(dims[i + 1], momentum=0.1, eps=1e-5))
        layers.append(acts[case["activation"]]())
model = torch.nn.Sequential(*layers)

x = torch.tensor(case["x"]).reshape(-1, dims[0])
opt = case["optimizer"]
if opt["kind"] == "sgd":
    optimizer = torch.optim.SGD(model.parameters(), lr=opt["lr"], momentum=opt["momentum"],
                                dampening=opt["dampening"], nesterov=opt["nesterov"],
                                weight_decay=opt["weight_decay"])
else:
    optimizer = torch.optim.Adam(model.parameters(), lr=opt["lr"], betas=(opt["beta1"], opt["beta2"]),
                                 eps=opt["eps"], weight_decay=opt["weight_decay"])
if case["loss"] == "mse":
    y = torch.tensor(case["y"]).reshape(x.shape[0], -1)
    loss_fn = torch.nn.MSELoss()
elif case["loss"] == "cross_entropy":
    y = torch.tensor(case["y"], dtype=torch.long)
    loss_fn = torch.nn.CrossEntropyLoss()
else:
    y = torch.tensor(case["y"], dtype=torch.float64).reshape(-1, 1)
    loss_fn = torch.nn.BCEWithLogitsLoss()

losses = []
model.train()
for _ in range(case["steps"]):
    optimizer.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
model.eval()
with torch.no_grad():
    out = model(x)
print(json.dumps({"losses": losses, "eval_output": out.flatten().tolist()}))
