"""The matching-pursuit engine: greedy selection and the values' exact gradient (MP-SAE;
Costa et al. 2025, arXiv 2506.03093).

Tied, unit-norm dictionary D [d_sae, d_in] and centred inputs r0 = x − b.
For t = 1..k: j = argmax ReLU(D r); v = ReLU(⟨r, D_j⟩); z_j += v; r ← r − v D_j.
x_hat = z D + b = x − r, and each step lowers ‖r‖² by exactly v² (unit atoms).

The plain loop costs k dense products D r (~0.2 s each at batch 4096, 576→4608 here).
This engine splits the work in two, with the same outputs forward and backward:

1. Selection (no gradient flows through an argmax): correlations are updated with one
   Gram row per step, c ← c − v·G[j] with G = D Dᵀ (one sparse-one-hot `addmm_`), so a
   step costs O(d_sae) per token instead of O(d_sae·d_in). Rows are processed in
   cache-sized chunks, one shard of chunks per thread, and the argmax is taken blockwise
   (a fast `amax` over blocks, then a max inside the winning block). The residual r is
   kept explicitly (O(d_in) per step) so the values ⟨r, D_j⟩ and the stopping tests use
   the reference arithmetic; near-ties in the drifting Gram correlations are re-decided
   from r. Without a Gram matrix (past the SAE's `gram_max_bytes`) D r is recomputed.
   On the CPU the C kernel (`mp_native`) runs the same steps when it can.
2. Values: the selection's values and residual are the outputs. A custom autograd
   Function gives them the plain loop's exact gradient for the fixed selections
   (`_PursuitValues`: Gram entries, a k-step recurrence in coefficient space, and one
   dense d_sae × d_sae by D product instead of autograd over [N, k, d_in] gathers).

    res = matching_pursuit(x - b, D, k=32, gram=padded_gram(D))
    x_hat = x - res.residual
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from .._threads import thread_pool
from .mp_native import native_backward, native_pursue, pursue_kernel
from .sparse import sampled_dots

__all__ = ["MPResult", "matching_pursuit", "padded_gram"]

_BLOCK = 128  # argmax block width; 64–128 measured best on the 2-core CPU
_TIE_TOL = 1e-4  # near-tie band, relative to ‖r0‖, in which Gram selections are re-checked
_BAND_MAX = 64  # past this many near-tied atoms, a row's tie is settled by the full D r
_CHUNK = 512  # rows per chunk: c (512×4608 fp32 = 9.4 MB) stays in the L3 cache across steps


class MPResult(NamedTuple):
    """The pursuit of a batch, step by step."""

    indices: Int[Tensor, "N k"]
    """Atom chosen at each step (meaningless where `values` is 0)."""
    values: Float[Tensor, "N k"]
    """Coefficient added at each step (0 after a token stopped); differentiable."""
    residual: Float[Tensor, "N d_in"]
    """Final residual r = (x − b) − Σ values·atoms; x_hat = x − r."""
    norms: Float[Tensor, "N k+1"]
    """‖r‖ before the first step and after every step (non-increasing); detached."""


def _argmax_rows(
    c: Tensor, block: int, base: Tensor, tol: Tensor | None
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(first index of each row's maximum, rows with a runner-up within `tol`, max − tol).

    A fast `amax` over blocks, then a max inside the winning block only: ~4x faster than
    `argmax` over the full row on this CPU. Near-ties are counted, not ranked (no topk):
    entries ≥ max − tol among the block maxima and inside the winning block.
    `base` is arange(rows) · (blocks per row).
    """
    n_blocks = c.shape[1] // block
    blocks = c.view(-1, block)  # [rows · n_blocks, block]
    block_max = blocks.amax(-1).view(-1, n_blocks)  # [rows, n_blocks]
    best = block_max.argmax(-1)  # first block holding the maximum
    winner = blocks.index_select(0, base + best)  # [rows, block]
    top, inner = winner.max(-1)  # max(dim) is faster than argmax here
    j = inner.add_(best, alpha=block)
    if tol is None:
        return j, None, None
    floor = (top - tol)[:, None]
    # The maximum itself is counted twice (its block and its entry); a third hit is a tie.
    hits = (block_max >= floor).sum(-1).add_((winner >= floor).sum(-1))
    return j, (hits > 2).nonzero().flatten(), floor.squeeze(1)


