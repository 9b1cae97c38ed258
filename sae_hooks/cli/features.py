"""``sae-hooks features``: what chosen latents do, on held-out text, from the command line.

For each ``--latent``: how often it fires (density), quantiles of its activation where it fires,
its top-activating contexts with every firing token marked «like this», and the tokens its
decoder direction promotes and suppresses through the unembedding (``sae_hooks.features``).

    $ sae-hooks features --sae pretrained:smollm2-l28-topk-2304 --latent 123 --latent 456
    $ sae-hooks features --sae runs/l6/saes/topk_resid_post.6 --latent 7 --tokens 20000 --json
"""

from __future__ import annotations

import argparse
from typing import Any

HELP = "density, activation quantiles, top contexts and promoted/suppressed tokens of chosen SAE latents"


def add_common(p: argparse.ArgumentParser, tokens: int) -> None:
    """The flags ``features`` and ``dashboard`` share: which SAE, model, hook and text."""
    p.add_argument("--sae", required=True, help="SAE folder, pretrained:NAME (see `sae-hooks pretrained list`), "
                   "saelens:RELEASE:SAE_ID or sparsify:ORG/REPO:HOOKPOINT")
    p.add_argument("--model", default=None, help="model name or folder (default: the SAE's model if embedded, else "
                   "the embedded smollm2-135m-instruct)")
    p.add_argument("--backend", default="hf", choices=["hf", "tl"], help="hf = transformers, tl = TransformerLens bridge")
    p.add_argument("--dtype", default="fp32", help="model dtype: fp32 or bf16")
    p.add_argument("--hook", default=None, help="hook point (default: the SAE metadata's hook_name)")
    p.add_argument("--corpus", default="stdlib", help="'stdlib', a local file/dir/glob, or an HF dataset name")
    p.add_argument("--split", default="eval", choices=["eval", "train", "all"], help="side of the corpus split")
    p.add_argument("--tokens", type=int, default=tokens, help="tokens to harvest (rounded down to whole sequences)")
    p.add_argument("--ctx", type=int, default=128, help="sequence length")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward")
    p.add_argument("--contexts", type=int, default=10, help="top contexts per latent")
    p.add_argument("--logit-tokens", type=int, default=10, help="promoted and suppressed tokens per latent")
    p.add_argument("--progress", default="auto", choices=["auto", "on", "off"], help="progress bar while harvesting")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p, tokens=50_000)
    p.add_argument("--latent", type=int, action="append", required=True, metavar="N",
                   help="latent id, repeatable (--latent 3 --latent 17)")


def check_common(args: argparse.Namespace) -> None:
    for name in ("tokens", "ctx", "batch_size", "contexts", "logit_tokens"):
        v = getattr(args, name)
        if v < 1:
            raise ValueError(f"--{name.replace('_', '-')} {v}; it must be >= 1.")
    if args.tokens < args.ctx:
        raise ValueError(f"--tokens {args.tokens} is less than one sequence of --ctx {args.ctx}; raise --tokens.")


def check_latents(spec: str, sae: Any, latents: list[int] | None) -> None:
    """A latent id out of range fails before the model loads, naming the valid range."""
    d_sae = int(sae.cfg.d_sae)
    bad = [v for v in latents or [] if not 0 <= v < d_sae]
    if bad:
        raise ValueError(f"latent {bad[0]} is out of range; the SAE {spec} has {d_sae} latents (0..{d_sae - 1}).")


