"""Writes the seed corpora under fuzz/corpus/<target>/seed-* (small valid inputs).

Run from the repository root with numpy installed:
    ~/.cache/kiln/venv/bin/python fuzz/make_seeds.py
"""
import io
import json
import pathlib
import struct

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{name}").write_bytes(data)


# --- protobuf, encoded by hand (no generated Python code needed) ---
def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num, wire, payload):
    key = varint(num << 3 | wire)
    if wire == 0:
        return key + varint(payload)
    if wire == 1:
        return key + struct.pack("<d", payload)
    return key + varint(len(payload)) + payload  # wire 2


def msg(*fields):
    return b"".join(fields)


def s(num, text):
    return field(num, 2, text.encode())


rows = [(i / 4, (i * 7 % 5) / 2, float(i % 2)) for i in range(8)]
inline = msg(
    s(1, "a"), s(1, "b"), s(1, "y"),
    *[field(2, 2, field(1, 2, b"".join(struct.pack("<d", v) for v in r))) for r in rows],
)
layer = msg(field(1, 0, 8), field(2, 0, 2), field(4, 1, 0.1))  # units, TANH, dropout
spec = msg(
    s(1, "seed"),
    field(2, 0, 1),  # TASK_REGRESSION
    field(3, 2, msg(field(2, 2, inline), s(3, "y"), field(5, 1, 0.25))),
    field(4, 2, msg(field(1, 2, layer))),
    field(5, 2, msg(field(4, 0, 3), field(5, 0, 4), field(7, 0, 42))),  # epochs, batch, seed
    field(6, 0, 1),  # DEVICE_CPU
)
write("job_spec", "inline-regression.pb", spec)
binary = spec.replace(field(2, 0, 1), field(2, 0, 2), 1)  # TASK_BINARY_CLASSIFICATION
write("job_spec", "inline-binary.pb", binary)
write("job_spec", "dataset.pb", msg(field(2, 0, 3), field(3, 2, msg(s(1, "ds-1"), s(3, "label")))))

# --- proto3 JSON, from the examples with their rows cut down ---
for name in ["rings", "selu_alpha_dropout", "sgd_nesterov_onecycle", "huber_plateau"]:
    job = json.loads((ROOT / "examples" / f"{name}.json").read_text())
    data = job["spec"]["data"]
    if "inline" in data:
        data["inline"]["rows"] = data["inline"]["rows"][:12]
    write("job_spec", f"{name}.json", json.dumps(job, separators=(",", ":")).encode())

# --- CSV: two choice bytes, then the file ---
def head(name, lines):
    text = (ROOT / "examples" / name).read_text().splitlines()[:lines]
    return ("\n".join(text) + "\n").encode()

write("csv_table", "regression.csv", b"\x10\x00" + head("regression.csv", 12))
write("csv_table", "spirals-multiclass.csv", b"\x02\x00" + head("spirals.csv", 12))
write("csv_table", "categorical.csv",
      b"\x01\x01x,color,size,y\n1,red,2,0\n2,blue,10,1\n3,red,2.0,1\n4,green,2,0\n")
write("csv_table", "quoted.csv", b"\x00\x9c\"a b\",c,y\n\"1\",\" 2\",3\n4,5,6\n7,8,9\n")


# --- NPY, as numpy.save writes it ---
def npy(a):
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()

x = np.arange(12, dtype=np.float32).reshape(4, 3)
y = np.array([0, 1, 0, 1], dtype=np.int64)
write("npy", "f4-2d", b"\x00" + npy(x))
xb, yb = npy(x), npy(y)
write("npy", "x-and-y", b"\x01" + struct.pack("<H", len(xb)) + xb + yb)
write("npy", "f8-3d", b"\x00" + npy(np.linspace(0, 1, 16).reshape(4, 2, 2)))
write("npy", "u1-bool", b"\x00" + npy(np.array([True, False, True])))
write("npy", "i2-1d", b"\x00" + npy(np.array([-3, 5, 7], dtype="<i2")))
