"""An online model of a backend's batch service time: ``fixed + per_row * rows``.

Fitted by exponentially weighted least squares with a ridge prior, i.e. recursive least
squares with forgetting that cannot wind up: when every batch has the same size (so the
two coefficients cannot be told apart) the prior keeps the split sensible, and old
observations fade so the model follows a backend whose speed drifts (thermal throttling,
a neighbour on the same cores). The batcher uses :meth:`LatencyModel.bound` (prediction
plus a margin of two residual standard deviations) to decide how long a batch may wait.

Updates are robust to outliers (a one-sided Huber-style clip): an observation is learned
as at most ``clip_sigmas`` residual deviations plus ``clip_fraction`` of the prediction
above the prediction (a faster batch is learned as it is: a pessimistic model must be able
to recover at once). One 10 s TensorRT engine build, a page-in or a GC pause therefore moves the
fit by a bounded step instead of having it predict seconds for hundreds of batches (and
admission refuse them), while a backend that really slows down is followed within tens
of batches, since each clipped step widens the residual deviation and so the next clip.

With shape buckets (:mod:`serving.batching.buckets`) every batch runs at one of a few
padded shapes whose costs need not lie on a line (a GPU's cost is a staircase of kernel
tile sizes), so :class:`BucketedLatency` keeps one estimate per bucket shape, learned with
the same clip, over the linear model, which learns every batch at its padded size and
answers for a bucket that has not been seen yet.

Both take a batch as ``(rows, user_rows)``: candidate rows and the per-request rows it
carries. The linear model prices their sum; the bucketed one pads both to the bucket.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from serving.batching.buckets import Buckets

_ROW_SCALE = 1000.0  # rows are fitted in thousands, seconds in milliseconds: a tame system


class LatencyModel:
    """Predicts a batch's service time in seconds from its row count."""

    def __init__(self, fixed_s: float = 0.001, per_row_s: float = 5e-6,
                 forgetting: float = 0.97, prior_weight: float = 0.05,
                 clip_sigmas: float = 3.0, clip_fraction: float = 0.5) -> None:
        self._prior = np.array([fixed_s * 1e3, per_row_s * 1e3 * _ROW_SCALE])
        self._ridge = prior_weight * np.eye(2)
        self._forgetting = forgetting
        self._sxx = np.zeros((2, 2))
        self._sxy = np.zeros(2)
        self._theta = self._prior.copy()
        self._residual_var = (0.5 * fixed_s * 1e3) ** 2
        self._clip_sigmas, self._clip_fraction = clip_sigmas, clip_fraction
        self.updated_at = -math.inf

    def fresh(self, now: float, within_s: float = 1.0) -> bool:
        """Whether a served batch taught the model something in the last ``within_s``.

        Decisions that refuse work on a prediction need this: a model that went stale
        (or only saw warm-up under a CPU spike) could otherwise refuse everything forever,
        since refused work teaches it nothing.
        """
        return now - self.updated_at < within_s

    @staticmethod
    def _x(rows: int) -> np.ndarray:
        return np.array([1.0, rows / _ROW_SCALE])

    def predict(self, rows: int, user_rows: int = 0) -> float:
        """Expected service time in seconds for a batch of ``rows`` candidate rows and
        ``user_rows`` user rows."""
        return max(float(self._x(rows + user_rows) @ self._theta), 0.0) / 1e3

    def bound(self, rows: int, user_rows: int = 0) -> float:
        """A pessimistic service time (prediction + 2 sigma), used for deadline decisions."""
        return self.predict(rows, user_rows) + 2.0 * self.sigma_s

    @property
    def sigma_s(self) -> float:
        """The residual standard deviation in seconds."""
        return math.sqrt(self._residual_var) / 1e3

    @property
    def coefficients(self) -> tuple[float, float]:
        """(fixed seconds, seconds per row) as currently fitted."""
        return self._theta[0] / 1e3, self._theta[1] / 1e3 / _ROW_SCALE

    def observe(self, rows: int, seconds: float, at: float | None = None,
                user_rows: int = 0) -> float:
        """Learn from one finished batch; returns the prediction error in seconds
        (observed minus predicted, before this observation was learned, unclipped). ``at``
        (a loop time) marks the model as current: see :meth:`fresh`. Warm-up runs leave it
        out. The observation is clipped before it is learned (see the module docstring)."""
        if at is not None:
            self.updated_at = at
        predicted = self.predict(rows, user_rows) * 1e3
        error = seconds * 1e3 - predicted
        learned = self.clip(error, predicted, self._residual_var)
        x, y = self._x(rows + user_rows), predicted + learned
        lam = self._forgetting
        self._sxx = lam * self._sxx + np.outer(x, x)
        self._sxy = lam * self._sxy + x * y
        self._theta = np.linalg.solve(self._sxx + self._ridge,
                                      self._sxy + self._ridge @ self._prior)
        self._residual_var = lam * self._residual_var + (1 - lam) * learned ** 2
        return error / 1e3

    def clip(self, error_ms: float, predicted_ms: float, var: float) -> float:
        """The part of an error (ms) that is learned: at most ``clip_sigmas`` deviations
        (``var``, ms squared) plus ``clip_fraction`` of the prediction above it; below it,
        all of it (see the module docstring)."""
        return min(error_ms, self._clip_sigmas * math.sqrt(var)
                   + self._clip_fraction * predicted_ms)