def _exact_choice(
    c: Tensor, r: Tensor, D: Tensor, rows: Tensor, floor: Tensor, tol: Tensor
) -> Tensor:
    """The argmax of the exact D r for `rows`, among the entries of c that reach `floor`.

    Entries below the band cannot be the exact maximum (the Gram drift is far smaller
    than the band), so only the few in-band atoms are dotted with the residual; the
    first one reaching the best exact value wins, as `max` in the reference loop picks.
    A row with more than `_BAND_MAX` atoms in its band (its residual has become small
    next to the band: everything ties) gets the full exact product instead; its c is
    reset to it, so the drift restarts at the residual's scale and so does its `tol`.
    """
    band = c.index_select(0, rows) >= floor.index_select(0, rows)[:, None]  # [m, width]
    m = rows.shape[0]
    wide = (band.sum(-1) > _BAND_MAX).nonzero().flatten()
    if wide.numel():
        band[wide] = False
    rr, cc = band.nonzero(as_tuple=True)  # sorted by row, then column
    exact = (r.index_select(0, rows.index_select(0, rr)) * D.index_select(0, cc)).sum(-1)
    best = exact.new_full((m,), float("-inf")).scatter_reduce_(0, rr, exact, "amax")
    hit = exact == best.index_select(0, rr)
    choice = cc.new_full((m,), c.shape[1]).scatter_reduce_(0, rr[hit], cc[hit], "amin")
    if wide.numel():
        full_rows = rows.index_select(0, wide)
        full = r.index_select(0, full_rows) @ D.T  # [w, d_sae]
        c[full_rows, : D.shape[0]] = full
        choice[wide] = full.argmax(-1)
        tol[full_rows] = _TIE_TOL * r.index_select(0, full_rows).norm(dim=-1)
    return choice


