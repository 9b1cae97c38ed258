"""Representational similarity analysis (RSA) between two representations of the same tokens.

RSA = Pearson correlation between the upper triangles (i < j) of the two token × token Euclidean
distance matrices (Kriegeskorte et al. 2008; the comparison Peter & Søgaard 2025 make between a
reduced SAE's reconstruction and the full one). Distances only: RSA is unchanged by a rotation,
shift or scale of either representation, and does not need the two to have the same width.

The distance matrices are never built whole: rows come ``block`` tokens at a time and only running
float64 sums are kept, so memory is O(block · N) for N tokens (N = 4,096 and block = 256: 8 MB per
block instead of two 134 MB matrices).

    >>> rsa(pruned.decode(pruned.encode(x)), sae.decode(sae.encode(x)))
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor


def _blocks(a: Tensor, b: Tensor, block: int):
    """(d_a, d_b) for the pairs i < j, ``block`` rows i at a time, as flat float64 vectors."""
    n = a.shape[0]
    cols = torch.arange(n, device=a.device)
    for lo in range(0, n - 1, block):
        hi = min(n, lo + block)
        upper = cols[None, :] > torch.arange(lo, hi, device=a.device)[:, None]  # [rows, N]: j > i
        yield torch.cdist(a[lo:hi], a)[upper], torch.cdist(b[lo:hi], b)[upper]


@torch.no_grad()
def rsa(a: Float[Tensor, "N d_a"], b: Float[Tensor, "N d_b"], *, block: int = 256) -> float:
    """Pearson correlation of the pairwise Euclidean distances of two representations of the same N
    tokens (N >= 3); NaN where either has no spread (all its tokens equidistant).

        >>> rsa(x_hat_small, x_hat_full)      # 1.0 when one is a rotation / shift / scale of the other
    """
    if not isinstance(a, Tensor) or not isinstance(b, Tensor) or a.dim() != 2 or b.dim() != 2 \
            or a.shape[0] != b.shape[0] or a.shape[0] < 3:
        shapes = [tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__ for t in (a, b)]
        raise ValueError(f"rsa needs two [N, d] tensors over the same N >= 3 tokens; got {shapes[0]} and {shapes[1]}.")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"rsa: block={block!r}; it must be an int >= 1 (rows of the distance matrix at a time).")
    a, b = a.detach().double(), b.detach().to(a.device).double()
    n_pairs = a.shape[0] * (a.shape[0] - 1) // 2
    # Two passes (means, then centred sums) rather than raw power sums, which cancel badly when the
    # distances are large and their spread small.
    sum_a = sum_b = 0.0
    for da, db in _blocks(a, b, block):
        sum_a += float(da.sum())
        sum_b += float(db.sum())
    mean_a, mean_b = sum_a / n_pairs, sum_b / n_pairs
    saa = sbb = sab = 0.0
    for da, db in _blocks(a, b, block):
        da, db = da - mean_a, db - mean_b
        saa += float(da.dot(da))
        sbb += float(db.dot(db))
        sab += float(da.dot(db))
    den = math.sqrt(saa * sbb)
    return sab / den if den > 0 else float("nan")


__all__ = ["rsa"]
