"""Sparse training kernels for SAEs with k active latents per token.

Measured on the 2-core CPU (batch 4096, 576 -> 4608, k 32): the dense encoder product
takes ~0.2 s; a dense decoder product and each dense backward product cost as much again.
With only B·k active entries, the decoder and both encoder backward products shrink to
O(B·k·d_in) work, so a TopK step pays for one dense product only.

Active entries are given as flat COO triples sorted by token: `rows` (token index),
`cols` (latent index), one value each.

    vals = gather_pre(x, b_dec, W_enc, b_enc, rows, cols, pre.detach()[rows, cols])
    x_hat = sparse_decode(rows, cols, vals.relu(), W_dec, b_dec, n_rows=B)
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from .._threads import thread_pool


def stable_argsort(keys: Int[Tensor, " n"], n_keys: int) -> Int[Tensor, " n"]:
    """Indices that sort integer keys in [0, n_keys) stably (equal keys keep their order).

    On the CPU, torch.sort takes ~150 ms for the 131k int64 keys of one TopK step here (2 cores);
    numpy's stable sort is a radix sort for 16-bit keys and takes ~1 ms. CUDA uses torch.sort.
    """
    if keys.device.type != "cpu":
        return torch.sort(keys, stable=True).indices
    arr = keys.numpy()
    arr = arr.astype(np.uint16) if n_keys <= 1 << 16 else arr.astype(np.int32) if n_keys <= 1 << 31 else arr
    return torch.from_numpy(np.argsort(arr, kind="stable"))


def sorted_ints(values: Int[Tensor, " n"]) -> Int[Tensor, " n"]:
    """``values`` sorted ascending (numpy on the CPU, ~20x faster than torch.sort here)."""
    if values.device.type != "cpu":
        return torch.sort(values).values
    return torch.from_numpy(np.sort(values.numpy()))


# PyTorch warns once per process that CSR tensors are "in beta"; we use only sampled_addmm. Silence exactly that message, where a CSR tensor is built, nothing else.
_CSR_BETA = "Sparse CSR tensor support is in beta state"


def sampled_dots(crow: Int[Tensor, " n_plus_1"], cols: Int[Tensor, " nnz"], y: Float[Tensor, "n d"],
                 W: Float[Tensor, "m d"]) -> Float[Tensor, " nnz"]:
    """⟨y[i], W[cols[e]]⟩ for every entry e of row i of a CSR pattern: one SDDMM, no [nnz, d] gather.

    The pattern must be valid CSR: ``crow`` row pointers, columns sorted and distinct within a row.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_CSR_BETA, category=UserWarning)
        pattern = torch.sparse_csr_tensor(crow, cols, y.new_zeros(cols.shape[0]), (y.shape[0], W.shape[0]),
                                          check_invariants=False)
    return torch.sparse.sampled_addmm(pattern, y, W.T, beta=0.0).values()


def table_dtype(t: Tensor) -> torch.dtype:
    """The dtype the sparse gathers read ``t`` in: bf16 when t is fp32 and bf16 autocast is on for its
    device (a dense product under autocast reads bf16 copies of both operands and writes bf16 too),
    else t's own dtype.

    The gathers (embedding_bag: the decode and the latent sums) read tables of ~10 MB that live in
    the shared cache here; bf16 halves their bytes: 7.0 → 3.4 ms per decode and 8.0 → 4.3 ms per
    latent sum at 4096×32 entries of width 576 (measured). The tables' rows are rounded to bf16 and
    so is each gathered sum (accumulated in fp32), as in an autocast product. fp16 autocast keeps
    fp32 tables: fp16's narrow exponent range can underflow small gradient sums unless the loss is
    scaled, which these functions cannot know.
    """
    if t.dtype == torch.float32 and torch.is_autocast_enabled(t.device.type) \
            and torch.get_autocast_dtype(t.device.type) == torch.bfloat16:
        return torch.bfloat16
    return t.dtype


def _bag_sum(idx: Int[Tensor, " nnz"], table: Tensor, offsets: Int[Tensor, " n"], weights: Tensor) -> Tensor:
    """out[i] = Σ weights[e]·table[idx[e]] over bag i (embedding_bag, mode sum). The table's dtype sets
    the precision of the gather; the result comes back in the weights' dtype."""
    out = F.embedding_bag(idx, table, offsets, mode="sum", per_sample_weights=weights.to(table.dtype))
    return out.to(weights.dtype)


