"""The digits setting: ReLU, TopK and MP-SAE dictionaries learned on handwritten digits.

Costa et al. (arXiv 2506.05239) argue on MNIST that shallow encoders (one matrix product and a
threshold) implicitly need a quasi-orthogonal dictionary, while a matching-pursuit encoder can
use correlated atoms (pieces of strokes shared by digits) and still pick the right ones, because
each step works on the residual. MNIST is not on this machine; scikit-learn ships the UCI 8×8
digits (1,797 images, 64 pixels, values 0–16) inside its wheel, so ``load_digits`` needs no network.
Pixels are scaled to [0, 1]; a seeded permutation holds out 20 % of the images.

What is measured, per seed: test FVU and L0 of TopK and MP SAEs trained at each k and of ReLU SAEs
at several L1 coefficients (reconstruction against sparsity); MP trained at one k evaluated at other
inference k; coherence and the Babel function of each learned dictionary, over all atoms and over
the atoms that fire on the test images, and the support coherence (how correlated the atoms used
together are); an image grid of the atoms used most often.

    result = run_digits(DigitsConfig(), seeds=3)
    print(result.table()); result.plot_curve("digits_k.png"); result.plot_atoms("digits_atoms.png")
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from ..geometry import GEOMETRY_DEFINITIONS, babel, dictionary_geometry
from ..sae import SAE, make_sae
from .experiment import torch_threads, train_saes
from .score import mean_sd


class DigitsData(NamedTuple):
    """The 8×8 digits as rows of 64 pixels in [0, 1], split into train and test."""

    train: Float[Tensor, "n 64"]
    test: Float[Tensor, "m 64"]
    train_labels: Tensor
    test_labels: Tensor


def load_digits_data(test_frac: float = 0.2, seed: int = 0) -> DigitsData:
    """scikit-learn's bundled digits (offline), pixels / 16, a seeded train/test split.

        data = load_digits_data(); data.train.shape     # torch.Size([1438, 64])
    """
    if not (isinstance(test_frac, (int, float)) and 0 < test_frac < 1):
        raise ValueError(f"test_frac={test_frac!r}; it must lie in (0, 1).")
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # a project dependency; say how to get it rather than fail obscurely
        raise ImportError("The digits setting needs scikit-learn (pip install scikit-learn).") from e
    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.long)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    n_test = round(test_frac * x.shape[0])
    te, tr = perm[:n_test], perm[n_test:]
    return DigitsData(x[tr], x[te], y[tr], y[te])


@dataclass(frozen=True)
class DigitsConfig:
    """The SAEs trained on the digits and how."""

    d_sae: int = 256
    """Atoms per dictionary (4× the 64 pixels)."""
    ks: tuple[int, ...] = (2, 4, 8, 16)
    """k of the TopK and MP SAEs (one SAE per k and architecture)."""
    l1_coefs: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0)
    """L1 coefficients of the ReLU SAEs (their L0 follows from it)."""
    inference_ks: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    """Inference k at which the MP SAE trained at ``adaptive_from`` is also evaluated."""
    adaptive_from: int = 8
    """The training k of the MP SAE evaluated at ``inference_ks`` (must be in ``ks``)."""
    epochs: int = 100
    """Passes over the training images."""
    batch_size: int = 128
    lr: float = 1e-2
    """Peak Adam learning rate (the trainer's cosine schedule), the same for every SAE."""
    s_max: int = 32
    """Largest s of the Babel function."""

    def __post_init__(self) -> None:
        for name in ("d_sae", "epochs", "batch_size", "adaptive_from", "s_max"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"DigitsConfig.{name}={v!r}; it must be an int >= 1.")
        for name in ("ks", "inference_ks"):
            v = tuple(getattr(self, name))
            object.__setattr__(self, name, v)
            if any(isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.d_sae for k in v):
                raise ValueError(f"DigitsConfig.{name}={list(v)}; each must be an int in [1, d_sae={self.d_sae}].")
        object.__setattr__(self, "l1_coefs", tuple(self.l1_coefs))
        if any(isinstance(c, bool) or not isinstance(c, (int, float)) or not c >= 0 for c in self.l1_coefs):
            raise ValueError(f"DigitsConfig.l1_coefs={list(self.l1_coefs)}; each must be a number >= 0.")
        if self.adaptive_from not in self.ks:
            raise ValueError(f"DigitsConfig.adaptive_from={self.adaptive_from} must be one of ks={list(self.ks)}.")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"DigitsConfig.lr={self.lr!r}; it must be a finite number > 0.")

    def models(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """name → (architecture, options) of every SAE trained per seed."""
        out: dict[str, tuple[str, dict[str, Any]]] = {}
        for k in self.ks:
            out[f"topk_k{k}"] = ("topk", {"k": k})
            out[f"mp_k{k}"] = ("matching_pursuit", {"k": k})
        for c in self.l1_coefs:
            out[f"relu_l1={c:g}"] = ("standard", {"l1_coef": float(c)})
        return out


class DigitsRow(NamedTuple):
    """One SAE (or one inference k of the adaptive MP) on the test images, one seed."""

    name: str
    arch: str
    seed: int
    train_k: int | None
    infer_k: int | None
    fvu: float
    l0: float
    dead_frac: float
    coherence: float
    selected_coherence: float
    babel: list[float]
    selected_babel: list[float]
    support_max_cos: float
    support_mean_cos: float


def _epochs(x: Tensor, epochs: int, batch_size: int, gen: torch.Generator) -> Iterator[Tensor]:
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=gen)
        for lo in range(0, x.shape[0] - batch_size + 1, batch_size):  # whole batches only
            yield x[perm[lo: lo + batch_size]]


