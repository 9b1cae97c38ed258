"""Matching-pursuit SAE (MP-SAE; Costa et al. 2025, arXiv 2506.03093): the class.

Tied, unit-norm dictionary D [d_sae, d_in] (stored as W_dec) and a pre-bias b (b_dec); the
encoder unrolls k greedy pursuit steps (`pursuit.py`, with its C kernel in `mp_native.py`).
Each step lowers ‖r‖² by exactly v², so the residual is monotone and inference may stop per
token at ‖r‖ < ε or run another k: the adaptive sparsity of the paper.

    sae = make_sae("matching_pursuit", d_in=576, d_sae=4608, k=32)
    z = sae.encode(x)                                   # fixed k steps
    z = sae.encode(x, k=64, residual_threshold=0.5)     # adaptive at inference
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from .base import SAE, SAEConfig, TrainLoss, check_input, squared_norm_per_token
from .mp_native import has_bf16_gram_kernel
from .pursuit import MPResult, matching_pursuit, padded_gram


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


class MPSAE(SAE):
    """Matching-pursuit SAE (SAELens `matching_pursuit` semantics; stores W_dec and b_dec).

        sae = make_sae("matching_pursuit", d_in=64, d_sae=256, k=8)
        res = sae.pursue(x, k=16, residual_threshold=0.1)   # res.norms: per-step ‖r‖
    """

    architecture: ClassVar[str] = "matching_pursuit"
    config_class: ClassVar[type[SAEConfig]] = MPConfig
    saelens_architecture: ClassVar[str | None] = "matching_pursuit"
    encode_options: ClassVar[tuple[str, ...]] = ("k", "residual_threshold", "stop_on_duplicate_support")
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
                and has_bf16_gram_kernel(self.W_dec.dtype, x.device)):
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

    def after_step(self, loss: TrainLoss | None = None) -> None:
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

    @classmethod
    def saelens_options(cls, cfg: Mapping[str, Any]) -> dict[str, Any]:
        """k = SAELens's ``max_iterations`` (None there means up to d_in steps), its residual threshold
        and duplicate-support stop (SAELens's defaults when absent)."""
        max_it = cfg.get("max_iterations")
        return {"k": int(max_it) if max_it is not None else cfg["d_in"],
                "residual_threshold": float(cfg.get("residual_threshold", 1e-2)),
                "stop_on_duplicate_support": bool(cfg.get("stop_on_duplicate_support", True))}
