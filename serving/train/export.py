"""``rankserve export``: trained checkpoint -> ONNX -> Triton model repository.

Steps: export the PyTorch model to ONNX (opset >= 17, a dynamic leading dimension on every
input, R and N separate), check it with ``onnx.checker``, apply ONNX Runtime's *basic* graph
optimizations (constant folding, redundant-node removal: standard ONNX ops only, so any
Triton onnxruntime backend loads the result) and save them, then measure parity against
PyTorch on real held-out requests and write ``config.pbtxt`` and the model card.
The command line (``rankserve export``) is :mod:`serving.train.export_command`, which runs
this into a staging folder and publishes the version only once it passes its checks.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from serving.repository.card import CARD_FILE, ONNX_FILE, ModelCard, sha256_of
from serving.repository.config import write_config
from serving.repository.schema import PROBS, Schema
from serving.repository.tensors import TensorSpec, wire_of_numpy
from serving.train.baseline import BASELINE_FILES
from serving.train.counters import attach_counters, export_counters
from serving.train.data import DEFAULT_SCHEMA, Log, group_requests
from serving.train.dataset import EncodedSplit
from serving.train.model import FeedRanker
from serving.train.pipeline import CHECKPOINT_FILE, load_checkpoint
from serving.train.precision import measure_split
from serving.train.reader import DataLayout
from serving.train.seeds import SEEDS_FILE

OPSET = 17
PARITY_TOLERANCE = 1e-5


def checkpoint_schema(run_dir: Path) -> Schema:
    """The schema a checkpoint was trained with (feed_ranker's for an older checkpoint), so
    export reads the held-out requests from that schema's data files."""
    saved = torch.load(run_dir / CHECKPOINT_FILE, weights_only=True)
    return Schema.parse(saved["schema"]) if saved.get("schema") else DEFAULT_SCHEMA


def tensor_specs(sample: Mapping[str, np.ndarray], schema: Schema) -> list[TensorSpec]:
    """Input specs in the schema's order, leading dimension dynamic (-1)."""
    return [TensorSpec(name, wire_of_numpy(sample[name].dtype), (-1, *sample[name].shape[1:]))
            for name in schema.input_names()]


def export_onnx(model: FeedRanker, sample: Mapping[str, np.ndarray], path: Path,
                schema: Schema, opset: int = OPSET) -> None:
    """Export, check and optimise ``model`` into one self-contained ONNX file.

    Raises:
        onnx.checker.ValidationError: the exported graph is invalid.
    """
    names, user_inputs = schema.input_names(), schema.input_names("user")
    dynamic = {name: {0: "requests" if name in user_inputs else "candidates"}
               for name in names}
    dynamic[PROBS] = {0: "candidates"}
    args = tuple(torch.from_numpy(np.ascontiguousarray(sample[n])) for n in names)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.with_suffix(".raw.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model.eval(), args, str(raw), dynamo=False, opset_version=opset,
                          input_names=list(names), output_names=[PROBS],
                          dynamic_axes=dynamic, do_constant_folding=True)
    onnx.checker.check_model(onnx.load(str(raw)), full_check=True)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(path)
    ort.InferenceSession(str(raw), options, providers=["CPUExecutionProvider"])
    raw.unlink()
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def onnx_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure_parity(model: FeedRanker, session: ort.InferenceSession, data: EncodedSplit,
                   schema: Schema, requests_per_batch: int = 64) -> dict[str, Any]:
    """Max and mean |ONNX - PyTorch| of the probabilities over every candidate of ``data``,
    scored in multi-request batches (so ``item_to_user`` gathers across requests, as in
    serving)."""
    diffs = []
    for start in range(0, data.n_requests, requests_per_batch):
        stop = min(start + requests_per_batch, data.n_requests)
        inputs, _ = data.select(np.arange(start, stop))
        with torch.no_grad():
            expected = model(*(torch.from_numpy(inputs[n])
                               for n in schema.input_names())).numpy()
        got = session.run([PROBS], inputs)[0]
        diffs.append(np.abs(got - expected).ravel())
    diff = np.concatenate(diffs)
    test = DataLayout.of(schema).split.test if schema.data else ("?",)
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "candidates": data.n_items, "requests": data.n_requests,
            "requests_per_batch": requests_per_batch, "tolerance": PARITY_TOLERANCE,
            "data": f"held-out days {test[0]}..{test[-1]}, requests grouped by "
                    f"data.request.replay_keys"}


def _extra_metrics(run_dir: Path) -> dict[str, Any]:
    """Baseline and seed-study results saved beside the checkpoint, when present."""
    out: dict[str, Any] = {}
    for key, name in (*BASELINE_FILES.items(), ("seed_study", SEEDS_FILE)):
        path = run_dir / name
        if path.is_file():
            out[key] = json.loads(path.read_text())
    return out


def export_repository(run_dir: Path, repository: Path, log: Log,
                      name: str = "feed_ranker", version: int = 1, opset: int = OPSET,
                      parity_candidates: int = 2000) -> ModelCard:
    """Write ``repository/name/{config.pbtxt, version/model.onnx, version/model_card.json}``.

    Raises:
        ValueError: parity is worse than :data:`PARITY_TOLERANCE`.
    """
    model, encoder, saved = load_checkpoint(run_dir)
    log = attach_counters(log, encoder.schema)  # its counting features, if it has any
    grouped = group_requests(log.days(log.layout.split.test), by="day")
    n_requests = min(len(grouped), int(np.searchsorted(grouped.offsets, parity_candidates)))
    held_out = EncodedSplit.build(encoder, grouped.head(n_requests))
    sample, _ = held_out.select(np.arange(8))
    model_dir = repository / name
    onnx_path = model_dir / str(version) / ONNX_FILE
    schema = encoder.schema
    export_onnx(model, sample, onnx_path, schema, opset)
    parity = measure_parity(model, onnx_session(onnx_path), held_out, schema)
    if parity["max_abs_diff"] > PARITY_TOLERANCE:
        raise ValueError(f"ONNX/PyTorch parity {parity['max_abs_diff']:.2e} exceeds "
                         f"{PARITY_TOLERANCE:.0e}")
    tasks = list(saved["tasks"])
    # FP16/TF32 emulated on CPU: what config.pbtxt's TensorRT precision may be.
    parity["precision"] = measure_split(onnx.load(str(onnx_path)), held_out,
                                        [schema.value_weights.get(t, 1.0) for t in tasks])
    card = ModelCard(
        name=name, version=version, tasks=tasks, inputs=tensor_specs(sample, schema),
        outputs=[TensorSpec(PROBS, "FP32", (-1, len(tasks)))],
        features=encoder.to_card(),
        value_weights={t: schema.value_weights.get(t, 1.0) for t in tasks},
        opset=opset, onnx_sha256=sha256_of(onnx_path), training=saved["training"],
        metrics={"test": saved["metrics"], **_extra_metrics(run_dir)}, parity=parity,
        schema=schema.to_dict())
    export_counters(log, schema, saved, onnx_path.parent, run_dir, card)  # counters.npz
    card.save(onnx_path.parent / CARD_FILE)
    write_config(card, model_dir, schema.input_names("user"))
    return card

