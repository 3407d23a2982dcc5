"""How one model's requests merge into a batch and how its outputs split back.

:class:`CandidateLayout` covers both batchable shapes:

* the ranker: user-side inputs have one row per request row (``[R, ...]``), candidate
  inputs one row per candidate (``[N, ...]``) and an index input maps each candidate to its
  request row. Merging concatenates the user rows of every request in the batch once (even
  when several of its chunks are in the batch) and re-bases each chunk's index onto them.
* a Triton-style model with ``max_batch_size > 0``: every input and output is batched along
  dimension 0 (no shared inputs, no index), like Triton's dynamic batcher.

:class:`WholeLayout` is for models whose requests cannot be merged or split (a
``max_batch_size: 0`` model of unknown structure): one request per batch, outputs as-is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from serving.batching.buckets import Buckets
from serving.batching.work import Chunk, Tensors
from serving.errors import BackendError, BadRequest
from serving.ranking.features import ITEM_INPUTS, ITEM_TO_USER, MODEL_INPUTS, USER_INPUTS
from serving.repository.schema import card_batch_inputs
from serving.repository.served import ServedModel


def layout_for(model: ServedModel) -> Layout:
    """How ``model``'s requests merge into batches, from its tensor signature: the ranker's
    per-request/per-candidate layout, a ``max_batch_size > 0`` model's row-wise layout, or
    no merging at all."""
    if model.max_batch_size > 0:
        return CandidateLayout((), tuple(t.name for t in model.inputs))
    split = card_batch_inputs(model.card) if model.card is not None else None
    if split is not None and model.input_names() == {*split[0], *split[1], split[2]}:
        return CandidateLayout(*split)  # the card schema's per-request/per-candidate rule
    if model.input_names() == set(MODEL_INPUTS):
        return CandidateLayout(USER_INPUTS, (*ITEM_INPUTS,), ITEM_TO_USER)
    return WholeLayout()


class Layout:
    """Interface: validate a request's tensors, merge chunks, split outputs."""

    splittable: bool = True

    def rows_of(self, inputs: Mapping[str, np.ndarray]) -> int:
        """Candidate rows of a request (what batch targets and queue limits count).

        Raises:
            BadRequest: the tensors are inconsistent, naming the input.
        """
        raise NotImplementedError

    def user_rows_of(self, inputs: Mapping[str, np.ndarray]) -> int:
        """Rows of the per-request inputs, which every batch holding any of the request's
        candidate rows carries in full (0 where there are none): they cost like candidate
        rows, so admission and batch limits count them too."""
        return 0

    def signature(self, inputs: Mapping[str, np.ndarray]) -> tuple[object, ...]:
        """Requests merge only when their signatures are equal (same trailing shapes)."""
        raise NotImplementedError

    def merge(self, chunks: Sequence[Chunk]) -> tuple[Tensors, int]:
        """The batch's input tensors and its candidate row count."""
        raise NotImplementedError

    def split(self, outputs: Mapping[str, np.ndarray], chunks: Sequence[Chunk],
              rows: int) -> list[Tensors]:
        """Each chunk's slice of the outputs.

        Raises:
            BackendError: an output does not have one row per input row.
        """
        raise NotImplementedError

    def pad(self, inputs: Tensors, buckets: Buckets | None) -> tuple[Tensors, int]:
        """A merged batch padded up to its bucket shape (zeros, see
        :mod:`serving.batching.buckets`) and the candidate rows the outputs will have.
        Without buckets, or for a layout without an index (a row-wise model's
        ``max_batch_size`` is a hard limit that padding must not cross), the batch as
        it is."""
        return inputs, self.rows_of(inputs)

    def unpad(self, outputs: Mapping[str, np.ndarray], padded: int,
              rows: int) -> dict[str, np.ndarray]:
        """The outputs of a padded batch without its padded rows, so they can never reach
        an answer.

        Raises:
            BackendError: an output does not have one row per padded input row.
        """
        if padded == rows:
            return dict(outputs)
        _check_rows(outputs, padded)
        return {name: value[:rows] for name, value in outputs.items()}


