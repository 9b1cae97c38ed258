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

from .base import SAE, SAEConfig, TrainLoss, mse_per_token
from .sparse import sparse_decode
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
        f = self._sparse_forward(x, sparse)
        n = f["x"].shape[0]
        rows, cols, vals = f["rows"], f["cols"], f["vals"]
        parts: dict[str, Tensor] = {}
        losses = []
        x_hat = self.b_dec.expand(n, -1)
        lo = 0
        for w in self.cfg.widths:
            if sparse:
                seg = (cols >= lo) & (cols < w)
                x_hat = x_hat + sparse_decode(rows[seg], cols[seg], vals[seg], self.W_dec, None, n)
            else:
                z = torch.zeros(n, self.cfg.d_sae, dtype=vals.dtype, device=vals.device)
                z = z.index_put((rows, cols), vals)
                x_hat = x_hat + z[:, lo:w] @ self.W_dec[lo:w]
            mse = mse_per_token(x_hat, f["x"])
            parts[f"mse_w{w}"] = mse.detach()
            losses.append(mse)
            lo = w
        total = torch.stack(losses)
        recon = total.mean() if self.cfg.prefix_loss == "mean" else total.sum()
        parts["mse"] = losses[-1].detach()
        aux = self._auxk(f, dead_mask, sparse)
        return self._finish(f, recon, parts, aux)
