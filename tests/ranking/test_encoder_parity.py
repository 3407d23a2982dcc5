"""The encoder gives tensors IDENTICAL to the encoder as it was before the O(1) lookups and
the schema (``legacy_encoder.py``, a frozen copy), on real held-out KuaiRand requests in
every body form (row-wise JSON, columnar JSON, binary columns, training's columns), and the
same outcome, errors included, on adversarial values.

Both encoders are built from the committed model card's fitted state for every feature the
old encoder knew: all but the counting features, which came later (their values are joined
from the snapshot and encoded as any numeric; ``tests/gateway/test_counter_snapshot_http.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.errors import RankServeError
from serving.ranking.features import FeatureEncoder, columns_from_rows
from serving.ranking.ranker import Ranker, RankRequest
from serving.ranking.value import ValueModel
from serving.repository.card import ModelCard
from serving.repository.schema import schema_of_card
from serving.repository.served import ServedModel
from serving.wire import columns as wire
from tests.ranking import legacy_encoder as legacy

CARD = Path(__file__).resolve().parents[2] / "model_repository" / "feed_ranker" / "1" \
    / "model_card.json"
Body = dict[str, Any]


@pytest.fixture(scope="module")
def card() -> ModelCard:
    return ModelCard.load(CARD)


@pytest.fixture(scope="module")
def features(card: ModelCard) -> dict[str, Any]:
    """The card's fitted state without the counting features (the old encoder's card)."""
    counters = schema_of_card(card).counter_features()
    return {**card.features, "numeric": [f for f in card.features["numeric"]
                                         if f["name"] not in counters]}


@pytest.fixture(scope="module")
def old(features: dict[str, Any]) -> legacy.FeatureEncoder:
    return legacy.FeatureEncoder.from_card(features)


@pytest.fixture(scope="module")
def ranker(card: ModelCard, features: dict[str, Any]) -> Ranker:
    return Ranker(cast(ServedModel, None), FeatureEncoder.from_card(features),
                  ValueModel(card.tasks, card.value_weights))


@pytest.fixture(scope="module")
def traffic() -> Any:
    from loadtests.traffic import HeldOutTraffic
    from serving.train.data import DataNotFound
    try:
        return HeldOutTraffic.load(users=120, seed=3)
    except DataNotFound as e:
        pytest.skip(str(e))


def legacy_encode(encoder: legacy.FeatureEncoder, request: RankRequest) -> dict[str, np.ndarray]:
    """What ``Ranker.encode`` did before (it called the encoder exactly like this)."""
    tensors = encoder.encode_items(request.candidates, request.n)
    users = {k: [v] for k, v in request.user.items()}
    contexts = {k: [v] for k, v in request.context.items()}
    tensors.update(encoder.encode_users(users, contexts, [request.history], 1))
    tensors[legacy.ITEM_TO_USER] = np.zeros(request.n, dtype=np.int64)
    return tensors


def assert_identical(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray]) -> None:
    assert list(got) == list(want) or set(got) == set(want), (sorted(got), sorted(want))
    for name, expected in want.items():
        actual = got[name]
        assert actual.dtype == expected.dtype, name
        assert actual.shape == expected.shape, name
        assert actual.flags.c_contiguous, name
        np.testing.assert_array_equal(actual, expected, err_msg=name, strict=True)


def _forms(body: Body) -> dict[str, Any]:
    """The candidate columns of ``body`` as each wire format delivers them."""
    rows = body["candidates"]
    if isinstance(rows, dict):  # already columnar
        columns = rows
        rowwise = [{k: v[i] for k, v in columns.items() if v[i] is not None}
                   for i in range(len(next(iter(columns.values()))))]
    else:
        rowwise, columns = rows, dict(columns_from_rows(rows, "item"))
    doc = {k: v for k, v in body.items() if k != "candidates"}
    _, binary = wire.decode(wire.encode(doc, columns))
    narrow = {k: (v.astype(np.int32) if v.dtype == np.int64 and np.abs(v).max(initial=0) < 2**31
                  else v.astype(np.float32) if v.dtype == np.float64 else v)
              if isinstance(v, np.ndarray) else v for k, v in binary.items()}
    return {"rowwise": columns_from_rows(rowwise, "item"),
            "columnar": orjson.loads(orjson.dumps(columns)),
            "binary": binary, "binary-narrow": narrow}


def _request(body: Body, candidates: Any) -> RankRequest:
    return RankRequest(user=dict(body["user"]), candidates=candidates,
                       n=len(next(iter(candidates.values()))), context=dict(body["context"]),
                       history=body["history"])


def test_real_held_out_requests_encode_identically(traffic: Any, ranker: Ranker,
                                                   old: legacy.FeatureEncoder) -> None:
    from loadtests.traffic import CandidateCounts

    bodies: list[Body] = list(traffic.users[:60])
    bodies += traffic.requests(CandidateCounts.fixed(500), 8, seed=5)
    checked = 0
    for body in bodies:
        for form, columns in _forms(body).items():
            request = _request(body, columns)
            want = legacy_encode(old, request)
            got = ranker.encode(request)
            try:
                assert_identical(got, want)
            except AssertionError as e:
                raise AssertionError(f"{form} body {body.get('request_id')}: {e}") from None
            checked += request.n
    assert checked > 4 * 4000


def test_training_columns_encode_identically(traffic: Any, features: dict[str, Any],
                                             old: legacy.FeatureEncoder) -> None:
    """The training path: many request rows at once, pandas columns (NaN, objects)."""
    from serving.train.data import TEST_DAYS, group_requests, load_log, raw_columns

    grouped = group_requests(load_log().days(TEST_DAYS[-1:]), by="minute").head(3000)
    new = FeatureEncoder.from_card(features)
    user_cols = [c for c in grouped.requests.columns if c not in ("date", "time_ms")]
    item_cols = [c for c in grouped.items.columns if c in {s.name for s in legacy.ALL_CATEGORICAL}
                 | {s.name for s in legacy.ALL_NUMERIC}]
    users = raw_columns(grouped.requests, user_cols)
    contexts = {k: users[k] for k in ("tab", "hour")}
    items = raw_columns(grouped.items, item_cols)
    n_req, n_items = len(grouped.requests), len(grouped.items)
    assert_identical(new.encode_users(users, contexts, grouped.histories, n_req),
                     old.encode_users(users, contexts, grouped.histories, n_req))
    assert_identical(new.encode_items(items, n_items), old.encode_items(items, n_items))


# -- adversarial values: the same tensors or the same error (type, message, field) --------

ints = st.one_of(st.integers(-5, 40), st.sampled_from([0, 1, 7, 27284, 7566, 9170219122]),
                 st.integers(-(2**63), 2**63 - 1))
values = st.one_of(
    st.none(), st.booleans(), ints, st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1.0, 2.5, 7.0, -0.0, 1e300, float(2**62), float(2**63)]),
    st.sampled_from(["AD", "NORMAL", "UNKNOWN", "full_active", "7", ""]), st.text(max_size=3))
DTYPES = (None, np.int64, np.int32, np.float64, np.float32, object)


def outcome(call: Callable[[], Mapping[str, np.ndarray]]) -> tuple[str, Any]:
    try:
        return "ok", {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in call().items()}
    except RankServeError as e:  # history messages now name the sequence's vocabulary
        return type(e).__name__, (e.field if e.field == "history" else e.message, e.field)
    except (TypeError, ValueError, OverflowError) as e:  # both must fail the same way
        return "python-error", type(e).__name__


def _column(raw: list[Any], dtype: Any) -> Any:
    if dtype is None:
        return raw
    try:
        with np.errstate(invalid="ignore", over="ignore"):
            return np.asarray(raw, dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        return raw


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_adversarial_candidate_columns_match(data: st.DataObject, ranker: Ranker,
                                             old: legacy.FeatureEncoder) -> None:
    n = data.draw(st.integers(0, 4))
    names = [s.name for s in (*legacy.ALL_CATEGORICAL, *legacy.ALL_NUMERIC)
             if s.side == "item"]
    columns: dict[str, Any] = {"video_id": [1, 4, 7, 0][:n]}
    for name in data.draw(st.lists(st.sampled_from(names), max_size=4, unique=True)):
        raw = data.draw(st.lists(values, min_size=n, max_size=n))
        columns[name] = _column(raw, data.draw(st.sampled_from(DTYPES)))
    if data.draw(st.booleans()) and "tag" in columns:
        codes = np.asarray(data.draw(st.lists(st.integers(-1, 2), min_size=n, max_size=n)),
                           dtype=np.int32)
        columns["video_type"] = wire.DictColumn(["AD", "NORMAL", "nope"], codes)
    assert outcome(lambda: ranker.encoder.encode_items(columns, n)) == \
        outcome(lambda: old.encode_items(columns, n))


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_adversarial_user_side_matches(data: st.DataObject, ranker: Ranker,
                                       old: legacy.FeatureEncoder) -> None:
    user_names = [s.name for s in (*legacy.ALL_CATEGORICAL, *legacy.ALL_NUMERIC)
                  if s.side == "user"]
    user = {name: data.draw(values) for name in
            data.draw(st.lists(st.sampled_from(user_names), max_size=5, unique=True))}
    if data.draw(st.booleans()):
        user["user_id"] = data.draw(st.sampled_from([0, 1, 5, 27284, 10**9]))
    context = {name: data.draw(values) for name in
               data.draw(st.lists(st.sampled_from(["tab", "hour"]), max_size=2, unique=True))}
    history = data.draw(st.one_of(
        st.none(), st.lists(st.one_of(ints, st.none(), st.just(2.0)), max_size=25),
        st.just("x"), st.just(np.arange(30, dtype=np.int64)), st.just(()),
        st.just(np.array([1.0, np.nan]))))
    request = RankRequest(user=user, candidates={"video_id": [1]}, n=1, context=context,
                          history=history)
    assert outcome(lambda: ranker.encode(request)) == outcome(lambda: legacy_encode(old, request))
