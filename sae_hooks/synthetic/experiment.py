"""Training SAEs on the hierarchical toy and scoring them: one condition, or a grid of them.

Every architecture of a run learns from the same batches through the project's own ``Trainer``
(the toy is just another row iterator), then is scored on held-out samples of the same toy
(``score.py``). Seed s fixes the toy's dictionary rotation, the SAEs' initial weights, the training
samples and (offset by 10,000) the held-out samples, so the seeds differ in all four. The true
dictionary with the true codes is scored as the ``oracle`` row (MCC 1, absorption 0, errors = the
noise alone).

    cfg = SynthConfig(n_train=200_000)
    result = run_synth([("paper", ToyConfig(level=1))], (20, 40), cfg, seeds=3)
    print(result.table())
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..geometry import babel
from ..sae import ARCHITECTURES, SAE, make_sae
from ..trainer import Target, TrainConfig, Trainer
from .score import SCORE_DEFINITIONS, ToyScore, mean_sd, score_oracle, score_sae
from .toy import HierarchicalToy, ToyConfig

TOY_ARCHS = ("standard", "topk", "batchtopk", "matryoshka", "matching_pursuit")
"""The paper's comparison: ReLU (L1), TopK, BatchTopK, Matryoshka and MP-SAE."""

HOOK = "rows"
"""The key of the rows in the batches given to the trainer (it needs a hook name; there is no model)."""


