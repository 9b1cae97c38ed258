"""Evaluation cost and agreement with SAELens, side by side in one run on SmolLM2 at resid_post.6.

1. Cost: ``evaluate`` (clean, spliced, zero- and mean-ablated, plus FVU/L0) over N held-out tokens
   vs 4 plain forwards of the model over the same tokens; the ratio must be < 1 (the blocks below
   the hook run once; docs/benchmarks.md).
2. Agreement: our zero-ablation recaptured score next to SAELens's own ``get_recons_loss`` on the
   same SAE and tokens (SAELens run in .venv-saelens via ``bench/saelens_eval.py``). SAELens ablates
   every position and splices all but its ignored (special) ids, so ours is also shown with that
   convention (``ablation_scope="all"``, ``exclude_first=0``) next to our default.

    python bench/eval.py --tokens 4096            # --sae DIR to use a trained SAE
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from sae_hooks import load_model
from sae_hooks.data import CorpusConfig, TokenBatch, load_token_tensor, make_mask, special_token_ids
from sae_hooks.evaluate import METRIC_DEFINITIONS, evaluate
from sae_hooks.models import embedded_model_dir
from sae_hooks.sae import load_sae, make_sae

ROOT = Path(__file__).resolve().parents[1]


def quick_sae(adapter, hook: str, d_sae: int, k: int, n_tokens: int):
    """A TopK SAE fitted for a few epochs on training-split activations (enough for a real score)."""
    tr = load_token_tensor(adapter.tokenizer, CorpusConfig(split="train", ctx=128), n_tokens)
    acts = adapter.capture(tr.input_ids, [hook])[hook][tr.mask]
    sae = make_sae("topk", adapter.d_model, d_sae, k=k, seed=0,
                   metadata={"hook_name": f"blocks.{hook.split('.')[1]}.hook_resid_post", "model_name": adapter.name})
    sae.init_from_data(acts, method="mean")
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    for _ in range(4):
        for x in acts[torch.randperm(acts.shape[0], generator=torch.Generator().manual_seed(0))].split(512):
            loss = sae.training_loss(x).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            sae.after_step()
    return sae


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--hook", default="resid_post.6")
    p.add_argument("--sae", default=None, help="SAE folder; default: a quickly fitted TopK (k=32, 4608 latents)")
    p.add_argument("--train-tokens", type=int, default=16384)
    p.add_argument("--saelens-python", default=str(ROOT / ".venv-saelens" / "bin" / "python"))
    p.add_argument("--skip-saelens", action="store_true")
    p.add_argument("--repeats", type=int, default=5,
                   help="alternations of the two sides (ABBA order); reported: the ratio of each side's best "
                        "time and the median of the per-round ratios (the machine is noisy)")
    args = p.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))

    adapter = load_model()
    tok = adapter.tokenizer
    held = load_token_tensor(tok, CorpusConfig(split="eval", ctx=128), args.tokens)
    sae = load_sae(args.sae) if args.sae else quick_sae(adapter, args.hook, 4608, 32, args.train_tokens)
    ids = held.input_ids
    print(f"SmolLM2 fp32, {args.hook}, {ids.numel()} tokens ({ids.shape[0]}x{ids.shape[1]}), batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads")

    # The reference is the model's own forward as a user runs it: HF causal LM, logits over every
    # position, same dtype, batch size, attention implementation and threads as evaluate's.
    model = adapter.model
    print(f"plain forward: {type(model).__name__}(input_ids, use_cache=False).logits, "
          f"{next(model.parameters()).dtype}, attention {getattr(model.config, '_attn_implementation', '?')}")

    def plain() -> float:
        t = time.perf_counter()
        with torch.no_grad():
            for _ in range(4):
                for lo in range(0, ids.shape[0], args.batch_size):
                    adapter.forward(ids[lo: lo + args.batch_size])
        return time.perf_counter() - t

    def ours() -> float:
        t = time.perf_counter()
        evaluate(adapter, sae, held, hook=args.hook, batch_size=args.batch_size)
        return time.perf_counter() - t

    # Warm-up (allocator, first-call overheads): one plain batch and one full evaluate, whose report is shown.
    with torch.no_grad():
        adapter.forward(ids[: args.batch_size])
    report = evaluate(adapter, sae, held, hook=args.hook, batch_size=args.batch_size)
    # Alternate the two sides in ABBA order (plain first in even rounds, evaluate first in odd ones), so
    # load that comes and goes on the shared machine hits both alike; each round gives one ratio.
    plain_runs: list[float] = []
    eval_runs: list[float] = []
    for r in range(args.repeats):
        if r % 2 == 0:
            plain_runs.append(plain())
            eval_runs.append(ours())
        else:
            eval_runs.append(ours())
            plain_runs.append(plain())
    t_plain, t_eval = min(plain_runs), min(eval_runs)
    pairs = [e / p for e, p in zip(eval_runs, plain_runs)]
    median = statistics.median(pairs)
    print(f"4 plain forwards: {t_plain:.2f} s   evaluate (4 conditions + metrics): {t_eval:.2f} s   "
          f"ratio of bests {t_eval / t_plain:.3f}   median of {len(pairs)} paired ratios {median:.3f} "
          f"(range {min(pairs):.3f}-{max(pairs):.3f}; must be < 1)")
    print(f"  runs (s): plain {', '.join(f'{x:.2f}' for x in plain_runs)}; "
          f"evaluate {', '.join(f'{x:.2f}' for x in eval_runs)}")
    print(report.table())
    result = {"tokens": int(ids.numel()), "plain4_s": t_plain, "eval_s": t_eval, "ratio": t_eval / t_plain,
              "ratio_median_pairs": median, "pair_ratios": pairs, "plain4_runs_s": plain_runs, "eval_runs_s": eval_runs,
              "ours": report.to_dict()}

    # Agreement with SAELens: same SAE folder, same tokens, SAELens's conventions on our side too.
    special = special_token_ids(tok)
    compat = evaluate(adapter, sae, TokenBatch(ids, make_mask(ids, special, exclude_first=0)), hook=args.hook,
                      batch_size=args.batch_size, ablation_scope="all", exclude_first=0)
    result["ours_saelens_convention"] = compat.to_dict()
    if not args.skip_saelens:
        with tempfile.TemporaryDirectory() as tmp:
            sae_dir = args.sae or os.path.join(tmp, "sae")
            if not args.sae:
                sae.save(sae_dir)
            torch.save({"input_ids": ids, "ignore": special}, os.path.join(tmp, "ids.pt"))
            out = os.path.join(tmp, "saelens.json")
            subprocess.run([args.saelens_python, str(ROOT / "bench" / "saelens_eval.py"), "--sae", sae_dir,
                            "--tokens", os.path.join(tmp, "ids.pt"), "--model-dir", str(embedded_model_dir()),
                            "--batch-size", str(args.batch_size), "--out", out], check=True)
            theirs = json.load(open(out))
        result["saelens"] = theirs
        rel = abs(compat.recaptured_zero - theirs["ce_loss_score"]) / abs(theirs["ce_loss_score"])
        result["agreement_rel"] = rel
        print(f"\nzero-ablation recaptured  SAELens {theirs['ce_loss_score']:.4f}   ours (SAELens convention) "
              f"{compat.recaptured_zero:.4f}   relative difference {rel:.2e}   ours (default) {report.recaptured_zero:.4f}")
        print(f"CE clean / spliced / zero  SAELens {theirs['ce_loss_without_sae']:.4f} / {theirs['ce_loss_with_sae']:.4f} / "
              f"{theirs['ce_loss_with_ablation']:.4f}   ours {compat.ce_clean:.4f} / {compat.ce_spliced:.4f} / "
              f"{compat.ce_zero_ablated:.4f}")
    print("definitions: " + METRIC_DEFINITIONS)
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
