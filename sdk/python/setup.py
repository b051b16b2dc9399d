"""Builds kiln-sdk, generating its gRPC stubs from the repository's protos first.

grpc_tools.protoc (grpcio-tools, a build requirement in pyproject.toml)
compiles ../../proto/kiln/v1/*.proto, or $KILN_PROTO_DIR/kiln/v1/*.proto, into
kiln_sdk/_proto/kiln/v1/{name}_pb2.py, {name}_pb2_grpc.py and {name}_pb2.pyi.
protoc writes absolute imports (`from kiln.v1 import spec_pb2`); they are
rewritten to `kiln_sdk._proto.kiln.v1` so that the stubs live inside this
package. The generated files are not committed (see .gitignore).

This runs whenever setup.py runs (pip's metadata step and its build), so a
wheel always carries stubs matching the protos next to it. Where the protos
are absent (an sdist), the stubs it carries are used as they are.

The install requirements on grpcio and protobuf are the minimum versions the
generated code checks when it is imported.
"""

import os
import re
import shutil
import sys
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
OUT = HERE / "kiln_sdk" / "_proto"
GEN = OUT / "kiln" / "v1"


def proto_root():
    """The directory holding kiln/v1/*.proto, or None."""
    env = os.environ.get("KILN_PROTO_DIR")
    root = Path(env) if env else HERE.parent.parent / "proto"
    return root if (root / "kiln" / "v1").is_dir() else None


def generate():
    root = proto_root()
    if root is None:
        if any(GEN.glob("*_pb2.py")):
            return  # an sdist: it carries the stubs
        sys.exit(
            "kiln-sdk: proto/kiln/v1 not found next to sdk/python; "
            "build from a kiln checkout or set KILN_PROTO_DIR"
        )
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(str(p) for p in (root / "kiln" / "v1").glob("*.proto"))
    shutil.rmtree(OUT / "kiln", ignore_errors=True)
    GEN.mkdir(parents=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{root}",
        f"-I{well_known}",
        f"--python_out={OUT}",
        f"--pyi_out={OUT}",
        f"--grpc_python_out={OUT}",
        *protos,
    ]
    if protoc.main(args) != 0:
        sys.exit(f"kiln-sdk: protoc failed on {root}")
    for package in (OUT / "kiln", GEN):
        (package / "__init__.py").write_text("")
    for path in list(GEN.glob("*.py")) + list(GEN.glob("*.pyi")):
        text = re.sub(
            r"^from kiln\.v1 import",
            "from kiln_sdk._proto.kiln.v1 import",
            path.read_text(),
            flags=re.M,
        )
        path.write_text(text)


def requirements():
    """grpcio and protobuf at least as new as the generated code demands."""
    grpcio, protobuf = "grpcio", "protobuf"
    for path in GEN.glob("*_pb2_grpc.py"):
        m = re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", path.read_text())
        if m:
            grpcio = f"grpcio>={m.group(1)}"
    for path in GEN.glob("*_pb2.py"):
        m = re.search(
            r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,"
            r"\s*(\d+),\s*(\d+),\s*(\d+)",
            path.read_text(),
        )
        if m:
            major, minor, patch = map(int, m.groups())
            protobuf = f"protobuf>={major}.{minor}.{patch},<{major + 1}"
    return [grpcio, protobuf, "numpy", "pandas", "pyyaml", "tqdm"]


generate()
setup(
    install_requires=requirements(),
    package_data={"kiln_sdk._proto.kiln.v1": ["*.pyi"]},
)