def _pursue_rows(
    r: Tensor, D: Tensor, gram: Tensor | None, k: int, residual_threshold: float,
    stop_dup: bool, idx: Tensor, vals: Tensor, norms: Tensor, D_corr: Tensor | None = None,
) -> None:
    """Pursue a chunk of rows in place: `r` [c, d_in] ends as the residual; fills the rest.

    ``D_corr`` (bf16 Dᵀ, [d_in, d_sae], with a bf16 ``gram``) gives the starting correlations in
    training under bf16 autocast (see `mp_native.native_pursue`); None means D itself.

    Values are ⟨r, D_j⟩ on the explicit residual, the reference loop's arithmetic; only the
    correlations that choose j come from the Gram update.
    """
    n_rows = r.shape[0]
    d_sae = D.shape[0]
    stopping = residual_threshold > 0 or stop_dup
    if gram is not None and native_pursue(r, D, gram, k, residual_threshold, stop_dup, idx, vals, norms, D_corr,
                                          _TIE_TOL, _BAND_MAX):
        if not stopping:
            _norms_from_values(norms, vals)
        return
    if gram is not None and gram.dtype != D.dtype:
        gram = gram.to(D.dtype)  # a low-precision Gram matrix without the kernel (slow, rare)
    block = min(_BLOCK, d_sae)
    width = -(-d_sae // block) * block
    if width == d_sae:
        c = r @ D.T  # [c, d_sae]
    else:
        c = r.new_full((n_rows, width), float("-inf"))  # pads never win the argmax
        c[:, :d_sae] = r @ D.T
    rows = torch.arange(n_rows, device=r.device)
    base = rows * (width // block)
    # The update c −= v·G[j] as c.addmm_(S, G) with S the one-hot [rows, d_sae] matrix of
    # the steps' (j, v): one pass over c, ~2x faster here than gathering G[j] and then an
    # addcmul. COO with sorted rows, one entry each, is coalesced by construction.
    coords = torch.stack([rows, rows])  # row 1 takes each step's j
    norms[:, 0] = r.norm(dim=-1)
    # Gram updates drift from D r by ~1e-6 of ‖r0‖; where the top two correlations are
    # closer than the band, the choice is redone from the residual so that it is the
    # reference loop's (an order swap would change the values).
    tol = _TIE_TOL * norms[:, 0] if gram is not None else None
    done = torch.zeros(n_rows, dtype=torch.bool, device=r.device)
    for t in range(k):
        j, near, floor = _argmax_rows(c, block, base, tol)
        if near is not None and near.numel():
            j[near] = _exact_choice(c, r, D, near, floor, tol)
        atoms = D.index_select(0, j)  # [c, d_in]
        v = (r * atoms).sum(-1).clamp_min_(0)
        if stopping:
            v.masked_fill_(done, 0.0)
        idx[:, t] = j.masked_fill_(done, 0) if stopping else j  # stopped: as if never run
        vals[:, t] = v
        r.addcmul_(atoms, v[:, None], value=-1.0)  # r − v·a_j, the reference update
        if stopping:
            norms[:, t + 1] = r.norm(dim=-1)
            if stop_dup:
                seen = ((idx[:, :t] == j[:, None]) & (vals[:, :t] > 0)).any(-1)
                done |= (v == 0) | seen
            if residual_threshold > 0:
                done |= norms[:, t + 1] < residual_threshold
            if bool(done.all()):
                norms[:, t + 2:] = norms[:, t + 1:t + 2]  # stopped rows keep their residual
                break
        if t + 1 < k:
            if gram is not None:
                coords[1] = j
                step = torch.sparse_coo_tensor(coords, v, (n_rows, d_sae), is_coalesced=True,
                                               check_invariants=False)
                c.addmm_(step, gram, alpha=-1.0)  # c −= v·G[j]
            else:
                c[:, :d_sae] = r @ D.T
    if not stopping:
        _norms_from_values(norms, vals)


def _norms_from_values(norms: Tensor, vals: Tensor) -> None:
    """Each step lowers ‖r‖² by exactly v² (unit atoms): no per-step norm needed."""
    sq = norms[:, :1].square() - vals.square().cumsum(1)
    norms[:, 1:] = sq.clamp_min_(0).sqrt_()


@torch.no_grad()
def _select(
    sae_in: Tensor, D: Tensor, k: int, residual_threshold: float, stop_dup: bool,
    gram: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Greedy selection. Returns (indices, values, norms, residual), all without grad.

    On CPU the rows are split into one shard per intra-op thread, and each shard runs in
    its own Python thread with single-threaded ops: the per-step ops are small (one chunk
    of c), and letting every one of them fork and join a 2-thread OpenMP team costs more
    than it gains, badly so on a loaded machine (measured: ~25x slower per op under
    contention). Shards share nothing but the read-only D and Gram matrix.
    """
    n_rows, d_in = sae_in.shape
    dev, dt = D.device, D.dtype
    idx = torch.zeros(n_rows, k, dtype=torch.long, device=dev)
    vals = torch.zeros(n_rows, k, dtype=dt, device=dev)
    norms = torch.zeros(n_rows, k + 1, dtype=dt, device=dev)
    resid = sae_in.clone()
    on_cpu = dev.type == "cpu"
    chunk = _CHUNK if on_cpu else n_rows  # a GPU wants the whole batch per op

    D_corr = None
    if gram is not None and gram.dtype != dt:
        if pursue_kernel(D, gram) is None:
            gram = gram.to(dt)  # no kernel for a low-precision Gram matrix here: exact path
        else:
            D_corr = _transposed(D.to(gram.dtype))  # [d_in, d_sae]: ~30 % faster product than D.T

    def run(lo: int, hi: int) -> None:
        for a in range(lo, hi, chunk):
            b = min(a + chunk, hi)
            _pursue_rows(resid[a:b], D, gram, k, residual_threshold, stop_dup,
                         idx[a:b], vals[a:b], norms[a:b], D_corr)

    threads = torch.get_num_threads()
    shards = min(threads, -(-n_rows // chunk)) if on_cpu else 1
    if shards <= 1:
        run(0, n_rows)
        return idx, vals, norms, resid
    bounds = [n_rows * s // shards for s in range(shards + 1)]

    inference = torch.is_inference_mode_enabled()  # thread-local, like grad mode: hand it on

    def worker(s: int) -> None:
        torch.set_num_threads(1)  # this thread's own OpenMP/MKL setting
        with torch.no_grad(), torch.inference_mode(inference):  # grad and inference mode are per thread
            run(bounds[s], bounds[s + 1])

    try:
        for f in [thread_pool("mp_select", shards).submit(worker, s) for s in range(shards)]:
            f.result()
    finally:
        # set_num_threads in a worker also lowered the default that new threads start
        # with; the calling thread's own setting never changed. Put the default back.
        torch.set_num_threads(threads)
    return idx, vals, norms, resid


def _transposed(a: Tensor, block: int = 256) -> Tensor:
    """A contiguous copy of a.T, made in column blocks (each block's reads and writes stay in cache):
    ~1.0 against ~2.1 ms for ``.T.contiguous()`` on a 4608×576 bf16 matrix here."""
    out = a.new_empty(a.shape[1], a.shape[0])
    for i in range(0, a.shape[0], block):
        out[:, i:i + block].copy_(a[i:i + block].T)
    return out


class _PursuitValues(torch.autograd.Function):
    """(values, residual) of a pursuit with fixed selections, with an analytic backward.

    Forward returns what the selection computed. Backward is the exact gradient of the
    plain loop r_t = r_{t-1} − v_t a_t, v_t = m_t·ReLU(⟨r_{t-1}, a_t⟩) (a_t = D[j_t],
    m_t the active mask) with the choices j held fixed, written in coefficient space:
    ρ_t = ∂L/∂r_t = g_r + Σ_{s>t} w_s a_s with w_t = ∂L/∂⟨r_{t-1}, a_t⟩
    = 1[v_t>0]·(g_v,t − ⟨g_r, a_t⟩ − Σ_{s>t} w_s ⟨a_s, a_t⟩), so
    ∂L/∂r_0 = g_r + Σ_t w_t a_t and ∂L/∂a_t = −v_t ρ_t + w_t r_{t−1}
    = −v_t g_r + w_t r_0 + Σ_s M_ts a_s, M_ts = −v_t w_s (s > t), −w_t v_s (s < t).
    With the Gram matrix, ⟨a_s, a_t⟩ are Gram entries and Σ M_ts a_s summed into dD is
    C D for a d_sae × d_sae matrix C: one dense product, and no [N, k, d_in] tensor
    (measured ~3x cheaper than batched products over the gathered atoms).
    """

    @staticmethod
    def forward(ctx, sae_in, D, idx, vals, resid, gram):  # type: ignore[override]
        ctx.save_for_backward(sae_in, D, idx, vals, gram)
        # Returned as they are: autograd hands back views of them with this node as grad_fn (no copies;
        # the [B, d_in] residual's cost ~1.7 ms per step on one thread here). Nothing else writes them.
        return vals, resid

    @staticmethod
    def backward(ctx, g_v, g_r):  # type: ignore[override]
        sae_in, D, idx, v, gram = ctx.saved_tensors
        native = native_backward(sae_in, D, idx, v, g_v, g_r, *ctx.needs_input_grad[:2])
        if native is not None:
            return (*native, None, None, None, None)
        n, k = idx.shape
        d_sae, d_in = D.shape
        if g_r is None:
            g_r = sae_in.new_zeros(n, d_in)
        # Step pairs s < t, grouped by t: pair rows off_t .. off_t + t, off_t = t(t−1)/2.
        pt, ps = torch.tril_indices(k, k, -1, device=D.device)
        idx_k = idx.T.contiguous()  # [k, N]: per-step rows keep the recurrence contiguous
        j_s, j_t = idx_k[ps], idx_k[pt]  # [P, N]
        # gram is None past gram_max_bytes (then C would not fit either).
        dense_c = gram is not None and D.device.type == "cpu"
        if dense_c:
            pairs = (j_s * gram.shape[1] + j_t).reshape(-1)
            gl = gram.reshape(-1).index_select(0, pairs).view(-1, n).to(D.dtype)  # [P, N]: ⟨a_s, a_t⟩
            b = -_pair_dots(g_r, D, idx).T  # [k, N]: −⟨g_r, a_t⟩
        else:
            A = _gather_atoms(D, idx)  # [N, k, d_in]
            gl = torch.bmm(A, A.transpose(1, 2)).permute(1, 2, 0)[ps, pt]
            b = -torch.bmm(A, g_r[:, :, None]).squeeze(-1).T
        b = b.contiguous()
        if g_v is not None:
            b += g_v.T
        v_k = v.T.contiguous()
        live = (v_k > 0).to(v.dtype)  # ReLU'(u) · active mask (v = 0 wherever either is 0)
        w = torch.empty_like(v_k)  # [k, N]
        for t in range(k - 1, -1, -1):
            torch.mul(live[t], b[t], out=w[t])
            if t:
                off = t * (t - 1) // 2
                b[:t].addcmul_(gl[off:off + t], w[t], value=-1.0)
        grad_in = grad_D = None
        if ctx.needs_input_grad[0]:  # g_r + Σ_t w_t a_t
            offsets = torch.arange(0, n * k, k, device=D.device)
            grad_in = g_r + F.embedding_bag(idx.reshape(-1), D, offsets, mode="sum",
                                            per_sample_weights=w.T.reshape(-1))
        if ctx.needs_input_grad[1]:
            m = -(v_k[ps] * w[pt])  # [P, N]: M_st = M_ts for s < t
            if dense_c:
                # Rank-one parts Σ e_j (w r_0 − v g_r)ᵀ as one sparse [d_sae, 2N] product.
                tok = torch.arange(n, device=D.device).repeat(k)
                s = torch.sparse_coo_tensor(
                    torch.stack([idx_k.reshape(-1).repeat(2), torch.cat([tok, tok + n])]),
                    torch.cat([w.reshape(-1), -v_k.reshape(-1)]), (d_sae, 2 * n),
                    check_invariants=False,
                )
                rank_one = torch.sparse.mm(s, torch.cat([sae_in, g_r]))
                C = D.new_zeros(d_sae * d_sae)  # symmetric: M_st at (j_s, j_t) and (j_t, j_s)
                C.index_add_(0, (j_s * d_sae + j_t).reshape(-1), m.reshape(-1))
                C.index_add_(0, (j_t * d_sae + j_s).reshape(-1), m.reshape(-1))
                if gram.dtype == D.dtype:
                    grad_D = torch.addmm(rank_one, C.view(d_sae, d_sae), D)
                else:  # bf16 autocast training: the d_sae x d_sae by D product in bf16 too
                    lp = gram.dtype
                    grad_D = rank_one.add_((C.view(d_sae, d_sae).to(lp) @ D.to(lp)).to(D.dtype))
            else:
                M = v.new_zeros(n, k, k)
                M[:, ps, pt] = m.T
                M[:, pt, ps] = m.T
                dA = torch.bmm(M, A)  # [N, k, d_in]
                dA.baddbmm_(torch.stack([-v, w.T], 2), torch.stack([g_r, sae_in], 1))
                grad_D = torch.zeros_like(D).index_add_(0, idx.reshape(-1), dA.view(-1, d_in))
        return grad_in, grad_D, None, None, None, None


def _pair_dots(y: Tensor, D: Tensor, idx: Tensor) -> Tensor:
    """⟨y_n, D[idx[n, t]]⟩ as [N, k], without gathering [N, k, d_in] atoms (an SDDMM).

    The sampling pattern must be a valid CSR (columns sorted, no repeats), so each
    token's indices are sorted and reselected atoms are dotted once, then mapped back.
    """
    n, k = idx.shape
    cols, order = idx.sort(-1)  # [N, k]
    first = torch.ones_like(cols, dtype=torch.bool)
    first[:, 1:] = cols[:, 1:] != cols[:, :-1]
    crow = torch.zeros(n + 1, dtype=torch.long, device=y.device)
    crow[1:] = first.sum(-1).cumsum(0)
    unique = cols[first]  # row-major, so sorted within each row
    dots = sampled_dots(crow, unique, y, D)
    slot = first.reshape(-1).cumsum(0) - 1  # each sorted entry's unique dot
    return y.new_empty(n, k).scatter_(1, order, dots[slot].view(n, k))


def _gather_atoms(D: Tensor, idx: Tensor) -> Tensor:
    """D[idx] as [N, k, d_in]."""
    return D.index_select(0, idx.reshape(-1)).view(*idx.shape, D.shape[1])


def matching_pursuit(
    sae_in: Float[Tensor, "N d_in"],
    D: Float[Tensor, "d_sae d_in"],
    k: int,
    residual_threshold: float = 0.0,
    stop_on_duplicate_support: bool = False,
    gram: Tensor | None = None,
) -> MPResult:
    """Run k MP steps on centred inputs; values are differentiable w.r.t. D and sae_in.

    `gram` is D Dᵀ padded to a multiple of the argmax block (see `MPSAE.gram`), or None
    to recompute D r every step.

        res = matching_pursuit(x - b, D, k=32, gram=padded_gram(D))
        x_hat = x - res.residual
    """
    # The selection always runs in D's dtype: under autocast, bf16 correlations would
    # swap near-tied choices (and worker threads would not inherit the autocast state).
    with torch.autocast(D.device.type, enabled=False):
        idx, vals, norms, resid = _select(
            sae_in.detach(), D.detach(), k, residual_threshold, stop_on_duplicate_support, gram
        )
    needs_grad = torch.is_grad_enabled() and (sae_in.requires_grad or D.requires_grad)
    if needs_grad:
        vals, resid = _PursuitValues.apply(sae_in, D, idx, vals, resid, gram)
    return MPResult(idx, vals, resid, norms)


def padded_gram(D: Float[Tensor, "d_sae d_in"], dtype: torch.dtype | None = None,
                out: Tensor | None = None) -> Float[Tensor, "d_sae width"]:
    """D Dᵀ with zero columns up to a multiple of the argmax block (pads stay at −inf).

    ``dtype=torch.bfloat16`` builds it from bf16 operands (training under bf16 autocast).
    ``out``: a previous result of the same shape and dtype to write into (see `MPSAE.gram`)."""
    d_sae = D.shape[0]
    block = min(_BLOCK, d_sae)
    width = -(-d_sae // block) * block
    if dtype is not None and dtype != D.dtype:
        D = D.to(dtype)
    if width == d_sae:
        if out is not None and out.shape == (d_sae, d_sae) and out.dtype == D.dtype and out.device == D.device:
            return torch.mm(D, D.T, out=out)
        return D @ D.T
    g = D.new_zeros(d_sae, width)
    g[:, :d_sae] = D @ D.T
    return g
