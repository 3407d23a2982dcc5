"""The training data reader: a schema's ``data:`` section -> one table of impressions.

Any team's log trains without code: the section names the files (CSV, optionally gzipped,
or Parquet, read with pandas), the feature tables joined onto the impressions, a few
derived columns, how impressions group into requests, where each id sequence comes from
and the day split. After reading, every feature of the schema is a column under its own
name (a feature's ``column`` is renamed to it) and every task's label column is present;
anything missing is a :class:`SchemaError` naming the schema field that asked for it.
docs/schema.md describes every field; ``serving/train/schemas/*.yaml`` are examples.

Derived columns (``derive``), each ``name: {op: ..., column: ...}``:

* ``hhmm_hour``: an ``HHMM`` integer -> its hour (``hhmm // 100``);
* ``first_of_list``: a delimited string (``sep``, default ``,``) -> its first item, a number;
* ``days_since``: days from the datetime in ``column`` to the impression, whose day is the
  ``YYYYMMDD`` integer in ``day`` and its time of day the ``HHMM`` integer in ``hhmm``
  (clipped at 0).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from serving.repository.schema import Schema, SchemaError


@dataclass(frozen=True)
class SequenceSource:
    """Where an id sequence comes from: a column holding each request's list (a list, or a
    string of ids separated by spaces or commas), or the ``item`` ids of the impressions
    where ``engaged`` is 1, of the same ``user``, strictly before the request."""

    column: str | None = None
    engaged: str | None = None
    user: str | None = None
    item: str | None = None


@dataclass(frozen=True)
class Split:
    """Days (values of ``request.day``) of each part of the temporal split."""

    train: tuple[Any, ...]
    test: tuple[Any, ...]
    tune: tuple[Any, ...]
    validation: tuple[Any, ...]


@dataclass(frozen=True)
class DataLayout:
    """A schema's ``data:`` section, checked."""

    impressions: tuple[str, ...]
    drop: tuple[str, ...]
    joins: tuple[Mapping[str, Any], ...]
    derive: Mapping[str, Mapping[str, Any]]
    keys: tuple[str, ...]
    replay_keys: tuple[str, ...]
    day: str
    time: str | None
    order: tuple[str, ...]
    sequences: Mapping[str, SequenceSource]
    split: Split

    @classmethod
    def of(cls, schema: Schema) -> DataLayout:
        """Raises: SchemaError naming the ``data.*`` field."""
        data = schema.data
        if not data:
            raise SchemaError(f"schema {schema.name} has no 'data' section: the training "
                              "reader needs one (docs/schema.md)", field="data")
        _known(data, {"impressions", "drop", "join", "derive", "request", "sequences", "split"},
               "data")
        request = data.get("request")
        if not isinstance(request, Mapping):
            raise SchemaError("'data.request' must be a mapping with 'keys' and 'day'",
                              field="data.request")
        _known(request, {"keys", "replay_keys", "day", "time", "order"}, "data.request")
        keys = _names(request.get("keys"), "data.request.keys")
        day = _name(request.get("day"), "data.request.day")
        time = request.get("time")
        if time is not None:
            time = _name(time, "data.request.time")
        order = request.get("order")
        sequences = {f.name: _sequence(data.get("sequences") or {}, f.name, f.source)
                     for f in schema.features if f.kind == "id_sequence"}
        joins = data.get("join") or []
        if not isinstance(joins, list) or not all(isinstance(j, Mapping) and "file" in j
                                                  and "key" in j for j in joins):
            raise SchemaError("'data.join' must be a list of {file, key, rename}",
                              field="data.join")
        derive = data.get("derive") or {}
        for name, spec in derive.items():
            if not isinstance(spec, Mapping) or spec.get("op") not in _OPS:
                raise SchemaError(f"'data.derive.{name}.op' must be one of "
                                  f"{', '.join(_OPS)}", field=f"data.derive.{name}.op")
        return cls(
            impressions=_files(data.get("impressions"), "data.impressions"),
            drop=_names(data.get("drop") or [], "data.drop", empty=True),
            joins=tuple(joins), derive=dict(derive), keys=keys,
            replay_keys=_names(request.get("replay_keys") or list(keys),
                               "data.request.replay_keys"),
            day=day, time=time,
            order=_names(order, "data.request.order") if order is not None
            else ((time,) if time else ()),
            sequences=sequences, split=_split(data.get("split"), "data.split"))


