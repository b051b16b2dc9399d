"""The generated kiln.v1 messages and enums in one namespace.

``pb.JobSpec``, ``pb.SubmitJobRequest``, ``pb.JobEvent``, ``pb.JOB_STATE_SUCCEEDED``,
... come from the modules that setup.py generates with grpcio-tools into
``kiln_sdk._proto.kiln.v1`` (``*_pb2.py`` for messages, ``*_pb2_grpc.py`` for
the service stubs, which :class:`kiln_sdk.Client` exposes as ``jobs_stub``,
``datasets_stub``, ``inference_stub`` and ``sweeps_stub``).
"""

from kiln_sdk._proto.kiln.v1 import (
    common_pb2,
    datasets_pb2,
    datasets_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    spec_pb2,
    sweeps_pb2,
    sweeps_pb2_grpc,
)

__all__ = []
for _module in (common_pb2, spec_pb2, jobs_pb2, datasets_pb2, inference_pb2, sweeps_pb2):
    for _name, _value in vars(_module).items():
        if not _name.startswith("_") and _name != "DESCRIPTOR":
            globals()[_name] = _value
            __all__.append(_name)
del _module, _name, _value
