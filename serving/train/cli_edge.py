"""What ``rankserve train`` and ``rankserve export`` do at the command line's edge: work
without the ``train`` extra for ``--help``, name the extra when it is missing, and report
project errors in one line with a non-zero exit instead of a traceback.

Nothing here imports torch, pandas or scipy: ``rankserve serve`` installs none of them.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from collections.abc import Callable
from typing import Any

EXTRA = "train"
INSTALL = "pip install 'rankserve[train]' (in a source checkout: make train)"
HEAVY = ("torch", "pandas", "scipy", "sklearn", "tqdm")


def missing_extra(command: str) -> str | None:
    """One line naming the extra to install when a package of it is missing, else None."""
    missing = []
    for name in HEAVY:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if not missing:
        return None
    return (f"rankserve {command}: needs the '{EXTRA}' extra ({', '.join(missing)} not "
            f"installed): {INSTALL}")


def fail(command: str, error: BaseException) -> int:
    """Print ``error`` as one line on stderr; the exit status of a failed command."""
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    print(f"rankserve {command}: {message}", file=sys.stderr)
    return 1


def run_guarded(command: str, body: Callable[[], int],
                errors: tuple[type[BaseException], ...]) -> int:
    """``body()``'s exit status; 2 with one line naming the extra when it is missing, 1 with
    one line for a project error of the kinds in ``errors``."""
    problem = missing_extra(command)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    try:
        return body()
    except errors as e:
        return fail(command, e)


def train_defaults() -> dict[str, Any]:
    """``TrainConfig``'s defaults for ``--help``: from the class where torch is installed,
    else read from the trainer's source (literal defaults only), so help needs no extra."""
    try:
        trainer = importlib.import_module("serving.train.trainer")
        return dict(trainer.TrainConfig().to_dict())
    except ImportError:
        pass
    spec = importlib.util.find_spec("serving.train.trainer")
    if spec is None or spec.origin is None:
        return {}
    with open(spec.origin, encoding="utf-8") as source:
        tree = ast.parse(source.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "TrainConfig":
            found = {}
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) \
                        and item.value is not None:
                    try:
                        found[item.target.id] = ast.literal_eval(item.value)
                    except ValueError:
                        continue
            return found
    return {}
