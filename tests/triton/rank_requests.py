"""``/v1/rank`` request bodies drawn from a model card's vocabularies, and a gateway runner.

Values come from the trained encoder's own vocabularies (so most ids are known to the model,
as in production traffic) with numeric values spread around each feature's default.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from aiohttp import web

from serving.gateway.app import create_app
from serving.repository.card import ModelCard
from serving.settings import Settings


class RequestMaker:
    """Random but valid ``/v1/rank`` documents for one model card."""

    def __init__(self, card: ModelCard, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.categorical = {c["name"]: c for c in card.features["categorical"]}
        self.numeric = {c["name"]: c for c in card.features["numeric"]}

    def _values(self, name: str, n: int, replace: bool = True) -> list[Any]:
        vocab = self.categorical[name]["vocab"]
        picks = self.rng.choice(len(vocab), size=n, replace=replace)
        return [vocab[int(i)] for i in picks]

    def _numbers(self, name: str, n: int) -> list[float]:
        default = self.numeric[name]["default"]
        return [float(v) for v in default * self.rng.lognormal(0.0, 0.5, n)]

    def document(self, candidates: int, budget_ms: float) -> dict[str, Any]:
        def side(name: str) -> str:
            return str(self.categorical[name]["side"])

        user: dict[str, Any] = {name: self._values(name, 1)[0] for name in self.categorical
                                if side(name) == "user"}
        user.update({name: self._numbers(name, 1)[0] for name in self.numeric
                     if self.numeric[name]["side"] == "user"})
        columns: dict[str, Any] = {"video_id": self._values("video_id", candidates, False)}
        columns.update({name: self._values(name, candidates) for name in self.categorical
                        if side(name) == "item" and name != "video_id"})
        columns.update({name: self._numbers(name, candidates) for name in self.numeric
                        if self.numeric[name]["side"] == "item"})
        return {
            "user": user,
            "context": {name: self._values(name, 1)[0] for name in self.categorical
                        if side(name) == "context"},
            "history": self._values("video_id", 20),
            "candidates": columns,
            "budget_ms": budget_ms,
            "return_tasks": True,
        }


@contextlib.asynccontextmanager
async def running_gateway(settings: Settings) -> AsyncIterator[tuple[str, web.Application]]:
    """The gateway app on a free 127.0.0.1 port; yields its base URL and the app.

    Raises:
        RankServeError: the gateway refused to start (e.g. a model card mismatch).
    """
    app = create_app(settings)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    try:
        await runner.setup()
    except BaseException:
        with contextlib.suppress(Exception):
            await runner.cleanup()
        raise
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}", app
    finally:
        await runner.cleanup()
