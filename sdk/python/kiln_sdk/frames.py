"""pandas DataFrames to and from kiln: CSV uploads, Predict's text rows and
prediction tables.

Cells go to the server as text, as the training CSV holds them: numbers with
full precision (``repr`` of the float64, so they round-trip), categorical
values as their raw text, and a missing value (NaN, None, ``pd.NA``, NaT) as
an empty cell, which the server treats as missing.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Iterator, List, Sequence

import numpy as np

#: Rows per Predict request at most when a DataFrame is split.
PREDICT_CHUNK_ROWS = 2048
#: Estimated request bytes per Predict request at most (the server's default
#: gRPC limit is far above this; 4 MB is every gRPC stack's default).
PREDICT_CHUNK_BYTES = 3 << 20


def pandas():
    """pandas, imported on first use (it is a dependency, but slow to import)."""
    import pandas as pd

    return pd


def is_frame(value: Any) -> bool:
    """Whether ``value`` is a pandas DataFrame (without importing pandas)."""
    pd = sys.modules.get("pandas")
    return pd is not None and isinstance(value, pd.DataFrame)


def is_series(value: Any) -> bool:
    pd = sys.modules.get("pandas")
    return pd is not None and isinstance(value, pd.Series)


def frame_csv(frame) -> bytes:
    """The frame as CSV bytes with a header row: the index is written as a
    column only when it is named; NaN/None are empty cells; floats keep full
    precision (pandas writes ``repr``)."""
    if any(name is not None for name in frame.index.names):
        frame = frame.reset_index()
    columns = [str(c) for c in frame.columns]
    if len(set(columns)) != len(columns):
        raise ValueError(f"the DataFrame's column names are not unique: {columns}")
    return frame.to_csv(index=False, na_rep="", lineterminator="\n").encode("utf-8")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return ""
        return repr(float(value)) if isinstance(value, float) else str(value)
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, str):
        return value
    try:
        if pandas().isna(value):
            return ""
    except (TypeError, ValueError):
        pass
    return str(value)


def column_cells(series) -> List[str]:
    """One column's cells as text (see the module's docstring)."""
    if not isinstance(series.dtype, np.dtype):  # pandas' own dtypes: Int64, category, ...
        return [_cell(v) for v in series.astype(object).tolist()]
    values = series.to_numpy()
    kind = values.dtype.kind
    if kind == "f" and values.dtype.itemsize < 8:
        # float32's shortest repr, as pandas writes it in to_csv.
        return ["" if v != v else str(v) for v in values]
    if kind == "f":
        return ["" if v != v else repr(v) for v in values.tolist()]
    if kind in "iu":
        return [str(v) for v in values.tolist()]
    if kind == "b":
        return [str(v) for v in values.tolist()]
    return [_cell(v) for v in series.astype(object).tolist()]


def text_rows(frame, columns: Sequence[str]) -> List[List[str]]:
    """The frame's ``columns`` (by name) as rows of text cells."""
    cells = [column_cells(frame[c]) for c in columns]
    return [list(row) for row in zip(*cells)] if cells else [[] for _ in range(len(frame))]


def chunks(rows: List[List[str]], max_rows: int, max_bytes: int) -> Iterator[List[List[str]]]:
    """Consecutive slices of ``rows`` of at most ``max_rows`` rows and about
    ``max_bytes`` encoded bytes each (at least one row each)."""
    start, size = 0, 0
    for i, row in enumerate(rows):
        row_bytes = sum(len(c) for c in row) + 3 * len(row) + 4
        if i > start and (i - start >= max_rows or size + row_bytes > max_bytes):
            yield rows[start:i]
            start, size = i, 0
        size += row_bytes
    if start < len(rows):
        yield rows[start:]


def missing_columns_error(missing: Sequence[str], info) -> ValueError:
    reads = list(info.input_columns or info.feature_columns)
    names = ", ".join(repr(c) for c in missing)
    return ValueError(
        f"the DataFrame has no column {names}; model {info.name!r} version "
        f"{info.version} reads the columns {reads}"
    )


def prediction_frame(predictions: Sequence[Any], info, index):
    """Predictions as a DataFrame with ``index``: classification gives the
    column ``class`` (the label) and ``p_<label>`` per class; regression one
    column per target column."""
    pd = pandas()
    classification = bool(info.classes) or any(len(p.probabilities) for p in predictions)
    if classification:
        labels = list(info.classes)
        width = max([len(labels)] + [len(p.probabilities) for p in predictions])
        labels += [str(i) for i in range(len(labels), width)]
        probabilities = np.array(
            [list(p.probabilities) for p in predictions], dtype=np.float64
        ).reshape(len(predictions), width)
        data = {"class": [p.class_label for p in predictions]}
        for j, label in enumerate(labels):
            data[f"p_{label}"] = probabilities[:, j]
        return pd.DataFrame(data, index=index)
    targets = list(info.target_columns)
    width = max([len(targets)] + [len(p.values) for p in predictions])
    targets += [f"y{i}" for i in range(len(targets), width)]
    values = np.array([list(p.values) for p in predictions], dtype=np.float64).reshape(
        len(predictions), width
    )
    return pd.DataFrame(values, columns=targets, index=index)