def row_offsets(rows: Int[Tensor, " nnz"], n_rows: int) -> Int[Tensor, " n_rows"]:
    """Start offset of each token's run in `rows` (which must be sorted)."""
    counts = torch.bincount(rows, minlength=n_rows)
    return torch.cumsum(counts, 0) - counts


class _GatherPre(torch.autograd.Function):
    """pre[rows, cols] = (x − b_dec)[rows] · W_enc[:, cols] + b_enc[cols], sparse backward.

    The forward reuses the already computed dense pre-activations; the backward never
    forms a dense [B, d_sae] gradient: dW_enc is a sparse (d_sae×B)·(B×d_in) product (`_latent_sums`),
    db_dec = −W_enc · db_enc (one mat-vec, since b_dec is shared by all tokens), and dx
    (rarely needed) an embedding-bag over the active encoder columns.
    """

    @staticmethod
    def forward(ctx, x, b_dec, W_enc, b_enc, rows, cols, pre_vals, sae_in):  # type: ignore[override]
        ctx.save_for_backward(sae_in, W_enc, rows, cols)
        ctx.has_b_dec = b_dec is not None
        ctx.table = table_dtype(W_enc)
        return pre_vals.clone()

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        sae_in, W_enc, rows, cols = ctx.saved_tensors
        n_rows, d_sae = sae_in.shape[0], W_enc.shape[1]
        g = g.contiguous()
        grad_x = grad_bd = grad_W = grad_b = None
        need_x, need_bd, need_W, need_b = ctx.needs_input_grad[:4]
        if need_b or need_bd:
            grad_b = torch.zeros(d_sae, dtype=g.dtype, device=g.device).index_add_(0, cols, g)
            if need_bd and ctx.has_b_dec:
                grad_bd = -(W_enc.detach() @ grad_b)
        if need_W:
            grad_W = _latent_sums(rows, cols, g, sae_in.to(ctx.table), d_sae).T  # [d_in, d_sae], a view
        if need_x:
            order = stable_argsort(rows, n_rows)  # the entries need not come sorted by row
            grad_x = F.embedding_bag(
                cols[order], W_enc.detach().T.contiguous(), row_offsets(rows[order], n_rows),
                mode="sum", per_sample_weights=g[order],
            )
        return grad_x, grad_bd, grad_W, (grad_b if need_b else None), None, None, None, None


def gather_pre(
    x: Float[Tensor, "B d_in"],
    b_dec: Float[Tensor, " d_in"] | None,
    W_enc: Float[Tensor, "d_in d_sae"],
    b_enc: Float[Tensor, " d_sae"],
    rows: Int[Tensor, " nnz"],
    cols: Int[Tensor, " nnz"],
    pre_vals: Float[Tensor, " nnz"],
    *,
    sae_in: Float[Tensor, "B d_in"] | None = None,
) -> Float[Tensor, " nnz"]:
    """Differentiable pre-activations at the active (row, col) entries (any order, repeats allowed).

    Sparse backward. `b_dec` is subtracted from x (None when the SAE does not apply it to the input);
    `pre_vals` are the forward values, already computed by the dense product; `sae_in`, if
    given, is x − b_dec (x when b_dec is None) as computed for that product (saves a pass); it is
    only read by the backward, which gathers it in `table_dtype` (a copy already in that dtype saves
    a cast).

        vals = gather_pre(x, sae.b_dec, sae.W_enc, sae.b_enc, rows, cols, pre[rows, cols])
    """
    if sae_in is None:
        with torch.no_grad():
            sae_in = x - b_dec if b_dec is not None else x
    # Under autocast the dense product (pre) may be bf16/fp16; the sparse path stays in W_enc's dtype.
    return _GatherPre.apply(x, b_dec, W_enc, b_enc, rows, cols, pre_vals.detach().to(W_enc.dtype), sae_in.detach())


def _latent_sums(rows: Int[Tensor, " nnz"], cols: Int[Tensor, " nnz"], vals: Float[Tensor, " nnz"],
                 dense: Float[Tensor, "n_rows d"], d_sae: int) -> Float[Tensor, "d_sae d"]:
    """out[j] = Σ over the entries e of latent j of vals[e]·dense[rows[e]]: a (d_sae×B)·(B×d) product
    with the sparse side given as COO, computed as an embedding_bag over the entries sorted by
    latent (radix sort). Bit-identical to the CSR product it replaced and ~2.5 ms faster per call
    here (MKL's CSR product zero-fills and copies its [d_sae, d] output). ``dense`` may be a
    lower-precision copy (`table_dtype`); the result is in vals' dtype.
    """
    order = stable_argsort(cols, d_sae)
    counts = torch.bincount(cols, minlength=d_sae)
    return _bag_sum(rows[order], dense, torch.cumsum(counts, 0) - counts, vals[order])


