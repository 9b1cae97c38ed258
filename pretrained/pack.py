"""Pack a trained SAE folder into pretrained/NAME with its dense matrices stored in half precision.

    $ .venv/bin/python pretrained/pack.py /tmp/pre_run/saes/topk_resid_post.6 pretrained/smollm2-l6-topk

The folder stays in the SAELens v6 layout our saver writes (cfg.json + sae_weights.safetensors).
Only W_enc and W_dec (d_in x d_sae each, ~99.8 % of the bytes) are stored as float16, which halves the
size (21.3 -> 10.6 MB at 576 x 4,608) for git; the biases stay float32. cfg.json keeps ``"dtype":
"float32"``: both ``sae_hooks.load_sae`` and ``sae_lens.SAE.load_from_disk`` build a float32 SAE from it
and copy the stored tensors in, so users get the float32 SAE they expect, with weights rounded to
float16. float16 rather than bfloat16: 10 mantissa bits instead of 7, and every weight lies well inside
float16's range (checked below, the pack refuses otherwise).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sae_hooks.sae import load_sae
from sae_hooks.sae.formats import SAELENS_WEIGHTS

HALF = ("W_enc", "W_dec")
FP16_MAX = torch.finfo(torch.float16).max
FP16_TINY = torch.finfo(torch.float16).tiny  # smallest normal float16; below it precision drops


def pack(src: Path, dst: Path, note: str | None = None) -> dict:
    """Write ``dst`` from the SAE folder ``src``; returns what was stored (shapes, dtypes, bytes, rounding error)."""
    sae = load_sae(src)
    if sae.cfg.dtype != "float32":
        raise ValueError(f"{src}: expected a float32 SAE, got {sae.cfg.dtype}.")
    meta = {"weights_stored_as": {name: "float16" if name in HALF else "float32" for name in ("W_enc", "b_enc",
                                                                                              "W_dec", "b_dec")},
            "weights_loaded_as": "float32"}
    if note:
        meta["provenance"] = note
    sae.save(dst, metadata=meta)
    weights = dst / SAELENS_WEIGHTS
    tensors = load_file(str(weights))
    report = {}
    for name in HALF:
        t = tensors[name]
        big = t.abs().max().item()
        if not big < FP16_MAX:
            raise ValueError(f"{name}: max |w| = {big:g} does not fit float16 (max {FP16_MAX:g}).")
        half = t.to(torch.float16)
        tiny = ((t != 0) & (t.abs() < FP16_TINY)).float().mean().item()
        rel = ((half.float() - t).norm() / t.norm()).item()
        report[name] = {"max_abs": big, "frac_subnormal": tiny, "rel_rounding_error": rel}
        tensors[name] = half
    save_file(tensors, str(weights))
    report["bytes"] = sum(p.stat().st_size for p in dst.iterdir() if p.is_file())
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path, help="trained SAE folder (e.g. RUN/saes/topk_resid_post.6)")
    p.add_argument("dst", type=Path, help="pretrained/NAME")
    p.add_argument("--note", default=None, help="provenance line stored in cfg.json metadata")
    args = p.parse_args(argv)
    print(pack(args.src, args.dst, args.note))
    return 0


if __name__ == "__main__":
    sys.exit(main())
