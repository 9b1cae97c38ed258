"""Loading and saving SAE folders: SAELens v6 folders (native) and EleutherAI sparsify folders.

The folder's bytes are `layout.py`'s business and each architecture's tensors and fields its
class's (``saelens_view`` / ``from_saelens``, ``sparsify_view`` / ``from_sparsify``); this module
matches a folder to a class. Folders we wrote keep our architecture name, config and extra
state under ``metadata.sae_hooks`` (SAELens ignores unknown metadata keys), so BatchTopK and
Matryoshka SAEs load in SAELens as the JumpReLU they are at inference and in sae_hooks as
themselves.

    sae.save("out/l6_topk", metadata={"hook_name": "blocks.6.hook_resid_post"})
    sae = load_sae("out/l6_topk")         # or a SAELens folder, or a sparsify layer folder
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .base import SAE
from .layout import (
    OUR_KEY, SAELENS_CFG, SAELENS_WEIGHTS, SPARSIFY_WEIGHTS, read_json, read_tensors, write_sparsify,
)
from .registry import ARCHITECTURES

# Which class reads a SAELens architecture / a sparsify activation: each class says so itself.
SAELENS_READERS: dict[str, type[SAE]] = {
    cls.saelens_architecture: cls for cls in ARCHITECTURES.values() if cls.saelens_architecture
}
SPARSIFY_READERS: dict[str, type[SAE]] = {
    cls.sparsify_activation: cls for cls in ARCHITECTURES.values() if cls.sparsify_activation
}


def save_saelens(sae: SAE, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> None:
    """Save `sae` as a SAELens v6 folder that `sae_lens.SAE.load_from_disk` opens (= ``sae.save``).

        save_saelens(sae, "out/topk", metadata={"model_name": "smollm2-135m"})
    """
    sae.save(path, metadata=metadata)


def save_sparsify(sae: SAE, path: str | os.PathLike) -> None:
    """Save an SAE as a sparsify layer folder (cfg.json + sae.safetensors); TopK SAEs only.

        save_sparsify(sae, "out/sparsify/layers.6")
    """
    cfg, tensors = sae.sparsify_view()
    write_sparsify(path, cfg, tensors)


def load_sae(path: str | os.PathLike) -> SAE:
    """Load a SAELens v6 folder (ours or SAELens's) or a sparsify layer folder.

    Encode/decode follow SAELens semantics for the stored architecture. Folders we wrote
    come back as their own class (e.g. BatchTopK / Matryoshka, not JumpReLU). Tensors holding
    NaN or inf are refused, naming the tensor and the file.

        sae = load_sae("out/l6_topk")
        z = sae.encode(x)
    """
    p = Path(path)
    if not p.is_dir():
        raise ValueError(f"load_sae needs a folder with cfg.json; {str(p)!r} is not a folder.")
    cfg_path = p / SAELENS_CFG
    if not cfg_path.exists():
        raise ValueError(
            f"{str(p)!r} has no cfg.json (found {sorted(x.name for x in p.iterdir())}). "
            "Expected a SAELens folder (cfg.json + sae_weights.safetensors) or a sparsify "
            "layer folder (cfg.json + sae.safetensors)."
        )
    if (p / SAELENS_WEIGHTS).exists():
        return _load_saelens(p, read_json(cfg_path))
    if (p / SPARSIFY_WEIGHTS).exists():
        return _load_sparsify(p, read_json(cfg_path))
    raise ValueError(
        f"{str(p)!r} has cfg.json but neither {SAELENS_WEIGHTS} (SAELens) nor "
        f"{SPARSIFY_WEIGHTS} (sparsify)."
    )


def _load_saelens(p: Path, cfg: dict[str, Any]) -> SAE:
    meta = dict(cfg.get("metadata") or {})
    ours = meta.pop(OUR_KEY, None)
    weights = p / SAELENS_WEIGHTS
    if ours is not None:  # a folder we wrote: our class, config and state
        arch = ours.get("architecture")
        cls = ARCHITECTURES.get(arch)
        if cls is None:
            raise ValueError(
                f"{str(p)!r}: unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}."
            )
        fields = dict(ours.get("config") or {})
        fields.pop("architecture", None)
        cls.check_options({k: v for k, v in fields.items() if k not in ("d_in", "d_sae")})
        config = cls.config_class(**fields)
        return cls.restore(config, read_tensors(weights), metadata=meta, state=ours.get("state"),
                           where=str(weights))

    arch = cfg.get("architecture", "standard")
    cls = SAELENS_READERS.get(arch)
    if cls is None:
        raise ValueError(
            f"{str(p)!r}: SAELens architecture {arch!r} is not supported; supported: "
            f"{list(SAELENS_READERS)}."
        )
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", "expected_average_only_in", None, False):
        # SAELens applies these two at run time from per-input statistics.
        raise ValueError(
            f"{str(p)!r}: normalize_activations={norm!r} is not supported (only 'none' and "
            "'expected_average_only_in', which SAELens applies as identity at inference)."
        )
    if cfg.get("reshape_activations", "none") not in ("none", None):
        raise ValueError(
            f"{str(p)!r}: reshape_activations={cfg['reshape_activations']!r} (hook_z SAEs) is "
            "not supported; flatten heads yourself and use a plain SAE."
        )
    tensors = read_tensors(weights)
    scaling = tensors.pop("scaling_factor", None)
    if scaling is not None and not torch.all(scaling == 1):
        raise ValueError(
            f"{str(weights)!r}: a non-trivial finetuning scaling_factor is not supported."
        )
    return cls.from_saelens(cfg, tensors, metadata=meta, where=str(weights))


def _load_sparsify(p: Path, cfg: dict[str, Any]) -> SAE:
    for flag in ("skip_connection", "transcode"):
        if cfg.get(flag):
            raise ValueError(f"{str(p)!r}: sparsify {flag}=True coders are not supported.")
    activation = cfg.get("activation", "topk")
    cls = SPARSIFY_READERS.get(activation)
    if cls is None:
        raise ValueError(
            f"{str(p)!r}: sparsify activation {activation!r} is not supported "
            f"(only {', '.join(map(repr, SPARSIFY_READERS))})."
        )
    weights = p / SPARSIFY_WEIGHTS
    # sparsify names hooks relative to the base model: the folder name ("layers.10").
    return cls.from_sparsify(cfg, read_tensors(weights), metadata={"hook_name": p.name, "source_format": "sparsify"},
                             where=str(weights))
