"""A request bank as ``RankRequest`` messages for the gRPC ``Ranking`` service: what the
gRPC load generators send (the Locust gRPC user, ``loadtests.bench.grpc_vs_http``).

Built once from a ``binary`` bank's bodies, so the same held-out requests go over both
transports and no generator builds messages while it measures. No Locust or gevent here:
the benchmark runs on asyncio.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from loadtests.bank import Bank, Shot
from serving.rpc.client import build, column_values
from serving.wire import columns


def messages(bank: Bank) -> list[Any]:
    """The bank's binary bodies as ``RankRequest`` messages, in shot order.

    Raises:
        ValueError: the bank is not binary.
    """
    if bank.encoding != "binary":
        raise ValueError("gRPC load needs a binary bank (--encoding binary)")
    built = []
    for shot in bank.shots:
        document, candidates = columns.decode(shot.body)
        built.append(build({**document, "candidates": {
            k: _strings(v) if isinstance(v, columns.DictColumn) else v
            for k, v in candidates.items()}}))
    return built


def _strings(column: columns.DictColumn) -> list[str | None]:
    return [column.values[c] if c >= 0 else None for c in column.codes.tolist()]


def check_ranked(response: Any, shot: Shot) -> str | None:
    """Why a ``RankResponse`` is not a complete ranking of the shot, or ``None``."""
    ids = column_values(response.ids)
    scores = np.asarray(response.scores)
    if len(ids) != shot.expected or len(scores) != len(ids):
        return f"incomplete ranking: {len(ids)} ids, expected {shot.expected}"
    if np.any(np.diff(scores) > 0):
        return "unranked: scores are not in non-increasing order"
    if not np.isin(ids, shot.ids).all():
        return "ranking holds ids that were not sent"
    return None
