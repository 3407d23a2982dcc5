"""Numeric features: training-day constants and transforms, vectorised over a whole group.

A group's numerics (all user-side, or all candidate-side) are gathered into one float64
``[rows, F]`` matrix and transformed with a few numpy passes over all of it, instead of a
dozen per feature. Missing values (absent column, ``None``, ``NaN``) take the feature's
default (the training median unless the schema gives a number); ``+-inf`` is an error.
Transforms (``schema.NUMERIC_TRANSFORMS``): ``log1p_standardize`` (clip at 0, ``log1p``,
standardise with the training mean and std), ``standardize``, ``log1p``, ``identity``,
``clip`` (clip to the feature's ``bounds``, then standardise) and ``bucketize`` (the index
``0..len(boundaries)`` of the bucket the value falls in, a bucket holding its lower
boundary; not standardised).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from serving.errors import InvalidFeature
from serving.ranking.lookup import as_float_column
from serving.repository.schema import Feature

_LOG = {"log1p_standardize", "log1p"}
_STANDARDIZE = {"log1p_standardize", "standardize", "clip"}


@dataclass(frozen=True)
class NumericStats:
    """Training-day constants for one numeric feature."""

    spec: Feature
    mean: float
    std: float
    default: float

    @property
    def path(self) -> str:
        return self.spec.path

    def column(self, raw: Any, n: int) -> npt.NDArray[np.float64]:
        """Raw float64 values with missing ones replaced by the default.

        Raises:
            InvalidFeature: wrong length or type, or an infinite value.
        """
        if raw is None:
            return np.full(n, self.default, dtype=np.float64)
        values = as_float_column(raw, n, self.path)
        if np.isinf(values).any():
            raise InvalidFeature(f"'{self.path}' must be finite", field=self.path)
        return values

    def transform(self, raw: Any, n: int) -> npt.NDArray[np.float32]:
        """Transformed values of one feature (see the module docstring)."""
        return transform_matrix(self.column(raw, n)[:, None].copy(), [self])[:, 0].copy()

    @classmethod
    def fit(cls, spec: Feature, raw: npt.ArrayLike) -> NumericStats:
        values = np.asarray(raw, dtype=np.float64)
        values = values[np.isfinite(values)]
        shaped = _shape(values, spec)
        std = float(shaped.std()) or 1.0
        default = float(np.median(values)) if spec.default in (None, "median") \
            else float(spec.default)
        if spec.transform not in _STANDARDIZE:
            return cls(spec, 0.0, 1.0, default)
        return cls(spec, float(shaped.mean()), std, default)


def _shape(column: npt.NDArray[np.float64], spec: Feature) -> npt.NDArray[np.float64]:
    """The transform before standardising (``log1p``, ``clip``, ``bucketize``)."""
    if spec.transform in _LOG:
        return np.log1p(np.maximum(column, 0.0))
    if spec.transform == "clip":
        assert spec.bounds is not None
        low, high = spec.bounds
        return np.clip(column, -np.inf if low is None else low, np.inf if high is None else high)
    if spec.transform == "bucketize":
        assert spec.boundaries is not None
        return np.searchsorted(np.asarray(spec.boundaries), column, side="right"
                               ).astype(np.float64)
    return column


def transform_matrix(values: npt.NDArray[np.float64], stats: Sequence[NumericStats]
                     ) -> npt.NDArray[np.float32]:
    """Transform ``values`` (``[rows, F]``, float64, owned: changed in place) column by
    feature: NaN -> default, then each feature's transform; float32 out."""
    defaults = np.array([s.default for s in stats])
    nan = np.isnan(values)
    if nan.any():
        values = np.where(nan, defaults, values)
    transforms = {s.spec.transform for s in stats}
    if len(transforms) == 1 and transforms <= {"log1p_standardize", "standardize", "log1p",
                                               "identity"}:
        (only,) = transforms
        if only in _LOG:
            np.maximum(values, 0.0, out=values)
            np.log1p(values, out=values)
        if only in _STANDARDIZE:
            values -= np.array([s.mean for s in stats])
            values /= np.array([s.std for s in stats])
        return values.astype(np.float32)
    out = np.empty(values.shape, dtype=np.float32)
    for j, s in enumerate(stats):
        column = _shape(values[:, j], s.spec)
        if s.spec.transform in _STANDARDIZE:
            column = (column - s.mean) / s.std
        out[:, j] = column
    return out
