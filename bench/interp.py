"""Cost of ``sae-hooks interp`` next to one ``sae-hooks eval`` of the same SAE on the same tokens.

``interp`` runs the model once, up to the SAE's hook, then scores the SAE and both baselines from the
kept activations; ``eval`` runs it to the logits several times (clean, spliced, zero- and
mean-ablated). Both run as subprocesses of this script, one after the other, with their default
settings otherwise; the wall times include loading the model. The machine's load average is printed
beside them: on a shared machine it decides the absolute times more than either command does.

    python bench/interp.py --tokens 57000                        # the stdlib eval split's Python, held out
    python bench/interp.py --tokens 100000 --split train --json  # more tokens than the eval split holds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def timed(argv: list[str]) -> tuple[float, dict]:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "sae_hooks", *argv, "--json"], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:1])} failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    return wall, json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sae", default="pretrained:smollm2-l6-topk")
    p.add_argument("--tokens", type=int, default=57_000)
    p.add_argument("--split", default="eval", choices=["eval", "train", "all"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = p.parse_args()

    common = ["--sae", args.sae, "--tokens", str(args.tokens), "--split", args.split]
    load_before = os.getloadavg()[0]
    wall_interp, interp = timed(["interp", *common, "--seed", str(args.seed)])
    wall_eval, evaluation = timed(["eval", *common])
    load_after = os.getloadavg()[0]

    name = next(iter(interp["saes"]))
    rows = {name: interp["saes"][name], **{f"random({n})": s for n, s in interp["baselines"]["random"].items()},
            **{f"residual({h})": s for h, s in interp["baselines"]["residual"].items()}}
    out = {
        "sae": args.sae, "tokens": args.tokens, "split": args.split, "scored_tokens": interp["tokens"]["scored"],
        "interp_wall_s": round(wall_interp, 1), "eval_wall_s": round(wall_eval, 1),
        "interp_over_eval": round(wall_interp / wall_eval, 3), "interp_seconds": interp["seconds"],
        "load_average": [round(load_before, 1), round(load_after, 1)], "cpus": os.cpu_count(),
        "scores": {n: {k: s[k] for k in ("probe_f1", "best_latent_f1", "coverage", "labels_scored",
                                          "precise_fraction", "absorption")} for n, s in rows.items()},
        "margins": interp["margins"][name],
        "eval": {k: evaluation.get(k) for k in ("fvu", "l0", "recaptured_zero", "ce_clean", "ce_spliced")},
    }
    print(f"{args.sae}, {args.tokens:,} tokens of the {args.split} split ({out['scored_tokens']:,} scored), "
          f"{out['cpus']} CPUs, load average {out['load_average'][0]} -> {out['load_average'][1]}")
    print(f"sae-hooks interp {wall_interp:7.1f} s   (model pass {interp['seconds']['model_pass']} s; "
          + ", ".join(f"{k} {v} s" for k, v in interp["seconds"].items() if k not in ("model_pass", "total")) + ")")
    print(f"sae-hooks eval   {wall_eval:7.1f} s")
    print(f"interp / eval    {out['interp_over_eval']:7.3f}")
    ks = list(interp["saes"][name]["probe_f1"])
    print(f"\n{'':26}" + "".join(f"probe k={k:<4}" for k in ks) + "best F1  coverage  precise  absorption")
    for n, s in out["scores"].items():
        print(f"{n:26}" + "".join(f"{s['probe_f1'][k]:<12.3f}" for k in ks)
              + f"{s['best_latent_f1']:<9.3f}{s['coverage']:>3}/{s['labels_scored']:<6}{s['precise_fraction']:<9.3f}"
              + f"{s['absorption'] if s['absorption'] is not None else '-'}")
    print("\nmargins (SAE minus baseline):", json.dumps(out["margins"]))
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
