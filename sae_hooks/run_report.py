"""How a training run reports: the progress bar, Weights & Biases, the summary text and the curves plot.

None of these changes what a run trains; they read its numbers. The summary and the plot are
written into the run folder at the end (``summary.txt``, ``curves.png``); the bar and W&B follow
the run as it goes.

    bar = progress_bar("auto", total=98, start=0, main=True)
    print(summary_text(result))
    plot_curves(folder / "metrics.jsonl", folder / "curves.png", ["topk_resid_post.6"])
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .run import RunResult
    from .trainer import StepStats

__all__ = ["open_wandb", "plot_curves", "progress_bar", "summary_text", "update_bar"]


def progress_bar(mode: str, total: int, start: int, main: bool):
    """A tqdm bar over steps, or None: ``mode`` ``"on"``, ``"off"`` or ``"auto"`` (on for the main rank
    when stderr is a terminal)."""
    if not (mode == "on" or (mode == "auto" and main and sys.stderr.isatty())):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)


def update_bar(bar, stats: Mapping[str, StepStats], tokens_per_s: float) -> None:
    """Advance the bar by one step, showing throughput and the first SAE's batch FVU / L0 / dead fraction."""
    bar.update(1)
    first = next(iter(stats.values()))
    bar.set_postfix(tok_s=f"{tokens_per_s:,.0f}", fvu=f"{first.fvu:.3f}", l0=f"{first.l0:.1f}",
                    dead=f"{first.dead_frac:.2f}")


def open_wandb(project: str, config: Mapping[str, Any], folder: str | os.PathLike):
    """A W&B run (``wandb.init``) logging into ``folder``; a clear error when wandb is not installed."""
    try:
        import wandb
    except ImportError:
        raise ImportError("--wandb needs the wandb package: pip install wandb (or drop --wandb).") from None
    return wandb.init(project=project, config=dict(config), dir=str(folder))


def summary_text(r: RunResult) -> str:
    """The human-readable report of a finished run (also ``summary.txt``)."""
    lines = [f"sae-hooks train: {r.tokens:,} tokens in {r.steps} steps; {r.tokens_per_s:,.0f} tokens/s "
             f"(training {r.seconds} s, evaluation {r.eval_seconds} s), world size {r.world_size}",
             f"held-out: {r.held_out_tokens:,} activation rows (position 0 and special tokens excluded)"]
    for s in r.saes:
        ce = (f", ΔCE {s.delta_ce:.3f} nats, recaptured(zero) {s.recaptured_zero:.3f}"
              if s.delta_ce is not None else "")
        lines.append(f"  {s.name:<34} FVU {s.fvu:.3f}  L0 {s.l0:.1f}  dead {100 * s.dead_frac:.1f}%{ce}  -> {s.path}")
    return "\n".join(lines) + "\n"


def plot_curves(log_path: Path, png: Path, names: Sequence[str]) -> None:
    """Training-batch FVU, L0 and dead fraction per SAE against tokens, held-out points on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, key in zip(axes, ("fvu", "l0", "dead_frac")):
        for n in names:
            xs = [r["tokens"] for r in recs if f"{n}/{key}" in r]
            ax.plot(xs, [r[f"{n}/{key}"] for r in recs if f"{n}/{key}" in r], label=n)
            ev = [(r["tokens"], r[f"eval/{n}/{key}"]) for r in recs if f"eval/{n}/{key}" in r]
            if ev:
                ax.plot(*zip(*ev), "o", label=f"{n} (held-out)")
        ax.set_xlabel("tokens")
        ax.set_title(f"{key} (training batch)")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    tmp = png.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, png)
