"""Sparse autoencoders: one class per architecture, an explicit table, SAELens-layout I/O.

    from sae_hooks.sae import make_sae, load_sae
    sae = make_sae("topk", d_in=576, d_sae=4608, k=32, seed=0)
    sae.save("out/l6"); same = load_sae("out/l6")

Evaluation entry points:
- any SAE: `sae.encode(x)`, `sae.decode(z)`, `sae(x).x_hat`; `sae.pruned(indices)` keeps
  a subset of latents (a new SAE of the same class).
- matching pursuit: `sae.encode(x, k=K, residual_threshold=eps)` (or `sae.pursue(...)`
  for per-step values and residual norms) evaluates at any inference k / threshold.
- Matryoshka: `sae.prefix(width)` is the SAE made of the first `width` latents.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .base import SAE, SAEConfig, SAEOutput, TrainLoss, check_input
from .formats import load_sae, save_saelens, save_sparsify
from .jumprelu import JumpReLUConfig, JumpReLUSAE
from .matryoshka import MatryoshkaConfig, MatryoshkaSAE
from .mp import MPConfig, MPResult, MPSAE, matching_pursuit
from .standard import StandardConfig, StandardSAE
from .topk import BatchTopKConfig, BatchTopKSAE, TopKConfig, TopKSAE

ARCHITECTURES: dict[str, type[SAE]] = {
    "standard": StandardSAE,
    "topk": TopKSAE,
    "batchtopk": BatchTopKSAE,
    "jumprelu": JumpReLUSAE,
    "matryoshka": MatryoshkaSAE,
    "matching_pursuit": MPSAE,
}


def make_sae(
    architecture: str,
    d_in: int,
    d_sae: int,
    *,
    seed: int | None = None,
    metadata: dict[str, Any] | None = None,
    **arch_kwargs: Any,
) -> SAE:
    """Build an SAE with fresh weights (unit-norm random decoder rows, W_enc = W_decᵀ).

    `seed` seeds a private torch.Generator (same seed → same weights, global RNG
    untouched); `seed=None` draws from the global torch RNG. `arch_kwargs` are the
    architecture's config fields (e.g. k, widths, l1_coef, dtype).

        sae = make_sae("matryoshka", 576, 4608, k=32, widths=(512, 1152, 2304, 4608), seed=0)
    """
    cls = ARCHITECTURES.get(architecture)
    if cls is None:
        raise ValueError(
            f"unknown SAE architecture {architecture!r}; valid: {sorted(ARCHITECTURES)}."
        )
    cfg_cls = cls.config_class
    valid = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(arch_kwargs) - valid)
    if unknown:
        raise ValueError(
            f"{architecture!r} SAEs have no option(s) {unknown}; valid: "
            f"{sorted(valid - {'d_in', 'd_sae'})}."
        )
    cfg = cfg_cls(d_in=d_in, d_sae=d_sae, **arch_kwargs)
    sae = cls(cfg, metadata=metadata)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    sae.reset_parameters(gen)
    return sae


__all__ = [
    "ARCHITECTURES", "SAE", "SAEConfig", "SAEOutput", "TrainLoss", "MPResult",
    "StandardSAE", "TopKSAE", "BatchTopKSAE", "JumpReLUSAE", "MatryoshkaSAE", "MPSAE",
    "StandardConfig", "TopKConfig", "BatchTopKConfig", "JumpReLUConfig",
    "MatryoshkaConfig", "MPConfig",
    "make_sae", "load_sae", "save_saelens", "save_sparsify", "matching_pursuit", "check_input",
]
