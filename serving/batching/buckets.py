"""Shape buckets: a few fixed batch shapes that every batch is padded up to.

On a GPU, a batch's cost hardly depends on its exact row count, but a new shape costs a
lot: TensorRT builds an engine per shape outside its profiles, a CUDA graph is captured
per shape, bound I/O keeps buffers per shape. With buckets, the candidate rows ``N`` of a
batch are padded up to the smallest candidate bucket that holds them and its user rows
``R`` up to the smallest user bucket, so only ``len(rows) x len(user_rows)`` shapes ever
reach the backend, all known in advance (warm-up runs each; TensorRT profiles and CUDA
graphs are made for exactly these).

Padded rows are zeros (a valid value for every input: id 0 is the OOV id, and a padded
candidate's ``item_to_user`` 0 points at the first real user row); the layout cuts them off
the outputs before anything is split into answers. A batch larger than the largest bucket
(a /v2 request past it) runs unpadded, at its own shape: correct, just not fixed.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from serving.settings import DEFAULT_USER_BUCKETS


@dataclass(frozen=True)
class Buckets:
    """Candidate-row and user-row bucket sizes, ascending (see the module docstring)."""

    rows: tuple[int, ...]
    user_rows: tuple[int, ...] = (1,)

    def __post_init__(self) -> None:
        for name in ("rows", "user_rows"):
            sizes = getattr(self, name)
            if not sizes or any(s < 1 for s in sizes):
                raise ValueError(f"buckets: {name} must be positive row counts, got {sizes}")
            object.__setattr__(self, name, tuple(sorted(set(sizes))))

    @classmethod
    def of(cls, rows: Sequence[int], user_rows: Sequence[int] = ()) -> Buckets | None:
        """Buckets from settings lists; ``None`` (no padding) where ``rows`` is empty."""
        return cls(tuple(rows), tuple(user_rows) or DEFAULT_USER_BUCKETS) if rows else None

    @staticmethod
    def _up(sizes: tuple[int, ...], n: int) -> int:
        i = bisect.bisect_left(sizes, n)
        return sizes[i] if i < len(sizes) else n  # past the largest: unpadded

    def pad(self, rows: int, user_rows: int) -> tuple[int, int]:
        """The padded ``(candidate rows, user rows)`` of a batch; a count past its largest
        bucket stays as it is."""
        return self._up(self.rows, rows), (self._up(self.user_rows, user_rows)
                                           if user_rows else 0)

    def holds(self, rows: int, user_rows: int) -> bool:
        """Whether a batch this size fits the largest bucket shape: a batch stops growing
        before it would not (one request larger than that still runs, unpadded)."""
        return rows <= self.rows[-1] and user_rows <= self.user_rows[-1]

    def fixed(self, rows: int, user_rows: int) -> bool:
        """Whether the batch's padded shape is one of the buckets' (a known, fixed shape)."""
        n, r = self.pad(rows, user_rows)
        return n in self.rows and (r == 0 or r in self.user_rows)

    def shapes(self, max_rows: int | None = None) -> list[tuple[int, int]]:
        """Every bucket shape ``(candidate rows, user rows)`` a batch of at most
        ``max_rows`` candidate rows can take (the largest bucket that holds ``max_rows``
        included), user rows never above candidate rows: what warm-up runs."""
        top = self.pad(max_rows, 1)[0] if max_rows is not None else self.rows[-1]
        return [(n, r) for n in self.rows if n <= top for r in self.user_rows
                if r <= n or r == self.user_rows[0]]
