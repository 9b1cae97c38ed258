"""``sae-hooks progressive``: vanilla SAEs pruned to G latents against Matryoshka prefixes, on the live model.

    $ sae-hooks progressive --run runs/prog --hook resid_post.6 --tokens 50000 --out runs/prog/progressive --json
    $ sae-hooks progressive --vanilla runs/a/saes/topk_resid_post.6 --matryoshka runs/a/saes/matryoshka_resid_post.6 \\
          --sizes 256 576 1152 2304 --modes mask --out prog_l6

Writes report.json, report.md and PNG plots into --out (see ``sae_hooks.progressive.outputs``);
nothing is written unless the whole sweep succeeds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

HELP = ("Matryoshka SAEs against vanilla SAEs pruned to G latents: importance power law, FVU, L0, recaptured LM "
        "loss, delta CE, KL and RSA at every size, with plots")

DEFAULT_MODEL = "smollm2-135m-instruct"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..progressive import PRUNE_MODES, RANKINGS, SweepConfig

    d = SweepConfig()
    p.add_argument("--run", default=None, help="run folder of `sae-hooks train`: its SAEs at --hook, the Matryoshka "
                   "ones as Matryoshka, the others as vanilla (model, corpus and ctx default to the run's)")
    p.add_argument("--vanilla", action="append", default=[], metavar="SAE",
                   help="a vanilla SAE to prune (folder or pretrained:NAME); repeatable")
    p.add_argument("--matryoshka", action="append", default=[], metavar="SAE",
                   help="a Matryoshka SAE, evaluated at each nested width; repeatable")
    p.add_argument("--out", required=True, help="folder for report.json, report.md and the plots")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it holds files")
    p.add_argument("--model", default=None, help=f"model name or folder (default: the run's, else {DEFAULT_MODEL})")
    p.add_argument("--backend", default="hf", choices=["hf", "tl"],
                   help="hf = transformers, tl = TransformerLens bridge")
    p.add_argument("--corpus", default=None, help="'stdlib', a local file/dir/glob, or an HF dataset name "
                   "(default: the run's, else stdlib)")
    p.add_argument("--split", default="eval", choices=["eval", "train", "all"],
                   help="which documents of --corpus are read: eval (the held-out side of the hash split "
                   "`sae-hooks train` never trains on), train, or all (every document, in file order)")
    p.add_argument("--hook", default=None, help="hook point (default: the SAEs' metadata; with --run: needed when the "
                   "run trained at several)")
    p.add_argument("--tokens", type=int, default=50_000, help="evaluated tokens (rounded up to whole sequences)")
    p.add_argument("--importance-tokens", type=int, default=20_000,
                   help="tokens the latent importances are measured on: the ones after the evaluated tokens")
    p.add_argument("--rsa-tokens", type=int, default=d.rsa_tokens, help="evaluated positions in the RSA sample")
    p.add_argument("--ctx", type=int, default=None, help="sequence length (default: the run's, else 128)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="sequences per forward")
    p.add_argument("--dtype", default="fp32", help="model dtype: fp32 or bf16 (the SAEs keep their own)")
    p.add_argument("--sizes", type=int, nargs="+", default=None, metavar="G",
                   help="sizes of the pruned SAEs (default: the Matryoshka widths plus --grid log-spaced sizes)")
    p.add_argument("--grid", type=int, default=d.grid,
                   help="log-spaced sizes d_sae/2^(grid-1) .. d_sae in the default sizes")
    p.add_argument("--modes", nargs="+", default=list(d.modes), choices=PRUNE_MODES,
                   help="mask: the full SAE's codes of the kept latents; reselect: the SAE's own selection among them")
    p.add_argument("--rank-by", default=d.rank_by, choices=RANKINGS, help="what orders the latents for pruning")
    p.add_argument("--fit-ranks", type=int, nargs=2, default=None, metavar=("LO", "HI"),
                   help="ranks the power-law and exponential fits use (default: every latent with importance > 0)")
    p.add_argument("--ablation-scope", default=d.ablation_scope, choices=["evaluated", "all"],
                   help="ablate only the spliced positions, or every position (SAELens's zero-ablation)")
    p.add_argument("--interp-tokens", type=int, default=0,
                   help="tokens for the offline interpretability scores of every reduced SAE (0 = skip)")
    p.add_argument("--allow-hook-mismatch", action="store_true",
                   help="apply SAEs at --hook even where their metadata names another hook point")


def _run_saes(run: Path, hook: str | None) -> tuple[dict[str, str], dict[str, str], dict[str, Any]]:
    """({name: folder} vanilla, {name: folder} Matryoshka, run settings) of a run folder at ``hook``."""
    from ..hookpoints import parse_hook

    info_path = run / "run.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"--run {str(run)!r} has no run.json: it is not a run folder of `sae-hooks train`. "
                                "Give the folder passed to --out of the training run, or name SAEs with --vanilla / "
                                "--matryoshka.")
    info = json.loads(info_path.read_text())
    entries = info.get("saes") or []
    hooks = sorted({str(parse_hook(e["hook"])) for e in entries})
    if not entries:
        raise ValueError(f"--run {str(run)!r}: run.json lists no SAEs.")
    if hook is None:
        if len(hooks) > 1:
            raise ValueError(f"--run {str(run)!r} trained SAEs at several hook points ({', '.join(hooks)}); choose one "
                             "with --hook.")
        hook = hooks[0]
    want = str(parse_hook(hook))
    chosen = [e for e in entries if str(parse_hook(e["hook"])) == want]
    if not chosen:
        raise ValueError(f"--run {str(run)!r} has no SAE at {want}; its hook points: {', '.join(hooks)}.")
    vanilla, mat = {}, {}
    for e in chosen:
        folder = run / "saes" / e["name"]
        if not (folder / "cfg.json").is_file():
            raise FileNotFoundError(f"--run {str(run)!r}: SAE {e['name']!r} has no saved folder {str(folder)!r} "
                                    "(the run did not finish?). Resume the run first.")
        (mat if e["arch"] == "matryoshka" else vanilla)[e["name"]] = str(folder)
    return vanilla, mat, dict(info.get("settings") or {})


def _named(specs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for spec in specs:
        base = Path(spec.split(":")[-1]).name or spec
        name, i = base, 2
        while name in out:
            name, i = f"{base}_{i}", i + 1
        out[name] = spec
    return out


def run(args: argparse.Namespace) -> dict:
    from ..data import CorpusConfig, TokenBatch, load_token_tensor
    from ..models import load_model, parse_dtype
    from ..pretrained import load_sae_spec
    from ..progressive import SweepConfig, check_kinds, check_out, check_size, sweep, write_outputs

    # Every check that needs no model first: flags, --out, the SAEs and the sizes.
    for flag, value, lo in (("--tokens", args.tokens, 1), ("--importance-tokens", args.importance_tokens, 1),
                            ("--interp-tokens", args.interp_tokens, 0)):
        if value < lo:
            raise ValueError(f"{flag} {value}: it must be >= {lo}.")
    config = SweepConfig(sizes=tuple(args.sizes or ()), grid=args.grid, modes=tuple(args.modes), rank_by=args.rank_by,
                         fit_ranks=tuple(args.fit_ranks) if args.fit_ranks else None, rsa_tokens=args.rsa_tokens,
                         batch_size=args.batch_size, ablation_scope=args.ablation_scope)
    check_out(args.out, args.overwrite)
    parse_dtype(args.dtype)
    settings: dict[str, Any] = {}
    vanilla_specs, mat_specs = _named(args.vanilla), _named(args.matryoshka)
    if args.run:
        rv, rm, settings = _run_saes(Path(args.run), args.hook)
        vanilla_specs, mat_specs = {**rv, **vanilla_specs}, {**rm, **mat_specs}
    if not vanilla_specs and not mat_specs:
        raise ValueError("No SAE given: pass --run RUN_FOLDER, or --vanilla SAE and/or --matryoshka SAE.")
    vanilla = {n: load_sae_spec(s) for n, s in vanilla_specs.items()}
    mat = {n: load_sae_spec(s) for n, s in mat_specs.items()}
    d_sae = check_kinds(vanilla, mat)
    for g in config.sizes:
        check_size(g, d_sae, "--sizes")
    model = args.model or settings.get("model") or DEFAULT_MODEL
    corpus = args.corpus or settings.get("corpus") or "stdlib"
    ctx = args.ctx or settings.get("ctx") or 128

    adapter = load_model(model, backend=args.backend, dtype=args.dtype)
    cfg = CorpusConfig(source=corpus, split=args.split, ctx=ctx)
    n_eval = -(-args.tokens // ctx)  # whole sequences, as load_token_tensor rounds
    block = load_token_tensor(adapter.tokenizer, cfg, (n_eval + -(-args.importance_tokens // ctx)) * ctx,
                              max_positions=adapter.max_positions)
    held = TokenBatch(block.input_ids[:n_eval], block.mask[:n_eval])
    imp = TokenBatch(block.input_ids[n_eval:], block.mask[n_eval:])
    scorer = _interp_scorer(adapter, cfg, args) if args.interp_tokens else None
    report = sweep(adapter, vanilla, mat, held, imp, hook=args.hook, config=config,
                   allow_hook_mismatch=args.allow_hook_mismatch, interp_scores=scorer)
    paths = write_outputs(report, args.out, overwrite=args.overwrite)
    if not args.json:
        print(report.markdown())
        print(f"\nwrote {', '.join(paths.values())}")
    out = report.to_dict()
    out.update(corpus=corpus, split=args.split, ctx=ctx, vanilla=vanilla_specs, matryoshka=mat_specs, files=paths)
    return out


def _interp_scorer(adapter: Any, cfg: Any, args: argparse.Namespace):
    """``f({name: reduced SAE}, hook) -> {name: {score: value}}`` from the offline interpretability scores."""
    from ..interp import InterpConfig, interp, labelled_tokens

    tokens = labelled_tokens(adapter.tokenizer, cfg, args.interp_tokens)

    def score(named: dict[str, Any], hook: str) -> dict[str, dict[str, float]]:
        report = interp(adapter, named, tokens, hook=hook, config=InterpConfig(baselines=()),
                        batch_size=args.batch_size,
                        allow_hook_mismatch=True)
        return {name: _flat_scores(s.summary()) for name, s in report.saes.items()}

    return score


INTERP_SCORES = ("best_latent_f1", "precise_fraction", "coverage_fraction", "absorption")
"""Headline interpretability scores kept per reduced SAE, next to the k-sparse probe F1s."""


def _flat_scores(summary: dict[str, Any]) -> dict[str, float]:
    out = {f"probe_f1_{k}": float(v) for k, v in (summary.get("probe_f1") or {}).items() if v is not None}
    out.update({k: float(summary[k]) for k in INTERP_SCORES if summary.get(k) is not None})
    return out
