"""Steering SmolLM2 with a feature of a pretrained SAE (mirrors tutorials/steering.md).

Runs offline on CPU: loads the zoo's TopK SAE at resid_post.28 (of 30 layers),
``pretrained:smollm2-l28-topk-2304`` (or trains one with ``sae-hooks train`` into ``--run``),
chooses a latent by a fixed rule (``--choose writes``: the specific latent whose read-out singles
out a chosen word; ``--choose reads``: the strongest specific latent *on* that word), lists its
promoted tokens (decoder direction → final-norm gain → unembedding), then steers 20 fixed neutral
prompts at three edit strengths (a doubling ladder), counts the promoted tokens in the continuations
against the unsteered baseline, and measures the side effects on held-out text.

    python tutorials/steering.py                          # the pretrained SAE, prints everything
    python tutorials/steering.py --run runs/steer_l28     # train (or reuse) an SAE in a `sae-hooks train` run folder
    python tutorials/steering.py --choose reads           # the latent that fires on " error" instead
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from pathlib import Path

import torch

from sae_hooks import load_model, load_pretrained
from sae_hooks.cli import main as sae_hooks_cli
from sae_hooks.data import CorpusConfig, iter_batches, load_token_tensor
from sae_hooks.features import harvest, latents_for_text, logit_effects
from sae_hooks.sae import load_sae
from sae_hooks.steer import generate, side_effects, steer

# Late enough that a direction's direct read-out means something: the logit lens of SmolLM2
# (final norm + unembedding of the residual) names the right next token from layer 28 on, while at
# layer 24 it still gives ',', ' the', ' D' (measured on "The capital of Germany is" → " Berlin").
HOOK = "resid_post.28"
# The pretrained SAE used by default (trained with the zoo's command, pretrained/README.md).
PRETRAINED = "smollm2-l28-topk-2304"
# With --run: a training run, exactly as on the command line (seeded: the same flags give the same SAE).
TRAIN_ARGS = ["--hook", HOOK, "--arch", "topk", "--d-sae", "4608", "--k", "32", "--tokens", "250000",
              "--eval-every", "0", "--checkpoint-every", "0", "--progress", "off"]
TOP_N = 20          # size of the promoted-token list that is counted
# Edit strengths: the norm of the added vector value·W_dec[f] as a fraction of the median residual
# norm at the hook. A doubling ladder, all of it reported: at resid_post.24 the latent's own top
# activation corresponded to only ~0.12, too weak to change what the model says.
FRACTIONS = (0.25, 0.5, 1.0)
SPECIFIC = 0.02     # a candidate must fire on < 2 % of held-out tokens (dense latents fire on everything)
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


def train_or_reuse(run: Path) -> Path:
    """The SAE folder of the run in ``run``, training it first with ``sae-hooks train`` if absent."""
    sae_dir = run / "saes" / f"topk_{HOOK}"
    if not (sae_dir / "cfg.json").is_file():
        print(f"1. Training: sae-hooks train {' '.join(TRAIN_ARGS)} --out {run}", flush=True)
        rc = sae_hooks_cli(["train", *TRAIN_ARGS, "--out", str(run), *(["--overwrite"] if run.exists() else [])])
        if rc != 0 or not (sae_dir / "cfg.json").is_file():
            raise SystemExit(f"Training failed (exit code {rc}); no SAE in {sae_dir}.")
        print((run / "summary.txt").read_text())
    return sae_dir


@torch.no_grad()
def readout_zscores(adapter, sae, token_id: int) -> torch.Tensor:
    """[d_sae] How far token ``token_id`` stands out in each latent's read-out W_U (g ⊙ W_dec[f]),
    in standard deviations over the vocabulary (the scores ``logit_effects`` ranks)."""
    W = adapter.model.get_output_embeddings().weight.float()  # [vocab, d]
    g = adapter.model.get_submodule(adapter.family.final_norm).weight.float()  # [d]
    out = []
    for rows in (sae.W_dec * g).float().split(512):  # [<=512, d] -> scores [<=512, vocab]
        s = rows @ W.T
        out.append((s[:, token_id] - s.mean(1)) / s.std(1))
    return torch.cat(out)


def count_promoted(new_ids: torch.Tensor, promoted: set[int]) -> int:
    """How many generated tokens are in the promoted list."""
    return sum(int(t) in promoted for t in new_ids.flatten())


def which_promoted(gens: list, promoted: set[int], tok) -> str:
    """The promoted tokens that were generated, most frequent first: "' ' 29, '-' 4"."""
    c = Counter(int(t) for g in gens for t in g.new_ids.flatten() if int(t) in promoted)
    return ", ".join(f"{tok.decode([t])!r} {n}" for t, n in c.most_common()) or "none"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--run", default=None,
                   help="instead of the pretrained SAE: a sae-hooks train run folder (trained there if it holds no "
                        "SAE yet)")
    p.add_argument("--word", default=" error")
    p.add_argument("--choose", default="writes", choices=["writes", "reads"],
                   help="writes: the latent whose read-out singles out --word; reads: the latent firing most on it")
    p.add_argument("--text", default="The function raised an error because the file was missing. "
                                     "Check the error message and fix the error before you run it again.")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--eval-tokens", type=int, default=4096)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                   help="torch threads; 1 is faster on a busy machine (generation is many small ops)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    if args.run:
        sae_dir = train_or_reuse(Path(args.run))
        sae, sae_spec = load_sae(sae_dir), str(sae_dir)
    else:
        sae, sae_spec = load_pretrained(PRETRAINED), f"pretrained:{PRETRAINED}"
    sae = sae.eval().requires_grad_(False)
    adapter = load_model()  # fp32 for steering and evaluation
    tok = adapter.tokenizer
    print(f"SAE: {sae.architecture}, d_sae {sae.cfg.d_sae}, k {sae.cfg.k}, at {HOOK}, from {sae_spec}")

    held_out = list(iter_batches(tok, CorpusConfig(split="eval", ctx=128), 16, max_tokens=32_768))
    h = harvest(adapter, sae, HOOK, held_out, k=8)
    freq = h.frequency
    specific = (freq > 0) & (freq < SPECIFIC)
    if args.choose == "writes":
        word_ids = tok(args.word, add_special_tokens=False).input_ids
        if len(word_ids) != 1:
            raise SystemExit(f"--word {args.word!r} is {len(word_ids)} tokens; --choose writes needs a one-token word.")
        print(f"\n2. Choosing the latent: among latents firing on 0-{SPECIFIC:.0%} of held-out tokens, the one whose "
              f"read-out singles out {args.word!r} (largest z-score of that token over the vocabulary)")
        z = readout_zscores(adapter, sae, word_ids[0]).masked_fill(~specific, float("-inf"))
        order = z.argsort(descending=True)[:5].tolist()
        for f in order:
            print(f"  latent {f:5d}  z {float(z[f]):5.1f}  fires on {float(freq[f]):.2%} of held-out tokens")
    else:
        print(f"\n2. Choosing the latent: the strongest on {args.word!r} among latents firing on 0-{SPECIFIC:.0%} of "
              "held-out tokens")
        cands = latents_for_text(adapter, sae, HOOK, args.text, word=args.word, top=10)
        for c in cands:
            print(f"  latent {c.latent:5d}  mean {c.mean:6.2f}  fires on {c.fraction:.0%} of the word's tokens, "
                  f"{float(freq[c.latent]):.2%} of held-out tokens")
        order = [c.latent for c in cands if bool(specific[c.latent])]
    if not order:
        raise SystemExit(f"No specific latent found for {args.word!r}; try another --word / --text.")
    latent = order[0]
    top_act = float(h.top_values[latent, 0])
    print(f"\nChosen latent {latent} (top held-out activation {top_act:.1f}). Top held-out contexts (firing tokens «marked»):")
    for c in h.contexts(latent, tok, adapter=adapter, sae=sae, n=6):
        print(f"  {c.activation:6.2f}  {c.text!r}")
    fx = logit_effects(adapter, sae, latent, k=TOP_N)
    print(f"Promoted tokens (top {TOP_N}): ", [t.token for t in fx.promoted])
    print("Suppressed tokens (top 10):", [t.token for t in fx.suppressed[:10]])
    promoted = {t.token_id for t in fx.promoted}

    eval_block = load_token_tensor(tok, CorpusConfig(split="eval", ctx=128), args.eval_tokens)
    ids, mask = eval_block
    resid_norm = float(adapter.capture(ids, [HOOK])[HOOK][mask].norm(dim=-1).median())
    dec_norm = float(sae.W_dec[latent].norm())
    print(f"\nMedian residual norm at {HOOK} (held-out, position 0 excluded): {resid_norm:.0f}; "
          f"||W_dec[{latent}]|| = {dec_norm:.1f}")
    base_gens = [generate(adapter, tok(q, return_tensors="pt").input_ids, args.max_new_tokens) for q in PROMPTS]
    base_n = [count_promoted(g.new_ids, promoted) for g in base_gens]
    print(f"Promoted tokens in the 20 baseline continuations: {which_promoted(base_gens, promoted, tok)}")
    rows = []
    for frac in FRACTIONS:
        value = round(frac * resid_norm / dec_norm, 1)
        edit = f"{latent}:add:{value}"
        print(f"\n3. Steering the 20 prompts with {edit} (edit norm {frac:g} x the median residual norm = "
              f"{value / top_act:.1f} x the top activation; greedy, "
              f"{args.max_new_tokens} new tokens, raw text prompts, every position but the first edited)")
        st_n, st_gens = [], []
        for i, (q, base) in enumerate(zip(PROMPTS, base_gens)):
            with steer(adapter, {HOOK: (sae, [edit])}):
                st = generate(adapter, tok(q, return_tensors="pt").input_ids, args.max_new_tokens)
            st_n.append(count_promoted(st.new_ids, promoted))
            st_gens.append(st)
            if i < 3:
                print(f"  {q!r}\n    baseline: {base.texts[0]!r}\n    steered:  {st.texts[0]!r}")
        se = side_effects(adapter, {HOOK: (sae, [edit])}, eval_block)
        lc = se.latent_change[0]
        print(f"  Prompts whose continuation holds a top-{TOP_N} promoted token: baseline {sum(n > 0 for n in base_n)}/20, "
              f"steered {sum(n > 0 for n in st_n)}/20; promoted tokens in all 20 continuations: baseline "
              f"{sum(base_n)}, steered {sum(st_n)} (of {20 * args.max_new_tokens} generated)")
        print(f"  Which promoted tokens were generated (steered): {which_promoted(st_gens, promoted, tok)}")
        print(f"  Side effects on {se.tokens} held-out predictions (edit at every position but the first): "
              f"CE clean {se.ce_clean:.3f}, steered {se.ce_steered:.3f}, delta CE {se.delta_ce:+.3f} nats, "
              f"KL(clean || steered) {se.kl:.3f} nats/token")
        print(f"  Re-encoded: latent {latent} mean code {lc.clean:.2f} -> {lc.reencoded:.2f} (asked {lc.target:.2f}), "
              f"fires on {lc.active_clean:.1%} -> {lc.active_steered:.1%} of tokens, moved: {lc.moved}")
        rows.append((edit, sum(n > 0 for n in st_n), sum(st_n), se.delta_ce, se.kl))

    print(f"\nSummary (latent {latent}, top-{TOP_N} promoted tokens, 20 prompts x {args.max_new_tokens} greedy tokens):")
    print(f"  {'edit':<22} {'prompts with one':>16} {'tokens':>7} {'dCE nats':>9} {'KL nats/tok':>12}")
    print(f"  {'baseline (no edit)':<22} {sum(n > 0 for n in base_n):>13}/20 {sum(base_n):>7} {0:>+9.3f} {0:>12.3f}")
    for edit, k, n, dce, kl in rows:
        print(f"  {edit:<22} {k:>13}/20 {n:>7} {dce:>+9.3f} {kl:>12.3f}")
    print(f"\nThe same edit from the command line:\n  sae-hooks steer --sae {sae_spec} --model smollm2-135m-instruct "
          f"--hook {HOOK} --edit {rows[-2][0]} --prompt {PROMPTS[0]!r} --max-new-tokens 20 --json")


if __name__ == "__main__":
    main()
