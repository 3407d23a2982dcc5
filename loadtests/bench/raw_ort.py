"""Raw ONNX Runtime throughput: the ceiling every gateway figure is compared with.

Runs the served model's ONNX file directly in one ``InferenceSession`` (no HTTP, no
batcher, no encoding in the timed loop) on batches shaped as the batcher builds them:
``k`` whole requests of ``candidates`` rows each, user rows once per request, up to the
batcher's row target. Rows/s at the best batch size is "the limit" that the gateway's
figures are a ratio of.

Inputs are real held-out KuaiRand requests encoded by the serving feature encoder. Where
the data directory is absent (a GPU machine that got only the repository), ids are drawn
from the model card's vocabularies instead and the result says so (``inputs: synthetic``):
throughput depends on shapes, not on which ids are looked up.

    python -m loadtests.bench.raw_ort --provider cpu --threads 1 --candidates 500 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from serving.ranking.features import (
    ALL_NUMERIC,
    ITEM_CATEGORICAL,
    ITEM_NUMERIC,
    ITEM_TO_USER,
    USER_CATEGORICAL,
    USER_NUMERIC,
    FeatureEncoder,
    columns_from_rows,
)
from serving.repository.card import CARD_FILE, ONNX_FILE, ModelCard

if TYPE_CHECKING:  # at run time traffic is optional: a bare GPU machine may lack its imports
    from loadtests.traffic import Body

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider"}


def model_dir(repository: Path, model: str) -> Path:
    """The newest version folder of ``model`` in a Triton-layout repository.

    Raises:
        FileNotFoundError: no numbered version folder holds a model.onnx.
    """
    versions = sorted((p for p in (repository / model).iterdir()
                       if p.name.isdigit() and (p / ONNX_FILE).is_file()),
                      key=lambda p: int(p.name))
    if not versions:
        raise FileNotFoundError(f"no version of {model} with {ONNX_FILE} in {repository}")
    return versions[-1]


def encode_batch(encoder: FeatureEncoder, requests: Sequence[Body]) -> dict[str, np.ndarray]:
    """One batch as the batcher merges it: user rows once per request, candidates
    concatenated, ``item_to_user`` pointing each candidate at its request's row."""
    users = columns_from_rows([r["user"] for r in requests], "user")
    contexts = columns_from_rows([r["context"] for r in requests], "context")
    tensors = encoder.encode_users(users, contexts, [r["history"] for r in requests],
                                   len(requests))
    sizes = [len(r["candidates"]["video_id"]) for r in requests]
    items = {name: [v for r in requests for v in r["candidates"][name]]
             for name in requests[0]["candidates"]}
    tensors.update(encoder.encode_items(items, sum(sizes)))
    tensors[ITEM_TO_USER] = np.repeat(np.arange(len(requests), dtype=np.int64), sizes)
    return tensors


def synthetic_requests(encoder: FeatureEncoder, n: int, candidates: int,
                       seed: int = 0) -> list[Body]:
    """Requests whose ids come from the encoder's vocabularies (no data directory needed)."""
    rng = np.random.default_rng(seed)

    def pick(name: str, size: int) -> list[Any]:
        keys = encoder.vocabularies[name].keys()
        return [keys[i] for i in rng.integers(len(keys), size=size)]

    default = {s.name: encoder.numeric[s.name].default for s in ALL_NUMERIC}
    out = []
    for _ in range(n):
        user = {s.name: pick(s.name, 1)[0] for s in USER_CATEGORICAL if s.side == "user"}
        user["user_id"] = pick("user_id", 1)[0]
        user.update({s.name: default[s.name] for s in USER_NUMERIC})
        items = {s.name: pick(s.name, candidates) for s in ITEM_CATEGORICAL}
        items["video_id"] = pick("video_id", candidates)
        items.update({s.name: [default[s.name]] * candidates for s in ITEM_NUMERIC})
        context = {s.name: pick(s.name, 1)[0] for s in USER_CATEGORICAL if s.side == "context"}
        out.append({"user": user, "context": context, "history": pick("video_id", 10),
                    "candidates": items})
    return out