@dataclass(frozen=True)
class CandidateLayout(Layout):
    shared: tuple[str, ...]
    rows: tuple[str, ...]
    index: str | None = None

    def rows_of(self, inputs: Mapping[str, np.ndarray]) -> int:
        n = _leading(inputs, self.rows)
        if self.index is None:
            return n
        r = _leading(inputs, self.shared)
        index = inputs[self.index]
        if index.ndim != 1 or len(index) != n:
            raise BadRequest(f"'{self.index}' must have shape [{n}]", field=self.index)
        if n and (index.min() < 0 or index.max() >= r):
            raise BadRequest(f"'{self.index}' values must lie in [0, {r})", field=self.index)
        return n

    def user_rows_of(self, inputs: Mapping[str, np.ndarray]) -> int:
        return _leading(inputs, self.shared) if self.index is not None else 0

    def signature(self, inputs: Mapping[str, np.ndarray]) -> tuple[object, ...]:
        return tuple((name, inputs[name].shape[1:], inputs[name].dtype)
                     for name in (*self.shared, *self.rows))

    def merge(self, chunks: Sequence[Chunk]) -> tuple[Tensors, int]:
        if len(chunks) == 1 and chunks[0].rows == chunks[0].job.rows:
            return dict(chunks[0].job.inputs), chunks[0].rows  # one whole request: no copies
        base: dict[int, int] = {}
        shared_parts: list[Tensors] = []
        offset = 0
        index_parts: list[np.ndarray] = []
        for chunk in chunks:
            job = chunk.job
            if id(job) not in base:
                base[id(job)] = offset
                shared_parts.append(job.inputs)
                offset += len(job.inputs[self.shared[0]]) if self.shared else 0
            if self.index is not None:
                index_parts.append(job.inputs[self.index][chunk.start:chunk.stop] + base[id(job)])
        merged = {name: np.concatenate([p[name] for p in shared_parts]) for name in self.shared}
        for name in self.rows:
            merged[name] = np.concatenate([c.job.inputs[name][c.start:c.stop] for c in chunks])
        if self.index is not None:
            merged[self.index] = np.concatenate(index_parts)
        return merged, sum(c.rows for c in chunks)

    def pad(self, inputs: Tensors, buckets: Buckets | None) -> tuple[Tensors, int]:
        rows = _leading(inputs, self.rows)
        if buckets is None or self.index is None:
            return inputs, rows
        users = _leading(inputs, self.shared)
        n, r = buckets.pad(rows, users)
        if (n, r) == (rows, users):
            return inputs, rows
        padded = {name: _zero_padded(inputs[name], n) for name in (*self.rows, self.index)}
        padded.update({name: _zero_padded(inputs[name], r) for name in self.shared})
        return padded, n  # a padded candidate's index 0 points at the first user row

    def split(self, outputs: Mapping[str, np.ndarray], chunks: Sequence[Chunk],
              rows: int) -> list[Tensors]:
        _check_rows(outputs, rows)
        parts = []
        offset = 0
        for chunk in chunks:
            parts.append({name: v[offset:offset + chunk.rows] for name, v in outputs.items()})
            offset += chunk.rows
        return parts


class WholeLayout(Layout):
    """One request per batch, never split: for models the batcher cannot merge."""

    splittable = False

    def rows_of(self, inputs: Mapping[str, np.ndarray]) -> int:
        return max((v.shape[0] if v.ndim else 1 for v in inputs.values()), default=0)

    def signature(self, inputs: Mapping[str, np.ndarray]) -> tuple[object, ...]:
        return ()

    def merge(self, chunks: Sequence[Chunk]) -> tuple[Tensors, int]:
        (chunk,) = chunks
        return dict(chunk.job.inputs), chunk.rows

    def split(self, outputs: Mapping[str, np.ndarray], chunks: Sequence[Chunk],
              rows: int) -> list[Tensors]:
        return [dict(outputs)]


def _check_rows(outputs: Mapping[str, np.ndarray], rows: int) -> None:
    for name, value in outputs.items():
        if value.ndim == 0 or value.shape[0] != rows:
            raise BackendError(f"backend returned {value.shape} for output '{name}' "
                               f"of a batch of {rows} rows")


def _zero_padded(array: np.ndarray, rows: int) -> np.ndarray:
    """``array`` with zero rows appended up to ``rows`` (a fresh array: the request's
    own tensors are never written)."""
    if len(array) >= rows:
        return array
    out = np.zeros((rows, *array.shape[1:]), dtype=array.dtype)
    out[:len(array)] = array
    return out


def _leading(inputs: Mapping[str, np.ndarray], names: Sequence[str]) -> int:
    """The common leading dimension of ``names``; raises naming the first that differs."""
    sizes = {name: inputs[name].shape[0] if inputs[name].ndim else -1 for name in names}
    if not sizes:
        return 0
    first = next(iter(sizes.values()))
    for name, size in sizes.items():
        if size != first or size < 0:
            raise BadRequest(f"'{name}' has {size} rows but '{names[0]}' has {first}",
                             field=name)
    return first
