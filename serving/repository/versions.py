"""Version folders of a Triton-layout repository, and which of them ``version_policy`` serves.

Every reader of the repository (the rollout controller, ``check-repo``, the local Triton
mirror) lists models and versions through these functions, so a folder name such as
``"²"`` (a digit to ``str.isdigit`` but not to ``int``) or ``"01"`` means the same thing
everywhere: version numbers are ASCII digits only.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from serving.repository.config import CONFIG_FILE

log = logging.getLogger(__name__)

MAX_VERSION = 2**63 - 1
"""Triton's version numbers are int64."""
MAX_VERSION_DIGITS = len(str(MAX_VERSION))


def parse_version(text: str) -> int | None:
    """The version number ``text`` names (ASCII digits, no sign, an int64), else None.
    A longer run of digits is refused before ``int`` (which raises on thousands)."""
    if len(text) > MAX_VERSION_DIGITS or not (text.isascii() and text.isdigit()):
        return None
    version = int(text)
    return version if version <= MAX_VERSION else None


def model_dirs(repository: Path) -> list[Path]:
    """The repository's model folders (hidden ones excluded), by name."""
    return sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith("."))


def servable_model_dirs(repository: Path) -> list[Path]:
    """Model folders holding a ``config.pbtxt``; the others are skipped with a warning."""
    found = []
    for model_dir in model_dirs(repository):
        if (model_dir / CONFIG_FILE).is_file():
            found.append(model_dir)
        else:
            log.warning("skipping %s: no %s", model_dir, CONFIG_FILE)
    return found


def version_folders(model_dir: Path) -> list[tuple[int, Path]]:
    """Every numbered version folder of a model, ascending by number."""
    found = []
    for path in model_dir.iterdir():
        version = parse_version(path.name)
        if version is not None and path.is_dir():
            found.append((version, path))
    return sorted(found)


def versions_on_disk(model_dir: Path, filename: str) -> list[int]:
    """Versions whose folder holds ``filename`` (the model file), ascending."""
    return [v for v, path in version_folders(model_dir) if (path / filename).is_file()]


def policy_versions(config: mc.ModelConfig, on_disk: list[int]) -> list[int]:
    """The versions Triton's ``version_policy`` serves among ``on_disk`` (ascending);
    no policy means the newest one, as in Triton."""
    policy = config.version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return list(on_disk)
    if kind == "specific":
        return sorted(v for v in set(policy.specific.versions) if v in on_disk)
    latest = policy.latest.num_versions if kind == "latest" else 1
    return on_disk[-max(latest, 1):]
