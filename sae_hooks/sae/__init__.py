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
- `view, kw = sae.inference_variant(width=..., k=..., residual_threshold=...)` gives either of
  the last two (or a clear error for an architecture without that setting).

Modules: `base` (the SAE base class), one module per architecture (`standard`, `topk`,
`jumprelu`, `matryoshka`, `mp` with its pursuit engine `pursuit` and C glue `mp_native`),
`sparse` (sparse training kernels), `registry` (the architecture table, `make_sae`, run options,
CLI specs), `layout` (folder bytes) and `formats` (matching folders to classes, `load_sae`).
"""

from __future__ import annotations

from .base import SAE, InferenceVariant, SAEConfig, SAEOutput, TrainLoss, check_input
from .formats import load_sae, save_saelens, save_sparsify
from .jumprelu import JumpReLUConfig, JumpReLUSAE
from .matryoshka import MatryoshkaConfig, MatryoshkaSAE
from .mp import MPConfig, MPSAE
from .pursuit import MPResult, matching_pursuit
from .registry import ARCHITECTURES, SAESpec, architecture_class, make_sae, parse_sae_spec, train_options
from .standard import StandardConfig, StandardSAE
from .topk import BatchTopKConfig, BatchTopKSAE, TopKConfig, TopKSAE

__all__ = [
    "ARCHITECTURES", "SAE", "SAEConfig", "SAEOutput", "SAESpec", "TrainLoss", "InferenceVariant", "MPResult",
    "StandardSAE", "TopKSAE", "BatchTopKSAE", "JumpReLUSAE", "MatryoshkaSAE", "MPSAE",
    "StandardConfig", "TopKConfig", "BatchTopKConfig", "JumpReLUConfig",
    "MatryoshkaConfig", "MPConfig",
    "architecture_class", "make_sae", "train_options", "parse_sae_spec",
    "load_sae", "save_saelens", "save_sparsify", "matching_pursuit", "check_input",
]
