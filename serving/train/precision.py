"""Parity per precision: what FP16 and TF32 kernels would do to the scores, measured on CPU.

The model card's FP32 parity (ONNX vs PyTorch, <= 1e-5) covers FP32 kernels only, but a
GPU may serve the same graph with TensorRT FP16 engines or TF32 matmuls. Neither runs on
a CPU, so both are emulated on the exported graph and compared with the FP32 ONNX model
on the same held-out requests (multi-request batches, as served):

* **FP16**: onnxconverter-common's ``convert_float_to_float16`` (inputs and outputs kept
  FP32), run by ONNX Runtime's CPU FP16 kernels: FP16 weights, activations and
  arithmetic. The converter leaves the graph's own ``Cast(to=FLOAT)`` nodes producing FP32
  where it declared FP16, which ONNX Runtime refuses; they are retargeted to FLOAT16.
* **TF32**: Ampere+ tensor cores read matmul operands with a 10-bit mantissa (FP32's
  8-bit exponent) and accumulate in FP32; nothing else changes. Emulated by rounding every
  ``MatMul``/``Gemm`` operand to 10 mantissa bits (round to nearest even): weights exactly
  in numpy, activations by an inserted ONNX subgraph ``round(x / q) * q`` with
  ``q = 2^(floor(log2 |x|) - 10)`` (``log2`` from ``Log`` can be off by one ulp right at a
  power of two, where the rounding is then to 9 or 11 bits). CPU arithmetic in FP32.

For each: max and mean |dp| over every probability, and top-k overlap of the value score
(the card's default value weights) per request, mean and worst, for a few k. A precision
is *supported* (``config.pbtxt`` may serve it: :func:`serving.repository.config.
tensorrt_precision`) when max |dp| <= :data:`SERVING_TOLERANCE` and the worst top-k
overlap at every k holds :data:`MIN_OVERLAP`.
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from serving.ranking.features import FeatureEncoder
from serving.repository.card import CARD_FILE, ONNX_FILE, ModelCard
from serving.repository.config import write_config
from serving.repository.schema import ITEM_TO_USER, PROBS, schema_of_card
from serving.train.data import DEFAULT_SCHEMA, group_requests, load_log
from serving.train.dataset import EncodedSplit

SERVING_TOLERANCE = 1e-3
"""Largest max |dp| a reduced precision may have and still be served."""
MIN_OVERLAP = 0.9
"""Worst per-request top-k overlap (of the value ranking) a reduced precision must keep."""
TOP_K = (10, 50)
MATMULS = ("MatMul", "Gemm")

Batches = Iterable[Mapping[str, np.ndarray]]


def round_tf32(values: np.ndarray) -> np.ndarray:
    """FP32 values rounded to TF32's 10-bit mantissa (nearest, ties to even), as FP32."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    lsb = (bits >> np.uint32(13)) & np.uint32(1)
    rounded = (bits + np.uint32(0x0FFF) + lsb) & np.uint32(0xFFFFE000)
    return rounded.view(np.float32)


