"""On-disk formats: SAELens v6 folders (native) and EleutherAI sparsify folders.

SAELens v6: `cfg.json` + `sae_weights.safetensors` with `W_enc` [d_in, d_sae], `b_enc`,
`W_dec` [d_sae, d_in], `b_dec`, plus `threshold` for jumprelu; matching_pursuit stores
only `W_dec` and `b_dec`. Our own fields live in `cfg.json` under `metadata.sae_hooks`
(SAELens ignores unknown metadata keys), so BatchTopK/Matryoshka SAEs load in SAELens as
the JumpReLU they are at inference and in sae_hooks as themselves.

sparsify: `cfg.json` (k, num_latents / expansion_factor, d_in, ...) + `sae.safetensors`
with `encoder.weight` [n, d_in], `encoder.bias`, `W_dec` [n, d_in], `b_dec`.

    sae.save("out/l6_topk", metadata={"hook_name": "blocks.6.hook_resid_post"})
    sae = load_sae("out/l6_topk")         # or a SAELens folder, or a sparsify layer folder
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save
from torch import Tensor

from .._io import atomic_write_bytes
from .base import DTYPES, SAE
from .registry import ARCHITECTURES, make_sae

SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SPARSIFY_WEIGHTS = "sae.safetensors"
# Written into metadata so SAELens treats the folder as v6 layout (older versions get
# their keys renamed and our metadata dropped by its pre-6.0 converter).
SAELENS_LAYOUT_VERSION = "6.0.0"
_OUR_KEY = "sae_hooks"
_SAELENS_ARCHS = ("standard", "topk", "jumprelu", "matching_pursuit")


# ---- writing ----------------------------------------------------------------------------


def _prepare_dir(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"save path {str(p)!r} exists and is not a folder; pick a folder path.")
    return p


def _write_folder(p: Path, files: dict[str, bytes]) -> None:
    """All bytes are built before this runs, so a bad input writes nothing. The config is
    replaced last so a reader never sees a new cfg.json beside old weights."""
    p.mkdir(parents=True, exist_ok=True)
    names = sorted(files, key=lambda n: n.endswith(".json"))
    for name in names:
        atomic_write_bytes(p / name, files[name])


def _tensor_bytes(tensors: dict[str, Tensor]) -> bytes:
    return st_save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})


def save_saelens(sae: SAE, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> None:
    """Save `sae` as a SAELens v6 folder that `sae_lens.SAE.load_from_disk` opens.

        save_saelens(sae, "out/topk", metadata={"model_name": "smollm2-135m"})
    """
    p = _prepare_dir(path)
    arch_cfg, tensors = sae.saelens_view()
    meta = {**sae.metadata, **(metadata or {})}
    meta["sae_lens_version"] = meta.get("sae_lens_version") or SAELENS_LAYOUT_VERSION
    meta[_OUR_KEY] = {
        "architecture": sae.architecture,
        "config": _jsonable_cfg(sae),
        "state": sae.extra_state(),
    }
    cfg = {
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "dtype": sae.cfg.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": sae.cfg.apply_b_dec_to_input,
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
    _write_folder(p, {SAELENS_WEIGHTS: _tensor_bytes(tensors), SAELENS_CFG: cfg_bytes})


def save_sparsify(sae: SAE, path: str | os.PathLike) -> None:
    """Save a TopK SAE as a sparsify layer folder (cfg.json + sae.safetensors).

        save_sparsify(sae, "out/sparsify/layers.6")
    """
    from .topk import TopKSAE

    if type(sae) is not TopKSAE or sae.cfg.rescale_acts_by_decoder_norm:
        raise ValueError(
            f"sparsify folders hold TopK SAEs only; got {sae.architecture!r}. "
            "Use sae.save(path) for the SAELens layout instead."
        )
    if not sae.cfg.apply_b_dec_to_input:
        raise ValueError("sparsify always subtracts b_dec from the input; this SAE does not.")
    p = _prepare_dir(path)
    cfg = {"activation": "topk", "expansion_factor": max(1, sae.cfg.d_sae // sae.cfg.d_in),
           "normalize_decoder": True, "num_latents": sae.cfg.d_sae, "k": sae.cfg.k,
           "multi_topk": False, "skip_connection": False, "transcode": False,
           "d_in": sae.cfg.d_in}
    tensors = {"encoder.weight": sae.W_enc.T, "encoder.bias": sae.b_enc,
               "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    _write_folder(p, {SPARSIFY_WEIGHTS: _tensor_bytes(tensors),
                      SAELENS_CFG: json.dumps(cfg, indent=2).encode()})


def _jsonable_cfg(sae: SAE) -> dict[str, Any]:
    out = {}
    for k, v in sae.cfg.to_dict().items():
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


# ---- reading ----------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    def refuse(constant: str) -> float:
        raise ValueError(f"{str(path)!r} holds the non-finite number {constant}; the folder is damaged.")

    try:
        cfg = json.loads(path.read_text(), parse_constant=refuse)
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(path)!r} is not valid JSON ({e}); the folder is damaged.") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object; got {type(cfg).__name__}.")
    return cfg


def _read_tensors(path: Path) -> dict[str, Tensor]:
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


def _check_tensors(
    where: Path, got: dict[str, Tensor], want: dict[str, tuple[int, ...]],
    ignore: tuple[str, ...] = (),
) -> None:
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want and k not in ignore]
    if missing or extra:
        raise ValueError(
            f"{str(where)!r}: expected tensors {sorted(want)}; missing {missing}, "
            f"unexpected {extra}. Is this the right architecture in cfg.json?"
        )
    for name, shape in want.items():
        if tuple(got[name].shape) != shape:
            raise ValueError(
                f"{str(where)!r}: tensor {name!r} has shape {tuple(got[name].shape)}, "
                f"expected {shape} from cfg.json (d_in, d_sae). The checkpoint and its "
                "config disagree."
            )


def _want_shapes(sae: SAE, with_threshold: bool) -> dict[str, tuple[int, ...]]:
    d_in, d_sae = sae.cfg.d_in, sae.cfg.d_sae
    want: dict[str, tuple[int, ...]] = {"W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if not sae.tied:
        want |= {"W_enc": (d_in, d_sae), "b_enc": (d_sae,)}
    if with_threshold:
        want["threshold"] = (d_sae,)
    return want


@torch.no_grad()
def _assign(sae: SAE, tensors: dict[str, Tensor]) -> None:
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        if name in tensors and not (sae.tied and name in ("W_enc", "b_enc")):
            getattr(sae, name).copy_(tensors[name])


def load_sae(path: str | os.PathLike) -> SAE:
    """Load a SAELens v6 folder (ours or SAELens's) or a sparsify layer folder.

    Encode/decode follow SAELens semantics for the stored architecture. Folders we wrote
    come back as their own class (e.g. BatchTopK / Matryoshka, not JumpReLU).

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
        return _load_saelens(p, _read_json(cfg_path))
    if (p / SPARSIFY_WEIGHTS).exists():
        return _load_sparsify(p, _read_json(cfg_path))
    raise ValueError(
        f"{str(p)!r} has cfg.json but neither {SAELENS_WEIGHTS} (SAELens) nor "
        f"{SPARSIFY_WEIGHTS} (sparsify)."
    )


def _load_saelens(p: Path, cfg: dict[str, Any]) -> SAE:
    meta = dict(cfg.get("metadata") or {})
    ours = meta.pop(_OUR_KEY, None)
    weights = p / SAELENS_WEIGHTS
    if ours is not None:
        arch = ours.get("architecture")
        if arch not in ARCHITECTURES:
            raise ValueError(
                f"{str(p)!r}: unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}."
            )
        fields = dict(ours.get("config") or {})
        fields.pop("architecture", None)
        sae = make_sae(arch, metadata=meta, **fields)
        tensors = _read_tensors(weights)
        saved_arch = cfg.get("architecture")
        _check_tensors(weights, tensors, _want_shapes(sae, saved_arch == "jumprelu"))
        _assign(sae, tensors)
        if arch == "jumprelu":
            sae.set_threshold(tensors["threshold"])
        sae.load_extra_state(ours.get("state") or {})
        return sae

    arch = cfg.get("architecture", "standard")
    if arch not in _SAELENS_ARCHS:
        raise ValueError(
            f"{str(p)!r}: SAELens architecture {arch!r} is not supported; supported: "
            f"{list(_SAELENS_ARCHS)}."
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
    for key in ("d_in", "d_sae"):
        if not isinstance(cfg.get(key), int):
            raise ValueError(f"{str(p)!r}: cfg.json needs an int {key!r}; got {cfg.get(key)!r}.")
    dtype = str(cfg.get("dtype", "float32")).removeprefix("torch.")
    if dtype not in DTYPES:
        raise ValueError(f"{str(p)!r}: dtype {dtype!r} not in {sorted(DTYPES)}.")
    common = {"d_in": cfg["d_in"], "d_sae": cfg["d_sae"], "dtype": dtype,
              "apply_b_dec_to_input": bool(cfg.get("apply_b_dec_to_input", True))}
    if arch == "topk":
        extra = {"k": int(cfg.get("k", 100)),
                 "rescale_acts_by_decoder_norm": bool(cfg.get("rescale_acts_by_decoder_norm", False))}
    elif arch == "matching_pursuit":
        max_it = cfg.get("max_iterations")
        extra = {"k": int(max_it) if max_it is not None else cfg["d_in"],
                 "residual_threshold": float(cfg.get("residual_threshold", 1e-2)),
                 "stop_on_duplicate_support": bool(cfg.get("stop_on_duplicate_support", True))}
    else:
        extra = {}
    sae = make_sae(arch, metadata=meta, **common, **extra)
    tensors = _read_tensors(weights)
    if "scaling_factor" in tensors:
        if not torch.all(tensors["scaling_factor"] == 1):
            raise ValueError(
                f"{str(weights)!r}: a non-trivial finetuning scaling_factor is not supported."
            )
    _check_tensors(weights, tensors, _want_shapes(sae, arch == "jumprelu"),
                   ignore=("scaling_factor",))
    _assign(sae, tensors)
    if arch == "jumprelu":
        sae.set_threshold(tensors["threshold"])
    return sae


def _load_sparsify(p: Path, cfg: dict[str, Any]) -> SAE:
    for flag in ("skip_connection", "transcode"):
        if cfg.get(flag):
            raise ValueError(f"{str(p)!r}: sparsify {flag}=True coders are not supported.")
    if cfg.get("activation", "topk") != "topk":
        raise ValueError(
            f"{str(p)!r}: sparsify activation {cfg.get('activation')!r} is not supported "
            "(only 'topk')."
        )
    weights = p / SPARSIFY_WEIGHTS
    tensors = _read_tensors(weights)
    if "encoder.weight" not in tensors:
        raise ValueError(f"{str(weights)!r}: no 'encoder.weight' tensor; not a sparsify SAE.")
    n, d_in = tensors["encoder.weight"].shape
    if cfg.get("d_in", d_in) != d_in:
        raise ValueError(f"{str(p)!r}: cfg d_in={cfg.get('d_in')} but encoder.weight is {[n, d_in]}.")
    if not isinstance(cfg.get("k"), int):
        raise ValueError(f"{str(p)!r}: sparsify cfg.json needs an int 'k'; got {cfg.get('k')!r}.")
    _check_tensors(weights, tensors, {"encoder.weight": (n, d_in), "encoder.bias": (n,),
                                      "W_dec": (n, d_in), "b_dec": (d_in,)})
    dtype = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16",
             torch.float64: "float64"}[tensors["W_dec"].dtype]
    # sparsify names hooks relative to the base model: the folder name ("layers.10").
    sae = make_sae("topk", d_in=d_in, d_sae=n, k=cfg["k"], dtype=dtype,
                   metadata={"hook_name": p.name, "source_format": "sparsify"})
    _assign(sae, {"W_enc": tensors["encoder.weight"].T, "b_enc": tensors["encoder.bias"],
                  "W_dec": tensors["W_dec"], "b_dec": tensors["b_dec"]})
    return sae
