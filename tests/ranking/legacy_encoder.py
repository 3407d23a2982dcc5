"""FROZEN COPY of the feature encoder as it was before the O(1) lookups and the schema
(``serving/ranking/features.py`` at commit cfefbd4): the oracle the parity tests compare the
current encoder against. Do not edit; it is test data, not code to maintain."""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from serving.errors import InvalidFeature, MissingFeature
from serving.wire.columns import DictColumn

Columns = Mapping[str, Any]
"""Raw columnar features: name -> sequence (list or numpy array) with one value per row."""

Side = Literal["user", "context", "item"]
Kind = Literal["int", "str"]

# Model input and output names: the contract between encoder, graph, config.pbtxt and backends.
USER_ID, USER_CAT, USER_NUM, HISTORY = "user_id", "user_cat", "user_num", "history"
ITEM_ID, ITEM_CAT, ITEM_NUM, ITEM_TO_USER = "item_id", "item_cat", "item_num", "item_to_user"
USER_INPUTS = (USER_ID, USER_CAT, USER_NUM, HISTORY)
ITEM_INPUTS = (ITEM_ID, ITEM_CAT, ITEM_NUM)
MODEL_INPUTS = (*USER_INPUTS, *ITEM_INPUTS, ITEM_TO_USER)
PROBS = "probs"

HISTORY_LENGTH = 20
"""Most recent watched videos kept per request; older ones are dropped, fewer are padded."""

# Where each side's features sit in a request body, for error messages.
_FIELD_PREFIX: dict[str, str] = {"user": "user", "context": "context", "item": "candidates"}


@dataclass(frozen=True)
class CategoricalSpec:
    """A categorical feature: raw values are ints or strings mapped through a vocabulary."""

    name: str
    side: Side
    kind: Kind
    required: bool = False


@dataclass(frozen=True)
class NumericSpec:
    """A numeric feature, ``log1p``-transformed and standardised."""

    name: str
    side: Side


def _onehot(i: int) -> CategoricalSpec:
    return CategoricalSpec(f"onehot_feat{i}", "user", "int")


# The id features are separate model inputs (USER_ID, ITEM_ID) because the graph treats them
# specially (wide memorisation, history lookup); every other categorical goes into *_CAT.
USER_ID_SPEC = CategoricalSpec("user_id", "user", "int", required=True)
ITEM_ID_SPEC = CategoricalSpec("video_id", "item", "int", required=True)

USER_CATEGORICAL: tuple[CategoricalSpec, ...] = (
    CategoricalSpec("user_active_degree", "user", "str"),
    CategoricalSpec("is_live_streamer", "user", "int"),
    CategoricalSpec("is_video_author", "user", "int"),
    CategoricalSpec("follow_user_num_range", "user", "str"),
    CategoricalSpec("fans_user_num_range", "user", "str"),
    CategoricalSpec("friend_user_num_range", "user", "str"),
    CategoricalSpec("register_days_range", "user", "str"),
    *(_onehot(i) for i in range(18)),
    CategoricalSpec("tab", "context", "int"),
    CategoricalSpec("hour", "context", "int"),
)
USER_NUMERIC: tuple[NumericSpec, ...] = (
    NumericSpec("follow_user_num", "user"),
    NumericSpec("fans_user_num", "user"),
    NumericSpec("friend_user_num", "user"),
    NumericSpec("register_days", "user"),
)
ITEM_CATEGORICAL: tuple[CategoricalSpec, ...] = (
    CategoricalSpec("author_id", "item", "int"),
    CategoricalSpec("video_type", "item", "str"),
    CategoricalSpec("upload_type", "item", "str"),
    CategoricalSpec("music_id", "item", "int"),
    CategoricalSpec("music_type", "item", "int"),
    CategoricalSpec("tag", "item", "int"),
)
ITEM_NUMERIC: tuple[NumericSpec, ...] = (
    NumericSpec("duration_ms", "item"),
    NumericSpec("age_days", "item"),
    NumericSpec("server_width", "item"),
    NumericSpec("server_height", "item"),
)
ALL_CATEGORICAL = (USER_ID_SPEC, ITEM_ID_SPEC, *USER_CATEGORICAL, *ITEM_CATEGORICAL)
ALL_NUMERIC = (*USER_NUMERIC, *ITEM_NUMERIC)


def field_path(side: Side, name: str) -> str:
    """The request-body path of a feature, used in every error message."""
    return f"{_FIELD_PREFIX[side]}.{name}"


