"""The multi-task feed ranker: a wide part over sparse ids beside a deep part.

Inputs follow the model contract (the schema's tensor rule,
:mod:`serving.repository.schema`): user-side tensors have one row per request (``[R,
...]``), candidate tensors one row per candidate (``[N, ...]``) and ``item_to_user`` maps
each candidate to its request row. Everything user-side, the embeddings, the history
attention and the user's wide weights, runs on the R request rows and is gathered to the N
candidate rows inside the graph, so a request with 500 candidates pays for its user once.

* Deep part: embeddings; attention pooling over the click history with the user as the
  query (padding id 0 masked); low-rank DCN-v2 cross layers over the concatenated user and
  item vectors; a multi-gate mixture of experts (MMoE) with one gate and one tower per task.
  Those run once per candidate row, the serving path's main cost on CPU, hence the low rank
  and the narrow experts (``ModelConfig``: 4x cheaper per row than full-rank cross layers
  with 4 experts 256-128, and as good on the held-out days; see docs/training.md).
* Wide part: a per-task logistic regression over every categorical id (user, video,
  author, ...), i.e. one ``T``-wide weight row per id, summed into the deep logits. Ids are
  what a linear model memorises best and what the deep part alone smooths away. With
  ``wide_bins``, every numeric feature also gets one weight row per quantile bucket of its
  training values (the buckets are cut inside the graph, from boundaries fitted on the
  training days): a counter's effect on the logit is a step function, which a logistic
  regression over binned counters fits better than the deep part's smooth one. With
  ``wide_crosses``, pairs of ids (user x author, ...) get a weight row per pair, hashed into
  a bounded table.

Only standard ONNX ops are produced (Gather, MatMul, Softmax, Sigmoid, ...), so every
ONNX Runtime build and Triton's onnxruntime backend can run the exported graph.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from serving.repository.schema import Schema
from serving.train.data import DEFAULT_SCHEMA


@dataclass
class ModelConfig:
    """Architecture hyper-parameters (recorded in the model card)."""

    id_dim: int = 16
    user_cat_dim: int = 8
    item_cat_dim: int = 16
    cross_layers: int = 2
    cross_rank: int | None = 32
    experts: int = 3
    expert_hidden: list[int] = field(default_factory=lambda: [64, 32])
    tower_hidden: int = 16
    wide: bool = True
    wide_bins: int = 0
    """Quantile buckets per numeric feature in the wide part (0: numerics are deep only)."""
    wide_crosses: list[list[str]] = field(default_factory=list)
    """Pairs ``[user-side categorical, candidate categorical]`` crossed in the wide part."""
    cross_buckets: int = 1 << 17
    """Rows of each cross's table: the exact pair space when smaller, else hashed into it."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _offsets(sizes: Sequence[int]) -> Tensor:
    """Start of each feature's rows in a table that stacks all of them."""
    starts = [0]
    for size in sizes[:-1]:
        starts.append(starts[-1] + size)
    return torch.tensor(starts, dtype=torch.int64)


class StackedEmbedding(nn.Module):
    """Several categorical features in one table: ``[B, F]`` ids -> ``[B, F, dim]``.

    One Gather instead of one per feature keeps the exported graph small and fast.
    """

    def __init__(self, sizes: Sequence[int], dim: int, init_std: float = 0.05) -> None:
        super().__init__()
        self.offsets: Tensor
        self.register_buffer("offsets", _offsets(sizes), persistent=False)
        self.table = nn.Embedding(sum(sizes), dim)
        if init_std:
            nn.init.normal_(self.table.weight, std=init_std)
        else:
            nn.init.zeros_(self.table.weight)

    def forward(self, ids: Tensor) -> Tensor:
        out: Tensor = self.table(ids + self.offsets)
        return out


