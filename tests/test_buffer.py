"""The shuffling buffer: a permutation per block, aligned hooks, reproducible from the block index."""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch

from sae_hooks.buffer import block_permutation, shuffled


class _Batch(NamedTuple):
    acts: dict
    sequences: int
    nonfinite_rows: int = 0


def _batches(n=7, rows=10):
    out = []
    for i in range(n):
        ids = torch.arange(i * rows, (i + 1) * rows, dtype=torch.float32)[:, None]
        out.append(_Batch({"a": ids.repeat(1, 3), "b": -ids.repeat(1, 2)}, sequences=(i + 1) * 4))
    return out


def test_rows_kept_aligned_and_mixed_within_blocks():
    out = list(shuffled(_batches(), blocks=3, seed=0))
    assert len(out) == 7  # one training batch per LM batch
    assert [b.block for b in out] == [0, 0, 0, 1, 1, 1, 2]
    assert [b.end_of_block for b in out] == [False, False, True, False, False, True, True]
    a = torch.cat([b.acts["a"][:, 0] for b in out])
    bb = torch.cat([b.acts["b"][:, 0] for b in out])
    assert torch.equal(a, -bb)  # row i of every hook is the same token
    assert torch.equal(a.sort().values, torch.arange(70, dtype=torch.float32))
    first_block = a[:30]
    assert set(first_block.tolist()) == set(range(30))  # a block never leaks into another
    assert not torch.equal(first_block, torch.arange(30, dtype=torch.float32))  # but is mixed
    assert out[2].sequences == 12 and out[-1].sequences == 28


def test_order_depends_only_on_seed_and_block():
    full = list(shuffled(_batches(), blocks=3, seed=5))
    tail = list(shuffled(_batches()[3:], blocks=3, seed=5, start_block=1))
    for x, y in zip(full[3:], tail):
        assert torch.equal(x.acts["a"], y.acts["a"]) and x.block == y.block
    other = list(shuffled(_batches(), blocks=3, seed=6))
    assert not torch.equal(full[0].acts["a"], other[0].acts["a"])
    assert torch.equal(block_permutation(10, 1, 2), block_permutation(10, 1, 2))


def test_nonfinite_count_reported_once_per_block():
    bs = [_Batch(b.acts, b.sequences, nonfinite_rows=i) for i, b in enumerate(_batches(4))]
    out = list(shuffled(bs, blocks=2, seed=0))
    assert [b.nonfinite_rows for b in out] == [0, 1, 0, 5]


def test_bad_blocks():
    with pytest.raises(ValueError, match="blocks"):
        list(shuffled(_batches(), blocks=0))
