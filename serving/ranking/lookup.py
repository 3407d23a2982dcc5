"""Categorical lookups at O(1) per value: raw ids or strings -> model ids.

Id 0 means "unknown or missing"; known values get ``1..size`` in sorted key order (the
order the model card records). How a lookup runs depends on the keys, chosen once when
the vocabulary is built:

* integer keys in a bounded range (span at most ``max(4096, 8 x size)``): a direct-index
  remap table, ``ids = table[min(key - lo, span)]`` in unsigned arithmetic, two numpy
  passes whatever the value (out-of-range keys land on a trailing 0);
* integer keys spread over a wide range (author or music ids): an open-addressing hash
  table (Fibonacci hashing, linear probing at load <= 1/4, a probe bound measured at build
  time), a few numpy passes per probe with no Python per value;
* strings: a dict, consulted once per *distinct* value for dictionary-encoded binary
  columns (:class:`~serving.wire.columns.DictColumn`), once per value for JSON lists;
* ``transform: hash``: a stable hash into ``buckets`` ids (no vocabulary to fit).

Integer columns that are already int64 arrays are used without a copy; float columns
(NaN for missing) are checked to hold integers first.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from serving.errors import InvalidFeature, MissingFeature
from serving.repository.schema import Feature
from serving.wire.columns import DictColumn

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_LIMIT = 2.0**62


def check_length(raw: Any, n: int, path: str) -> None:
    if isinstance(raw, (str, bytes)) or not hasattr(raw, "__len__"):
        raise InvalidFeature(f"'{path}' must be a list with one value per row", field=path)
    if len(raw) != n:
        raise InvalidFeature(f"'{path}' has {len(raw)} values, expected {n}", field=path)


def as_float_column(raw: Any, n: int, path: str) -> npt.NDArray[np.float64]:
    """A float64 column where ``None`` became ``NaN``; rejects strings and nested lists.
    A float64 array comes back as itself (no copy)."""
    check_length(raw, n, path)
    if isinstance(raw, np.ndarray) and raw.dtype.kind in "iuf":
        return raw.astype(np.float64, copy=False)
    try:
        values = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidFeature(f"'{path}' must hold numbers", field=path) from None
    if values.ndim != 1 or any(isinstance(v, (bool, np.bool_)) for v in raw[:1]):
        raise InvalidFeature(f"'{path}' must hold numbers", field=path)
    return values


def int_keys(raw: Any, n: int, path: str, required: bool
             ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_] | None]:
    """Integer keys of a column and its missing mask (``None`` when nothing is missing).

    Raises:
        MissingFeature: a required feature holds a null.
        InvalidFeature: non-integer, non-finite or out-of-range values (beyond 2**62).
    """
    if isinstance(raw, np.ndarray) and raw.dtype.kind in "iu" and raw.ndim == 1:
        check_length(raw, n, path)
        if raw.size and max(abs(float(raw.min())), abs(float(raw.max()))) > _LIMIT:
            raise InvalidFeature(f"'{path}' holds an integer out of range", field=path)
        return raw.astype(np.int64, copy=False), None
    values = as_float_column(raw, n, path)
    missing = np.isnan(values)
    any_missing = bool(missing.any())
    if any_missing and required:
        raise MissingFeature(f"required feature '{path}' is null", field=path)
    present = values[~missing] if any_missing else values
    if not np.isfinite(present).all() or (present != np.floor(present)).any():
        raise InvalidFeature(f"'{path}' must hold integers", field=path)
    if np.abs(present).max(initial=0.0) > _LIMIT:
        raise InvalidFeature(f"'{path}' holds an integer out of range", field=path)
    if any_missing:
        return np.where(missing, 0.0, values).astype(np.int64), missing
    return values.astype(np.int64), None


class IntTable:
    """Integer keys -> ``1..size`` ids with O(1) numpy work per value (module docstring)."""

    def __init__(self, keys: npt.NDArray[np.int64]) -> None:
        self.size = len(keys)
        ids = np.arange(1, self.size + 1, dtype=np.int64)
        self.lo = int(keys[0]) if self.size else 0
        span = int(keys[-1]) - self.lo + 1 if self.size else 0
        self.direct = span <= max(4096, 8 * self.size)
        if self.direct:
            self.span = np.uint64(span)
            self.lo_bits = np.array([self.lo], dtype=np.int64).view(np.uint64)[0]
            self.table = np.zeros(span + 1, dtype=np.int64)  # [span]: out of range -> 0
            self.table[keys - self.lo] = ids
            return
        bits = max(4, math.ceil(math.log2(8 * self.size)))
        while True:
            slots, probes = self._build(keys, ids, bits)
            if probes <= 2 or bits >= math.ceil(math.log2(64 * self.size)):
                break
            bits += 1
        self.shift = np.uint64(64 - bits)
        self.mask = np.uint64((1 << bits) - 1)
        self.slot_keys, self.slot_ids = slots
        self.probes = probes

    def _build(self, keys: npt.NDArray[np.int64], ids: npt.NDArray[np.int64], bits: int
               ) -> tuple[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]], int]:
        capacity, mask = 1 << bits, (1 << bits) - 1
        empty = int(keys[0]) - 1  # no key equals it; a query that does finds id 0 there
        slot_keys = np.full(capacity, empty, dtype=np.int64)
        slot_ids = np.zeros(capacity, dtype=np.int64)
        homes = self._hash(keys, np.uint64(64 - bits)).tolist()
        probes = 0
        for key, key_id, home in zip(keys.tolist(), ids.tolist(), homes, strict=True):
            step = 0
            while slot_ids[(home + step) & mask] != 0:
                step += 1
            slot_keys[(home + step) & mask], slot_ids[(home + step) & mask] = key, key_id
            probes = max(probes, step)
        return (slot_keys, slot_ids), probes

    @staticmethod
    def _hash(keys: npt.NDArray[np.int64], shift: np.uint64) -> npt.NDArray[np.uint64]:
        out: npt.NDArray[np.uint64] = (keys.view(np.uint64) * _GOLDEN) >> shift
        return out

    def lookup(self, keys: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Ids of ``keys`` (0 for a key not in the table)."""
        if self.direct:
            offset = keys.view(np.uint64) - self.lo_bits  # wraps: outside -> >= span
            found: npt.NDArray[np.int64] = self.table[np.minimum(offset, self.span)]
            return found
        home = self._hash(keys, self.shift).view(np.int64)  # < capacity: a valid index
        found_ids = self.slot_ids[home]
        hit = self.slot_keys[home] == keys
        ids: npt.NDArray[np.int64] = np.where(hit, found_ids, 0)
        if not self.probes:
            return ids
        # Only a key whose home slot holds another key may sit further on (load <= 1/8:
        # few do); an unknown key whose home slot is empty stops at once.
        todo = np.flatnonzero(~hit & (found_ids != 0))
        if not len(todo):
            return ids
        rest, start = keys[todo], home[todo]
        for step in range(1, self.probes + 1):
            slot = (start + step) & int(self.mask)
            found = self.slot_keys[slot] == rest
            ids[todo[found]] = self.slot_ids[slot[found]]
        return ids