class Vocabulary:
    """Maps raw categorical values to ids ``1..n``; anything else to 0.

    Integer vocabularies look up whole numpy arrays with one ``searchsorted`` (no Python loop
    per value), which is what keeps the binary request path cheap.
    """

    def __init__(self, spec: CategoricalSpec, values: Iterable[Any]) -> None:
        self.spec = spec
        self.path = field_path(spec.side, spec.name)
        if spec.kind == "int":
            keys = np.asarray(sorted({int(v) for v in values}), dtype=np.int64)
            self._int_keys = keys
            self._str_ids: dict[str, int] = {}
            self._int_ids = {int(k): i + 1 for i, k in enumerate(keys)}
            self.size = len(keys)
        else:
            ordered = sorted({str(v) for v in values})
            self._int_keys = np.empty(0, dtype=np.int64)
            self._str_ids = {v: i + 1 for i, v in enumerate(ordered)}
            self._int_ids = {}
            self.size = len(ordered)

    def keys(self) -> list[Any]:
        """Vocabulary keys in id order (id = position + 1), for the model card."""
        if self.spec.kind == "int":
            return [int(k) for k in self._int_keys]
        return sorted(self._str_ids, key=self._str_ids.__getitem__)

    def lookup(self, raw: Any, n: int) -> npt.NDArray[np.int64]:
        """Ids for ``n`` raw values; a ``None`` column means "absent" (all ids 0).

        Raises:
            MissingFeature: the column is absent and the feature is required.
            InvalidFeature: wrong length, wrong type, non-integer or non-finite value.
        """
        if raw is None:
            if self.spec.required:
                raise MissingFeature(f"required feature '{self.path}' is missing", field=self.path)
            return np.zeros(n, dtype=np.int64)
        if n == 1 and type(raw) is list and len(raw) == 1:
            one = self._lookup_one(raw[0])
            if one is not None:
                return np.array([one], dtype=np.int64)
        if self.spec.kind == "int":
            return self._lookup_int(raw, n)
        return self._lookup_str(raw, n)

    def _lookup_one(self, value: Any) -> int | None:
        """The id of a single plain value (a request's user-side feature) without numpy's
        per-call overhead; ``None`` where the column path must decide (errors, odd types),
        so both paths always give the same answer."""
        if self.spec.kind == "str":
            if value is None:
                return 0
            kind = type(value)
            return self._str_ids.get(value if kind is str else str(value), 0) \
                if kind is str or kind is int else None
        if value is None or (type(value) is float and value != value):
            return None if self.spec.required else 0
        if type(value) is float:
            if not (math.isfinite(value) and value.is_integer()):
                return None
        elif type(value) is not int:
            return None
        if abs(value) > 2**62:
            return None
        return self._int_ids.get(int(float(value)), 0)

    def _lookup_int(self, raw: Any, n: int) -> npt.NDArray[np.int64]:
        values = _as_float_column(raw, n, self.path)
        missing = np.isnan(values)
        if self.spec.required and missing.any():
            raise MissingFeature(f"required feature '{self.path}' is null", field=self.path)
        present = values[~missing]
        if not np.isfinite(present).all() or (present != np.floor(present)).any():
            raise InvalidFeature(f"'{self.path}' must hold integers", field=self.path)
        if np.abs(present).max(initial=0.0) > 2.0**62:
            raise InvalidFeature(f"'{self.path}' holds an integer out of range", field=self.path)
        keys = np.where(missing, 0.0, values).astype(np.int64)
        pos = np.searchsorted(self._int_keys, keys)
        pos_clipped = np.minimum(pos, max(self.size - 1, 0))
        found = (self.size > 0) & (self._int_keys[pos_clipped] == keys) & ~missing
        return np.where(found, pos_clipped + 1, 0).astype(np.int64)

    def _lookup_str(self, raw: Any, n: int) -> npt.NDArray[np.int64]:
        _check_length(raw, n, self.path)
        if isinstance(raw, DictColumn):
            table = np.array([*(self._str_ids.get(str(v), 0) for v in raw.values), 0])
            return table[raw.codes].astype(np.int64)
        ids = np.zeros(n, dtype=np.int64)
        get = self._str_ids.get
        for i, v in enumerate(raw):
            if v is None:
                continue
            if not isinstance(v, (str, int)) or isinstance(v, bool):
                raise InvalidFeature(f"'{self.path}' must hold strings", field=self.path)
            ids[i] = get(str(v), 0)
        return ids


