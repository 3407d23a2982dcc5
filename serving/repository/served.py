"""A served model: what one version of a Triton-layout repository model is.

Each model directory with a ``config.pbtxt`` and numbered version folders holding an ONNX
file is served at the versions its ``version_policy`` selects (:func:`policy_selection`).
A model card beside the ONNX file makes the model rankable (``/v1/rank``). The tensor
signature comes from ``config.pbtxt``, as in Triton.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from serving.errors import ModelCardError
from serving.repository.card import CARD_FILE, ONNX_FILE, ModelCard
from serving.repository.config import CONFIG_FILE, parse_config
from serving.repository.counters import SNAPSHOT_FILE, CounterSnapshot
from serving.repository.tensors import BY_CONFIG, TensorSpec
from serving.repository.versions import policy_versions, servable_model_dirs, versions_on_disk


@dataclass(frozen=True)
class ServedModel:
    name: str
    version: int
    onnx_path: Path
    config: mc.ModelConfig
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    card: ModelCard | None
    counters: CounterSnapshot | None = field(default=None, compare=False)
    """The version's counter snapshot (``counters.npz``), for a schema with counters."""

    @property
    def max_batch_size(self) -> int:
        return int(self.config.max_batch_size)

    def input_names(self) -> frozenset[str]:
        return frozenset(t.name for t in self.inputs)


def _tensors(entries: list[mc.ModelInput] | list[mc.ModelOutput], batched: bool,
             where: str) -> tuple[TensorSpec, ...]:
    out = []
    for entry in entries:
        dtype = BY_CONFIG.get(entry.data_type)
        if dtype is None:
            raise ModelCardError(f"{where}: tensor '{entry.name}' has a datatype the gateway "
                                 f"does not serve ({mc.DataType.Name(entry.data_type)})",
                                 field=entry.name)
        dims = tuple(int(d) for d in entry.dims)
        out.append(TensorSpec(entry.name, dtype.wire, (-1, *dims) if batched else dims))
    return tuple(out)


def model_file(config: mc.ModelConfig) -> str:
    """The model file's name inside a version folder."""
    return config.default_model_filename or ONNX_FILE


def model_versions(model_dir: Path) -> tuple[mc.ModelConfig, list[int]]:
    """A model directory's config and the versions on disk (folders holding the ONNX
    file), ascending.

    Raises:
        ModelCardError: no config, no version with an ONNX file, or a name mismatch.
    """
    config = parse_config(model_dir / CONFIG_FILE)
    if config.name and config.name != model_dir.name:
        raise ModelCardError(f"{model_dir}: config name '{config.name}' differs from the "
                             f"directory name", field="name")
    filename = model_file(config)
    versions = versions_on_disk(model_dir, filename)
    if not versions:
        raise ModelCardError(f"{model_dir}: no version folder holds {filename}",
                             field=str(model_dir))
    return config, versions


def policy_selection(repository: Path) -> dict[str, list[int]]:
    """Per model of ``repository``, the versions its ``version_policy`` serves.

    Raises:
        ModelCardError: the repository is missing or holds no model, or a model is invalid.
    """
    if not repository.is_dir():
        raise ModelCardError(f"model repository not found: {repository}",
                             field="model_repository")
    selection = {}
    for model_dir in servable_model_dirs(repository):
        config, on_disk = model_versions(model_dir)
        selection[model_dir.name] = policy_versions(config, on_disk)
    if not selection:
        raise ModelCardError(f"model repository {repository} holds no model",
                             field="model_repository")
    return selection


def load_model(model_dir: Path, version: int | None = None) -> ServedModel:
    """Read one model directory at ``version`` (default: the newest on disk).

    Raises:
        ModelCardError: no config, no such version, or an unservable config.
    """
    config, versions = model_versions(model_dir)
    name = model_dir.name
    version = versions[-1] if version is None else version
    if version not in versions:
        raise ModelCardError(f"{model_dir}: no version {version} on disk (have {versions})",
                             field="version")
    version_dir = model_dir / str(version)
    card_path = version_dir / CARD_FILE
    card = ModelCard.load(card_path) if card_path.is_file() else None
    snapshot = version_dir / SNAPSHOT_FILE
    batched = config.max_batch_size > 0
    return ServedModel(name, version, version_dir / model_file(config), config,
                       _tensors(list(config.input), batched, str(model_dir)),
                       _tensors(list(config.output), batched, str(model_dir)), card,
                       CounterSnapshot.load(snapshot) if snapshot.is_file() else None)


def served_models(repository: Path) -> list[ServedModel]:
    """Every version the repository's policies select, loaded (what a gateway started on
    ``repository`` serves).

    Raises:
        ModelCardError: see :func:`policy_selection` and :func:`load_model`.
    """
    return [load_model(repository / name, version)
            for name, versions in sorted(policy_selection(repository).items())
            for version in versions]


def served_cards(repository: Path) -> dict[str, ModelCard]:
    """The model card of each model's newest served version, for models that have one
    (what a Triton backend started on ``repository`` checks Triton's signatures against).

    Raises:
        ModelCardError: see :func:`served_models`.
    """
    return {m.name: m.card for m in served_models(repository) if m.card is not None}
