"""The kiln client: training jobs, datasets and predictions over gRPC.

Every method returns the generated protobuf messages of :mod:`kiln_sdk.pb`
(``pb.Job``, ``pb.JobEvent``, ``pb.Dataset``, ``pb.ModelInfo``, ``pb.Sweep``),
except :meth:`Client.predict`, which returns a pandas DataFrame for a
DataFrame and numpy arrays in a :class:`Prediction` otherwise. A failed call
raises :class:`KilnError`; a job waited for that does not succeed,
:class:`JobFailed`.
"""

from __future__ import annotations

import io
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

import grpc
import numpy as np
from google.protobuf import json_format

from kiln_sdk import frames, pb
from kiln_sdk._proto.kiln.v1 import (
    datasets_pb2_grpc,
    inference_pb2_grpc,
    jobs_pb2_grpc,
    sweeps_pb2_grpc,
)

#: Bytes per UploadDataset message.
CHUNK_BYTES = 1 << 20

Spec = Union[Mapping[str, Any], "pb.JobSpec", "pb.SubmitJobRequest", str, os.PathLike]
SweepSpec = Union[Mapping[str, Any], "pb.SubmitSweepRequest", str, os.PathLike]


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


class JobFailed(Exception):
    """A job waited for (``submit(..., wait=True)``, ``wait(..., check=True)``)
    that ended without succeeding: FAILED or CANCELLED.

    ``job`` is the final ``pb.Job``; ``state`` and ``reason`` are the names of
    its ``JobState`` and ``StopReason`` (e.g. ``"JOB_STATE_FAILED"``,
    ``"STOP_REASON_DIVERGED"``) and ``message`` the server's detail, e.g.
    ``training diverged at epoch 2: ...``.
    """

    def __init__(self, job: "pb.Job"):
        self.job = job
        self.state = pb.JobState.Name(job.state)
        self.reason = pb.StopReason.Name(job.stop_reason)
        self.message = job.message
        super().__init__(
            f"job {job.id} ended {self.state.removeprefix('JOB_STATE_')} "
            f"({self.reason.removeprefix('STOP_REASON_')}): {job.message}"
        )


@contextmanager
def _rpc_errors():
    try:
        yield
    except grpc.RpcError as err:
        raise KilnError(err.code(), err.details() or "") from err


