"""The ranker's graph: R request rows, N candidate rows, the user side computed once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from serving.ranking.features import (
    HISTORY_LENGTH,
    ITEM_CATEGORICAL,
    ITEM_NUMERIC,
    MODEL_INPUTS,
    PROBS,
    USER_CATEGORICAL,
    USER_NUMERIC,
)
from serving.train.data import DEFAULT_SCHEMA, TASKS
from serving.train.dataset import EncodedSplit
from serving.train.export import export_onnx
from serving.train.model import CrossNetwork, FeedRanker, IdCross, ModelConfig, NumericBins
from serving.train.trainer import TrainConfig, train_model

SIZES = {"user_id": 50, "video_id": 80, **{s.name: 5 for s in USER_CATEGORICAL},
         **{s.name: 7 for s in ITEM_CATEGORICAL}}


def _inputs(candidates_per_request: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    r, n = len(candidates_per_request), sum(candidates_per_request)
    return {
        "user_id": torch.randint(0, 50, (r,), generator=g),
        "user_cat": torch.randint(0, 5, (r, len(USER_CATEGORICAL)), generator=g),
        "user_num": torch.randn(r, len(USER_NUMERIC), generator=g),
        "history": torch.randint(0, 80, (r, HISTORY_LENGTH), generator=g),
        "item_id": torch.randint(0, 80, (n,), generator=g),
        "item_cat": torch.randint(0, 7, (n, len(ITEM_CATEGORICAL)), generator=g),
        "item_num": torch.randn(n, len(ITEM_NUMERIC), generator=g),
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


def test_numeric_bins_give_each_quantile_bucket_its_own_weight() -> None:
    """Boundaries at the training quantiles; a value's bucket is how many it exceeds, and
    only that bucket's weight row reaches the logit."""
    bins = NumericBins(features=2, bins=4, tasks=1)
    bins.fit(torch.stack([torch.arange(100.0), -torch.arange(100.0)], dim=1))
    torch.testing.assert_close(bins.boundaries[0], torch.tensor([24.75, 49.5, 74.25]))
    with torch.no_grad():
        bins.table.weight[:, 0] = torch.arange(8.0)  # feature f, bucket k -> 4 f + k
    out = bins(torch.tensor([[60.0, -10.0], [0.0, -99.0], [99.0, 0.0]]))
    assert out[:, 0].tolist() == [2.0 + 7.0, 0.0 + 4.0, 3.0 + 7.0]


def test_id_cross_rows_are_exact_when_the_pairs_fit_else_hashed_into_the_table() -> None:
    a, b = torch.arange(5).repeat_interleave(7), torch.arange(7).repeat(5)
    exact = IdCross(size_b=7, pairs=35, buckets=100, tasks=1)
    assert not exact.hashed
    assert exact.rows == 35
    with torch.no_grad():
        exact.table.weight[:, 0] = torch.arange(35.0)
    assert sorted(exact(a, b)[:, 0].tolist()) == [float(i) for i in range(35)]  # one row each
    hashed = IdCross(size_b=7, pairs=35, buckets=16, tasks=1)
    assert hashed.hashed
    assert hashed.rows == 16
    with torch.no_grad():
        hashed.table.weight[:, 0] = torch.arange(16.0)
    assert len(set(hashed(a, b)[:, 0].tolist())) > 8  # scattered over the table


def test_wide_crosses_and_bins_export_with_exact_parity(tmp_path: Path) -> None:
    """The buckets and the crosses are standard ONNX ops: ONNX Runtime scores as PyTorch."""
    torch.manual_seed(0)
    ranker = FeedRanker(SIZES, TASKS, ModelConfig(
        wide_bins=5, wide_crosses=[["user_id", "author_id"], ["is_live_streamer", "video_type"]],
        cross_buckets=64))
    inputs = _inputs([3, 1, 5])
    ranker.fit_wide_bins(inputs["user_num"], inputs["item_num"])
    with torch.no_grad():
        for w in ranker.wide_params():
            w.normal_(std=0.3)
    assert ranker.wide_crosses[0].hashed
    assert not ranker.wide_crosses[1].hashed
    sample = {k: v.numpy() for k, v in inputs.items()}
    export_onnx(ranker, sample, tmp_path / "model.onnx", DEFAULT_SCHEMA)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    other = {k: v.numpy() for k, v in _inputs([2, 6], seed=1).items()}
    got = session.run([PROBS], other)[0]
    want = _run(ranker.eval(), {k: torch.from_numpy(v) for k, v in other.items()}).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_wide_cross_names_a_user_side_and_a_candidate_categorical() -> None:
    with pytest.raises(ValueError, match="wide cross"):
        FeedRanker(SIZES, TASKS, ModelConfig(wide_crosses=[["author_id", "user_id"]]))


def test_hidden_user_ids_leave_their_embeddings_untrained() -> None:
    """``user_id_dropout`` 1.0 hides every user id (id 0) in training: no other user's
    embedding or wide weight moves, while the candidate ids' do."""
    torch.manual_seed(0)
    ranker = FeedRanker(SIZES, TASKS, ModelConfig())
    inputs = {k: v.numpy() for k, v in _inputs([4] * 64).items()}
    users = {k: inputs[k] for k in ("user_id", "user_cat", "user_num", "history")}
    items = {k: inputs[k] for k in ("item_id", "item_cat", "item_num")}
    labels = (np.random.default_rng(0).random((256, len(TASKS))) < 0.3).astype(np.float32)
    split = EncodedSplit(users, items, np.arange(0, 257, 4), labels)
    before = [t.detach().clone() for t in (ranker.user_id_emb.weight,
                                           ranker.item_id_emb.weight)]
    train_model(ranker, split, TrainConfig(epochs=1, batch_rows=64, threads=1,
                                           user_id_dropout=1.0), progress=False)
    torch.testing.assert_close(ranker.user_id_emb.weight[1:], before[0][1:])
    assert not torch.equal(ranker.item_id_emb.weight[1:], before[1][1:])


def test_task_wide_l2_pulls_only_its_tasks_column_of_the_wide_weights() -> None:
    """Per-task L2: with the L2 of one task only, the wide rows no batch touches shrink in
    that task's column and stay exactly as they were in every other one."""
    torch.manual_seed(0)
    ranker = FeedRanker(SIZES, TASKS, ModelConfig())
    with torch.no_grad():
        ranker.wide_item.table.weight.fill_(0.5)
    inputs = {k: v.numpy() for k, v in _inputs([4] * 32).items()}
    inputs["item_id"][:] = 1  # video rows 2.. are never looked up
    users = {k: inputs[k] for k in ("user_id", "user_cat", "user_num", "history")}
    items = {k: inputs[k] for k in ("item_id", "item_cat", "item_num")}
    labels = (np.random.default_rng(0).random((128, len(TASKS))) < 0.3).astype(np.float32)
    split = EncodedSplit(users, items, np.arange(0, 129, 4), labels)
    train_model(ranker, split, TrainConfig(epochs=2, batch_rows=32, threads=1, wide_l2=0.0,
                                           task_wide_l2={TASKS[0]: 1.0}, item_id_dropout=0.0),
                progress=False)
    untouched = ranker.wide_item.table.weight[2:SIZES["video_id"]].detach()
    assert float(untouched[:, 0].abs().max()) < 0.45
    assert torch.equal(untouched[:, 1:], torch.full_like(untouched[:, 1:], 0.5))
