"""MLServer runtime for `bench_serve --peer mlserver`: kiln's exported model
(one safetensors file) as the same torch MLP, answering ModelInfer with the
`probabilities` tensor that kiln's Open Inference Protocol endpoint gives.

The benchmark writes this file next to the model settings. It reads the
safetensors format with json and numpy (the format is an 8-byte header
length, a JSON header, then the raw tensors), so it needs nothing beyond
MLServer and torch.
"""

import json

import numpy as np
import torch
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


def read_kiln_model(path):
    """(kiln's model metadata, {name: float32 tensor}) of an exported model."""
    with open(path, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    meta = json.loads(header.pop("__metadata__")["kiln.model"])
    tensors = {}
    for name, info in header.items():
        if info["dtype"] != "F32":
            raise ValueError(f"{name}: dtype {info['dtype']}, expected F32")
        start, end = info["data_offsets"]
        data = np.frombuffer(raw, dtype="<f4", count=(end - start) // 4, offset=8 + n + start)
        tensors[name] = torch.from_numpy(data.reshape(info["shape"]).copy())
    return meta, tensors


class KilnMlp(MLModel):
    """kiln's ReLU MLP for multi-class classification, as kiln computes it:
    scaled inputs, `x @ W + b` per layer (burn keeps W as [in, out]), ReLU,
    softmax over the output layer."""

    async def load(self) -> bool:
        torch.set_num_threads(int(self.settings.parameters.extra["threads"]))
        meta, t = read_kiln_model(await get_model_uri(self.settings))
        arch = meta["arch"]
        for i, layer in enumerate(arch["hidden"]):
            plain = layer.get("batch_norm") is None and layer.get("dropout", 0) == 0
            if layer["activation"] != "Relu" or not plain:
                raise ValueError(f"hidden layer {i}: this runtime serves plain ReLU layers only")
        if arch["task"] != "Multiclass":
            raise ValueError(f"task {arch['task']}: this runtime serves multi-class models only")
        scaler = meta["feature_scaler"]
        self.offset = torch.tensor(scaler["offset"], dtype=torch.float64)
        self.scale = torch.tensor(scaler["scale"], dtype=torch.float64)
        self.layers = [
            (t[f"blocks.{i}.linear.weight"], t[f"blocks.{i}.linear.bias"])
            for i in range(len(arch["hidden"]))
        ]
        self.output = (t["output.weight"], t["output.bias"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = torch.from_numpy(NumpyCodec.decode_input(payload.inputs[0]))
        with torch.inference_mode():
            # kiln scales in f64 and rounds to f32, as here.
            h = ((x.double() - self.offset) / self.scale).float()
            for w, b in self.layers:
                h = torch.relu(h @ w + b)
            p = torch.softmax(h @ self.output[0] + self.output[1], dim=1)
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output("probabilities", p.numpy())],
        )
