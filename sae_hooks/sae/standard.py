"""Standard ReLU SAE with an L1 penalty weighted by decoder norms.

Weighting |z_i| by ‖d_i‖ (Anthropic, April 2024 update) stops the optimiser from
shrinking codes while growing decoder rows, so the decoder needs no renormalisation.

    sae = make_sae("standard", d_in=64, d_sae=256, l1_coef=5.0)
    out = sae.training_loss(x); out.loss.backward()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from jaxtyping import Bool, Float
from torch import Tensor

from .base import SAE, SAEConfig, TrainLoss, check_input, mse_per_token


@dataclass(frozen=True)
class StandardConfig(SAEConfig):
    """ReLU SAE trained with MSE + l1_coef · Σ_i |z_i|·‖d_i‖."""

    architecture: ClassVar[str] = "standard"

    l1_coef: float = 5.0
    """Sparsity penalty weight (per token, summed over latents)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.l1_coef, (int, float)) and self.l1_coef >= 0):
            raise ValueError(f"l1_coef must be a number >= 0; got {self.l1_coef!r}.")


class StandardSAE(SAE):
    """z = ReLU((x − b_dec) W_enc + b_enc); x_hat = z W_dec + b_dec.

        z = sae.encode(x); x_hat = sae.decode(z)
    """

    architecture: ClassVar[str] = "standard"
    config_class: ClassVar[type[SAEConfig]] = StandardConfig
    saelens_architecture: ClassVar[str | None] = "standard"
    cfg: StandardConfig

    @classmethod
    def train_options(cls, d_sae: int, *, k: int, l1_coef: float) -> dict[str, Any]:
        """The run's L1 weight (``k`` does not apply: sparsity comes from the penalty)."""
        return {"l1_coef": l1_coef}

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        return self._pre(x).relu()

    def training_loss(
        self, x: Float[Tensor, "B d_in"], dead_mask: Bool[Tensor, " d_sae"] | None = None
    ) -> TrainLoss:
        """MSE + l1_coef · mean_tokens Σ_i z_i ‖d_i‖ (dead_mask is unused).

            out = sae.training_loss(x); out.loss.backward()
        """
        check_input(x, self.cfg.d_in)
        x = x.to(self.W_dec.dtype)
        z = self.encode(x)
        x_hat = self.decode(z)
        mse = mse_per_token(x_hat, x)
        l1 = (z * self.W_dec.norm(dim=-1)).sum(-1).mean()
        active = z.detach() > 0
        l0 = active.sum(-1).float().mean()
        parts = {"mse": mse.detach(), "l1": l1.detach(), "l0": l0}
        return TrainLoss(mse + self.cfg.l1_coef * l1, parts, x_hat.detach(),
                         active.reshape(-1, self.cfg.d_sae).any(0), l0)

    def saelens_view(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        return {"architecture": "standard"}, {
            "W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}
