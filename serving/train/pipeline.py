"""Train-and-evaluate pipeline shared by ``rankserve train``, the seed study and the tests.

One call: split the log by date, fit the encoder on the training days, encode, train,
evaluate on the held-out days, and save a checkpoint (weights + encoder state + configs +
metrics) that ``rankserve export`` turns into the model repository.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from serving.ranking.features import ITEM_NUM, USER_NUM, FeatureEncoder
from serving.repository.schema import Schema
from serving.train.counters import attach_counters, fit_priors, liked_before
from serving.train.data import (
    DAY_KEY,
    DEFAULT_SCHEMA,
    TEST_DAYS,
    TRAIN_DAYS,
    USER_KEY,
    Log,
    group_requests,
)
from serving.train.dataset import EncodedSplit, fit_encoder
from serving.train.evaluation import ranking_report
from serving.train.model import FeedRanker, ModelConfig
from serving.train.trainer import TrainConfig, predict, seed_everything, task_metrics, train_model

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class TrainResult:
    model: FeedRanker
    encoder: FeatureEncoder
    metrics: dict[str, dict[str, float]]
    training: dict[str, Any] = field(default_factory=dict)


def run_training(log: Log, cfg: TrainConfig, model_cfg: ModelConfig | None = None,
                 train_days: Sequence[int] = TRAIN_DAYS, eval_days: Sequence[int] = TEST_DAYS,
                 progress: bool = True, limit_rows: int | None = None,
                 schema: Schema = DEFAULT_SCHEMA) -> TrainResult:
    """Train on ``train_days`` and evaluate on ``eval_days``.

    ``limit_rows`` keeps only the first rows of each split (in time order), for smoke tests.
    A schema with counters gets its counter features (strictly from earlier days' rows,
    :mod:`serving.train.counters`) attached to the log first; the held-out days are also
    scored with the counters frozen at the last training day (what the exported snapshot
    serves), in ``training["evaluation"]["test_frozen_counters"]``.
    """
    started = time.perf_counter()
    if schema.counters:
        schema = fit_priors(schema, log.days(train_days).impressions)
    full_log = log
    log = attach_counters(log, schema)
    train_log, eval_log = log.days(train_days), log.days(eval_days)
    if limit_rows is not None:
        train_log.impressions = train_log.impressions.iloc[:limit_rows]
        eval_log.impressions = eval_log.impressions.iloc[:limit_rows]
    tasks = tuple(t.name for t in schema.tasks)  # the probs columns, in schema order
    encoder = fit_encoder(train_log.impressions, schema)
    train = EncodedSplit.build(encoder, group_requests(train_log))
    eval_grouped = group_requests(eval_log)
    held_out = EncodedSplit.build(encoder, eval_grouped)
    seed_everything(cfg.seed)
    model = FeedRanker(encoder.cardinalities(), tasks, model_cfg,
                       prior_rates=np.clip(train.labels.mean(axis=0), 1e-4, 1 - 1e-4).tolist(),
                       schema=schema)
    model.fit_wide_bins(torch.from_numpy(train.users[USER_NUM]),
                        torch.from_numpy(train.items[ITEM_NUM]))
    fit = train_model(model, train, cfg, progress=progress)
    probs = predict(model, held_out)
    metrics = task_metrics(held_out.labels, probs, tasks)
    items = eval_grouped.items
    evaluation = ranking_report(held_out.labels, probs, tasks, items[USER_KEY].to_numpy(),
                                items[DAY_KEY].to_numpy(), liked_before(full_log, items)) \
        if schema.name == DEFAULT_SCHEMA.name else {}  # KuaiRand's tasks and segments
    if schema.counters:
        frozen = attach_counters(full_log, schema, until_day=train_days[-1]).days(eval_days)
        if limit_rows is not None:
            frozen.impressions = frozen.impressions.iloc[:limit_rows]
        frozen_split = EncodedSplit.build(encoder, group_requests(frozen))
        evaluation["test_frozen_counters"] = task_metrics(
            frozen_split.labels, predict(model, frozen_split), tasks)
    training = {
        "train_days": [int(d) for d in (train_days[0], train_days[-1])],
        "eval_days": [int(d) for d in (eval_days[0], eval_days[-1])],
        "train_requests": train.n_requests, "train_candidates": train.n_items,
        "eval_requests": held_out.n_requests, "eval_candidates": held_out.n_items,
        "train_seconds": round(fit["seconds"], 1), "steps": fit["steps"],
        "total_seconds": round(time.perf_counter() - started, 1),
        "config": cfg.to_dict(), "model_config": model.config.to_dict(),
        "torch": str(torch.__version__), "threads": cfg.threads,
        "evaluation": evaluation,
    }
    return TrainResult(model, encoder, metrics, training)


def save_checkpoint(result: TrainResult, run_dir: Path) -> Path:
    """Write ``run_dir/checkpoint.pt`` (plain tensors and JSON-like values only)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CHECKPOINT_FILE
    tasks = [t.name for t in result.encoder.schema.tasks]
    torch.save({"tasks": tasks, "encoder": result.encoder.to_card(),
                "schema": result.encoder.schema.to_dict(),
                "model_config": result.model.config.to_dict(),
                "state_dict": result.model.state_dict(),
                "metrics": result.metrics, "training": result.training}, path)
    return path


def load_checkpoint(run_dir: Path) -> tuple[FeedRanker, FeatureEncoder, dict[str, Any]]:
    """Rebuild the trained model and its encoder from ``run_dir/checkpoint.pt``.

    Raises:
        FileNotFoundError: no checkpoint there (run ``rankserve train`` first).
    """
    path = run_dir / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; run `rankserve train` first")
    saved: dict[str, Any] = torch.load(path, weights_only=True)
    encoder = FeatureEncoder.from_card(saved["encoder"], saved.get("schema"))
    # a checkpoint from before ``cross_rank`` existed has full-rank cross layers
    model_cfg = ModelConfig(**{"cross_rank": None, "wide_bins": 0, "wide_crosses": [],
                               **saved["model_config"]})
    model = FeedRanker(encoder.cardinalities(), saved["tasks"], model_cfg,
                       schema=encoder.schema)
    model.load_state_dict(saved["state_dict"])
    model.eval()
    return model, encoder, saved
