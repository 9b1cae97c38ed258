"""Adaptive sparsity at inference: one trained SAE evaluated at many sparsity settings on the live model.

A matching-pursuit SAE's encoder is a loop, so the number of steps is an inference choice (Costa et
al. 2025, arXiv 2506.03093, §6): run k steps for any k, or stop each token once its residual norm
falls below ε (easy tokens stop early, hard ones run longer). A TopK SAE can also be asked for its
k' largest latents at inference, and a BatchTopK SAE for a threshold that gives k' per token on
average — their own selections at another sparsity. This module sweeps all of them on the same
held-out tokens through ``evaluate_many``, which shares one clean forward per batch (and the blocks
below the hook) among every variant, and reports FVU, L0 and recaptured LM loss for each.

Settings:

- MP at inference k (fixed steps);
- MP with a residual threshold ε_k (at most ``max_steps`` steps), where ε_k is the median over
  calibration tokens of ‖r‖ after k fixed steps — so the median token stops near k steps, and the
  per-token stopping steps show how much the threshold adapts;
- TopK at k' (top-k' pre-activations, then ReLU);
- BatchTopK at its learned threshold and at thresholds calibrated so that the mean L0 on the
  calibration tokens is k' (the (N·k')-th largest positive pre-activation).

Calibration uses training-split tokens, the evaluation held-out tokens, so no threshold is fitted
on the numbers it is scored with.

    result = sparsity_sweep(adapter, {"mp": mp, "topk": topk}, "resid_post.6", held_out, calib_rows)
    print(result.table()); result.plot("adaptive.png")
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .data import TokenBatch
from .evaluate import METRIC_DEFINITIONS, evaluate_many


@dataclass(frozen=True)
class SweepConfig:
    """Which sparsity settings each SAE is evaluated at."""

    ks: tuple[int, ...] = (4, 8, 16, 32, 64, 128)
    """Inference k of MP (steps), TopK (k') and BatchTopK (target mean L0 k')."""
    threshold_ks: tuple[int, ...] = (4, 8, 16, 32, 64)
    """MP residual thresholds: ε_k = median calibration ‖r‖ after k fixed steps, for each k here."""
    max_steps: int = 128
    """Most pursuit steps a token may take in threshold mode."""

    def __post_init__(self) -> None:
        for name in ("ks", "threshold_ks"):
            v = tuple(getattr(self, name))
            object.__setattr__(self, name, v)
            if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in v):
                raise ValueError(f"SweepConfig.{name}={list(v)}; each must be an int >= 1.")
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ValueError(f"SweepConfig.max_steps={self.max_steps!r}; it must be an int >= 1.")
        if self.threshold_ks and max(self.threshold_ks) > self.max_steps:
            raise ValueError(f"SweepConfig.threshold_ks={list(self.threshold_ks)} exceeds max_steps={self.max_steps}; "
                             "raise max_steps or drop the larger k.")


class MPView:
    """A matching-pursuit SAE run at another inference k / residual threshold (shares its weights, its Gram
    cache and its decode): what ``evaluate_many`` needs of an SAE.

        view = MPView(mp, k=8)                      # view.encode(x) == mp.encode(x, k=8)
    """

    def __init__(self, sae: Any, *, k: int | None = None, residual_threshold: float | None = None):
        if getattr(sae, "architecture", None) != "matching_pursuit":
            raise ValueError(f"MPView needs a matching-pursuit SAE; got {getattr(sae, 'architecture', type(sae).__name__)!r}.")
        self.sae, self.k, self.residual_threshold = sae, k, residual_threshold

    def __getattr__(self, name: str) -> Any:
        # Everything but the encoder is the SAE's own (cfg, metadata, W_dec, device, dtype, ...).
        if name == "sae":  # not set yet (e.g. during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.sae, name)

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        return self.sae.encode(x, k=self.k, residual_threshold=self.residual_threshold)

    def decode(self, z: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_in"]:
        return self.sae.decode(z)


def topk_at(sae: Any, k: int) -> Any:
    """A TopK SAE with the same weights that keeps its k largest pre-activations.

        topk_at(topk_sae, 64).encode(x)     # 64 latents per token (before the ReLU)
    """
    if getattr(sae, "architecture", None) != "topk":
        raise ValueError(f"topk_at needs a TopK SAE; got {getattr(sae, 'architecture', type(sae).__name__)!r}.")
    new = type(sae)(dataclasses.replace(sae.cfg, k=k), metadata=dict(sae.metadata))
    new.load_state_dict(sae.state_dict())
    return new.to(sae.W_dec.device)


@torch.no_grad()
def batchtopk_at(sae: Any, k: float, calib_rows: Float[Tensor, "N d_in"]) -> tuple[Any, float]:
    """(A BatchTopK SAE with the same weights whose threshold gives mean L0 = k on ``calib_rows``, the threshold).
    The threshold is the (N·k)-th largest positive pre-activation over the calibration rows.

        sae64, theta = batchtopk_at(btk, 64, calib_rows)
    """
    if getattr(sae, "architecture", None) != "batchtopk":
        raise ValueError(f"batchtopk_at needs a BatchTopK SAE; got {getattr(sae, 'architecture', type(sae).__name__)!r}.")
    probe = type(sae)(sae.cfg, metadata=dict(sae.metadata))
    probe.load_state_dict(sae.state_dict())
    probe = probe.to(sae.W_dec.device)
    probe.set_threshold(0.0)  # encode = ReLU(pre): every positive pre-activation
    vals = torch.cat([probe.encode(part).flatten() for part in calib_rows.split(4096)])
    vals = vals[vals > 0]
    want = int(round(k * calib_rows.shape[0]))
    if want < 1 or want > vals.numel():
        raise ValueError(f"batchtopk_at: mean L0 {k} needs {want} active entries on {calib_rows.shape[0]} calibration "
                         f"rows, but only {vals.numel()} pre-activations are positive. Lower k.")
    theta = float(vals.topk(want).values[-1])
    # encode keeps pre > θ: step one float below the want-th value (in the codes' dtype, where the comparison
    # happens) so that it is counted.
    below = torch.nextafter(torch.tensor(theta, dtype=vals.dtype), torch.tensor(-math.inf, dtype=vals.dtype))
    probe.set_threshold(float(below))
    return probe, theta


@torch.no_grad()
def residual_norms(sae: Any, rows: Float[Tensor, "N d_in"], steps: int, chunk: int = 4096) -> Float[Tensor, "N steps+1"]:
    """‖r‖ before the first pursuit step and after each of ``steps`` fixed steps, per row (raw units).

        residual_norms(mp, calib_rows, 32)[:, 32].median()    # ε that stops the median row at 32 steps
    """
    return torch.cat([sae.pursue(part, k=steps, residual_threshold=0.0).norms for part in rows.split(chunk)])


@torch.no_grad()
def stopping_steps(sae: Any, rows: Float[Tensor, "N d_in"], threshold: float, max_steps: int,
                   chunk: int = 4096) -> Int[Tensor, " N"]:
    """Pursuit steps each row takes with ``residual_threshold=threshold`` (at most ``max_steps``).

        steps = stopping_steps(mp, held_out_rows, eps, 128); steps.float().mean()
    """
    # A step that ran added a non-zero value (a stopped token's later values are 0).
    return torch.cat([(sae.pursue(part, k=max_steps, residual_threshold=threshold).values != 0).sum(-1)
                      for part in rows.split(chunk)])


class SweepPoint(NamedTuple):
    """One SAE at one sparsity setting, on the held-out tokens."""

    sae: str
    """Name of the trained SAE."""
    arch: str
    mode: str
    """``trained`` (as saved), ``k`` (inference k / k'), ``threshold`` (MP residual threshold) or
    ``calibrated`` (BatchTopK threshold for mean L0 k')."""
    k: int | None
    """Inference k (MP steps, TopK k', BatchTopK target L0); for thresholds, the k its ε was set from."""
    threshold: float | None
    """MP residual threshold ε or BatchTopK activation threshold θ (raw units)."""
    fvu: float
    l0: float
    recaptured_zero: float
    recaptured_mean: float
    delta_ce: float
    kl: float
    dead_frac: float
    mean_steps: float | None
    """MP: mean pursuit steps per token (>= L0: an atom chosen twice counts once in L0)."""


@dataclass(frozen=True)
class SweepResult:
    """Every (SAE, setting) point, the per-token stopping steps of the threshold runs, and the cost."""

    hook: str
    points: tuple[SweepPoint, ...]
    stopping: dict[str, list[int]]
    """Per threshold run (label ``eps_k{k}``): how many held-out tokens took 0, 1, ..., max_steps steps."""
    eval_tokens: int
    """Evaluated activations (FVU / L0 denominators)."""
    calib_rows: int
    wall_seconds: float

    def table(self) -> str:
        cols = ("l0", "fvu", "recaptured_zero", "recaptured_mean", "delta_ce", "kl", "dead_frac")
        lines = ["| SAE | mode | k | threshold | mean steps | " + " | ".join(cols) + " |",
                 "|" + " --- |" * (5 + len(cols))]
        for p in self.points:
            thr = "-" if p.threshold is None else f"{p.threshold:.4g}"
            steps = "-" if p.mean_steps is None else f"{p.mean_steps:.1f}"
            cells = [f"{getattr(p, c):.4f}" for c in cols]
            lines.append(f"| {p.sae} | {p.mode} | {p.k if p.k is not None else '-'} | {thr} | {steps} | "
                         + " | ".join(cells) + " |")
        lines += ["", f"Hook {self.hook}; {self.eval_tokens:,} held-out activations; thresholds calibrated on "
                  f"{self.calib_rows:,} training-split activations.", "", METRIC_DEFINITIONS]
        for label, counts in self.stopping.items():
            n = sum(counts)
            q = _quantiles(counts, (0.1, 0.5, 0.9))
            lines.append(f"{label}: stopping step p10/p50/p90 = {q[0]}/{q[1]}/{q[2]}, "
                         f"{counts[-1] / n:.1%} of tokens hit the cap of {len(counts) - 1} steps")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"hook": self.hook, "points": [p._asdict() for p in self.points], "stopping": self.stopping,
                "eval_tokens": self.eval_tokens, "calib_rows": self.calib_rows, "wall_seconds": self.wall_seconds,
                "definitions": METRIC_DEFINITIONS}

    def plot(self, path: str | os.PathLike) -> None:
        """FVU and recaptured LM loss (zero-ablation) against L0 for every SAE and mode; stopping-step histograms."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
        colors = {"matching_pursuit": "tab:red", "topk": "tab:orange", "batchtopk": "tab:green"}
        for metric, ax in zip(("fvu", "recaptured_zero"), axes[:2]):
            series: dict[tuple[str, str, str], list[SweepPoint]] = {}
            for p in self.points:
                mode = "k" if p.mode in ("k", "calibrated") else p.mode
                series.setdefault((p.sae, p.arch, mode), []).append(p)
            for (name, arch, mode), ps in series.items():
                ps = sorted(ps, key=lambda p: p.l0)
                style = {"k": "-o", "threshold": "--s", "trained": "*"}[mode]
                label = {"k": f"{name}: inference k", "threshold": f"{name}: residual threshold",
                         "trained": f"{name}: as trained"}[mode]
                ax.plot([p.l0 for p in ps], [getattr(p, metric) for p in ps], style, color=colors.get(arch, "k"),
                        label=label, ms=9 if mode == "trained" else 5)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("held-out L0")
            ax.set_ylabel({"fvu": "FVU", "recaptured_zero": "recaptured LM loss (zero-ablation)"}[metric])
            if metric == "fvu":
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        ax = axes[2]
        for label, counts in self.stopping.items():
            ax.step(range(len(counts)), counts, where="mid", label=label)
        ax.set_xlabel("pursuit steps taken (per token)")
        ax.set_ylabel("tokens")
        ax.set_xscale("symlog", base=2)
        ax.legend(fontsize=7)
        ax.set_title("MP residual threshold: stopping steps", fontsize=10)
        fig.suptitle(f"Adaptive sparsity at inference ({self.hook}, {self.eval_tokens:,} held-out tokens)", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def _quantiles(counts: Sequence[int], qs: Sequence[float]) -> list[int]:
    total = sum(counts)
    out = []
    for q in qs:
        acc = 0
        for i, c in enumerate(counts):
            acc += c
            if acc >= q * total:
                out.append(i)
                break
    return out


@torch.no_grad()
def capture_rows(adapter: Any, tokens: TokenBatch, hook: str, batch_size: int = 8) -> Float[Tensor, "N d"]:
    """Activations at ``hook`` on the positions ``tokens.mask`` keeps (no attention sink, no special tokens).

        rows = capture_rows(adapter, load_token_tensor(tok, CorpusConfig(split="train"), 8192), "resid_post.6")
    """
    ids, mask = tokens
    out = []
    for lo in range(0, ids.shape[0], batch_size):
        acts = adapter.capture(ids[lo: lo + batch_size].to(adapter.device), [hook])
        x = next(iter(acts.values()))
        out.append(x[mask[lo: lo + batch_size].to(x.device)].float().cpu())
    return torch.cat(out)


def _variants(saes: Mapping[str, Any], calib_rows: Float[Tensor, "N d"], cfg: SweepConfig,
              eval_rows: Float[Tensor, "M d"] | None) -> tuple[list[tuple[dict[str, Any], Any]], dict[str, list[int]],
                                                            dict[int, float]]:
    """Every (SAE, setting) of ``cfg`` as (point fields, encoder view), the stopping-step histograms of the MP
    threshold runs on ``eval_rows``, and their mean steps by variant index."""
    variants: list[tuple[dict[str, Any], Any]] = []
    stopping: dict[str, list[int]] = {}
    steps_mean: dict[int, float] = {}
    for name, sae in saes.items():
        arch = sae.architecture
        variants.append(({"sae": name, "arch": arch, "mode": "trained", "k": getattr(sae.cfg, "k", None),
                          "threshold": getattr(sae, "threshold", None) if arch == "batchtopk" else None}, sae))
        if arch == "matching_pursuit":
            for k in cfg.ks:
                variants.append(({"sae": name, "arch": arch, "mode": "k", "k": k, "threshold": None}, MPView(sae, k=k)))
            if cfg.threshold_ks:
                norms = residual_norms(sae, calib_rows, max(cfg.threshold_ks))
                for k in cfg.threshold_ks:
                    eps = float(norms[:, k].median())
                    steps = stopping_steps(sae, eval_rows, eps, cfg.max_steps)
                    stopping[f"{name} eps_k{k}"] = torch.bincount(steps, minlength=cfg.max_steps + 1).tolist()
                    steps_mean[len(variants)] = float(steps.float().mean())
                    variants.append(({"sae": name, "arch": arch, "mode": "threshold", "k": k, "threshold": eps},
                                     MPView(sae, k=cfg.max_steps, residual_threshold=eps)))
        elif arch == "topk":
            for k in cfg.ks:
                if k <= sae.cfg.d_sae:
                    variants.append(({"sae": name, "arch": arch, "mode": "k", "k": k, "threshold": None}, topk_at(sae, k)))
        elif arch == "batchtopk":
            for k in cfg.ks:
                view, theta = batchtopk_at(sae, k, calib_rows)
                variants.append(({"sae": name, "arch": arch, "mode": "calibrated", "k": k, "threshold": theta}, view))
        else:
            raise ValueError(f"sparsity_sweep: SAE {name!r} is {arch!r}; supported: matching_pursuit, topk, batchtopk.")
    return variants, stopping, steps_mean


def sparsity_sweep(adapter: Any, saes: Mapping[str, Any], hook: str, tokens: TokenBatch,
                   calib_rows: Float[Tensor, "N d"], cfg: SweepConfig | None = None, *,
                   eval_rows: Float[Tensor, "M d"] | None = None, batch_size: int = 8) -> SweepResult:
    """Evaluate each SAE as trained and at every setting of ``cfg`` on ``tokens`` (one ``evaluate_many`` call:
    one clean forward per batch for all of them). ``eval_rows`` (the held-out activations; captured here when
    None) give the MP stopping-step histograms.

        res = sparsity_sweep(adapter, {"mp": mp, "topk": topk, "batchtopk": btk}, "resid_post.6", held_out, calib)
    """
    cfg = cfg or SweepConfig()
    if not saes:
        raise ValueError("sparsity_sweep needs at least one SAE.")
    t0 = time.perf_counter()
    if eval_rows is None and any(s.architecture == "matching_pursuit" for s in saes.values()):
        eval_rows = capture_rows(adapter, tokens, hook, batch_size)
    variants, stopping, steps_mean = _variants(saes, calib_rows, cfg, eval_rows)
    reports = evaluate_many(adapter, [(hook, v) for _, v in variants], tokens, batch_size=batch_size, top_contexts=0)
    points = []
    for i, ((meta, _), r) in enumerate(zip(variants, reports)):
        points.append(SweepPoint(**meta, fvu=r.fvu, l0=r.l0, recaptured_zero=r.recaptured_zero,
                                 recaptured_mean=r.recaptured_mean, delta_ce=r.delta_ce, kl=r.kl,
                                 dead_frac=r.dead_frac, mean_steps=steps_mean.get(i)))
    n_eval = reports[0].act_tokens
    return SweepResult(hook, tuple(points), stopping, n_eval, int(calib_rows.shape[0]), time.perf_counter() - t0)


@torch.no_grad()
def activation_sweep(saes: Mapping[str, Any], hook: str, rows: Float[Tensor, "N d"],
                     calib_rows: Float[Tensor, "M d"], cfg: SweepConfig | None = None, *,
                     chunk: int = 4096) -> SweepResult:
    """The settings of ``sparsity_sweep`` scored on activation rows alone: FVU, L0 and dead fraction (no model
    forward, so the LM-loss fields are NaN). Cheap enough for many more held-out rows than a CE sweep.

        res = activation_sweep({"mp": mp, "topk": topk}, "resid_post.6", held_out_rows, calib_rows)
    """
    cfg = cfg or SweepConfig()
    if not saes:
        raise ValueError("activation_sweep needs at least one SAE.")
    if rows.ndim != 2 or rows.shape[0] < 2:
        raise ValueError(f"activation_sweep: rows must be [N >= 2, d_in]; got shape {tuple(rows.shape)}.")
    t0 = time.perf_counter()
    variants, stopping, steps_mean = _variants(saes, calib_rows, cfg, rows)
    x = rows.double()
    # Pooled FVU as evaluate computes it: total squared error over the total variance about the mean row.
    total_var = float((x - x.mean(0)).pow(2).sum())
    points = []
    nan = float("nan")
    for i, (meta, view) in enumerate(variants):
        sq_err, nonzero, fired = 0.0, 0.0, None
        for part in rows.split(chunk):
            z = view.encode(part)
            sq_err += float((part.double() - view.decode(z).double()).pow(2).sum())
            nonzero += float((z != 0).sum())
            hit = (z != 0).any(0)
            fired = hit if fired is None else fired | hit
        points.append(SweepPoint(**meta, fvu=sq_err / total_var, l0=nonzero / rows.shape[0], recaptured_zero=nan,
                                 recaptured_mean=nan, delta_ce=nan, kl=nan, dead_frac=1 - float(fired.double().mean()),
                                 mean_steps=steps_mean.get(i)))
    return SweepResult(hook, tuple(points), stopping, int(rows.shape[0]), int(calib_rows.shape[0]),
                       time.perf_counter() - t0)


__all__ = ["SweepConfig", "SweepPoint", "SweepResult", "MPView", "topk_at", "batchtopk_at", "residual_norms",
           "stopping_steps", "capture_rows", "sparsity_sweep", "activation_sweep"]
