"""``sae-hooks synth``: train SAEs on the MP-SAE paper's hierarchical toy and score them against the truth.

    $ sae-hooks synth --level 1 --sigma 0.25 --d-sae 40 --n-train 200000 --seeds 3 --out runs/toy --json
    $ sae-hooks synth --condition paper:level=1 --condition corr:level=5 --condition sup:d_model=12,noise=0.1 \\
          --d-sae 20 --d-sae 40 --out runs/toy_grid                     # grid: one table, one plot
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "train SAEs on the hierarchical toy (MP-SAE paper) and score MCC, flat/hierarchical errors, absorption"


# Each toy knob: its ToyConfig field and the help of its flag (--level, --n-parents, ...). The flags, the
# condition keys and the base ToyConfig all come from this one table.
TOY_KNOBS = {
    "level": "sibling cosine = 0.1 x level, in [0, 10)",
    "sigma": "spread (sd) of feature magnitudes",
    "magnitude_mean": "mean feature magnitude",
    "n_parents": "top-level features with children",
    "n_children": "children per parent",
    "n_leaves": "top-level features without children",
    "parent_prob": "probability of each parent",
    "child_prob": "probability of each child given its parent",
    "d_model": "ambient dimension (default: the number of features; smaller = superposition)",
    "noise": "additive noise, E||noise||^2 = noise^2",
    "tied_magnitudes": "a child takes its parent's magnitude draw",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..synthetic import TOY_ARCHS, SynthConfig, ToyConfig

    toy, syn = ToyConfig(), SynthConfig()
    g = p.add_argument_group("toy (one condition; --condition overrides per condition)")
    for field, text in TOY_KNOBS.items():
        flag, default = "--" + field.replace("_", "-"), getattr(toy, field)
        if isinstance(default, bool):
            g.add_argument(flag, action="store_true", help=text)
        else:
            g.add_argument(flag, type=int if field == "d_model" else type(default), default=default, help=text)
    g.add_argument("--condition", action="append", default=[], metavar="NAME:KEY=V[,KEY=V...]",
                   help=f"grid mode, repeatable: a named condition changing the knobs above (keys: "
                        f"{', '.join(TOY_KNOBS)})")
    t = p.add_argument_group("SAEs and training")
    t.add_argument("--arch", action="append", default=None,
                   help=f"architecture, repeatable (default: {' '.join(TOY_ARCHS)})")
    t.add_argument("--d-sae", type=int, action="append", default=None, help="SAE width, repeatable (default: 40)")
    t.add_argument("--k", type=int, default=syn.k, help="active latents (TopK family) / pursuit steps (MP)")
    t.add_argument("--l1", type=float, default=syn.l1_coef, help="L1 coefficient of the ReLU (standard) SAE")
    t.add_argument("--lr", type=float, default=syn.lr, help="peak Adam learning rate")
    t.add_argument("--batch-size", type=int, default=syn.batch_size, help="samples per step")
    t.add_argument("--n-train", type=int, default=syn.n_train, help="training samples")
    t.add_argument("--n-eval", type=int, default=syn.n_eval, help="held-out samples")
    t.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (toy rotation, init, data)")
    t.add_argument("--workers", type=int, default=None, help="processes (default: the CPU count)")
    p.add_argument("--out", default=None, help="folder for results.json, table.md and plot.png")


def run(args: argparse.Namespace) -> dict:
    from ..synthetic import TOY_ARCHS, SynthConfig, ToyConfig, parse_condition, run_synth

    base = ToyConfig(**{field: getattr(args, field) for field in TOY_KNOBS})
    conditions = [parse_condition(c, base) for c in args.condition] or [("toy", base)]
    cfg = SynthConfig(archs=tuple(args.arch or TOY_ARCHS), k=args.k, l1_coef=args.l1, n_train=args.n_train,
                      n_eval=args.n_eval, batch_size=args.batch_size, lr=args.lr)
    widths = tuple(args.d_sae or [40])
    if args.seeds < 1:
        raise ValueError(f"--seeds {args.seeds}: give a count >= 1.")
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)

    def progress(done: int, total: int, rows) -> None:
        print(f"  run {done}/{total} done", file=sys.stderr, flush=True)

    result = run_synth(conditions, widths, cfg, seeds=args.seeds, workers=args.workers, progress=progress)
    table = result.table()
    timing = (f"wall {result.wall_seconds:.1f} s for {len(conditions) * len(widths) * args.seeds} runs "
              f"({len(cfg.archs)} SAEs each) on {result.workers} processes; 1-min load average "
              f"{result.load_average[0]:.1f} at start, {result.load_average[1]:.1f} at end")
    data = result.to_dict()
    data["timing"] = timing
    if out is not None:
        (out / "results.json").write_text(json.dumps(data, indent=1))
        (out / "table.md").write_text(table + "\n\n" + timing + "\n")
        result.plot(out / "plot.png")
        data["files"] = [str(out / n) for n in ("results.json", "table.md", "plot.png")]
    if not args.json:
        print(table)
        print(timing)
        if out is not None:
            print(f"wrote {', '.join(data['files'])}")
    return data
