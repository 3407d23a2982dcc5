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

from serving.errors import BackendError, BadRequest, ModelCardError
from serving.ranking.counters import CounterJoin
from serving.ranking.features import FeatureEncoder
from serving.ranking.value import ValueModel, top_k
from serving.repository.card import ModelCard
from serving.repository.schema import PROBS, schema_of_card
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
    id_field: str
    """The schema's candidate id feature (``video_id`` for KuaiRand): the response key."""
    ids: np.ndarray
    scores: np.ndarray
    probs: dict[str, np.ndarray]
    degraded: bool
    timings: dict[str, float]
    ignored: list[str] = field(default_factory=list)
    """Request fields the model's schema does not know (not read; see ``strict_features``)."""


@dataclass
class Ranker:
    model: ServedModel
    encoder: FeatureEncoder
    value: ValueModel
    counters: CounterJoin | None = None
    """The version's counter snapshot join (a schema with counters): fills the counting
    features a request does not send."""

    @classmethod
    def from_model(cls, model: ServedModel, card: ModelCard) -> Ranker:
        """Raises: ModelCardError: the card's schema or the counter snapshot is unservable."""
        schema = schema_of_card(card)
        if schema.counters and model.counters is None:
            raise ModelCardError(f"{model.name}/{model.version}: its schema has counters but "
                                 "the version folder has no counters.npz", field="counters")
        join = CounterJoin.of(model.counters, schema) if model.counters is not None else None
        return cls(model, FeatureEncoder.from_card(card.features, schema),
                   ValueModel(card.tasks, card.value_weights), join)

    def encode(self, request: RankRequest) -> dict[str, np.ndarray]:
        """The model's input tensors for one request (one user row, ``n`` candidates).

        Raises:
            MissingFeature, InvalidFeature: naming the field.
        """
        user: Mapping[str, Any] = request.user
        candidates = request.candidates
        if self.counters is not None:
            user, candidates = self.counters.fill(user, candidates, request.n)
        return self.encoder.encode_request(user, request.context, request.history,
                                           candidates, request.n)

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
        id_field = self.encoder.candidate_id
        return RankResult(self.model, id_field, _ids(request.candidates[id_field])[order],
                          scores[order], {tasks[j]: probs[order, j] for j in shown},
                          degraded, {})

    def check_ids(self, inputs: Mapping[str, np.ndarray]) -> None:
        """Raw ``/v2`` id tensors must index the model's embedding tables: one id past a
        table would fail ONNX Runtime for every request in the batch.

        Raises:
            BadRequest: an id is negative or past its feature's vocabulary.
        """
        for name, limit in self.encoder.id_limits().items():
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