@dataclass(frozen=True)
class NumericStats:
    """Training-day constants for one numeric feature."""

    spec: NumericSpec
    mean: float
    std: float
    default: float

    @property
    def path(self) -> str:
        return field_path(self.spec.side, self.spec.name)

    def transform(self, raw: Any, n: int) -> npt.NDArray[np.float32]:
        """Normalised values; absent column, ``None`` and ``NaN`` take the default.

        Raises:
            InvalidFeature: wrong length or type, or an infinite value.
        """
        if raw is None:
            values = np.full(n, self.default, dtype=np.float64)
        else:
            values = _as_float_column(raw, n, self.path)
            if np.isinf(values).any():
                raise InvalidFeature(f"'{self.path}' must be finite", field=self.path)
            values = np.where(np.isnan(values), self.default, values)
        out = (np.log1p(np.maximum(values, 0.0)) - self.mean) / self.std
        return out.astype(np.float32)

    @classmethod
    def fit(cls, spec: NumericSpec, raw: npt.ArrayLike) -> NumericStats:
        values = np.asarray(raw, dtype=np.float64)
        values = values[np.isfinite(values)]
        logged = np.log1p(np.maximum(values, 0.0))
        std = float(logged.std()) or 1.0
        return cls(spec, float(logged.mean()), std, float(np.median(values)))


def _check_length(raw: Any, n: int, path: str) -> None:
    if isinstance(raw, (str, bytes)) or not hasattr(raw, "__len__"):
        raise InvalidFeature(f"'{path}' must be a list with one value per row", field=path)
    if len(raw) != n:
        raise InvalidFeature(f"'{path}' has {len(raw)} values, expected {n}", field=path)


def _as_float_column(raw: Any, n: int, path: str) -> npt.NDArray[np.float64]:
    """A float64 column where ``None`` became ``NaN``; rejects strings and nested lists."""
    _check_length(raw, n, path)
    if isinstance(raw, np.ndarray) and raw.dtype.kind in "iuf":
        return raw.astype(np.float64, copy=False)
    try:
        values = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidFeature(f"'{path}' must hold numbers", field=path) from None
    if values.ndim != 1 or any(isinstance(v, (bool, np.bool_)) for v in raw[:1]):
        raise InvalidFeature(f"'{path}' must hold numbers", field=path)
    return values


def columns_from_rows(rows: Sequence[Any], side: Side) -> dict[str, list[Any]]:
    """Turn row-wise JSON (a list of objects) into columns; absent keys become ``None``.

    Raises:
        InvalidFeature: a row is not a JSON object.
    """
    prefix = _FIELD_PREFIX[side]
    names: dict[str, None] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise InvalidFeature(f"'{prefix}[{i}]' must be an object", field=f"{prefix}[{i}]")
        names.update(dict.fromkeys(row))
    return {name: [row.get(name) for row in rows] for name in names}


