"""``sae-hooks eval``: splice an SAE into the model on held-out tokens and report what it costs.

    $ sae-hooks eval --sae runs/l6_topk --tokens 50000 --ctx 128 --json
    $ sae-hooks eval --sae pretrained:smollm2-l6-topk --tokens 50000 --ctx 128 --json   # pretrained/smollm2-l6-topk
    $ sae-hooks eval --sae runs/l6_topk --corpus held_out.parquet --split all --tokens 25600  # a held-out file, all of it
    $ sae-hooks eval --sae runs/l3_topk --sae runs/l6_topk --json     # both spliced at once, and each alone
"""

from __future__ import annotations

import argparse

# --sae resolution lives in sae_hooks.pretrained (every command shares it); the names stay importable here.
from ..pretrained import ENV as PRETRAINED_ENV  # noqa: F401
from ..pretrained import PREFIX as PRETRAINED_PREFIX  # noqa: F401
from ..pretrained import load_sae_spec, pretrained_dirs, resolve_sae_path  # noqa: F401

HELP = "splice an SAE into the live model and measure recaptured LM loss, delta CE, KL, FVU and L0"


def split_help(purpose: str) -> str:
    """``--help`` text of ``--split`` (eval and steer): what each side of the corpus split holds."""
    from dataclasses import fields

    from ..data import CorpusConfig

    fraction = next(f.default for f in fields(CorpusConfig) if f.name == "eval_fraction")
    return (f"which documents of --corpus {purpose}: 'eval' (default) = the held-out side of a stable hash split "
            # %% : argparse %-formats help strings, so a bare % breaks --help
            f"(about {fraction * 100:.0f}%% of the documents, never seen by 'sae-hooks train' on the same corpus), "
            "'train' = the other side, 'all' = every document in file order, no hashing (for a file that is already "
            "your held-out set)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sae", required=True, action="append", help="SAE folder (SAELens or sparsify layout), pretrained:NAME "
                   "(see `sae-hooks pretrained list`), saelens:RELEASE:SAE_ID or sparsify:ORG/REPO:HOOKPOINT. Give it "
                   "several times to splice all the SAEs at once (one per hook point): the joint CE, delta CE, KL and "
                   "recaptured loss beside each SAE's own row")
    p.add_argument("--model", default="smollm2-135m-instruct", help="model name or folder")
    p.add_argument("--backend", default="hf", choices=["hf", "tl"], help="hf = transformers, tl = TransformerLens bridge")
    p.add_argument("--corpus", default="stdlib", help="'stdlib', a local file/dir/glob, or an HF dataset name")
    p.add_argument("--split", default="eval", choices=["eval", "train", "all"], help=split_help("are evaluated"))
    p.add_argument("--hook", default=None, action="append", help="hook point (default: the SAE metadata's hook_name); "
                   "with several --sae, none or one --hook per --sae, in the same order")
    p.add_argument("--tokens", type=int, default=50_000, help="evaluated tokens (rounded up to whole sequences)")
    p.add_argument("--ctx", type=int, default=128, help="sequence length")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward")
    p.add_argument("--dtype", default="fp32", help="model dtype: fp32 or bf16 (the SAE keeps its own)")
    p.add_argument("--k", type=int, default=None, help="matching pursuit: inference steps")
    p.add_argument("--residual-threshold", type=float, default=None, help="matching pursuit: stop when ||r|| < this")
    p.add_argument("--width", type=int, default=None, help="Matryoshka: evaluate the prefix of this many latents")
    p.add_argument("--keep-error", action="store_true", help="splice x + (decode(z) - decode(z)): measures nothing but exactness")
    p.add_argument("--strict", action="store_true", help="also refuse an SAE whose metadata names another model "
                   "(by default only a warning: model names are often aliases or local paths)")
    p.add_argument("--allow-hook-mismatch", action="store_true", help="evaluate at --hook even where the SAE's metadata "
                   "names another hook point (refused by default)")
    p.add_argument("--ablation-scope", default="evaluated", choices=["evaluated", "all"],
                   help="ablate only the spliced positions, or every position (SAELens's zero-ablation)")
    p.add_argument("--exclude-first", type=int, default=1, help="leading positions left untouched and unscored (attention sink)")
    p.add_argument("--top-contexts", type=int, default=5, help="worst contexts to show")


