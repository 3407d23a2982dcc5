"""The feature encoder: raw feature values (as the gateway receives them) -> model tensors.

Training and serving both call this module, so there is exactly one definition of how a raw
value becomes a model input and no train/serve skew. *Which* features exist, on which side,
of which kind, is the model's schema (:mod:`serving.repository.schema`, a file per model,
recorded in its card); the *fitted state* (vocabularies and numeric constants learned on the
training days) lives in the model card too, written by :meth:`FeatureEncoder.to_card` and
read back by :meth:`FeatureEncoder.from_card`. Tensor names follow from the schema
(:meth:`~serving.repository.schema.Schema.inputs`).

Conventions a caller can rely on:

* Categorical id 0 means "unknown or missing": a value outside the training vocabulary
  (out-of-vocabulary), ``None`` / ``NaN``, or an absent optional column. Known values get ids
  ``1..len(vocab)``. Sequence slots use 0 as padding too, so an unknown watched item carries
  no signal rather than a wrong one.
* A missing optional numeric value (absent column, ``None`` or ``NaN``) takes the feature's
  default (the training median unless the schema says otherwise). ``+-inf`` is an error.
* A missing *required* feature raises :class:`~serving.errors.MissingFeature` naming it.
* Names a request sends that the schema does not know are not read;
  :meth:`FeatureEncoder.unknown_features` lists them.

Inputs are columnar: ``Mapping[name, sequence]`` with one entry per row. Row-wise JSON is
turned into columns by :func:`columns_from_rows`; binary payloads arrive as numpy arrays and
skip per-value Python work entirely (:mod:`serving.ranking.lookup`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from serving.errors import InvalidFeature, MissingFeature
from serving.ranking.lookup import HashBuckets, Lookup, Vocabulary
from serving.ranking.numeric import NumericStats, transform_matrix
from serving.repository.schema import ITEM_TO_USER, PROBS, Feature, Schema, from_legacy_card

Columns = Mapping[str, Any]
"""Raw columnar features: name -> sequence (list or numpy array) with one value per row."""

Side = Literal["user", "context", "item", "candidate"]

# The group tensors' names by the schema's rule (``<group>_id``, ``<group>_cat``,
# ``<group>_num``; ``Schema.inputs``), and ``history``, the sequence a /v1/rank body's
# top-level field fills. A model's own inputs are ``schema.inputs()`` /
# ``schema.batch_inputs()``; ``USER_INPUTS``, ``ITEM_INPUTS`` and ``MODEL_INPUTS`` (below,
# derived lazily by that rule from feed_ranker's schema file) are the inputs of every schema
# with an id, categoricals and numerics on both sides and one sequence ``history``: what
# ``serving.train.model.FeedRanker`` takes, in its argument order.
USER_ID, USER_CAT, USER_NUM, HISTORY = "user_id", "user_cat", "user_num", "history"
ITEM_ID, ITEM_CAT, ITEM_NUM = "item_id", "item_cat", "item_num"
__all__ = ["ITEM_TO_USER", "PROBS", "FeatureEncoder", "NumericStats", "Vocabulary",
           "columns_from_rows"]

# Where each side's features sit in a request body, for error messages.
_FIELD_PREFIX: dict[str, str] = {"user": "user", "context": "context", "item": "candidates",
                                 "candidate": "candidates"}
_ABSENT_VALUE = object()


def columns_from_rows(rows: Sequence[Any], side: Side) -> Mapping[str, list[Any]]:
    """Turn row-wise JSON (a list of objects) into columns; absent keys become ``None``.

    The columns are built when first read, so the cost is rows x the features the encoder
    reads, not rows x every distinct key: a body whose rows each carry keys of their own
    (unknown keys are ignored) costs time linear in its size. A value in a column that is
    read must be a single value (not a list or object).

    Raises:
        InvalidFeature: a row is not a JSON object; (on reading a column) a value in it is
            a list or an object.
    """
    if set(map(type, rows)) - {dict}:
        i = next(i for i, row in enumerate(rows) if not isinstance(row, dict))
        prefix = _FIELD_PREFIX[side]
        raise InvalidFeature(f"'{prefix}[{i}]' must be an object", field=f"{prefix}[{i}]")
    return _RowColumns(rows, _FIELD_PREFIX[side])


class _RowColumns(Mapping[str, list[Any]]):
    """The lazily built columns of :func:`columns_from_rows` (each built once, on read)."""

    def __init__(self, rows: Sequence[dict[str, Any]], prefix: str) -> None:
        self._rows = rows
        self._prefix = prefix
        self._built: dict[str, list[Any]] = {}
        self._names: dict[str, None] | None = None

    def _all_names(self) -> dict[str, None]:
        if self._names is None:  # linear in the keys of the body, one pass in C
            self._names = dict.fromkeys(itertools.chain.from_iterable(self._rows))
        return self._names

    def __getitem__(self, name: str) -> list[Any]:
        column = self._built.get(name)
        if column is not None:
            return column
        if self._names is not None and name not in self._names:
            raise KeyError(name)  # no row has it: known without another pass
        column = [row.get(name, _ABSENT) for row in self._rows]
        kinds = set(map(type, column))
        if not column or kinds == {_Absent}:
            raise KeyError(name)
        if list in kinds or dict in kinds:
            i = next(i for i, v in enumerate(column) if isinstance(v, (list, dict)))
            where = f"{self._prefix}[{i}].{name}"
            raise InvalidFeature(f"'{where}' must be a single value", field=where)
        if _Absent in kinds:
            column = [None if v is _ABSENT else v for v in column]
        self._built[name] = column
        return column

    def __iter__(self) -> Iterator[str]:
        return iter(self._all_names())

    def __len__(self) -> int:
        return len(self._all_names())


class _Absent:
    """Marks a key a row does not have (``None`` is a value a row may hold)."""


_ABSENT = _Absent()


class FeatureEncoder:
    """A schema, its fitted vocabularies and numeric constants, and the encode functions."""

    def __init__(self, schema: Schema, lookups: Mapping[str, Lookup],
                 numeric: Mapping[str, NumericStats]) -> None:
        missing = {f.name for f in schema.features if f.categorical} - set(lookups)
        missing |= {f.name for f in schema.features if f.kind == "numeric"} - set(numeric)
        if missing:
            raise ValueError(f"encoder state lacks features: {sorted(missing)}")
        self.schema = schema
        self.vocabularies = dict(lookups)
        self.numeric = dict(numeric)
        self._plans = {g: _Group(self, g) for g in ("user", "item")}
        self._known = {side: schema.feature_names(side) for side in ("user", "context")}
        self._known["candidate"] = schema.feature_names("candidate")
        self._sequences = schema.group_features("user", "seq")

    @property
    def history_length(self) -> int:
        seqs = self.schema.group_features("user", "seq")
        return seqs[0].length or 0 if seqs else 0

    # -- fitting and persistence ---------------------------------------------------------

    @classmethod
    def fit(cls, schema: Schema, columns: Columns) -> FeatureEncoder:
        """Learn vocabularies and numeric constants from training-day columns.

        ``columns`` holds every feature by its name (one row per training impression);
        values seen fewer than the feature's ``min_count`` times stay out of the
        vocabulary (they map to the OOV id, as unseen values at serving time will).
        """
        lookups: dict[str, Lookup] = {}
        for f in schema.features:
            if not f.categorical:
                continue
            if f.transform == "hash":
                lookups[f.name] = HashBuckets(f)
                continue
            raw = np.asarray(columns[f.name], dtype=object)
            raw = raw[[v is not None and v == v for v in raw]]  # drop None and NaN
            if f.kind == "categorical_id":
                raw = raw.astype(np.float64).astype(np.int64)
            values, counts = np.unique(raw.astype(str) if f.kind == "categorical_string"
                                       else raw, return_counts=True)
            lookups[f.name] = Vocabulary(f, values[counts >= f.min_count].tolist())
        numeric = {f.name: NumericStats.fit(f, columns[f.name])
                   for f in schema.features if f.kind == "numeric"}
        return cls(schema, lookups, numeric)

    def to_card(self) -> dict[str, Any]:
        """The encoder's fitted state as a JSON-ready dict for the model card's
        ``features`` (the schema itself goes to the card's ``schema``)."""
        legacy_side = {"candidate": "item"}
        return {
            "history_length": self.history_length,
            "oov_id": 0,
            "categorical": [
                {"name": v.spec.name, "side": legacy_side.get(v.spec.side, v.spec.side),
                 "kind": "int" if v.spec.kind == "categorical_id" else "str",
                 "required": v.spec.required, "transform": v.spec.transform,
                 "size": v.size + 1, "vocab": v.keys()}
                for v in self.vocabularies.values()
            ],
            "numeric": [
                {"name": s.spec.name, "side": legacy_side.get(s.spec.side, s.spec.side),
                 "transform": s.spec.transform, "mean": s.mean, "std": s.std,
                 "default": s.default}
                for s in self.numeric.values()
            ],
        }

    @classmethod
    def from_card(cls, card: Mapping[str, Any], schema: Schema | Mapping[str, Any] | None = None,
                  ) -> FeatureEncoder:
        """Rebuild the encoder from a model card's ``features`` section and its ``schema``
        (a card written before schemas existed implies one: :func:`from_legacy_card`).

        Raises:
            SchemaError: the schema is invalid or does not match the fitted state.
        """
        if schema is None or not schema:
            schema = from_legacy_card(card, ["task"], {}, "model")
        elif not isinstance(schema, Schema):
            schema = Schema.parse(schema)
        state = {c["name"]: c for c in card["categorical"]}
        lookups: dict[str, Lookup] = {}
        for f in schema.features:
            if f.categorical:
                lookups[f.name] = HashBuckets(f) if f.transform == "hash" \
                    else Vocabulary(f, state[f.name]["vocab"])
        numeric = {c["name"]: NumericStats(schema.feature(c["name"]), c["mean"], c["std"],
                                           c["default"]) for c in card["numeric"]}
        return cls(schema, lookups, numeric)

    def cardinalities(self) -> dict[str, int]:
        """Embedding-table sizes (vocabulary + the OOV id) per categorical feature."""
        return {name: v.size + 1 for name, v in self.vocabularies.items()}

    def id_limits(self) -> dict[str, int | npt.NDArray[np.int64]]:
        """Per id tensor, the exclusive upper bound of its ids (an array per column for
        ``*_cat``): what a raw ``/v2`` tensor must stay below."""
        sizes = self.cardinalities()
        out: dict[str, int | npt.NDArray[np.int64]] = {}
        for group, plan in self._plans.items():
            if plan.id is not None:
                out[f"{group}_id"] = sizes[plan.id.spec.name]
            if plan.cat:
                out[f"{group}_cat"] = np.array([sizes[v.spec.name] for v in plan.cat])
        for f in self.schema.group_features("user", "seq"):
            assert f.vocabulary_of is not None
            out[f.name] = sizes[f.vocabulary_of]
        return out

    def unknown_features(self, user: Mapping[str, Any], context: Mapping[str, Any],
                         candidates: Mapping[str, Any]) -> list[str]:
        """Request-body paths of the names a request sent that the schema does not know
        (``user.x``, ``context.y``, ``candidates.z``): they are not read."""
        out = [f"user.{k}" for k in user if k not in self._known["user"]]
        out += [f"context.{k}" for k in context if k not in self._known["context"]]
        out += [f"candidates.{k}" for k in candidates if k not in self._known["candidate"]]
        return out

    @property
    def candidate_id(self) -> str:
        """The candidate feature a ranked response returns (the item group's id)."""
        found = self.schema.id_feature("item")
        assert found is not None  # Schema.parse guarantees one
        return found.name

    def refuse_unknown(self, user: Mapping[str, Any], context: Mapping[str, Any],
                       candidates: Mapping[str, Any]) -> None:
        """Strict mode: a request naming a feature the schema lacks is refused.

        Raises:
            InvalidFeature: naming the first unknown field, and listing all of them.
        """
        unknown = self.unknown_features(user, context, candidates)
        if unknown:
            raise InvalidFeature(f"unknown feature(s) for schema '{self.schema.name}': "
                                 f"{', '.join(unknown)}", field=unknown[0])

    def describe(self) -> dict[str, Any]:
        """What a caller may send and get back: the schema's features (with the request
        field each is read from), tasks and default weights; JSON-ready."""
        return {"schema": self.schema.name,
                "features": [{**f.to_dict(), "field": f.path}
                             for f in self.schema.features],
                "tasks": [t.name for t in self.schema.tasks],
                "value_weights": dict(self.schema.value_weights),
                "inputs": [name for name, _, _ in self.schema.inputs()]}

    # -- encoding ------------------------------------------------------------------------

    def encode_users(
        self, users: Columns, contexts: Columns, histories: Sequence[Any] | None, n: int
    ) -> dict[str, np.ndarray]:
        """User-group tensors for ``n`` request rows. ``histories``: one list of ids per
        row, oldest first, for the id sequence named ``history`` (other sequences are read
        from ``users``).

        Raises:
            MissingFeature, InvalidFeature: see the module docstring.
        """
        def column(f: Feature) -> Any:
            return (contexts if f.side == "context" else users).get(f.name)

        out = self._plans["user"].encode(column, n)
        for f in self._sequences:
            rows = histories if f.name == HISTORY and histories is not None \
                else users.get(f.name, [None] * n)
            out[f.name] = self._sequence(f, rows, n)
        return out

    def encode_items(self, items: Columns, n: int) -> dict[str, np.ndarray]:
        """Candidate tensors for ``n`` rows (``item_id``, ``item_cat``, ``item_num``).

        Raises:
            MissingFeature, InvalidFeature: see the module docstring.
        """
        return self._plans["item"].encode(lambda f: items.get(f.name), n)

    def encode_request(self, user: Mapping[str, Any], context: Mapping[str, Any],
                       history: Any, candidates: Columns, n: int) -> dict[str, np.ndarray]:
        """Every input of one ``/v1/rank`` request: one user row (plain JSON values in
        ``user`` and ``context``, ``history`` its id list) and ``n`` candidates; identical
        to :meth:`encode_items` + :meth:`encode_users` on one-row columns, but without
        numpy's per-call cost for each single user value.

        Raises:
            MissingFeature, InvalidFeature: see the module docstring.
        """
        tensors = self.encode_items(candidates, n)
        tensors.update(self._plans["user"].encode_one(user, context))
        for f in self._sequences:
            rows = [history] if f.name == HISTORY else [user.get(f.name)]
            tensors[f.name] = self._sequence(f, rows, 1)
        tensors[ITEM_TO_USER] = np.zeros(n, dtype=np.int64)
        return tensors

    def encode_history(self, histories: Sequence[Any], n: int) -> npt.NDArray[np.int64]:
        """The ``history`` sequence: ``[n, length]`` ids, most recent last, left-padded
        with 0.

        Raises:
            InvalidFeature: not one list of integers per row.
        """
        return self._sequence(self.schema.feature(HISTORY), histories, n)

    def _sequence(self, f: Feature, histories: Sequence[Any], n: int) -> npt.NDArray[np.int64]:
        path = f.path
        if len(histories) != n:
            raise InvalidFeature(f"'{path}' has {len(histories)} rows, expected {n}", field=path)
        length = f.length or 0
        out = np.zeros((n, length), dtype=np.int64)
        assert f.vocabulary_of is not None
        vocab = self.vocabularies[f.vocabulary_of]
        for row, watched in enumerate(histories):
            if watched is None:
                continue
            if not isinstance(watched, (list, tuple, np.ndarray)):
                raise InvalidFeature(f"'{path}' must be a list of {f.vocabulary_of} values",
                                     field=path)
            recent = list(watched[-length:]) if not isinstance(watched, np.ndarray) \
                else watched[-length:]
            if len(recent) == 0:
                continue
            try:
                ids = vocab.lookup(recent, len(recent))
            except (InvalidFeature, MissingFeature):
                raise InvalidFeature(f"'{path}' must hold integer {f.vocabulary_of} values",
                                     field=path) from None
            out[row, length - len(ids):] = ids
        return out


class _Group:
    """One group's (user or item) compiled encoding plan: its id, categorical and numeric
    features in schema order, looked up and transformed into preallocated tensors."""

    def __init__(self, encoder: FeatureEncoder, group: str) -> None:
        schema = encoder.schema
        self.group = group
        ids = schema.group_features(group, "id")
        self.id = encoder.vocabularies[ids[0].name] if ids else None
        self.cat = [encoder.vocabularies[f.name] for f in schema.group_features(group, "cat")]
        self.num = [encoder.numeric[f.name] for f in schema.group_features(group, "num")]

    def encode(self, column: Any, n: int) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        cat = np.empty((n, len(self.cat)), dtype=np.int64)
        for j, v in enumerate(self.cat):
            cat[:, j] = v.lookup(column(v.spec), n)
        num = np.empty((n, len(self.num)), dtype=np.float64)
        for j, s in enumerate(self.num):
            num[:, j] = s.column(column(s.spec), n)
        if self.id is not None:
            out[f"{self.group}_id"] = self.id.lookup(column(self.id.spec), n)
        if self.cat:
            out[f"{self.group}_cat"] = cat
        if self.num:
            out[f"{self.group}_num"] = transform_matrix(num, self.num)
        return out

    def encode_one(self, user: Mapping[str, Any], context: Mapping[str, Any]
                   ) -> dict[str, np.ndarray]:
        """One row from plain values; any value the fast path cannot decide goes through
        the column path, so errors and odd types answer exactly as :meth:`encode` does."""
        def raw(f: Feature) -> Any:
            return (context if f.side == "context" else user).get(f.name, _ABSENT_VALUE)

        cat = np.empty((1, len(self.cat)), dtype=np.int64)
        for j, v in enumerate(self.cat):
            cat[0, j] = _one_id(v, raw(v.spec))
        num = np.empty((1, len(self.num)), dtype=np.float64)
        for j, s in enumerate(self.num):
            value = raw(s.spec)
            kind = type(value)
            if value is _ABSENT_VALUE or value is None:
                num[0, j] = s.default
            elif (kind is float and value - value == 0.0) or (kind is int
                                                               and -2**53 < value < 2**53):
                num[0, j] = value
            else:
                num[0, j] = s.column([value], 1)[0]
        out: dict[str, np.ndarray] = {}
        if self.id is not None:
            out[f"{self.group}_id"] = np.array([_one_id(self.id, raw(self.id.spec))],
                                               dtype=np.int64)
        if self.cat:
            out[f"{self.group}_cat"] = cat
        if self.num:
            out[f"{self.group}_num"] = transform_matrix(num, self.num)
        return out


def _one_id(lookup: Lookup, value: Any) -> int:
    if value is _ABSENT_VALUE:
        return int(lookup.lookup(None, 1)[0])
    if isinstance(lookup, Vocabulary):
        one = lookup.lookup_one(value)
        if one is not None:
            return one
    return int(lookup.lookup([value], 1)[0])



# -- the old module constants (KuaiRand's features as code), for callers not yet reading
# ``encoder.schema``: derived from the default training schema file, never written here.
_DEFAULT_SCHEMA = Path(__file__).resolve().parents[1] / "train" / "schemas" / "kuairand.yaml"


@dataclass(frozen=True)
class CategoricalSpec:
    """Deprecated view of a categorical :class:`Feature` (side ``item``, kind int/str)."""

    name: str
    side: str
    kind: str
    required: bool = False


@dataclass(frozen=True)
class NumericSpec:
    """Deprecated view of a numeric :class:`Feature`."""

    name: str
    side: str


def _legacy_constants() -> dict[str, Any]:
    schema = Schema.load(_DEFAULT_SCHEMA)

    def cat(f: Feature) -> CategoricalSpec:
        return CategoricalSpec(f.name, "item" if f.side == "candidate" else f.side,
                               "int" if f.kind == "categorical_id" else "str", f.required)

    def num(f: Feature) -> NumericSpec:
        return NumericSpec(f.name, "item" if f.side == "candidate" else f.side)

    out: dict[str, Any] = {
        "USER_CATEGORICAL": tuple(cat(f) for f in schema.group_features("user", "cat")),
        "ITEM_CATEGORICAL": tuple(cat(f) for f in schema.group_features("item", "cat")),
        "USER_NUMERIC": tuple(num(f) for f in schema.group_features("user", "num")),
        "ITEM_NUMERIC": tuple(num(f) for f in schema.group_features("item", "num")),
        "USER_ID_SPEC": cat(schema.group_features("user", "id")[0]),
        "ITEM_ID_SPEC": cat(schema.group_features("item", "id")[0]),
        "HISTORY_LENGTH": schema.feature(HISTORY).length,
    }
    users, items, index = schema.batch_inputs()
    out.update(USER_INPUTS=users, ITEM_INPUTS=items, MODEL_INPUTS=(*users, *items, index))
    out["ALL_CATEGORICAL"] = (out["USER_ID_SPEC"], out["ITEM_ID_SPEC"],
                              *out["USER_CATEGORICAL"], *out["ITEM_CATEGORICAL"])
    out["ALL_NUMERIC"] = (*out["USER_NUMERIC"], *out["ITEM_NUMERIC"])
    return out


_LEGACY: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    if name in {"USER_CATEGORICAL", "ITEM_CATEGORICAL", "USER_NUMERIC", "ITEM_NUMERIC",
                "USER_ID_SPEC", "ITEM_ID_SPEC", "HISTORY_LENGTH", "ALL_CATEGORICAL",
                "ALL_NUMERIC", "USER_INPUTS", "ITEM_INPUTS", "MODEL_INPUTS"}:
        if not _LEGACY:
            _LEGACY.update(_legacy_constants())
        return _LEGACY[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