def train_digits(data: DigitsData, cfg: DigitsConfig, seed: int) -> dict[str, SAE]:
    """Every SAE of ``cfg.models()`` trained on the same shuffled batches of the training images.

        saes = train_digits(load_digits_data(), DigitsConfig(epochs=5), seed=0)
    """
    if cfg.batch_size > data.train.shape[0]:
        raise ValueError(f"batch_size={cfg.batch_size} exceeds the {data.train.shape[0]} training images.")
    saes = {name: make_sae(arch, data.train.shape[1], cfg.d_sae, seed=seed, **opts)
            for name, (arch, opts) in cfg.models().items()}
    steps = cfg.epochs * (data.train.shape[0] // cfg.batch_size)
    batches = _epochs(data.train, cfg.epochs, cfg.batch_size, torch.Generator().manual_seed(seed))
    return train_saes(saes, batches, total_steps=steps, total_rows=steps * cfg.batch_size, lr=cfg.lr)


def _row(name: str, arch: str, seed: int, sae: SAE, x: Tensor, cfg: DigitsConfig, train_k: int | None,
         infer_k: int | None, **kw: Any) -> DigitsRow:
    m = _metrics(sae, x, **kw)
    g = dictionary_geometry(sae, x, s_max=cfg.s_max, **kw)
    return DigitsRow(name, arch, seed, train_k, infer_k, m["fvu"], m["l0"], m["dead_frac"], g.coherence,
                     g.selected_coherence, g.babel, g.selected_babel, g.support_max_cos, g.support_mean_cos)


@torch.no_grad()
def _metrics(sae: SAE, x: Tensor, **kw: Any) -> dict[str, float]:
    z = sae.encode(x, **kw)
    err = float((sae.decode(z) - x).pow(2).sum())
    var = float((x - x.mean(0)).pow(2).sum())
    active = z != 0
    return {"fvu": err / var, "l0": float(active.sum(-1).float().mean()), "dead_frac": float((~active.any(0)).float().mean())}


@dataclass(frozen=True)
class DigitsResult:
    """All rows (every seed), the atoms of seed 0 for the image grid, and the wall time."""

    cfg: DigitsConfig
    seeds: tuple[int, ...]
    rows: tuple[DigitsRow, ...]
    atoms: dict[str, Tensor]
    """Seed 0's atoms [d_sae, 64] of the SAEs drawn in the grid, most used first."""
    n_train: int
    n_test: int
    wall_seconds: float

    def summary(self) -> list[dict[str, Any]]:
        """Mean ± sd over seeds per (name, inference k)."""
        keys: list[tuple[str, int | None]] = []
        for r in self.rows:
            if (r.name, r.infer_k) not in keys:
                keys.append((r.name, r.infer_k))
        out = []
        for name, ik in keys:
            rs = [r for r in self.rows if r.name == name and r.infer_k == ik]
            entry: dict[str, Any] = {"name": name, "arch": rs[0].arch, "train_k": rs[0].train_k, "infer_k": ik,
                                     "n_seeds": len(rs)}
            for f in ("fvu", "l0", "dead_frac", "coherence", "selected_coherence", "support_max_cos",
                      "support_mean_cos"):
                entry[f] = mean_sd([getattr(r, f) for r in rs])
            for s in (2, 8, 32):
                if s <= self.cfg.s_max:
                    entry[f"babel_{s}"] = mean_sd([r.babel[s - 1] for r in rs])
                    entry[f"selected_babel_{s}"] = mean_sd([r.selected_babel[s - 1] for r in rs])
            out.append(entry)
        return out

    def table(self) -> str:
        cols = ("fvu", "l0", "dead_frac", "coherence", "selected_coherence", "selected_babel_8",
                "support_max_cos", "support_mean_cos")
        lines = ["| SAE | inference k | " + " | ".join(cols) + " |", "|" + " --- |" * (2 + len(cols))]
        for e in self.summary():
            cells = [f"{e[c][0]:.3f} ± {e[c][1]:.3f}" if c in e else "-" for c in cols]
            lines.append(f"| {e['name']} | {e['infer_k'] if e['infer_k'] is not None else '-'} | " + " | ".join(cells) + " |")
        lines += ["", f"8×8 digits (scikit-learn, offline): {self.n_train} training / {self.n_test} test images; "
                  f"d_sae {self.cfg.d_sae}, {self.cfg.epochs} epochs, batch {self.cfg.batch_size}, lr {self.cfg.lr}; "
                  f"seeds {list(self.seeds)}; FVU and L0 on the test images.", "", GEOMETRY_DEFINITIONS]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"config": asdict(self.cfg), "seeds": list(self.seeds), "n_train": self.n_train, "n_test": self.n_test,
                "wall_seconds": self.wall_seconds, "summary": self.summary(),
                "runs": [r._asdict() for r in self.rows], "definitions": GEOMETRY_DEFINITIONS}

    def plot_curve(self, path: str | os.PathLike) -> None:
        """Test FVU against L0 (TopK and MP per training k, ReLU per L1, MP at inference k), and Babel μ₁(s)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        summ = self.summary()
        fig, (ax, axb) = plt.subplots(1, 2, figsize=(11, 4.2))
        styles = {"topk": ("tab:orange", "TopK (trained at k)"), "matching_pursuit": ("tab:red", "MP (trained at k)"),
                  "standard": ("tab:blue", "ReLU (L1 sweep)")}
        for arch, (color, label) in styles.items():
            es = sorted([e for e in summ if e["arch"] == arch and e["infer_k"] is None], key=lambda e: e["l0"][0])
            ax.errorbar([e["l0"][0] for e in es], [e["fvu"][0] for e in es], yerr=[e["fvu"][1] for e in es],
                        color=color, marker="o", label=label, capsize=2)
        es = sorted([e for e in summ if e["infer_k"] is not None], key=lambda e: e["l0"][0])
        ax.errorbar([e["l0"][0] for e in es], [e["fvu"][0] for e in es], yerr=[e["fvu"][1] for e in es],
                    color="tab:red", ls="--", marker="x", label=f"MP trained at k={self.cfg.adaptive_from}, inference k",
                    capsize=2)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("test L0")
        ax.set_ylabel("test FVU")
        ax.legend(fontsize=8)
        ax.set_title("Reconstruction against sparsity", fontsize=10)
        s = list(range(1, self.cfg.s_max + 1))
        k = self.cfg.adaptive_from
        for name, color in ((f"topk_k{k}", "tab:orange"), (f"mp_k{k}", "tab:red")):
            rs = [r for r in self.rows if r.name == name and r.infer_k is None]
            if rs:
                mean = torch.tensor([r.selected_babel for r in rs]).nanmean(0)
                axb.plot(s, mean, color=color, label=f"{name} (atoms that fire)")
        relu = [e for e in summ if e["arch"] == "standard" and e["infer_k"] is None]
        if relu:  # the ReLU SAE whose L0 is closest to k
            pick = min(relu, key=lambda e: abs(e["l0"][0] - k))["name"]
            rs = [r for r in self.rows if r.name == pick and r.infer_k is None]
            axb.plot(s, torch.tensor([r.selected_babel for r in rs]).nanmean(0), color="tab:blue",
                     label=f"{pick} (atoms that fire)")
        rand = babel(torch.randn(self.cfg.d_sae, 64, generator=torch.Generator().manual_seed(0)), self.cfg.s_max)
        axb.plot(s, rand, color="gray", ls="--", label="random unit atoms (same shape)")
        axb.axhline(1.0, color="k", lw=0.6, ls=":")
        axb.set_xlabel("s")
        axb.set_ylabel("Babel μ₁(s)")
        axb.legend(fontsize=8)
        axb.set_title("Babel function of the learned dictionaries", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    def plot_atoms(self, path: str | os.PathLike, n: int = 64) -> None:
        """The ``n`` most used atoms of each drawn SAE (seed 0) as 8×8 images, one panel per SAE."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = list(self.atoms)
        side = int(math.ceil(math.sqrt(n)))
        fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4.6), squeeze=False)
        for ax, name in zip(axes[0], names):
            a = self.atoms[name][:n]
            canvas = torch.full((side * 9 - 1, side * 9 - 1), float("nan"))
            for i, atom in enumerate(a):
                img = atom.view(8, 8)
                img = img / img.abs().max().clamp_min(1e-12)  # each atom on its own scale, sign kept
                r, c = divmod(i, side)
                canvas[r * 9: r * 9 + 8, c * 9: c * 9 + 8] = img
            ax.imshow(canvas.numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
            ax.set_title(name, fontsize=10)
            ax.axis("off")
        fig.suptitle(f"Most used atoms on the test digits (seed {self.seeds[0]}; red +, blue −)", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def _measure(saes: dict[str, SAE], models: dict[str, tuple[str, dict[str, Any]]], x: Tensor, cfg: DigitsConfig,
             seed: int) -> list[DigitsRow]:
    rows = [_row(name, models[name][0], seed, sae, x, cfg, models[name][1].get("k"), None)
            for name, sae in saes.items()]
    mp = saes[f"mp_k{cfg.adaptive_from}"]
    rows += [_row(f"mp_k{cfg.adaptive_from}", "matching_pursuit", seed, mp, x, cfg, cfg.adaptive_from, ik, k=ik)
             for ik in cfg.inference_ks]
    return rows


@torch.no_grad()
def _most_used_atoms(saes: dict[str, SAE], rows: list[DigitsRow], x: Tensor, k: int, seed: int) -> dict[str, Tensor]:
    """Atoms of the ReLU SAE whose L0 is closest to k, TopK at k and MP at k, most used on ``x`` first."""
    l0 = {r.name: r.l0 for r in rows if r.seed == seed and r.infer_k is None}
    relu = min((n for n in saes if n.startswith("relu")), key=lambda n: abs(l0[n] - k))
    out = {}
    for name in (relu, f"topk_k{k}", f"mp_k{k}"):
        use = (saes[name].encode(x) != 0).sum(0)
        out[name] = saes[name].W_dec.detach()[use.argsort(descending=True, stable=True)].clone()
    return out


def run_digits(cfg: DigitsConfig | None = None, *, seeds: int | Sequence[int] = 3, data: DigitsData | None = None,
               progress: Any = None) -> DigitsResult:
    """Train and measure every SAE of ``cfg`` for each seed (the split stays fixed; init and batch order vary).

        res = run_digits(DigitsConfig(epochs=50), seeds=3)
    """
    cfg = cfg or DigitsConfig()
    seed_list = tuple(range(seeds)) if isinstance(seeds, int) else tuple(seeds)
    if not seed_list:
        raise ValueError("run_digits: give at least one seed.")
    data = data or load_digits_data()
    t0 = time.perf_counter()
    rows: list[DigitsRow] = []
    atoms: dict[str, Tensor] = {}
    models = cfg.models()
    with torch_threads(1):  # small SAEs: see torch_threads
        for seed in seed_list:
            saes = train_digits(data, cfg, seed)
            rows += _measure(saes, models, data.test, cfg, seed)
            if seed == seed_list[0]:
                atoms = _most_used_atoms(saes, rows, data.test, cfg.adaptive_from, seed)
            if progress:
                progress(seed, rows)
    return DigitsResult(cfg, seed_list, tuple(rows), atoms, data.train.shape[0], data.test.shape[0],
                        time.perf_counter() - t0)


__all__ = ["DigitsData", "DigitsConfig", "DigitsRow", "DigitsResult", "load_digits_data", "train_digits", "run_digits"]
