"""The kiln client: training jobs, datasets and predictions over gRPC.

Every method returns the generated protobuf messages of :mod:`kiln_sdk.pb`
(``pb.Job``, ``pb.JobEvent``, ``pb.Dataset``, ``pb.ModelInfo``), except
:meth:`Client.predict`, which returns numpy arrays in a :class:`Prediction`.
A failed call raises :class:`KilnError`.
"""

from __future__ import annotations

import io
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

import grpc
import numpy as np
from google.protobuf import json_format

from kiln_sdk import pb
from kiln_sdk._proto.kiln.v1 import datasets_pb2_grpc, inference_pb2_grpc, jobs_pb2_grpc

#: Bytes per UploadDataset message.
CHUNK_BYTES = 1 << 20

Spec = Union[Mapping[str, Any], "pb.JobSpec", "pb.SubmitJobRequest", str, os.PathLike]


class KilnError(Exception):
    """A kiln call that failed.

    ``code`` is the :class:`grpc.StatusCode` (e.g. ``INVALID_ARGUMENT``,
    ``NOT_FOUND``) and ``message`` the server's detail, which for a bad spec
    names the field, e.g. ``spec.training.epochs: must be at least 1``. A spec
    dict that does not parse as proto3 JSON is raised here too, as
    ``INVALID_ARGUMENT``, without a call.
    """

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


@contextmanager
def _rpc_errors():
    try:
        yield
    except grpc.RpcError as err:
        raise KilnError(err.code(), err.details() or "") from err


