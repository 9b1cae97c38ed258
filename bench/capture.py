"""Capture throughput at one hook point against a plain full forward, measured side by side.

    python bench/capture.py                       # SmolLM2, resid_post.6, 8x128 tokens, fp32
    python bench/capture.py --dtype bf16 --hook resid_post.12

Both sides run on the same token batches, interleaved, so machine noise hits both alike; the
ratio (capture tokens/s ÷ full-forward tokens/s) is the figure to read. Capture stops the forward
right after the hooked block.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from sae_hooks import load_model
from sae_hooks.data import CorpusConfig, load_token_tensor


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--hook", default="resid_post.6")
    p.add_argument("--batch", type=int, default=8, help="sequences per forward")
    p.add_argument("--ctx", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    adapter = load_model(args.model, dtype=args.dtype)
    tokens = load_token_tensor(adapter.tokenizer, CorpusConfig(split="eval", ctx=args.ctx), args.batch * args.ctx * args.repeats)
    batches = tokens.input_ids.split(args.batch)[: args.repeats]

    def full(ids):
        with torch.inference_mode():
            adapter.model(input_ids=ids, use_cache=False)

    def capture(ids):
        with torch.inference_mode():
            adapter.capture(ids, [args.hook])

    full(batches[0]), capture(batches[0])  # warm-up
    times: dict[str, list[float]] = {"full_forward": [], "capture": []}
    for ids in batches:
        for name, fn in (("full_forward", full), ("capture", capture)):
            t = time.perf_counter()
            fn(ids)
            times[name].append(time.perf_counter() - t)
    n = batches[0].numel()
    tps = {k: n / statistics.median(v) for k, v in times.items()}
    result = {
        "model": args.model, "hook": args.hook, "dtype": args.dtype, "tokens_per_batch": n, "repeats": len(batches),
        "full_forward_tokens_per_s": round(tps["full_forward"], 1),
        "capture_tokens_per_s": round(tps["capture"], 1),
        "ratio": round(tps["capture"] / tps["full_forward"], 2),
    }
    print(f"full forward : {result['full_forward_tokens_per_s']:>8.1f} tokens/s")
    print(f"capture {args.hook}: {result['capture_tokens_per_s']:>8.1f} tokens/s")
    print(f"ratio        : {result['ratio']:.2f}x  (acceptance: >= 4.5 at resid_post.6)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
