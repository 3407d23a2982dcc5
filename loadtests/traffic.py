"""Real request traffic for load tests and benchmarks, built from held-out KuaiRand days.

A load test is only as good as its requests: random ids would miss the vocabularies, skip
the history path and give the model a different cost. Every request here is a real user of
the held-out days (05-05..05-08) with their real context and click history, and the
candidates are real videos of those days: first the videos the user was really shown that
day, then other held-out videos until the request holds the sampled candidate count.

Candidate counts follow a configurable distribution (default: log-normal with median 300,
clipped to 50..2,000), because a feed backend's candidate lists vary in size and the
batcher's behaviour depends on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving.train.data import (
    ITEM_COLUMNS,
    TEST_DAYS,
    group_requests,
    json_value,
    load_log,
    raw_columns,
    request_bodies,
)

Body = dict[str, Any]


@dataclass(frozen=True)
class CandidateCounts:
    """Log-normal candidate counts with the given median, clipped to ``[low, high]``.

    ``sigma`` is the standard deviation of the count's logarithm; ``sigma = 0`` gives every
    request exactly ``median`` candidates (what the benchmark uses).
    """

    median: float = 300.0
    sigma: float = 0.7
    low: int = 50
    high: int = 2000

    def __post_init__(self) -> None:
        if not 1 <= self.low <= self.high:
            raise ValueError(f"need 1 <= low <= high, got low={self.low} high={self.high}")
        if self.median <= 0 or self.sigma < 0:
            raise ValueError(f"need median > 0 and sigma >= 0, got {self.median}, {self.sigma}")

    @classmethod
    def fixed(cls, n: int) -> CandidateCounts:
        return cls(median=float(n), sigma=0.0, low=n, high=n)

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` candidate counts (int64)."""
        draws = rng.lognormal(math.log(self.median), self.sigma, size) if self.sigma \
            else np.full(size, self.median)
        return np.clip(np.rint(draws), self.low, self.high).astype(np.int64)

    def describe(self) -> str:
        if self.sigma == 0:
            return f"fixed {self.low}"
        return (f"log-normal, median {self.median:g}, sigma {self.sigma:g}, "
                f"clipped to {self.low}..{self.high}")


class HeldOutTraffic:
    """Real users of the held-out days and the pool of held-out candidate videos.

    ``users`` holds request bodies from :func:`serving.train.data.request_bodies` (one per
    user and day: user, context, history and the impressions of that day, row-wise);
    ``pool`` holds every distinct held-out video as columns (JSON-ready values).
    """

    def __init__(self, users: Sequence[Body], pool: dict[str, list[Any]]) -> None:
        if not users:
            raise ValueError("no held-out requests to replay")
        self.users = list(users)
        self.pool = {name: np.asarray(values, dtype=object) for name, values in pool.items()}
        self.pool_ids = np.asarray(pool["video_id"], dtype=np.int64)

    @property
    def max_candidates(self) -> int:
        return len(self.pool_ids)

    @classmethod
    def load(cls, data_dir: str | Path | None = None, users: int = 1000,
             seed: int = 0) -> HeldOutTraffic:
        """Read the log and pick ``users`` user-days of the held-out days at random.

        Raises:
            serving.train.data.DataNotFound: the data directory lacks a KuaiRand file.
        """
        grouped = group_requests(load_log(data_dir).days(TEST_DAYS), by="day")
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(len(grouped), size=min(users, len(grouped)),
                                    replace=False))
        items = grouped.items.drop_duplicates("video_id", keep="first")
        columns = raw_columns(items, ITEM_COLUMNS)
        pool = {name: [json_value(name, v) for v in values] for name, values in columns.items()}
        return cls(request_bodies(grouped, chosen.tolist()), pool)

    def request(self, rng: np.random.Generator, n_candidates: int, index: int) -> Body:
        """A request of user-day ``index`` (modulo the users) with ``n_candidates`` real
        held-out videos, candidates as columns: the user's own impressions first, then
        videos drawn from the pool without repeats.

        Raises:
            ValueError: more candidates than distinct held-out videos.
        """
        if n_candidates > self.max_candidates:
            raise ValueError(f"{n_candidates} candidates asked, the held-out days have "
                             f"{self.max_candidates} distinct videos")
        base = self.users[index % len(self.users)]
        first: dict[int, dict[str, Any]] = {}
        for row in base["candidates"]:  # the log repeats some impressions: keep the first
            first.setdefault(row["video_id"], row)
        own = list(first.values())[:n_candidates]
        own_ids = [row["video_id"] for row in own]
        need = n_candidates - len(own)
        others = np.flatnonzero(~np.isin(self.pool_ids, own_ids))
        picked = rng.choice(others, size=need, replace=False) if need else others[:0]
        candidates = {name: [row.get(name) for row in own] + values[picked].tolist()
                      for name, values in self.pool.items()}
        return {"request_id": f"{base['request_id']}-{index}", "user": base["user"],
                "context": base["context"], "history": base["history"],
                "candidates": candidates}

    def requests(self, counts: CandidateCounts, n: int, seed: int = 0) -> list[Body]:
        """``n`` requests with candidate counts drawn from ``counts``, users in turn."""
        rng = np.random.default_rng(seed)
        sizes = counts.sample(rng, n)
        start = int(rng.integers(len(self.users)))
        return [self.request(rng, int(k), start + i) for i, k in enumerate(sizes)]


