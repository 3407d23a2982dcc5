"""The value model: one score per candidate from its per-task probabilities, and top-k.

``score = sum_t weight_t * p_t``. Default weights come from the model card; a request may
override some of them (unknown task names and non-finite weights are rejected, naming the
field). Ranking is by descending score with ties kept in request order, so equal scores
give a stable, reproducible order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from serving.errors import BadRequest


class ValueModel:
    """Task weights of one model, and the scoring and ranking that use them."""

    def __init__(self, tasks: Sequence[str], default_weights: Mapping[str, float]) -> None:
        unknown = set(default_weights) - set(tasks)
        if unknown:
            raise ValueError(f"default weights name unknown tasks: {sorted(unknown)}")
        self.tasks = list(tasks)
        self._index = {t: i for i, t in enumerate(self.tasks)}
        self.default = np.array([float(default_weights.get(t, 0.0)) for t in self.tasks])

    def weights(self, overrides: Any) -> npt.NDArray[np.float64]:
        """The default weight vector with a request's overrides applied.

        Raises:
            BadRequest: ``weights`` is not an object, names an unknown task, or holds a
                value that is not a finite number.
        """
        if overrides is None:
            return self.default
        if not isinstance(overrides, dict):
            raise BadRequest("'weights' must be an object of task -> weight", field="weights")
        weights = self.default.copy()
        for task, value in overrides.items():
            field = f"weights.{task}"
            if task not in self._index:
                raise BadRequest(f"unknown task '{task}'; tasks are {self.tasks}", field=field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise BadRequest(f"'{field}' must be a finite number", field=field)
            weights[self._index[task]] = float(value)
        return weights

    def task_indices(self, names: Any) -> list[int]:
        """Column indices of the tasks a request asked to see (``return_tasks``).

        Raises:
            BadRequest: not a boolean or a list of known task names.
        """
        if names is True:
            return list(range(len(self.tasks)))
        if names is None or names is False:
            return []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise BadRequest("'return_tasks' must be true, false or a list of task names",
                             field="return_tasks")
        for name in names:
            if name not in self._index:
                raise BadRequest(f"unknown task '{name}'; tasks are {self.tasks}",
                                 field="return_tasks")
        return [self._index[n] for n in names]

    @staticmethod
    def score(probs: npt.NDArray[np.float32], weights: npt.NDArray[np.float64]
              ) -> npt.NDArray[np.float64]:
        """Value score per candidate row of ``probs [N, T]``."""
        return probs.astype(np.float64) @ weights


def top_k(scores: npt.NDArray[np.float64], k: int | None) -> npt.NDArray[np.intp]:
    """Row indices of the ``k`` best scores, best first; ties keep the lower index first."""
    n = len(scores)
    k = n if k is None else max(0, min(k, n))
    if 0 < k < n // 4:
        # Partition first (O(n)), then order only the survivors. A tie at the boundary is
        # resolved by index: keep every row tied with the k-th score, sort, truncate.
        kth = np.partition(-scores, k - 1)[k - 1]
        candidates = np.flatnonzero(-scores <= kth)
        order = candidates[np.argsort(-scores[candidates], kind="stable")]
        return order[:k]
    return np.argsort(-scores, kind="stable")[:k]
