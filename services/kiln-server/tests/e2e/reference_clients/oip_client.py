"""Calls kiln's Open Inference Protocol endpoint with the real Triton client.

Usage: oip_client.py HOST:PORT < cases.json

cases.json is a list of {"model": NAME, "rows": [[...], ...]}. For each model
this asks for readiness and metadata, runs the rows through
`tritonclient.grpc.InferenceServerClient.infer` (raw FP32 input, as
`set_data_from_numpy` sends it), once by default and once naming version "1"
and the output, and once with a wrong datatype. It prints one JSON object on
stdout for tests/oip.rs to compare with kiln's own Predict.
"""

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def tensor_json(t):
    return {"name": t.name, "datatype": t.datatype, "shape": [int(d) for d in t.shape]}


def param_json(p):
    which = p.WhichOneof("parameter_choice")
    return getattr(p, which) if which else None


def infer_json(result, output):
    response = result.get_response()
    values = result.as_numpy(output)
    return {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "id": response.id,
        "outputs": [tensor_json(t) for t in response.outputs],
        "raw": len(response.raw_output_contents),
        "dtype": str(values.dtype),
        "shape": list(values.shape),
        "values": values.astype(np.float64).tolist(),
        "parameters": {k: param_json(v) for k, v in response.parameters.items()},
    }


def main():
    url = sys.argv[1]
    cases = json.load(sys.stdin)
    client = grpcclient.InferenceServerClient(url=url)
    server = client.get_server_metadata()
    out = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "server": {
            "name": server.name,
            "version": server.version,
            "extensions": list(server.extensions),
        },
        "unknown_model_ready": client.is_model_ready("no-such-model"),
        "models": {},
    }
    for case in cases:
        name = case["model"]
        rows = np.array(case["rows"], dtype=np.float32)
        meta = client.get_model_metadata(name)
        output = meta.outputs[0].name

        inp = grpcclient.InferInput("input", list(rows.shape), "FP32")
        inp.set_data_from_numpy(rows)
        default = client.infer(name, [inp], request_id="req-" + name)
        named = client.infer(
            name,
            [inp],
            model_version="1",
            outputs=[grpcclient.InferRequestedOutput(output)],
        )

        bad = grpcclient.InferInput("input", list(rows.shape), "FP64")
        bad.set_data_from_numpy(rows.astype(np.float64))
        try:
            client.infer(name, [bad])
            wrong_datatype = None
        except InferenceServerException as e:
            wrong_datatype = {"status": e.status(), "message": e.message()}

        out["models"][name] = {
            "ready": client.is_model_ready(name),
            "ready_v1": client.is_model_ready(name, "1"),
            "ready_v9": client.is_model_ready(name, "9"),
            "metadata": {
                "name": meta.name,
                "versions": list(meta.versions),
                "platform": meta.platform,
                "inputs": [tensor_json(t) for t in meta.inputs],
                "outputs": [tensor_json(t) for t in meta.outputs],
            },
            "infer": infer_json(default, output),
            "infer_v1_named": infer_json(named, output),
            "wrong_datatype": wrong_datatype,
        }
    client.close()
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