def _follow(stream):
    """Yields a server stream's messages with kiln's errors; a consumer that
    stops early cancels the call (ends the watch or the scoring)."""
    try:
        with _rpc_errors():
            yield from stream
    finally:
        stream.cancel()


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
    available as ``jobs_stub``, ``datasets_stub``, ``inference_stub`` and
    ``sweeps_stub`` for anything this class does not wrap. Use it as a context
    manager, or call :meth:`close`.
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
        self.sweeps_stub = sweeps_pb2_grpc.SweepServiceStub(self.channel)
        # (model, version asked for) -> the ModelInfo that answered it last;
        # checked against every Predict answer (see _predict_frame).
        self._model_infos: Dict[Tuple[str, str], "pb.ModelInfo"] = {}

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

    def submit(
        self,
        spec: Spec,
        *,
        wait: bool = False,
        timeout: Optional[float] = None,
        progress: bool = False,
    ):
        """Submits a training job and returns its ``pb.Job`` (QUEUED).

        ``spec`` is a dict in proto3 JSON mapping, either a SubmitJobRequest
        (``{"spec": {...}}``, the format of ``examples/*.json``) or a bare
        JobSpec; a path to a job file as the ``kiln`` CLI takes it (``.json``,
        or ``.yaml``/``.yml``: the same proto3 JSON mapping written as YAML,
        e.g. ``examples/rings.yaml``); or a ``pb.JobSpec`` or
        ``pb.SubmitJobRequest``.

        With ``wait=True`` it waits for the job to end and returns the final
        ``pb.Job`` if it SUCCEEDED, else raises :class:`JobFailed` (``timeout``
        bounds the wait). ``progress=True`` (with ``wait``) shows a tqdm
        progress bar advancing once per epoch, with the epoch's losses.
        """
        job = self._call(self.jobs_stub.SubmitJob, _submit_request(spec))
        if not wait:
            return job
        return self.wait(job.id, timeout=timeout, progress=progress, check=True)

    def submit_file(self, path: Union[str, os.PathLike], **kwargs):
        """Submits a job file (``.json``, ``.yaml`` or ``.yml``; see
        :func:`load_job_file`); ``kwargs`` as for :meth:`submit`."""
        return self.submit(load_job_file(path), **kwargs)

    def get(self, job_id: str):
        """The job's current ``pb.Job``."""
        return self._call(self.jobs_stub.GetJob, pb.GetJobRequest(job_id=job_id))

    def jobs(
        self,
        state: Union[None, int, str] = None,
        *,
        sweep_id: str = "",
        labels: Optional[Mapping[str, str]] = None,
        order_by: str = "",
    ) -> List["pb.Job"]:
        """Every job, newest first; ``state`` (e.g. ``"RUNNING"`` or
        ``pb.JOB_STATE_RUNNING``) keeps only those in that state, ``sweep_id``
        a sweep's trials, ``labels`` the jobs whose spec labels hold them all.
        ``order_by`` sorts by a best-epoch metric instead: ``"val_loss"``
        ascending, ``"-val_accuracy"`` descending."""
        request = pb.ListJobsRequest(
            state=_enum(pb.JobState, "JOB_STATE_", state),
            sweep_id=sweep_id,
            labels=dict(labels or {}),
            order_by=order_by,
        )
        return list(self._call(self.jobs_stub.ListJobs, request).jobs)

    def compare(self, *job_ids: str):
        """Jobs side by side (``pb.CompareJobsResponse``): ``.jobs`` in the
        order given, ``.differences`` (the spec fields that differ, each with
        ``.path`` and one proto-JSON ``.values`` entry per job) and
        ``.curves`` (each job's per-epoch metrics). Takes two or more ids, or
        one list of them."""
        if len(job_ids) == 1 and not isinstance(job_ids[0], str):
            job_ids = tuple(job_ids[0])
        request = pb.CompareJobsRequest(job_ids=list(job_ids))
        return self._call(self.jobs_stub.CompareJobs, request)

    def cancel(self, job_id: str):
        """Stops a queued or running job (it ends CANCELLED); returns the ``pb.Job``."""
        return self._call(self.jobs_stub.CancelJob, pb.CancelJobRequest(job_id=job_id))

    def watch(
        self, job_id: str, *, from_sequence: int = 0, timeout: Optional[float] = None
    ) -> Iterator["pb.JobEvent"]:
        """Yields the job's events as generated ``pb.JobEvent`` messages.

        Every event from the first (or from ``from_sequence``: after a broken
        stream, the sequence after the last event seen), then live ones; the
        iterator ends when the job has ended. ``event.WhichOneof("kind")`` is
        ``"state_changed"``, ``"epoch"``, ``"early_stopped"``, ``"finished"``,
        ``"failed"``, or for an LR range test ``"lr_range_point"`` and
        ``"lr_range_result"``. ``timeout`` bounds the whole stream
        (DEADLINE_EXCEEDED past it).
        """
        request = pb.WatchJobRequest(job_id=job_id, from_sequence=from_sequence)
        yield from _follow(self.jobs_stub.WatchJob(request, timeout=timeout))

    def wait(
        self,
        job_id: str,
        *,
        timeout: Optional[float] = None,
        on_event: Optional[Callable[["pb.JobEvent"], None]] = None,
        progress: bool = False,
        check: bool = False,
        reconnect_seconds: float = 120.0,
    ):
        """Waits for the job to end (SUCCEEDED, FAILED or CANCELLED) and returns
        its final ``pb.Job``; ``on_event`` sees each event on the way, once.
        ``check=True`` raises :class:`JobFailed` unless it SUCCEEDED;
        ``progress=True`` shows a tqdm bar advancing per epoch (needs tqdm).

        A server that goes away meanwhile (UNAVAILABLE: a restart, a rollout, a
        network cut) is waited for, up to ``reconnect_seconds`` at a stretch,
        and the watch resumes after the last event seen (``from_sequence``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = _EpochBar(self._reconnecting(lambda: self.get(job_id), reconnect_seconds)) if progress else None
        next_sequence = 0

        def follow():
            nonlocal next_sequence
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            for event in self.watch(job_id, from_sequence=next_sequence, timeout=remaining):
                next_sequence = event.sequence + 1
                if bar is not None:
                    bar.event(event)
                if on_event is not None:
                    on_event(event)

        try:
            self._reconnecting(follow, reconnect_seconds, progressed=lambda: next_sequence)
        finally:
            if bar is not None:
                bar.close()
        job = self._reconnecting(lambda: self.get(job_id), reconnect_seconds)
        if check and job.state != pb.JOB_STATE_SUCCEEDED:
            raise JobFailed(job)
        return job

    @staticmethod
    def _reconnecting(call, seconds: float, progressed=lambda: None):
        """``call()``, again after each UNAVAILABLE until one succeeds or the
        server has been unreachable for ``seconds`` without ``progressed()``
        changing (then the last error is raised)."""
        since, seen = time.monotonic(), progressed()
        while True:
            try:
                return call()
            except KilnError as err:
                if err.code != grpc.StatusCode.UNAVAILABLE:
                    raise
                if progressed() != seen:
                    since, seen = time.monotonic(), progressed()
                if time.monotonic() - since > seconds:
                    raise
                time.sleep(0.2)

    # Datasets

    def upload_dataset(
        self,
        source: Union[str, os.PathLike, bytes, np.ndarray, Mapping[str, np.ndarray], Any],
        name: Optional[str] = None,
        *,
        chunk_bytes: int = CHUNK_BYTES,
    ):
        """Uploads a dataset and returns its ``pb.Dataset`` (``.id`` is what a
        spec's ``data.datasetId`` names).

        ``source`` is one of:

        - a pandas DataFrame, sent as CSV with a header row (the index is a
          column only when it is named; NaN/None become empty cells, which
          the server treats as missing values; floats keep full precision).
          A Series is a one-column frame;
        - a path to a CSV file with a header row, or the CSV's bytes;
        - a numpy array, sent as the NPY array ``x`` (columns ``x[0]``,
          ``x[1]``, ...; a 1-D array is the one column ``x``);
        - a mapping of names to arrays, e.g. ``{"x": images, "y": labels}``,
          each sent as its own NPY array, in order (all with the same rows);
        - a path to a ``.npy`` file (the array ``x``) or ``.npz`` file (its arrays).

        ``name`` defaults to the file's stem, else the server's "dataset".
        """
        parts: Iterable[Tuple[str, bytes]]
        if frames.is_series(source):
            source = source.to_frame()
        if frames.is_frame(source):
            source = frames.frame_csv(source)
        elif isinstance(source, (str, os.PathLike)):
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

    def predict(self, model: str, x, version: Union[None, int, str] = None):
        """Predicts with a served model.

        ``model`` is a model name (a spec's ``modelName``) or the id of the job
        that trained it; ``version`` a number or an alias (None: the newest
        loaded).

        ``x`` with column names -- a pandas DataFrame, a dict of columns or a
        Series (one row) -- is matched to the model's input columns
        (``ModelInfo.input_columns``) BY NAME: order free, other columns (the
        target, ids) ignored, a missing one raises ``ValueError`` naming it.
        Cells go as text, as in the training CSV: numbers at full precision,
        categorical columns as their raw values, NaN/None as empty (missing)
        cells. Large frames are sent in several requests (at most
        ``frames.PREDICT_CHUNK_ROWS`` rows or about ``PREDICT_CHUNK_BYTES``
        each), all answered by the same model version. It returns a DataFrame
        with ``x``'s index: for classification the column ``class`` (the
        label) and ``p_<label>`` per class (the probabilities); for
        regression one column per target column. Its ``attrs`` hold
        ``model_version`` and ``job_id``.

        ``x`` without names -- a numpy array or nested lists -- is
        positional: ``(n, features)`` (a 1-D array is one row), numeric
        features in the model's order (``ModelInfo.feature_columns``, after
        one-hot encoding), unscaled. It returns a :class:`Prediction` of
        numpy arrays.
        """
        if frames.is_series(x):
            x = x.to_frame().T
        elif isinstance(x, Mapping):
            x = frames.pandas().DataFrame(x)
        if frames.is_frame(x):
            return self._predict_frame(model, x, "" if version is None else str(version).strip())
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

    def model_info(self, model: str, version: Union[None, int, str] = None):
        """The ``pb.ModelInfo`` of the version Predict would use for ``model``
        (a name or a job id) and ``version`` (a number, an alias, or None:
        the newest loaded), fetched now. Unknown: ``KilnError`` NOT_FOUND."""
        version = "" if version is None else str(version).strip()
        models = self.models()
        info = _resolve_model(models, model, version)
        if info is None:
            if not version and any(m.name == model or m.job_id == model for m in models):
                raise KilnError(
                    grpc.StatusCode.FAILED_PRECONDITION, f"model {model!r} has no loaded version"
                )
            what = f"model {model!r}" + (f" version {version!r}" if version else "")
            raise KilnError(grpc.StatusCode.NOT_FOUND, f"no {what}")
        self._model_infos[(model, version)] = info
        return info

    def _predict_frame(self, model: str, frame, version: str):
        """Predicts a DataFrame; see :meth:`predict`.

        The ModelInfo (which columns to send) is cached per (model, version
        asked); every answer names the job and version that gave it, and an
        answer from another one than the cached info's (a new version, a
        moved alias) drops the cache and starts over with fresh info. After
        the first request, the rest name the answering version by number.
        """
        for attempt in range(3):
            cached = self._model_infos.get((model, version))
            info = cached if cached is not None and attempt == 0 else self.model_info(model, version)
            columns = list(info.input_columns or info.feature_columns)
            names = {str(c): c for c in frame.columns}
            missing = [c for c in columns if c not in names]
            if missing and info is cached:
                continue  # perhaps stale: check with fresh info
            if missing:
                raise frames.missing_columns_error(missing, info)
            rows = frames.text_rows(frame, [names[c] for c in columns])
            predictions, asked, stale = [], version, False
            try:
                for chunk in frames.chunks(rows, frames.PREDICT_CHUNK_ROWS, frames.PREDICT_CHUNK_BYTES):
                    request = pb.PredictRequest(
                        model=model,
                        version=asked,
                        text_rows=[pb.TextRow(cells=cells) for cells in chunk],
                    )
                    response = self._call(self.inference_stub.Predict, request)
                    if (response.job_id, response.model_version) != (info.job_id, info.version):
                        stale = True
                        break
                    predictions.extend(response.predictions)
                    asked = str(response.model_version)
            except KilnError as err:
                if info is cached and err.code in (
                    grpc.StatusCode.INVALID_ARGUMENT,
                    grpc.StatusCode.NOT_FOUND,
                    grpc.StatusCode.FAILED_PRECONDITION,
                ):
                    continue  # perhaps a stale column list: retry with fresh info
                raise
            if stale:
                self._model_infos.pop((model, version), None)
                continue
            result = frames.prediction_frame(predictions, info, frame.index)
            result.attrs["model_version"] = info.version
            result.attrs["job_id"] = info.job_id
            return result
        raise KilnError(
            grpc.StatusCode.ABORTED,
            f"model {model!r} kept changing versions while predicting; try again",
        )

    # Batch scoring

    def score_events(
        self,
        model: str,
        dataset,
        version: Union[None, int, str] = None,
        output_name: Optional[str] = None,
        *,
        timeout: Optional[float] = None,
    ) -> Iterator["pb.ScoreEvent"]:
        """Scores an uploaded dataset on the server (``ScoreDataset``) and
        yields its events: ``event.progress`` (``rows_done``, ``rows_total``)
        after every chunk, then ``event.finished`` (a ``pb.ScoreFinished``).
        Stopping the iteration early cancels the scoring. See :meth:`score`
        for the arguments; ``timeout`` bounds the whole stream."""
        request = pb.ScoreDatasetRequest(
            model=model,
            version="" if version is None else str(version).strip(),
            output_name=output_name or "",
        )
        field, value = self._dataset_ref(dataset)
        setattr(request, field, value)
        yield from _follow(self.inference_stub.ScoreDataset(request, timeout=timeout))

    def score(
        self,
        model: str,
        dataset,
        version: Union[None, int, str] = None,
        output_name: Optional[str] = None,
        *,
        progress: bool = False,
        timeout: Optional[float] = None,
    ):
        """Scores every row of an uploaded dataset with a model, on the
        server and off its online Predict path, and returns
        ``(predictions, metrics)``.

        ``dataset`` is a ``pb.Dataset``, a dataset id, or a name (the newest
        upload with that name). ``version`` is a number or an alias (None: the
        newest loaded). The table's columns are matched to the model's input
        columns by name, as :meth:`predict` matches a DataFrame's.
        ``output_name`` names the stored predictions dataset (default
        ``<model>-v<version>-scores``).

        ``predictions`` is a DataFrame with the columns :meth:`predict`
        returns (``class`` and ``p_<label>``, or one per target), one row per
        row of the dataset; its ``attrs`` hold ``model_version``, ``job_id``
        and ``dataset_id`` (the stored predictions). ``metrics`` is None
        unless the dataset holds the model's target column(s); then a dict of
        ``accuracy``, ``log_loss``, ``roc_auc``, ``pr_auc``, ``f1``,
        ``balanced_accuracy`` (classification) or ``mae``, ``rmse``, ``r2``
        (regression), as in the epoch events but over the dataset's rows with
        a target, plus ``rows_evaluated``, ``rows_missing_target`` and, for
        classification, ``confusion_matrix``: a DataFrame of counts, rows the
        true class and columns the predicted one, indexed by the labels.
        ``progress=True`` shows a tqdm bar over the rows.
        """
        finished, bar = None, None
        try:
            for event in self.score_events(model, dataset, version, output_name, timeout=timeout):
                if event.HasField("progress"):
                    if progress and bar is None:
                        from tqdm.auto import tqdm

                        bar = tqdm(total=event.progress.rows_total, desc=model, unit="row")
                    if bar is not None:
                        bar.n = event.progress.rows_done
                        bar.refresh()
                elif event.HasField("finished"):
                    finished = event.finished
        finally:
            if bar is not None:
                bar.close()
        if finished is None:
            raise KilnError(grpc.StatusCode.UNAVAILABLE, "the scoring stream ended without a result")
        data = self.download_dataset(finished.predictions.id)
        classification = data.split(b"\n", 1)[0].split(b",")[0] == b"class"
        frame = frames.pandas().read_csv(
            io.BytesIO(data),
            dtype={"class": str} if classification else None,
            keep_default_na=False,
            **_exact_floats(),
        )
        frame.attrs["model_version"] = finished.model_version
        frame.attrs["job_id"] = finished.job_id
        frame.attrs["dataset_id"] = finished.predictions.id
        return frame, _score_metrics(finished)

    def evaluate(
        self,
        model: str,
        dataset,
        version: Union[None, int, str] = None,
        *,
        timeout: Optional[float] = None,
    ) -> Dict[str, Any]:
        """The metrics of :meth:`score` for a dataset that holds the model's
        target column(s); ``ValueError`` when it holds none."""
        _, metrics = self.score(model, dataset, version, timeout=timeout)
        if metrics is None:
            raise ValueError(
                f"dataset {getattr(dataset, 'id', dataset)!r} has no target column of "
                f"model {model!r} (or no row with a target): nothing to evaluate"
            )
        return metrics

    def download_dataset(self, dataset_id: str) -> bytes:
        """The stored file of a dataset: a CSV as uploaded or as :meth:`score`
        stored it (an NPY dataset: its float32 matrix as a ``.npy`` file)."""
        stream = self.datasets_stub.DownloadDataset(
            pb.GetDatasetRequest(dataset_id=dataset_id), timeout=self.timeout
        )
        with _rpc_errors():
            return b"".join(chunk.chunk for chunk in stream)

    def _dataset_ref(self, dataset) -> Tuple[str, str]:
        """The request field and value for a ``pb.Dataset``, an id or a name."""
        if isinstance(dataset, pb.Dataset):
            return "dataset_id", dataset.id
        if not isinstance(dataset, str):
            raise TypeError(f"dataset must be a pb.Dataset, an id or a name, not {type(dataset).__name__}")
        if any(d.id == dataset for d in self.datasets()):
            return "dataset_id", dataset
        return "dataset_name", dataset

    # Sweeps

    def submit_sweep(
        self, spec: SweepSpec, *, wait: bool = False, timeout: Optional[float] = None
    ):
        """Starts a hyper-parameter sweep and returns its ``pb.Sweep``.

        ``spec`` is a SubmitSweepRequest as a dict in the proto3 JSON mapping
        (``{"base": {...job spec...}, "searchSpace": {...}, ...}``), a path
        to a sweep file as ``kiln sweep submit`` takes it (``.json``,
        ``.yaml`` or ``.yml``, e.g. ``examples/sweep.yaml``), or a
        ``pb.SubmitSweepRequest``. ``wait=True`` returns the sweep once it
        has ended (see :meth:`wait_sweep`).
        """
        request = _parse_message(spec, pb.SubmitSweepRequest, "sweep")
        sweep = self._call(self.sweeps_stub.SubmitSweep, request)
        return self.wait_sweep(sweep.id, timeout=timeout) if wait else sweep

    def get_sweep(self, sweep_id: str):
        """The sweep's ``pb.Sweep``: its state and leaderboard (``.trials``)."""
        return self._call(self.sweeps_stub.GetSweep, pb.GetSweepRequest(sweep_id=sweep_id))

    def sweeps(self) -> List["pb.Sweep"]:
        """Every sweep, newest first."""
        return list(self._call(self.sweeps_stub.ListSweeps, pb.ListSweepsRequest()).sweeps)

    def cancel_sweep(self, sweep_id: str):
        """Cancels the sweep's unfinished trials; returns the ``pb.Sweep``."""
        return self._call(self.sweeps_stub.CancelSweep, pb.CancelSweepRequest(sweep_id=sweep_id))

    def watch_sweep(
        self, sweep_id: str, *, from_sequence: int = 0, timeout: Optional[float] = None
    ) -> Iterator["pb.SweepEvent"]:
        """Yields the sweep's ``pb.SweepEvent`` messages, from the first (or
        from ``from_sequence``), until it ends (``sweep_finished`` is the last)."""
        request = pb.WatchSweepRequest(sweep_id=sweep_id, from_sequence=from_sequence)
        yield from _follow(self.sweeps_stub.WatchSweep(request, timeout=timeout))

    def wait_sweep(
        self,
        sweep_id: str,
        *,
        timeout: Optional[float] = None,
        on_event: Optional[Callable[["pb.SweepEvent"], None]] = None,
    ):
        """Waits for the sweep to end and returns its final ``pb.Sweep``."""
        for event in self.watch_sweep(sweep_id, timeout=timeout):
            if on_event is not None:
                on_event(event)
        return self.get_sweep(sweep_id)