def fp16_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph in FP16, FP32 at its inputs and outputs (see the module docstring)."""
    from onnxconverter_common import float16

    own_casts = {n.name for n in model.graph.node if n.op_type == "Cast"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one warning per weight clamped to FP16's range
        converted: onnx.ModelProto = float16.convert_float_to_float16(
            model, keep_io_types=True)
    for node in converted.graph.node:
        if node.op_type == "Cast" and node.name in own_casts:
            for attribute in node.attribute:
                if attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                    attribute.i = TensorProto.FLOAT16
    return converted


def tf32_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with every matmul operand rounded to TF32 (see the module docstring)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    rounded: dict[str, str] = {}
    nodes: list[onnx.NodeProto] = []
    for k, value in (("tf32_tiny", 1e-30), ("tf32_ln2", float(np.log(2.0))),
                     ("tf32_two", 2.0), ("tf32_bits", 10.0)):
        graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), k))
    for node in graph.node:
        if node.op_type in MATMULS:
            for i, name in enumerate(node.input[:2]):
                if name not in rounded:
                    rounded[name] = (_round_weight(graph, weights[name]) if name in weights
                                     else _round_activation(nodes, name))
                node.input[i] = rounded[name]
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for n in graph.node for name in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model


def _round_weight(graph: onnx.GraphProto, weight: onnx.TensorProto) -> str:
    name = f"{weight.name}_tf32"
    values = numpy_helper.to_array(weight)
    if values.dtype == np.float32:
        graph.initializer.append(numpy_helper.from_array(round_tf32(values), name))
        return name
    return weight.name


def _round_activation(nodes: list[onnx.NodeProto], name: str) -> str:
    """Nodes computing ``round(x / q) * q``, ``q = 2^(floor(log2 max(|x|, tiny)) - 10)``."""
    out = f"{name}_tf32"

    def node(op: str, inputs: list[str], suffix: str) -> str:
        nodes.append(helper.make_node(op, inputs, [f"{out}_{suffix}"]))
        return f"{out}_{suffix}"

    magnitude = node("Max", [node("Abs", [name], "abs"), "tf32_tiny"], "max")
    exponent = node("Floor", [node("Div", [node("Log", [magnitude], "log"), "tf32_ln2"],
                                   "log2")], "floor")
    quantum = node("Pow", ["tf32_two", node("Sub", [exponent, "tf32_bits"], "exp")], "q")
    steps = node("Round", [node("Div", [name, quantum], "div")], "round")
    nodes.append(helper.make_node("Mul", [steps, quantum], [out]))
    return out


EMULATIONS: dict[str, Callable[[onnx.ModelProto], onnx.ModelProto]] = {
    "fp16": fp16_model, "tf32": tf32_model}
METHODS = {
    "fp16": "onnxconverter-common convert_float_to_float16 (keep_io_types), ONNX Runtime "
            "CPU FP16 kernels",
    "tf32": "MatMul/Gemm operands rounded to a 10-bit mantissa (weights exactly, "
            "activations by an inserted round(x/q)*q subgraph), FP32 arithmetic on CPU",
}


def cpu_session(model: onnx.ModelProto | str) -> ort.InferenceSession:
    """A one-thread CPU session (``model``: a path or a ModelProto)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3  # not ORT's notes on the emulations' unused weights
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _overlaps(reference: np.ndarray, candidate: np.ndarray, owners: np.ndarray,
              weights: np.ndarray, k: int) -> list[float]:
    """Per request with at least ``k`` candidates: |top-k(reference value) &
    top-k(candidate value)| / k."""
    out = []
    ref_value, cand_value = reference @ weights, candidate @ weights
    for request in np.unique(owners):
        rows = np.flatnonzero(owners == request)
        if len(rows) < k:
            continue
        top_ref = set(rows[np.argsort(-ref_value[rows], kind="stable")[:k]])
        top_cand = set(rows[np.argsort(-cand_value[rows], kind="stable")[:k]])
        out.append(len(top_ref & top_cand) / k)
    return out


def measure(model: onnx.ModelProto, batches: Batches, value_weights: Sequence[float],
            ranking_batches: Batches = (), precisions: Sequence[str] = ("tf32", "fp16"),
            top_k: Sequence[int] = TOP_K, index: str = "item_to_user") -> dict[str, Any]:
    """Parity of each emulated precision against the FP32 graph: the card's
    ``parity.precision`` section (see the module docstring). |dp| over ``batches`` (real
    requests); top-k overlap over the requests of ``ranking_batches`` (feed-sized
    requests: real logs hold few candidates per request) and of ``batches`` that have at
    least k candidates.

    Raises:
        KeyError: an unknown precision.
        Exception: ONNX Runtime's own errors if an emulated graph does not run.
    """
    reference = cpu_session(model)
    sessions = {p: cpu_session(EMULATIONS[p](model)) for p in precisions}
    weights = np.asarray(value_weights, dtype=np.float32)
    diffs: dict[str, list[np.ndarray]] = {p: [] for p in precisions}
    overlaps: dict[str, dict[int, list[float]]] = {p: {k: [] for k in top_k}
                                                    for p in precisions}
    candidates = requests = 0
    for batch, scored in [*((b, True) for b in batches),
                          *((b, False) for b in ranking_batches)]:
        want = reference.run([PROBS], dict(batch))[0]
        if scored:
            candidates += len(want)
            requests += len(np.unique(batch[index]))
        for p, session in sessions.items():
            got = session.run([PROBS], dict(batch))[0].astype(np.float32)
            if scored:
                diffs[p].append(np.abs(got - want).ravel())
            for k in top_k:
                overlaps[p][k] += _overlaps(want, got, batch[index], weights, k)
    section: dict[str, Any] = {
        "reference": "the FP32 ONNX model on ONNX Runtime's CPU provider",
        "candidates": candidates, "requests": requests,
        "ranked_requests": {f"top{k}": len(overlaps[precisions[0]][k]) for k in top_k}
        if precisions else {},
        "serving_tolerance": SERVING_TOLERANCE, "min_top_k_overlap": MIN_OVERLAP}
    for p in precisions:
        diff = np.concatenate(diffs[p])
        entry: dict[str, Any] = {"method": METHODS[p], "max_abs_diff": float(diff.max()),
                                 "mean_abs_diff": float(diff.mean())}
        for k in top_k:  # no request that large: no figure, and no support claimed
            found = overlaps[p][k]
            entry[f"top{k}_overlap_mean"] = float(np.mean(found)) if found else None
            entry[f"top{k}_overlap_min"] = float(np.min(found)) if found else None
        entry["supported"] = bool(entry["max_abs_diff"] <= SERVING_TOLERANCE and all(
            (entry[f"top{k}_overlap_min"] or 0.0) >= MIN_OVERLAP for k in top_k))
        section[p] = entry
    return section


