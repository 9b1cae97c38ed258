"""Plot the registry's SAEs: L0 against FVU and against recaptured LM loss (zero and mean ablation).

    $ python pretrained/pareto.py                     # writes pretrained/pareto.png from registry.json
    $ python pretrained/pareto.py --sweep             # first measures sweep.json (below), then plots

One point per SAE with measured metrics (``pack.py measure``): colour = architecture, marker = layer.
Lower-left is better in the first panel (fewer active latents, less unexplained variance), upper-left
in the second (filled: zero-ablation baseline; hollow: mean-ablation, the harder baseline).

With ``sweep.json`` present, thin lines add what the same shipped SAEs give at other settings of
inference, each point one ``sae-hooks eval`` command stored beside its figures: MP-SAEs with fewer or
more pursuit steps (``--k``), Matryoshka SAEs cut to each nested prefix (``--width``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from sae_hooks.hookpoints import parse_hook
from sae_hooks.pretrained import load_registry

HERE = Path(__file__).resolve().parent
COLORS = {"topk": "#1f77b4", "matryoshka": "#2ca02c", "matching_pursuit": "#d62728", "standard": "#9467bd",
          "batchtopk": "#ff7f0e", "jumprelu": "#8c564b"}
MARKERS = "os^Dvp*"
SWEEP = HERE / "sweep.json"
SWEEP_TOKENS = 20_000
MP_STEPS = (4, 8, 16, 64)


def sweep_commands(reg) -> list[tuple[str, str]]:
    """(SAE name, eval command) for every sweep point of the registry's MP and Matryoshka SAEs."""
    out = []
    for e in reg.entries:
        base = f"sae-hooks eval --sae pretrained:{e.name} --tokens {SWEEP_TOKENS} --ctx 128 --json"
        if e.architecture == "matching_pursuit":
            out += [(e.name, f"{base} --k {k}") for k in MP_STEPS if k != e.k]
        elif e.architecture == "matryoshka":
            out += [(e.name, f"{base} --width {w}") for w in e.options.get("widths", [])[:-1]]
    return out


def run_sweep(reg) -> dict:
    """Run every sweep command not yet in sweep.json (a subprocess each) and store its figures."""
    done = json.loads(SWEEP.read_text()) if SWEEP.is_file() else {"points": []}
    have = {p["command"] for p in done["points"]}
    env = {**os.environ, "SAE_HOOKS_PRETRAINED": str(HERE)}
    for name, command in sweep_commands(reg):
        if command in have:
            continue
        r = subprocess.run([sys.executable, "-m", "sae_hooks", *shlex.split(command)[1:]], capture_output=True,
                           text=True, env=env, check=False)
        if r.returncode != 0:
            raise SystemExit(f"{command} failed: {r.stderr[-2000:]}")
        got = json.loads(r.stdout.strip().splitlines()[-1])
        done["points"].append({"name": name, "command": command, **{k: got[k] for k in (
            "fvu", "l0", "recaptured_zero", "recaptured_mean", "delta_ce", "kl", "tokens")}})
        SWEEP.write_text(json.dumps(done, indent=1) + "\n")
        print(f"{command}: L0 {got['l0']:.1f} FVU {got['fvu']:.3f}", flush=True)
    return done


def plot(out: Path) -> Path:
    reg = load_registry(HERE)
    rows = [e for e in reg.entries if e.metrics]
    if not rows:
        raise SystemExit(f"No measured SAE in {reg.path}; run `python pretrained/pack.py measure` first.")
    layers = sorted({parse_hook(e.hook).layer for e in rows})
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.4))
    for e in rows:
        m = e.metrics
        color = COLORS.get(e.architecture, "#7f7f7f")
        marker = MARKERS[layers.index(parse_hook(e.hook).layer) % len(MARKERS)]
        size = 40 + 40 * (e.d_sae > 2304)
        a.scatter(m["l0"], m["fvu"], c=color, marker=marker, s=size, zorder=3)
        b.scatter(m["l0"], m["recaptured_zero"], c=color, marker=marker, s=size, zorder=3)
        b.scatter(m["l0"], m["recaptured_mean"], facecolors="none", edgecolors=color, marker=marker, s=size, zorder=3)
        a.annotate(e.name.removeprefix("smollm2-"), (m["l0"], m["fvu"]), fontsize=6.5, xytext=(4, 2),
                   textcoords="offset points")
    if SWEEP.is_file():  # each SAE's own point joined to its sweep points, a thin line per SAE
        points = json.loads(SWEEP.read_text())["points"]
        for e in rows:
            pts = sorted([(p["l0"], p["fvu"], p["recaptured_zero"]) for p in points if p["name"] == e.name]
                         + [(e.metrics["l0"], e.metrics["fvu"], e.metrics["recaptured_zero"])])
            if len(pts) > 1:
                color = COLORS.get(e.architecture, "#7f7f7f")
                a.plot([p[0] for p in pts], [p[1] for p in pts], color=color, lw=0.8, alpha=0.6, marker=".", ms=3)
                b.plot([p[0] for p in pts], [p[2] for p in pts], color=color, lw=0.8, alpha=0.6, marker=".", ms=3)
        a.set_xscale("log")
        b.set_xscale("log")
    a.set(xlabel="L0 (active latents per token)", ylabel="FVU (lower is better)", title="Reconstruction")
    b.set(xlabel="L0 (active latents per token)", ylabel="recaptured LM loss (higher is better)",
          title="Spliced in (filled: zero-abl., hollow: mean-abl.)")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=c, marker="o", ls="", label=k)
               for k, c in COLORS.items() if any(e.architecture == k for e in rows)]
    handles += [plt.Line2D([], [], color="k", marker=MARKERS[i % len(MARKERS)], ls="", mfc="none", label=f"layer {L}")
                for i, L in enumerate(layers)]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    tokens = sorted({e.metrics["tokens"] for e in rows})
    fig.suptitle("Pretrained SAEs on SmolLM2-135M-Instruct, resid_post (held-out stdlib text, "
                 f"{'/'.join(f'{t:,}' for t in tokens)} tokens; larger marker: more than 2,304 latents)", fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    fig.savefig(out, dpi=130)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE / "pareto.png", help="image to write")
    p.add_argument("--sweep", action="store_true", help="first run the missing sweep points into sweep.json")
    args = p.parse_args(argv)
    if args.sweep:
        run_sweep(load_registry(HERE))
    print(plot(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
