"""``sae-hooks steer``: generate with and without latent edits, side by side, and measure the side effects.

    $ sae-hooks steer --sae runs/l6 --hook resid_post.6 --edit 123:add:8 --prompt "The weather today is" --json

Prints the baseline and steered continuations (greedy, and sampled with a seed), then the edit's
side effects on held-out text: ΔCE and KL(clean ‖ steered) with the edit applied at every position
of ``--split`` of the corpus (its held-out side by default), and whether each edited latent moved
when the steered activation is re-encoded. The SAE's metadata is checked as in ``sae-hooks eval``.
Prompts are raw text by default (SmolLM2-Instruct continues plain text well, and the positions are
then the prompt's own tokens); ``--chat`` wraps the prompt in the model's chat template as a user
turn and generates the assistant's answer.
"""

from __future__ import annotations

import argparse
import textwrap

from .evaluate import split_help

HELP = "steer generation by editing SAE latents (add/clamp/scale/ablate) and report the side effects"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sae", required=True, help="SAE folder (SAELens v6 layout, or sparsify) or pretrained:NAME, as in "
                   "sae-hooks eval")
    p.add_argument("--model", default=None, help="model name or folder (default: the embedded smollm2-135m-instruct)")
    p.add_argument("--backend", default="hf", choices=["hf", "tl"], help="hf = transformers, tl = TransformerLens bridge")
    p.add_argument("--dtype", default="fp32", help="model dtype: fp32 or bf16")
    p.add_argument("--hook", default=None, help="hook point (default: the SAE's metadata hook_name)")
    p.add_argument("--edit", action="append", required=True, metavar="LATENT:KIND:VALUE",
                   help="latent edit, repeatable; kinds add, clamp, scale, ablate (e.g. 123:add:8, 7:ablate)")
    p.add_argument("--prompt", required=True, help="prompt text")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template (user turn)")
    p.add_argument("--max-new-tokens", type=int, default=20, help="tokens to generate")
    p.add_argument("--positions", default="all", choices=["all", "prompt", "generated"],
                   help="which positions are edited during generation")
    p.add_argument("--replace", action="store_true",
                   help="write decode(z_edited) instead of x + decode(z_edited) - decode(z) (drops the SAE error)")
    p.add_argument("--exclude-first", type=int, default=1,
                   help="leading positions never edited (position 0 is an attention sink)")
    p.add_argument("--temperature", type=float, default=1.0, help="temperature of the sampled continuation")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled continuation")
    p.add_argument("--corpus", default="stdlib", help="corpus whose text measures the side effects")
    p.add_argument("--split", default="eval", choices=["eval", "train", "all"],
                   help=split_help("measure the side effects"))
    p.add_argument("--eval-tokens", type=int, default=4096, help="held-out tokens for ΔCE and KL (0 skips them)")
    p.add_argument("--ctx", type=int, default=128, help="sequence length of the held-out text")
    p.add_argument("--strict", action="store_true", help="also refuse an SAE whose metadata names another model "
                   "(by default only a warning: model names are often aliases or local paths)")
    p.add_argument("--allow-hook-mismatch", action="store_true", help="steer at --hook even where the SAE's metadata "
                   "names another hook point (refused by default)")


def _prompt_ids(tok, prompt: str, chat: bool):
    if chat:
        if not getattr(tok, "chat_template", None):
            raise ValueError("--chat: this tokenizer has no chat template; drop --chat to use the prompt as raw text.")
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    else:
        text = prompt
    return tok(text, return_tensors="pt", add_special_tokens=False).input_ids


def _columns(left: str, right: str, width: int = 56) -> str:
    a = textwrap.wrap(left, width) or [""]
    b = textwrap.wrap(right, width) or [""]
    n = max(len(a), len(b))
    a, b = a + [""] * (n - len(a)), b + [""] * (n - len(b))
    return "\n".join(f"  {x:<{width}} | {y}" for x, y in zip(a, b))