def split_batches(data: EncodedSplit, requests_per_batch: int = 64) -> Batches:
    """``data``'s requests in multi-request batches, in split order (as export's parity)."""
    for start in range(0, data.n_requests, requests_per_batch):
        stop = min(start + requests_per_batch, data.n_requests)
        yield data.select(np.arange(start, stop))[0]


def feed_batches(data: EncodedSplit, users: int = 64, pool: int = 500,
                 users_per_batch: int = 4, seed: int = 0) -> Batches:
    """Feed-sized requests from real rows: each of ``data``'s first ``users`` users with
    the same ``pool`` held-out candidates (drawn at random), ``users_per_batch`` requests a
    batch: what top-k overlap needs, since a logged request holds few candidates."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(data.n_items, size=min(pool, data.n_items), replace=False))
    for start in range(0, min(users, data.n_requests), users_per_batch):
        who = np.arange(start, min(start + users_per_batch, users, data.n_requests))
        batch = {k: v[who] for k, v in data.users.items()}
        batch.update({k: np.tile(v[rows], (len(who),) + (1,) * (v.ndim - 1))
                      for k, v in data.items.items()})
        batch[ITEM_TO_USER] = np.repeat(np.arange(len(who), dtype=np.int64), len(rows))
        yield batch


def measure_split(model: onnx.ModelProto, data: EncodedSplit,
                  value_weights: Sequence[float]) -> dict[str, Any]:
    """:func:`measure` on held-out data as export and :func:`add_to_card` do it: |dp| on
    its real requests (64 a batch), top-k on feed-sized requests built from it.

    Raises:
        Exception: ONNX Runtime's own errors if an emulated graph does not run.
    """
    section = measure(model, split_batches(data), value_weights,
                      ranking_batches=feed_batches(data))
    section["ranking_data"] = ("top-k: 64 held-out users, each with the same 500 held-out "
                               "candidates drawn at random (seed 0), ranked by the card's "
                               "value weights")
    return section


def held_out(encoder: FeatureEncoder, data_dir: Path | None = None,
             candidates: int = 2000) -> EncodedSplit:
    """The held-out requests export measures parity on: the test days, one request per
    user-day, the first ones holding about ``candidates`` candidates. A schema without a
    ``data`` section (a card from before schemas) reads the log as the KuaiRand schema
    does."""
    log = load_log(data_dir, encoder.schema if encoder.schema.data else DEFAULT_SCHEMA)
    grouped = group_requests(log.days(log.layout.split.test), by="day")
    n = min(len(grouped), int(np.searchsorted(grouped.offsets, candidates)))
    return EncodedSplit.build(encoder, grouped.head(n))


def add_to_card(version_dir: Path, data_dir: Path | None = None) -> dict[str, Any]:
    """Measure a published version's precisions and add them to its card as
    ``parity.precision``, changing nothing else in the file (for models exported before
    export measured them). Returns the section.

    Raises:
        ModelCardError: the card is missing or malformed.
        DataNotFound: no KuaiRand data (see :func:`serving.train.data.resolve_data_dir`).
    """
    card = ModelCard.load(version_dir / CARD_FILE)
    encoder = FeatureEncoder.from_card(card.features, schema_of_card(card))
    model = onnx.load(str(version_dir / ONNX_FILE))
    section = measure_split(model, held_out(encoder, data_dir),
                            [card.value_weights.get(t, 1.0) for t in card.tasks])
    path = version_dir / CARD_FILE
    raw = json.loads(path.read_text())
    raw.setdefault("parity", {})["precision"] = section
    path.write_text(json.dumps(raw, indent=1) + "\n")  # ModelCard.save's format
    return section


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m serving.train.precision VERSION_DIR [--data DIR] [--write-config]``."""
    parser = argparse.ArgumentParser(description=add_to_card.__doc__)
    parser.add_argument("version_dir", type=Path)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--write-config", action="store_true",
                        help="then rewrite the model's config.pbtxt from its card (TensorRT "
                             "precision, caches, profile, warm-up: what check-repo checks)")
    args = parser.parse_args(argv)
    section = add_to_card(args.version_dir, args.data)
    if args.write_config:
        card = ModelCard.load(args.version_dir / CARD_FILE)
        write_config(card, args.version_dir.parent, schema_of_card(card).input_names("user"))
    print(json.dumps({p: section[p] for p in EMULATIONS if p in section}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
