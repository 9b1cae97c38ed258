"""TopK and BatchTopK SAEs (Gao et al. 2024; Bussmann et al. 2024), with AuxK.

Training uses the sparse kernels in `sparse.py` so a step pays for the dense encoder
product only. `training_loss(..., sparse=False)` is the dense reference path; the tests
check that both give the same loss and gradients.

    sae = make_sae("topk", d_in=576, d_sae=4608, k=32)
    out = sae.training_loss(x, dead_mask); out.loss.backward(); opt.step(); sae.after_step()
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from .base import SAE, SAEConfig, TrainLoss, check_input, mse_per_token
from .sparse import dense_codes, gather_pre, sparse_decode, table_dtype, topk_batch, topk_per_row


@dataclass(frozen=True)
class TopKConfig(SAEConfig):
    """TopK SAE: exactly k latents per token (the k largest pre-activations, then ReLU)."""

    architecture: ClassVar[str] = "topk"

    k: int = 32
    """Active latents per token; 1 <= k <= d_sae."""

    aux_k: int | None = None
    """Latents used by the AuxK dead-latent loss; None = d_in // 2 (Gao et al., App. B.1)."""

    aux_coef: float = 1.0 / 32
    """Weight of the AuxK loss (Gao et al. use 1/32)."""

    rescale_acts_by_decoder_norm: bool = False
    """SAELens option for checkpoints trained with non-unit decoder rows: select on
    pre·‖d_i‖ and decode with (z/‖d_i‖)·W_dec. Ours keep unit rows, so this stays False."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_k(self.k, self.d_sae, "k")
        if self.aux_k is not None and not (isinstance(self.aux_k, int) and self.aux_k > 0):
            raise ValueError(f"aux_k must be a positive int or None; got {self.aux_k!r}.")
        if not (isinstance(self.aux_coef, (int, float)) and self.aux_coef >= 0):
            raise ValueError(f"aux_coef must be a number >= 0; got {self.aux_coef!r}.")


def _check_k(k: Any, d_sae: int, name: str) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d_sae:
        raise ValueError(
            f"{name} must be an int in [1, d_sae={d_sae}]; got {k!r}. "
            f"Lower {name} or raise d_sae."
        )


class _TopKFamily(SAE):
    """Shared pieces: sparse selection → value gather → sparse decode, AuxK, unit decoder."""

    cfg: TopKConfig

    def __init__(self, cfg: SAEConfig, metadata: dict[str, Any] | None = None):
        super().__init__(cfg, metadata)
        self._pre_block: Tensor | None = None  # see _pre_activations

    def __getstate__(self) -> dict[str, Any]:
        # Copies (the trainer's export, pickling) do not carry the reusable block.
        return {**super().__getstate__(), "_pre_block": None}

    @torch.no_grad()
    def _pre_activations(self, sae_in: Float[Tensor, "B d_in"]) -> tuple[Float[Tensor, "B d_sae"], Tensor]:
        """(sae_in @ W_enc + b_enc, sae_in in the product's dtype) for the sparse training step; the
        product is written into a block reused at every step.

        glibc maps every block over 32 MB afresh, so a new [B, d_sae] output (37.7 MB in bf16 at
        4096×4608) pays its page faults at each step: measured ~10 ms of a ~180 ms BatchTopK step
        here (interleaved A/B). Nothing keeps a view of the block past the step (the selection and
        value gathers copy what they keep). Under autocast the product runs in the autocast dtype,
        as autocast would run it (an ``out=`` product is not autocast by itself).
        """
        dev, dtype = sae_in.device, self.W_enc.dtype
        if torch.is_autocast_enabled(dev.type) and dtype == torch.float32:
            dtype = torch.get_autocast_dtype(dev.type)
        n, block = sae_in.shape[0], self._pre_block
        if (block is None or block.shape[0] < n or block.dtype != dtype or block.device != dev
                or block.is_inference() != torch.is_inference_mode_enabled()):
            self._pre_block = block = None  # free the old block before allocating
            self._pre_block = block = torch.empty(n, self.cfg.d_sae, dtype=dtype, device=dev)
        sae_in = sae_in.to(dtype)
        return torch.addmm(self.b_enc.to(dtype), sae_in, self.W_enc.to(dtype), out=block[:n]), sae_in

    @classmethod
    def train_options(cls, d_sae: int, *, k: int, l1_coef: float) -> dict[str, Any]:
        """The run's k (``l1_coef`` does not apply: exactly k latents are kept)."""
        return {"k": k}

    def after_step(self) -> None:
        self.normalize_decoder()

    def _arch_kwargs_for_pruned(self, m: int) -> dict[str, Any]:
        return {"k": min(self.cfg.k, m)}

    @abc.abstractmethod
    def _select(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        """(rows, cols) of the active entries, sorted by row. Runs under no_grad."""

    def _encode_active(self, x: Tensor, dead_mask: Tensor | None, sparse: bool) -> dict[str, Tensor]:
        """Shared training encoder: pre-activations, the selections and their differentiable values.

        The main selection (`_select`) and AuxK's (`_aux_select`) share one value gather, so the
        sparse backward builds one encoder gradient for both. Sparse: only the forward product is
        dense; the values' backward is `gather_pre`'s sparse one. Dense (the reference): autograd
        through the full [B, d_sae] product.
        """
        check_input(x, self.cfg.d_in)
        if x.ndim != 2:
            raise ValueError(f"training_loss takes x of shape [B, d_in]; got {tuple(x.shape)}.")
        x = x.to(self.W_dec.dtype)
        if sparse:
            with torch.no_grad():  # the sparse backward (gather_pre) handles b_dec's gradient
                sae_in = x - self.b_dec if self.cfg.apply_b_dec_to_input else x
                pre, sae_in_mm = self._pre_activations(sae_in)  # [B, d_sae]
        else:
            sae_in = x - self.b_dec if self.cfg.apply_b_dec_to_input else x
            pre = sae_in @ self.W_enc + self.b_enc
        rows, cols = self._select(pre.detach())
        aux_rows, aux_cols, aux_pre, aux_scale = self._aux_select(pre.detach(), sae_in.detach(), dead_mask)
        all_rows, all_cols = torch.cat([rows, aux_rows]), torch.cat([cols, aux_cols])
        if sparse:
            b_dec = self.b_dec if self.cfg.apply_b_dec_to_input else None
            pre_vals = torch.cat([pre[rows, cols], aux_pre])
            # The backward gathers sae_in's rows in `table_dtype` (bf16 under bf16 autocast): the
            # product's copy serves, when it is in that dtype.
            table_in = sae_in_mm if sae_in_mm.dtype == table_dtype(self.W_enc) else sae_in
            vals = gather_pre(x, b_dec, self.W_enc, self.b_enc, all_rows, all_cols, pre_vals, sae_in=table_in).relu()
        else:
            vals = pre[all_rows, all_cols].relu()
        n_main = rows.numel()
        return {"x": x, "sae_in": sae_in, "pre": pre, "rows": rows, "cols": cols, "vals": vals[:n_main],
                "aux_rows": aux_rows, "aux_cols": aux_cols, "aux_vals": vals[n_main:], "aux_scale": aux_scale}

    @torch.no_grad()
    def _aux_select(self, pre: Tensor, sae_in: Tensor, dead_mask: Tensor | None
                    ) -> tuple[Tensor, Tensor, Tensor, float | None]:
        """AuxK's entries: each token's top aux_k dead latents, those with pre > 0, sorted by row.

        Returns (rows, cols, their pre values, loss scale); scale None = no AuxK term (no dead latent).
        Entries with pre <= 0 are dropped: ReLU makes them 0 with 0 gradient, and they were about
        half of the dead latents' entries here (the backward's cost is per entry). With few dead
        latents their pre-activations come from a small product (sae_in · W_enc[:, dead], under
        autocast in its dtype like pre) rather than a column gather that reads all of pre (~4 ms here).
        """
        empty = torch.zeros(0, dtype=torch.long, device=pre.device)
        none = (empty, empty, pre.new_zeros(0), None)
        if dead_mask is None:
            return none
        if dead_mask.shape != (self.cfg.d_sae,) or dead_mask.dtype != torch.bool:
            raise ValueError(
                f"dead_mask must be a bool tensor of shape ({self.cfg.d_sae},); got "
                f"{dead_mask.dtype} {tuple(dead_mask.shape)}."
            )
        n_dead = int(dead_mask.sum())
        if n_dead == 0:
            return none
        aux_k = min(self.cfg.aux_k or self.cfg.d_in // 2, n_dead)
        # Top aux_k among the dead columns only (a gather of n_dead columns, not a masked copy of all).
        dead_idx = dead_mask.nonzero().squeeze(1)
        if n_dead <= self.cfg.d_sae // 16:
            dead_pre = torch.addmm(self.b_enc[dead_idx], sae_in, self.W_enc[:, dead_idx])  # [B, n_dead]
        else:
            dead_pre = pre.index_select(1, dead_idx)  # [B, n_dead]
        if aux_k < n_dead:
            rows, local = topk_per_row(dead_pre, aux_k)
            keep = dead_pre[rows, local] > 0
            rows, local = rows[keep], local[keep]
        else:  # every dead latent is among the top aux_k
            rows, local = (dead_pre > 0).nonzero().unbind(1)
        return rows, dead_idx[local], dead_pre[rows, local], min(n_dead / aux_k, 1.0)

    def _sparse_forward(self, x: Tensor, dead_mask: Tensor | None, sparse: bool) -> dict[str, Tensor]:
        """`_encode_active` plus the reconstruction x_hat (sparse decode, or the dense product)."""
        f = self._encode_active(x, dead_mask, sparse)
        n = f["x"].shape[0]
        if sparse:
            f["x_hat"] = sparse_decode(f["rows"], f["cols"], f["vals"], self.W_dec, self.b_dec, n)
        else:
            f["x_hat"] = dense_codes(f["rows"], f["cols"], f["vals"], n, self.cfg.d_sae) @ self.W_dec + self.b_dec
        return f

    def _auxk(self, f: dict[str, Tensor], sparse: bool) -> Tensor | None:
        """AuxK (Gao et al. 2024): the top aux_k dead latents reconstruct the residual."""
        if f["aux_scale"] is None:
            return None
        x, rows, cols, vals = f["x"], f["aux_rows"], f["aux_cols"], f["aux_vals"]
        n = x.shape[0]
        # The residual the dead latents should explain.
        e = f["residual"] if "residual" in f else (x - f["x_hat"]).detach()
        if sparse:
            e_hat = sparse_decode(rows, cols, vals, self.W_dec, None, n)
        else:
            e_hat = dense_codes(rows, cols, vals, n, self.cfg.d_sae) @ self.W_dec
        # Normalised by the residual's variance so the loss is scale-free (as sparsify):
        # Σ‖e − ē‖²/B = Σ‖e‖²/B − ‖ē‖² (two passes over e instead of four).
        flat, mean = e.reshape(-1), e.mean(0)
        denom = (torch.dot(flat, flat) / n - torch.dot(mean, mean)).clamp_min(1e-12)
        return f["aux_scale"] * mse_per_token(e_hat, e) / denom

    def _finish(
        self, f: dict[str, Tensor], recon: Tensor, parts: dict[str, Tensor],
        aux: Tensor | None,
    ) -> TrainLoss:
        loss = recon
        if aux is not None:
            loss = loss + self.cfg.aux_coef * aux
            parts["auxk"] = aux.detach()
        live = f["vals"].detach() > 0
        # A weighted bincount: ~0.25 ms against ~2.2 ms for a bool index_put of 131k entries here.
        fired = torch.bincount(f["cols"], weights=live.to(recon.dtype), minlength=self.cfg.d_sae) > 0
        l0 = live.sum().to(recon.dtype) / f["x"].shape[0]
        parts["l0"] = l0
        return TrainLoss(loss, parts, f["x_hat"].detach(), fired, l0)

    def training_loss(
        self,
        x: Float[Tensor, "B d_in"],
        dead_mask: Bool[Tensor, " d_sae"] | None = None,
        *,
        sparse: bool = True,
    ) -> TrainLoss:
        """MSE (summed over d_in, mean over tokens) + aux_coef · AuxK on dead latents.

            out = sae.training_loss(x, dead_mask)
            out.loss.backward()
        """
        f = self._sparse_forward(x, dead_mask, sparse)
        mse = mse_per_token(f["x_hat"], f["x"])
        aux = self._auxk(f, sparse)
        return self._finish(f, mse, {"mse": mse.detach()}, aux)

    # SAELens layout: plain tensors; subclasses choose the architecture they load as.
    def _tensors(self) -> dict[str, Tensor]:
        return {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec,
                "b_dec": self.b_dec}


class TopKSAE(_TopKFamily):
    """Exactly k active latents per token: TopK over pre-activations, then ReLU.

        sae = make_sae("topk", d_in=64, d_sae=256, k=8)
        z = sae.encode(x)            # (z != 0).sum(-1) <= 8
    """

    architecture: ClassVar[str] = "topk"
    config_class: ClassVar[type[SAEConfig]] = TopKConfig

    def _select(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        if self.cfg.rescale_acts_by_decoder_norm:
            pre = pre * self.W_dec.detach().norm(dim=-1)
        return topk_per_row(pre, self.cfg.k)

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """SAELens topk semantics: top-k of pre (·‖d_i‖ if rescaled), ReLU, scatter.

            z = sae.encode(x)
        """
        pre = self._pre(x)
        if self.cfg.rescale_acts_by_decoder_norm:
            pre = pre * self.W_dec.norm(dim=-1)
        vals, idx = pre.topk(self.cfg.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, idx, vals.relu())

    def decode(self, z: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_in"]:
        if self.cfg.rescale_acts_by_decoder_norm:
            z = z / self.W_dec.norm(dim=-1)
        return super().decode(z)

    def saelens_view(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        cfg = {"architecture": "topk", "k": self.cfg.k,
               "rescale_acts_by_decoder_norm": self.cfg.rescale_acts_by_decoder_norm}
        return cfg, self._tensors()


@dataclass(frozen=True)
class BatchTopKConfig(TopKConfig):
    """BatchTopK: the B·k largest activations of the whole batch in training; a learned
    per-batch threshold (a JumpReLU) at inference."""

    architecture: ClassVar[str] = "batchtopk"

    threshold_decay: float = 0.9
    """Decay of the bias-corrected running mean of each batch's smallest selected
    activation. Short memory on purpose: SAELens's EMA starts at 0 with rate 0.01 and, in a
    98-step run, ends far below the training threshold (~290 latents fire per token at
    inference instead of 32; DESIGN.md). A bias-corrected mean over the last ~10 batches
    tracks the threshold the current weights actually need."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.threshold_decay, (int, float)) and 0 <= self.threshold_decay < 1):
            raise ValueError(
                f"threshold_decay must be in [0, 1); got {self.threshold_decay!r}."
            )


class BatchTopKSAE(_TopKFamily):
    """BatchTopK SAE. Training: batch-level top-(B·k). Inference: ReLU(pre) where pre > θ.

    θ is a running estimate of the smallest activation the batch-level TopK keeps, so the
    inference L0 on held-out data stays close to the training k.

        sae = make_sae("batchtopk", d_in=64, d_sae=256, k=8)
        z = sae.encode(x)          # uses sae.threshold
    """

    architecture: ClassVar[str] = "batchtopk"
    config_class: ClassVar[type[SAEConfig]] = BatchTopKConfig
    cfg: BatchTopKConfig

    def __init__(self, cfg: SAEConfig, metadata: dict[str, Any] | None = None):
        super().__init__(cfg, metadata)
        # float64 so the running mean does not drift; a buffer, so it moves with .to().
        self.register_buffer("threshold_sum", torch.zeros((), dtype=torch.float64))
        self.register_buffer("threshold_weight", torch.zeros((), dtype=torch.float64))
        self._pending: Tensor | None = None

    @property
    def threshold(self) -> float:
        """Inference threshold θ (0 before any training step)."""
        w = float(self.threshold_weight)
        return float(self.threshold_sum) / w if w > 0 else 0.0

    @torch.no_grad()
    def set_threshold(self, value: float) -> None:
        """Set θ directly (used when loading a checkpoint)."""
        self.threshold_sum.fill_(float(value))
        self.threshold_weight.fill_(1.0)

    def _select(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        rows, cols, thr = topk_batch(pre, self.cfg.k)
        self._pending = thr
        return rows, cols

    def after_step(self) -> None:
        """Decoder renorm and the threshold update (from the last training_loss call)."""
        super().after_step()
        if self._pending is not None:
            d = self.cfg.threshold_decay
            self.threshold_sum.mul_(d).add_(self._pending.to(torch.float64))
            self.threshold_weight.mul_(d).add_(1.0)
            self._pending = None

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """JumpReLU with the learned scalar threshold (what SAELens loads it as).

            z = sae.encode(x)
        """
        pre = self._pre(x)
        return pre.relu() * (pre > self.threshold)

    def _copy_extra_pruned(self, new: SAE, idx: Tensor) -> None:
        new.threshold_sum.copy_(self.threshold_sum)
        new.threshold_weight.copy_(self.threshold_weight)

    def saelens_view(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        t = self._tensors()
        t["threshold"] = torch.full_like(self.b_enc, self.threshold)
        return {"architecture": "jumprelu"}, t

    def extra_state(self) -> dict[str, Any]:
        return {"threshold_sum": float(self.threshold_sum),
                "threshold_weight": float(self.threshold_weight)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.threshold_sum.fill_(float(state.get("threshold_sum", 0.0)))
        self.threshold_weight.fill_(float(state.get("threshold_weight", 0.0)))

