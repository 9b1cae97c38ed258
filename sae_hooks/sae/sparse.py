"""Sparse training kernels for SAEs with k active latents per token.

Measured on the 2-core CPU (batch 4096, 576 -> 4608, k 32): the dense encoder product
takes ~0.2 s; a dense decoder product and each dense backward product cost as much again.
With only B·k active entries, the decoder and both encoder backward products shrink to
O(B·k·d_in) work, so a TopK step pays for one dense product only (DESIGN.md, "the limit").

Active entries are given as flat COO triples sorted by token: `rows` (token index),
`cols` (latent index), one value each.

    vals = gather_pre(sae_in, W_enc, b_enc, rows, cols, pre.detach()[rows, cols])
    x_hat = sparse_decode(rows, cols, vals.relu(), W_dec, b_dec, n_rows=B)
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor


def row_offsets(rows: Int[Tensor, " nnz"], n_rows: int) -> Int[Tensor, " n_rows"]:
    """Start offset of each token's run in `rows` (which must be sorted)."""
    counts = torch.bincount(rows, minlength=n_rows)
    return torch.cumsum(counts, 0) - counts


class _GatherPre(torch.autograd.Function):
    """pre[rows, cols] = sae_in[rows] · W_enc[:, cols] + b_enc[cols], with sparse backward.

    The forward reuses the already computed dense pre-activations; the backward never
    forms a dense [B, d_sae] gradient: dW_enc is a sparse (d_sae×B)·(B×d_in) product and
    d sae_in an embedding-bag over the active encoder columns.
    """

    @staticmethod
    def forward(ctx, sae_in, W_enc, b_enc, rows, cols, pre_vals):  # type: ignore[override]
        ctx.save_for_backward(sae_in, W_enc, rows, cols)
        ctx.d_sae = W_enc.shape[1]
        return pre_vals.clone()

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        sae_in, W_enc, rows, cols = ctx.saved_tensors
        n_rows, d_sae = sae_in.shape[0], ctx.d_sae
        g = g.contiguous()
        grad_in = grad_W = grad_b = None
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(d_sae, dtype=g.dtype, device=g.device).index_add_(0, cols, g)
        if ctx.needs_input_grad[1]:
            s = torch.sparse_coo_tensor(
                torch.stack([cols, rows]), g, (d_sae, n_rows), check_invariants=False
            )
            with warnings.catch_warnings():  # "CSR support is in beta": we rely on mm only
                warnings.simplefilter("ignore", UserWarning)
                s = s.coalesce().to_sparse_csr()
            grad_W = (s @ sae_in.detach()).T  # [d_in, d_sae], a transposed view
        if ctx.needs_input_grad[0]:
            grad_in = F.embedding_bag(
                cols,
                W_enc.detach().T.contiguous(),
                row_offsets(rows, n_rows),
                mode="sum",
                per_sample_weights=g,
            )
        return grad_in, grad_W, grad_b, None, None, None


def gather_pre(
    sae_in: Float[Tensor, "B d_in"],
    W_enc: Float[Tensor, "d_in d_sae"],
    b_enc: Float[Tensor, " d_sae"],
    rows: Int[Tensor, " nnz"],
    cols: Int[Tensor, " nnz"],
    pre_vals: Float[Tensor, " nnz"],
) -> Float[Tensor, " nnz"]:
    """Differentiable pre-activations at the active (row, col) entries; sparse backward.

        vals = gather_pre(sae_in, sae.W_enc, sae.b_enc, rows, cols, pre[rows, cols])
    """
    return _GatherPre.apply(sae_in, W_enc, b_enc, rows, cols, pre_vals.detach())


def sparse_decode(
    rows: Int[Tensor, " nnz"],
    cols: Int[Tensor, " nnz"],
    vals: Float[Tensor, " nnz"],
    W_dec: Float[Tensor, "d_sae d_in"],
    b_dec: Float[Tensor, " d_in"] | None,
    n_rows: int,
) -> Float[Tensor, "B d_in"]:
    """x_hat[b] = Σ_{(b, j)} vals · W_dec[j] (+ b_dec); O(nnz · d_in) forward and backward.

        x_hat = sparse_decode(rows, cols, vals, sae.W_dec, sae.b_dec, n_rows=B)
    """
    out = F.embedding_bag(
        cols, W_dec, row_offsets(rows, n_rows), mode="sum", per_sample_weights=vals
    )
    return out if b_dec is None else out + b_dec


def dense_codes(
    rows: Int[Tensor, " nnz"], cols: Int[Tensor, " nnz"], vals: Tensor, n_rows: int, d_sae: int
) -> Float[Tensor, "B d_sae"]:
    """Scatter COO triples into a dense [B, d_sae] code matrix (duplicates add up)."""
    z = vals.new_zeros(n_rows * d_sae)
    return z.index_add(0, rows * d_sae + cols, vals).view(n_rows, d_sae)


@torch.no_grad()
def topk_per_row(pre: Float[Tensor, "B d_sae"], k: int) -> tuple[Tensor, Tensor]:
    """(rows, cols) of each token's k largest pre-activations, sorted by row."""
    n_rows = pre.shape[0]
    cols = pre.topk(k, dim=-1, sorted=False).indices.reshape(-1)
    rows = torch.arange(n_rows, device=pre.device).repeat_interleave(k)
    return rows, cols


@torch.no_grad()
def topk_batch(pre: Float[Tensor, "B d_sae"], k: int) -> tuple[Tensor, Tensor, Tensor]:
    """(rows, cols, min selected value) of the B·k largest ReLU'd pre-activations in the batch.

    A flat top-(B·k) over B·d_sae values costs ~0.3 s at our bench size; instead take each
    row's top-2k as candidates and select among them. That is exact unless some row had
    all its candidates selected (it might have had more); then double and retry.
    """
    n_rows, d_sae = pre.shape
    total = min(k * n_rows, n_rows * d_sae)
    width = min(d_sae, 2 * k)
    acts = pre.relu()
    while True:
        cand_v, cand_c = acts.topk(width, dim=-1, sorted=False)
        sel_v, sel_flat = cand_v.reshape(-1).topk(total, sorted=False)
        threshold = sel_v.min()
        if width == d_sae or not bool((cand_v.amin(-1) > threshold).any()):
            break
        width = min(d_sae, 2 * width)
    sel_flat, _ = sel_flat.sort()
    rows = sel_flat // width
    cols = cand_c.reshape(-1)[sel_flat]
    # Zero activations can be "selected" when fewer than B·k are positive; drop them.
    keep = acts[rows, cols] > 0
    return rows[keep], cols[keep], threshold
