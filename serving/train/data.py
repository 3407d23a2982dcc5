"""Training data: a schema's files -> requests with their candidates, in raw form.

Everything here produces *raw* feature values under the names the feature encoder
(:mod:`serving.ranking.features`) expects, so training and serving encode through the same
code. Which files, joins and columns is the schema's ``data:`` section, read by
:mod:`serving.train.reader`; this module groups the impressions into requests. It needs
only pandas and numpy (no torch): the load tests and the gateway tests import
:func:`load_requests` to replay real held-out requests. The defaults are feed_ranker's
schema (``schemas/kuairand.yaml``, the KuaiRand-Pure log).

A *request* is what the feed backend would send: one user, the context, the user's id
sequences up to that moment and the candidates shown together. ``by="minute"`` groups by
``data.request.keys`` (what training uses; for KuaiRand a user's impressions of one minute,
about 1.2 candidates each) and ``by="day"`` by ``data.request.replay_keys`` (bigger
requests for replay; for KuaiRand a user's impressions of one day). An engagement-based
sequence holds the items the user engaged with strictly before the request's first
impression, most recent last: nothing from the future leaks in.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from serving.repository.schema import Schema
from serving.train.reader import DataLayout, engaged_before, parse_id_list, read_impressions

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
DEFAULT_SCHEMA_FILE = SCHEMA_DIR / "kuairand.yaml"
DEFAULT_SCHEMA = Schema.load(DEFAULT_SCHEMA_FILE)
"""feed_ranker's schema: which features and tasks exist, and (``data``) where they are in
the KuaiRand files. Every name below comes from it."""
_LAYOUT = DataLayout.of(DEFAULT_SCHEMA)
USER_KEY, ITEM_KEY = _LAYOUT.keys[0], DEFAULT_SCHEMA.id_feature("item").name  # type: ignore[union-attr]
TIME_KEY, DAY_KEY = _LAYOUT.time or "", _LAYOUT.day

DATA_FILES = (*_LAYOUT.impressions, *(j["file"] for j in _LAYOUT.joins))
LOG_FILE = DATA_FILES[0]
DATA_ENV = "RANKSERVE_DATA"

TASKS = tuple(t.name for t in DEFAULT_SCHEMA.tasks)
LABEL_COLUMNS = DEFAULT_SCHEMA.labels()
HISTORY_LENGTH = DEFAULT_SCHEMA.group_features("user", "seq")[0].length or 0

# The temporal split (``data.split``, values of the day column). Tuning trains on TUNE_DAYS
# and validates on VALIDATION_DAYS; the final model trains on TRAIN_DAYS, tested on TEST_DAYS.
TRAIN_DAYS = _LAYOUT.split.train
VALIDATION_DAYS = _LAYOUT.split.validation
TUNE_DAYS = _LAYOUT.split.tune
TEST_DAYS = _LAYOUT.split.test

Grouping = Literal["minute", "day"]
"""``minute``: ``data.request.keys`` (training); ``day``: ``data.request.replay_keys``."""


def _names(schema: Schema, side: str, sent: bool = False) -> list[str]:
    """The raw features of ``side`` but the id sequences (built from the log); ``sent``:
    only those a feed backend sends, so not the counters either (the gateway joins them
    from the model's snapshot)."""
    counters = schema.counter_features() if sent else frozenset()
    return [f.name for f in schema.features
            if f.side == side and f.kind != "id_sequence" and f.name not in counters]


USER_COLUMNS = _names(DEFAULT_SCHEMA, "user", sent=True)
CONTEXT_COLUMNS = _names(DEFAULT_SCHEMA, "context", sent=True)
ITEM_COLUMNS = _names(DEFAULT_SCHEMA, "candidate", sent=True)


class DataNotFound(FileNotFoundError):
    """The data directory lacks one of the schema's data files."""


def data_files(schema: Schema) -> tuple[str, ...]:
    """Every file the schema's ``data`` section reads."""
    layout = DataLayout.of(schema)
    return (*layout.impressions, *(j["file"] for j in layout.joins))


def resolve_data_dir(path: str | Path | None = None, schema: Schema = DEFAULT_SCHEMA) -> Path:
    """The data directory: the explicit path, else ``$RANKSERVE_DATA``, else
    ``../shared/data/kuairand`` next to the project root (feed_ranker's data).

    Raises:
        DataNotFound: a required file is missing; the message names every expected file.
    """
    if path is None:
        path = os.environ.get(DATA_ENV) or Path(__file__).resolve().parents[2] / \
            ".." / "shared" / "data" / "kuairand"
    data_dir = Path(path)
    files = data_files(schema)
    missing = [f for f in files if not (data_dir / f).is_file()]
    if missing:
        raise DataNotFound(
            f"data of schema {schema.name} not found in {data_dir}: missing "
            f"{', '.join(missing)} (expected {', '.join(files)}; pass --data or set "
            f"{DATA_ENV})")
    return data_dir


@dataclass
class Log:
    """Impressions with every feature column (joined and derived as the schema says), the
    engagements id sequences are drawn from (``clicks``: every one of the log, so
    sequences may reach back before the selected days; empty when the sequences are
    columns of the files) and the schema they follow."""

    impressions: pd.DataFrame
    clicks: pd.DataFrame
    schema: Schema = field(default=DEFAULT_SCHEMA)

    @property
    def layout(self) -> DataLayout:
        return DataLayout.of(self.schema)

    def days(self, days: Sequence[Any]) -> Log:
        """The impressions of ``days`` only; sequences still see every earlier engagement."""
        keep = self.impressions[self.layout.day].isin(list(days))
        return Log(self.impressions[keep].reset_index(drop=True), self.clicks, self.schema)


def load_log(data_dir: str | Path | None = None, schema: Schema = DEFAULT_SCHEMA) -> Log:
    """Every impression of ``schema``'s data files, with its features and label columns
    (:func:`serving.train.reader.read_impressions`), in ``data.request.order``.

    Raises:
        DataNotFound: see :func:`resolve_data_dir`.
        SchemaError: the files lack a column the schema names.
    """
    data_dir = resolve_data_dir(data_dir, schema)
    frame = read_impressions(schema, data_dir)
    engaged = [s for s in DataLayout.of(schema).sequences.values() if s.engaged]
    if engaged:
        source, time = engaged[0], DataLayout.of(schema).time
        assert source.user is not None
        assert source.item is not None
        assert time is not None
        clicks = frame.loc[frame[source.engaged] == 1, [source.user, time, source.item]]
    else:
        clicks = frame.iloc[:0]
    return Log(frame, clicks.reset_index(drop=True), schema)


@dataclass
class Requests:
    """Impressions grouped into requests.

    ``requests`` has one row per request (user features, context, the day and time of its
    first impression) and ``histories`` its ``history`` sequence (other id sequences are
    list columns of ``requests``); ``items`` has one row per candidate, sorted by request,
    with ``request`` its row in ``requests`` and ``offsets`` the CSR start of each request.
    """

    requests: pd.DataFrame
    histories: list[list[int]]
    items: pd.DataFrame
    offsets: np.ndarray
    schema: Schema = field(default=DEFAULT_SCHEMA)

    def __len__(self) -> int:
        return len(self.requests)

    def head(self, n: int) -> Requests:
        """The first ``n`` requests with their candidates."""
        end = int(self.offsets[n])
        return Requests(self.requests.iloc[:n].reset_index(drop=True), self.histories[:n],
                        self.items.iloc[:end].reset_index(drop=True), self.offsets[:n + 1],
                        self.schema)

    def labels(self) -> np.ndarray:
        """``[N, T]`` float32 labels in the schema's task order."""
        labels_of = self.schema.labels()
        labels: np.ndarray = self.items[[labels_of[t.name] for t in self.schema.tasks]
                                        ].to_numpy(np.float32)
        return labels


def group_requests(log: Log, by: Grouping = "minute") -> Requests:
    """Group impressions into requests and attach each request's id sequences."""
    schema, layout = log.schema, log.layout
    keys = list(layout.keys if by == "minute" else layout.replay_keys)
    times = [layout.time] if layout.time else []
    items = log.impressions.sort_values([*keys, *times], kind="stable").reset_index(drop=True)
    request = items.groupby(keys, sort=False).ngroup().to_numpy()
    items["request"] = request
    first = items.groupby("request", sort=True).head(1)
    # The counters are columns only once training attached them (serving/train/counters.py).
    sent = not schema.counter_features() <= set(items.columns)
    columns = [*_names(schema, "user", sent), *_names(schema, "context", sent)]
    columns += [c for c in [*keys, layout.day, *times] if c not in columns]
    sequences = {f.name: f for f in schema.group_features("user", "seq")}
    listed = [s.column for name, s in layout.sequences.items() if s.column is not None]
    requests = first[columns + [c for c in listed if c not in columns]].reset_index(drop=True)
    counts = np.bincount(request, minlength=len(requests))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    lists: dict[str, list[list[int]]] = {}
    for name, source in layout.sequences.items():
        if source.column is not None:
            lists[name] = [parse_id_list(v) for v in requests[source.column].tolist()]
        else:
            assert source.user is not None
            assert layout.time is not None
            lists[name] = engaged_before(log.clicks, source, layout.time,
                                         requests[source.user].to_numpy(),
                                         requests[layout.time].to_numpy(),
                                         sequences[name].length or 0)
    for name, values in lists.items():
        if name != "history":
            requests[name] = pd.Series(values, dtype=object)
    return Requests(requests, lists.get("history", [[] for _ in range(len(requests))]),
                    items, offsets, schema)


def _kind(name: str, schema: Schema) -> str | None:
    try:
        return schema.feature(name).kind
    except KeyError:
        return None


def raw_columns(frame: pd.DataFrame, names: Sequence[str],
                schema: Schema = DEFAULT_SCHEMA) -> dict[str, Any]:
    """Columns for the encoder: numpy arrays, string features as objects with ``None``,
    id sequences as lists."""
    out: dict[str, Any] = {}
    for name in names:
        col, kind = frame[name], _kind(name, schema)
        if kind == "categorical_string":
            out[name] = [None if v != v else str(v) for v in col.tolist()]
        elif kind == "id_sequence":
            out[name] = col.tolist()
        else:
            out[name] = col.to_numpy(np.float64 if kind == "numeric" else None)
    return out


def json_value(name: str, value: Any, schema: Schema = DEFAULT_SCHEMA) -> Any:
    """A raw value as the feed backend would send it in JSON; ``None`` if missing."""
    if value is None or value != value:
        return None
    kind = _kind(name, schema)
    if kind == "categorical_string":
        return str(value)
    if kind == "numeric":
        return float(value)
    return int(value)


def _json_row(row: dict[str, Any], names: Sequence[str], schema: Schema) -> dict[str, Any]:
    pairs = ((n, json_value(n, row[n], schema)) for n in names)
    return {n: v for n, v in pairs if v is not None}


def request_bodies(grouped: Requests, which: Sequence[int]) -> list[dict[str, Any]]:
    """JSON-ready ``/v1/rank`` bodies for the requests ``which`` (rows of ``grouped``); the
    request id is the schema's name, the day, the other replay keys and the time."""
    schema = grouped.schema
    layout = DataLayout.of(schema)
    id_fields = [layout.day, *(k for k in layout.replay_keys if k != layout.day),
                 *([layout.time] if layout.time else [])]
    user, context = _names(schema, "user", sent=True), _names(schema, "context", sent=True)
    items_of = _names(schema, "candidate", sent=True)
    bodies = []
    for i in which:
        req = grouped.requests.iloc[i].to_dict()
        lo, hi = grouped.offsets[i], grouped.offsets[i + 1]
        items = grouped.items.iloc[lo:hi].to_dict("records")
        body: dict[str, Any] = {
            "request_id": "-".join([schema.name, *(str(req[k]) for k in id_fields)]),
            "user": _json_row(req, user, schema),
            "context": _json_row(req, context, schema),
            "candidates": [_json_row(r, items_of, schema) for r in items],
        }
        if "history" in layout.sequences:
            body["history"] = [int(v) for v in grouped.histories[i]]
        bodies.append(body)
    return bodies


def load_requests(data_dir: str | Path | None = None, days: Sequence[Any] | None = None,
                  by: Grouping = "day", limit: int | None = None,
                  min_candidates: int = 1, schema: Schema = DEFAULT_SCHEMA
                  ) -> list[dict[str, Any]]:
    """Real held-out requests as ``/v1/rank`` JSON bodies (by default the schema's test
    days, grouped by ``data.request.replay_keys``), in time order of their first impression.

    Raises:
        DataNotFound: see :func:`resolve_data_dir`.
    """
    layout = DataLayout.of(schema)
    grouped = group_requests(load_log(data_dir, schema).days(days or layout.split.test), by=by)
    order = np.argsort(grouped.requests[layout.time or layout.day].to_numpy(), kind="stable")
    sizes = np.diff(grouped.offsets)
    order = order[sizes[order] >= min_candidates][:limit]
    return request_bodies(grouped, order.tolist())
