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


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..synthetic import TOY_ARCHS, SynthConfig, ToyConfig

    toy, syn = ToyConfig(), SynthConfig()
    g = p.add_argument_group("toy (one condition; --condition overrides per condition)")
    g.add_argument("--level", type=float, default=toy.level, help="sibling cosine = 0.1 x level, in [0, 10)")
    g.add_argument("--sigma", type=float, default=toy.sigma, help="spread (sd) of feature magnitudes")
    g.add_argument("--magnitude-mean", type=float, default=toy.magnitude_mean, help="mean feature magnitude")
    g.add_argument("--n-parents", type=int, default=toy.n_parents, help="top-level features with children")
    g.add_argument("--n-children", type=int, default=toy.n_children, help="children per parent")
    g.add_argument("--n-leaves", type=int, default=toy.n_leaves, help="top-level features without children")
    g.add_argument("--parent-prob", type=float, default=toy.parent_prob, help="probability of each parent")
    g.add_argument("--child-prob", type=float, default=toy.child_prob, help="probability of each child given its parent")
    g.add_argument("--d-model", type=int, default=None,
                   help="ambient dimension (default: the number of features; smaller = superposition)")
    g.add_argument("--noise", type=float, default=toy.noise, help="additive noise, E||noise||^2 = noise^2")
    g.add_argument("--tied-magnitudes", action="store_true", help="a child takes its parent's magnitude draw")
    g.add_argument("--condition", action="append", default=[], metavar="NAME:KEY=V[,KEY=V...]",
                   help="grid mode, repeatable: a named condition changing the knobs above (keys: level, sigma, "
                        "magnitude_mean, n_parents, n_children, n_leaves, parent_prob, child_prob, d_model, noise, "
                        "tied_magnitudes)")
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

    base = ToyConfig(level=args.level, sigma=args.sigma, magnitude_mean=args.magnitude_mean,
                     n_parents=args.n_parents, n_children=args.n_children, n_leaves=args.n_leaves,
                     parent_prob=args.parent_prob, child_prob=args.child_prob, d_model=args.d_model,
                     noise=args.noise, tied_magnitudes=args.tied_magnitudes)
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
