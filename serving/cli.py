"""The ``rankserve`` command: one subcommand per job, each living in the module that owns it.

Subcommand modules are imported lazily so ``rankserve serve`` never imports torch, and
``--help`` of every subcommand works without its optional dependencies.
Each module exposes ``configure(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from importlib import metadata

COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("serving.gateway.command", "run the ranking gateway (HTTP /v1/rank, /v2, "
                                         "/metrics)"),
    "train": ("serving.train.command", "train the multi-task ranker on KuaiRand (needs the "
                                       "'train' extra)"),
    "export": ("serving.train.export_command", "export a trained ranker as a new model-repository "
                                       "version (needs the 'train' extra)"),
    "check-repo": ("serving.repository.check", "validate a Triton model repository offline"),
    "triton": ("serving.localtriton.server", "run a local tritonserver for development"),
    "loadtest": ("loadtests.locust.run", "Locust load test of a gateway and its SLO report "
                                         "(needs the 'loadtest' extra)"),
    "bench": ("loadtests.bench.__main__", "benchmark the gateway against raw ONNX Runtime "
                                          "(needs the 'loadtest' extra)"),
}
EXTRAS = {"train": "train", "export": "train", "loadtest": "loadtest", "bench": "loadtest"}
"""The extra each command's own dependencies come with."""

DESCRIPTION = """\
rankserve ranks a user's candidate posts or videos: it predicts each candidate's
engagement probabilities with a multi-task model and returns them ranked, inside a
latency budget of milliseconds.
"""

EPILOG = """\
getting started:
  rankserve serve                       serve model_repository/ on 127.0.0.1:8000
  rankserve serve --print-config        show the settings it would run with
  rankserve check-repo model_repository validate a model repository
  rankserve train && rankserve export   train a ranker and export it as the next version

Every setting is a flag, a RANKSERVE_* environment variable or a key of a --config YAML
file; `rankserve COMMAND --help` lists each command's options with their defaults.
"""


def version() -> str:
    """The installed package's version (the source tree's when not installed)."""
    try:
        return metadata.version("rankserve")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="rankserve", description=DESCRIPTION, epilog=EPILOG,
        usage="rankserve [--version] COMMAND [options]",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"rankserve {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands",
                                required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not args_list or args_list[0] not in COMMANDS:
        parser.parse_args(args_list)  # prints help, the version, or an error, and exits
        return 2
    name = args_list[0]
    try:
        module = importlib.import_module(COMMANDS[name][0])
    except ModuleNotFoundError as e:
        if name not in EXTRAS or (e.name or "").startswith(("serving", "loadtests")):
            raise
        print(f"rankserve {name}: needs {e.name}, which comes with the '{EXTRAS[name]}' "
              f"extra: pip install 'rankserve[{EXTRAS[name]}]'", file=sys.stderr)
        return 2
    if not hasattr(module, "configure"):  # the load tests keep their own argument parser
        return int(module.main(args_list[1:]))
    command_parser = argparse.ArgumentParser(prog=f"rankserve {name}",
                                             description=COMMANDS[name][1])
    module.configure(command_parser)
    return int(module.run(command_parser.parse_args(args_list[1:])))


if __name__ == "__main__":
    raise SystemExit(main())
