"""Seed study: train the default configuration with several seeds and report the spread.

The rare tasks (follow, comment, forward: 50-150 test positives) move by a few hundredths
between seeds, so a single run's AUC says little; the model card records the mean, standard
deviation and range over seeds next to the committed model's own figures.

Run: ``python -m serving.train.seeds [--data DIR] [--schema FILE] [--seeds 0 1 2]
[--out runs/feed_ranker/seeds.json]``; each seed's GAUC and per-segment AUCs are kept too
(``evaluation``), since a change is chosen on global AUC and GAUC together.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from serving.repository.schema import Schema
from serving.train.data import DEFAULT_SCHEMA, DEFAULT_SCHEMA_FILE, TASKS, Log, load_log
from serving.train.pipeline import run_training
from serving.train.trainer import TrainConfig

SEEDS_FILE = "seeds.json"


def seed_study(log: Log, seeds: Sequence[int], progress: bool = False,
               schema: Schema = DEFAULT_SCHEMA) -> dict[str, Any]:
    """Per task: AUC and log loss for every seed, with mean, std, min and max."""
    runs = [run_training(log, TrainConfig(seed=s), progress=progress, schema=schema)
            for s in seeds]
    summary: dict[str, Any] = {}
    for task in TASKS:
        entry: dict[str, Any] = {}
        for metric in ("auc", "logloss"):
            values = np.array([r.metrics[task][metric] for r in runs])
            entry[metric] = {"per_seed": values.tolist(), "mean": round(float(values.mean()), 4),
                             "std": round(float(values.std(ddof=1)), 4) if len(values) > 1
                             else 0.0, "min": float(values.min()), "max": float(values.max())}
        summary[task] = entry
    return {"seeds": list(seeds), "schema": schema.name, "tasks": summary,
            "train_seconds": [r.training["train_seconds"] for r in runs],
            "evaluation": [r.training.get("evaluation", {}) for r in runs]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--schema", type=Path, default=DEFAULT_SCHEMA_FILE)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/feed_ranker") / SEEDS_FILE)
    args = parser.parse_args(argv)
    result = seed_study(load_log(args.data), args.seeds, progress=False,
                        schema=Schema.load(args.schema))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for task, entry in result["tasks"].items():
        auc = entry["auc"]
        print(f"{task:14s} AUC {auc['mean']:.4f} ± {auc['std']:.4f} "
              f"[{auc['min']:.4f}, {auc['max']:.4f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
