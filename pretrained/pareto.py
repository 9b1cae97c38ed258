"""Plot the registry's SAEs: L0 against FVU and against recaptured LM loss (zero and mean ablation).

    $ python pretrained/pareto.py                     # writes pretrained/pareto.png from registry.json

One point per SAE with measured metrics (``pack.py measure``): colour = architecture, marker = layer.
Lower-left is better in the first panel (fewer active latents, less unexplained variance), upper-left
in the second (filled: zero-ablation baseline; hollow: mean-ablation, the harder baseline).
"""

from __future__ import annotations

import argparse
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
    a.set(xlabel="L0 (active latents per token)", ylabel="FVU (lower is better)", title="Reconstruction")
    b.set(xlabel="L0 (active latents per token)", ylabel="recaptured LM loss (higher is better)",
          title="Spliced into the model (filled: zero-abl., hollow: mean-abl.)")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=c, marker="o", ls="", label=k)
               for k, c in COLORS.items() if any(e.architecture == k for e in rows)]
    handles += [plt.Line2D([], [], color="k", marker=MARKERS[i % len(MARKERS)], ls="", mfc="none", label=f"layer {L}")
                for i, L in enumerate(layers)]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle("Pretrained SAEs on SmolLM2-135M-Instruct, resid_post (held-out stdlib text, 50k tokens; "
                 "larger marker: 4,608 latents)", fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    fig.savefig(out, dpi=130)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE / "pareto.png", help="image to write")
    print(plot(p.parse_args(argv).out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
