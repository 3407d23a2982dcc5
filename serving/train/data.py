"""KuaiRand loader: raw log + feature files -> requests with their candidates, in raw form.

Everything here produces *raw* feature values under the names the feature encoder
(:mod:`serving.ranking.features`) expects, so training and serving encode through the same
code. The module needs only pandas and numpy (no torch): the load tests and the gateway
tests import :func:`load_requests` to replay real held-out requests.

A *request* is what the feed backend would send: one user, the context (tab, hour), the
user's click history up to that moment and the candidates shown together. The log has no
request id, so impressions are grouped by user and time: ``by="minute"`` (same user, date
and ``hourmin``; what training uses, about 1.2 candidates each) or ``by="day"`` (a user's
impressions of one date; bigger requests for replay). A request's history is the videos the
user clicked strictly before the request's first impression (``time_ms`` strictly earlier),
most recent last: nothing from the future leaks in.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from serving.repository.schema import Schema

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
DEFAULT_SCHEMA_FILE = SCHEMA_DIR / "kuairand.yaml"
DEFAULT_SCHEMA = Schema.load(DEFAULT_SCHEMA_FILE)
"""feed_ranker's schema: which features and tasks exist, and (``data``) where they are in
the KuaiRand files. Every name below comes from it."""
_DATA = DEFAULT_SCHEMA.data
_REQUEST = _DATA["request"]
USER_KEY, ITEM_KEY, TIME_KEY = _REQUEST["user"], _REQUEST["item"], _REQUEST["time"]
DAY_KEY, MINUTE_KEY, ENGAGEMENT = _REQUEST["day"], _REQUEST["minute"], _DATA["engagement"]

LOG_FILE = _DATA["impressions"]
USER_FILE = _DATA["user_table"]["file"]
VIDEO_FILE = _DATA["item_table"]["file"]
DATA_FILES = (LOG_FILE, USER_FILE, VIDEO_FILE)
DATA_ENV = "RANKSERVE_DATA"

TASKS = tuple(t.name for t in DEFAULT_SCHEMA.tasks)
LABEL_COLUMNS = DEFAULT_SCHEMA.labels()
HISTORY_LENGTH = DEFAULT_SCHEMA.group_features("user", "seq")[0].length or 0

# The temporal split (dates as in the log's ``date`` column). Tuning trains on TUNE_DAYS and
# validates on VALIDATION_DAYS; the final model trains on TRAIN_DAYS and is tested on TEST_DAYS.
TRAIN_DAYS = tuple(range(20220425, 20220431)) + tuple(range(20220501, 20220505))
VALIDATION_DAYS = (20220504,)
TUNE_DAYS = TRAIN_DAYS[:-1]
TEST_DAYS = tuple(range(20220505, 20220509))

Grouping = Literal["minute", "day"]
_GROUP_KEYS: dict[str, list[str]] = {"minute": [USER_KEY, DAY_KEY, MINUTE_KEY],
                                     "day": [USER_KEY, DAY_KEY]}


def _names(side: str) -> list[str]:
    return [f.name for f in DEFAULT_SCHEMA.features
            if f.side == side and f.kind != "id_sequence"]


USER_COLUMNS = _names("user")
CONTEXT_COLUMNS = _names("context")
ITEM_COLUMNS = _names("candidate")
_STR_COLUMNS = {f.name for f in DEFAULT_SCHEMA.features if f.kind == "categorical_string"}
_NUMERIC_COLUMNS = {f.name for f in DEFAULT_SCHEMA.features if f.kind == "numeric"}


class DataNotFound(FileNotFoundError):
    """The data directory lacks one of the KuaiRand files."""


def resolve_data_dir(path: str | Path | None = None) -> Path:
    """The data directory: the explicit path, else ``$RANKSERVE_DATA``, else
    ``../shared/data/kuairand`` next to the project root.

    Raises:
        DataNotFound: a required file is missing; the message names every expected file.
    """
    if path is None:
        path = os.environ.get(DATA_ENV) or Path(__file__).resolve().parents[2] / \
            ".." / "shared" / "data" / "kuairand"
    data_dir = Path(path)
    missing = [f for f in DATA_FILES if not (data_dir / f).is_file()]
    if missing:
        raise DataNotFound(
            f"KuaiRand data not found in {data_dir}: missing {', '.join(missing)} "
            f"(expected {', '.join(DATA_FILES)}; pass --data or set {DATA_ENV})")
    return data_dir


def _first_tag(tag: Any) -> float:
    """A video's tag field lists several tags ("39,68"); the first is the primary one."""
    if not isinstance(tag, str) or not tag:
        return np.nan
    return float(tag.split(",")[0])