def load_job_file(path: Union[str, os.PathLike]):
    """Reads a job file as the ``kiln`` CLI does: a SubmitJobRequest (or a
    bare JobSpec) in the proto3 JSON mapping (field names in lowerCamelCase
    or as in the proto, enums by name), written as JSON (``.json``) or YAML
    (``.yaml``, ``.yml``). Returns a ``pb.SubmitJobRequest``; an unknown
    field or enum value raises ``KilnError`` INVALID_ARGUMENT naming the file
    and the field."""
    return _submit_request(Path(path))


def load_sweep_file(path: Union[str, os.PathLike]):
    """Reads a sweep file (a SubmitSweepRequest, as JSON or YAML) as
    ``kiln sweep submit`` does; returns a ``pb.SubmitSweepRequest``."""
    return _parse_message(Path(path), pb.SubmitSweepRequest, "sweep")


def _read_spec_file(path: Path) -> Any:
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ImportError(
                f"reading {path} needs PyYAML: pip install pyyaml"
            ) from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise KilnError(grpc.StatusCode.INVALID_ARGUMENT, f"{path}: {err}") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise KilnError(grpc.StatusCode.INVALID_ARGUMENT, f"{path}: {err}") from err


def _parse_message(spec, message_cls, what: str, wrap=None):
    """A message from a message, a dict in proto3 JSON, or a JSON/YAML file."""
    if isinstance(spec, message_cls):
        return spec
    path = None
    if isinstance(spec, (str, os.PathLike)):
        path = Path(spec)
        spec = _read_spec_file(path)
    if not isinstance(spec, Mapping):
        where = f"{path}: " if path is not None else ""
        raise TypeError(
            f"{where}a {what} spec must be a dict, a path or a message, not {type(spec).__name__}"
        )
    body = wrap(spec) if wrap is not None else spec
    try:
        return json_format.ParseDict(body, message_cls())
    except json_format.ParseError as err:
        where = f"{path}: " if path is not None else ""
        raise KilnError(grpc.StatusCode.INVALID_ARGUMENT, f"{where}{err}") from err


