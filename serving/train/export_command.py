"""``rankserve export``: a trained checkpoint -> a new, checked version of the repository.

The command line edge of :mod:`serving.train.export`: options (``--help`` needs no torch),
the checkpoint checked before the data log is loaded (minutes), the version built in a
staging folder and moved into place only after its parity check and ``check-repo`` pass
(:mod:`serving.train.publish`), and project errors as one line with a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from serving.train.cli_edge import run_guarded
from serving.train.publish import PublishRefused, check_target, publish_version

CHECKPOINT_FILE = "checkpoint.pt"  # serving.train.pipeline.CHECKPOINT_FILE, without torch
CARD_SECTIONS = {
    "baseline": "run `rankserve train --baseline` (about 3 minutes more) before exporting",
    "seed_study": "run `python -m serving.train.seeds --out RUN_DIR/seeds.json` (one training "
                  "per seed) before exporting",
}
"""Model-card sections that come from files beside the checkpoint, and how to make them."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", type=Path, default=Path("runs/feed_ranker"),
                        help="checkpoint written by `rankserve train` (default: %(default)s)")
    parser.add_argument("--data", default=None,
                        help="directory of the checkpoint schema's data files, for the "
                             "held-out parity requests (default: $RANKSERVE_DATA or "
                             "../shared/data/kuairand)")
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"),
                        help="repository to add the version to (default: %(default)s)")
    parser.add_argument("--name", default="feed_ranker",
                        help="model name, the repository folder (default: %(default)s)")
    parser.add_argument("--version", type=int, default=None,
                        help="version number (default: one more than the highest there)")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing version (and the model's config.pbtxt if "
                             "the new version does not fit it) (default: off)")
    parser.add_argument("--opset", type=int, default=17,
                        help="ONNX opset, at least 17 (default: %(default)s)")
    parser.add_argument("--parity-candidates", type=int, default=2000,
                        help="held-out candidates the ONNX/PyTorch parity check scores "
                             "(default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    # No data, parity over tolerance, a version that may not be replaced.
    return run_guarded("export", lambda: _export(args), (PublishRefused, OSError, ValueError))


def _export(args: argparse.Namespace) -> int:
    checkpoint = args.run_dir / CHECKPOINT_FILE
    if not checkpoint.is_file():
        raise FileNotFoundError(f"no checkpoint at {checkpoint}: run `rankserve train` "
                                "first (or pass --run-dir)")
    version = check_target(args.model_repository, args.name, args.version, args.force)
    from serving.train.data import load_log
    from serving.train.export import checkpoint_schema, export_repository

    log = load_log(args.data, checkpoint_schema(args.run_dir))

    def build(staging: Path) -> Any:
        return export_repository(args.run_dir, staging, log, args.name, version, args.opset,
                                 args.parity_candidates)

    card, published = publish_version(args.model_repository, args.name, version, args.force,
                                      build)
    onnx_path = published.path / "model.onnx"
    print(json.dumps({"model": str(onnx_path), "version": version,
                      "bytes": onnx_path.stat().st_size, "sha256": card.onnx_sha256,
                      "config_replaced": published.config_replaced, "parity": card.parity},
                     indent=1))
    for section, how in CARD_SECTIONS.items():
        if section not in card.metrics:
            print(f"rankserve export: the model card has no '{section}' section: {how}",
                  file=sys.stderr)
    return 0
