"""Counting features for training, strictly from earlier log rows, and their snapshot.

For every impression and every counter of the schema (:mod:`serving.repository.counters`),
the counts of the key's impressions and events in log rows *strictly earlier* than the
impression's window (``daily``: earlier days; ``row``: earlier ``time_ms``), vectorised:
per-(key, window) sums, their running sum within the key, minus the window's own. Nothing of
a row's own window or later reaches it (``tests/train/test_counters.py`` proves it by
shifting and deleting later rows). The smoothed rates use the prior rate of each event:
declared in the schema, else the training days' rate, written back into the schema so the
model card records the number used.

Training attaches the features as extra columns of the impression frame (before the encoder
is fitted); export writes the snapshot (every key's counters over all training days, what an
impression the day after training would see) beside ``model.onnx``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from serving.repository.card import ModelCard, sha256_of
from serving.repository.counters import (
    SNAPSHOT_FILE,
    CounterSnapshot,
    CounterSpec,
    CounterTable,
    pack_keys,
)
from serving.repository.schema import Schema
from serving.train.data import DAY_KEY, LABEL_COLUMNS, USER_KEY, Log


def _request_keys(schema: Schema) -> tuple[str, str]:
    """The day and time columns of the log (``data.request`` of the schema)."""
    request = schema.data.get("request", {})
    return request.get("day", "date"), request.get("time", "time_ms")


def _keys(frame: pd.DataFrame, spec: CounterSpec) -> tuple[np.ndarray, np.ndarray]:
    """Packed int64 keys of ``frame``'s rows and where they are valid (no missing id)."""
    columns, present = [], np.ones(len(frame), dtype=bool)
    for name in spec.key:
        raw = frame[name].to_numpy(np.float64)
        present &= np.isfinite(raw)
        columns.append(np.where(np.isfinite(raw), raw, -1).astype(np.int64))
    keys, valid = pack_keys(columns)
    return keys, valid & present


def fit_priors(schema: Schema, train: pd.DataFrame) -> Schema:
    """``schema`` with every counter's missing prior rates set to the training rows' event
    rates (a constant of the training days, like the encoder's means)."""
    counters = tuple(dataclasses.replace(c, prior={
        e: c.prior.get(e, float(np.clip(train[e].mean(), 1e-4, 1 - 1e-4))) for e in c.events})
        for c in schema.counters)
    return dataclasses.replace(schema, counters=counters)


def _features(spec: CounterSpec, n: np.ndarray, events: np.ndarray) -> np.ndarray:
    """``[rows, F]`` raw features from impression counts ``n`` and event counts."""
    out = np.empty((len(n), 1 + 2 * len(spec.events)), dtype=np.float64)
    out[:, 0] = n
    for j, e in enumerate(spec.events):
        prior, s = spec.prior[e], spec.prior_strength
        out[:, 1 + 2 * j] = events[:, j]
        out[:, 2 + 2 * j] = (events[:, j] + s * prior) / (n + s)
    return out


def counter_frame(frame: pd.DataFrame, schema: Schema, until_day: int | None = None
                  ) -> pd.DataFrame:
    """Every counter feature of ``schema`` for each row of ``frame`` (same index), from rows
    strictly earlier than the row's window. ``until_day``: rows of later days add nothing
    to any count (what a snapshot frozen at the end of that day gives those days).

    Raises:
        KeyError: a key, label, day or time column is missing from ``frame``.
        ValueError: a counter's prior rates are not resolved (see :func:`fit_priors`).
    """
    day_col, time_col = _request_keys(schema)
    out = {}
    counted = np.ones(len(frame)) if until_day is None \
        else (frame[day_col].to_numpy() <= until_day).astype(np.float64)
    for spec in schema.counters:
        if set(spec.prior) != set(spec.events):
            raise ValueError(f"counter {spec.name!r} has unresolved priors: call fit_priors")
        keys, valid = _keys(frame, spec)
        window = frame[day_col if spec.window == "daily" else time_col].to_numpy(np.int64)
        weight = counted * valid
        sums = pd.DataFrame({"n": weight, **{e: frame[e].to_numpy(np.float64) * weight
                                             for e in spec.events}})
        sums["key"], sums["window"] = keys, window
        per_window = sums.groupby(["key", "window"], sort=True).sum()
        earlier = per_window.groupby(level="key").cumsum() - per_window
        index = pd.MultiIndex.from_arrays([keys, window], names=["key", "window"])
        rows = earlier.reindex(index).to_numpy(np.float64, copy=True)
        rows[~valid] = 0.0  # a row without its key's ids counts as an unseen key
        values = _features(spec, rows[:, 0], rows[:, 1:])
        out.update(dict(zip(spec.feature_names(), values.T, strict=True)))
    return pd.DataFrame(out, index=frame.index)


