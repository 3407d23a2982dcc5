"""Per-request samples: what the SLO report is computed from.

Locust's own statistics round response times (to whole milliseconds, coarser above 100 ms)
and give percentiles over a sliding window, which is too coarse to tell a 12 ms p99 from a
13 ms one or to cut a run into load steps. So every request also leaves one exact sample:
when it started (wall clock, comparable across local worker processes), how long it took,
its status, whether it passed the response check, and how many candidate rows it carried.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pandas as pd

COLUMNS = ("t_start", "latency_ms", "status", "ok", "rows")
SHED_STATUSES = (429, 503)


class SampleBuffer:
    """Columns of samples; :meth:`drain` hands them over (to the master, or to a file)."""

    def __init__(self) -> None:
        self._columns: dict[str, list[Any]] = {name: [] for name in COLUMNS}

    def __len__(self) -> int:
        return len(self._columns["t_start"])

    def add(self, t_start: float, latency_ms: float, status: int, ok: bool, rows: int) -> None:
        for name, value in zip(COLUMNS, (t_start, latency_ms, status, ok, rows), strict=True):
            self._columns[name].append(value)

    def extend(self, columns: dict[str, list[Any]]) -> None:
        """Append columns drained from another buffer (a worker's message).

        Raises:
            ValueError: the columns are not the sample columns or differ in length.
        """
        if set(columns) != set(COLUMNS) or len({len(v) for v in columns.values()}) > 1:
            raise ValueError(f"sample columns must be {COLUMNS} of equal length")
        for name in COLUMNS:
            self._columns[name].extend(columns[name])

    def drain(self) -> dict[str, list[Any]]:
        """The buffered columns; the buffer is empty afterwards."""
        out, self._columns = self._columns, {name: [] for name in COLUMNS}
        return out

    def write_csv(self, path: Path) -> int:
        """Write (and drain) the samples; returns how many were written."""
        columns = self.drain()
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            writer.writerows(zip(*(columns[name] for name in COLUMNS), strict=True))
        return len(columns["t_start"])


def read_samples(path: Path) -> pd.DataFrame:
    """Samples sorted by start time, with ``shed`` (429/503) as its own column."""
    frame = pd.read_csv(path, dtype={"status": "int64", "rows": "int64"})
    frame["ok"] = frame["ok"].astype(str).str.lower().isin(("true", "1"))
    frame["shed"] = frame["status"].isin(SHED_STATUSES)
    return frame.sort_values("t_start", kind="stable").reset_index(drop=True)
