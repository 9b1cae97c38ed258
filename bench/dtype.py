"""LM forward in bf16 next to fp32, with and without native bf16 products: what ``--dtype auto`` decides.

``sae-hooks train`` and ``sae-hooks cache`` run the model in ``--dtype auto``: bf16 where the device
multiplies bf16 natively (CUDA, AVX512-BF16 or AMX CPUs), else fp32. This script measures why. For
each setting it starts a subprocess that loads the model in both dtypes and times the forward to the
hook (the part of a training step the model costs) in alternating order (fp32, bf16, bf16, fp32, ...),
reporting the median of each. A CPU without native bf16 is emulated by capping oneDNN, which does
torch's bf16 products on CPUs: ``ONEDNN_MAX_CPU_ISA=AVX2`` (an AVX2 machine) and ``AVX512_CORE``
(AVX-512 without bf16, e.g. Skylake-SP); the subprocess also reports what ``auto`` resolves to there.

    python bench/dtype.py                    # default, AVX2, AVX512_CORE
    python bench/dtype.py --caps none --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def measure(model: str, hook: str, batch: int, ctx: int, repeats: int) -> dict:
    import torch

    from sae_hooks.data import CorpusConfig, load_token_tensor
    from sae_hooks.hardware import resolve_model_dtype
    from sae_hooks.models import load_model

    adapters = {d: load_model(model, dtype=d) for d in ("fp32", "bf16")}
    ids = load_token_tensor(adapters["fp32"].tokenizer, CorpusConfig(ctx=ctx), n_tokens=batch * ctx).input_ids[:batch]

    def forward(d: str) -> float:
        t = time.perf_counter()
        with torch.no_grad():
            adapters[d].capture(ids, [hook])
        return time.perf_counter() - t

    for d in adapters:
        forward(d)  # warm-up: first-call allocations and kernel choice
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for i in range(repeats):
        for d in (("fp32", "bf16") if i % 2 == 0 else ("bf16", "fp32")):
            times[d].append(forward(d))
    tok_s = {d: batch * ctx / statistics.median(v) for d, v in times.items()}
    return {"tok_s": {d: round(v) for d, v in tok_s.items()}, "bf16_over_fp32": round(tok_s["bf16"] / tok_s["fp32"], 3),
            "auto": resolve_model_dtype("auto", "cpu"), "threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--hook", default="resid_post.6")
    p.add_argument("--batch", type=int, default=32, help="sequences per forward")
    p.add_argument("--ctx", type=int, default=128)
    p.add_argument("--repeats", type=int, default=6, help="timed forwards per dtype (alternating order)")
    p.add_argument("--caps", default="AVX2,AVX512_CORE",
                   help="ONEDNN_MAX_CPU_ISA values to run besides the default, comma-separated, or 'none'")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(args.model, args.hook, args.batch, args.ctx, args.repeats)))
        return

    caps = [] if args.caps == "none" else [c.strip() for c in args.caps.split(",") if c.strip()]
    rows = []
    load_before = os.getloadavg()[0]
    for cap in [None, *caps]:
        env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
        if cap is not None:
            env["ONEDNN_MAX_CPU_ISA"] = cap
        argv = [sys.executable, __file__, "--child", "--model", args.model, "--hook", args.hook, "--batch",
                str(args.batch), "--ctx", str(args.ctx), "--repeats", str(args.repeats)]
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"the run with ONEDNN_MAX_CPU_ISA={cap or '(unset)'} failed: "
                             f"{proc.stderr.strip().splitlines()[-1:]}")
        rows.append({"onednn_max_cpu_isa": cap or "default", **json.loads(proc.stdout.strip().splitlines()[-1])})
    out = {"model": args.model, "hook": args.hook, "tokens_per_forward": args.batch * args.ctx, "rows": rows,
           "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    print(f"{args.model}, forward to {args.hook}, {args.batch} x {args.ctx} tokens, median of {args.repeats}")
    print(f"{'oneDNN ISA':<16}{'fp32 tok/s':>12}{'bf16 tok/s':>12}{'bf16/fp32':>11}  auto")
    for r in rows:
        print(f"{r['onednn_max_cpu_isa']:<16}{r['tok_s']['fp32']:>12,}{r['tok_s']['bf16']:>12,}"
              f"{r['bf16_over_fp32']:>11.2f}  {r['auto']}")
    print(f"load average before/after: {out['load_average'][0]} / {out['load_average'][1]}")
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
