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
    parser.add_argument("--task-wide-l2", action="append", default=[], metavar="TASK=L2",
                        help="the wide part's L2 for one task, where it differs from "
                             "--wide-l2 (repeatable; default: the committed model's, "
                             "TrainConfig.task_wide_l2)")
    parser.add_argument("--user-id-dropout", type=float,
                        default=defaults.get("user_id_dropout"),
                        help="share of training requests whose user id is hidden, so what "
                             "the counters say of a user is learned too (default: %(default)s)")
    parser.add_argument("--item-id-dropout", type=float,
                        default=defaults.get("item_id_dropout"),
                        help="the same for candidate ids (default: %(default)s)")
    parser.add_argument("--wide-bins", type=int, default=0,
                        help="quantile buckets per numeric feature in the wide part, 0 for "
                             "none (default: %(default)s)")
    parser.add_argument("--wide-cross", action="append", default=[], metavar="USER:ITEM",
                        help="cross a user-side and a candidate categorical in the wide part, "
                             "e.g. user_id:author_id (repeatable; default: none)")
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
                        help="also fit the logistic-regression baselines (about 5 minutes "
                             "each: on the ranker's features and, with counters, without "
                             "them) and save them beside the checkpoint for the model card "
                             "(default: off)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (default: off)")


def _task_values(pairs: list[str]) -> dict[str, float]:
    """``TASK=L2`` flags as a dict; a malformed one is a ValueError naming it."""
    out = {}
    for pair in pairs:
        task, sep, value = pair.partition("=")
        try:
            out[task] = float(value)
        except ValueError:
            sep = ""
        if not sep or not task:
            raise ValueError(f"--task-wide-l2 {pair!r}: expected TASK=L2, e.g. like=3e-5")
    return out


def run(args: argparse.Namespace) -> int:
    """Train, or say in one line which extra is missing or what went wrong."""
    # DataNotFound is a FileNotFoundError.
    return run_guarded("train", lambda: _train(args), (OSError, ValueError, ModelCardError))


def _train(args: argparse.Namespace) -> int:
    from serving.repository.schema import Schema
    from serving.train.baseline import run_baselines
    from serving.train.data import load_log
    from serving.train.model import ModelConfig
    from serving.train.pipeline import run_training, save_checkpoint
    from serving.train.trainer import TrainConfig

    task_l2 = _task_values(args.task_wide_l2)
    cfg = TrainConfig(epochs=args.epochs, batch_rows=args.batch_rows, lr=args.lr,
                      wide_lr=args.wide_lr, wide_l2=args.wide_l2,
                      task_wide_l2={**TrainConfig().task_wide_l2, **task_l2},
                      user_id_dropout=args.user_id_dropout,
                      item_id_dropout=args.item_id_dropout, seed=args.seed,
                      threads=args.threads, max_steps=args.max_steps)
    schema = Schema.load(args.schema)
    unknown = set(task_l2) - {t.name for t in schema.tasks}
    if unknown:
        raise ValueError(f"--task-wide-l2 names tasks {schema.name} lacks: "
                         f"{', '.join(sorted(unknown))}")
    log = load_log(args.data, schema)
    split = log.layout.split
    train_days, eval_days = (split.tune, split.validation) if args.validate \
        else (split.train, split.test)
    model_cfg = ModelConfig(wide=not args.no_wide, wide_bins=args.wide_bins,
                            wide_crosses=[pair.split(":") for pair in args.wide_cross])
    result = run_training(log, cfg, model_cfg, train_days, eval_days,
                          progress=not args.no_progress, schema=schema)
    path = save_checkpoint(result, args.run_dir)
    print(json.dumps({"metrics": result.metrics, "training": result.training}, indent=1))
    print(f"checkpoint: {path}")
    if args.baseline:
        baselines = run_baselines(log, args.run_dir)
        print(json.dumps({key: b["test"] for key, b in baselines.items()}, indent=1))
    return 0
