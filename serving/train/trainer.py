"""The training loop and offline evaluation (AUC and log loss per task).

The deep part trains with Adam; the wide part (per-task weights per id, see
:mod:`serving.train.model`) with Adagrad and its own L2 penalty, as a regularised logistic
regression would be: ids seen a handful of times need a much stronger pull to zero than
the dense deep weights, and Adagrad's per-row step sizes suit their very skewed counts.

Half the training candidate rows have their candidate id hidden (``item_id_dropout``, id 0,
the unknown id): a model that can always recall a video by its id learns little from the
video's and author's counters, which carry what happened after the id's weights were
trained (the daily snapshot). Hiding user ids as well gains global AUC but loses GAUC by
user, so it is off by default (docs/training.md).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.metrics import log_loss, roc_auc_score
from torch import nn
from tqdm import tqdm

from serving.ranking.features import ITEM_ID, MODEL_INPUTS, USER_ID
from serving.train.dataset import EncodedSplit
from serving.train.model import FeedRanker


@dataclass
class TrainConfig:
    """Optimisation hyper-parameters (recorded in the model card)."""

    epochs: int = 2
    batch_rows: int = 1024
    lr: float = 1e-3
    wide_lr: float = 0.1
    wide_l2: float = 1e-4
    task_wide_l2: dict[str, float] = field(
        default_factory=lambda: {"like": 3e-5, "profile_enter": 1e-5})
    """Per-task L2 of the wide part where it differs from ``wide_l2`` (each task's column of
    every wide weight row), as the LR baseline tunes its ``C`` per task; a task the model
    does not have is ignored (the defaults are feed_ranker's)."""
    user_id_dropout: float = 0.0
    """Share of training request rows whose user id is hidden (id 0, unknown), so the model
    also learns what the other features, e.g. the counters, say of a user."""
    item_id_dropout: float = 0.5
    """The same for the candidate id of training candidate rows."""
    seed: int = 0
    threads: int = 2
    max_steps: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def seed_everything(seed: int) -> np.random.Generator:
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def train_model(model: FeedRanker, data: EncodedSplit, cfg: TrainConfig,
                progress: bool = True) -> dict[str, float]:
    """Train in place; returns the wall time and the last epoch's mean loss."""
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    hide = torch.Generator().manual_seed(cfg.seed)
    wide = {id(p) for p in model.wide_params()}
    deep_opt = torch.optim.Adam([p for p in model.parameters() if id(p) not in wide], lr=cfg.lr)
    wide_opt = torch.optim.Adagrad(model.wide_params(), lr=cfg.wide_lr)
    loss_fn = nn.BCEWithLogitsLoss()
    l2 = torch.tensor([cfg.task_wide_l2.get(t, cfg.wide_l2) for t in model.task_names])
    started, steps, mean_loss = time.perf_counter(), 0, float("nan")
    model.train()
    for epoch in range(cfg.epochs):
        total, count = 0.0, 0
        bar = tqdm(data.batches(cfg.batch_rows, rng), disable=not progress,
                   total=max(1, data.n_items // cfg.batch_rows),
                   desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch")
        for inputs, labels in bar:
            for name, share in ((USER_ID, cfg.user_id_dropout), (ITEM_ID, cfg.item_id_dropout)):
                if share:
                    ids = inputs[name]
                    inputs[name] = ids.masked_fill(
                        torch.rand(ids.shape, generator=hide) < share, 0)
            logits = model.logits(*(inputs[name] for name in MODEL_INPUTS))
            loss = loss_fn(logits, labels) * labels.shape[1]
            penalty = sum(((w * w).sum(dim=0) * l2).sum() for w in model.wide_params())
            deep_opt.zero_grad()
            wide_opt.zero_grad()
            (loss + penalty).backward()
            deep_opt.step()
            wide_opt.step()
            total, count, steps = total + float(loss.detach()), count + 1, steps + 1
            if count % 20 == 0:
                bar.set_postfix(loss=f"{total / count:.4f}")
            if cfg.max_steps is not None and steps >= cfg.max_steps:
                break
        mean_loss = total / max(count, 1)
        if cfg.max_steps is not None and steps >= cfg.max_steps:
            break
    model.eval()
    return {"seconds": time.perf_counter() - started, "steps": steps, "loss": mean_loss}


@torch.no_grad()
def predict(model: FeedRanker, data: EncodedSplit, batch_rows: int = 8192) -> np.ndarray:
    """``[N, T]`` probabilities for every candidate row of ``data``, in split order."""
    model.eval()
    out = [model(*(inputs[name] for name in MODEL_INPUTS)).numpy()
           for inputs, _ in data.batches(batch_rows)]
    return np.concatenate(out)


def task_metrics(labels: np.ndarray, probs: np.ndarray,
                 tasks: Sequence[str]) -> dict[str, dict[str, float]]:
    """AUC and log loss per task (AUC is NaN-free: a task with one class is skipped)."""
    out: dict[str, dict[str, float]] = {}
    for t, task in enumerate(tasks):
        y, p = labels[:, t], np.clip(probs[:, t].astype(np.float64), 1e-7, 1 - 1e-7)
        if y.min() == y.max():
            continue
        out[task] = {"auc": round(float(roc_auc_score(y, p)), 4),
                     "logloss": round(float(log_loss(y, p)), 5),
                     "positives": int(y.sum())}
    return out
