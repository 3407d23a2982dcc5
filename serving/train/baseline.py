"""The logistic-regression baseline the ranker must beat, on the same split and features.

One logistic regression per task over one-hot features of the model's schema: the user and
candidate ids, every other categorical of both groups, and the numeric features in ten
training-quantile bins (id sequences are left out: a per-feature linear model has no use
for them). The one-hot columns are the feature encoder's ids (categories from the training
days only, unseen values share the OOV column), so baseline and ranker see the same
vocabulary. The L2 strength ``C`` is tuned per task on the validation days (the schema's
``data.split``: for KuaiRand train 04-25..05-03, validate 05-04), then the model is
refitted on all training days with the best ``C`` and evaluated on the test days.

Run: ``python -m serving.train.baseline [--data DIR] [--schema FILE]
[--run-dir runs/feed_ranker]`` (``rankserve train --baseline`` runs it too). A schema with
counters gives the baseline its counting features as numerics (their priors fitted on the
training days, as the ranker's are), the fair reference for that ranker; the LR without
them is fitted too (``baseline_ids``), so the card shows what the counters add to each.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression

from serving.ranking.features import FeatureEncoder
from serving.repository.schema import ITEM_TO_USER, Schema
from serving.train.counters import attach_counters, fit_priors
from serving.train.data import DEFAULT_SCHEMA_FILE, Log, group_requests, load_log
from serving.train.dataset import EncodedSplit, fit_encoder
from serving.train.trainer import task_metrics

C_GRID = (0.03, 0.1, 0.3, 1.0, 3.0)
BASELINE_FILES = {"baseline": "baseline.json", "baseline_ids": "baseline_ids.json"}
"""The card's metrics key of each baseline and its file beside the checkpoint: the LR on
the ranker's own features, and (a schema with counters) the LR on ids and features only."""
BINS = 10


class OneHot:
    """Encoded split -> sparse one-hot design matrix (one column per id, per bin)."""

    def __init__(self, train: EncodedSplit, schema: Schema) -> None:
        self.schema = schema
        categorical, num = self._columns(train)
        qs = np.linspace(0, 1, BINS + 1)[1:-1]
        self.edges = [np.unique(np.quantile(num[:, j], qs)) for j in range(num.shape[1])]
        self.cat_sizes = [int(c.max()) + 1 for c in categorical]

    def _columns(self, data: EncodedSplit) -> tuple[list[np.ndarray], np.ndarray]:
        """Per candidate row: the categorical id columns (the ids, then the other
        categoricals, user group first) and the numeric matrix, by the schema's tensor
        rule (``<group>_id``, ``<group>_cat``, ``<group>_num``)."""
        inputs, _ = data.select(np.arange(data.n_requests))
        user = inputs[ITEM_TO_USER]

        def part(name: str) -> list[np.ndarray]:  # a group tensor with no feature is absent
            if name not in inputs:
                return []
            return [inputs[name][user] if name.startswith("user_") else inputs[name]]
        cols = part("user_id") + part("item_id")
        cols += [c for m in part("user_cat") + part("item_cat") for c in m.T]
        nums = part("user_num") + part("item_num")
        return cols, (np.concatenate(nums, axis=1) if nums
                      else np.zeros((len(user), 0), np.float32))

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


def _split(log: Log, encoder: FeatureEncoder, days: Sequence[Any]) -> EncodedSplit:
    return EncodedSplit.build(encoder, group_requests(log.days(days)))


def _fit(x: sp.csr_matrix, y: np.ndarray, c: float) -> LogisticRegression:
    return LogisticRegression(C=c, max_iter=300, solver="lbfgs").fit(x, y)


def _design(log: Log, train_days: Sequence[Any], eval_days: Sequence[Any]
            ) -> tuple[sp.csr_matrix, np.ndarray, sp.csr_matrix, np.ndarray]:
    encoder = fit_encoder(log.days(train_days).impressions, log.schema)
    train, held_out = _split(log, encoder, train_days), _split(log, encoder, eval_days)
    onehot = OneHot(train, log.schema)
    return onehot.matrix(train), train.labels, onehot.matrix(held_out), held_out.labels


def run_baseline(log: Log, c_grid: Sequence[float] = C_GRID) -> dict[str, Any]:
    """Tune ``C`` per task on the validation days, refit on the training days, test."""
    started = time.perf_counter()
    split = log.layout.split
    if log.schema.counters:  # the fair reference for a ranker with counters has them too
        schema = fit_priors(log.schema, log.days(split.train).impressions)
        log = attach_counters(log, schema)
    tasks = [t.name for t in log.schema.tasks]
    x_tr, y_tr, x_va, y_va = _design(log, split.tune, split.validation)
    best: dict[str, float] = {}
    validation: dict[str, dict[str, float]] = {}
    for t, task in enumerate(tasks):
        scores = {}
        for c in c_grid:
            p = _fit(x_tr, y_tr[:, t], c).predict_proba(x_va)[:, 1]
            scores[c] = task_metrics(y_va[:, [t]], p[:, None], [task])[task]["auc"]
        best[task] = max(scores, key=scores.__getitem__)
        validation[task] = {str(c): s for c, s in scores.items()}
    x_tr, y_tr, x_te, y_te = _design(log, split.train, split.test)
    probs = np.stack([_fit(x_tr, y_tr[:, t], best[task]).predict_proba(x_te)[:, 1]
                      for t, task in enumerate(tasks)], axis=1)
    model = "logistic regression per task, one-hot ids + features, L2"
    return {"model": model + (", with the schema's counting features" if log.schema.counters
                              else ""),
            "test": task_metrics(y_te, probs, tasks), "best_c": best,
            "validation_auc": validation, "features": int(x_tr.shape[1]),
            "seconds": round(time.perf_counter() - started, 1)}


def run_baselines(log: Log, run_dir: Path) -> dict[str, dict[str, Any]]:
    """Every baseline of ``BASELINE_FILES`` the schema calls for, each written to its file
    in ``run_dir`` as soon as it is fitted (a few minutes each)."""
    logs = {"baseline": log}
    if log.schema.counters:
        logs["baseline_ids"] = dataclasses.replace(log, schema=log.schema.without_counters())
    run_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for key, part in logs.items():
        out[key] = run_baseline(part)
        (run_dir / BASELINE_FILES[key]).write_text(json.dumps(out[key], indent=1) + "\n")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--schema", type=Path, default=DEFAULT_SCHEMA_FILE)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/feed_ranker"))
    args = parser.parse_args(argv)
    results = run_baselines(load_log(args.data, Schema.load(args.schema)), args.run_dir)
    print(json.dumps({key: r["test"] for key, r in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
