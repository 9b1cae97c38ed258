"""Matryoshka BatchTopK SAE (Bussmann et al. 2025; Nabeshima 2024).

Latents are split into nested prefixes of fixed widths (the last is d_sae). One
BatchTopK selection per batch; every prefix reconstructs the input from its own latents
only, and the loss averages (or sums) the prefix MSEs, so the first latents learn the
most general features. The progressive-coding line (Peter & Søgaard 2025) evaluates it
at every prefix:

    small = sae.prefix(512)                  # a MatryoshkaSAE over latents 0..511
    x_hat = small.decode(small.encode(x))    # uses only those latents
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from .base import SAE, InferenceVariant, SAEConfig, TrainLoss
from .sparse import decode_grads, decode_rows, dense_codes, stable_argsort, table_dtype
from .topk import BatchTopKConfig, BatchTopKSAE


@dataclass(frozen=True)
class MatryoshkaConfig(BatchTopKConfig):
    """Matryoshka BatchTopK: nested prefix widths, strictly increasing, last = d_sae."""

    architecture: ClassVar[str] = "matryoshka"

    widths: tuple[int, ...] = ()
    """Prefix widths, e.g. (512, 1152, 2304, 4608); empty means (d_sae,)."""

    prefix_loss: str = "mean"
    """How prefix MSEs combine: "mean" or "sum"."""

    def __post_init__(self) -> None:
        if not self.widths:
            object.__setattr__(self, "widths", (self.d_sae,))
        object.__setattr__(self, "widths", tuple(self.widths))
        super().__post_init__()
        w = self.widths
        if any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in w):
            raise ValueError(f"widths must be positive ints; got {list(w)}.")
        if any(b <= a for a, b in zip(w, w[1:])):
            raise ValueError(f"widths must be strictly increasing; got {list(w)}.")
        if w[-1] != self.d_sae:
            raise ValueError(
                f"widths must end at d_sae={self.d_sae}; got {list(w)}. "
                f"Append {self.d_sae} (or set d_sae={w[-1]})."
            )
        if self.prefix_loss not in ("mean", "sum"):
            raise ValueError(f"prefix_loss must be 'mean' or 'sum'; got {self.prefix_loss!r}.")


class MatryoshkaSAE(BatchTopKSAE):
    """BatchTopK over nested prefixes; evaluable at any prefix through `prefix(width)`.

        sae = make_sae("matryoshka", d_in=64, d_sae=256, k=8, widths=(32, 128, 256))
        out = sae.training_loss(x)        # out.parts["mse_w32"], ...
    """

    architecture: ClassVar[str] = "matryoshka"
    config_class: ClassVar[type[SAEConfig]] = MatryoshkaConfig
    cfg: MatryoshkaConfig

    @classmethod
    def train_options(cls, d_sae: int, *, k: int, l1_coef: float) -> dict[str, Any]:
        """The run's k and nested prefixes at ~1/9, 1/4, 1/2 and all of d_sae (512/1152/2304/4608 at
        4608, the widths of the progressive-coding comparison).

            MatryoshkaSAE.train_options(4608, k=32, l1_coef=5.0)   # {'k': 32, 'widths': (512, 1152, 2304, 4608)}
        """
        widths = tuple(sorted({max(1, d_sae // 9), max(1, d_sae // 4), max(1, d_sae // 2), d_sae}))
        return {"k": k, "widths": widths}

    def _arch_kwargs_for_pruned(self, m: int) -> dict[str, Any]:
        # An arbitrary subset has no nesting left; prefix() keeps the nesting.
        return {"k": min(self.cfg.k, m), "widths": (m,)}

    @torch.no_grad()
    def prefix(self, width: int) -> "MatryoshkaSAE":
        """A MatryoshkaSAE made of latents [0, width) (a copy), same threshold.

            x_hat = sae.prefix(1152)(x).x_hat
        """
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= self.cfg.d_sae:
            raise ValueError(f"width must be an int in [1, {self.cfg.d_sae}]; got {width!r}.")
        pruned = self.pruned(torch.arange(width))
        widths = tuple(w for w in self.cfg.widths if w < width) + (width,)
        pruned.cfg = replace(pruned.cfg, widths=widths)
        return pruned

    def inference_variant(
        self, *, width: int | None = None, k: int | None = None, residual_threshold: float | None = None,
    ) -> InferenceVariant:
        """The prefix of ``width`` latents (see ``prefix``), or the SAE itself when None.

            small, kw = sae.inference_variant(width=1152)
        """
        sae = self if width is None else self.prefix(width)
        return SAE.inference_variant(sae, k=k, residual_threshold=residual_threshold)

    def training_loss(
        self,
        x: Float[Tensor, "B d_in"],
        dead_mask: Bool[Tensor, " d_sae"] | None = None,
        *,
        sparse: bool = True,
    ) -> TrainLoss:
        """Mean (or sum) over prefixes of each prefix's MSE, plus AuxK.

            out = sae.training_loss(x, dead_mask); out.loss.backward()
        """
        codes = self._encode_active(x, dead_mask, sparse)
        x, main = codes.x, codes.main
        residual = None
        if sparse:  # prefix s reconstructs x − b_dec from latents [0, widths[s])
            with torch.no_grad():
                target = codes.sae_in if self.cfg.apply_b_dec_to_input else x - self.b_dec
            mses, residual = _PrefixMSE.apply(main.rows, main.cols, codes.vals, self.W_dec, x, self.b_dec, target,
                                              (0,) + self.cfg.widths)
            x_hat = x - residual
        else:  # the dense reference: one product per segment, then cumulative sums
            n, bounds = x.shape[0], (0,) + self.cfg.widths
            z = dense_codes(main.rows, main.cols, codes.vals, n, self.cfg.d_sae)  # [B, d_sae]
            segments = torch.stack([z[:, lo:hi] @ self.W_dec[lo:hi] for lo, hi in zip(bounds, bounds[1:])])
            x_hats = segments.cumsum(0) + self.b_dec  # [S, B, d_in]
            mses = (x_hats - x).pow(2).sum(-1).mean(1)  # [S]
            x_hat = x_hats[-1]
        parts: dict[str, Tensor] = {f"mse_w{w}": m for w, m in zip(self.cfg.widths, mses.detach().unbind())}
        recon = mses.mean() if self.cfg.prefix_loss == "mean" else mses.sum()
        parts["mse"] = mses[-1].detach()
        aux = self._auxk(codes, x_hat, sparse, residual)
        return self._finish(codes, x_hat, recon, parts, aux)


class _PrefixMSE(torch.autograd.Function):
    """mse[s] = mean over tokens of ‖target − Σ_{j < bounds[s+1]} z_j·W_dec[j]‖² for every prefix s,
    and the last prefix's residual (no gradient). z is given as COO triples sorted by row.

    One decode per segment [bounds[s], bounds[s+1]) into its own [B, d_in] block, residuals
    e_s = e_{s−1} − segment_s; backward: ∂/∂segment_t = −(2/B) Σ_{s>=t} g_s·e_s, accumulated from the
    last prefix down, then each segment's sparse decoder gradients (`decode_grads` on its slice of
    W_dec). The same O(nnz·d_in) work as one decode; the old per-prefix `sparse_decode` loop paid
    four full [d_sae, d_in] decoder gradients and autograd temporaries per prefix (~2.5x one decode
    here), and one [S·B, d_in] block instead of S blocks of [B, d_in] costs ~12 ms per allocation
    in page faults here (glibc maps blocks over 32 MB afresh each time).
    """

    @staticmethod
    def forward(ctx, rows, cols, vals, W_dec, x, b_dec, target, bounds):  # type: ignore[override]
        # target = x − b_dec, already computed (no gradient); x and b_dec are given for their gradients.
        n, n_seg = target.shape[0], len(bounds) - 1
        starts = torch.tensor(bounds[1:-1], dtype=cols.dtype, device=cols.device)
        seg = torch.bucketize(cols, starts, right=True)  # [nnz] segment of each entry
        order = stable_argsort(seg, n_seg)  # entries grouped by segment, rows still sorted in each
        counts = torch.bincount(seg, minlength=n_seg).tolist()
        rows, cols, vals = rows[order], cols[order], vals[order]
        ctx.table = table_dtype(W_dec)
        table = W_dec.to(ctx.table)  # one bf16 copy for all segments under bf16 autocast
        res, prev = [], target
        for r, c, v in zip(rows.split(counts), cols.split(counts), vals.split(counts)):
            prev = prev - decode_rows(r, c, v, table, n)
            res.append(prev)
        mses = torch.stack([torch.dot(e.view(-1), e.view(-1)) for e in res]) / n
        ctx.save_for_backward(order, rows, cols, vals, W_dec, *res)
        ctx.counts, ctx.bounds = counts, bounds
        ctx.mark_non_differentiable(prev)
        return mses, prev

    @staticmethod
    def backward(ctx, g, _g_residual):  # type: ignore[override]
        order, rows, cols, vals, W_dec, *res = ctx.saved_tensors
        counts, bounds, n = ctx.counts, ctx.bounds, res[0].shape[0]
        need_vals, need_W, need_x, need_b = ctx.needs_input_grad[2:6]
        coef = (-2.0 / n) * g.to(res[0].dtype)  # [S]
        grads: list[Tensor] = [res[-1] * coef[-1]]
        for s in range(len(res) - 2, -1, -1):
            grads.insert(0, torch.addcmul(grads[0], res[s], coef[s]))
        dvals, dW = [], []
        pieces = zip(rows.split(counts), cols.split(counts), vals.split(counts), grads, bounds, bounds[1:])
        for r, c, v, gs, lo, hi in pieces:
            gv, gw = decode_grads(r, c - lo, v, W_dec[lo:hi], gs, n, need_vals, need_W, ctx.table)
            dvals.append(gv)
            dW.append(gw)
        grad_vals = torch.empty_like(vals).scatter_(0, order, torch.cat(dvals)) if need_vals else None
        grad_W = torch.cat(dW) if need_W else None
        # ∂/∂target = −grads[0]; target = x − b_dec (b_dec shared by all tokens: a column sum).
        grad_x = -grads[0] if need_x else None
        grad_b = grads[0].sum(0) if need_b else None
        return None, None, grad_vals, grad_W, grad_x, grad_b, None, None
