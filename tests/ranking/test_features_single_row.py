"""The single-value lookup (a request's user-side features) answers exactly like the
vectorised column path, errors included."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.errors import RankServeError
from serving.ranking.lookup import Vocabulary
from serving.repository.schema import Feature

INT_SPECS = [Feature("user_id", "user", "categorical_id", "vocabulary", required=True, id=True),
             Feature("tab", "context", "categorical_id", "vocabulary")]
STR_SPEC = Feature("user_active_degree", "user", "categorical_string", "vocabulary")

values = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.integers(-3, 40),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1.0, 2.5, 7.0, -0.0]),
    st.text(max_size=4), st.sampled_from(["high", "low", "7", ""]), st.lists(st.integers(),
                                                                               max_size=2))


def outcome(vocabulary: Vocabulary, raw: Any) -> tuple[str, Any]:
    try:
        return "ok", vocabulary.lookup(raw, 1).tolist()
    except RankServeError as e:
        return type(e).__name__, (e.message, e.field)


@settings(max_examples=400, deadline=None)
@given(value=values)
def test_single_value_path_equals_column_path(value: Any) -> None:
    vocabularies = [Vocabulary(spec, [1, 2, 7, 2**40, -3]) for spec in INT_SPECS]
    vocabularies.append(Vocabulary(STR_SPEC, ["high", "low", "7"]))
    for vocabulary in vocabularies:
        column = np.empty(1, dtype=object)
        column[0] = value  # an object array always takes the vectorised path
        assert outcome(vocabulary, [value]) == outcome(vocabulary, column), (
            vocabulary.spec.name, value)