def _known(raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in raw:
        if key not in allowed:
            raise SchemaError(f"'{where}.{key}' is not a data field (allowed: "
                              f"{', '.join(sorted(allowed))})", field=f"{where}.{key}")


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise SchemaError(f"'{where}' must name a column", field=where)
    return value


def _names(value: Any, where: str, empty: bool = False) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or (not value and not empty):
        raise SchemaError(f"'{where}' must be a column name or a list of them", field=where)
    return tuple(_name(v, f"{where}[{i}]") for i, v in enumerate(value))


def _files(value: Any, where: str) -> tuple[str, ...]:
    files = _names(value, where)
    for i, f in enumerate(files):
        if not f.endswith((".csv", ".csv.gz", ".parquet")):
            raise SchemaError(f"'{where}' file {f!r} must be .csv, .csv.gz or .parquet",
                              field=f"{where}[{i}]" if len(files) > 1 else where)
    return files


def _sequence(section: Mapping[str, Any], name: str, column: str) -> SequenceSource:
    raw = section.get(name) or {}
    where = f"data.sequences.{name}"
    if not isinstance(raw, Mapping):
        raise SchemaError(f"'{where}' must be a mapping", field=where)
    _known(raw, {"column", "engaged", "user", "item"}, where)
    if "engaged" in raw:
        for key in ("engaged", "user", "item"):
            _name(raw.get(key), f"{where}.{key}")
        return SequenceSource(engaged=raw["engaged"], user=raw["user"], item=raw["item"])
    return SequenceSource(column=_name(raw.get("column", column), f"{where}.column"))


def _split(raw: Any, where: str) -> Split:
    if not isinstance(raw, Mapping):
        raise SchemaError(f"'{where}' must map train and test to lists of days", field=where)
    _known(raw, {"train", "test", "tune", "validation"}, where)
    parts: dict[str, tuple[Any, ...]] = {}
    for part in ("train", "test", "tune", "validation"):
        days = raw.get(part)
        if days is None and part in ("tune", "validation"):
            continue
        if not isinstance(days, list) or not days:
            raise SchemaError(f"'{where}.{part}' must be a non-empty list of days",
                              field=f"{where}.{part}")
        parts[part] = tuple(days)
    train = parts["train"]
    if len(train) < 2 and ("tune" not in parts or "validation" not in parts):
        raise SchemaError(f"'{where}.train' needs two days or more (the last one validates "
                          "the baseline's tuning) unless tune and validation are given",
                          field=f"{where}.train")
    return Split(train, parts["test"], parts.get("tune", train[:-1]),
                 parts.get("validation", train[-1:]))


# -- reading ---------------------------------------------------------------------------------


def read_table(path: Path) -> pd.DataFrame:
    """One CSV (``.csv``, ``.csv.gz``) or Parquet file.

    Raises:
        FileNotFoundError: naming the file.
    """
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} not found")
    if path.name.endswith(".parquet"):
        return pd.read_parquet(path)
    return pd.read_csv(path)


def _first_of_list(frame: pd.DataFrame, spec: Mapping[str, Any]) -> pd.Series:
    sep = spec.get("sep", ",")

    def first(value: Any) -> float:
        if not isinstance(value, str) or not value:
            return np.nan
        return float(value.split(sep)[0])
    return frame[spec["column"]].map(first)


