"""The training loop and offline evaluation (AUC and log loss per task).

The deep part trains with Adam; the wide part (per-task weights per id, see
:mod:`serving.train.model`) with Adagrad and its own L2 penalty, as a regularised logistic
regression would be: ids seen a handful of times need a much stronger pull to zero than
the dense deep weights, and Adagrad's per-row step sizes suit their very skewed counts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from sklearn.metrics import log_loss, roc_auc_score
from torch import nn
from tqdm import tqdm

from serving.ranking.features import MODEL_INPUTS
from serving.train.dataset import EncodedSplit
from serving.train.model import FeedRanker


@dataclass
class TrainConfig:
    """Optimisation hyper-parameters (recorded in the model card)."""

    epochs: int = 2
    batch_rows: int = 1024
    lr: float = 1e-3
    wide_lr: float = 0.1
    wide_l2: float = 1e-5
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
    wide = {id(p) for p in model.wide_params()}
    deep_opt = torch.optim.Adam([p for p in model.parameters() if id(p) not in wide], lr=cfg.lr)
    wide_opt = torch.optim.Adagrad(model.wide_params(), lr=cfg.wide_lr)
    loss_fn = nn.BCEWithLogitsLoss()
    started, steps, mean_loss = time.perf_counter(), 0, float("nan")
    model.train()
    for epoch in range(cfg.epochs):
        total, count = 0.0, 0
        bar = tqdm(data.batches(cfg.batch_rows, rng), disable=not progress,
                   total=max(1, data.n_items // cfg.batch_rows),
                   desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch")
        for inputs, labels in bar:
            logits = model.logits(*(inputs[name] for name in MODEL_INPUTS))
            loss = loss_fn(logits, labels) * labels.shape[1]
            penalty = sum((w * w).sum() for w in model.wide_params())
            deep_opt.zero_grad()
            wide_opt.zero_grad()
            (loss + cfg.wide_l2 * penalty).backward()
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