class Vocabulary:
    """Maps raw categorical values to ids ``1..n``; anything else to 0 (module docstring)."""

    def __init__(self, spec: Feature, values: Iterable[Any]) -> None:
        self.spec = spec
        self.path = spec.path
        self.integer = spec.kind in ("categorical_id", "id_sequence")
        self._str_ids: dict[str, int] = {}
        self._int_ids: dict[int, int] = {}
        if self.integer:
            keys = np.asarray(sorted({int(v) for v in values}), dtype=np.int64)
            self._int_keys = keys
            self._int_ids = {int(k): i + 1 for i, k in enumerate(keys.tolist())}
            self._table = IntTable(keys)
            self.size = len(keys)
        else:
            ordered = sorted({str(v) for v in values})
            self._int_keys = np.empty(0, dtype=np.int64)
            self._str_ids = {v: i + 1 for i, v in enumerate(ordered)}
            self.size = len(ordered)

    def keys(self) -> list[Any]:
        """Vocabulary keys in id order (id = position + 1), for the model card."""
        if self.integer:
            return [int(k) for k in self._int_keys]
        return sorted(self._str_ids, key=self._str_ids.__getitem__)

    def lookup(self, raw: Any, n: int) -> npt.NDArray[np.int64]:
        """Ids for ``n`` raw values; a ``None`` column means "absent" (all ids 0).

        Raises:
            MissingFeature: the column is absent (or null) and the feature is required.
            InvalidFeature: wrong length, wrong type, non-integer or non-finite value.
        """
        if raw is None:
            if self.spec.required:
                raise MissingFeature(f"required feature '{self.path}' is missing",
                                     field=self.path)
            return np.zeros(n, dtype=np.int64)
        if n == 1 and type(raw) is list and len(raw) == 1:
            one = self.lookup_one(raw[0])
            if one is not None:
                return np.array([one], dtype=np.int64)
        if self.integer:
            keys, missing = int_keys(raw, n, self.path, self.spec.required)
            ids = self._table.lookup(keys)
            if missing is not None:
                ids[missing] = 0
            return ids
        return self._lookup_str(raw, n)

    def lookup_one(self, value: Any) -> int | None:
        """The id of a single plain value (a request's user-side feature) without numpy's
        per-call overhead; ``None`` where the column path must decide (errors, odd types),
        so both paths always give the same answer."""
        if not self.integer:
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

    def _lookup_str(self, raw: Any, n: int) -> npt.NDArray[np.int64]:
        check_length(raw, n, self.path)
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


class HashBuckets:
    """``transform: hash``: a stable hash of each value into ids ``1..buckets`` (0 is still
    "missing"). Integers hash with one multiply in numpy; strings with CRC-32, once per
    distinct value of a dictionary-encoded column."""

    def __init__(self, spec: Feature) -> None:
        assert spec.buckets is not None
        self.spec, self.path, self.size = spec, spec.path, spec.buckets
        self.integer = spec.kind == "categorical_id"

    def keys(self) -> list[Any]:
        return []

    def _of_str(self, value: str) -> int:
        return zlib.crc32(value.encode()) % self.size + 1

    def lookup(self, raw: Any, n: int) -> npt.NDArray[np.int64]:
        """Raises: as :meth:`Vocabulary.lookup`."""
        if raw is None:
            if self.spec.required:
                raise MissingFeature(f"required feature '{self.path}' is missing",
                                     field=self.path)
            return np.zeros(n, dtype=np.int64)
        if self.integer:
            keys, missing = int_keys(raw, n, self.path, self.spec.required)
            mixed = (keys.view(np.uint64) * _GOLDEN) >> np.uint64(16)
            ids = (mixed % np.uint64(self.size)).astype(np.int64) + 1
            if missing is not None:
                ids[missing] = 0
            return ids
        check_length(raw, n, self.path)
        if isinstance(raw, DictColumn):
            table = np.array([*(self._of_str(str(v)) for v in raw.values), 0])
            return table[raw.codes].astype(np.int64)
        out = np.zeros(n, dtype=np.int64)
        for i, v in enumerate(raw):
            if v is None:
                continue
            if not isinstance(v, (str, int)) or isinstance(v, bool):
                raise InvalidFeature(f"'{self.path}' must hold strings", field=self.path)
            out[i] = self._of_str(str(v))
        return out


Lookup = Vocabulary | HashBuckets