def _submit_request(spec: Spec):
    if isinstance(spec, pb.JobSpec):
        return pb.SubmitJobRequest(spec=spec)
    return _parse_message(
        spec, pb.SubmitJobRequest, "job", wrap=lambda d: d if "spec" in d else {"spec": d}
    )


def _resolve_model(models: Iterable["pb.ModelInfo"], model: str, version: str):
    """The version of ``model`` (a name or a job id) Predict would use: the
    newest loaded one, the one numbered ``version``, or the one ``version``
    (an alias) names; None if none."""
    candidates = [m for m in models if m.name == model or m.job_id == model]
    if not version:
        loaded = [m for m in candidates if m.loaded]
        return max(loaded, key=lambda m: m.version) if loaded else None
    if version.isdigit():
        return next((m for m in candidates if m.version == int(version)), None)
    return next((m for m in candidates if version in m.aliases), None)


class _EpochBar:
    """A tqdm bar over a job's epochs, with the last epoch's losses."""

    def __init__(self, job: "pb.Job"):
        try:
            from tqdm.auto import tqdm
        except ImportError:
            raise ImportError("progress=True needs tqdm: pip install tqdm") from None
        epochs = job.spec.training.epochs or 100  # the server's default
        self._bar = tqdm(total=epochs, desc=job.model_name or job.id, unit="epoch")

    def event(self, event: "pb.JobEvent") -> None:
        if event.HasField("epoch"):
            m = event.epoch
            self._bar.n = m.epoch  # replayed or resumed epochs set it back too
            postfix = {"loss": f"{m.train_loss:.4g}", "val_loss": f"{m.val_loss:.4g}"}
            if m.HasField("val_accuracy"):
                postfix["val_acc"] = f"{m.val_accuracy:.4f}"
            if m.HasField("val_r2"):
                postfix["val_r2"] = f"{m.val_r2:.4f}"
            self._bar.set_postfix(postfix, refresh=False)
            self._bar.refresh()
        elif event.HasField("early_stopped"):
            self._bar.total = event.early_stopped.epoch
            self._bar.refresh()

    def close(self) -> None:
        self._bar.close()


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