@dataclass(frozen=True)
class SynthConfig:
    """How the SAEs of a toy run are built and trained (shared by every architecture)."""

    archs: tuple[str, ...] = TOY_ARCHS
    """Architectures to train (names of ``sae_hooks.sae.ARCHITECTURES``)."""
    k: int = 2
    """Active latents (TopK family) and pursuit steps (MP). A toy sample holds 1 or 2 features."""
    l1_coef: float = 1.0
    """L1 coefficient of the ReLU (``standard``) SAE; 1.0 gives L0 ≈ 1.4 on the default toy (true L0 1.36)."""
    n_train: int = 200_000
    """Training samples (fresh samples, no epochs)."""
    n_eval: int = 20_000
    """Held-out samples for the scores."""
    batch_size: int = 500
    """Samples per optimiser step."""
    lr: float = 1e-2
    """Peak Adam learning rate (cosine decay, 5 % warm-up; the trainer's schedule). Chosen for the
    lowest held-out FVU of most architectures among 2e-3, 1e-2 and 3e-2 on the default toy."""

    def __post_init__(self) -> None:
        if not self.archs or isinstance(self.archs, str):
            raise ValueError(f"SynthConfig.archs={self.archs!r}; give a non-empty tuple of names from {sorted(ARCHITECTURES)}.")
        object.__setattr__(self, "archs", tuple(self.archs))
        unknown = [a for a in self.archs if a not in ARCHITECTURES or a == "jumprelu"]
        if unknown:
            valid = sorted(set(ARCHITECTURES) - {"jumprelu"})
            raise ValueError(f"SynthConfig.archs: unknown or unsupported {unknown}; valid: {valid}. (jumprelu has no "
                             "toy defaults here.)")
        if len(set(self.archs)) != len(self.archs):
            raise ValueError(f"SynthConfig.archs={list(self.archs)} repeats a name.")
        for name, lo in (("k", 1), ("n_train", 1), ("n_eval", 2), ("batch_size", 2)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"SynthConfig.{name}={v!r}; it must be an int >= {lo}.")
        for name in ("l1_coef", "lr"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or \
                    (name == "lr" and v == 0):
                raise ValueError(f"SynthConfig.{name}={v!r}; it must be a finite number {'> 0' if name == 'lr' else '>= 0'}.")


def arch_options(arch: str, d_sae: int, cfg: SynthConfig) -> dict[str, Any]:
    """Architecture options for a toy SAE of width ``d_sae``: k for the TopK family and MP, l1 for ReLU,
    Matryoshka prefixes at d_sae · (1/9, 1/4, 1/2, 1) (rounded, at least 1, duplicates dropped).

        arch_options("matryoshka", 40, SynthConfig())   # {'k': 2, 'widths': (4, 10, 20, 40)}
    """
    if arch == "standard":
        return {"l1_coef": cfg.l1_coef}
    if cfg.k > d_sae:
        raise ValueError(f"k={cfg.k} exceeds d_sae={d_sae}; lower k or widen the SAE.")
    if arch == "matryoshka":
        widths = sorted({max(1, round(d_sae * f)) for f in (1 / 9, 1 / 4, 1 / 2)} | {d_sae})
        return {"k": cfg.k, "widths": tuple(widths)}
    return {"k": cfg.k}


class SynthRow(NamedTuple):
    """One architecture (or the oracle) on one condition, width and seed."""

    condition: str
    d_sae: int
    arch: str
    seed: int
    score: ToyScore
    train_seconds: float
    """Wall time of the whole training run this SAE was part of (all architectures together)."""
    babel: list[float]
    """Babel function μ₁(s), s = 1..32, of the dictionary (NaN where s >= its number of atoms)."""
    fired_babel: list[float]
    """The same over the atoms that fire on the held-out samples."""


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads, then restore the previous count.

    Small SAEs (toy, digits) on one thread: at 64 → 256 a step is ~1 ms of work, and with two threads
    on a busy 2-core machine the hand-offs made training 8× slower here (75 s against 9.6 s).

        with torch_threads(1): saes = train_saes(...)
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_saes(saes: dict[str, SAE], batches: Iterable[Tensor], *, total_steps: int, total_rows: int,
               lr: float) -> dict[str, SAE]:
    """Train ``saes`` together on the same row batches with the project's ``Trainer`` (on one thread: see
    ``torch_threads``); returns raw-unit copies.

        out = train_saes({"mp": make_sae("matching_pursuit", 64, 256, k=8)}, iter(rows.split(128)),
                         total_steps=12, total_rows=1437, lr=1e-2)
    """
    targets = [Target(name, HOOK, sae) for name, sae in saes.items()]
    # Sequential steps: these SAEs are tiny, so thread hand-offs would cost more than they save.
    trainer = Trainer(targets, TrainConfig(lr=lr, concurrent=False), total_steps=total_steps, total_tokens=total_rows)
    with torch_threads(1):
        for x in batches:
            trainer.step({HOOK: x})
    return trainer.export()


def train_toy(toy: HierarchicalToy, d_sae: int, cfg: SynthConfig, seed: int) -> dict[str, SAE]:
    """Train every architecture of ``cfg`` on the same ``cfg.n_train`` fresh samples; returns raw-unit SAEs.

        saes = train_toy(HierarchicalToy(), 40, SynthConfig(n_train=50_000), seed=0)
    """
    d = toy.cfg.dim
    saes = {a: make_sae(a, d, d_sae, seed=seed, **arch_options(a, d_sae, cfg)) for a in cfg.archs}
    gen = torch.Generator().manual_seed(seed)
    batches = (b.x for b in toy.batches(cfg.n_train, cfg.batch_size, gen))
    return train_saes(saes, batches, total_steps=-(-cfg.n_train // cfg.batch_size), total_rows=cfg.n_train,
                      lr=cfg.lr)


def run_one(condition: str, toy_cfg: ToyConfig, d_sae: int, cfg: SynthConfig, seed: int) -> list[SynthRow]:
    """Train and score all architectures for one (condition, width, seed), plus the oracle row.

        rows = run_one("paper", ToyConfig(), 20, SynthConfig(n_train=20_000), seed=0)
    """
    toy = HierarchicalToy(toy_cfg.replace(seed=seed))
    t0 = time.perf_counter()
    saes = train_toy(toy, d_sae, cfg, seed)
    seconds = time.perf_counter() - t0
    held_out = toy.sample(cfg.n_eval, torch.Generator().manual_seed(10_000 + seed))
    with torch_threads(1):
        rows = [SynthRow(condition, d_sae, "oracle", seed, score_oracle(toy, held_out), 0.0,
                         *_babels(toy.directions, held_out.codes))]
        for arch, sae in saes.items():
            with torch.no_grad():
                codes = sae.encode(held_out.x)
            rows.append(SynthRow(condition, d_sae, arch, seed, score_sae(sae, toy, held_out), seconds,
                                 *_babels(sae.W_dec, codes)))
    return rows


def _babels(atoms: Tensor, codes: Tensor, s_max: int = 32) -> tuple[list[float], list[float]]:
    """Babel μ₁(1..s_max) over all atoms and over the atoms that fire in ``codes``."""
    fired = (codes != 0).any(0)
    return babel(atoms, s_max).tolist(), babel(atoms[fired], s_max).tolist() if bool(fired.any()) else \
        [float("nan")] * s_max


def _job(args: tuple) -> list[SynthRow]:
    return run_one(*args)


class SummaryRow(NamedTuple):
    """Mean and sample standard deviation over seeds of every score."""

    condition: str
    d_sae: int
    arch: str
    n_seeds: int
    mean: dict[str, float]
    sd: dict[str, float]


@dataclass(frozen=True)
class SynthResult:
    """All runs of a toy experiment, their summary, and how long it took.

        result.table()            # markdown, mean ± sd over seeds
        result.plot("grid.png")   # MCC per architecture, and reconstruction against MCC
    """

    conditions: tuple[tuple[str, ToyConfig], ...]
    """(name, toy config) of each condition, in order."""
    widths: tuple[int, ...]
    cfg: SynthConfig
    seeds: tuple[int, ...]
    rows: tuple[SynthRow, ...]
    wall_seconds: float
    """Wall time of the whole experiment (training and scoring)."""
    workers: int
    """Processes the runs were spread over (one torch thread each)."""
    load_average: tuple[float, float]
    """1-minute load average of the machine at the start and at the end (the machine may be shared)."""

    def summary(self) -> list[SummaryRow]:
        out: list[SummaryRow] = []
        keys: list[tuple[str, int, str]] = []
        for r in self.rows:
            key = (r.condition, -1 if r.arch == "oracle" else r.d_sae, r.arch)
            if key not in keys:
                keys.append(key)
        for cond, d_sae, arch in keys:
            picked = [r for r in self.rows if r.condition == cond and r.arch == arch and
                      (arch == "oracle" or r.d_sae == d_sae)]
            if arch == "oracle":  # the same oracle for every width: one row per seed
                picked = list({r.seed: r for r in picked}.values())
            mean, sd = {}, {}
            for field in ToyScore._fields:
                mean[field], sd[field] = mean_sd([getattr(r.score, field) for r in picked])
            for s in (2, 8):  # Babel μ₁(s) over the atoms that fire
                mean[f"fired_mu1_{s}"], sd[f"fired_mu1_{s}"] = mean_sd([r.fired_babel[s - 1] for r in picked])
            out.append(SummaryRow(cond, d_sae, arch, len(picked), mean, sd))
        return out

    def table(self, fields: Sequence[str] = ("mcc", "fvu", "flat_err", "hier_err", "clean_err", "absorption",
                                             "l0", "dead_frac", "coherence", "support_cos")) -> str:
        """Markdown table, mean ± sd over seeds, with the definitions under it."""
        head = "| condition | d_sae | arch | " + " | ".join(fields) + " |"
        lines = [head, "|" + " --- |" * (3 + len(fields))]
        for s in self.summary():
            cells = [f"{s.mean[f]:.3f} ± {s.sd[f]:.3f}" for f in fields]
            lines.append(f"| {s.condition} | {'-' if s.d_sae < 0 else s.d_sae} | {s.arch} | " + " | ".join(cells) + " |")
        conds = "; ".join(f"{n}: {_describe(c)}" for n, c in self.conditions)
        lines += ["", f"Seeds {list(self.seeds)}; {self.cfg.n_train:,} training / {self.cfg.n_eval:,} held-out samples; "
                  f"k={self.cfg.k}, l1={self.cfg.l1_coef}, lr={self.cfg.lr}, batch {self.cfg.batch_size}. "
                  f"Conditions: {conds}.", "", SCORE_DEFINITIONS]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "conditions": [{"name": n, **dataclasses.asdict(c)} for n, c in self.conditions],
            "widths": list(self.widths), "seeds": list(self.seeds), "config": dataclasses.asdict(self.cfg),
            "wall_seconds": self.wall_seconds, "workers": self.workers, "load_average": list(self.load_average),
            "summary": [{"condition": s.condition, "d_sae": None if s.d_sae < 0 else s.d_sae, "arch": s.arch,
                         "n_seeds": s.n_seeds, "mean": s.mean, "sd": s.sd} for s in self.summary()],
            "runs": [{"condition": r.condition, "d_sae": r.d_sae, "arch": r.arch, "seed": r.seed,
                      "train_seconds": r.train_seconds, **r.score.to_dict(), "babel": r.babel,
                      "fired_babel": r.fired_babel} for r in self.rows],
            "definitions": SCORE_DEFINITIONS,
        }

    def plot(self, path: str | os.PathLike) -> None:
        """One figure: top row MCC per architecture and width (bars, ± sd) for each condition; bottom row
        each seed's reconstruction error against its MCC (the critique: better reconstruction, worse features?)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        summary = self.summary()
        archs = [a for a in self.cfg.archs]
        colors = {a: plt.get_cmap("tab10")(i) for i, a in enumerate(archs)}
        n = len(self.conditions)
        fig, axes = plt.subplots(2, n, figsize=(3.6 * n + 1, 6.6), squeeze=False)
        bar_w = 0.8 / max(1, len(archs))
        for j, (cond, _) in enumerate(self.conditions):
            ax = axes[0, j]
            for i, a in enumerate(archs):
                ms = [next((s for s in summary if s.condition == cond and s.arch == a and s.d_sae == w), None)
                      for w in self.widths]
                xs = [x + (i - (len(archs) - 1) / 2) * bar_w for x in range(len(self.widths))]
                ax.bar(xs, [m.mean["mcc"] if m else float("nan") for m in ms], bar_w,
                       yerr=[m.sd["mcc"] if m else 0 for m in ms], color=colors[a], label=a, capsize=2)
            ax.set_xticks(range(len(self.widths)), [f"d_sae {w}" for w in self.widths])
            ax.set_ylim(0, 1.05)
            ax.axhline(1.0, color="k", lw=0.6, ls=":")
            ax.set_title(cond, fontsize=9)
            if j == 0:
                ax.set_ylabel("MCC (oracle = 1)")
            ax2 = axes[1, j]
            for a in archs:
                pts = [r for r in self.rows if r.condition == cond and r.arch == a]
                for w, marker in zip(self.widths, "os^D"):
                    sel = [r for r in pts if r.d_sae == w]
                    ax2.scatter([r.score.mcc for r in sel], [max(r.score.fvu, 1e-6) for r in sel], color=colors[a],
                                marker=marker, s=18, label=f"{a} ({w})" if j == 0 else None)
            ax2.set_yscale("log")
            ax2.set_xlabel("MCC")
            if j == 0:
                ax2.set_ylabel("held-out FVU (log)")
        axes[0, 0].legend(fontsize=7, loc="lower left")
        fig.suptitle(f"Hierarchical toy: {len(self.seeds)} seeds, {self.cfg.n_train:,} samples, k={self.cfg.k}; "
                     "markers o/s = widths " + "/".join(map(str, self.widths)), fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def parse_condition(text: str, base: ToyConfig | None = None) -> tuple[str, ToyConfig]:
    """``NAME:key=value,key=value`` (or just the pairs) → (name, the base toy with those knobs changed).
    Keys are ToyConfig fields; values are typed by the field (``d_model=none`` = no superposition).

        parse_condition("superposed:d_model=12,noise=0.1")   # ('superposed', ToyConfig(d_model=12, noise=0.1))
    """
    base = base or ToyConfig()
    name, sep, pairs = text.partition(":")
    if not sep:
        name, pairs = "", text
    fields = {f.name: f for f in dataclasses.fields(ToyConfig) if f.name != "seed"}  # seeds come per run
    changes: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in pairs.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or key not in fields:
            raise ValueError(f"condition {text!r}: {item!r} is not KEY=VALUE with KEY one of {sorted(fields)}.")
        default = getattr(ToyConfig(), key)
        v = value.strip()
        try:
            if key == "d_model":
                changes[key] = None if v.lower() in ("none", "") else int(v)
            elif isinstance(default, bool):
                if v.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(v)
                changes[key] = v.lower() in ("true", "1", "yes")
            elif isinstance(default, int):
                changes[key] = int(v)
            else:
                changes[key] = float(v)
        except ValueError:
            raise ValueError(f"condition {text!r}: {key}={v!r} is not a valid {type(default).__name__ if default is not None else 'int or none'}.") from None
    cfg = base.replace(**changes)
    return (name or _describe(cfg).replace(", ", ",")), cfg


def _describe(c: ToyConfig) -> str:
    base = ToyConfig()
    parts = [f"{f.name}={getattr(c, f.name)}" for f in dataclasses.fields(c)
             if f.name != "seed" and getattr(c, f.name) != getattr(base, f.name)]
    return ", ".join(parts) or "the paper's toy"


def run_synth(conditions: Sequence[tuple[str, ToyConfig]], widths: Sequence[int], cfg: SynthConfig, *,
              seeds: int | Sequence[int] = 3, workers: int | None = None, progress: Any = None) -> SynthResult:
    """Every (condition, width, seed) run, spread over ``workers`` processes (default: the CPU count, at most
    the number of runs; 1 = in this process). ``progress(done, total, rows)`` is called after each run.

        res = run_synth([("paper", ToyConfig()), ("noisy", ToyConfig(d_model=12, noise=0.1))], (20, 40),
                        SynthConfig(), seeds=3)
    """
    if not conditions:
        raise ValueError("run_synth needs at least one (name, ToyConfig) condition.")
    names = [n for n, _ in conditions]
    if len(set(names)) != len(names):
        raise ValueError(f"run_synth: condition names must be unique; got {names}.")
    if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
        raise ValueError(f"run_synth: widths={list(widths)!r}; give one or more ints >= 1 (d_sae).")
    seed_list = tuple(range(seeds)) if isinstance(seeds, int) else tuple(seeds)
    if not seed_list or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seed_list):
        raise ValueError(f"run_synth: seeds={seeds!r}; give a count >= 1 or a list of ints >= 0.")
    for w in widths:
        for a in cfg.archs:
            arch_options(a, w, cfg)  # errors (k > d_sae) before any training
    jobs = [(n, c, w, cfg, s) for n, c in conditions for w in widths for s in seed_list]
    workers = min(len(jobs), os.cpu_count() or 1) if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"run_synth: workers={workers!r}; it must be an int >= 1.")
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    rows: list[SynthRow] = []
    if workers == 1:
        for i, job in enumerate(jobs):
            rows += run_one(*job)
            if progress:
                progress(i + 1, len(jobs), rows)
    else:
        import multiprocessing

        # spawn: a forked child would inherit this process's torch thread pools mid-state.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for i, part in enumerate(pool.map(_job, jobs)):
                rows += part
                if progress:
                    progress(i + 1, len(jobs), rows)
    return SynthResult(tuple((n, c) for n, c in conditions), tuple(widths), cfg, seed_list, tuple(rows),
                       time.perf_counter() - t0, workers, (load0, os.getloadavg()[0]))


__all__ = ["TOY_ARCHS", "SynthConfig", "SynthRow", "SummaryRow", "SynthResult", "arch_options", "torch_threads", "train_saes", "train_toy",
           "run_one", "run_synth", "parse_condition"]
