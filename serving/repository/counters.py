"""Counting features as schema data: the ``counters:`` section and the snapshot file format.

A counter counts, per entity key (a user, an author, a video, or a pair such as user x
author), the impressions of earlier log rows and how many of them carried each engagement
event (a label column), and turns them into ordinary numeric features of the schema:

* ``<name>_count``: earlier impressions of the key;
* ``<name>_<event>_count``: earlier impressions of the key with the event;
* ``<name>_<event>_rate``: the smoothed rate ``(events + s * p) / (impressions + s)``, with
  the prior rate ``p`` of the event (the training days' rate, unless the file gives one) and
  the prior strength ``s``: a key seen twice says little, an unseen one gets ``p``.

A counter keyed by user (or context) features only is a *user-side* counter (its features
join the ``user_num`` tensor); any counter with a candidate feature in its key is
candidate-side (``item_num``). ``window`` says what "earlier" means: ``daily`` (the default,
a daily batch job: rows of strictly earlier days) or ``row`` (rows strictly earlier in
time). Training computes them in :mod:`serving.train.counters`; a served model carries a
*snapshot* of every key's counters as of the end of its training data
(:data:`SNAPSHOT_FILE` beside ``model.onnx``, format below), joined by id at request time
(:mod:`serving.ranking.counters`) when a request does not send the values itself.

Snapshot file (``counters.npz``, numpy's compressed zip of ``.npy`` arrays, no pickles):

* ``meta``: a 0-d unicode array holding JSON: ``{"format": 1, "tables": [{"name", "key":
  [feature, ...], "features": [name, ...]}, ...]}``;
* per table ``<name>.keys``: ``int64 [K]``, sorted ascending, unique; a one-feature key is
  the raw id, a pair ``(a, b)`` is packed as ``a << 32 | b`` (both in ``[0, 2**32)``; other
  ids are never in a snapshot and get the prior);
* ``<name>.values``: ``float32 [K, F]``, the raw (untransformed) feature values of each
  key, columns in ``features`` order; ``<name>.prior``: ``float32 [F]``, an unknown key's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from serving.errors import ModelCardError

if TYPE_CHECKING:  # schema.py imports this module; only the type is needed here
    from serving.repository.schema import Feature

SNAPSHOT_FILE = "counters.npz"
SNAPSHOT_FORMAT = 1
WINDOWS = ("daily", "row")
PAIR_BITS = 32
DEFAULT_PRIOR_STRENGTH = 20.0
COUNT_TRANSFORM, RATE_TRANSFORM = "log1p_standardize", "standardize"
_KEYS = {"name", "key", "events", "window", "prior_strength", "prior", "count_transform",
         "rate_transform"}
_NUMERIC_TRANSFORMS = ("log1p_standardize", "standardize", "log1p", "identity")


def counter_error(message: str, *, field: str) -> ModelCardError:
    """A bad ``counters`` section: a :class:`~serving.repository.schema.SchemaError` naming
    the field (``counters[1].key``), as every other schema mistake is."""
    from serving.repository.schema import SchemaError  # schema.py imports this module

    return SchemaError(message, field=field)


@dataclass(frozen=True)
class CounterSpec:
    """One counter of the schema (module docstring)."""

    name: str
    key: tuple[str, ...]
    events: tuple[str, ...]
    side: str
    """``user`` (every key feature is user or context side) or ``candidate``."""
    window: str = "daily"
    prior_strength: float = DEFAULT_PRIOR_STRENGTH
    prior: dict[str, float] = field(default_factory=dict)
    """Declared prior rates per event; events absent here take the training days' rate."""
    count_transform: str = COUNT_TRANSFORM
    rate_transform: str = RATE_TRANSFORM

    def count_name(self, event: str | None = None) -> str:
        return f"{self.name}_count" if event is None else f"{self.name}_{event}_count"

    def rate_name(self, event: str) -> str:
        return f"{self.name}_{event}_rate"

    def feature_names(self) -> list[str]:
        """The features this counter produces, in schema (tensor column) order."""
        out = [self.count_name()]
        for e in self.events:
            out += [self.count_name(e), self.rate_name(e)]
        return out

    def feature_dicts(self) -> list[dict[str, Any]]:
        """The produced features as schema-file entries (numeric, on :attr:`side`)."""
        def entry(name: str, transform: str) -> dict[str, Any]:
            return {"name": name, "side": self.side, "kind": "numeric",
                    "transform": transform, "default": "median"}
        out = [entry(self.count_name(), self.count_transform)]
        for e in self.events:
            out += [entry(self.count_name(e), self.count_transform),
                    entry(self.rate_name(e), self.rate_transform)]
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "key": list(self.key),
                               "events": list(self.events), "window": self.window,
                               "prior_strength": self.prior_strength}
        if self.prior:
            out["prior"] = dict(self.prior)
        if self.count_transform != COUNT_TRANSFORM:
            out["count_transform"] = self.count_transform
        if self.rate_transform != RATE_TRANSFORM:
            out["rate_transform"] = self.rate_transform
        return out


