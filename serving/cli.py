"""The ``rankserve`` command: one subcommand per job, each living in the module that owns it.

Subcommand modules are imported lazily so ``rankserve serve`` never imports torch.
Each module exposes ``configure(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("serving.gateway.command", "run the ranking gateway"),
    "train": ("serving.train.command", "train the multi-task ranker on KuaiRand"),
    "export": ("serving.train.export", "export a trained ranker to the model repository"),
    "check-repo": ("serving.repository.check", "validate a Triton model repository offline"),
    "triton": ("serving.localtriton.server", "run a local tritonserver for development"),
}


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="rankserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not args_list or args_list[0] not in COMMANDS:
        parser.parse_args(args_list)  # prints usage / error and exits
        return 2
    name = args_list[0]
    module = importlib.import_module(COMMANDS[name][0])
    command_parser = argparse.ArgumentParser(prog=f"rankserve {name}",
                                             description=COMMANDS[name][1])
    module.configure(command_parser)
    return int(module.run(command_parser.parse_args(args_list[1:])))


if __name__ == "__main__":
    raise SystemExit(main())