@dataclass
class Log:
    """Impressions joined with user and video features, and every click of the log (the
    source of histories, which may reach back before the selected days)."""

    impressions: pd.DataFrame
    clicks: pd.DataFrame

    def days(self, days: Sequence[int]) -> Log:
        """The impressions of ``days`` only; histories still see every earlier click."""
        keep = self.impressions[DAY_KEY].isin(list(days))
        return Log(self.impressions[keep].reset_index(drop=True), self.clicks)


def load_log(data_dir: str | Path | None = None) -> Log:
    """Every log impression joined with user and video features.

    Impression columns: the raw feature names of the encoder, ``date``, ``hourmin``,
    ``time_ms`` and the label columns of :data:`LABEL_COLUMNS`. ``age_days`` is the time
    from the video's upload date to the impression (``>= 0``); ``tag`` is the video's first
    tag. Rows are in time order.

    Raises:
        DataNotFound: see :func:`resolve_data_dir`.
    """
    data_dir = resolve_data_dir(data_dir)
    log = pd.read_csv(data_dir / LOG_FILE)
    users = pd.read_csv(data_dir / USER_FILE)
    videos = pd.read_csv(data_dir / VIDEO_FILE)
    videos = videos.rename(columns={"video_duration": "duration_ms_video"})
    videos["tag"] = videos["tag"].map(_first_tag)
    log = log.drop(columns=["duration_ms"])
    frame = log.merge(users, on=_DATA["user_table"]["key"], how="left")
    frame = frame.merge(videos, on=_DATA["item_table"]["key"], how="left")
    frame = frame.rename(columns={"duration_ms_video": "duration_ms"})
    frame["hour"] = frame["hourmin"] // 100
    day = pd.to_datetime(frame["date"].astype(str), format="%Y%m%d")
    seen = day + pd.to_timedelta(frame["hour"], unit="h") \
        + pd.to_timedelta(frame["hourmin"] % 100, unit="m")
    age = (seen - pd.to_datetime(frame["upload_dt"])).dt.total_seconds() / 86400.0
    frame["age_days"] = age.clip(lower=0.0)
    frame = frame.sort_values([TIME_KEY, USER_KEY, ITEM_KEY], kind="stable")
    frame = frame.reset_index(drop=True)
    clicks = frame.loc[frame[ENGAGEMENT] == 1, [USER_KEY, TIME_KEY, ITEM_KEY]]
    return Log(frame, clicks.reset_index(drop=True))


@dataclass
class Requests:
    """Impressions grouped into requests.

    ``requests`` has one row per request (user features, context, first ``time_ms``) and
    ``histories`` its click history; ``items`` has one row per candidate, sorted by request,
    with ``request`` its row in ``requests`` and ``offsets`` the CSR start of each request.
    """

    requests: pd.DataFrame
    histories: list[list[int]]
    items: pd.DataFrame
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.requests)

    def head(self, n: int) -> Requests:
        """The first ``n`` requests with their candidates."""
        end = int(self.offsets[n])
        return Requests(self.requests.iloc[:n].reset_index(drop=True), self.histories[:n],
                        self.items.iloc[:end].reset_index(drop=True), self.offsets[:n + 1])

    def labels(self) -> np.ndarray:
        """``[N, T]`` float32 labels in :data:`TASKS` order."""
        labels: np.ndarray = self.items[[LABEL_COLUMNS[t] for t in TASKS]].to_numpy(np.float32)
        return labels