def parse_counters(section: Any, features: Sequence[Feature],
                   labels: Sequence[str] | None = None) -> tuple[CounterSpec, ...]:
    """Check and build the ``counters`` section (``None``: no counters).

    ``features`` are the schema's declared features (a key must name one of them, a
    categorical id); ``labels`` the label columns an event may name (``None``: not checked).

    Raises:
        SchemaError: naming the offending field, e.g. ``counters[2].key``.
    """
    if section is None:
        return ()
    if not isinstance(section, list):
        raise counter_error("'counters' must be a list of counters", field="counters")
    by_name = {f.name: f for f in features}
    out: list[CounterSpec] = []
    produced: set[str] = set()
    for i, raw in enumerate(section):
        spec = _counter(raw, i, by_name, labels)
        for name in spec.feature_names():
            if name in by_name or name in produced:
                raise counter_error(f"'counters[{i}].name' {spec.name!r} produces feature "
                                   f"{name!r}, which is declared already",
                                   field=f"counters[{i}].name")
            produced.add(name)
        out.append(spec)
    return tuple(out)


Fail = Callable[[str, str], ModelCardError]


def _counter(raw: Any, i: int, features: Mapping[str, Feature],
             labels: Sequence[str] | None) -> CounterSpec:
    where = f"counters[{i}]"

    def fail(key: str, message: str) -> ModelCardError:
        return counter_error(f"'{where}.{key}' {message}", field=f"{where}.{key}")

    if not isinstance(raw, Mapping):
        raise counter_error(f"'{where}' must be a mapping", field=where)
    for key in raw:
        if key not in _KEYS:
            raise fail(str(key), f"is not a counter field (allowed: {', '.join(sorted(_KEYS))})")
    name = raw.get("name")
    if not isinstance(name, str) or not name.isidentifier():
        raise fail("name", "must be an identifier")
    key = _key(raw.get("key"), features, fail)
    events = _events(raw.get("events"), labels, fail)
    window = raw.get("window", "daily")
    if window not in WINDOWS:
        raise fail("window", f"must be one of {', '.join(WINDOWS)}, got {window!r}")
    strength = raw.get("prior_strength", DEFAULT_PRIOR_STRENGTH)
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or strength <= 0:
        raise fail("prior_strength", "must be a positive number")
    prior = raw.get("prior") or {}
    if not isinstance(prior, Mapping) or any(
            e not in events or isinstance(p, bool) or not isinstance(p, (int, float))
            or not 0.0 < p < 1.0 for e, p in prior.items()):
        raise fail("prior", "must map events of this counter to rates in (0, 1)")
    transforms = {k: raw.get(k, default) for k, default in
                  (("count_transform", COUNT_TRANSFORM), ("rate_transform", RATE_TRANSFORM))}
    for k, value in transforms.items():
        if value not in _NUMERIC_TRANSFORMS:
            raise fail(k, f"must be one of {', '.join(_NUMERIC_TRANSFORMS)}")
    side = "user" if all(features[k].side in ("user", "context") for k in key) \
        else "candidate"
    return CounterSpec(name=name, key=key, events=events, side=side, window=window,
                       prior_strength=float(strength),
                       prior={e: float(p) for e, p in prior.items()}, **transforms)


def _key(raw: Any, features: Mapping[str, Feature], fail: Fail) -> tuple[str, ...]:
    key = [raw] if isinstance(raw, str) else raw
    if not isinstance(key, list) or not 1 <= len(key) <= 2 or len(set(key)) != len(key):
        raise fail("key", "must name one feature or a pair of two different ones")
    for k in key:
        f = features.get(k) if isinstance(k, str) else None
        if f is None or f.kind != "categorical_id":
            raise fail("key", f"{k!r} must name a categorical_id feature of the schema")
    return tuple(key)


def _events(raw: Any, labels: Sequence[str] | None, fail: Fail) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw or len(set(map(str, raw))) != len(raw) or \
            not all(isinstance(e, str) and e.isidentifier() for e in raw):
        raise fail("events", "must be a non-empty list of distinct label columns")
    for e in raw:
        if labels is not None and e not in labels:
            raise fail("events", f"{e!r} is not a label column of the tasks "
                                 f"({', '.join(labels)})")
    return tuple(raw)