def _days_since(frame: pd.DataFrame, spec: Mapping[str, Any]) -> pd.Series:
    hhmm = frame[spec["hhmm"]]
    seen = pd.to_datetime(frame[spec["day"]].astype(str), format="%Y%m%d") \
        + pd.to_timedelta(hhmm // 100, unit="h") + pd.to_timedelta(hhmm % 100, unit="m")
    age = (seen - pd.to_datetime(frame[spec["column"]])).dt.total_seconds() / 86400.0
    return age.clip(lower=0.0)


_OPS: dict[str, Callable[[pd.DataFrame, Mapping[str, Any]], pd.Series]] = {
    "hhmm_hour": lambda frame, spec: frame[spec["column"]] // 100,
    "first_of_list": _first_of_list,
    "days_since": _days_since,
}


def _require(frame: pd.DataFrame, column: str, field: str, what: str) -> None:
    if column not in frame.columns:
        raise SchemaError(f"'{field}' names column {column!r} ({what}), which the data "
                          f"lacks (columns: {', '.join(map(str, frame.columns[:40]))})",
                          field=field)


def read_impressions(schema: Schema, data_dir: Path) -> pd.DataFrame:
    """Every impression with its joined and derived columns, features under their names,
    in ``request.order``.

    Raises:
        SchemaError: a feature, label or request column is missing, naming the field.
        FileNotFoundError: a data file is missing.
    """
    layout = DataLayout.of(schema)
    frame = pd.concat([read_table(data_dir / f) for f in layout.impressions],
                      ignore_index=True)
    frame = frame.drop(columns=[c for c in layout.drop if c in frame.columns])
    for i, join in enumerate(layout.joins):
        table = read_table(data_dir / join["file"]).rename(columns=dict(join.get("rename")
                                                                        or {}))
        _require(frame, join["key"], f"data.join[{i}].key", "the join key")
        frame = frame.merge(table, on=join["key"], how="left")
    for name, spec in layout.derive.items():
        for key in ("column", "day", "hhmm"):
            if key in spec:
                _require(frame, spec[key], f"data.derive.{name}.{key}", "an input")
        frame[name] = _OPS[spec["op"]](frame, spec)
    renamed = [(i, f) for i, f in enumerate(schema.features)
               if f.column and f.kind != "id_sequence"]
    for i, f in renamed:
        _require(frame, f.source, f"features[{i}].column", f"feature {f.name}")
    frame = frame.assign(**{f.name: frame[f.source] for _, f in renamed})  # may share one
    _check_columns(frame, schema, layout)
    if layout.order:
        frame = frame.sort_values(list(layout.order), kind="stable")
    return frame.reset_index(drop=True)


def _check_columns(frame: pd.DataFrame, schema: Schema, layout: DataLayout) -> None:
    """Every column the schema names is in ``frame``; else SchemaError naming the field."""
    produced = schema.counter_features()  # train/counters.py
    for i, f in enumerate(schema.features):
        if f.kind != "id_sequence" and f.name not in produced:
            _require(frame, f.name, f"features[{i}].{'column' if f.column else 'name'}",
                     f"feature {f.name}")
    for i, t in enumerate(schema.tasks):
        _require(frame, t.label or t.name, f"tasks[{i}].label", f"task {t.name}'s label")
    for where, column in (("data.request.day", layout.day), ("data.request.time", layout.time),
                          *((f"data.request.keys[{i}]", k) for i, k in enumerate(layout.keys)),
                          *((f"data.request.order[{i}]", k) for i, k in enumerate(layout.order))):
        if column is not None:
            _require(frame, column, where, "request layout")
    for name, source in layout.sequences.items():
        if source.column is not None:
            _require(frame, source.column, f"data.sequences.{name}.column", "id lists")
        else:
            for key in ("engaged", "user", "item"):
                _require(frame, getattr(source, key), f"data.sequences.{name}.{key}",
                         "the sequence's source")


def parse_id_list(value: Any) -> list[int]:
    """One request's id sequence from a file: a list (Parquet) or a string of ids separated
    by spaces or commas (CSV); missing -> empty."""
    if value is None or (isinstance(value, float) and value != value):
        return []
    if isinstance(value, str):
        return [int(v) for v in value.replace(",", " ").split()]
    return [int(v) for v in value]


def engaged_before(engagements: pd.DataFrame, source: SequenceSource, time: str,
                   users: np.ndarray, times: np.ndarray, length: int) -> list[list[int]]:
    """Per request: the last ``length`` items its user engaged with strictly before its
    time (most recent last)."""
    assert source.user is not None
    assert source.item is not None
    ordered = engagements.sort_values([source.user, time], kind="stable")
    engaged_users = ordered[source.user].to_numpy()
    engaged_times, items = ordered[time].to_numpy(), ordered[source.item].to_numpy()
    # Each request's user owns the slice [lo, hi) of the sorted rows; k = rows before t.
    lo = np.searchsorted(engaged_users, users, side="left")
    hi = np.searchsorted(engaged_users, users, side="right")
    out: list[list[int]] = []
    for a, b, t in zip(lo.tolist(), hi.tolist(), times.tolist(), strict=True):
        k = a + int(np.searchsorted(engaged_times[a:b], t, side="left"))
        out.append(items[max(a, k - length):k].tolist())
    return out


def sequence_names(schema: Schema) -> Sequence[str]:
    return [f.name for f in schema.features if f.kind == "id_sequence"]