def load_setup(args: argparse.Namespace, latents: list[int] | None = None) -> dict[str, Any]:
    """SAE, adapter, canonical hook and the batches of ``args``; the SAE and ``latents`` are checked
    before the model loads."""
    import sys

    from .. import models
    from ..data import CorpusConfig, iter_batches
    from ..pretrained import load_sae_spec

    sae = load_sae_spec(args.sae).eval().requires_grad_(False)
    check_latents(args.sae, sae, latents)
    hook = args.hook or sae.metadata.get("hook_name")
    if not hook:
        raise ValueError(f"The SAE {args.sae} names no hook point in its metadata; pass --hook (e.g. resid_post.6).")
    models.parse_dtype(args.dtype)
    model_name = args.model or sae.metadata.get("model_name") or models.DEFAULT_MODEL
    if args.model is None and model_name not in models.EMBEDDED:
        model_name = models.DEFAULT_MODEL
    adapter = models.load_model(model_name, backend=args.backend, dtype=args.dtype)
    hook = adapter.canonical(hook)
    cfg = CorpusConfig(source=args.corpus, split=args.split, ctx=args.ctx)
    batches = iter_batches(adapter.tokenizer, cfg, args.batch_size, max_tokens=args.tokens,
                           max_positions=adapter.max_positions)
    n_batches = -(-(args.tokens // args.ctx) // args.batch_size)
    progress = args.progress == "on" or (args.progress == "auto" and sys.stderr.isatty())
    return {"sae": sae, "adapter": adapter, "hook": hook, "batches": batches, "n_batches": n_batches,
            "model": model_name, "progress": progress}


def run(args: argparse.Namespace) -> dict:
    from ..dashboard import context_windows, profile, with_progress
    from ..features import MARK_CLOSE, MARK_OPEN, logit_effects

    check_common(args)
    s = load_setup(args, args.latent)
    sae, adapter = s["sae"], s["adapter"]
    d_sae = int(sae.cfg.d_sae)
    latents = list(dict.fromkeys(args.latent))
    prof = profile(adapter, sae, s["hook"], with_progress(s["batches"], s["n_batches"], s["progress"]), k=args.contexts)
    h = prof.harvest
    windows = context_windows(adapter, sae, h, latents, n=args.contexts)
    out = []
    for latent in latents:
        fx = logit_effects(adapter, sae, latent, k=args.logit_tokens)
        counts, top = prof.histogram(latent)
        ctxs = []
        for w in windows[latent]:
            text = "".join(f"{MARK_OPEN}{t}{MARK_CLOSE}" if a > 0 else t for t, a in zip(w.tokens, w.acts))
            ctxs.append({"activation": w.activation, "token": w.tokens[w.peak], "text": text, "tokens": w.tokens,
                         "acts": w.acts, "peak": w.peak})
        out.append({
            "latent": latent, "density": float(h.frequency[latent]), "fires": int(h.fire_count[latent]),
            "mean_code": float(h.mean_code[latent]), "max": float(h.top_values[latent, 0]),
            "quantiles": prof.quantiles(latent), "histogram": {"counts": counts, "max": top},
            "top_contexts": ctxs,
            "promoted": [t._asdict() for t in fx.promoted], "suppressed": [t._asdict() for t in fx.suppressed],
        })
    result = {"sae": args.sae, "model": s["model"], "hook": h.hook, "d_sae": d_sae, "tokens": h.n_tokens,
              "corpus": args.corpus, "split": args.split, "latents": out,
              "definitions": "density = fraction of harvested tokens (position 0 and special tokens excluded) where the "
                             "latent's code is > 0; quantiles over those tokens' codes; promoted/suppressed = "
                             "W_U (g * W_dec[latent]) through the final norm's gain"}
    if not args.json:
        print(f"{args.sae} at {h.hook} on {s['model']}: {h.n_tokens:,} {args.corpus} [{args.split}] tokens")
        for r in out:
            q = r["quantiles"]
            qs = "  ".join(f"{k} {v:.3g}" for k, v in q.items()) if q else "never fired"
            print(f"\nlatent {r['latent']}: density {r['density']:.3%} ({r['fires']:,} tokens), max {r['max']:.4g}, "
                  f"mean code {r['mean_code']:.4g}\n  quantiles where it fires: {qs}")
            for c in r["top_contexts"]:
                print(f"  {c['activation']:8.3f}  {c['text']!r}")
            print("  promotes:   " + ", ".join(f"{t['token']!r} {t['score']:+.2f}" for t in r["promoted"]))
            print("  suppresses: " + ", ".join(f"{t['token']!r} {t['score']:+.2f}" for t in r["suppressed"]))
    return result