class HistoryAttention(nn.Module):
    """Pools the click history with the user as the query; id 0 (padding/OOV) is masked.

    A row with no history pools to zeros (the softmax weights are multiplied by the mask,
    so an all-padding row cannot produce NaN).
    """

    def __init__(self, user_dim: int, item_dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(user_dim, item_dim)
        self.scale = 1.0 / math.sqrt(item_dim)

    def forward(self, user: Tensor, history_ids: Tensor, history: Tensor) -> Tensor:
        mask = (history_ids > 0).to(history.dtype)  # [R, L]
        q = self.query(user)  # [R, D]
        scores = torch.matmul(history, q.unsqueeze(-1)).squeeze(-1) * self.scale
        scores = scores + (mask - 1.0) * 1e4
        weights = torch.softmax(scores, dim=-1) * mask
        return torch.matmul(weights.unsqueeze(1), history).squeeze(1)  # [R, D]


class CrossNetwork(nn.Module):
    """DCN-v2 cross layers: ``x_{l+1} = x_0 * (W x_l + b) + x_l``.

    With ``rank``, ``W = U V^T`` (the DCN-v2 paper's low-rank cross): ``2 * dim * rank``
    multiply-adds per candidate row and layer instead of ``dim ** 2``, which is what the
    candidate side of a serving request pays for.
    """

    def __init__(self, dim: int, layers: int, rank: int | None = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(self._layer(dim, rank) for _ in range(layers))
        for linear in self.layers.modules():
            if isinstance(linear, nn.Linear):
                nn.init.normal_(linear.weight, std=0.01 if rank is None else dim ** -0.5)
                if linear.bias is not None:
                    nn.init.zeros_(linear.bias)

    @staticmethod
    def _layer(dim: int, rank: int | None) -> nn.Module:
        if rank is None:
            return nn.Linear(dim, dim)
        return nn.Sequential(nn.Linear(dim, rank, bias=False), nn.Linear(rank, dim))

    def forward(self, x0: Tensor) -> Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x


def _mlp(dims: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(dims):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers)


class MMoE(nn.Module):
    """Shared experts, one softmax gate and one tower (-> one logit) per task."""

    def __init__(self, dim: int, tasks: int, experts: int, hidden: Sequence[int],
                 tower_hidden: int) -> None:
        super().__init__()
        self.experts = nn.ModuleList(_mlp([dim, *hidden]) for _ in range(experts))
        self.gates = nn.Linear(dim, tasks * experts)
        self.towers = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden[-1], tower_hidden), nn.ReLU(),
                          nn.Linear(tower_hidden, 1))
            for _ in range(tasks))
        self.tasks, self.n_experts = tasks, experts

    def forward(self, x: Tensor) -> Tensor:
        expert_out = torch.stack([e(x) for e in self.experts], dim=1)  # [N, E, H]
        gates = self.gates(x).reshape(-1, self.tasks, self.n_experts)
        mixed = torch.matmul(torch.softmax(gates, dim=-1), expert_out)  # [N, T, H]
        return torch.cat([tower(mixed[:, t]) for t, tower in enumerate(self.towers)], dim=1)


class NumericBins(StackedEmbedding):
    """``[B, F]`` numerics -> ``[B, T]``: the sum of one weight row per feature's bucket
    (the buckets of all features stacked in one table, zero at the start).

    The boundaries are a buffer (saved with the weights, constants of the exported graph);
    a value above ``k`` of its feature's boundaries is in bucket ``k``. Repeated boundaries
    (a feature with many equal values, e.g. zero counts) only leave some buckets empty.
    """

    def __init__(self, features: int, bins: int, tasks: int) -> None:
        super().__init__([bins] * features, tasks, init_std=0.0)
        self.boundaries: Tensor
        self.register_buffer("boundaries", torch.zeros(features, bins - 1))

    @torch.no_grad()
    def fit(self, values: Tensor) -> None:
        """Boundaries at the training values' quantiles ``1/bins .. (bins-1)/bins``."""
        bins = self.boundaries.shape[1] + 1
        levels = torch.arange(1, bins, dtype=torch.float64) / bins
        self.boundaries.copy_(torch.quantile(values.double(), levels, dim=0).T.float())

    def forward(self, values: Tensor) -> Tensor:
        above = (values.unsqueeze(-1) > self.boundaries).to(values.dtype).sum(dim=-1)
        return super().forward(above.long()).sum(dim=1)


