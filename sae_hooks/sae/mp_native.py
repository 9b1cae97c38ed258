"""The C side of matching pursuit: ctypes glue to mp_kernel.c's pursuit and backward.

The kernel (compiled once per machine by `sae_hooks._native`) runs a few tokens at a time
through all their steps with their correlations in cache, where a sequence of PyTorch ops
streams the whole correlation block through memory at every step. Each function here returns
None / False when the kernel cannot run (GPU, other dtypes, no C compiler, SAE_HOOKS_NATIVE=0);
the pursuit engine then takes its PyTorch path, with the same choices.

    if native_pursue(r, D, gram, k, 0.0, False, idx, vals, norms, None, 1e-4, 64): ...
"""

from __future__ import annotations

import ctypes
from typing import Any

import torch
from torch import Tensor

from .._native import load_kernel
from .._threads import thread_pool

__all__ = ["KERNELS", "kernel_fn", "pursue_kernel", "has_bf16_gram_kernel", "native_pursue", "native_backward"]

# (D dtype, Gram dtype) -> kernel entry point in mp_kernel.c
KERNELS = {(torch.float32, torch.float32): "mp_pursue_f32", (torch.float64, torch.float64): "mp_pursue_f64",
            (torch.float32, torch.bfloat16): "mp_pursue_f32_bf16gram"}


def kernel_fn(name: str | None, device: torch.device) -> Any:
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


def pursue_kernel(D: Tensor, gram: Tensor | None) -> Any:
    """The C pursuit for this dictionary and Gram matrix, or None."""
    return kernel_fn(KERNELS.get((D.dtype, gram.dtype)) if gram is not None else None, D.device)


def native_pursue(
    r: Tensor, D: Tensor, gram: Tensor, k: int, residual_threshold: float, stop_dup: bool,
    idx: Tensor, vals: Tensor, norms: Tensor, D_corr: Tensor | None, tie_tol: float, band_max: int,
) -> bool:
    """`pursuit._pursue_rows` in C (mp_kernel.c): a few tokens at a time run all their
    steps with their correlations in cache. Same choices and stopping rules; values differ from
    the PyTorch path only by summation order (~1e-7 relative in fp32). False if the kernel
    cannot run here (GPU, other dtypes, no C compiler): the caller then takes the PyTorch path.
    Fills ``norms[:, 0]`` and, where a token stopped early, the later norms; with no stopping rule
    the caller derives the rest from the values. ``tie_tol`` and ``band_max`` are the near-tie band
    (relative to ‖r0‖) and the band size past which a row's tie is settled by the full D r.

    With a bf16 Gram matrix (training under bf16 autocast) the starting correlations come from
    bf16 operands too, and the near-tie re-check is off: the choices are those of bf16
    correlations (as TopK's are under autocast), while the values, the residual and the
    gradient still use the fp32 dictionary, so x_hat = x − r and the monotone residual hold.
    """
    fn = pursue_kernel(D, gram)
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
    tol = tie_tol * norms[:, 0] if exact else torch.zeros_like(norms[:, 0])
    ptr = ctypes.c_void_p
    i64 = ctypes.c_int64
    status = fn(i64(r.shape[0]), i64(r.shape[1]), i64(D.shape[0]), ptr(c.data_ptr()), i64(c.stride(0)),
       ptr(r.data_ptr()), ptr(D.data_ptr()), ptr(gram.data_ptr()), i64(gram.stride(0)), i64(k),
       ctypes.c_double(residual_threshold), ctypes.c_int32(int(stop_dup)), ctypes.c_double(tie_tol),
       i64(band_max), ptr(tol.data_ptr()), ptr(idx.data_ptr()), ptr(vals.data_ptr()), ptr(norms.data_ptr()))
    if status < 0:
        raise MemoryError(f"MP kernel: could not allocate {D.shape[0]} scratch correlations.")
    return True

def has_bf16_gram_kernel(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether the C pursuit with bf16 correlations runs here for a dictionary of ``dtype``."""
    return kernel_fn(KERNELS.get((dtype, torch.bfloat16)), device) is not None


def native_backward(
    sae_in: Tensor, D: Tensor, idx: Tensor, v: Tensor, g_v: Tensor | None, g_r: Tensor | None,
    need_in: bool, need_D: bool,
) -> tuple[Tensor | None, Tensor | None] | None:
    """`pursuit._PursuitValues.backward` in C: per token, the residuals before each step forward, then
    ρ and w backwards (∂L/∂a_t = −v_t ρ_t + w_t r_{t−1}): O(k·d_in) per token in cache, where
    the PyTorch form needs Gram entries, a d_sae × d_sae coefficient matrix and its product
    with D. None if the kernel cannot run here (the caller then takes the PyTorch form)."""
    fn = kernel_fn({torch.float32: "mp_backward_f32", torch.float64: "mp_backward_f64"}.get(D.dtype), D.device)
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
