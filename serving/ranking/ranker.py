"""What ``/v1/rank`` adds to a raw model: request encoding, the value model and ranking.

A :class:`Ranker` exists for each model with a model card: the card's encoder state turns
raw features into tensors (the same code training used) and its tasks and default weights
make the value model. The data plane hands it the scored probabilities to rank; how they
were scored (batching, backends) is none of its business.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serving.errors import BackendError, BadRequest
from serving.ranking.features import (
    HISTORY,
    ITEM_CAT,
    ITEM_CATEGORICAL,
    ITEM_ID,
    ITEM_ID_SPEC,
    ITEM_TO_USER,
    PROBS,
    USER_CAT,
    USER_CATEGORICAL,
    USER_ID,
    USER_ID_SPEC,
    FeatureEncoder,
)
from serving.ranking.value import ValueModel, top_k
from serving.repository.card import ModelCard
from serving.repository.served import ServedModel


@dataclass
class RankRequest:
    """A decoded ``/v1/rank`` request: raw feature columns plus options."""

    user: dict[str, Any]
    candidates: Mapping[str, Any]
    n: int
    context: dict[str, Any] = field(default_factory=dict)
    history: Any = None
    model: str | None = None
    top_k: int | None = None
    budget_ms: float | None = None
    weights: Any = None
    return_tasks: Any = None
    request_id: str | None = None


@dataclass
class RankResult:
    model: ServedModel
    video_ids: np.ndarray
    scores: np.ndarray
    probs: dict[str, np.ndarray]
    degraded: bool
    timings: dict[str, float]


@dataclass
class Ranker:
    model: ServedModel
    encoder: FeatureEncoder
    value: ValueModel

    @classmethod
    def from_model(cls, model: ServedModel, card: ModelCard) -> Ranker:
        return cls(model, FeatureEncoder.from_card(card.features),
                   ValueModel(card.tasks, card.value_weights))

    def encode(self, request: RankRequest) -> dict[str, np.ndarray]:
        """The model's input tensors for one request (one user row, ``n`` candidates).

        Raises:
            MissingFeature, InvalidFeature: naming the field.
        """
        encoder, n = self.encoder, request.n
        tensors = encoder.encode_items(request.candidates, n)
        users = {k: [v] for k, v in request.user.items()}
        contexts = {k: [v] for k, v in request.context.items()}
        tensors.update(encoder.encode_users(users, contexts, [request.history], 1))
        tensors[ITEM_TO_USER] = np.zeros(n, dtype=np.int64)
        return tensors

    def rank(self, request: RankRequest, outputs: Mapping[str, np.ndarray],
             weights: np.ndarray, shown: list[int], degraded: bool = False) -> RankResult:
        """Value scores, top-k order and the requested task probabilities, from the
        model's ``outputs`` for the request's candidates (``degraded``: a fallback made
        them). Timings are the caller's to add.

        Raises:
            BackendError: the model's output is missing or has the wrong shape.
        """
        probs = outputs.get(PROBS)
        if probs is None:
            raise BackendError(f"model returned no '{PROBS}' output")
        tasks = self.value.tasks
        if probs.shape != (request.n, len(tasks)):
            raise BackendError(f"model returned probs of shape {probs.shape}, expected "
                               f"({request.n}, {len(tasks)})")
        scores = ValueModel.score(probs, weights)
        order = top_k(scores, request.top_k)
        return RankResult(self.model, _ids(request.candidates["video_id"])[order],
                          scores[order], {tasks[j]: probs[order, j] for j in shown},
                          degraded, {})

    def check_ids(self, inputs: Mapping[str, np.ndarray]) -> None:
        """Raw ``/v2`` id tensors must index the model's embedding tables: one id past a
        table would fail ONNX Runtime for every request in the batch.

        Raises:
            BadRequest: an id is negative or past its feature's vocabulary.
        """
        sizes = self.encoder.cardinalities()
        limits = {USER_ID: sizes[USER_ID_SPEC.name], ITEM_ID: sizes[ITEM_ID_SPEC.name],
                  HISTORY: sizes[ITEM_ID_SPEC.name],
                  USER_CAT: np.array([sizes[s.name] for s in USER_CATEGORICAL]),
                  ITEM_CAT: np.array([sizes[s.name] for s in ITEM_CATEGORICAL])}
        for name, limit in limits.items():
            ids = inputs[name]
            if ids.size and ((ids < 0).any() or (ids >= limit).any()):
                raise BadRequest(f"'{name}' holds ids outside the model's vocabulary",
                                 field=f"inputs.{name}")


def _ids(raw: Any) -> np.ndarray:
    """Candidate ids as sent (already validated as integers by the encoder)."""
    if isinstance(raw, np.ndarray):
        return raw.astype(np.int64, copy=False)
    try:
        return np.asarray(raw, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        return np.asarray(raw, dtype=np.float64).astype(np.int64)
