"""The logistic-regression baseline the ranker must beat, on the same split and features.

One logistic regression per task over one-hot features: the user, video and author ids,
every other user / context / video categorical, and the numeric features in ten
training-quantile bins. The one-hot columns are the feature encoder's ids (categories from
the training days only, unseen values share the OOV column), so baseline and ranker see the
same vocabulary. The L2 strength ``C`` is tuned per task on the validation day (train
04-25..05-03, validate 05-04), then the model is refitted on all training days with the best
``C`` and evaluated on the test days.

Run: ``python -m serving.train.baseline [--data DIR] [--out runs/feed_ranker/baseline.json]``
(``rankserve train --baseline`` runs it too).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression

from serving.ranking.features import (
    ITEM_CAT,
    ITEM_ID,
    ITEM_NUM,
    ITEM_TO_USER,
    USER_CAT,
    USER_ID,
    USER_NUM,
    FeatureEncoder,
)
from serving.train.data import (
    TASKS,
    TEST_DAYS,
    TRAIN_DAYS,
    TUNE_DAYS,
    VALIDATION_DAYS,
    Log,
    group_requests,
    load_log,
)
from serving.train.dataset import EncodedSplit, fit_encoder
from serving.train.trainer import task_metrics

C_GRID = (0.03, 0.1, 0.3, 1.0, 3.0)
BASELINE_FILE = "baseline.json"
BINS = 10


class OneHot:
    """Encoded split -> sparse one-hot design matrix (one column per id, per bin)."""

    def __init__(self, train: EncodedSplit) -> None:
        categorical, num = self._columns(train)
        qs = np.linspace(0, 1, BINS + 1)[1:-1]
        self.edges = [np.unique(np.quantile(num[:, j], qs)) for j in range(num.shape[1])]
        self.cat_sizes = [int(c.max()) + 1 for c in categorical]

    @staticmethod
    def _columns(data: EncodedSplit) -> tuple[list[np.ndarray], np.ndarray]:
        """Per candidate row: the categorical id columns and the numeric matrix."""
        inputs, _ = data.select(np.arange(data.n_requests))
        user = inputs[ITEM_TO_USER]
        cols = [inputs[USER_ID][user], inputs[ITEM_ID]]
        cols += list(inputs[USER_CAT][user].T) + list(inputs[ITEM_CAT].T)
        return cols, np.concatenate([inputs[USER_NUM][user], inputs[ITEM_NUM]], axis=1)

    def matrix(self, data: EncodedSplit) -> sp.csr_matrix:
        categorical, num = self._columns(data)
        cols = [np.minimum(c, size - 1) for c, size in
                zip(categorical, self.cat_sizes, strict=True)]
        sizes = list(self.cat_sizes)
        for j, edges in enumerate(self.edges):
            cols.append(np.searchsorted(edges, num[:, j]))
            sizes.append(len(edges) + 1)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        indices = (np.stack(cols, axis=1) + offsets).ravel()
        n, k = len(num), len(cols)
        return sp.csr_matrix((np.ones(n * k, np.float32), indices, np.arange(0, n * k + 1, k)),
                             shape=(n, int(sum(sizes))))


def _split(log: Log, encoder: FeatureEncoder, days: Sequence[int]) -> EncodedSplit:
    return EncodedSplit.build(encoder, group_requests(log.days(days)))


def _fit(x: sp.csr_matrix, y: np.ndarray, c: float) -> LogisticRegression:
    return LogisticRegression(C=c, max_iter=300, solver="lbfgs").fit(x, y)


def _design(log: Log, train_days: Sequence[int], eval_days: Sequence[int]
            ) -> tuple[sp.csr_matrix, np.ndarray, sp.csr_matrix, np.ndarray]:
    encoder = fit_encoder(log.days(train_days).impressions)
    train, held_out = _split(log, encoder, train_days), _split(log, encoder, eval_days)
    onehot = OneHot(train)
    return onehot.matrix(train), train.labels, onehot.matrix(held_out), held_out.labels


def run_baseline(log: Log, c_grid: Sequence[float] = C_GRID) -> dict[str, Any]:
    """Tune ``C`` per task on the validation day, refit on the training days, test."""
    started = time.perf_counter()
    x_tr, y_tr, x_va, y_va = _design(log, TUNE_DAYS, VALIDATION_DAYS)
    best: dict[str, float] = {}
    validation: dict[str, dict[str, float]] = {}
    for t, task in enumerate(TASKS):
        scores = {}
        for c in c_grid:
            p = _fit(x_tr, y_tr[:, t], c).predict_proba(x_va)[:, 1]
            scores[c] = task_metrics(y_va[:, [t]], p[:, None], [task])[task]["auc"]
        best[task] = max(scores, key=scores.__getitem__)
        validation[task] = {str(c): s for c, s in scores.items()}
    x_tr, y_tr, x_te, y_te = _design(log, TRAIN_DAYS, TEST_DAYS)
    probs = np.stack([_fit(x_tr, y_tr[:, t], best[task]).predict_proba(x_te)[:, 1]
                      for t, task in enumerate(TASKS)], axis=1)
    return {"model": "logistic regression per task, one-hot ids + features, L2",
            "test": task_metrics(y_te, probs, TASKS), "best_c": best,
            "validation_auc": validation, "features": int(x_tr.shape[1]),
            "seconds": round(time.perf_counter() - started, 1)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/feed_ranker") / BASELINE_FILE)
    args = parser.parse_args(argv)
    result = run_baseline(load_log(args.data))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["test"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
