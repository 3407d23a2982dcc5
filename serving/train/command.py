"""``rankserve train``: train a ranker from its schema file and save a checkpoint.

The schema (``--schema``, default feed_ranker's KuaiRand one) says which features and
tasks the model has and, in its ``data`` section, which files under ``--data`` hold them
and how the days split (docs/schema.md). The checkpoint goes to ``--run-dir`` (git-ignored);
``rankserve export`` turns it into the model repository. Defaults are the committed
feed_ranker's configuration.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from serving.errors import ModelCardError
from serving.train.cli_edge import run_guarded, train_defaults

DEFAULT_SCHEMA_FILE = Path(__file__).resolve().parent / "schemas" / "kuairand.yaml"


def configure(parser: argparse.ArgumentParser) -> None:
    """Options only: no torch needed, so ``--help`` works after a plain ``make serve``."""
    defaults = train_defaults()
    parser.add_argument("--data", default=None,
                        help="directory holding the schema's data files (default: "
                             "$RANKSERVE_DATA or ../shared/data/kuairand)")
    parser.add_argument("--schema", type=Path, default=DEFAULT_SCHEMA_FILE,
                        help="the model's feature schema (docs/schema.md; default: "
                             "serving/train/schemas/kuairand.yaml, feed_ranker's)")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/feed_ranker"),
                        help="where the checkpoint and metrics go (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=defaults.get("epochs"),
                        help="passes over the training days (default: %(default)s)")
    parser.add_argument("--batch-rows", type=int, default=defaults.get("batch_rows"),
                        help="impressions per optimiser step (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=defaults.get("lr"),
                        help="learning rate of the deep part (default: %(default)s)")
    parser.add_argument("--wide-lr", type=float, default=defaults.get("wide_lr"),
                        help="learning rate of the wide part (default: %(default)s)")
    parser.add_argument("--wide-l2", type=float, default=defaults.get("wide_l2"),
                        help="L2 penalty of the wide part (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.get("seed"),
                        help="random seed (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=defaults.get("threads"),
                        help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop after this many batches, for quick runs (default: no limit)")
    parser.add_argument("--no-wide", action="store_true",
                        help="deep part only, an ablation (default: off)")
    parser.add_argument("--validate", action="store_true",
                        help="tuning mode: train on the split's tune days, evaluate on its "
                             "validation days (KuaiRand: 04-25..05-03, 05-04) (default: off)")
    parser.add_argument("--baseline", action="store_true",
                        help="also fit the logistic-regression baseline (about 3 minutes) and "
                             "save it beside the checkpoint for the model card's baseline "
                             "section (default: off)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (default: off)")


def run(args: argparse.Namespace) -> int:
    """Train, or say in one line which extra is missing or what went wrong."""
    # DataNotFound is a FileNotFoundError.
    return run_guarded("train", lambda: _train(args), (OSError, ValueError, ModelCardError))


def _train(args: argparse.Namespace) -> int:
    from serving.repository.schema import Schema
    from serving.train.baseline import BASELINE_FILE, run_baseline
    from serving.train.data import load_log
    from serving.train.model import ModelConfig
    from serving.train.pipeline import run_training, save_checkpoint
    from serving.train.trainer import TrainConfig

    cfg = TrainConfig(epochs=args.epochs, batch_rows=args.batch_rows, lr=args.lr,
                      wide_lr=args.wide_lr, wide_l2=args.wide_l2, seed=args.seed,
                      threads=args.threads, max_steps=args.max_steps)
    schema = Schema.load(args.schema)
    log = load_log(args.data, schema)
    split = log.layout.split
    train_days, eval_days = (split.tune, split.validation) if args.validate \
        else (split.train, split.test)
    result = run_training(log, cfg, ModelConfig(wide=not args.no_wide), train_days, eval_days,
                          progress=not args.no_progress, schema=schema)
    path = save_checkpoint(result, args.run_dir)
    print(json.dumps({"metrics": result.metrics, "training": result.training}, indent=1))
    print(f"checkpoint: {path}")
    if args.baseline:
        baseline = run_baseline(log)
        (args.run_dir / BASELINE_FILE).write_text(json.dumps(baseline, indent=1) + "\n")
        print(json.dumps({"baseline": baseline["test"]}, indent=1))
    return 0