@dataclass
class Prediction:
    """Predict's answer as arrays, one row per input row.

    ``outputs``: float64 ``(n, k)``: the class probabilities for
    classification (``k`` classes, binary included), the predicted values for
    regression (``k`` targets, in the targets' units). ``class_index``
    (int64 ``(n,)``) and ``classes`` (str ``(n,)``, the class labels) are set
    for classification only. ``response`` is the ``pb.PredictResponse``.
    """

    outputs: np.ndarray
    class_index: Optional[np.ndarray]
    classes: Optional[np.ndarray]
    model_version: int
    job_id: str
    response: "pb.PredictResponse"


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <token>`` to every call."""

    def __init__(self, token: str):
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details):
        metadata = list(details.metadata or []) + [self._header]
        return _CallDetails(
            details.method, details.timeout, metadata, details.credentials,
            getattr(details, "wait_for_ready", None), getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._details(details), requests)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression):
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression


class Client:
    """A connection to a kiln server.

    ``address`` is ``host:port``. ``token`` is the server's bearer token
    (its ``auth_token``; default: the ``KILN_TOKEN`` environment variable, or
    none). ``root_certificates`` (PEM bytes) makes the connection TLS, trusting
    that CA; without it the connection is plaintext. ``timeout`` is the
    deadline in seconds of each unary call (None: none). The generated service stubs are
    available as ``jobs_stub``, ``datasets_stub`` and ``inference_stub`` for
    anything this class does not wrap. Use it as a context manager, or call
    :meth:`close`.
    """

    def __init__(
        self,
        address: str = "localhost:50051",
        *,
        token: Optional[str] = None,
        root_certificates: Optional[bytes] = None,
        timeout: Optional[float] = None,
        channel: Optional[grpc.Channel] = None,
    ):
        self.address = address
        self.timeout = timeout
        if channel is None:
            options = [("grpc.max_receive_message_length", -1)]
            if root_certificates is not None:
                credentials = grpc.ssl_channel_credentials(root_certificates)
                channel = grpc.secure_channel(address, credentials, options=options)
            else:
                channel = grpc.insecure_channel(address, options=options)
        self._raw_channel = channel
        token = os.environ.get("KILN_TOKEN") if token is None else token
        if token:
            channel = grpc.intercept_channel(channel, _BearerToken(token))
        self.channel = channel
        self.jobs_stub = jobs_pb2_grpc.JobServiceStub(self.channel)
        self.datasets_stub = datasets_pb2_grpc.DatasetServiceStub(self.channel)
        self.inference_stub = inference_pb2_grpc.InferenceServiceStub(self.channel)

    def close(self) -> None:
        self._raw_channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request):
        with _rpc_errors():
            return method(request, timeout=self.timeout)

    # Jobs

    def submit(self, spec: Spec, *, wait: bool = False, timeout: Optional[float] = None):
        """Submits a training job and returns its ``pb.Job`` (QUEUED).

        ``spec`` is a dict in proto3 JSON mapping, either a SubmitJobRequest
        (``{"spec": {...}}``, the format of ``examples/*.json``) or a bare
        JobSpec; a path to such a JSON file; or a ``pb.JobSpec`` or
        ``pb.SubmitJobRequest``. With ``wait=True`` it returns the job once it
        has ended instead (see :meth:`wait`; ``timeout`` applies there).
        """
        job = self._call(self.jobs_stub.SubmitJob, _submit_request(spec))
        return self.wait(job.id, timeout=timeout) if wait else job

    def get(self, job_id: str):
        """The job's current ``pb.Job``."""
        return self._call(self.jobs_stub.GetJob, pb.GetJobRequest(job_id=job_id))

    def jobs(self, state: Union[None, int, str] = None) -> List["pb.Job"]:
        """Every job, newest first; ``state`` (e.g. ``"RUNNING"`` or
        ``pb.JOB_STATE_RUNNING``) keeps only those in that state."""
        request = pb.ListJobsRequest(state=_enum(pb.JobState, "JOB_STATE_", state))
        return list(self._call(self.jobs_stub.ListJobs, request).jobs)

    def cancel(self, job_id: str):
        """Stops a queued or running job (it ends CANCELLED); returns the ``pb.Job``."""
        return self._call(self.jobs_stub.CancelJob, pb.CancelJobRequest(job_id=job_id))

    def watch(self, job_id: str, *, timeout: Optional[float] = None) -> Iterator["pb.JobEvent"]:
        """Yields the job's events as generated ``pb.JobEvent`` messages.

        Every event from the first, then live ones; the iterator ends when the
        job has ended. ``event.WhichOneof("kind")`` is ``"state_changed"``,
        ``"epoch"``, ``"early_stopped"``, ``"finished"``, ``"failed"``, or for
        an LR range test ``"lr_range_point"`` and ``"lr_range_result"``.
        ``timeout`` bounds the whole stream (DEADLINE_EXCEEDED past it).
        """
        stream = self.jobs_stub.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=timeout)
        try:
            with _rpc_errors():
                yield from stream
        finally:
            stream.cancel()  # a consumer that stops early ends the call

    def wait(
        self,
        job_id: str,
        *,
        timeout: Optional[float] = None,
        on_event: Optional[Callable[["pb.JobEvent"], None]] = None,
    ):
        """Waits for the job to end (SUCCEEDED, FAILED or CANCELLED) and returns
        its final ``pb.Job``; ``on_event`` sees each event on the way."""
        for event in self.watch(job_id, timeout=timeout):
            if on_event is not None:
                on_event(event)
        return self.get(job_id)

    # Datasets

    def upload_dataset(
        self,
        source: Union[str, os.PathLike, bytes, np.ndarray, Mapping[str, np.ndarray]],
        name: Optional[str] = None,
        *,
        chunk_bytes: int = CHUNK_BYTES,
    ):
        """Uploads a dataset and returns its ``pb.Dataset`` (``.id`` is what a
        spec's ``data.datasetId`` names).

        ``source`` is one of:

        - a path to a CSV file with a header row, or the CSV's bytes;
        - a numpy array, sent as the NPY array ``x`` (columns ``x[0]``,
          ``x[1]``, ...; a 1-D array is the one column ``x``);
        - a mapping of names to arrays, e.g. ``{"x": images, "y": labels}``,
          each sent as its own NPY array, in order (all with the same rows);
        - a path to a ``.npy`` file (the array ``x``) or ``.npz`` file (its arrays).

        ``name`` defaults to the file's stem, else the server's "dataset".
        """
        parts: Iterable[Tuple[str, bytes]]
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            name = name or path.stem
            if path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as archive:
                    source = {key: archive[key] for key in archive.files}
            elif path.suffix == ".npy":
                source = {"x": np.load(path, allow_pickle=False)}
            else:
                source = path
        if isinstance(source, np.ndarray):
            source = {"x": source}
        if isinstance(source, Mapping):
            fmt, parts = pb.DATASET_FORMAT_NPY, _npy_parts(source, chunk_bytes)
        elif isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            fmt = pb.DATASET_FORMAT_CSV
            parts = (("", data[i : i + chunk_bytes]) for i in range(0, len(data), chunk_bytes))
        elif isinstance(source, Path):
            fmt, parts = pb.DATASET_FORMAT_CSV, _file_parts(source, chunk_bytes)
        else:
            raise TypeError(f"cannot upload a {type(source).__name__}")
        messages = _upload_messages(name or "", fmt, parts)
        return self._call(self.datasets_stub.UploadDataset, messages)

    def get_dataset(self, dataset_id: str):
        """The ``pb.Dataset`` with this id."""
        return self._call(self.datasets_stub.GetDataset, pb.GetDatasetRequest(dataset_id=dataset_id))

    def datasets(self) -> List["pb.Dataset"]:
        """Every uploaded dataset, newest first."""
        return list(self._call(self.datasets_stub.ListDatasets, pb.ListDatasetsRequest()).datasets)

    # Inference

    def predict(self, model: str, x, version: Union[None, int, str] = None) -> Prediction:
        """Predicts with a served model.

        ``model`` is a model name (a spec's ``modelName``) or the id of the job
        that trained it; ``version`` a number or an alias (None: the newest
        loaded). ``x`` is ``(n, features)`` (a 1-D array is one row), features
        in the model's order (``ModelInfo.feature_columns``), unscaled.
        """
        rows = np.asarray(x, dtype=np.float64)
        if rows.ndim == 1:
            rows = rows[None, :]
        if rows.ndim != 2:
            raise ValueError(f"x must be 1-D or 2-D, got shape {rows.shape}")
        request = pb.PredictRequest(
            model=model,
            version="" if version is None else str(version),
            rows=[pb.Row(values=row) for row in rows.tolist()],
        )
        response = self._call(self.inference_stub.Predict, request)
        return _prediction(response)

    def models(self) -> List["pb.ModelInfo"]:
        """Every version of every model (``pb.ModelInfo``)."""
        return list(self._call(self.inference_stub.ListModels, pb.ListModelsRequest()).models)


def _submit_request(spec: Spec):
    if isinstance(spec, pb.SubmitJobRequest):
        return spec
    if isinstance(spec, pb.JobSpec):
        return pb.SubmitJobRequest(spec=spec)
    if isinstance(spec, (str, os.PathLike)):
        spec = json.loads(Path(spec).read_text())
    if not isinstance(spec, Mapping):
        raise TypeError(f"a job spec must be a dict, a path or a message, not {type(spec).__name__}")
    body = spec if "spec" in spec else {"spec": spec}
    try:
        return json_format.ParseDict(body, pb.SubmitJobRequest())
    except json_format.ParseError as err:
        raise KilnError(grpc.StatusCode.INVALID_ARGUMENT, str(err)) from err


def _enum(enum, prefix: str, value) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        name = value.upper()
        return enum.Value(name if name.startswith(prefix) else prefix + name)
    return int(value)


def _npy_parts(arrays: Mapping[str, np.ndarray], chunk_bytes: int) -> Iterator[Tuple[str, bytes]]:
    for array_name, array in arrays.items():
        array = np.asarray(array)
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
        data = buffer.getvalue()
        for i in range(0, len(data), chunk_bytes):
            yield array_name, data[i : i + chunk_bytes]


def _file_parts(path: Path, chunk_bytes: int) -> Iterator[Tuple[str, bytes]]:
    with open(path, "rb") as file:
        while chunk := file.read(chunk_bytes):
            yield "", chunk


def _upload_messages(name: str, fmt: int, parts: Iterable[Tuple[str, bytes]]):
    """The first message carries the name and format; each one a chunk."""
    first = True
    for array, chunk in parts:
        message = pb.UploadDatasetRequest(chunk=chunk, array=array)
        if first:
            message.name, message.format, first = name, fmt, False
        yield message
    if first:  # nothing to send: an empty upload, which the server refuses
        yield pb.UploadDatasetRequest(name=name, format=fmt)


def _prediction(response) -> Prediction:
    predictions = response.predictions
    classification = any(len(p.probabilities) for p in predictions)
    if classification:
        outputs = np.array([list(p.probabilities) for p in predictions], dtype=np.float64)
        class_index = np.array([p.class_index for p in predictions], dtype=np.int64)
        classes = np.array([p.class_label for p in predictions], dtype=str)
    else:
        outputs = np.array([list(p.values) for p in predictions], dtype=np.float64)
        class_index = classes = None
    if not len(predictions):
        outputs = outputs.reshape(0, 0)
    return Prediction(outputs, class_index, classes, response.model_version, response.job_id, response)