def decode_rows(rows: Int[Tensor, " nnz"], cols: Int[Tensor, " nnz"], vals: Float[Tensor, " nnz"],
                W_dec: Float[Tensor, "d_sae d_in"], n_rows: int) -> Float[Tensor, "n_rows d_in"]:
    """Σ vals·W_dec[cols] per row (rows sorted), as embedding_bag; no autograd of its own. W_dec may
    be a lower-precision copy (`table_dtype`); the result is in vals' dtype."""
    return _bag_sum(cols, W_dec, row_offsets(rows, n_rows), vals)


def decode_grads(
    rows: Int[Tensor, " nnz"], cols: Int[Tensor, " nnz"], vals: Float[Tensor, " nnz"],
    W_dec: Float[Tensor, "d_sae d_in"], g: Float[Tensor, "n_rows d_in"], n_rows: int,
    need_vals: bool = True, need_W: bool = True, table: torch.dtype | None = None,
) -> tuple[Tensor | None, Tensor | None]:
    """(∂/∂vals, ∂/∂W_dec) of `decode_rows` for the output gradient g, without torch.sort.

    embedding_bag's own backward sorts the indices with torch.sort (~110 ms per TopK step on this
    CPU); here dW_dec is a sparse (d_sae×B)·(B×d_in) product (`_latent_sums`, radix sort), and dvals the
    sampled product ⟨g[row], W_dec[col]⟩ (SDDMM). ``table`` (`table_dtype` at the forward) is the
    dtype g is gathered in for dW_dec; the SDDMM reads W_dec and g as they are (no bf16 kernel here).
    """
    g = g.contiguous()
    grad_vals = grad_W = None
    if need_vals:
        # CSR wants each row's columns sorted and distinct: entries already in strictly increasing
        # (row, col) order (BatchTopK's selections) go as they are (a 0.1 ms check); others are
        # sorted by (row, col) (rows are sorted already) and the dots put back in entry order.
        d_sae = W_dec.shape[0]
        keys = rows * d_sae + cols
        crow = torch.cat([row_offsets(rows, n_rows), rows.new_tensor([rows.numel()])])
        if bool((keys[1:] > keys[:-1]).all()):
            grad_vals = sampled_dots(crow, cols, g, W_dec.detach())
        else:
            order = stable_argsort(keys, n_rows * d_sae)
            dots = sampled_dots(crow, cols[order], g, W_dec.detach())
            grad_vals = torch.empty_like(dots).scatter_(0, order, dots)
    if need_W:
        grad_W = _latent_sums(rows, cols, vals.detach(), g.to(table or g.dtype), W_dec.shape[0])
    return grad_vals, grad_W


