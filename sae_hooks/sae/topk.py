"""TopK and BatchTopK SAEs (Gao et al. 2024; Bussmann et al. 2024), with AuxK.

Training uses the sparse kernels in `sparse.py` so a step pays for the dense encoder
product only. `training_loss(..., sparse=False)` is the dense reference path; the tests
check that both give the same loss and gradients.

    sae = make_sae("topk", d_in=576, d_sae=4608, k=32)
    out = sae.training_loss(x, dead_mask); out.loss.backward(); opt.step(); sae.after_step()
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from .base import DTYPE_NAMES, SAE, SAEConfig, TrainLoss, check_input, mse_per_token
from .layout import check_tensors
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


class Selection(NamedTuple):
    """The active entries a TopK-family selection keeps, as COO pairs sorted by row."""

    rows: Tensor
    """Token index of each entry."""
    cols: Tensor
    """Latent index of each entry."""
    threshold: Tensor | None
    """BatchTopK: the smallest pre-activation the batch-level selection kept (0-dim); None for TopK."""


class AuxSelection(NamedTuple):
    """AuxK's entries: each token's top aux_k dead latents with pre > 0, sorted by row."""

    rows: Tensor
    cols: Tensor
    pre: Tensor
    """Their pre-activations (no gradient)."""
    scale: float | None
    """Weight of the AuxK loss; None = no AuxK term (no dead latent)."""


class ActiveCodes(NamedTuple):
    """One training batch through the encoder: inputs, the selections and their differentiable values."""

    x: Tensor
    """The batch [B, d_in], in the parameters' dtype."""
    sae_in: Tensor
    """x − b_dec (x without apply_b_dec_to_input) [B, d_in]."""
    pre: Tensor
    """Encoder pre-activations [B, d_sae] (no gradient on the sparse path)."""
    main: Selection
    """The active latents."""
    vals: Tensor
    """Their values ReLU(pre) [nnz], differentiable."""
    aux: AuxSelection
    """AuxK's dead latents."""
    aux_vals: Tensor
    """Their values ReLU(pre), differentiable."""


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

    def after_step(self, loss: TrainLoss | None = None) -> None:
        self.normalize_decoder()

    def _arch_kwargs_for_pruned(self, m: int) -> dict[str, Any]:
        return {"k": min(self.cfg.k, m)}

    @abc.abstractmethod
    def _select(self, pre: Tensor) -> Selection:
        """The active entries, sorted by row. Runs under no_grad."""

    def _encode_active(self, x: Tensor, dead_mask: Tensor | None, sparse: bool) -> ActiveCodes:
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
        main = self._select(pre.detach())
        rows, cols = main.rows, main.cols
        aux = self._aux_select(pre.detach(), sae_in.detach(), dead_mask)
        all_rows, all_cols = torch.cat([rows, aux.rows]), torch.cat([cols, aux.cols])
        if sparse:
            b_dec = self.b_dec if self.cfg.apply_b_dec_to_input else None
            pre_vals = torch.cat([pre[rows, cols], aux.pre])
            # The backward gathers sae_in's rows in `table_dtype` (bf16 under bf16 autocast): the
            # product's copy serves, when it is in that dtype.
            table_in = sae_in_mm if sae_in_mm.dtype == table_dtype(self.W_enc) else sae_in
            vals = gather_pre(x, b_dec, self.W_enc, self.b_enc, all_rows, all_cols, pre_vals, sae_in=table_in).relu()
        else:
            vals = pre[all_rows, all_cols].relu()
        n_main = rows.numel()
        return ActiveCodes(x, sae_in, pre, main, vals[:n_main], aux, vals[n_main:])

    @torch.no_grad()
    def _aux_select(self, pre: Tensor, sae_in: Tensor, dead_mask: Tensor | None) -> AuxSelection:
        """AuxK's entries: each token's top aux_k dead latents, those with pre > 0, sorted by row.

        Entries with pre <= 0 are dropped: ReLU makes them 0 with 0 gradient, and they were about
        half of the dead latents' entries here (the backward's cost is per entry). With few dead
        latents their pre-activations come from a small product (sae_in · W_enc[:, dead], under
        autocast in its dtype like pre) rather than a column gather that reads all of pre (~4 ms here).
        """
        empty = torch.zeros(0, dtype=torch.long, device=pre.device)
        none = AuxSelection(empty, empty, pre.new_zeros(0), None)
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
        return AuxSelection(rows, dead_idx[local], dead_pre[rows, local], min(n_dead / aux_k, 1.0))

    def _decode_active(self, codes: ActiveCodes, sparse: bool) -> Tensor:
        """The reconstruction x_hat [B, d_in] from the active codes (sparse decode, or the dense product)."""
        n, main = codes.x.shape[0], codes.main
        if sparse:
            return sparse_decode(main.rows, main.cols, codes.vals, self.W_dec, self.b_dec, n)
        return dense_codes(main.rows, main.cols, codes.vals, n, self.cfg.d_sae) @ self.W_dec + self.b_dec

    def _auxk(self, codes: ActiveCodes, x_hat: Tensor, sparse: bool, residual: Tensor | None = None) -> Tensor | None:
        """AuxK (Gao et al. 2024): the top aux_k dead latents reconstruct the residual x − x_hat
        (``residual`` if the caller has it already)."""
        if codes.aux.scale is None:
            return None
        x, rows, cols, vals = codes.x, codes.aux.rows, codes.aux.cols, codes.aux_vals
        n = x.shape[0]
        # The residual the dead latents should explain.
        e = residual if residual is not None else (x - x_hat).detach()
        if sparse:
            e_hat = sparse_decode(rows, cols, vals, self.W_dec, None, n)
        else:
            e_hat = dense_codes(rows, cols, vals, n, self.cfg.d_sae) @ self.W_dec
        # Normalised by the residual's variance so the loss is scale-free (as sparsify):
        # Σ‖e − ē‖²/B = Σ‖e‖²/B − ‖ē‖² (two passes over e instead of four).
        flat, mean = e.reshape(-1), e.mean(0)
        denom = (torch.dot(flat, flat) / n - torch.dot(mean, mean)).clamp_min(1e-12)
        return codes.aux.scale * mse_per_token(e_hat, e) / denom

    def _finish(
        self, codes: ActiveCodes, x_hat: Tensor, recon: Tensor, parts: dict[str, Tensor],
        aux: Tensor | None,
    ) -> TrainLoss:
        loss = recon
        if aux is not None:
            loss = loss + self.cfg.aux_coef * aux
            parts["auxk"] = aux.detach()
        live = codes.vals.detach() > 0
        # A weighted bincount: ~0.25 ms against ~2.2 ms for a bool index_put of 131k entries here.
        fired = torch.bincount(codes.main.cols, weights=live.to(recon.dtype), minlength=self.cfg.d_sae) > 0
        l0 = live.sum().to(recon.dtype) / codes.x.shape[0]
        parts["l0"] = l0
        return TrainLoss(loss, parts, x_hat.detach(), fired, l0, codes.main.threshold)

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
        codes = self._encode_active(x, dead_mask, sparse)
        x_hat = self._decode_active(codes, sparse)
        mse = mse_per_token(x_hat, codes.x)
        aux = self._auxk(codes, x_hat, sparse)
        return self._finish(codes, x_hat, mse, {"mse": mse.detach()}, aux)

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
    saelens_architecture: ClassVar[str | None] = "topk"
    sparsify_activation: ClassVar[str | None] = "topk"

    def _select(self, pre: Tensor) -> Selection:
        if self.cfg.rescale_acts_by_decoder_norm:
            pre = pre * self.W_dec.detach().norm(dim=-1)
        return Selection(*topk_per_row(pre, self.cfg.k), None)

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

    @classmethod
    def saelens_options(cls, cfg: Mapping[str, Any]) -> dict[str, Any]:
        """k (SAELens's default 100 when absent) and rescale_acts_by_decoder_norm."""
        return {"k": int(cfg.get("k", 100)),
                "rescale_acts_by_decoder_norm": bool(cfg.get("rescale_acts_by_decoder_norm", False))}

    def sparsify_view(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """sparsify's TopK layout: ``encoder.weight`` is W_encᵀ [n, d_in]; b_dec is always subtracted."""
        if self.cfg.rescale_acts_by_decoder_norm:
            raise ValueError("sparsify TopK SAEs select and decode without decoder-norm rescaling; this SAE has "
                             "rescale_acts_by_decoder_norm=True. Use sae.save(path) for the SAELens layout instead.")
        if not self.cfg.apply_b_dec_to_input:
            raise ValueError("sparsify always subtracts b_dec from the input; this SAE does not.")
        cfg = {"activation": "topk", "expansion_factor": max(1, self.cfg.d_sae // self.cfg.d_in),
               "normalize_decoder": True, "num_latents": self.cfg.d_sae, "k": self.cfg.k,
               "multi_topk": False, "skip_connection": False, "transcode": False,
               "d_in": self.cfg.d_in}
        tensors = {"encoder.weight": self.W_enc.T, "encoder.bias": self.b_enc,
                   "W_dec": self.W_dec, "b_dec": self.b_dec}
        return cfg, tensors

    @classmethod
    def from_sparsify(
        cls, cfg: Mapping[str, Any], tensors: Mapping[str, Tensor], *, metadata: dict[str, Any] | None = None,
        where: str = "sae.safetensors",
    ) -> SAE:
        if "encoder.weight" not in tensors:
            raise ValueError(f"{where!r}: no 'encoder.weight' tensor; not a sparsify SAE.")
        n, d_in = tensors["encoder.weight"].shape
        if cfg.get("d_in", d_in) != d_in:
            raise ValueError(f"{where!r}: cfg d_in={cfg.get('d_in')} but encoder.weight is {[n, d_in]}.")
        if isinstance(cfg.get("k"), bool) or not isinstance(cfg.get("k"), int):
            raise ValueError(f"{where!r}: sparsify cfg.json needs an int 'k'; got {cfg.get('k')!r}.")
        check_tensors(where, tensors, {"encoder.weight": (n, d_in), "encoder.bias": (n,),
                                       "W_dec": (n, d_in), "b_dec": (d_in,)})
        config = TopKConfig(d_in=d_in, d_sae=n, k=cfg["k"], dtype=DTYPE_NAMES[tensors["W_dec"].dtype])
        return cls.restore(config, {"W_enc": tensors["encoder.weight"].T, "b_enc": tensors["encoder.bias"],
                                    "W_dec": tensors["W_dec"], "b_dec": tensors["b_dec"]},
                           metadata=metadata, where=where)


@dataclass(frozen=True)
class BatchTopKConfig(TopKConfig):
    """BatchTopK: the B·k largest activations of the whole batch in training; a learned
    per-batch threshold (a JumpReLU) at inference."""

    architecture: ClassVar[str] = "batchtopk"

    threshold_decay: float = 0.9
    """Decay of the bias-corrected running mean of each batch's smallest selected
    activation. Short memory on purpose: SAELens's EMA starts at 0 with rate 0.01 and, in a
    98-step run, ends far below the training threshold (~290 latents fire per token at
    inference instead of 32, measured on SmolLM2 layer 6). A bias-corrected mean over the
    last ~10 batches tracks the threshold the current weights actually need."""

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

    def _select(self, pre: Tensor) -> Selection:
        return Selection(*topk_batch(pre, self.cfg.k))

    def after_step(self, loss: TrainLoss | None = None) -> None:
        """Decoder renorm and the threshold update from the step's ``training_loss`` result.

            out = sae.training_loss(x); out.loss.backward(); opt.step(); sae.after_step(out)
        """
        if loss is None or loss.batch_threshold is None:
            raise ValueError(
                f"{type(self).__name__}.after_step needs the step's training_loss result, whose batch "
                "threshold it folds into the inference threshold: sae.after_step(out)."
            )
        super().after_step(loss)
        d = self.cfg.threshold_decay
        self.threshold_sum.mul_(d).add_(loss.batch_threshold.to(torch.float64))
        self.threshold_weight.mul_(d).add_(1.0)

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