class FeatureEncoder:
    """Fitted vocabularies and normalisation constants, and the encode functions."""

    def __init__(
        self,
        vocabularies: Mapping[str, Vocabulary],
        numeric: Mapping[str, NumericStats],
        history_length: int = HISTORY_LENGTH,
    ) -> None:
        missing = {s.name for s in ALL_CATEGORICAL} - set(vocabularies)
        missing |= {s.name for s in ALL_NUMERIC} - set(numeric)
        if missing:
            raise ValueError(f"encoder state lacks features: {sorted(missing)}")
        self.vocabularies = dict(vocabularies)
        self.numeric = dict(numeric)
        self.history_length = history_length

    # -- fitting and persistence ---------------------------------------------------------

    @classmethod
    def fit(cls, columns: Columns, min_count: int = 1) -> FeatureEncoder:
        """Learn vocabularies and numeric constants from training-day columns.

        ``columns`` holds every feature by its raw name (one row per training impression);
        values seen fewer than ``min_count`` times stay out of the vocabulary (they map to
        the OOV id, as unseen values at serving time will).
        """
        vocabularies = {}
        for spec in ALL_CATEGORICAL:
            raw = np.asarray(columns[spec.name], dtype=object)
            raw = raw[[v is not None and v == v for v in raw]]  # drop None and NaN
            if spec.kind == "int":
                raw = raw.astype(np.float64).astype(np.int64)
            values, counts = np.unique(raw.astype(str) if spec.kind == "str" else raw,
                                       return_counts=True)
            vocabularies[spec.name] = Vocabulary(spec, values[counts >= min_count].tolist())
        numeric = {s.name: NumericStats.fit(s, columns[s.name]) for s in ALL_NUMERIC}
        return cls(vocabularies, numeric)

    def to_card(self) -> dict[str, Any]:
        """The encoder's fitted state as a JSON-ready dict for the model card."""
        return {
            "history_length": self.history_length,
            "oov_id": 0,
            "categorical": [
                {"name": v.spec.name, "side": v.spec.side, "kind": v.spec.kind,
                 "required": v.spec.required, "size": v.size + 1, "vocab": v.keys()}
                for v in self.vocabularies.values()
            ],
            "numeric": [
                {"name": s.spec.name, "side": s.spec.side, "transform": "log1p_standardize",
                 "mean": s.mean, "std": s.std, "default": s.default}
                for s in self.numeric.values()
            ],
        }

    @classmethod
    def from_card(cls, card: Mapping[str, Any]) -> FeatureEncoder:
        """Rebuild the encoder from a model card's ``features`` section."""
        specs = {s.name: s for s in ALL_CATEGORICAL}
        nspecs = {s.name: s for s in ALL_NUMERIC}
        vocabularies = {c["name"]: Vocabulary(specs[c["name"]], c["vocab"])
                        for c in card["categorical"]}
        numeric = {c["name"]: NumericStats(nspecs[c["name"]], c["mean"], c["std"], c["default"])
                   for c in card["numeric"]}
        return cls(vocabularies, numeric, card.get("history_length", HISTORY_LENGTH))

    def cardinalities(self) -> dict[str, int]:
        """Embedding-table sizes (vocabulary + the OOV id) per categorical feature."""
        return {name: v.size + 1 for name, v in self.vocabularies.items()}

    # -- encoding ------------------------------------------------------------------------

    def encode_users(
        self, users: Columns, contexts: Columns, histories: Sequence[Any], n: int
    ) -> dict[str, np.ndarray]:
        """User-side tensors for ``n`` request rows: ``user_id``, ``user_cat``, ``user_num``,
        ``history``. ``histories`` holds one list of watched video ids per row, oldest first.

        Raises:
            MissingFeature, InvalidFeature: see the module docstring.
        """
        def column(spec_side: Side, name: str) -> Any:
            return (contexts if spec_side == "context" else users).get(name)

        cat = [self.vocabularies[s.name].lookup(column(s.side, s.name), n)
               for s in USER_CATEGORICAL]
        num = [self.numeric[s.name].transform(users.get(s.name), n) for s in USER_NUMERIC]
        return {
            USER_ID: self.vocabularies[USER_ID_SPEC.name].lookup(users.get("user_id"), n),
            USER_CAT: np.stack(cat, axis=1),
            USER_NUM: np.stack(num, axis=1),
            HISTORY: self.encode_history(histories, n),
        }

    def encode_items(self, items: Columns, n: int) -> dict[str, np.ndarray]:
        """Candidate-side tensors for ``n`` rows: ``item_id``, ``item_cat``, ``item_num``.

        Raises:
            MissingFeature, InvalidFeature: see the module docstring.
        """
        cat = [self.vocabularies[s.name].lookup(items.get(s.name), n) for s in ITEM_CATEGORICAL]
        num = [self.numeric[s.name].transform(items.get(s.name), n) for s in ITEM_NUMERIC]
        return {
            ITEM_ID: self.vocabularies[ITEM_ID_SPEC.name].lookup(items.get("video_id"), n),
            ITEM_CAT: np.stack(cat, axis=1),
            ITEM_NUM: np.stack(num, axis=1),
        }

    def encode_history(self, histories: Sequence[Any], n: int) -> npt.NDArray[np.int64]:
        """``[n, history_length]`` video ids, most recent last, left-padded with 0.

        Raises:
            InvalidFeature: not one list of integers per row.
        """
        if len(histories) != n:
            raise InvalidFeature(f"'history' has {len(histories)} rows, expected {n}",
                                 field="history")
        length = self.history_length
        out = np.zeros((n, length), dtype=np.int64)
        vocab = self.vocabularies[ITEM_ID_SPEC.name]
        for row, watched in enumerate(histories):
            if watched is None:
                continue
            if not isinstance(watched, (list, tuple, np.ndarray)):
                raise InvalidFeature("'history' must be a list of video ids", field="history")
            recent = list(watched[-length:]) if not isinstance(watched, np.ndarray) \
                else watched[-length:]
            if len(recent) == 0:
                continue
            try:
                ids = vocab.lookup(recent, len(recent))
            except (InvalidFeature, MissingFeature):
                raise InvalidFeature("'history' must hold integer video ids",
                                     field="history") from None
            out[row, length - len(ids):] = ids
        return out