class _SparseDecode(torch.autograd.Function):
    """Σ vals·W_dec[cols] per row: `decode_rows` forward, `decode_grads` backward."""

    @staticmethod
    def forward(ctx, rows, cols, vals, W_dec, n_rows):  # type: ignore[override]
        ctx.save_for_backward(rows, cols, vals, W_dec)
        ctx.n_rows, ctx.table = n_rows, table_dtype(W_dec)
        return decode_rows(rows, cols, vals, W_dec.to(ctx.table), n_rows)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        rows, cols, vals, W_dec = ctx.saved_tensors
        grad_vals, grad_W = decode_grads(rows, cols, vals, W_dec, g, ctx.n_rows,
                                         ctx.needs_input_grad[2], ctx.needs_input_grad[3], ctx.table)
        return None, None, grad_vals, grad_W, None


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
    out = _SparseDecode.apply(rows, cols, vals, W_dec, n_rows)
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
    """(rows, cols, min selected value) of the B·k largest positive pre-activations in the batch.

    Entries come sorted by (row, col). Fewer than B·k entries are returned only when fewer values
    are positive (the threshold is then 0). Ties at the threshold are broken arbitrarily.

    A flat top-(B·k) over all B·d_sae values costs ~0.5 s here, and taking each row's top-2k as
    candidates is exact only while no row needs more: BatchTopK concentrates activity on some
    tokens, and the candidate width had to double ~6 times per step (~0.5 s as well). Instead a
    strided sample (~1/64 of the values) gives a lower bound L on the threshold; one pass keeps
    the values >= L (~1.2·B·k candidates); an exact top-(B·k) among them finishes. If fewer than
    B·k values reach L (an unlucky sample), L is lowered and the pass repeated. ~20 ms at our
    bench size (batch 4096, d_sae 4608, k 32).
    """
    n_rows, d_sae = pre.shape
    flat = pre.reshape(-1)  # [B·d_sae], row-major: index = row·d_sae + col
    total = min(k * n_rows, flat.numel())
    # Stride coprime to d_sae, so that the sample visits every column, not the same few.
    stride = max(1, total // 2048)
    while math.gcd(stride, d_sae) != 1:
        stride += 1
    sample = flat[::stride]
    expected = total / stride  # the threshold's expected rank within the sample
    rank = math.ceil(1.1 * expected + 4 * math.sqrt(expected) + 8)
    while True:
        bound = _kth_largest_if_positive(sample, rank) if rank < sample.numel() else None
        exhaustive = bound is None
        cand = _flat_at_least(flat, bound)  # sorted flat indices
        if exhaustive or cand.numel() >= total:
            break
        rank *= 4
    vals = flat[cand]
    if cand.numel() > total:
        vals, pick = vals.topk(total, sorted=False)
        cand = cand[sorted_ints(pick)]  # keeps the (row, col) order
    threshold = vals.min() if cand.numel() == total else flat.new_zeros(())
    rows = cand // d_sae
    return rows, cand - rows * d_sae, threshold


def _kth_largest_if_positive(values: Float[Tensor, " n"], rank: int) -> Tensor | None:
    """The rank-th largest value if it is > 0, else None (fewer than rank values are positive).

    On the CPU a numpy partition of the bit patterns (see `_flat_at_least`): 0.7 ms against
    3.3 ms for torch.topk on the ~280k sampled values of one step here.
    """
    if values.device.type != "cpu" or values.dtype not in _SAME_WIDTH_INT:
        v = values.topk(rank, sorted=False).values.min()
        return v if bool(v > 0) else None
    int_dtype = _SAME_WIDTH_INT[values.dtype]
    bits = values.contiguous().view(int_dtype).numpy()
    b = np.partition(bits, bits.size - rank)[bits.size - rank]
    # Positive floats read as positive ints in the same order, the rest as <= 0: a positive result
    # is the rank-th largest float; otherwise fewer than rank values are positive.
    return torch.tensor([int(b)], dtype=int_dtype).view(values.dtype)[0] if b > 0 else None


def _flat_at_least(flat: Float[Tensor, " n"], bound: Tensor | None) -> Int[Tensor, " m"]:
    """Ascending indices of the values >= bound (> 0 when bound is None); bound must be > 0.

    On the CPU the comparison runs on the float's bit pattern read as a signed integer (for
    values > 0 the order is the same, and every value <= 0 reads as <= 0), with numpy:
    ~7 ms for the 19M bf16 values of one step here, against ~20 ms for torch's float compare
    plus nonzero.
    """
    if flat.device.type != "cpu" or flat.dtype not in _SAME_WIDTH_INT:
        keep = flat > 0 if bound is None else flat >= bound
        return keep.nonzero().squeeze(1)
    int_dtype = _SAME_WIDTH_INT[flat.dtype]
    bits = flat.view(int_dtype).numpy()
    b = 1 if bound is None else int(bound.to(flat.dtype).reshape(1).view(int_dtype))

    def part(lo: int, hi: int) -> np.ndarray:
        found = np.flatnonzero(bits[lo:hi] >= b)
        return found + lo if lo else found

    # numpy releases the GIL here, so large inputs are split over the intra-op threads: one step's
    # 19M values took ~7.5 ms on one thread and ~3.9 ms on two here.
    parts = min(torch.get_num_threads(), bits.size // _PARALLEL_MIN)
    if parts <= 1:
        return torch.from_numpy(part(0, bits.size))
    bounds = [bits.size * i // parts for i in range(parts + 1)]
    futures = [thread_pool("scan", parts).submit(part, lo, hi) for lo, hi in zip(bounds, bounds[1:])]
    return torch.from_numpy(np.concatenate([f.result() for f in futures]))


_PARALLEL_MIN = 1 << 20  # values per thread below which one thread scans alone
_SAME_WIDTH_INT = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32,
                   torch.float64: torch.int64}
