"""``rankserve check-repo [PATH]``: validate a Triton model repository offline.

For every model folder: ``config.pbtxt`` must parse into Triton's ``ModelConfig`` protobuf
(so a misspelled field fails here, not on a GPU node), its name must match the folder, and
for ONNX models each version's graph must agree with the config (input and output names,
dtypes, dims, the batch dimension implied by ``max_batch_size``, the warm-up sample) and
with the model card beside it (names, dtypes, shapes, the sha256 of ``model.onnx``, and its
feature schema: the inputs the schema's tensor rule yields must be the graph's).
Every disagreement is reported with the file and tensor it concerns; the exit status is 1
if there is any.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import onnx
from tritonclient.grpc import model_config_pb2 as mc

from serving.errors import ModelCardError
from serving.repository.card import CARD_FILE, ONNX_FILE, ModelCard, sha256_of
from serving.repository.config import CONFIG_FILE, parse_config, tensorrt_problems
from serving.repository.schema import SchemaError, disagreements, schema_of_card
from serving.repository.served import model_file
from serving.repository.tensors import (
    TensorSpec,
    config_spelling,
    differences,
    specs_by_name,
    wire_of_config,
    wire_of_onnx,
)
from serving.repository.versions import model_dirs, version_folders

ONNX_PLATFORM, ONNX_BACKEND = "onnxruntime_onnx", "onnxruntime"


def _graph_tensors(values: Iterable[onnx.ValueInfoProto]) -> dict[str, TensorSpec]:
    out = {}
    for v in values:
        t = v.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
        out[v.name] = TensorSpec(v.name, wire_of_onnx(t.elem_type), dims)
    return out


def _config_tensors(entries: Sequence[mc.ModelInput] | Sequence[mc.ModelOutput],
                    batched: bool) -> dict[str, TensorSpec]:
    """Config tensors with the implicit batch dimension made explicit (-1) if batched."""
    return {e.name: TensorSpec(e.name, wire_of_config(e.data_type),
                               ((-1,) if batched else ()) + tuple(e.dims)) for e in entries}


def compare(kind: str, where: str, expected: dict[str, TensorSpec],
            actual: dict[str, TensorSpec], source: str) -> list[str]:
    """Differences between ``actual`` (from ``where``) and ``expected`` (from ``source``),
    with dtypes in config spelling (``TYPE_FP32``) as the repository's files write them."""
    problems = []
    for d in differences(kind, expected, actual):
        if d.want is None:
            problems.append(f"{where}: {kind} '{d.name}' is not an {kind} of {source} "
                            f"({kind}s there: {', '.join(sorted(expected))})")
        elif d.got is None:
            problems.append(f"{where}: {kind} '{d.name}' of {source} is missing")
        elif d.got.dtype != d.want.dtype:
            problems.append(f"{where}: {kind} '{d.name}' has dtype "
                            f"{config_spelling(d.got.dtype)} but {source} has "
                            f"{config_spelling(d.want.dtype)}")
        else:
            problems.append(f"{where}: {kind} '{d.name}' has dims {list(d.got.shape)} but "
                            f"{source} has {list(d.want.shape)}")
    return problems


def _check_warmup(config: mc.ModelConfig, graph: dict[str, TensorSpec], where: str) -> list[str]:
    problems = []
    for sample in config.model_warmup:
        for name, spec in sample.inputs.items():
            tensor = graph.get(name)
            label = f"{where}: model_warmup '{sample.name}' input '{name}'"
            if tensor is None:
                problems.append(f"{label} is not a model input")
                continue
            dtype = wire_of_config(spec.data_type)
            dims = ((sample.batch_size,) if config.max_batch_size > 0 else ()) + tuple(spec.dims)
            fits = len(dims) == len(tensor.shape) and all(
                want in (-1, got) for want, got in zip(tensor.shape, dims, strict=True))
            if dtype != tensor.dtype or not fits:
                problems.append(f"{label} is {config_spelling(dtype)} {list(dims)}, the model "
                                f"takes {config_spelling(tensor.dtype)} {list(tensor.shape)}")
    return problems


