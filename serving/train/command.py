"""``rankserve train``: train the default ranker on KuaiRand and save a checkpoint.

The checkpoint goes to ``runs/<name>/`` (git-ignored); ``rankserve export`` turns it into
the model repository. Defaults are the committed model's configuration.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from serving.train.baseline import BASELINE_FILE, run_baseline
from serving.train.data import TEST_DAYS, TRAIN_DAYS, TUNE_DAYS, VALIDATION_DAYS, load_log
from serving.train.model import ModelConfig
from serving.train.pipeline import run_training, save_checkpoint
from serving.train.trainer import TrainConfig


def configure(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    parser.add_argument("--data", default=None,
                        help="KuaiRand directory (default: $RANKSERVE_DATA or "
                             "../shared/data/kuairand)")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/feed_ranker"),
                        help="where the checkpoint and metrics go")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-rows", type=int, default=defaults.batch_rows)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--wide-lr", type=float, default=defaults.wide_lr)
    parser.add_argument("--wide-l2", type=float, default=defaults.wide_l2)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop after this many batches (quick runs)")
    parser.add_argument("--no-wide", action="store_true", help="deep part only (ablation)")
    parser.add_argument("--validate", action="store_true",
                        help="tuning mode: train on 04-25..05-03, evaluate on 05-04")
    parser.add_argument("--baseline", action="store_true",
                        help="also fit the logistic-regression baseline (about 3 minutes) and "
                             "save it beside the checkpoint for the model card")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    cfg = TrainConfig(epochs=args.epochs, batch_rows=args.batch_rows, lr=args.lr,
                      wide_lr=args.wide_lr, wide_l2=args.wide_l2, seed=args.seed,
                      threads=args.threads, max_steps=args.max_steps)
    train_days, eval_days = (TUNE_DAYS, VALIDATION_DAYS) if args.validate \
        else (TRAIN_DAYS, TEST_DAYS)
    log = load_log(args.data)
    result = run_training(log, cfg, ModelConfig(wide=not args.no_wide), train_days, eval_days,
                          progress=not args.no_progress)
    path = save_checkpoint(result, args.run_dir)
    print(json.dumps({"metrics": result.metrics, "training": result.training}, indent=1))
    print(f"checkpoint: {path}")
    if args.baseline:
        baseline = run_baseline(log)
        (args.run_dir / BASELINE_FILE).write_text(json.dumps(baseline, indent=1) + "\n")
        print(json.dumps({"baseline": baseline["test"]}, indent=1))
    return 0