def run(args: argparse.Namespace) -> dict:
    from .. import models
    from ..data import CorpusConfig, load_token_tensor
    from ..pretrained import load_sae_spec
    from ..splice import resolve_hook
    from ..steer import Edit, SteerConfig, generate, side_effects, steer

    # Everything a user can get wrong is checked before the model loads or anything is printed.
    edits = [Edit.parse(e) for e in args.edit]
    if not args.prompt or not args.prompt.strip():
        raise ValueError("--prompt is empty; give the text to continue, e.g. --prompt 'The weather today is'.")
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens {args.max_new_tokens}; it must be >= 1.")
    if args.eval_tokens < 0:
        raise ValueError(f"--eval-tokens {args.eval_tokens}; it must be >= 0 (0 skips the side effects).")
    SteerConfig(args.positions, not args.replace, args.exclude_first)
    sae = load_sae_spec(args.sae).eval().requires_grad_(False)
    d_sae = int(sae.cfg.d_sae)
    for e in edits:
        if e.latent >= d_sae:
            raise ValueError(f"--edit {e}: latent {e.latent} is out of range; the SAE in {args.sae} has {d_sae} "
                             f"latents (0..{d_sae - 1}).")
    if not (args.hook or sae.metadata.get("hook_name")):
        raise ValueError(f"The SAE in {args.sae} names no hook point in its metadata; pass --hook (e.g. resid_post.6).")
    model_name = args.model or sae.metadata.get("model_name") or models.DEFAULT_MODEL
    if args.model is None and model_name not in models.EMBEDDED:
        model_name = models.DEFAULT_MODEL
    adapter = models.load_model(model_name, backend=args.backend, dtype=args.dtype)
    checks = dict(allow_hook_mismatch=args.allow_hook_mismatch, strict=args.strict)
    hook = resolve_hook(adapter, sae, args.hook, **checks)  # the checks of sae-hooks eval
    ids = _prompt_ids(adapter.tokenizer, args.prompt, args.chat)
    if ids.shape[1] == 0:
        raise ValueError(f"--prompt {args.prompt!r} tokenizes to no tokens.")
    plan = {hook: (sae, edits)}
    opts = dict(positions=args.positions, keep_error=not args.replace, exclude_first=args.exclude_first, **checks)

    out: dict = {}
    for mode in ("greedy", "sampled"):
        kw = dict(sample=mode == "sampled", temperature=args.temperature, seed=args.seed)
        base = generate(adapter, ids, args.max_new_tokens, **kw)
        with steer(adapter, plan, **opts):
            st = generate(adapter, ids, args.max_new_tokens, **kw)
        out[mode] = (base.texts[0], st.texts[0])

    result: dict = {
        "model": model_name, "backend": adapter.backend, "hook": hook, "edits": [str(e) for e in edits],
        "positions": args.positions, "keep_error": not args.replace, "prompt": args.prompt, "chat": args.chat,
        "baseline": out["greedy"][0], "steered": out["greedy"][1],
        "sampled_baseline": out["sampled"][0], "sampled_steered": out["sampled"][1],
        "seed": args.seed, "temperature": args.temperature,
        "delta_ce": None, "kl": None, "ce_clean": None, "ce_steered": None, "eval_tokens": 0, "latent_change": [],
    }
    if args.eval_tokens > 0:
        block = load_token_tensor(adapter.tokenizer, CorpusConfig(source=args.corpus, split=args.split, ctx=args.ctx),
                                  args.eval_tokens, max_positions=adapter.max_positions)
        fx = side_effects(adapter, plan, block, keep_error=not args.replace, exclude_first=args.exclude_first, **checks)
        result.update(delta_ce=fx.delta_ce, kl=fx.kl, ce_clean=fx.ce_clean, ce_steered=fx.ce_steered,
                      eval_tokens=fx.tokens,
                      latent_change=[{**lc._asdict(), "moved": lc.moved} for lc in fx.latent_change])
        result["side_effects_scope"] = (f"edits applied at every position of {args.corpus!r} [{args.split}] text except "
                                        f"the first {args.exclude_first} and special tokens")

    if not args.json:
        print(f"{model_name} ({adapter.backend}) | {hook} | edits {', '.join(result['edits'])} | positions {args.positions}")
        print(f"prompt{' (chat template)' if args.chat else ''}: {args.prompt!r}")
        for mode, label in (("greedy", "greedy"), ("sampled", f"sampled, seed {args.seed}, T={args.temperature:g}")):
            print(f"\n[{label}]")
            print(_columns("baseline", "steered"))
            print(_columns("-" * 8, "-" * 7))
            print(_columns(*out[mode]))
        if args.eval_tokens > 0:
            print(f"\nside effects on {result['eval_tokens']} predictions ({args.corpus} [{args.split}]):")
            print(f"  CE clean {result['ce_clean']:.4f}  steered {result['ce_steered']:.4f}  "
                  f"delta CE {result['delta_ce']:+.4f} nats   KL(clean || steered) {result['kl']:.4f} nats/token")
            for lc in result["latent_change"]:
                print(f"  {lc['edit']}: mean code clean {lc['clean']:.3f} -> asked {lc['target']:.3f} -> re-encoded "
                      f"{lc['reencoded']:.3f}; fires on {lc['active_clean']:.1%} -> {lc['active_steered']:.1%}; "
                      f"moved: {lc['moved']}")
    return result