def open_session(path: Path, provider: str, threads: int) -> ort.InferenceSession:
    """A session on ``provider`` (with the CPU provider behind it for unsupported nodes).

    Raises:
        RuntimeError: the provider is not in this onnxruntime build, or ONNX Runtime fell
            back from it to the CPU.
    """
    name = PROVIDERS[provider]
    if name not in ort.get_available_providers():
        raise RuntimeError(f"{name} is not available in this onnxruntime build "
                           f"(available: {', '.join(ort.get_available_providers())})")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    chain = [name] if name == "CPUExecutionProvider" else [name, "CPUExecutionProvider"]
    session = ort.InferenceSession(str(path), options, providers=chain)
    if session.get_providers()[0] != name:  # ORT fell back quietly: these are not its figures
        raise RuntimeError(f"{name} did not load (the session got "
                           f"{', '.join(session.get_providers())})")
    return session


def measure(session: ort.InferenceSession, tensors: dict[str, np.ndarray],
            seconds: float, warmup: int = 3) -> dict[str, float]:
    """Run the batch back to back for about ``seconds``; rows/s and per-call latency."""
    feed = {i.name: tensors[i.name] for i in session.get_inputs()}
    for _ in range(warmup):
        session.run(None, feed)
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 5:
        t = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t)
    rows = len(tensors[ITEM_TO_USER])
    lat = np.asarray(times) * 1000
    return {"rows": rows, "runs": len(times), "rows_per_s": rows * len(times) / sum(times),
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


def default_batch_rows() -> int:
    """The batcher's row target from the settings, or its default where the settings'
    dependencies (pydantic, yaml) are not installed, as on a bare GPU machine."""
    try:
        from serving.settings import Settings
    except ImportError:
        return 2048
    return int(Settings.model_fields["batch_rows"].default)


def batch_plan(candidates: int, batch_rows: int) -> list[int]:
    """Requests per batch: 1, 2, 4, ... and the most that fit in ``batch_rows``."""
    most = max(1, batch_rows // candidates)
    plan = [k for k in (2**i for i in range(16)) if k < most]
    return [*plan, most]


def run(repository: Path, model: str, provider: str, threads: int, candidates: int,
        seconds: float, data: str | None, batch_rows: int) -> dict[str, Any]:
    """Rows/s at each batch size of the plan, and the best (the limit).

    Raises:
        RuntimeError: the provider is unavailable (see :func:`open_session`).
    """
    folder = model_dir(repository, model)
    card = ModelCard.load(folder / CARD_FILE)
    encoder = FeatureEncoder.from_card(card.features)
    session = open_session(folder / ONNX_FILE, provider, threads)
    plan = batch_plan(candidates, batch_rows)
    inputs = "held-out KuaiRand requests"
    try:
        from loadtests.traffic import CandidateCounts, HeldOutTraffic

        requests = HeldOutTraffic.load(data, users=max(plan)).requests(
            CandidateCounts.fixed(candidates), max(plan))
    except (FileNotFoundError, ImportError) as e:
        inputs = f"synthetic ids from the model card ({type(e).__name__}: {e})"
        requests = synthetic_requests(encoder, max(plan), candidates)
    batches = [{"requests": k, **measure(session, encode_batch(encoder, requests[:k]),
                                         seconds)} for k in plan]
    best = max(batches, key=lambda b: b["rows_per_s"])
    return {"provider": provider, "session_providers": session.get_providers(),
            "threads": threads, "candidates_per_request": candidates, "inputs": inputs,
            "onnxruntime": ort.__version__, "batches": batches,
            "limit_rows_per_s": best["rows_per_s"], "limit_batch_rows": best["rows"]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench.raw_ort", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--model", default="feed_ranker")
    parser.add_argument("--provider", choices=sorted(PROVIDERS), default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads")
    parser.add_argument("--candidates", type=int, default=500, help="rows per request")
    parser.add_argument("--batch-rows", type=int, default=default_batch_rows(),
                        help="largest batch, in rows (the batcher's row target)")
    parser.add_argument("--seconds", type=float, default=1.5, help="timed run per batch size")
    parser.add_argument("--data", default=None, help="KuaiRand folder (default: shared data)")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args(argv)
    try:
        result = run(args.model_repository, args.model, args.provider, args.threads,
                     args.candidates, args.seconds, args.data, args.batch_rows)
    except RuntimeError as e:
        result = {"provider": args.provider, "skipped": str(e)}
        print(f"raw ONNX Runtime on {args.provider}: skipped: {e}", file=sys.stderr)
    text = json.dumps(result, indent=2)
    if args.json is not None:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