# -- keys ----------------------------------------------------------------------------------

def pack_keys(columns: Sequence[npt.NDArray[np.int64]]) -> tuple[npt.NDArray[np.int64],
                                                                 npt.NDArray[np.bool_]]:
    """One int64 key per row from one or two int64 id columns, and where it is valid: a
    pair is ``a << 32 | b`` and valid only with both ids in ``[0, 2**32)``."""
    if len(columns) == 1:
        return columns[0], np.ones(len(columns[0]), dtype=bool)
    a, b = columns
    limit = 1 << PAIR_BITS
    valid = (a >= 0) & (a < limit) & (b >= 0) & (b < limit)
    packed = (np.where(valid, a, 0) << PAIR_BITS) | np.where(valid, b, 0)
    return packed.astype(np.int64), valid


# -- the snapshot ---------------------------------------------------------------------------

@dataclass(frozen=True)
class CounterTable:
    """One counter's snapshot: sorted keys, their feature values and the prior row."""

    name: str
    key: tuple[str, ...]
    features: tuple[str, ...]
    keys: npt.NDArray[np.int64]
    values: npt.NDArray[np.float32]
    prior: npt.NDArray[np.float32]

    _rows: npt.NDArray[np.float32] = field(init=False, repr=False, compare=False)
    """``values`` with the prior as one more row (index ``len(keys)``), built on load, so a
    lookup is one gather (``np.take``, several times faster than assigning the prior to the
    misses of a fancy-indexed copy)."""

    def __post_init__(self) -> None:
        rows = np.vstack([self.values, self.prior[None, :]])
        object.__setattr__(self, "_rows", rows)

    def lookup(self, keys: npt.NDArray[np.int64], valid: npt.NDArray[np.bool_] | None = None
               ) -> npt.NDArray[np.float32]:
        """``[n, F]`` values of ``keys``; the prior row where a key is unknown or invalid.
        One ``searchsorted`` over the sorted keys, no Python per row."""
        known = len(self.keys)
        if not known:
            return np.broadcast_to(self.prior, (len(keys), len(self.prior))).copy()
        at = np.searchsorted(self.keys, keys)
        np.minimum(at, known - 1, out=at)
        miss = np.take(self.keys, at) != keys
        if valid is not None:
            miss |= ~valid
        at[miss] = known
        out: npt.NDArray[np.float32] = np.take(self._rows, at, axis=0)
        return out


@dataclass(frozen=True)
class CounterSnapshot:
    """Every counter table of a served model version (the file format: module docstring)."""

    tables: tuple[CounterTable, ...]

    def save(self, path: Path) -> None:
        meta = {"format": SNAPSHOT_FORMAT,
                "tables": [{"name": t.name, "key": list(t.key), "features": list(t.features)}
                           for t in self.tables]}
        arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(meta))}
        for t in self.tables:
            arrays[f"{t.name}.keys"] = t.keys.astype(np.int64)
            arrays[f"{t.name}.values"] = t.values.astype(np.float32)
            arrays[f"{t.name}.prior"] = t.prior.astype(np.float32)
        with path.open("wb") as f:
            np.savez_compressed(f, **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: Path) -> CounterSnapshot:
        """Read a snapshot file.

        Raises:
            ModelCardError: unreadable, of another format, or inconsistent arrays.
        """
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                if meta.get("format") != SNAPSHOT_FORMAT:
                    raise ValueError(f"format {meta.get('format')!r}, expected "
                                     f"{SNAPSHOT_FORMAT}")
                tables = []
                for t in meta["tables"]:
                    keys = data[f"{t['name']}.keys"].astype(np.int64)
                    values = data[f"{t['name']}.values"].astype(np.float32)
                    prior = data[f"{t['name']}.prior"].astype(np.float32)
                    width = len(t["features"])
                    if values.shape != (len(keys), width) or prior.shape != (width,) or \
                            (len(keys) > 1 and not (np.diff(keys) > 0).all()):
                        raise ValueError(f"table {t['name']!r}: keys, values and prior "
                                         "do not agree or keys are not sorted")
                    tables.append(CounterTable(t["name"], tuple(t["key"]),
                                               tuple(t["features"]), keys, values, prior))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ModelCardError(f"counter snapshot {path.name} cannot be read: {e}",
                                 field=str(path)) from None
        return cls(tuple(tables))

    def table(self, name: str) -> CounterTable:
        for t in self.tables:
            if t.name == name:
                return t
        raise KeyError(name)
