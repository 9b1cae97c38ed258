"""A bounded shuffling buffer that is empty at every checkpoint.

Consecutive sequences of a corpus come from the same documents, so a training batch made of one
LM batch sees correlated tokens. The buffer gathers ``blocks`` LM batches of activation rows,
permutes all their rows together and hands them out as ``blocks`` training batches of nearly
equal size. The permutation of block ``b`` comes from a generator seeded with ``(seed, b)``, so it
is a function of the block index alone: between blocks the buffer is empty, and a resumed run
that starts at block ``b`` reproduces the original order bit for bit without saving any tensor.

Memory: ``blocks`` LM batches of rows per hook (4 × 4,096 × 576 fp32 = 38 MB at the defaults).

    for batch in shuffled(activation_batches, blocks=4, seed=0):
        trainer.step(batch.acts)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["MixedBatch", "block_permutation", "shuffled"]


class MixedBatch(NamedTuple):
    """One training batch out of the buffer."""

    acts: dict[str, Float[Tensor, "rows d"]]
    """Activation rows per hook point; row i of every hook comes from the same token."""
    block: int
    """Index of the block it came from (0-based, counted from the start of the run)."""
    end_of_block: bool
    """True on the block's last batch: the buffer is empty afterwards (a safe checkpoint point)."""
    sequences: int
    """Global stream position (sequences consumed by all ranks) once this block is consumed."""
    nonfinite_rows: int
    """Rows dropped for NaN/inf in this block (reported on the block's last batch, else 0)."""


def block_permutation(n: int, seed: int, block: int) -> Tensor:
    """The row order of block ``block``: a function of (seed, block) only.

        perm = block_permutation(16_256, seed=0, block=3)
    """
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(block))
    return torch.randperm(n, generator=gen)


def shuffled(
    batches: Iterable,
    *,
    blocks: int = 4,
    seed: int = 0,
    start_block: int = 0,
) -> Iterator[MixedBatch]:
    """Mix ``blocks`` consecutive activation batches at a time (see the module docstring).

    ``batches`` yields objects with ``acts`` (dict hook → [rows, d]), ``sequences`` (global stream
    position after the batch) and ``nonfinite_rows`` — ``activations.ActivationBatch``. ``blocks=1``
    keeps each LM batch as one training batch but still permutes its rows.

        for b in shuffled(stream_activations(adapter, hooks, token_batches), blocks=4, seed=0): ...
    """
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
        raise ValueError(f"shuffled: blocks={blocks!r}; it must be an int >= 1 (LM batches mixed together).")
    block = start_block
    pending: list = []
    for item in batches:
        pending.append(item)
        if len(pending) == blocks:
            yield from _emit(pending, seed, block)
            pending = []
            block += 1
    if pending:
        yield from _emit(pending, seed, block)


def _emit(items: list, seed: int, block: int) -> Iterator[MixedBatch]:
    hooks = list(items[0].acts)
    rows = {h: torch.cat([it.acts[h] for it in items]) for h in hooks}  # [sum rows, d] per hook
    n = next(iter(rows.values())).shape[0]
    perm = block_permutation(n, seed, block)
    mixed = {h: r[perm] for h, r in rows.items()}
    # As many training batches as LM batches went in, so the step count is known in advance.
    bounds = torch.linspace(0, n, len(items) + 1).round().long().tolist()
    dropped = sum(int(it.nonfinite_rows) for it in items)
    for i in range(len(items)):
        lo, hi = bounds[i], bounds[i + 1]
        last = i == len(items) - 1
        yield MixedBatch({h: m[lo:hi] for h, m in mixed.items()}, block, last, int(items[-1].sequences),
                         dropped if last else 0)
