"""The sweep's CSV rows: the column schema, reading, and a durable, resumable writer.

One row per (image, seed, n_boot, width, alpha, beta) (`KEY_COLUMNS`). The per-method columns
come from the metric table `arb_jax.study.evaluate.METRICS`, one per shrinkage rule of
`arb_jax.study.evaluate.METHODS`.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from arb_jax.study.evaluate import METHODS, METRICS

__all__ = ["COLUMNS", "KEY_COLUMNS", "METHODS", "RowWriter", "read_rows", "row_key"]

COLUMNS = (
    "image_id",
    "class",
    "seed",
    "n_boot",
    "width",
    "alpha",
    "beta",
    "noise",
    "noise_size",
    "roi_row",
    "roi_col",
    "mean_z_roi",
    "passed",
    "pi0",
    "perc_before",
    "nonzero_before",
    *(f"{name}_{m}" for m in METHODS for name in METRICS),
    "srmsd_roi",
)
"""CSV columns. ``perc_*``: mean percentile in the ROI (%), ``nonzero_*``: non-zero % of the ROI,
``sens_*`` / ``spec_*``: sensitivity / specificity (eqs. 9-10), ``srmsd_roi``: sRMSD of the ROI's
p-values (pixel-weighted), ``roi_row`` / ``roi_col``: top-left corner of the square in pixels
(empty for diffuse noise), ``passed``: 1 if the image passes the mean-z filter (always 1 with
``--z-filter none``). The per-method columns are ``{name}_{method}`` for every entry of
`arb_jax.study.evaluate.METRICS`."""

KEY_COLUMNS = ("image_id", "seed", "n_boot", "width", "alpha", "beta")
"""The columns that identify a row (`row_key`)."""


def _fmt(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool | np.bool_):
        return "1" if value else "0"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, np.floating):
        return str(value)  # shortest repr that round-trips in the value's own precision
    if isinstance(value, float):
        return repr(value)
    raise TypeError(f"cannot write {type(value).__name__} to the CSV")


def row_key(row: dict[str, str]) -> tuple:
    """The identity of a row: ``(image_id, seed, n_boot, width, alpha, beta)``, typed."""
    return (
        row["image_id"],
        int(row["seed"]),
        int(row["n_boot"]),
        float(row["width"]),
        float(row["alpha"]),
        float(row["beta"]),
    )


def read_rows(path: str | Path, *, drop_partial: bool = True) -> list[dict[str, str]]:
    """The rows of a sweep CSV as dicts of strings (header `COLUMNS`).

    A last line without its newline, or with the wrong number of fields (a write cut short by a
    kill), is dropped when ``drop_partial``; anywhere else a malformed line raises ValueError.
    """
    path = Path(path)
    data = path.read_bytes()
    if drop_partial and data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
    reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
    lines = list(reader)
    if not lines:
        return []
    if tuple(lines[0]) != COLUMNS:
        raise ValueError(
            f"{path} does not have the columns of this version's sweep rows "
            f"(first line {','.join(lines[0])[:80]!r}); write to another --out"
        )
    rows = []
    for i, fields in enumerate(lines[1:], start=2):
        if len(fields) != len(COLUMNS):
            if drop_partial and i == len(lines):
                break
            raise ValueError(f"{path}:{i}: {len(fields)} fields, expected {len(COLUMNS)}")
        rows.append(dict(zip(COLUMNS, fields, strict=True)))
    return rows


class RowWriter:
    """Appends sweep rows to a CSV, durably, resuming a file that is already there.

    On open: a missing or empty file gets the header; an existing file is read (`read_rows`),
    a partial last line (from a kill) is cut off the file, and the keys of its rows are in
    ``done``. ``write(rows)`` appends, flushes and fsyncs: a row on disk is never lost, and the
    file only ever ends with a partial line if the process dies inside ``write``.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.done: set[tuple] = set()
        header_ok = False
        if self.path.exists() and self.path.stat().st_size:
            data = self.path.read_bytes()
            complete = data[: data.rfind(b"\n") + 1]
            lines = complete.count(b"\n")
            rows = read_rows(self.path)
            header_ok = lines >= 1
            keep = complete
            if header_ok and len(rows) < lines - 1:  # last complete line malformed: drop it
                keep = complete[: complete.rstrip(b"\n").rfind(b"\n") + 1]
            if len(keep) != len(data):
                with open(self.path, "r+b") as f:
                    f.truncate(len(keep))
                    os.fsync(f.fileno())
            self.done = {row_key(r) for r in rows}
            self.dropped = len(data) - len(keep)
        else:
            self.dropped = 0
        self._file = open(  # noqa: SIM115 (closed by close() / __exit__)
            self.path, "a" if header_ok else "w", newline="", encoding="utf-8"
        )
        self._csv = csv.writer(self._file, lineterminator="\n")
        if not header_ok:
            self._csv.writerow(COLUMNS)
            self._sync()

    def _sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        """Append rows (dicts with every column of `COLUMNS`), then flush and fsync."""
        if not rows:
            return
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        for row in rows:
            w.writerow([_fmt(row[c]) for c in COLUMNS])
        self._file.write(buf.getvalue())
        self._sync()
        self.done.update(row_key({c: _fmt(row[c]) for c in KEY_COLUMNS}) for row in rows)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
