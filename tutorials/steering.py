"""Steering SmolLM2 with a feature of a freshly trained SAE (mirrors tutorials/steering.md).

Runs offline on CPU in ~6 minutes: trains a TopK SAE at resid_post.6 on ~200k tokens of the
embedded corpus (a short inline loop; skipped when the SAE is already saved), finds a latent that
fires on a chosen word, shows its top contexts and promoted tokens, then steers 20 neutral prompts
with it and measures the side effects on held-out text.

    python tutorials/steering.py                     # trains (or reuses) the SAE, prints everything
    python tutorials/steering.py --word " file" --value 40
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from sae_hooks import load_model
from sae_hooks.data import CorpusConfig, iter_batches, load_token_tensor
from sae_hooks.features import harvest, latents_for_text, logit_effects
from sae_hooks.models import cache_root
from sae_hooks.sae import load_sae, make_sae
from sae_hooks.steer import generate, side_effects, steer

HOOK = "resid_post.6"
PROMPTS = [
    "My favourite thing about the weekend is",
    "The best way to learn a new language is",
    "Yesterday I went to the market and",
    "The old house at the end of the street",
    "When I was a child, I always wanted to",
    "The most important thing in a friendship is",
    "In the morning, the first thing I do is",
    "The recipe for a good soup starts with",
    "Our teacher told us a story about",
    "The weather today is",
    "She opened the letter and",
    "The city was quiet because",
    "A good holiday should include",
    "He looked out of the window and saw",
    "The museum has a new exhibition on",
    "Every year, the village celebrates",
    "The little dog ran across the",
    "My grandmother always said that",
    "The train was late, so we",
    "At the end of the film, the hero",
]


def train_sae(adapter, out: Path, tokens: int, d_sae: int, k: int) -> None:
    """A short inline TopK training loop over live activations (position 0 and specials masked)."""
    sae = make_sae("topk", d_in=adapter.d_model, d_sae=d_sae, k=k, seed=0,
                   metadata={"model_name": "smollm2-135m-instruct", "hook_name": HOOK, "context_size": 128})
    opt = torch.optim.Adam(sae.parameters(), lr=2e-3)
    last_fired = torch.zeros(d_sae)  # tokens since each latent last fired
    seen, t0 = 0, time.time()
    for step, (ids, mask) in enumerate(iter_batches(adapter.tokenizer, CorpusConfig(ctx=128), 32, max_tokens=tokens)):
        x = adapter.capture(ids, [HOOK])[HOOK][mask]  # [n, 576], evaluated positions only
        if step == 0:
            sae.init_from_data(x[:2048])
        loss = sae.training_loss(x, dead_mask=last_fired > 50_000)
        opt.zero_grad()
        loss.loss.backward()
        opt.step()
        sae.after_step()
        last_fired += x.shape[0]
        last_fired[loss.fired] = 0
        seen += x.shape[0]
        if step % 10 == 0:
            fvu = float(loss.parts["mse"]) / float((x - x.mean(0)).pow(2).sum(-1).mean())
            print(f"  step {step:3d}  tokens {seen:7d}  FVU {fvu:.3f}  L0 {float(loss.l0):.1f}  "
                  f"{seen / (time.time() - t0):.0f} tok/s", flush=True)
    sae.save(str(out))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sae", default=str(cache_root() / "tutorial_sae_resid_post6"))
    p.add_argument("--tokens", type=int, default=200_000)
    p.add_argument("--word", default=" error")
    p.add_argument("--text", default="The function raised an error because the file was missing. "
                                     "Check the error message and fix the error before you run it again.")
    p.add_argument("--value", type=float, default=None, help="add value; default 1.25x the latent's top held-out activation")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--eval-tokens", type=int, default=4096)
    args = p.parse_args()
    torch.manual_seed(0)
    adapter = load_model()
    tok = adapter.tokenizer

    path = Path(args.sae)
    if not (path / "cfg.json").is_file():
        print(f"1. Training a TopK SAE (4608 latents, k=32) at {HOOK} on {args.tokens} tokens -> {path}")
        train_sae(adapter, path, args.tokens, 4608, 32)
    sae = load_sae(path).eval().requires_grad_(False)
    print(f"SAE: {sae.architecture}, d_sae {sae.cfg.d_sae}, from {path}")

    print(f"\n2. Latents firing on {args.word!r} in: {args.text!r}")
    held_out = list(iter_batches(tok, CorpusConfig(split="eval", ctx=128), 16, max_tokens=32_768))
    h = harvest(adapter, sae, HOOK, held_out, k=8)
    cands = latents_for_text(adapter, sae, HOOK, args.text, word=args.word, top=10)
    for c in cands:
        print(f"  latent {c.latent:5d}  mean {c.mean:6.2f}  fires on {c.fraction:.0%} of the word's tokens, "
              f"{float(h.frequency[c.latent]):.2%} of held-out tokens")
    # Specific, not dense: the strongest on the word among latents firing on < 2 % of held-out tokens.
    specific = [c.latent for c in cands if float(h.frequency[c.latent]) < 0.02]
    if not specific:
        raise SystemExit(f"No latent fires specifically on {args.word!r}; try another --word / --text.")
    latent = specific[0]
    print(f"\nChosen latent {latent}. Top held-out contexts (firing tokens «marked»):")
    for c in h.contexts(latent, tok, adapter=adapter, sae=sae, n=6):
        print(f"  {c.activation:6.2f}  {c.text!r}")
    fx = logit_effects(adapter, sae, latent, k=20)
    print("Promoted tokens:  ", [t.token for t in fx.promoted[:12]])
    print("Suppressed tokens:", [t.token for t in fx.suppressed[:12]])

    value = args.value if args.value is not None else round(1.25 * float(h.top_values[latent, 0]), 1)
    edit = f"{latent}:add:{value}"
    print(f"\n3. Steering 20 prompts with {edit} (greedy, {args.max_new_tokens} new tokens, raw text prompts)")
    promoted = {t.token_id for t in fx.promoted}
    concept = args.word.strip().lower()
    hits = {"baseline": [0, 0], "steered": [0, 0]}  # [prompts with a promoted token, promoted tokens]
    words = {"baseline": 0, "steered": 0}  # prompts whose continuation contains the word itself
    for i, prompt in enumerate(PROMPTS):
        ids = tok(prompt, return_tensors="pt").input_ids
        base = generate(adapter, ids, args.max_new_tokens)
        with steer(adapter, {HOOK: (sae, [edit])}):
            st = generate(adapter, ids, args.max_new_tokens)
        for name, g in (("baseline", base), ("steered", st)):
            n = sum(int(t) in promoted for t in g.new_ids[0])
            hits[name][0] += n > 0
            hits[name][1] += n
            words[name] += concept in g.texts[0].lower()
        if i < 5:
            print(f"  {prompt!r}\n    baseline: {base.texts[0]!r}\n    steered:  {st.texts[0]!r}")
    print(f"Prompts whose continuation contains a top-20 promoted token: baseline {hits['baseline'][0]}/20, "
          f"steered {hits['steered'][0]}/20 (tokens: {hits['baseline'][1]} vs {hits['steered'][1]})")
    print(f"Prompts whose continuation contains {concept!r}: baseline {words['baseline']}/20, steered {words['steered']}/20")

    ids = tok(PROMPTS[0], return_tensors="pt").input_ids
    with steer(adapter, {HOOK: (sae, [edit])}):
        sampled = generate(adapter, ids, args.max_new_tokens, sample=True, seed=0)
    print(f"Sampled (seed 0, T=1), steered: {sampled.texts[0]!r}")

    print(f"\n4. Side effects on {args.eval_tokens} held-out tokens (edit applied at every position but the first)")
    eval_block = load_token_tensor(tok, CorpusConfig(split="eval", ctx=128), args.eval_tokens)
    se = side_effects(adapter, {HOOK: (sae, [edit])}, eval_block)
    print(f"  CE clean {se.ce_clean:.3f}, steered {se.ce_steered:.3f}, delta CE {se.delta_ce:+.3f} nats; "
          f"KL(clean || steered) {se.kl:.3f} nats/token over {se.tokens} predictions")
    for lc in se.latent_change:
        print(f"  latent {lc.edit}: clean mean {lc.clean:.2f} -> target {lc.target:.2f}, re-encoded {lc.reencoded:.2f} "
              f"(fires on {lc.active_clean:.1%} -> {lc.active_steered:.1%} of tokens; moved: {lc.moved})")


if __name__ == "__main__":
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    main()
