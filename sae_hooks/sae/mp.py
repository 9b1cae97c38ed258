"""Matching-pursuit SAE (MP-SAE; Costa et al. 2025, arXiv 2506.03093) with a fast encoder.

Tied, unit-norm dictionary D [d_sae, d_in] (stored as W_dec) and a pre-bias b (b_dec).
r ← x − b; for t = 1..k: j = argmax ReLU(D r); v = ReLU(⟨r, D_j⟩); z_j += v; r ← r − v D_j.
x_hat = z D + b = x − r, and each step lowers ‖r‖² by exactly v² (unit atoms).

The plain loop costs k dense products D r (~0.2 s each at batch 4096, 576→4608 here).
This encoder splits the work in two, with the same outputs forward and backward:

1. Selection (no gradient flows through an argmax): correlations are updated with one
   Gram row per step, c ← c − v·G[j] with G = D Dᵀ (one sparse-one-hot `addmm_`), so a
   step costs O(d_sae) per token instead of O(d_sae·d_in). Rows are processed in
   cache-sized chunks, one shard of chunks per thread, and the argmax is taken blockwise
   (a fast `amax` over blocks, then a max inside the winning block). The residual r is
   kept explicitly (O(d_in) per step) so the values ⟨r, D_j⟩ and the stopping tests use
   the reference arithmetic; near-ties in the drifting Gram correlations are re-decided
   from r. Above `gram_max_bytes` the Gram matrix is skipped and D r is recomputed.
2. Values: the selection's values and residual are the outputs. A custom autograd
   Function gives them the plain loop's exact gradient for the fixed selections
   (`_PursuitValues`: Gram entries, a k-step recurrence in coefficient space, and one
   dense d_sae × d_sae by D product instead of autograd over [N, k, d_in] gathers).

    sae = make_sae("matching_pursuit", d_in=576, d_sae=4608, k=32)
    z = sae.encode(x)                                   # fixed k steps
    z = sae.encode(x, k=64, residual_threshold=0.5)     # adaptive at inference
"""

from __future__ import annotations

import ctypes
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .._native import load_kernel
from .._threads import thread_pool
from .base import SAE, SAEConfig, TrainLoss, check_input, squared_norm_per_token
from .sparse import sampled_dots

_BLOCK = 128  # argmax block width; 64–128 measured best on the 2-core CPU
_TIE_TOL = 1e-4  # near-tie band, relative to ‖r0‖, in which Gram selections are re-checked
_BAND_MAX = 64  # past this many near-tied atoms, a row's tie is settled by the full D r
_CHUNK = 512  # rows per chunk: c (512×4608 fp32 = 9.4 MB) stays in the L3 cache across steps


@dataclass(frozen=True)
class MPConfig(SAEConfig):
    """Matching-pursuit SAE: k greedy steps in training; k or a residual threshold at inference."""

    architecture: ClassVar[str] = "matching_pursuit"

    k: int = 32
    """Pursuit steps in training and the default (maximum) steps at inference
    (SAELens's `max_iterations`)."""

    residual_threshold: float = 0.0
    """Inference: a token stops once ‖r‖ < this (input units). 0 disables it. Training
    always runs k steps."""

    stop_on_duplicate_support: bool = False
    """Inference: a token stops once a step leaves its support unchanged (SAELens option)."""

    gram_max_bytes: int = 2**30
    """Use the Gram update when d_sae² elements fit in this many bytes; else recompute D r."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k:
            raise ValueError(f"k must be a positive int; got {self.k!r}.")
        if self.k > self.d_sae:
            # MP may reselect atoms, but more steps than atoms is almost surely a typo.
            raise ValueError(
                f"k must be an int in [1, d_sae={self.d_sae}]; got {self.k!r}. "
                "Lower k or raise d_sae (inference may still run more steps via encode(k=...))."
            )
        if not (isinstance(self.residual_threshold, (int, float)) and self.residual_threshold >= 0):
            raise ValueError(
                f"residual_threshold must be a number >= 0; got {self.residual_threshold!r}."
            )
        if not isinstance(self.gram_max_bytes, int) or self.gram_max_bytes < 0:
            raise ValueError(f"gram_max_bytes must be an int >= 0; got {self.gram_max_bytes!r}.")


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
    training under bf16 autocast (see `_native_pursue`); None means D itself.

    Values are ⟨r, D_j⟩ on the explicit residual, the reference loop's arithmetic; only the
    correlations that choose j come from the Gram update.
    """
    n_rows = r.shape[0]
    d_sae = D.shape[0]
    if gram is not None and _native_pursue(r, D, gram, k, residual_threshold, stop_dup, idx, vals, norms, D_corr):
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
    stopping = residual_threshold > 0 or stop_dup
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


