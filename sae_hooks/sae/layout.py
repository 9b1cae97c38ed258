"""The bytes of an SAE folder on disk: file names, atomic writes, checked reads. Knows no SAE class.

Two layouts share a folder shape, a ``cfg.json`` beside one safetensors file:
- SAELens v6 (ours): ``sae_weights.safetensors`` with ``W_enc`` [d_in, d_sae], ``b_enc``,
  ``W_dec`` [d_sae, d_in], ``b_dec`` (plus what the architecture adds, e.g. ``threshold``); our own
  fields sit in ``cfg.json`` under ``metadata.sae_hooks``, which SAELens ignores.
- EleutherAI sparsify: ``sae.safetensors`` with ``encoder.weight`` [n, d_in], ``encoder.bias``,
  ``W_dec`` [n, d_in], ``b_dec``.

Which tensors and fields an architecture writes is the SAE class's business (``saelens_view``);
matching a folder to a class is ``formats.py``'s.

    write_saelens("out/l6", d_in=576, d_sae=4608, ..., tensors=tensors, metadata={...}, ours={...})
    cfg, tensors = read_json(folder / SAELENS_CFG), read_tensors(folder / SAELENS_WEIGHTS)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save
from torch import Tensor

from .._io import atomic_write_bytes

SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SPARSIFY_WEIGHTS = "sae.safetensors"
# Written into metadata so SAELens treats the folder as v6 layout (older versions get
# their keys renamed and our metadata dropped by its pre-6.0 converter).
SAELENS_LAYOUT_VERSION = "6.0.0"
OUR_KEY = "sae_hooks"
"""Key under ``metadata`` holding our architecture name, config fields and extra state."""


# ---- writing ----------------------------------------------------------------------------


def prepare_dir(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"save path {str(p)!r} exists and is not a folder; pick a folder path.")
    return p


def write_folder(p: Path, files: Mapping[str, bytes]) -> None:
    """All bytes are built before this runs, so a bad input writes nothing. The config is
    replaced last so a reader never sees a new cfg.json beside old weights."""
    p.mkdir(parents=True, exist_ok=True)
    for name in sorted(files, key=lambda n: n.endswith(".json")):
        atomic_write_bytes(p / name, files[name])


def tensor_bytes(tensors: Mapping[str, Tensor]) -> bytes:
    return st_save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})


def write_saelens(
    path: str | os.PathLike, *, d_in: int, d_sae: int, dtype: str, apply_b_dec_to_input: bool,
    arch_cfg: Mapping[str, Any], tensors: Mapping[str, Tensor], metadata: Mapping[str, Any],
    ours: Mapping[str, Any],
) -> None:
    """Write a SAELens v6 folder: the common fields and ``arch_cfg`` (architecture and its fields)
    at the top of cfg.json, ``ours`` under ``metadata.sae_hooks``. Nothing is written when the
    metadata is not JSON.

        write_saelens("out/a", d_in=8, d_sae=16, dtype="float32", apply_b_dec_to_input=True,
                      arch_cfg={"architecture": "topk", "k": 2}, tensors=t, metadata={}, ours={})
    """
    p = prepare_dir(path)
    meta = dict(metadata)
    meta["sae_lens_version"] = meta.get("sae_lens_version") or SAELENS_LAYOUT_VERSION
    meta[OUR_KEY] = dict(ours)
    cfg = {
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": dtype,
        "device": "cpu",
        "apply_b_dec_to_input": apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        **arch_cfg,
        "metadata": meta,
    }
    try:
        cfg_bytes = json.dumps(cfg, indent=2, allow_nan=False).encode()
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"metadata must be JSON-serialisable (str/int/float/bool/None/list/dict, no NaN); "
            f"{e}. Nothing was written to {str(p)!r}."
        ) from None
    write_folder(p, {SAELENS_WEIGHTS: tensor_bytes(tensors), SAELENS_CFG: cfg_bytes})


def write_sparsify(path: str | os.PathLike, cfg: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> None:
    """Write a sparsify layer folder (cfg.json + sae.safetensors)."""
    p = prepare_dir(path)
    write_folder(p, {SPARSIFY_WEIGHTS: tensor_bytes(tensors), SAELENS_CFG: json.dumps(cfg, indent=2).encode()})


# ---- reading ----------------------------------------------------------------------------


def read_json(path: Path) -> dict[str, Any]:
    """A cfg.json as a dict; a ValueError naming the file when it is not a JSON object of finite numbers."""
    def refuse(constant: str) -> float:
        raise ValueError(f"{str(path)!r} holds the non-finite number {constant}; the folder is damaged.")

    try:
        cfg = json.loads(path.read_text(), parse_constant=refuse)
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(path)!r} is not valid JSON ({e}); the folder is damaged.") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object; got {type(cfg).__name__}.")
    return cfg


def read_tensors(path: Path) -> dict[str, Tensor]:
    """Every tensor of a safetensors file; a ValueError for an unreadable file or a tensor holding
    NaN or inf (an SAE with such weights gives NaN metrics or fails inside sampling, far from here)."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise ValueError(
            f"{str(path)!r} is not a readable safetensors file (truncated or corrupt?): {e}. "
            "Re-save or re-download it."
        ) from None
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            n_nan = int(torch.isnan(t).sum())
            n_inf = int(torch.isinf(t).sum())
            raise ValueError(
                f"{str(path)!r}: tensor {name!r} holds {n_nan} NaN and {n_inf} inf values (of {t.numel()}); "
                "an SAE with non-finite weights cannot be used. Re-train it, or re-download the file."
            )
    return tensors


def check_tensors(where: str, got: Mapping[str, Tensor], want: Mapping[str, tuple[int, ...]]) -> None:
    """A ValueError naming ``where`` unless ``got`` holds exactly the tensors of ``want``, in those shapes."""
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    if missing or extra:
        raise ValueError(
            f"{where!r}: expected tensors {sorted(want)}; missing {missing}, "
            f"unexpected {extra}. Is this the right architecture in cfg.json?"
        )
    for name, shape in want.items():
        if tuple(got[name].shape) != shape:
            raise ValueError(
                f"{where!r}: tensor {name!r} has shape {tuple(got[name].shape)}, "
                f"expected {shape} from cfg.json (d_in, d_sae). The checkpoint and its "
                "config disagree."
            )
