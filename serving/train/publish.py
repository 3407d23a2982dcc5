"""Publish an exported model as a new version of a model repository, atomically.

The version is built in a hidden staging folder inside the repository (same filesystem, and
hidden folders are not models to the gateway or ``check-repo``), checked there with the
same checks as ``rankserve check-repo``, and only then renamed into place: a failed parity
check or a bad graph leaves the repository exactly as it was, and a server scanning it never
sees half a version. By default the version is the next number after the highest one there
(Triton style); an existing version is replaced only with ``force``.

The model's ``config.pbtxt`` is shared by its versions. An existing one is kept when the new
version satisfies it (it may carry an operator's ``version_policy`` for a rollout); it is
replaced only when it is missing or, with ``force``, when the new version needs another one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from serving.errors import ModelCardError
from serving.repository.check import check_model, check_version
from serving.repository.config import CONFIG_FILE, parse_config
from serving.repository.versions import version_folders

T = TypeVar("T")


class PublishRefused(Exception):
    """The version cannot be published; the repository is unchanged."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class Published:
    version: int
    path: Path
    config_replaced: bool


def next_version(model_dir: Path) -> int:
    """One more than the highest numbered version folder of ``model_dir`` (1 if none)."""
    found = version_folders(model_dir) if model_dir.is_dir() else []
    return found[-1][0] + 1 if found else 1


def check_target(repository: Path, name: str, version: int | None,
                 force: bool) -> int:
    """The version to publish as (``version``, else the next one), refused before any work
    when it exists and ``force`` is not set.

    Raises:
        PublishRefused: the version exists and ``force`` is not set.
    """
    model_dir = repository / name
    chosen = version if version is not None else next_version(model_dir)
    if (model_dir / str(chosen)).exists() and not force:
        raise PublishRefused(
            f"{model_dir / str(chosen)} exists: pass --force to replace it, or leave out "
            f"--version to export as version {next_version(model_dir)}")
    return chosen


def publish_version(repository: Path, name: str, version: int, force: bool,
                    build: Callable[[Path], T]) -> tuple[T, Published]:
    """Run ``build(staging_repository)`` (it writes ``staging/name/{config.pbtxt,
    version/...}``), check the result, then move the version into ``repository``.

    Raises:
        PublishRefused: the staged model fails a check, the version exists without
            ``force``, or the existing config does not fit the new version without ``force``.
        Exception: whatever ``build`` raises (a parity failure); nothing is published.
    """
    check_target(repository, name, version, force)
    repository.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".export-{name}-", dir=repository))
    try:
        result = build(staging)
        staged = staging / name
        problems = check_model(staged)
        if problems:
            raise PublishRefused("the exported model fails its checks, nothing published: "
                                 + "; ".join(problems))
        replace_config = _config_decision(repository / name, staged, version, force)
        path = _move_into_place(repository / name, staged, version, staging, replace_config)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result, Published(version, path, replace_config)


def _config_decision(model_dir: Path, staged: Path, version: int, force: bool) -> bool:
    """Whether the staged ``config.pbtxt`` replaces the model's current one.

    Raises:
        PublishRefused: the current config does not fit the new version, without ``force``.
    """
    current = model_dir / CONFIG_FILE
    if not current.is_file():
        return True
    if current.read_text() == (staged / CONFIG_FILE).read_text():
        return False
    try:
        problems = check_version(parse_config(current), model_dir, staged / str(version))
    except ModelCardError as e:
        problems = [e.message]
    if not problems:
        return False  # keep the operator's config (its version_policy, instances)
    if force:
        return True
    raise PublishRefused(f"the new version does not fit {current} ({'; '.join(problems)}): "
                         "pass --force to replace the config, or export under another --name")


def _move_into_place(model_dir: Path, staged: Path, version: int, staging: Path,
                     replace_config: bool) -> Path:
    """Rename the staged version (and config) into ``model_dir``: each rename is atomic;
    a replaced version is moved aside first and deleted with the staging folder."""
    model_dir.mkdir(parents=True, exist_ok=True)
    target = model_dir / str(version)
    if target.exists():
        os.rename(target, staging / f"replaced-{version}")
    if replace_config:
        os.replace(staged / CONFIG_FILE, model_dir / CONFIG_FILE)
    os.rename(staged / str(version), target)
    return target