class IdCross(nn.Module):
    """One weight row per (user-side id, candidate id) pair: ``[N] x [N] -> [N, T]``.

    The pair ``a * size_b + b`` indexes the table directly when the pair space fits in
    ``buckets`` rows, else it is scattered by a multiplicative hash into them (collisions
    share a row, as in any hashed cross). Standard integer ops only (Mul, Add, Mod).
    """

    HASH = 2654435761  # Knuth's multiplicative constant; pairs < 2**33 keep the product < 2**63

    def __init__(self, size_b: int, pairs: int, buckets: int, tasks: int) -> None:
        super().__init__()
        self.size_b, self.hashed = size_b, pairs > buckets
        self.rows = min(pairs, buckets)
        self.table = nn.Embedding(self.rows, tasks)
        nn.init.zeros_(self.table.weight)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        pair = a * self.size_b + b
        if self.hashed:
            pair = torch.remainder(pair * self.HASH, self.rows)
        out: Tensor = self.table(pair)
        return out


class FeedRanker(nn.Module):
    """``probs[N, T] = sigmoid(deep_logits + wide_logits)``; see the module docstring."""

    def __init__(self, cardinalities: dict[str, int], tasks: Sequence[str],
                 config: ModelConfig | None = None,
                 prior_rates: Sequence[float] | None = None,
                 schema: Schema | None = None) -> None:
        super().__init__()
        cfg = config or ModelConfig()
        self.config = cfg
        self.task_names = tuple(tasks)
        n_tasks = len(tasks)
        schema = schema or DEFAULT_SCHEMA
        user_sizes = [cardinalities[f.name] for f in schema.group_features("user", "cat")]
        item_sizes = [cardinalities[f.name] for f in schema.group_features("item", "cat")]
        user_id, item_id = schema.id_feature("user"), schema.id_feature("item")
        if user_id is None or item_id is None or len(schema.group_features("user", "seq")) != 1:
            raise ValueError("FeedRanker needs a user id, a candidate id and one id sequence "
                             f"in its schema; {schema.name} has {schema.input_names()}")
        n_user_num = len(schema.group_features("user", "num"))
        n_item_num = len(schema.group_features("item", "num"))
        self.user_id_emb = nn.Embedding(cardinalities[user_id.name], cfg.id_dim)
        self.item_id_emb = nn.Embedding(cardinalities[item_id.name], cfg.id_dim)
        for emb in (self.user_id_emb, self.item_id_emb):
            nn.init.normal_(emb.weight, std=0.05)
        self.user_cat_emb = StackedEmbedding(user_sizes, cfg.user_cat_dim)
        self.item_cat_emb = StackedEmbedding(item_sizes, cfg.item_cat_dim)
        user_dim = cfg.id_dim + len(user_sizes) * cfg.user_cat_dim + n_user_num
        self.history_attention = HistoryAttention(user_dim, cfg.id_dim)
        item_dim = cfg.id_dim + len(item_sizes) * cfg.item_cat_dim + n_item_num
        dim = user_dim + cfg.id_dim + item_dim
        self.cross = CrossNetwork(dim, cfg.cross_layers, cfg.cross_rank)
        self.mmoe = MMoE(dim, n_tasks, cfg.experts, cfg.expert_hidden, cfg.tower_hidden)
        self.wide_user = StackedEmbedding([cardinalities[user_id.name], *user_sizes], n_tasks, 0.0)
        self.wide_item = StackedEmbedding([cardinalities[item_id.name], *item_sizes], n_tasks, 0.0)
        self.wide_user_num = NumericBins(n_user_num, cfg.wide_bins, n_tasks) \
            if cfg.wide_bins and n_user_num else None
        self.wide_item_num = NumericBins(n_item_num, cfg.wide_bins, n_tasks) \
            if cfg.wide_bins and n_item_num else None
        self.cross_columns = [self._cross_column(schema, pair) for pair in cfg.wide_crosses]
        self.wide_crosses = nn.ModuleList(
            IdCross(cardinalities[b], cardinalities[a] * cardinalities[b], cfg.cross_buckets,
                    n_tasks) for a, b in cfg.wide_crosses)
        rates = torch.tensor(prior_rates or [0.5] * n_tasks, dtype=torch.float32)
        self.bias = nn.Parameter(torch.log(rates / (1 - rates)))

    @staticmethod
    def _cross_column(schema: Schema, pair: Sequence[str]) -> tuple[int, int]:
        """Where a cross's two ids sit: the column of the user-side one in ``[user_id,
        user_cat]`` and of the candidate one in ``[item_id, item_cat]``."""
        user = [schema.id_feature("user"), *schema.group_features("user", "cat")]
        item = [schema.id_feature("item"), *schema.group_features("item", "cat")]
        names = ([f.name for f in user if f], [f.name for f in item if f])
        if len(pair) != 2 or pair[0] not in names[0] or pair[1] not in names[1]:
            raise ValueError(f"wide cross {list(pair)} must name a user-side categorical "
                             f"({names[0]}) and a candidate one ({names[1]})")
        return names[0].index(pair[0]), names[1].index(pair[1])

    def fit_wide_bins(self, user_num: Tensor, item_num: Tensor) -> None:
        """Cut the numeric buckets at the training values' quantiles (before training)."""
        if self.wide_user_num is not None:
            self.wide_user_num.fit(user_num)
        if self.wide_item_num is not None:
            self.wide_item_num.fit(item_num)

    def user_tower(self, user_id: Tensor, user_cat: Tensor, user_num: Tensor,
                   history: Tensor) -> Tensor:
        """``[R, user_dim + id_dim]``: the user's features and its pooled history."""
        rows = user_id.shape[0]
        user = torch.cat([self.user_id_emb(user_id),
                          self.user_cat_emb(user_cat).reshape(rows, -1), user_num], dim=1)
        pooled = self.history_attention(user, history, self.item_id_emb(history))
        return torch.cat([user, pooled], dim=1)

    def wide_params(self) -> list[Tensor]:
        """The wide part's weights (trained with their own optimizer and L2)."""
        extra = [m.table.weight for m in (self.wide_user_num, self.wide_item_num,
                                            *self.wide_crosses) if m is not None]
        return [self.wide_user.table.weight, self.wide_item.table.weight, *extra]

    def forward(self, user_id: Tensor, user_cat: Tensor, user_num: Tensor, history: Tensor,
                item_id: Tensor, item_cat: Tensor, item_num: Tensor,
                item_to_user: Tensor) -> Tensor:
        logits = self.logits(user_id, user_cat, user_num, history, item_id, item_cat,
                             item_num, item_to_user)
        return torch.sigmoid(logits)

    def logits(self, user_id: Tensor, user_cat: Tensor, user_num: Tensor, history: Tensor,
               item_id: Tensor, item_cat: Tensor, item_num: Tensor,
               item_to_user: Tensor) -> Tensor:
        """``[N, T]`` logits (training uses these with a BCE-with-logits loss)."""
        user = self.user_tower(user_id, user_cat, user_num, history)
        rows = item_id.shape[0]
        item = torch.cat([self.item_id_emb(item_id),
                          self.item_cat_emb(item_cat).reshape(rows, -1), item_num], dim=1)
        x0 = torch.cat([user[item_to_user], item], dim=1)
        logits: Tensor = self.mmoe(self.cross(x0)) + self.bias
        if not self.config.wide:
            return logits
        user_ids = torch.cat([user_id.unsqueeze(1), user_cat], dim=1)
        item_ids = torch.cat([item_id.unsqueeze(1), item_cat], dim=1)
        user_wide = self.wide_user(user_ids).sum(dim=1)
        if self.wide_user_num is not None:
            user_wide = user_wide + self.wide_user_num(user_num)
        item_wide = self.wide_item(item_ids).sum(dim=1)
        if self.wide_item_num is not None:
            item_wide = item_wide + self.wide_item_num(item_num)
        for (a, b), cross in zip(self.cross_columns, self.wide_crosses, strict=True):
            item_wide = item_wide + cross(user_ids[:, a][item_to_user], item_ids[:, b])
        out: Tensor = logits + user_wide[item_to_user] + item_wide
        return out