def run(args: argparse.Namespace) -> dict:
    from ..data import CorpusConfig, load_token_tensor
    from ..evaluate import evaluate
    from ..models import load_model, parse_dtype

    if args.tokens < 1 or args.batch_size < 1:
        raise ValueError(f"--tokens ({args.tokens}) and --batch-size ({args.batch_size}) must be >= 1.")
    if len(args.sae) > 1:
        return _run_joint(args)
    if args.hook and len(args.hook) > 1:
        raise ValueError(f"{len(args.hook)} --hook for one --sae: give one hook point (or none: the SAE's metadata names it).")
    args.sae, args.hook = args.sae[0], (args.hook or [None])[0]
    path = resolve_sae_path(args.sae)
    sae = load_sae_spec(args.sae)
    parse_dtype(args.dtype)  # a clear error before the model loads
    cfg = CorpusConfig(source=args.corpus, split=args.split, ctx=args.ctx, exclude_first=args.exclude_first)
    adapter = load_model(args.model, backend=args.backend, dtype=args.dtype)
    tokens = load_token_tensor(adapter.tokenizer, cfg, args.tokens, max_positions=adapter.max_positions)
    report = evaluate(adapter, sae, tokens, hook=args.hook, batch_size=args.batch_size, keep_error=args.keep_error,
                      strict=args.strict, allow_hook_mismatch=args.allow_hook_mismatch, top_contexts=args.top_contexts,
                      ablation_scope=args.ablation_scope,
                      width=args.width, k=args.k, residual_threshold=args.residual_threshold,
                      exclude_first=args.exclude_first)
    if not args.json:
        print(f"SAE {path} on {args.model} ({args.backend}, {args.dtype}), corpus {args.corpus} [{args.split}]")
        print(report.table())
    out = report.to_dict()
    out.update(sae=str(path), model=args.model, corpus=args.corpus, split=args.split, ctx=args.ctx)
    return out


def _run_joint(args: argparse.Namespace) -> dict:
    """Several ``--sae``: each spliced alone and all of them together (``joint.evaluate_joint``)."""
    from ..data import CorpusConfig, load_token_tensor
    from ..joint import evaluate_joint
    from ..models import load_model, parse_dtype

    hooks = args.hook or [None] * len(args.sae)
    if len(hooks) != len(args.sae):
        raise ValueError(f"{len(args.sae)} --sae but {len(hooks)} --hook: give no --hook (each SAE's metadata names its "
                         "hook point) or one --hook per --sae, in the same order.")
    single = {"--width": args.width, "--k": args.k, "--residual-threshold": args.residual_threshold}
    given = [flag for flag, v in single.items() if v is not None]
    if given:
        raise ValueError(f"{', '.join(given)} set(s) one SAE's inference view; with several --sae it would apply to "
                         "all of them. Evaluate that SAE alone, or save the view as its own SAE.")
    paths = [resolve_sae_path(s) for s in args.sae]
    saes = [load_sae_spec(s) for s in args.sae]
    parse_dtype(args.dtype)  # a clear error before the model loads
    cfg = CorpusConfig(source=args.corpus, split=args.split, ctx=args.ctx, exclude_first=args.exclude_first)
    adapter = load_model(args.model, backend=args.backend, dtype=args.dtype)
    tokens = load_token_tensor(adapter.tokenizer, cfg, args.tokens, max_positions=adapter.max_positions)
    report = evaluate_joint(adapter, list(zip(hooks, saes)), tokens, batch_size=args.batch_size,
                            keep_error=args.keep_error, strict=args.strict, allow_hook_mismatch=args.allow_hook_mismatch,
                            top_contexts=args.top_contexts, ablation_scope=args.ablation_scope,
                            exclude_first=args.exclude_first)
    if not args.json:
        print(f"{len(paths)} SAEs on {args.model} ({args.backend}, {args.dtype}), corpus {args.corpus} [{args.split}]")
        print(report.table())
    out = report.to_dict()
    for d, path in zip(out["saes"], paths):
        d["sae"] = str(path)
    out.update(model=args.model, corpus=args.corpus, split=args.split, ctx=args.ctx)
    return out
