"""The value model: weights, overrides validated against the tasks, stable top-k."""

from __future__ import annotations

import numpy as np
import pytest

from serving.errors import BadRequest
from serving.ranking.value import ValueModel, top_k

TASKS = ["click", "like", "follow"]


def test_overrides_replace_only_the_named_weights() -> None:
    model = ValueModel(TASKS, {"click": 1.0, "like": 2.0})
    np.testing.assert_array_equal(model.weights(None), [1.0, 2.0, 0.0])
    np.testing.assert_array_equal(model.weights({"follow": 5}), [1.0, 2.0, 5.0])
    np.testing.assert_array_equal(model.default, [1.0, 2.0, 0.0])  # defaults untouched
    probs = np.array([[0.5, 0.1, 0.0], [0.1, 0.5, 0.2]], dtype=np.float32)
    np.testing.assert_allclose(ValueModel.score(probs, model.weights(None)),
                               probs.astype(np.float64) @ [1.0, 2.0, 0.0])


@pytest.mark.parametrize(("weights", "field"), [
    ({"nope": 1.0}, "weights.nope"), ({"click": "1"}, "weights.click"),
    ({"click": True}, "weights.click"), ({"click": float("inf")}, "weights.click"),
    ([1.0], "weights"),
])
def test_bad_overrides_name_the_field(weights: object, field: str) -> None:
    with pytest.raises(BadRequest) as raised:
        ValueModel(TASKS, {"click": 1.0}).weights(weights)
    assert raised.value.field == field


def test_task_selection() -> None:
    model = ValueModel(TASKS, {})
    assert model.task_indices(True) == [0, 1, 2]
    assert model.task_indices(None) == []
    assert model.task_indices(["follow", "click"]) == [2, 0]
    with pytest.raises(BadRequest):
        model.task_indices(["nope"])
    with pytest.raises(BadRequest):
        model.task_indices("click")


def test_top_k_is_stable_on_ties_and_agrees_with_a_full_sort() -> None:
    scores = np.array([0.5, 0.9, 0.5, 0.9, 0.1, 0.5])
    assert top_k(scores, None).tolist() == [1, 3, 0, 2, 5, 4]
    assert top_k(scores, 3).tolist() == [1, 3, 0]
    rng = np.random.default_rng(0)
    many = rng.integers(0, 50, 5000).astype(np.float64)  # lots of ties
    for k in (1, 7, 100, 1249, 5000, 9000):
        expected = np.argsort(-many, kind="stable")[:k]
        np.testing.assert_array_equal(top_k(many, k), expected)
