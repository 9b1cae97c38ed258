"""JumpReLU SAE (Rajamanoharan et al. 2024): z = ReLU(pre)·[pre > θ], L0 penalty.

The threshold θ [d_sae] is a parameter stored as is (SAELens's `threshold` tensor, so a
save/load round trip is bit-exact). The step function has no gradient; θ learns through
the paper's straight-through estimators with a rectangle kernel K of width ε =
`bandwidth`: ∂(pre·H(pre−θ))/∂θ ≈ −(θ/ε)·K((pre−θ)/ε) and ∂H(pre−θ)/∂θ ≈ −(1/ε)·K(...).

    sae = make_sae("jumprelu", d_in=64, d_sae=256, l0_coef=1e-3)
    out = sae.training_loss(x); out.loss.backward()
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from .base import SAE, SAEConfig, TrainLoss, check_input, mse_per_token


@dataclass(frozen=True)
class JumpReLUConfig(SAEConfig):
    """JumpReLU SAE trained with MSE + l0_coef · L0 (straight-through threshold gradients)."""

    architecture: ClassVar[str] = "jumprelu"

    l0_coef: float = 1e-3
    """Weight of the (pseudo-differentiable) L0 penalty."""

    bandwidth: float = 1e-3
    """Width ε of the rectangle kernel of the straight-through estimator."""

    init_threshold: float = 1e-3
    """Initial θ for every latent (> 0)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("bandwidth", "init_threshold"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v > 0):
                raise ValueError(f"{name} must be a number > 0; got {v!r}.")
        if not (isinstance(self.l0_coef, (int, float)) and self.l0_coef >= 0):
            raise ValueError(f"l0_coef must be a number >= 0; got {self.l0_coef!r}.")


def _rect(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """pre·[pre > θ]; d/dpre = [pre > θ]; d/dθ = −(θ/ε)·K((pre−θ)/ε) (the jump)."""

    @staticmethod
    def forward(ctx, pre, theta, eps):  # type: ignore[override]
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        pre, theta = ctx.saved_tensors
        eps = ctx.eps
        g_pre = g * (pre > theta)
        g_theta = (-(theta / eps) * _rect((pre - theta) / eps) * g)
        g_theta = g_theta.reshape(-1, theta.shape[-1]).sum(0)
        return g_pre, g_theta, None


class _Step(torch.autograd.Function):
    """[pre > θ]; d/dθ = −(1/ε)·K((pre−θ)/ε); no gradient to pre (the paper's L0 STE)."""

    @staticmethod
    def forward(ctx, pre, theta, eps):  # type: ignore[override]
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        pre, theta = ctx.saved_tensors
        g_theta = (-(1.0 / ctx.eps) * _rect((pre - theta) / ctx.eps) * g)
        return None, g_theta.reshape(-1, theta.shape[-1]).sum(0), None


class JumpReLUSAE(SAE):
    """z = ReLU(pre)·[pre > threshold] (SAELens jumprelu semantics).

        z = sae.encode(x)
        sae.threshold          # [d_sae]
    """

    architecture: ClassVar[str] = "jumprelu"
    config_class: ClassVar[type[SAEConfig]] = JumpReLUConfig
    saelens_architecture: ClassVar[str | None] = "jumprelu"
    cfg: JumpReLUConfig

    def __init__(self, cfg: SAEConfig, metadata: dict[str, Any] | None = None):
        super().__init__(cfg, metadata)
        self.threshold = nn.Parameter(
            torch.full((cfg.d_sae,), float(self.cfg.init_threshold), dtype=cfg.torch_dtype)
        )

    @classmethod
    def train_options(cls, d_sae: int, *, k: int, l1_coef: float) -> dict[str, Any]:
        """None: neither applies. The penalty here counts active latents (``l0_coef``), a different
        quantity on a different scale from an L1 weight; set it as an option of its own
        (``jumprelu:resid_post.6:l0_coef=1e-3``)."""
        return {}

    @torch.no_grad()
    def set_threshold(self, threshold: Tensor) -> None:
        """Set θ from a [d_sae] tensor, e.g. one loaded from SAELens."""
        t = threshold.to(self.threshold.dtype)
        if t.shape != (self.cfg.d_sae,):
            raise ValueError(f"threshold must have shape ({self.cfg.d_sae},); got {tuple(t.shape)}.")
        self.threshold.copy_(t)

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        pre = self._pre(x)
        return pre.relu() * (pre > self.threshold)

    def training_loss(
        self, x: Float[Tensor, "B d_in"], dead_mask: Bool[Tensor, " d_sae"] | None = None
    ) -> TrainLoss:
        """MSE + l0_coef · mean_tokens Σ_i [pre_i > θ_i] (dead_mask is unused).

            out = sae.training_loss(x); out.loss.backward()
        """
        check_input(x, self.cfg.d_in)
        x = x.to(self.W_dec.dtype)
        pre = self._pre(x)
        theta = self.threshold
        z = _JumpReLU.apply(pre.relu(), theta, self.cfg.bandwidth)
        x_hat = self.decode(z)
        mse = mse_per_token(x_hat, x)
        l0_soft = _Step.apply(pre, theta, self.cfg.bandwidth).sum(-1).mean()
        active = z.detach() > 0
        l0 = active.sum(-1).float().mean()
        parts = {"mse": mse.detach(), "l0_penalty": l0_soft.detach(), "l0": l0}
        return TrainLoss(mse + self.cfg.l0_coef * l0_soft, parts, x_hat.detach(),
                         active.any(0), l0)

    def _copy_extra_pruned(self, new: SAE, idx: Tensor) -> None:
        new.threshold.copy_(self.threshold[idx])

    def saelens_view(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        return {"architecture": "jumprelu"}, {
            "W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec,
            "b_dec": self.b_dec, "threshold": self.threshold.detach()}

    def load_saelens_tensors(self, tensors: Mapping[str, Tensor]) -> None:
        super().load_saelens_tensors(tensors)
        self.set_threshold(tensors["threshold"])