def _exact_floats() -> Dict[str, str]:
    """read_csv's argument for floats read back exactly: pandas before 3.0
    needs ``float_precision="round_trip"``; 3.0 reads them exactly by
    default and deprecates the argument."""
    try:
        major = int(frames.pandas().__version__.split(".")[0])
    except (ImportError, ValueError):
        return {}
    return {} if major >= 3 else {"float_precision": "round_trip"}


#: ScoreFinished.metrics fields, as the metrics dict of Client.score names them.
_SCORE_METRICS = (
    "accuracy",
    "log_loss",
    "roc_auc",
    "pr_auc",
    "f1",
    "balanced_accuracy",
    "mae",
    "rmse",
    "r2",
)


def _score_metrics(finished) -> Optional[Dict[str, Any]]:
    if not finished.HasField("metrics"):
        return None
    m = finished.metrics
    metrics: Dict[str, Any] = {
        name: getattr(m, f"val_{name}") for name in _SCORE_METRICS if m.HasField(f"val_{name}")
    }
    metrics["rows_evaluated"] = finished.rows_evaluated
    metrics["rows_missing_target"] = finished.rows_missing_target
    if finished.HasField("confusion_matrix"):
        cm = finished.confusion_matrix
        labels = list(cm.labels)
        counts = np.array(cm.counts, dtype=np.int64).reshape(len(labels), len(labels))
        pd = frames.pandas()
        metrics["confusion_matrix"] = pd.DataFrame(
            counts,
            index=pd.Index(labels, name="true"),
            columns=pd.Index(labels, name="predicted"),
        )
    return metrics