# (D dtype, Gram dtype) -> kernel entry point in mp_kernel.c
_KERNELS = {(torch.float32, torch.float32): "mp_pursue_f32", (torch.float64, torch.float64): "mp_pursue_f64",
            (torch.float32, torch.bfloat16): "mp_pursue_f32_bf16gram"}


def _kernel_fn(name: str | None, device: torch.device) -> Any:
    """The C function ``name`` of mp_kernel.c with its return type set, or None (no kernel for
    this case, a GPU, or no compiler: then PyTorch ops run)."""
    if name is None or device.type != "cpu":
        return None
    lib = load_kernel("mp_kernel")
    if lib is None:
        return None
    fn = getattr(lib, name)
    fn.restype = ctypes.c_int64 if name.startswith("mp_pursue") else None
    return fn


def _kernel(D: Tensor, gram: Tensor | None) -> Any:
    """The C pursuit for this dictionary and Gram matrix, or None."""
    return _kernel_fn(_KERNELS.get((D.dtype, gram.dtype)) if gram is not None else None, D.device)


def _native_pursue(
    r: Tensor, D: Tensor, gram: Tensor, k: int, residual_threshold: float, stop_dup: bool,
    idx: Tensor, vals: Tensor, norms: Tensor, D_corr: Tensor | None = None,
) -> bool:
    """`_pursue_rows` in C (sae_hooks/sae/mp_kernel.c): a few tokens at a time run all their
    steps with their correlations in cache. Same choices and stopping rules; values differ from
    the PyTorch path only by summation order (~1e-7 relative in fp32). False if the kernel
    cannot run here (GPU, other dtypes, no C compiler): the caller then takes the PyTorch path.

    With a bf16 Gram matrix (training under bf16 autocast) the starting correlations come from
    bf16 operands too, and the near-tie re-check is off: the choices are those of bf16
    correlations (as TopK's are under autocast), while the values, the residual and the
    gradient still use the fp32 dictionary, so x_hat = x − r and the monotone residual hold.
    """
    fn = _kernel(D, gram)
    if fn is None or r.dtype != D.dtype or idx.dtype != torch.long:
        return False
    if not all(t.is_contiguous() for t in (r, D, gram, idx, vals, norms)):
        return False
    exact = gram.dtype == D.dtype
    if exact:
        c = r @ D.T  # [rows, d_sae]: the one dense product, batched
    else:
        # bf16 correlations stay bf16: the kernel widens a group of rows at a time (an fp32 copy
        # of the whole block cost more than the product here: ~22 vs ~12 ms per 2,048 rows).
        c = r.to(gram.dtype) @ (D_corr if D_corr is not None else D.to(gram.dtype).T.contiguous())
    norms[:, 0] = r.norm(dim=-1)
    tol = _TIE_TOL * norms[:, 0] if exact else torch.zeros_like(norms[:, 0])
    ptr = ctypes.c_void_p
    i64 = ctypes.c_int64
    status = fn(i64(r.shape[0]), i64(r.shape[1]), i64(D.shape[0]), ptr(c.data_ptr()), i64(c.stride(0)),
       ptr(r.data_ptr()), ptr(D.data_ptr()), ptr(gram.data_ptr()), i64(gram.stride(0)), i64(k),
       ctypes.c_double(residual_threshold), ctypes.c_int32(int(stop_dup)), ctypes.c_double(_TIE_TOL),
       i64(_BAND_MAX), ptr(tol.data_ptr()), ptr(idx.data_ptr()), ptr(vals.data_ptr()), ptr(norms.data_ptr()))
    if status < 0:
        raise MemoryError(f"MP kernel: could not allocate {D.shape[0]} scratch correlations.")
    if not (residual_threshold > 0 or stop_dup):
        _norms_from_values(norms, vals)
    return True


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
        if _kernel(D, gram) is None:
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
        native = _native_backward(sae_in, D, idx, v, g_v, g_r, *ctx.needs_input_grad[:2])
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


