"""Merging chunks of many requests into one batch and splitting the outputs back."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.batching.layout import CandidateLayout, WholeLayout
from serving.batching.work import Job
from serving.errors import BackendError
from tests.batching.tiny_models import gather_add_expected

LAYOUT = CandidateLayout(("u",), ("x",), "idx")


def job(users: int, rows: int, seed: int, chunk_rows: int) -> Job:
    rng = np.random.default_rng(seed)
    inputs = {"u": rng.normal(size=(users, 2)).astype(np.float32),
              "x": rng.normal(size=(rows, 2)).astype(np.float32),
              "idx": rng.integers(0, users, rows).astype(np.int64)}
    loop = asyncio.new_event_loop()
    try:
        made = Job(inputs, LAYOUT.rows_of(inputs), 0.0, 0.0, loop.create_future())
    finally:
        loop.close()
    made.split(chunk_rows)
    return made


@settings(max_examples=60, deadline=None)
@given(shapes=st.lists(st.tuples(st.integers(1, 4), st.integers(1, 30)), min_size=1,
                       max_size=6),
       chunk_rows=st.integers(1, 12), seed=st.integers(0, 2**16), data=st.data())
def test_merge_then_split_gives_every_chunk_its_own_rows(
        shapes: list[tuple[int, int]], chunk_rows: int, seed: int, data: st.DataObject) -> None:
    jobs = [job(u, n, seed + i, chunk_rows) for i, (u, n) in enumerate(shapes)]
    chunks = data.draw(st.permutations([c for j in jobs for c in j.chunks]))
    chunks = chunks[:data.draw(st.integers(1, len(chunks)))]
    merged, rows = LAYOUT.merge(chunks)
    assert rows == sum(c.rows for c in chunks) == len(merged["x"])
    # Each request's user rows appear once, however many of its chunks are in the batch.
    assert len(merged["u"]) == sum(len(j.inputs["u"]) for j in {id(c.job): c.job
                                                               for c in chunks}.values())
    outputs = {"y": gather_add_expected(merged["u"], merged["x"], merged["idx"])}
    for chunk, part in zip(chunks, LAYOUT.split(outputs, chunks, rows), strict=True):
        inputs = chunk.job.inputs
        want = gather_add_expected(inputs["u"], inputs["x"], inputs["idx"])
        np.testing.assert_array_equal(part["y"], want[chunk.start:chunk.stop])


def test_split_refuses_outputs_with_the_wrong_row_count() -> None:
    made = job(1, 5, 0, 5)
    with pytest.raises(BackendError, match=r"\(4, 2\).*5 rows"):
        LAYOUT.split({"y": np.zeros((4, 2))}, made.chunks, 5)


def test_whole_layout_passes_requests_through() -> None:
    layout = WholeLayout()
    inputs = {"a": np.zeros((3, 2)), "b": np.zeros(7)}
    assert layout.rows_of(inputs) == 7
    assert not layout.splittable
