"""A model's tensor signature, as Triton reports it and as its model card records it.

The Triton backend compares the two at start (a mismatch is a deployment error that must
stop the gateway from becoming ready) and uses the signature to lay out shared-memory
regions for a batch. The comparison itself is the repository's
(:func:`serving.repository.tensors.differences`); only its wording is Triton's here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from tritonclient.utils import triton_to_np_dtype

from serving.backends.shared_memory import aligned
from serving.repository.card import ModelCard
from serving.repository.tensors import TensorSpec, differences, specs_by_name


@dataclass(frozen=True)
class Signature:
    """A model's inputs and outputs, from Triton's metadata or from a model card."""

    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]

    @classmethod
    def from_metadata(cls, metadata: Any) -> Signature:
        def specs(tensors: Any) -> dict[str, TensorSpec]:
            return specs_by_name(TensorSpec(t.name, t.datatype, tuple(t.shape))
                                 for t in tensors)
        return cls(specs(metadata.inputs), specs(metadata.outputs))

    @classmethod
    def from_card(cls, card: ModelCard) -> Signature:
        return cls(specs_by_name(card.inputs), specs_by_name(card.outputs))

    def differences(self, expected: Signature) -> list[str]:
        """What in this (Triton's) signature differs from ``expected`` (the card's)."""
        problems = []
        for kind, ours, theirs in (("input", self.inputs, expected.inputs),
                                   ("output", self.outputs, expected.outputs)):
            for d in differences(kind, theirs, ours):
                if d.want is None:
                    problems.append(f"{kind} '{d.name}' is on Triton but not in the card")
                elif d.got is None:
                    problems.append(f"{kind} '{d.name}' is missing on Triton "
                                    f"(card: {d.want.describe()})")
                else:
                    problems.append(f"{kind} '{d.name}' is {d.got.describe()} on Triton, "
                                    f"the card says {d.want.describe()}")
        return problems

    def output_layout(self, rows: int) -> dict[str, tuple[int, int]] | None:
        """Offset and byte size of each output, packed for ``rows`` leading rows, or None
        if an output has another dynamic dimension (its size is unknown before the call)."""
        layout, offset = {}, 0
        for name, sig in self.outputs.items():
            trailing = sig.shape[1:]
            if any(d < 0 for d in trailing):
                return None
            itemsize = np.dtype(triton_to_np_dtype(sig.dtype)).itemsize
            nbytes = aligned(rows * math.prod(trailing) * itemsize)
            layout[name] = (offset, nbytes)
            offset += nbytes
        return layout


def rows_of(arrays: Mapping[str, np.ndarray]) -> int:
    """The largest leading dimension: outputs have at most that many rows."""
    return max((a.shape[0] for a in arrays.values() if a.ndim), default=0)
