"""``sae-hooks interp``: offline interpretability scores of SAEs against the labels Python gives its code.

    $ sae-hooks interp --sae pretrained:smollm2-l6-topk --tokens 50000 --json
    $ sae-hooks interp --sae runs/x/saes/topk_resid_post.6 --sae runs/x/saes/matching_pursuit_resid_post.6 --json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HELP = "score SAE latents against true Python token labels: sparse probing, best latent, latent labels, absorption"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sae", action="append", required=True,
                   help="SAE folder or pretrained:NAME; repeat to score several SAEs from the same model pass")
    p.add_argument("--model", default="smollm2-135m-instruct", help="model name or folder")
    p.add_argument("--backend", default="hf", choices=["hf", "tl"], help="hf = transformers, tl = TransformerLens bridge")
    p.add_argument("--corpus", default="stdlib", help="a corpus of Python source: 'stdlib', a local file/dir/glob, "
                   "or an HF dataset name (documents Python cannot parse are skipped and counted)")
    p.add_argument("--split", default="eval", choices=["eval", "train", "all"],
                   help="side of the corpus split (held-out by default)")
    p.add_argument("--hook", default=None, help="hook point (default: each SAE metadata's hook_name)")
    p.add_argument("--allow-hook-mismatch", action="store_true",
                   help="score an SAE at a hook other than the one its metadata names")
    p.add_argument("--strict", action="store_true", help="refuse an SAE whose metadata names another model")
    p.add_argument("--tokens", type=int, default=50_000,
                   help="tokens fed to the model (rounded up to whole sequences; the stdlib eval split of "
                        "CPython 3.11 holds ~57,000 tokens of Python)")
    p.add_argument("--ctx", type=int, default=128, help="sequence length")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward")
    p.add_argument("--dtype", default="fp32", help="model dtype: fp32 or bf16 (the SAE keeps its own)")
    p.add_argument("--exclude-first", type=int, default=1, help="leading positions left unscored (attention sink)")
    p.add_argument("--ks", default="1,5,20", help="latents read by the sparse probes, comma-separated")
    p.add_argument("--test-fraction", type=float, default=0.3, help="fraction of sequences held out for reporting")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out draw and of the random-SAE baseline")
    p.add_argument("--min-label-tokens", type=int, default=20,
                   help="labels with fewer tokens (with or without them) in either part are reported as skipped")
    p.add_argument("--baselines", default="random,residual",
                   help="comma-separated baselines scored beside the SAEs (random, residual), or 'none'")
    p.add_argument("--latent-table", default=None, metavar="PATH",
                   help="also write every scored dictionary's per-latent labels (JSON) to PATH")


def run(args: argparse.Namespace) -> dict:
    from ..data import CorpusConfig
    from ..interp import InterpConfig, interp, labelled_tokens
    from ..models import load_model, parse_dtype
    from ..sae import load_sae
    from .evaluate import resolve_sae_path

    if args.tokens < 1 or args.batch_size < 1:
        raise ValueError(f"--tokens ({args.tokens}) and --batch-size ({args.batch_size}) must be >= 1.")
    config = InterpConfig(ks=_ints(args.ks, "--ks"), test_fraction=args.test_fraction, seed=args.seed,
                          min_label_tokens=args.min_label_tokens, baselines=_baselines(args.baselines))
    paths = [resolve_sae_path(spec) for spec in args.sae]
    saes = {}
    for spec, path in zip(args.sae, paths):
        name = spec if spec.startswith("pretrained:") else path.name
        if name in saes:
            name = str(path)
        saes[name] = load_sae(path)
    parse_dtype(args.dtype)  # a clear error before the model loads
    corpus = CorpusConfig(source=args.corpus, split=args.split, ctx=args.ctx, exclude_first=args.exclude_first)
    adapter = load_model(args.model, backend=args.backend, dtype=args.dtype)
    t0 = time.perf_counter()
    tokens = labelled_tokens(adapter.tokenizer, corpus, args.tokens, max_positions=adapter.max_positions)
    t1 = time.perf_counter()
    report = interp(adapter, saes, tokens, hook=args.hook, config=config, batch_size=args.batch_size,
                    allow_hook_mismatch=args.allow_hook_mismatch, strict=args.strict)
    t2 = time.perf_counter()
    if args.latent_table:
        table = {name: [r._asdict() for r in s.latent_labels]
                 for group in (report.saes, report.random, report.residual) for name, s in
                 ((s.name, s) for s in group.values())}
        Path(args.latent_table).write_text(json.dumps(table))
    if not args.json:
        print(f"{', '.join(saes)} on {args.model} ({args.backend}, {args.dtype}), corpus {args.corpus} [{args.split}]")
        print(report.table())
    out = report.to_dict()
    out.update(sae={name: str(p) for name, p in zip(saes, paths)}, model=args.model, corpus=args.corpus,
               split=args.split, ctx=args.ctx, dtype=args.dtype)
    out["seconds"] = {"labelling": round(t1 - t0, 2), **report.seconds, "total": round(t2 - t0, 2)}
    return out


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"{flag}={text!r}: give comma-separated integers, e.g. 1,5,20.") from None


def _baselines(text: str) -> tuple[str, ...]:
    if text.strip().lower() == "none":
        return ()
    return tuple(v.strip() for v in text.split(",") if v.strip())
