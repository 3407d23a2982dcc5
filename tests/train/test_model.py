"""The ranker's graph: R request rows, N candidate rows, the user side computed once."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from serving.ranking.features import (
    HISTORY_LENGTH,
    ITEM_CATEGORICAL,
    MODEL_INPUTS,
    USER_CATEGORICAL,
)
from serving.train.data import TASKS
from serving.train.model import CrossNetwork, FeedRanker, ModelConfig

SIZES = {"user_id": 50, "video_id": 80, **{s.name: 5 for s in USER_CATEGORICAL},
         **{s.name: 7 for s in ITEM_CATEGORICAL}}


def _inputs(candidates_per_request: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    r, n = len(candidates_per_request), sum(candidates_per_request)
    return {
        "user_id": torch.randint(0, 50, (r,), generator=g),
        "user_cat": torch.randint(0, 5, (r, len(USER_CATEGORICAL)), generator=g),
        "user_num": torch.randn(r, 4, generator=g),
        "history": torch.randint(0, 80, (r, HISTORY_LENGTH), generator=g),
        "item_id": torch.randint(0, 80, (n,), generator=g),
        "item_cat": torch.randint(0, 7, (n, len(ITEM_CATEGORICAL)), generator=g),
        "item_num": torch.randn(n, 4, generator=g),
        "item_to_user": torch.repeat_interleave(torch.arange(r),
                                                torch.tensor(candidates_per_request)),
    }


@pytest.fixture(scope="module")
def model() -> FeedRanker:
    torch.manual_seed(0)
    ranker = FeedRanker(SIZES, TASKS, ModelConfig())
    with torch.no_grad():  # non-zero wide weights so the wide path is exercised too
        for w in ranker.wide_params():
            w.normal_(std=0.1)
    return ranker.eval()


def _run(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        out: torch.Tensor = model(*(inputs[name] for name in MODEL_INPUTS))
    return out


def test_output_is_one_probability_row_per_candidate(model: FeedRanker) -> None:
    probs = _run(model, _inputs([3, 1, 5]))  # R = 3, N = 9
    assert probs.shape == (9, len(TASKS))
    assert probs.dtype == torch.float32
    assert ((probs > 0) & (probs < 1)).all()


def test_user_side_runs_once_per_request_not_per_candidate(model: FeedRanker) -> None:
    seen: list[int] = []
    modules = [model.history_attention, model.user_id_emb, model.user_cat_emb, model.wide_user]
    hooks = [m.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[0]))
             for m in modules]
    try:
        _run(model, _inputs([500]))  # one request with 500 candidates
    finally:
        for h in hooks:
            h.remove()
    assert seen == [1] * len(modules)


def test_candidates_are_scored_independently_of_batch_neighbours(model: FeedRanker) -> None:
    """Gathering by item_to_user: a request scores the same alone or inside a batch."""
    batch = _inputs([4, 2, 6], seed=1)
    together = _run(model, batch)
    alone = {name: batch[name][1:2] if name in ("user_id", "user_cat", "user_num", "history")
             else batch[name][4:6] for name in MODEL_INPUTS}
    alone["item_to_user"] = torch.zeros(2, dtype=torch.int64)
    np.testing.assert_allclose(_run(model, alone).numpy(), together[4:6].numpy(), atol=1e-6)


def test_empty_history_pools_to_zero_not_nan(model: FeedRanker) -> None:
    inputs = _inputs([2])
    inputs["history"] = torch.zeros_like(inputs["history"])
    pooled = model.history_attention(torch.randn(1, model.history_attention.query.in_features),
                                     inputs["history"], torch.randn(1, HISTORY_LENGTH, 16))
    assert torch.equal(pooled, torch.zeros_like(pooled))
    assert torch.isfinite(_run(model, inputs)).all()


def test_wide_part_memorises_ids(model: FeedRanker) -> None:
    """Changing one video's wide weight for a task moves only that video's logit there."""
    inputs = _inputs([3])
    before = _run(model, inputs)
    video = int(inputs["item_id"][0])
    others = inputs["item_id"] != video
    with torch.no_grad():
        model.wide_item.table.weight[video, 0] += 1.0  # video ids sit first in the table
        after = _run(model, inputs)
        model.wide_item.table.weight[video, 0] -= 1.0
    assert after[0, 0] > before[0, 0]
    torch.testing.assert_close(after[others], before[others])
    torch.testing.assert_close(after[:, 1:], before[:, 1:])


def test_low_rank_cross_layers_cost_rank_not_width() -> None:
    """The default cross layers factor ``W = U V^T``: their weights grow with ``dim * rank``,
    and each layer's map ``x -> W x`` has rank at most ``rank`` (what makes a row cheap)."""
    dim, rank = 40, 4
    cross = CrossNetwork(dim, layers=2, rank=rank)
    assert sum(p.numel() for p in cross.parameters()) == 2 * (2 * dim * rank + dim)
    with torch.no_grad():
        for layer in cross.layers:  # affine: the rows of layer(I) - layer(0) are W^T
            weight = layer(torch.eye(dim)) - layer(torch.zeros(1, dim))
            assert torch.linalg.matrix_rank(weight) == rank
    full = CrossNetwork(dim, layers=2)
    assert sum(p.numel() for p in full.parameters()) == 2 * (dim * dim + dim)
    assert ModelConfig().cross_rank is not None
