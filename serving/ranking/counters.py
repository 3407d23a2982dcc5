"""The counter join: fill a request's counting features from the model's snapshot.

A feed backend rarely has "how often did this user like this author" at hand, so a model
whose schema has counters (:mod:`serving.repository.counters`) is served with a snapshot of
every key's counters as of the end of its training data (``counters.npz`` in the version
folder: a rollout swaps model and snapshot together). Before encoding, each counter feature
the request does not carry is looked up by the request's ids: the user's counters once per
request, the candidate-side ones (author, video, user x author) as one vectorised
``searchsorted`` per table over the candidate column, no Python per candidate. A value the
request sends wins (per row: a null takes the snapshot's); an id the snapshot does not know,
or a missing one, gets the smoothed prior.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from serving.errors import ModelCardError
from serving.ranking.lookup import as_float_column, int_keys
from serving.repository.counters import CounterSnapshot, CounterTable, pack_keys
from serving.repository.schema import Schema

_Parsed = dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_] | None]]
"""Candidate key columns parsed by :func:`int_keys` in one request: keys, missing mask."""


class _Overlay(Mapping[str, Any]):
    """The request's candidate columns with the joined counter columns in front."""

    def __init__(self, base: Mapping[str, Any], extra: dict[str, Any]) -> None:
        self._base, self._extra = base, extra

    def __getitem__(self, name: str) -> Any:
        if name in self._extra:
            return self._extra[name]
        return self._base[name]

    def get(self, name: str, default: Any = None) -> Any:
        found = self._extra.get(name)
        return found if found is not None else self._base.get(name, default)

    def __iter__(self) -> Iterator[str]:
        yield from self._base
        yield from (n for n in self._extra if n not in self._base)

    def __len__(self) -> int:
        return len(self._base) + sum(1 for n in self._extra if n not in self._base)


def _one_key(value: Any) -> int | None:
    """A user-side id as an int, or ``None`` (prior) when it is not a plain integer."""
    if type(value) is int or (type(value) is float and value.is_integer()):
        return int(value)
    return None


@dataclass
class CounterJoin:
    """A model's snapshot, split by side, with the feature names each table fills."""

    user_tables: tuple[CounterTable, ...]
    item_tables: tuple[CounterTable, ...]
    user_keys: frozenset[str]
    """Key features on the user side (a pair's user id comes from ``user``)."""

    @classmethod
    def of(cls, snapshot: CounterSnapshot, schema: Schema) -> CounterJoin:
        """Raises: ModelCardError: the snapshot's tables are not the schema's counters."""
        specs = {c.name: c for c in schema.counters}
        for t in snapshot.tables:
            spec = specs.get(t.name)
            if spec is None or tuple(spec.feature_names()) != t.features or spec.key != t.key:
                raise ModelCardError(f"counter snapshot table {t.name!r} does not match the "
                                     f"schema's counters ({', '.join(specs)})",
                                     field="counters")
        user_side = frozenset(f.name for f in schema.features if f.side in ("user", "context"))
        return cls(tuple(t for t in snapshot.tables if specs[t.name].side == "user"),
                   tuple(t for t in snapshot.tables if specs[t.name].side != "user"),
                   user_side)

    def fill(self, user: Mapping[str, Any], candidates: Mapping[str, Any], n: int
             ) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
        """``user`` and ``candidates`` with every counter feature they lack joined in.

        A candidate key column parsed here without nulls is passed on as its ``int64``
        array, so the encoder does not parse the JSON list a second time.

        Raises:
            InvalidFeature: a candidate key column, or a counter value sent, is not numeric
                (naming the field).
        """
        if self.user_tables:
            user = self._fill_user(user)
        extra: dict[str, Any] = {}
        parsed: _Parsed = {}
        present = frozenset(candidates)  # one pass over row-wise JSON, not one per feature
        for table in self.item_tables:
            sent = {name: as_float_column(candidates[name], n, f"candidates.{name}")
                    for name in table.features
                    if name in present and candidates.get(name) is not None}
            wanted = [j for j, name in enumerate(table.features)
                      if name not in sent or np.isnan(sent[name]).any()]
            if not wanted:
                continue
            values = table.lookup(*self._item_keys(table, user, candidates, n, parsed))
            columns = values.T.astype(np.float64)  # one contiguous column per feature
            for j in wanted:
                name = table.features[j]
                got = sent.get(name)
                extra[name] = columns[j] if got is None \
                    else np.where(np.isnan(got), columns[j], got)
        extra.update((name, keys) for name, (keys, missing) in parsed.items()
                     if missing is None)
        return user, (_Overlay(candidates, extra) if extra else candidates)

    def _fill_user(self, user: Mapping[str, Any]) -> Mapping[str, Any]:
        out = dict(user)
        for table in self.user_tables:
            wanted = [name for name in table.features if out.get(name) is None]
            if not wanted:
                continue
            key = _one_key(out.get(table.key[0]))
            row = table.prior if key is None \
                else table.lookup(np.array([key], dtype=np.int64))[0]
            for name in wanted:
                out[name] = float(row[table.features.index(name)])
        return out

    def _item_keys(self, table: CounterTable, user: Mapping[str, Any],
                   candidates: Mapping[str, Any], n: int,
                   parsed: _Parsed) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """The table's packed keys per candidate and where they are valid; a candidate
        column is parsed once per request (``parsed``), however many tables it keys."""
        columns, valid = [], np.ones(n, dtype=bool)
        for name in table.key:
            if name in self.user_keys:
                key = _one_key(user.get(name))
                columns.append(np.full(n, -1 if key is None else key, dtype=np.int64))
                valid &= key is not None
                continue
            raw = candidates.get(name)
            if raw is None:
                columns.append(np.zeros(n, dtype=np.int64))
                valid[:] = False
                continue
            if name not in parsed:
                parsed[name] = int_keys(raw, n, f"candidates.{name}", required=False)
            keys, missing = parsed[name]
            columns.append(keys)
            if missing is not None:
                valid &= ~missing
        packed, packed_valid = pack_keys(columns)
        return packed, valid & packed_valid