def group_requests(log: Log, by: Grouping = "minute") -> Requests:
    """Group impressions into requests and attach each request's click history."""
    keys = _GROUP_KEYS[by]
    items = log.impressions.sort_values([*keys, TIME_KEY], kind="stable").reset_index(drop=True)
    request = items.groupby(keys, sort=False).ngroup().to_numpy()
    items["request"] = request
    first = items.groupby("request", sort=True).head(1)
    requests = first[[*USER_COLUMNS, *CONTEXT_COLUMNS, DAY_KEY, TIME_KEY]].reset_index(drop=True)
    counts = np.bincount(request, minlength=len(requests))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    histories = _histories(log.clicks, requests[USER_KEY].to_numpy(),
                           requests[TIME_KEY].to_numpy())
    return Requests(requests, histories, items, offsets)


def _histories(clicks: pd.DataFrame, users: np.ndarray, times: np.ndarray) -> list[list[int]]:
    """Per request: the last ``HISTORY_LENGTH`` videos its user clicked strictly before it."""
    ordered = clicks.sort_values([USER_KEY, TIME_KEY], kind="stable")
    click_users = ordered[USER_KEY].to_numpy()
    click_times, videos = ordered[TIME_KEY].to_numpy(), ordered[ITEM_KEY].to_numpy()
    # Each request's user owns the slice [lo, hi) of the sorted clicks; k = clicks before t.
    lo = np.searchsorted(click_users, users, side="left")
    hi = np.searchsorted(click_users, users, side="right")
    out: list[list[int]] = []
    for a, b, t in zip(lo.tolist(), hi.tolist(), times.tolist(), strict=True):
        k = a + int(np.searchsorted(click_times[a:b], t, side="left"))
        out.append(videos[max(a, k - HISTORY_LENGTH):k].tolist())
    return out


def raw_columns(frame: pd.DataFrame, names: Sequence[str]) -> dict[str, Any]:
    """Columns for the encoder: numpy arrays, string features as objects with ``None``."""
    out: dict[str, Any] = {}
    for name in names:
        col = frame[name]
        if name in _STR_COLUMNS:
            out[name] = [None if v != v else str(v) for v in col.tolist()]
        else:
            out[name] = col.to_numpy(np.float64 if name in _NUMERIC_COLUMNS else None)
    return out


def json_value(name: str, value: Any) -> Any:
    """A raw value as the feed backend would send it in JSON; ``None`` if missing."""
    if value is None or value != value:
        return None
    if name in _STR_COLUMNS:
        return str(value)
    if name in _NUMERIC_COLUMNS:
        return float(value)
    return int(value)


def _json_row(row: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    pairs = ((n, json_value(n, row[n])) for n in names)
    return {n: v for n, v in pairs if v is not None}


def request_bodies(grouped: Requests, which: Sequence[int]) -> list[dict[str, Any]]:
    """JSON-ready ``/v1/rank`` bodies for the requests ``which`` (rows of ``grouped``)."""
    bodies = []
    for i in which:
        req = grouped.requests.iloc[i].to_dict()
        lo, hi = grouped.offsets[i], grouped.offsets[i + 1]
        items = grouped.items.iloc[lo:hi].to_dict("records")
        bodies.append({
            "request_id": f"{DEFAULT_SCHEMA.name}-{req[DAY_KEY]}-{req[USER_KEY]}-{req[TIME_KEY]}",
            "user": _json_row(req, USER_COLUMNS),
            "context": _json_row(req, CONTEXT_COLUMNS),
            "history": [int(v) for v in grouped.histories[i]],
            "candidates": [_json_row(r, ITEM_COLUMNS) for r in items],
        })
    return bodies


def load_requests(data_dir: str | Path | None = None, days: Sequence[int] = TEST_DAYS,
                  by: Grouping = "day", limit: int | None = None,
                  min_candidates: int = 1) -> list[dict[str, Any]]:
    """Real held-out requests as ``/v1/rank`` JSON bodies (by default the test days, one
    request per user and day), in time order of their first impression.

    Raises:
        DataNotFound: see :func:`resolve_data_dir`.
    """
    grouped = group_requests(load_log(data_dir).days(days), by=by)
    order = np.argsort(grouped.requests[TIME_KEY].to_numpy(), kind="stable")
    sizes = np.diff(grouped.offsets)
    order = order[sizes[order] >= min_candidates][:limit]
    return request_bodies(grouped, order.tolist())