def attach_counters(log: Log, schema: Schema, until_day: int | None = None) -> Log:
    """``log`` with the counter features as extra impression columns and ``schema`` (with
    its resolved priors) as its schema, so grouping and encoding read them as any other
    feature (no-op without counters); ``until_day`` as in :func:`counter_frame`."""
    if not schema.counters:
        return log
    counters = counter_frame(log.impressions, schema, until_day)
    impressions = log.impressions.drop(columns=[c for c in counters if c in log.impressions])
    return dataclasses.replace(log, impressions=pd.concat([impressions, counters], axis=1),
                               schema=schema)


def snapshot(frame: pd.DataFrame, schema: Schema) -> CounterSnapshot:
    """Every key's counters over all rows of ``frame`` (the training days): what an
    impression after them sees, and the prior row for a key they never saw."""
    tables = []
    for spec in schema.counters:
        keys, valid = _keys(frame, spec)
        sums = pd.DataFrame({"key": keys[valid], "n": 1.0,
                             **{e: frame[e].to_numpy(np.float64)[valid] for e in spec.events}})
        totals = sums.groupby("key", sort=True).sum()
        values = _features(spec, totals["n"].to_numpy(), totals[list(spec.events)].to_numpy())
        prior = _features(spec, np.zeros(1), np.zeros((1, len(spec.events))))[0]
        tables.append(CounterTable(spec.name, spec.key, tuple(spec.feature_names()),
                                   totals.index.to_numpy(np.int64), values.astype(np.float32),
                                   prior.astype(np.float32)))
    return CounterSnapshot(tuple(tables))


EXTRA_SECTIONS = {"baseline_counters": "baseline_counters.json",
                  "seed_study_without_counters": "seeds_without_counters.json"}
"""Model-card metric sections of a counters model, from files beside its checkpoint: the LR
baseline with the same counting features and the seed study of the schema without them."""


def export_counters(log: Log, schema: Schema, saved: Mapping[str, Any], version_dir: Path,
                    run_dir: Path, card: ModelCard) -> None:
    """Export's counters step (no-op without counters): write the snapshot of the training
    days beside ``model.onnx``, record it in the card's ``training.counters`` and add the
    :data:`EXTRA_SECTIONS` found in ``run_dir`` to the card's metrics."""
    if not schema.counters:
        return
    first, last = saved["training"]["train_days"]
    day = log.impressions[_request_keys(schema)[0]]
    path = version_dir / SNAPSHOT_FILE
    taken = snapshot(log.impressions[(day >= first) & (day <= last)], schema)
    taken.save(path)
    card.training["counters"] = {
        "snapshot": SNAPSHOT_FILE, "sha256": sha256_of(path), "as_of_day": int(last),
        "keys": {t.name: len(t.keys) for t in taken.tables}}
    for section, name in EXTRA_SECTIONS.items():
        if (run_dir / name).is_file():
            card.metrics[section] = json.loads((run_dir / name).read_text())


def liked_before(log: Log, rows: pd.DataFrame) -> np.ndarray:
    """Per row of ``rows`` (impressions of ``log``): did its user like anything on a
    strictly earlier day? The segment the model card's per-segment AUCs split on."""
    like = LABEL_COLUMNS["like"]
    per_day = log.impressions.groupby([USER_KEY, DAY_KEY], sort=True)[like].sum()
    earlier = per_day.groupby(level=USER_KEY).cumsum() - per_day
    index = pd.MultiIndex.from_arrays([rows[USER_KEY].to_numpy(), rows[DAY_KEY].to_numpy()])
    found: np.ndarray = earlier.reindex(index).fillna(0.0).to_numpy() > 0
    return found
