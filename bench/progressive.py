"""What the progressive sweep costs next to one plain evaluation, in one run on the same tokens.

Times, one after the other in this process (model loaded and warmed once, outside the timings):

1. ``sae-hooks eval`` of one SAE of the run folder (clean, spliced, zero- and mean-ablated forwards);
2. ``sae-hooks progressive`` over every SAE of that hook in the run folder: importances on their own
   tokens, one activation scan, every distinct reduced SAE evaluated from one clean forward per batch,
   RSA.

It prints both wall times, their ratio and the number of reduced SAEs the sweep evaluated (what a
loop of plain evaluations would have paid once each). One run, no repeats: on a shared machine the
ratio is the figure to read, not the seconds.

    python bench/progressive.py --run runs/prog/train --hook resid_post.6 --tokens 1024
    python bench/progressive.py --vanilla A --vanilla B --matryoshka M --sizes 128 288 576 1152
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from sae_hooks.cli import main as sae_hooks_cli


def timed(argv: list[str]) -> tuple[float, dict]:
    """Wall time and the JSON result of one `sae-hooks` command run in this process."""
    import contextlib
    import io

    buf = io.StringIO()
    t = time.perf_counter()
    with contextlib.redirect_stdout(buf):
        rc = sae_hooks_cli(argv + ["--json"])
    wall = time.perf_counter() - t
    result = json.loads(buf.getvalue().strip().splitlines()[-1])
    if rc != 0:
        raise SystemExit(f"sae-hooks {argv[0]} failed: {result.get('error')}")
    return wall, result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default=None,
                   help="run folder of `sae-hooks train`: every SAE of --hook in it (or name them below)")
    p.add_argument("--vanilla", action="append", default=[], help="a vanilla SAE folder (repeatable)")
    p.add_argument("--matryoshka", action="append", default=[], help="a Matryoshka SAE folder (repeatable)")
    p.add_argument("--rsa-tokens", type=int, default=512)
    p.add_argument("--interp-tokens", type=int, default=0, help="offline interpretability scores too (0 = off)")
    p.add_argument("--hook", default="resid_post.6")
    p.add_argument("--tokens", type=int, default=1024, help="evaluated tokens, both commands")
    p.add_argument("--importance-tokens", type=int, default=4096)
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="sizes of the pruned SAEs (default: the sweep's)")
    p.add_argument("--dtype", default="bf16")
    args = p.parse_args()

    if args.run:
        info = json.loads((Path(args.run) / "run.json").read_text())
        one = str(Path(args.run) / "saes" / next(e for e in info["saes"] if e["hook"] == args.hook)["name"])
        saes = ["--run", args.run]
    elif args.vanilla or args.matryoshka:
        one = (args.vanilla or args.matryoshka)[0]
        saes = [a for f in args.vanilla for a in ("--vanilla", f)]
        saes += [a for f in args.matryoshka for a in ("--matryoshka", f)]
    else:
        raise SystemExit("give --run RUN_FOLDER or --vanilla / --matryoshka SAE folders")
    common = ["--tokens", str(args.tokens), "--dtype", args.dtype]
    # Warm-up: the first load converts / reads the model and the corpus caches.
    timed(["eval", "--sae", one, "--tokens", "256", "--dtype", args.dtype])
    eval_s, ev = timed(["eval", "--sae", one, *common])
    with tempfile.TemporaryDirectory() as tmp:
        sweep_argv = ["progressive", *saes, "--hook", args.hook, *common, "--importance-tokens",
                      str(args.importance_tokens), "--rsa-tokens", str(args.rsa_tokens), "--interp-tokens",
                      str(args.interp_tokens), "--out", str(Path(tmp) / "prog")]
        if args.sizes:
            sweep_argv += ["--sizes", *map(str, args.sizes)]
        sweep_s, rep = timed(sweep_argv)
    # The full-size rows of both prune modes are the SAE itself, and a reselect row with the mask's codes
    # is the mask row: each evaluated once.
    distinct = len({(r["sae"], r["size"], "full" if r["size"] == rep["d_sae"] else r["mode"])
                    for r in rep["rows"] if not r["same_codes_as"]})
    out = {"hook": args.hook, "tokens": ev["tokens"], "eval_sae": one, "eval_s": round(eval_s, 1),
           "sweep_s": round(sweep_s, 1), "ratio": round(sweep_s / eval_s, 2), "sweep_rows": len(rep["rows"]),
           "sweep_distinct_evaluated": distinct, "saes": len({r["sae"] for r in rep["rows"]}),
           "sweep_phases_s": rep["seconds"]}
    print(f"sae-hooks eval of {one}: {eval_s:.1f} s; sae-hooks progressive ({out['saes']} SAEs, "
          f"{len(rep['rows'])} rows, {distinct} distinct reduced SAEs evaluated): {sweep_s:.1f} s; "
          f"ratio {out['ratio']}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
