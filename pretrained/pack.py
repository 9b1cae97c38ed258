"""Maintain pretrained/: pack trained SAEs into it, measure them, and keep registry.json in step.

    $ python pretrained/pack.py add RUN/saes/topk_resid_post.28 smollm2-l28-topk-2304 \\
          --command "sae-hooks train ... --out RUN" --description "TopK, k=32, late layer"
    $ python pretrained/pack.py measure smollm2-l28-topk-2304 # runs `sae-hooks eval --sae pretrained:NAME ...`
    $ python pretrained/pack.py check                          # registry against the folders (sizes, sha256, shapes)
    $ python pretrained/pack.py table                          # the registry as README.md's markdown table

``add`` writes ``pretrained/NAME`` in the SAELens v6 layout our saver writes (cfg.json +
sae_weights.safetensors) with the dense matrices stored as float16: W_enc and W_dec are ~99.8 % of
the bytes, so this halves the size for git; the biases stay float32. cfg.json keeps ``"dtype":
"float32"``: both ``sae_hooks.load_sae`` and ``sae_lens.SAE.load_from_disk`` build a float32 SAE from
it and copy the stored tensors in, so users get the float32 SAE they expect, with weights rounded to
float16. float16 rather than bfloat16: 10 mantissa bits instead of 7, and every weight lies well
inside float16's range (checked; the pack refuses otherwise). It then records the SAE in
registry.json: model, hook, architecture, width, k, options, the training command, commit, tokens
and steps (from the run folder), every file's size and sha256 and every tensor's shape.

``measure`` runs the recorded evaluation command in a subprocess, exactly as a user would, and
stores its figures and the command line in the entry.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sae_hooks.hookpoints import parse_hook
from sae_hooks.pretrained import METRIC_KEYS, Entry, FileRecord, Registry, load_registry, sha256_file, write_registry
from sae_hooks.sae import load_sae
from sae_hooks.sae.formats import SAELENS_WEIGHTS

HERE = Path(__file__).resolve().parent
HALF = ("W_enc", "W_dec")
FP16_MAX = torch.finfo(torch.float16).max
FP16_TINY = torch.finfo(torch.float16).tiny  # smallest normal float16; below it precision drops
BUDGET = 64_000_000  # bytes of SAE files in git, all SAEs together
EVAL = "sae-hooks eval --sae pretrained:{name} --tokens {tokens} --ctx 128 --json"
# Held-out tokens of the registry's figures: few, because tests/test_zoo.py re-runs every entry's command and CI
# time matters (~40 s per SAE on a 2-core CPU, model load included: the eval runs the whole model four times, fp32).
TOKENS = 3_072


def pack(src: Path, dst: Path, note: str | None = None) -> dict:
    """Write ``dst`` from the SAE folder ``src``; returns what was stored (shapes, dtypes, bytes, rounding error)."""
    sae = load_sae(src)
    if sae.cfg.dtype != "float32":
        raise ValueError(f"{src}: expected a float32 SAE, got {sae.cfg.dtype}.")
    _, stored = sae.saelens_view()
    half = [n for n in HALF if n in stored]  # an MP SAE stores only W_dec (tied encoder)
    meta = {"weights_stored_as": {name: "float16" if name in half else "float32" for name in stored},
            "weights_loaded_as": "float32"}
    if note:
        meta["provenance"] = note
    sae.save(dst, metadata=meta)
    weights = dst / SAELENS_WEIGHTS
    tensors = load_file(str(weights))
    report = {}
    for name in half:
        t = tensors[name]
        big = t.abs().max().item()
        if not big < FP16_MAX:
            raise ValueError(f"{name}: max |w| = {big:g} does not fit float16 (max {FP16_MAX:g}).")
        h = t.to(torch.float16)
        tiny = ((t != 0) & (t.abs() < FP16_TINY)).float().mean().item()
        rel = ((h.float() - t).norm() / t.norm()).item()
        report[name] = {"max_abs": big, "frac_subnormal": tiny, "rel_rounding_error": rel}
        tensors[name] = h
    save_file(tensors, str(weights))
    report["bytes"] = sum(p.stat().st_size for p in dst.iterdir() if p.is_file())
    return report


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True, check=True).stdout.strip()


def folder_record(folder: Path) -> tuple[dict[str, FileRecord], dict[str, tuple[int, ...]]]:
    """(file name -> size and sha256, tensor name -> shape) of an SAE folder."""
    files = {p.name: FileRecord(p.stat().st_size, sha256_file(p)) for p in sorted(folder.iterdir()) if p.is_file()}
    with safe_open(str(folder / SAELENS_WEIGHTS), framework="pt") as f:
        tensors = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    return files, tensors


def add(src: Path, name: str, command: str, description: str, commit: str | None, wall_s: float | None) -> Entry:
    """Pack ``src`` into pretrained/NAME and record it in the registry (metrics empty until ``measure``)."""
    reg = load_registry(HERE)
    dst = HERE / name
    run_dir = src.parent.parent  # RUN/saes/NAME
    run = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    report = pack(src, dst, note=f"{command} (commit {commit})" if commit else command)
    sae = load_sae(dst)
    trained = sae.metadata.get("sae_hooks_train") or {}
    cfg = sae.cfg.to_dict()
    k = cfg.pop("k", None)
    options = {key: (list(v) if isinstance(v, tuple) else v) for key, v in cfg.items()
               if key in ("widths", "l1_coef", "residual_threshold", "aux_k", "aux_coef")}
    settings = run.get("settings", {})
    files, tensors = folder_record(dst)
    entry = Entry(
        name=name, model=sae.metadata.get("model_name", ""), hook=str(parse_hook(sae.metadata["hook_name"])),
        architecture=sae.architecture, d_in=sae.cfg.d_in, d_sae=sae.cfg.d_sae, k=k, options=options,
        files=files, tensors=tensors, description=description,
        training={"command": command, "commit": commit, "run_sae": src.name, "tokens": trained.get("tokens"),
                  "steps": trained.get("steps"), "seed": settings.get("seed"), "corpus": settings.get("corpus"),
                  "shuffle": settings.get("shuffle"),
                  "ctx": settings.get("ctx"), "batch_tokens": settings.get("batch_tokens"), "wall_s": wall_s,
                  "fp16_rounding": {n: report[n]["rel_rounding_error"] for n in HALF if n in report},
                  "fp16_subnormal": {n: report[n]["frac_subnormal"] for n in HALF if n in report}},
        metrics=None,
    )
    entries = [e for e in reg.entries if e.name != name] + [entry]
    total = sum(e.size for e in entries)
    if total > BUDGET:
        raise ValueError(f"pretrained/ would hold {total:,} bytes of SAEs, over the {BUDGET:,}-byte budget; "
                         f"{dst} was written but not registered: delete it or make room.")
    write_registry(reg._replace(entries=entries))
    return entry


def _evaluate(command: str) -> dict:
    """The JSON figures of one ``sae-hooks eval`` command line, run in a subprocess as a user would."""
    argv = shlex.split(command)
    # The subprocess may run another copy of sae_hooks (PYTHONPATH, e.g. a clean export of a commit): point it
    # at these SAE folders explicitly.
    env = {**os.environ, "SAE_HOOKS_PRETRAINED": str(HERE)}
    out = subprocess.run([sys.executable, "-m", "sae_hooks", *argv[1:]], capture_output=True, text=True, env=env,
                         check=False)
    if out.returncode != 0:
        raise SystemExit(f"{command} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(names: list[str], tokens: int, commit: str | None) -> None:
    """Run the evaluation command for each SAE in a subprocess and store its figures in the registry."""
    for name in names:
        reg = load_registry(HERE)
        if reg.get(name) is None:
            raise SystemExit(f"No registry entry {name!r}; have {', '.join(reg.names)}.")
        command = EVAL.format(name=name, tokens=tokens)
        got = _evaluate(command)
        metrics = {"command": command, "commit": commit, **{k: got[k] for k in METRIC_KEYS},
                   "hook": got.get("hook"), "split": got.get("split"), "corpus": got.get("corpus")}
        reg = load_registry(HERE)  # re-read: another tool may have written a field (interpretability) meanwhile
        entries = [e if e.name != name else _with_metrics(e, metrics) for e in reg.entries]
        write_registry(reg._replace(entries=entries))
        print(f"{name}: FVU {metrics['fvu']:.4f}  L0 {metrics['l0']:.1f}  dead {metrics['dead_frac']:.2%}  "
              f"rec0 {metrics['recaptured_zero']:.4f}  recmean {metrics['recaptured_mean']:.4f}  "
              f"dCE {metrics['delta_ce']:.4f}  KL {metrics['kl']:.4f}", flush=True)


def _with_metrics(e: Entry, metrics: dict) -> Entry:
    from dataclasses import replace

    return replace(e, metrics=metrics)


def check() -> Registry:
    """Every registry entry against its folder (sizes, sha256, shapes), and no folder left unregistered."""
    from sae_hooks.pretrained import verify_entry

    reg = load_registry(HERE)
    for e in reg.entries:
        verify_entry(e, HERE, shapes=True)
    stray = sorted(p.name for p in HERE.iterdir() if p.is_dir() and (p / "cfg.json").is_file() and reg.get(p.name) is None)
    if stray:
        raise SystemExit(f"SAE folders missing from {reg.path}: {stray}")
    total = sum(e.size for e in reg.entries)
    print(f"{len(reg.entries)} SAEs, {total:,} bytes (budget {BUDGET:,}): registry and folders agree.")
    return reg


def markdown() -> str:
    """The registry as the markdown table of pretrained/README.md."""
    reg = load_registry(HERE)
    head = ("| name | hook | architecture | latents | k | training tokens | FVU | L0 | dead | recaptured (zero) | "
            "recaptured (mean) | ΔCE | KL | MB |")
    lines = [head, "|" + " --- |" * 14]

    def f(m: dict, key: str, spec: str) -> str:
        return format(m[key], spec) if key in m else "-"

    for e in reg.entries:
        m = e.metrics or {}
        lines.append(f"| `{e.name}` | `{e.hook}` | {e.architecture} | {e.d_sae:,} | {e.k if e.k is not None else '-'} | "
                     f"{e.training['tokens']:,} | {f(m, 'fvu', '.3f')} | {f(m, 'l0', '.1f')} | {f(m, 'dead_frac', '.1%')} | "
                     f"{f(m, 'recaptured_zero', '.3f')} | {f(m, 'recaptured_mean', '.3f')} | {f(m, 'delta_ce', '.3f')} | "
                     f"{f(m, 'kl', '.3f')} | {e.size / 1e6:.1f} |")
    total = sum(e.size for e in reg.entries)
    lines.append(f"\n{len(reg.entries)} SAEs, {total:,} bytes.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("add", help="pack a trained SAE folder into pretrained/NAME and register it")
    a.add_argument("src", type=Path, help="trained SAE folder (RUN/saes/<name>)")
    a.add_argument("name", help="name under pretrained/ (smollm2-l<layer>-<arch>)")
    a.add_argument("--command", required=True, help="the `sae-hooks train` command that made it")
    a.add_argument("--description", default="", help="one line for humans")
    a.add_argument("--commit", default=None, help="commit the training ran at (default: HEAD)")
    a.add_argument("--wall-s", type=float, default=None, help="wall time of the training run, seconds")
    m = sub.add_parser("measure", help="run `sae-hooks eval` on registered SAEs and store the figures")
    m.add_argument("names", nargs="*", help="registry names (default: all)")
    m.add_argument("--tokens", type=int, default=TOKENS, help="held-out tokens")
    m.add_argument("--commit", default=None, help="commit of the sae_hooks that measures (default: HEAD, -dirty if "
                   "sae_hooks/ has uncommitted changes)")
    sub.add_parser("check", help="registry against folders")
    sub.add_parser("table", help="print the registry as the markdown table of pretrained/README.md")
    args = p.parse_args(argv)
    if args.cmd == "add":
        entry = add(args.src, args.name, args.command, args.description, args.commit or _git("rev-parse", "HEAD"),
                    args.wall_s)
        print(f"{entry.name}: {entry.size:,} bytes, {entry.tensors}")
    elif args.cmd == "measure":
        commit = args.commit or _git("rev-parse", "HEAD") + ("-dirty" if _git("status", "--porcelain", "--", "../sae_hooks") else "")
        measure(args.names or load_registry(HERE).names, args.tokens, commit)
    elif args.cmd == "table":
        print(markdown())
    else:
        check()
    return 0


if __name__ == "__main__":
    sys.exit(main())
