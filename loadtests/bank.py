"""A bank of pre-encoded ``/v1/rank`` requests, and the check every response must pass.

The load generator must not be the bottleneck, so requests are sampled from held-out
traffic and encoded once, before the run; during the run a simulated user only picks the
next body. The bank is saved to a folder (``meta.json`` + ``bodies.bin``) so that the
runner builds it once and every Locust process (master, workers) or benchmark reads it.

A response passes only if it is a 2xx whose ranking is complete (one id per candidate sent,
or ``top_k`` of them), made of the ids that were sent, without repeats, and ordered by
non-increasing score. A fast wrong answer must count as a failure, not as throughput.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from loadtests.traffic import Body, CandidateCounts, HeldOutTraffic
from serving.client import Encoding, RankServeClientError, decode_response, encode_request

ENCODINGS: tuple[Encoding, ...] = ("json", "columnar", "binary")
"""``json``: row-wise candidates; ``columnar``: candidates as columns; ``binary``:
``application/x-rankserve-columns`` (see docs/api.md)."""
META_FILE, BODIES_FILE = "meta.json", "bodies.bin"


@dataclass(frozen=True)
class Shot:
    """One encoded request: its body, candidate count, the sorted ids it carries and the
    ``top_k`` it asks for. What every load generator sends (:mod:`loadtests.loadgen`,
    the Locust user); ``ids`` may be left empty where no answer is checked (the sink)."""

    body: bytes
    rows: int
    ids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    top_k: int | None = None

    @property
    def expected(self) -> int:
        return self.rows if self.top_k is None else min(self.top_k, self.rows)


@dataclass(frozen=True)
class Bank:
    encoding: Encoding
    content_type: str
    shots: tuple[Shot, ...]
    candidates: str

    def __len__(self) -> int:
        return len(self.shots)

    @classmethod
    def build(cls, traffic: HeldOutTraffic, counts: CandidateCounts, size: int,
              encoding: Encoding, top_k: int | None = None, seed: int = 0) -> Bank:
        """``size`` requests sampled from ``traffic`` and encoded with the client library."""
        requests = traffic.requests(counts, size, seed=seed)
        content_type = ""
        shots = []
        for request in requests:
            body: Body = {**request, "top_k": top_k} if top_k else dict(request)
            if encoding == "json":
                body["candidates"] = candidate_rows(request["candidates"])
            data, content_type = encode_request(body, encoding)
            ids = np.sort(np.asarray(request["candidates"]["video_id"], dtype=np.int64))
            shots.append(Shot(data, len(ids), ids, top_k))
        return cls(encoding, content_type, tuple(shots), counts.describe())

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        offsets = np.cumsum([0, *(len(s.body) for s in self.shots)]).tolist()
        meta = {"encoding": self.encoding, "content_type": self.content_type,
                "candidates": self.candidates, "offsets": offsets,
                "shots": [{"rows": s.rows, "top_k": s.top_k, "ids": s.ids.tolist()}
                          for s in self.shots]}
        (folder / META_FILE).write_text(json.dumps(meta))
        (folder / BODIES_FILE).write_bytes(b"".join(s.body for s in self.shots))

    @classmethod
    def load(cls, folder: Path) -> Bank:
        """Read a saved bank.

        Raises:
            FileNotFoundError: the folder lacks ``meta.json`` or ``bodies.bin``.
        """
        meta = json.loads((folder / META_FILE).read_text())
        data = (folder / BODIES_FILE).read_bytes()
        offsets: Sequence[int] = meta["offsets"]
        shots = tuple(Shot(data[offsets[i]:offsets[i + 1]], s["rows"],
                           np.asarray(s["ids"], dtype=np.int64), s["top_k"])
                      for i, s in enumerate(meta["shots"]))
        return cls(meta["encoding"], meta["content_type"], shots, meta["candidates"])


def candidate_rows(columns: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Columns -> row-wise candidates, leaving out missing values as a feed backend would."""
    names = list(columns)
    return [{k: v for k, v in zip(names, values, strict=True) if v is not None}
            for values in zip(*columns.values(), strict=True)]


def check_response(status: int, content: bytes | None, shot: Shot) -> str | None:
    """Why the response fails, or ``None`` when it is a complete, ranked answer."""
    if not 200 <= status < 300:
        return f"HTTP {status}: {RankServeClientError(status, content or b'').code}"
    try:
        ranked = decode_response(content or b"")
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return "response is not a ranking (no video_id/score lists)"
    ids, scores = ranked.video_id, ranked.score
    if len(ids) != shot.expected or len(scores) != len(ids):
        return f"incomplete ranking: {len(ids)} ids, {len(scores)} scores, " \
               f"expected {shot.expected}"
    if np.any(np.diff(scores) > 0):
        return "unranked: scores are not in non-increasing order"
    sorted_ids = np.sort(ids)
    if np.any(sorted_ids[1:] == sorted_ids[:-1]):
        return "ranking repeats an id"
    if not np.isin(ids, shot.ids).all():
        return "ranking holds ids that were not sent"
    return None