@dataclass
class _Estimate:
    """One bucket's learned service time and residual variance (ms, ms squared)."""

    mean: float
    var: float
    count: int = 0


class BucketedLatency:
    """One estimate per bucket shape over a :class:`LatencyModel` (module docstring).

    The same interface as :class:`LatencyModel`; freshness and the fitted coefficients
    (which admission and the wait cap read) are the linear model's.
    """

    def __init__(self, buckets: Buckets, linear: LatencyModel | None = None,
                 forgetting: float = 0.97) -> None:
        self.buckets = buckets
        self.linear = linear or LatencyModel()
        self._alpha = 1.0 - forgetting
        self._estimates: dict[tuple[int, int], _Estimate] = {}

    @property
    def updated_at(self) -> float:
        return self.linear.updated_at

    def fresh(self, now: float, within_s: float = 1.0) -> bool:
        return self.linear.fresh(now, within_s)

    @property
    def coefficients(self) -> tuple[float, float]:
        return self.linear.coefficients

    def estimates(self) -> dict[tuple[int, int], float]:
        """Learned seconds per bucket shape seen so far."""
        return {shape: e.mean / 1e3 for shape, e in self._estimates.items()}

    def predict(self, rows: int, user_rows: int = 0) -> float:
        shape = self.buckets.pad(rows, user_rows)
        estimate = self._estimates.get(shape)
        if estimate is None:
            return self.linear.predict(*shape)
        return max(estimate.mean, 0.0) / 1e3

    def bound(self, rows: int, user_rows: int = 0) -> float:
        shape = self.buckets.pad(rows, user_rows)
        estimate = self._estimates.get(shape)
        if estimate is None:
            return self.linear.bound(*shape)
        return self.predict(rows, user_rows) + 2.0 * math.sqrt(estimate.var) / 1e3

    def observe(self, rows: int, seconds: float, at: float | None = None,
                user_rows: int = 0) -> float:
        """Learn one finished batch under its bucket shape (and in the linear model, at its
        padded size); returns the error of the prediction made before, in seconds."""
        shape = self.buckets.pad(rows, user_rows)
        predicted = self.predict(rows, user_rows) * 1e3
        estimate = self._estimates.get(shape)
        if estimate is None:
            estimate = _Estimate(predicted, self.linear.sigma_s ** 2 * 1e6)
        self.linear.observe(shape[0], seconds, at=at, user_rows=shape[1])
        error = seconds * 1e3 - predicted
        learned = self.linear.clip(error, predicted, estimate.var)
        # A running mean at first (the first observation, clipped, replaces the linear
        # model's guess), then exponential forgetting, as in the linear model.
        alpha = max(self._alpha, 1.0 / (estimate.count + 1))
        estimate.mean += alpha * learned
        if estimate.count:
            estimate.var = (1.0 - alpha) * estimate.var + alpha * learned ** 2
        estimate.count += 1
        self._estimates[shape] = estimate
        return error / 1e3


Latency = LatencyModel | BucketedLatency
"""What a batcher predicts service times with."""