def check_card(model_name: str, version_dir: Path, graph_in: dict[str, TensorSpec],
               graph_out: dict[str, TensorSpec], label: str) -> list[str]:
    """The model card beside ``model.onnx`` against the graph and the file's checksum."""
    card_path = version_dir / CARD_FILE
    where = f"{label}/{CARD_FILE}"
    if not card_path.is_file():
        return []  # a card is optional: only models served on /v1/rank need one
    try:
        card = ModelCard.load(card_path)
    except ModelCardError as e:
        return [f"{where}: {e.message}"]
    problems = []
    if card.name != model_name:
        problems.append(f"{where}: name '{card.name}' does not match the model '{model_name}'")
    if str(card.version) != version_dir.name:
        problems.append(f"{where}: version {card.version} does not match folder "
                        f"'{version_dir.name}'")
    problems += compare("input", where, graph_in, specs_by_name(card.inputs), ONNX_FILE)
    problems += compare("output", where, graph_out, specs_by_name(card.outputs), ONNX_FILE)
    try:
        problems += disagreements(schema_of_card(card), card, graph_in, where)
    except SchemaError as e:
        problems.append(f"{where}: schema: {e.message}")
    actual = sha256_of(version_dir / ONNX_FILE)
    if card.onnx_sha256 != actual:
        problems.append(f"{where}: onnx_sha256 {card.onnx_sha256} does not match "
                        f"{ONNX_FILE} (sha256 {actual})")
    return problems


def check_version(config: mc.ModelConfig, model_dir: Path, version_dir: Path) -> list[str]:
    """One version folder of an ONNX model: graph vs config, warm-up and card."""
    label = f"{model_dir.name}/{version_dir.name}"
    onnx_path = version_dir / model_file(config)
    if not onnx_path.is_file():
        return [f"{label}: {onnx_path.name} not found"]
    try:
        graph = onnx.load(str(onnx_path), load_external_data=False).graph
    except Exception as e:  # onnx raises DecodeError and others for a corrupt file
        return [f"{label}/{onnx_path.name}: not a readable ONNX model ({e})"]
    initializers = {i.name for i in graph.initializer}
    graph_in = _graph_tensors(v for v in graph.input if v.name not in initializers)
    graph_out = _graph_tensors(graph.output)
    where = f"{model_dir.name}/{CONFIG_FILE}"
    source = f"{label}/{onnx_path.name}"
    batched = config.max_batch_size > 0
    problems = compare("input", where, graph_in, _config_tensors(config.input, batched), source)
    problems += compare("output", where, graph_out, _config_tensors(config.output, batched),
                        source)
    problems += _check_warmup(config, graph_in, where)
    if onnx_path.name == ONNX_FILE:
        problems += check_card(model_dir.name, version_dir, graph_in, graph_out, label)
        problems += _check_tensorrt(config, version_dir, where)
    return problems


def _check_tensorrt(config: mc.ModelConfig, version_dir: Path, where: str) -> list[str]:
    """The TensorRT accelerator against the card: precision, caches, profile, warm-up
    (:func:`serving.repository.config.tensorrt_problems`). A card that does not load is
    check_card's to report."""
    try:
        card = ModelCard.load(version_dir / CARD_FILE)
        users = schema_of_card(card).input_names("user")
    except (ModelCardError, SchemaError):
        return []
    return tensorrt_problems(config, card, users, where)


def check_model(model_dir: Path) -> list[str]:
    """Every check for one model folder; an empty list means it is consistent."""
    try:
        config = parse_config(model_dir / CONFIG_FILE)
    except ModelCardError as e:
        return [f"{model_dir.name}/{CONFIG_FILE}: {e.message.split(': ', 1)[-1]}"]
    where = f"{model_dir.name}/{CONFIG_FILE}"
    problems = []
    if config.name and config.name != model_dir.name:
        problems.append(f"{where}: name '{config.name}' does not match its folder "
                        f"'{model_dir.name}'")
    versions = [path for _, path in version_folders(model_dir)]
    if not versions:
        problems.append(f"{model_dir.name}: no numeric version folder")
    if config.platform == ONNX_PLATFORM or config.backend == ONNX_BACKEND:
        for version_dir in versions:
            problems += check_version(config, model_dir, version_dir)
    return problems


def check_repository(repository: Path) -> tuple[list[str], list[str]]:
    """``(models checked, problems)`` for every model folder of ``repository``.

    Raises:
        FileNotFoundError: ``repository`` is not a directory.
    """
    if not repository.is_dir():
        raise FileNotFoundError(f"model repository not found: {repository}")
    models = model_dirs(repository)
    problems = []
    for model_dir in models:
        problems += check_model(model_dir)
    return [m.name for m in models], problems


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", nargs="?", type=Path, default=Path("model_repository"),
                        help="model repository to validate (default: model_repository)")


def run(args: argparse.Namespace) -> int:
    try:
        models, problems = check_repository(args.path)
    except FileNotFoundError as e:
        print(f"check-repo: {e}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"check-repo: {problem}", file=sys.stderr)
    if problems:
        print(f"check-repo: {len(problems)} problem(s) in {args.path}", file=sys.stderr)
        return 1
    if not models:
        print(f"check-repo: no models in {args.path}", file=sys.stderr)
        return 1
    print(f"check-repo: OK, {len(models)} model(s) in {args.path}: {', '.join(models)}")
    return 0