def _native_backward(
    sae_in: Tensor, D: Tensor, idx: Tensor, v: Tensor, g_v: Tensor | None, g_r: Tensor | None,
    need_in: bool, need_D: bool,
) -> tuple[Tensor | None, Tensor | None] | None:
    """`_PursuitValues.backward` in C: per token, the residuals before each step forward, then
    ρ and w backwards (∂L/∂a_t = −v_t ρ_t + w_t r_{t−1}): O(k·d_in) per token in cache, where
    the PyTorch form needs Gram entries, a d_sae × d_sae coefficient matrix and its product
    with D. None if the kernel cannot run here (the caller then takes the PyTorch form)."""
    fn = _kernel_fn({torch.float32: "mp_backward_f32", torch.float64: "mp_backward_f64"}.get(D.dtype), D.device)
    if fn is None:
        return None
    n, k = idx.shape
    d_sae, d_in = D.shape
    sae_in, D, idx, v = (t.contiguous() for t in (sae_in, D, idx, v))
    g_v = None if g_v is None else g_v.to(D.dtype).contiguous()
    g_r = None if g_r is None else g_r.to(D.dtype).contiguous()
    grad_in = torch.empty_like(sae_in) if need_in else None
    shards = max(1, min(torch.get_num_threads(), n // 256))
    bounds = [n * s // shards for s in range(shards + 1)]
    # Rows of parts are written first (then added to) by the kernel; those never written are zeroed below.
    parts = torch.empty(shards, d_sae, d_in, dtype=D.dtype) if need_D else None
    touched = torch.zeros(shards, d_sae, dtype=torch.uint8) if need_D else None
    scratch = torch.empty(shards, (k + 1) * d_in, dtype=D.dtype)
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64

    def at(t: Tensor | None, row: int = 0) -> ctypes.c_void_p:
        return ptr(None) if t is None else ptr(t.data_ptr() + row * t.stride(0) * t.element_size())

    def run(sh: int) -> None:
        a, b = bounds[sh], bounds[sh + 1]
        fn(i64(b - a), i64(d_in), i64(k), at(sae_in, a), at(D), at(idx, a), at(v, a), at(g_v, a), at(g_r, a),
           at(grad_in, a), at(parts[sh] if parts is not None else None),
           at(touched[sh] if touched is not None else None), at(scratch[sh]))

    if shards == 1:
        run(0)
    else:
        for f in [thread_pool("mp_backward", shards).submit(run, sh) for sh in range(shards)]:
            f.result()
    if parts is None:
        return grad_in, None
    for sh in range(shards):
        untouched = (touched[sh] == 0).nonzero().squeeze(1)
        if untouched.numel():
            parts[sh].index_fill_(0, untouched, 0.0)
    return grad_in, (parts[0] if shards == 1 else parts.sum(0))


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

    `gram` is D Dᵀ padded to a multiple of the argmax block (see `MPSAE.gram()`), or None
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


class MPSAE(SAE):
    """Matching-pursuit SAE (SAELens `matching_pursuit` semantics; stores W_dec and b_dec).

        sae = make_sae("matching_pursuit", d_in=64, d_sae=256, k=8)
        res = sae.pursue(x, k=16, residual_threshold=0.1)   # res.norms: per-step ‖r‖
    """

    architecture: ClassVar[str] = "matching_pursuit"
    config_class: ClassVar[type[SAEConfig]] = MPConfig
    tied: ClassVar[bool] = True
    cfg: MPConfig

    def __init__(self, cfg: SAEConfig, metadata: dict[str, Any] | None = None):
        super().__init__(cfg, metadata)
        self._gram_key: tuple | None = None
        self._gram: Tensor | None = None

    @classmethod
    def train_options(cls, d_sae: int, *, k: int, l1_coef: float) -> dict[str, Any]:
        """The run's k as the number of pursuit steps (``l1_coef`` does not apply)."""
        return {"k": k}

    @property
    def W_enc(self) -> Tensor:
        """Tied encoder: W_dec transposed (SAELens exposes the same)."""
        return self.W_dec.T

    def gram(self, dtype: torch.dtype | None = None) -> Tensor | None:
        """Cached padded D Dᵀ, rebuilt whenever W_dec changes; None above gram_max_bytes.

        Built in W_dec's dtype even under autocast (exact selections need fp32 correlations);
        ``dtype=torch.bfloat16`` asks for the bf16 one that training under bf16 autocast uses.
        The matrix is rewritten in place at the next rebuild: ``.clone()`` it to keep it."""
        d_sae = self.cfg.d_sae
        if d_sae * d_sae * self.W_dec.element_size() > self.cfg.gram_max_bytes:
            return None
        w = self.W_dec
        dtype = dtype or w.dtype
        key = (w.data_ptr(), w._version, tuple(w.shape), w.dtype, w.device, dtype)
        if self._gram is None or self._gram_key != key:
            # The rebuild writes into the previous matrix when it fits: a fresh 42 MB result is
            # mapped anew by glibc, whose page faults cost more than the bf16 product itself
            # (measured ~36 vs ~14 ms per rebuild at 4,608 latents). A graph that saved the old
            # matrix then fails its version check instead of reading the new one.
            old = self._gram
            if old is not None and old.is_inference() != torch.is_inference_mode_enabled():
                old = None
            self._gram = None  # free an unusable old one before building the next
            with torch.no_grad(), torch.autocast(w.device.type, enabled=False):
                self._gram = padded_gram(w.detach(), dtype, out=old)
            self._gram_key = key
        return self._gram

    def pursue(
        self,
        x: Float[Tensor, "... d_in"],
        k: int | None = None,
        residual_threshold: float | None = None,
        stop_on_duplicate_support: bool | None = None,
    ) -> MPResult:
        """The full pursuit on a flattened batch [N, d_in]; overrides apply to this call only.

            res = sae.pursue(x, k=64, residual_threshold=0.5)
            l0 = (res.values > 0).sum(-1).float().mean()
        """
        k = self.cfg.k if k is None else k
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int; got {k!r}.")
        thr = self.cfg.residual_threshold if residual_threshold is None else residual_threshold
        if not (isinstance(thr, (int, float)) and thr >= 0):
            raise ValueError(f"residual_threshold must be a number >= 0; got {thr!r}.")
        dup = self.cfg.stop_on_duplicate_support if stop_on_duplicate_support is None \
            else stop_on_duplicate_support
        sae_in = self._sae_in(x).reshape(-1, self.cfg.d_in)
        return matching_pursuit(sae_in, self.W_dec, k, float(thr), bool(dup), self.gram())

    def encode(
        self,
        x: Float[Tensor, "... d_in"],
        k: int | None = None,
        residual_threshold: float | None = None,
        stop_on_duplicate_support: bool | None = None,
    ) -> Float[Tensor, "... d_sae"]:
        """Dense codes; a reselected atom accumulates its values (z_j += v).

            z = sae.encode(x)                     # cfg.k steps (+ cfg stopping rules)
            z = sae.encode(x, k=8)                # evaluate at another inference k
        """
        res = self.pursue(x, k, residual_threshold, stop_on_duplicate_support)
        z = res.values.new_zeros(res.values.shape[0], self.cfg.d_sae)
        z = z.scatter_add(1, res.indices, res.values)
        return z.reshape(*x.shape[:-1], self.cfg.d_sae)

    def decode(self, z: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_in"]:
        """z D (+ b_dec when apply_b_dec_to_input, as SAELens's tied decode does)."""
        if z.shape[-1] != self.cfg.d_sae:
            raise ValueError(
                f"z must have shape [..., {self.cfg.d_sae}] (d_sae); got {tuple(z.shape)}."
            )
        out = z.to(self.W_dec.dtype) @ self.W_dec
        return out + self.b_dec if self.cfg.apply_b_dec_to_input else out

    def training_loss(
        self, x: Float[Tensor, "B d_in"], dead_mask: Bool[Tensor, " d_sae"] | None = None
    ) -> TrainLoss:
        """Plain MSE of exactly k pursuit steps (dead_mask unused: MP has no AuxK).

            out = sae.training_loss(x); out.loss.backward(); opt.step(); sae.after_step()
        """
        check_input(x, self.cfg.d_in)
        if x.ndim != 2:
            raise ValueError(f"training_loss takes x of shape [B, d_in]; got {tuple(x.shape)}.")
        x = x.to(self.W_dec.dtype)
        dev = x.device.type
        # x + (−b_dec) has the values of x − b_dec; b_dec's gradient is then a column sum and a negated
        # [d_in] vector instead of a negated [B, d_in] copy first (~4 ms per step on one thread here).
        sae_in = x + self.b_dec.neg() if self.cfg.apply_b_dec_to_input else x
        if (dev == "cpu" and torch.is_autocast_enabled(dev) and torch.get_autocast_dtype(dev) == torch.bfloat16
                and _kernel_fn(_KERNELS.get((self.W_dec.dtype, torch.bfloat16)), x.device) is not None):
            # bf16 autocast on a CPU with the C kernel: bf16 correlations choose the atoms (half the
            # Gram traffic, 4x faster products on AMX); values and residual stay fp32 and exact.
            res = matching_pursuit(sae_in, self.W_dec, self.cfg.k, gram=self.gram(torch.bfloat16))
        else:
            res = matching_pursuit(sae_in, self.W_dec, self.cfg.k, 0.0, False, self.gram())
        # x − x_hat is the residual itself: its squared norm is the MSE, with no [B, d_in] difference
        # to form forward and none to negate backward.
        mse = squared_norm_per_token(res.residual)
        with torch.no_grad():
            x_hat = x - res.residual
        live = res.values.detach() > 0
        fired = torch.zeros(self.cfg.d_sae, dtype=torch.bool, device=x.device)
        fired[res.indices[live]] = True
        # Distinct atoms per token (a reselected atom counts once), as encode() would show:
        # sort each token's live indices (dead steps as −1) and count the changes.
        keys = torch.where(live, res.indices, -1).sort(-1).values  # [B, k]
        new_atom = keys[:, 1:] != keys[:, :-1]
        l0 = ((keys[:, 1:] >= 0) & new_atom).sum(-1) + (keys[:, 0] >= 0)
        l0 = l0.to(x.dtype).mean()
        return TrainLoss(mse, {"mse": mse.detach(), "l0": l0}, x_hat.detach(), fired, l0)

    def after_step(self) -> None:
        self.normalize_decoder()

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Make an MP-SAE trained on `x * scale` work on raw `x`.

        The dictionary must stay unit-norm (the pursuit assumes it), so only b and the
        residual threshold move: b ← b/s, residual_threshold ← residual_threshold/s. The
        selections are unchanged and the codes come out in raw units (divided by s).

            sae.fold_input_scale(trainer.input_scale)
        """
        s = float(scale)
        if not (s > 0 and s != float("inf")):
            raise ValueError(f"scale must be a finite positive number; got {scale!r}.")
        self.b_dec.div_(s)
        self.cfg = dataclasses.replace(
            self.cfg, residual_threshold=self.cfg.residual_threshold / s
        )

    def _arch_kwargs_for_pruned(self, m: int) -> dict[str, Any]:
        return {"k": min(self.cfg.k, m)}

    def saelens_view(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        cfg = {"architecture": "matching_pursuit",
               "residual_threshold": self.cfg.residual_threshold,
               "max_iterations": self.cfg.k,
               "stop_on_duplicate_support": self.cfg.stop_on_duplicate_support}
        return cfg, {"W_dec": self.W_dec, "b_dec": self.b_dec}
