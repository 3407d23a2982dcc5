"""Encoded requests for training and evaluation: the feature encoder applied to a split.

Encoding goes through :class:`~serving.ranking.features.FeatureEncoder`, exactly as the
gateway does, then batches are cut along request boundaries so every batch has the serving
shape: ``R`` request rows, ``N`` candidate rows and ``item_to_user``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from serving.ranking.features import ITEM_TO_USER, FeatureEncoder
from serving.repository.schema import Schema
from serving.train.data import DEFAULT_SCHEMA, Requests, raw_columns


def fit_encoder(impressions: pd.DataFrame, schema: Schema = DEFAULT_SCHEMA) -> FeatureEncoder:
    """Vocabularies and numeric constants of ``schema``'s features from the training
    impressions only."""
    names = [f.name for f in schema.features if f.kind != "id_sequence"]
    return FeatureEncoder.fit(schema, raw_columns(impressions, names, schema))


@dataclass
class EncodedSplit:
    """Model inputs of a whole split, request rows and candidate rows kept apart."""

    users: dict[str, np.ndarray]
    items: dict[str, np.ndarray]
    offsets: np.ndarray
    labels: np.ndarray

    @classmethod
    def build(cls, encoder: FeatureEncoder, grouped: Requests) -> EncodedSplit:
        n_req, n_items = len(grouped.requests), len(grouped.items)
        schema = encoder.schema

        def names(side: str) -> list[str]:
            return [f.name for f in schema.features if f.side == side
                    and (f.kind != "id_sequence" or f.name != "history")]
        users = encoder.encode_users(raw_columns(grouped.requests, names("user"), schema),
                                     raw_columns(grouped.requests, names("context"), schema),
                                     grouped.histories, n_req)
        items = encoder.encode_items(raw_columns(grouped.items, names("candidate"), schema),
                                     n_items)
        return cls(users, items, grouped.offsets, grouped.labels())

    @property
    def n_requests(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_items(self) -> int:
        return int(self.offsets[-1])

    def select(self, requests: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Model inputs (numpy) and labels for the given request rows, in that order."""
        starts, ends = self.offsets[requests], self.offsets[requests + 1]
        lengths = ends - starts
        first = np.repeat(np.cumsum(lengths) - lengths, lengths)
        rows = np.repeat(starts, lengths) + np.arange(lengths.sum()) - first
        inputs = {k: v[requests] for k, v in self.users.items()}
        inputs.update({k: v[rows] for k, v in self.items.items()})
        inputs[ITEM_TO_USER] = np.repeat(np.arange(len(requests), dtype=np.int64), lengths)
        return inputs, self.labels[rows]

    def batches(self, batch_rows: int, rng: np.random.Generator | None = None
                ) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
        """Batches of about ``batch_rows`` candidate rows, whole requests each; shuffled
        when ``rng`` is given, else in split order."""
        order = rng.permutation(self.n_requests) if rng is not None \
            else np.arange(self.n_requests)
        sizes = np.diff(self.offsets)[order]
        bounds = np.searchsorted(np.cumsum(sizes), np.arange(batch_rows, sizes.sum(),
                                                             batch_rows), side="right")
        for chunk in np.split(order, bounds):
            if len(chunk):
                inputs, labels = self.select(chunk)
                yield {k: torch.from_numpy(v) for k, v in inputs.items()}, \
                    torch.from_numpy(labels)
