"""The table of SAE architectures and what is built from it: fresh SAEs, a run's default options,
and the command-line spec ``ARCH:HOOK[:key=value...]``.

Adding an architecture = one class (which owns its options, its training defaults and its
on-disk mapping) plus one line in ``ARCHITECTURES``.

    sae = make_sae("topk", d_in=576, d_sae=4608, k=32, seed=0)
    spec = parse_sae_spec("matryoshka:resid_post.6:d_sae=4608:widths=512,1152,2304,4608")
    opts = {**train_options(spec.arch, 4608, k=32, l1_coef=5.0), **spec.options}
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .base import SAE
from .jumprelu import JumpReLUSAE
from .matryoshka import MatryoshkaSAE
from .mp import MPSAE
from .standard import StandardSAE
from .topk import BatchTopKSAE, TopKSAE

__all__ = ["ARCHITECTURES", "SAESpec", "architecture_class", "make_sae", "parse_sae_spec", "train_options"]

ARCHITECTURES: dict[str, type[SAE]] = {
    "standard": StandardSAE,
    "topk": TopKSAE,
    "batchtopk": BatchTopKSAE,
    "jumprelu": JumpReLUSAE,
    "matryoshka": MatryoshkaSAE,
    "matching_pursuit": MPSAE,
}


def architecture_class(name: str) -> type[SAE]:
    """The SAE class registered as ``name``, or a ValueError listing the valid names.

        cls = architecture_class("topk")      # TopKSAE
    """
    cls = ARCHITECTURES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown SAE architecture {name!r}; valid: {sorted(ARCHITECTURES)}.")
    return cls


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
    cls = architecture_class(architecture)
    cls.check_options(arch_kwargs)
    sae = cls(cls.config_class(d_in=d_in, d_sae=d_sae, **arch_kwargs), metadata=metadata)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    sae.reset_parameters(gen)
    return sae


def train_options(arch: str, d_sae: int, *, k: int, l1_coef: float) -> dict[str, Any]:
    """The options a training run gives an SAE of ``arch`` with ``d_sae`` latents, from the run-wide
    sparsity settings; each architecture takes what applies to it (see ``SAE.train_options``).

        train_options("matryoshka", 4608, k=32, l1_coef=5.0)
        # {'k': 32, 'widths': (512, 1152, 2304, 4608)}
    """
    return architecture_class(arch).train_options(d_sae, k=k, l1_coef=l1_coef)


class SAESpec(NamedTuple):
    """One parsed ``ARCH:HOOK[:key=value...]`` spec."""

    arch: str
    """Architecture name (a key of ``ARCHITECTURES``)."""
    hook: str
    """Hook point, as written (the adapter resolves it)."""
    d_sae: int | None
    """``d_sae=`` if given, else None (the run's default width)."""
    options: dict[str, Any]
    """The other ``key=value`` pairs, typed as the architecture's config fields."""


SPEC_SYNTAX = "ARCH:HOOK[:key=value...], e.g. topk:resid_post.6:d_sae=4608:k=32"


def parse_sae_spec(text: str) -> SAESpec:
    """Parse ``ARCH:HOOK[:key=value...]``; values are typed by the architecture's config fields.

        parse_sae_spec("topk:resid_post.6:d_sae=4608:k=32")
        # SAESpec(arch='topk', hook='resid_post.6', d_sae=4608, options={'k': 32})
    """
    if not isinstance(text, str):
        raise TypeError(f"an SAE spec is a string {SPEC_SYNTAX}; got {type(text).__name__}.")
    parts = text.split(":")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ValueError(f"SAE spec {text!r}: expected {SPEC_SYNTAX}.")
    arch, hook, items = parts[0], parts[1], parts[2:]
    try:
        cls = architecture_class(arch)
    except ValueError as e:
        raise ValueError(f"SAE spec {text!r}: {e}") from None
    pairs: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"SAE spec {text!r}: option {item!r} is not key=value ({SPEC_SYNTAX}).")
        if key in pairs:
            raise ValueError(f"SAE spec {text!r}: option {key!r} is given twice.")
        pairs[key] = value
    try:
        options = cls.parse_options(pairs)
    except ValueError as e:
        raise ValueError(f"SAE spec {text!r}: {e}") from None
    d_sae = options.pop("d_sae", None)
    return SAESpec(arch, hook, d_sae, options)
