"""A ``ProgressiveReport`` written to one folder: JSON, Markdown and PNG plots.

    report.json        to_dict(): settings, fits, every row, the mean ± sd summary, definitions
    report.md          markdown(): the fits table and the summary table
    against_size.png   FVU, recaptured (zero / mean), RSA (full / input), interpretability against G
    against_l0.png     the same against the measured L0
    importance.png     sorted importance and frequency against rank (log-log) with the fitted lines

The folder is built next to its destination and moved into place only when every file is written,
so a failure leaves nothing behind; an existing folder is replaced only with ``overwrite``.

    >>> paths = write_outputs(report, "runs/prog/progressive")
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .sweep import ProgressiveReport

PANELS = (("fvu", "FVU"), ("recaptured_zero", "recaptured LM loss (zero abl.)"),
          ("recaptured_mean", "recaptured LM loss (mean abl.)"), ("rsa_full", "RSA with full reconstruction"),
          ("rsa_input", "RSA with activations"))
FILES = ("report.json", "report.md", "against_size.png", "against_l0.png", "importance.png")


def check_out(out: str | os.PathLike, overwrite: bool) -> Path:
    """``out`` as a Path, after refusing an existing non-empty folder (unless ``overwrite``) or a file.

        >>> check_out("runs/prog/progressive", overwrite=False)
    """
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise ValueError(f"--out {str(p)!r} is a file; give a folder path.")
    if p.is_dir() and any(p.iterdir()) and not overwrite:
        raise ValueError(f"--out {str(p)!r} already holds files; pass --overwrite to replace it, or choose another "
                         "folder.")
    return p


def write_outputs(report: ProgressiveReport, out: str | os.PathLike, *, overwrite: bool = False) -> dict[str, str]:
    """Write ``FILES`` into ``out`` (see the module docstring); returns {file name: path}.

        >>> write_outputs(report, "runs/prog/progressive", overwrite=True)["report.json"]
    """
    dest = check_out(out, overwrite)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        (tmp / "report.json").write_text(json.dumps(report.to_dict(), indent=1) + "\n")
        (tmp / "report.md").write_text(report.markdown() + "\n")
        plot_sweep(report, tmp / "against_size.png", x="size")
        plot_sweep(report, tmp / "against_l0.png", x="l0")
        plot_importance(report, tmp / "importance.png")
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {name: str(dest / name) for name in FILES}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(arch: str, mode: str) -> str:
    return f"{arch} (prefix)" if mode == "prefix" else f"{arch} pruned, {mode}"


def plot_sweep(report: ProgressiveReport, path: Path, *, x: str = "size") -> None:
    """One panel per metric (and per interpretability score), one line per (arch, mode): the mean over
    seeds with ± sd bars, against G (``x="size"``) or against the measured L0 (``x="l0"``)."""
    plt = _pyplot()
    summary = report.summary()
    interp = sorted({k for s in summary for k in s if k.startswith("interp_")})
    panels = list(PANELS) + [(k, k.removeprefix("interp_").replace("_", " ")) for k in interp]
    cols = 3
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
    lines: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for s in summary:
        lines.setdefault((s["arch"], s["mode"]), []).append(s)
    for ax, (key, title) in zip(axes.flat, panels):
        for (arch, mode), pts in lines.items():
            pts = sorted(pts, key=lambda s: s["size"])
            xs = [s["size"] if x == "size" else s["l0"]["mean"] for s in pts]
            ys = [s[key]["mean"] if key in s else math.nan for s in pts]
            sd = [s[key]["sd"] if key in s and s[key]["sd"] == s[key]["sd"] else 0.0 for s in pts]
            style = "-o" if mode == "prefix" else ("--s" if mode == "mask" else ":^")
            ax.errorbar(xs, ys, yerr=sd, fmt=style, ms=4, capsize=2, label=_label(arch, mode))
        ax.set_xscale("log")
        if x == "size":  # the sizes themselves as ticks, not a crowd of log-scale minor labels
            ticks = sorted({s["size"] for s in summary})
            ax.set_xticks(ticks, [str(t) for t in ticks], fontsize=7)
            ax.minorticks_off()
        ax.set_xlabel("latents kept G" if x == "size" else "L0 (mean active latents)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{report.model} {report.hook}, d_sae {report.d_sae}: mean ± sd over seeds", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_importance(report: ProgressiveReport, path: Path) -> None:
    """Sorted importance and frequency against rank (log-log), one line per vanilla SAE, with each
    architecture's first SAE's power-law and exponential fits drawn over the fitted ranks."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    drawn: set[str] = set()
    for f in report.fits:
        imp = report.importances.get(f.sae)
        if imp is None:
            continue
        for ax, values in zip(axes, (imp.importance, imp.frequency)):
            v = values.double().sort(descending=True).values
            keep = v > 0
            ranks = torch.arange(1, v.numel() + 1, dtype=torch.float64)
            ax.plot(ranks[keep], v[keep], lw=1, alpha=0.8, label=f.sae)
        if f.arch not in drawn:
            drawn.add(f.arch)
            p, e = f.power_law, f.exponential
            r = torch.linspace(p.rank_lo, p.rank_hi, 200, dtype=torch.float64)
            axes[0].plot(r, torch.exp(p.intercept - p.exponent * r.log()), "k--", lw=1,
                         label=f"{f.arch}: power law α={p.exponent:.2f}, R²={p.r2:.3f}")
            axes[0].plot(r, torch.exp(e.intercept - e.rate * r), "k:", lw=1,
                         label=f"{f.arch}: exponential λ={e.rate:.2g}, R²={e.r2:.3f}")
    for ax, title in zip(axes, ("importance E[(a·‖d‖)²]", "firing frequency")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("rank")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    fig.suptitle(f"{report.model} {report.hook}: latents sorted by importance", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


__all__ = ["FILES", "check_out", "plot_importance", "plot_sweep", "write_outputs"]
