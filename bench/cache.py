"""Training from an activation cache against training live, both in one invocation (a ratio, not absolute times).

Job: SmolLM2 ``resid_post.6``, TopK k=32, 4,608 latents, context 128, 4,096-token batches, the
stdlib corpus's train split in the order ``sae-hooks train`` streams it (seeded document shuffle),
bf16 LM, fp32 SAE. Steps:

1. ``sae-hooks cache`` writes the activations of those tokens once (timed: caching tokens/s, and the
   cache's size on disk per million tokens per hook point);
2. ``sae-hooks train`` live and ``sae-hooks train --from-cache`` with the same settings, alternated
   ``--repeats`` times (each side's best time counts: other users of a shared machine slow whichever
   run they land on). Throughput = training tokens / training seconds as each run reports it (model
   load and held-out evaluation excluded on both sides);
3. the two SAEs are compared tensor by tensor: with the same tokens, model dtype and seed they are
   bitwise equal (the cache stores exactly the rows a live run computes).

    python bench/cache.py                                   # the benchmark job, 400k tokens
    python bench/cache.py --tokens 100000 --repeats 1       # a quicker look
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sae_hooks(args: list[str]) -> tuple[dict, float]:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "sae_hooks", *args, "--json"], capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise SystemExit(f"sae-hooks {args[0]} failed:\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1]), time.perf_counter() - t0


def same_weights(a: str, b: str) -> bool:
    import torch
    from safetensors.torch import load_file

    x, y = load_file(str(Path(a) / "sae_weights.safetensors")), load_file(str(Path(b) / "sae_weights.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=400_000)
    p.add_argument("--hook", default="resid_post.6")
    p.add_argument("--arch", default="topk")
    p.add_argument("--d-sae", type=int, default=4608)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--ctx", type=int, default=128)
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dtype", default="bf16", choices=["bf16", "fp32"],
                   help="storage dtype; bf16 is exact for the bf16 LM (the SAEs still compare bitwise)")
    p.add_argument("--repeats", type=int, default=2, help="alternations of (live, from cache)")
    p.add_argument("--eval-ce-tokens", type=int, default=0, help="held-out tokens for the spliced CE (0: skip)")
    p.add_argument("--work", default=None, help="folder for the cache and the runs (default: a temp dir)")
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_cache_"))
    work.mkdir(parents=True, exist_ok=True)
    common = ["--ctx", str(args.ctx), "--batch-tokens", str(args.batch_tokens), "--seed", str(args.seed),
              "--tokens", str(args.tokens), "--hook", args.hook, "--progress", "off"]
    train = [*common, "--arch", args.arch, "--d-sae", str(args.d_sae), "--k", str(args.k), "--dtype", "bf16",
             "--eval-every", "0", "--eval-ce-tokens", str(args.eval_ce_tokens), "--checkpoint-every", "0", "--overwrite"]
    report: dict = {"job": f"{args.hook} {args.arch} k={args.k} d_sae={args.d_sae} ctx={args.ctx} batch={args.batch_tokens} "
                           f"tokens={args.tokens} seed={args.seed}, bf16 LM, cache {args.cache_dtype}",
                    "load_avg_start": os.getloadavg()[0]}

    cache = work / "cache"
    wrote, wall = sae_hooks(["cache", *common, "--model-dtype", "bf16", "--dtype", args.cache_dtype, "--out", str(cache),
                             "--overwrite"])
    report["cache"] = {"tokens_per_s": wrote["tokens_per_s"], "seconds": wrote["seconds"], "wall_s": round(wall, 1),
                       "bytes": wrote["bytes"], "shards": wrote["shards"],
                       "mb_per_million_tokens_per_hook": wrote["mb_per_million_tokens_per_hook"]}
    print(f"cache:      {wrote['tokens_per_s']:,.0f} tok/s written, {wrote['bytes'] / 1e6:,.0f} MB = "
          f"{wrote['mb_per_million_tokens_per_hook']:,.0f} MB per million tokens per hook", flush=True)

    lives, cached = [], []
    for r in range(args.repeats):
        lives.append(sae_hooks(["train", *train, "--out", str(work / "live")])[0])
        cached.append(sae_hooks(["train", *train, "--from-cache", str(cache), "--out", str(work / "cached")])[0])
        print(f"round {r + 1}: live {lives[-1]['tokens_per_s']:,.0f} tok/s, from cache {cached[-1]['tokens_per_s']:,.0f} "
              f"tok/s ({cached[-1]['tokens_per_s'] / lives[-1]['tokens_per_s']:.2f}x)", flush=True)
    live = max(lives, key=lambda x: x["tokens_per_s"])
    from_cache = max(cached, key=lambda x: x["tokens_per_s"])
    report["live"] = {"tokens_per_s": live["tokens_per_s"], "seconds": live["seconds"], "fvu": live["saes"][0]["fvu"]}
    report["from_cache"] = {"tokens_per_s": from_cache["tokens_per_s"], "seconds": from_cache["seconds"],
                            "fvu": from_cache["saes"][0]["fvu"]}
    report["speedup"] = from_cache["tokens_per_s"] / live["tokens_per_s"]
    report["bitwise_equal_saes"] = same_weights(lives[-1]["saes"][0]["path"], cached[-1]["saes"][0]["path"])
    report["rounds"] = [{"live": a["tokens_per_s"], "from_cache": b["tokens_per_s"]} for a, b in zip(lives, cached)]
    report["load_avg_end"] = os.getloadavg()[0]
    print(f"SPEEDUP: training from the cache {report['speedup']:.2f}x live (target >= 3; best of {args.repeats} each), "
          f"SAEs bitwise equal: {report['bitwise_equal_saes']}; cache {report['cache']['mb_per_million_tokens_per_hook']:,.0f} "
          "MB per million tokens per hook")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
