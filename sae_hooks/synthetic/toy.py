"""The hierarchical toy of the MP-SAE paper (Costa et al. 2025, arXiv 2506.03093, §4), with its knobs.

Features form a two-level tree. Every sample activates exactly one *top-level* feature: one of
``n_parents`` parents (probability ``parent_prob`` each) or one of ``n_leaves`` leaves (the rest of
the probability, shared equally). A chosen parent then activates one of its ``n_children`` children
(``child_prob`` each) or none (the rest). The paper's tree is the default: 3 parents × 3 children
and 8 leaves = 20 features, p = [0.2, 0.2, 0.2, 0.05 × 8] at the top and [0.2, 0.2, 0.2, none 0.4]
below, so a sample holds 1 or 2 features (mean 1.36).

Directions: siblings (the top-level features among themselves; the children of one parent among
themselves) have cosine ``0.1 · level``; a parent is orthogonal to its children and every other
pair is orthogonal. Each sibling group of size m gets the Gram matrix G = (1 − c) I + c 11ᵀ
exactly, through its symmetric square root G^½ = √(1−c) I + ((√(1+(m−1)c) − √(1−c)) / m) 11ᵀ
applied to m orthonormal basis vectors of its own, so groups stay orthogonal to each other. The
basis is a random rotation (``seed``). With ``d_model < n_features`` (superposition) the basis rows
are a random tight frame (rows of an n × d matrix with orthonormal columns) and the directions are
renormalised: the cosines then hold only approximately (``ToyDictionary.check`` reports them).

Magnitudes are ``magnitude_mean + sigma · N(0, 1)`` per active feature, drawn independently (the
paper) or, with ``tied_magnitudes``, one draw shared by a parent and its child (which makes
absorbing the parent into the child's latent free: the pair is then one direction times a scalar).
Optional isotropic noise has E‖ε‖² = ``noise``² (a unit feature has norm 1).

    toy = HierarchicalToy(ToyConfig(level=1, sigma=0.25))
    batch = toy.sample(1000, torch.Generator().manual_seed(0))   # batch.x [1000, 20]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class ToyConfig:
    """Every knob of the hierarchical toy; the defaults are the paper's setting."""

    level: float = 1.0
    """Sibling cosine = 0.1 · level, in [0, 10): 0 = orthogonal siblings, 9 = cosine 0.9."""

    sigma: float = 0.25
    """Spread (standard deviation) of each active feature's magnitude, >= 0."""

    magnitude_mean: float = 1.5
    """Mean magnitude of an active feature, > 0. Magnitudes are clipped at 0 (matters only for sigma
    of about magnitude_mean / 4 and more)."""

    n_parents: int = 3
    """Top-level features that have children, >= 0."""

    n_children: int = 3
    """Children per parent (mutually exclusive), >= 1."""

    n_leaves: int = 8
    """Top-level features without children, >= 0; top level (parents + leaves) needs >= 2 features."""

    parent_prob: float = 0.2
    """Probability that a given parent is a sample's top-level feature; the leaves share the rest
    equally, so n_parents · parent_prob <= 1 (== 1 when there are no leaves)."""

    child_prob: float = 0.2
    """Probability of each child given its parent; the rest (1 − n_children · child_prob) is "no child"."""

    d_model: int | None = None
    """Ambient dimension; None = the number of features. Below it: superposition (approximate cosines)."""

    noise: float = 0.0
    """Additive isotropic Gaussian noise with E‖ε‖² = noise² (features have unit norm), >= 0."""

    tied_magnitudes: bool = False
    """A child takes its parent's magnitude draw instead of its own (absorption becomes free)."""

    seed: int = 0
    """Seed of the dictionary (the random rotation / frame); sampling takes its own generator."""

    def __post_init__(self) -> None:
        def bad(name: str, valid: str, hint: str = "") -> ValueError:
            return ValueError(f"ToyConfig.{name}={getattr(self, name)!r}; valid: {valid}.{' ' + hint if hint else ''}")

        if not _is_num(self.level) or not 0 <= self.level < 10:
            raise bad("level", "a number in [0, 10) (sibling cosine = 0.1 · level < 1)",
                      "Use e.g. level=1 for cosine 0.1, level=5 for 0.5.")
        if not _is_num(self.sigma) or self.sigma < 0:
            raise bad("sigma", "a finite number >= 0 (magnitude standard deviation)")
        if not _is_num(self.magnitude_mean) or self.magnitude_mean <= 0:
            raise bad("magnitude_mean", "a finite number > 0")
        for name, lo in (("n_parents", 0), ("n_children", 1), ("n_leaves", 0)):
            if not _is_int(getattr(self, name)) or getattr(self, name) < lo:
                raise bad(name, f"an int >= {lo}")
        if self.n_parents + self.n_leaves < 2:
            raise ValueError(f"ToyConfig: n_parents + n_leaves = {self.n_parents + self.n_leaves}; the top level needs "
                             ">= 2 features (one is chosen per sample). Raise n_parents or n_leaves.")
        for name in ("parent_prob", "child_prob"):
            if not _is_num(getattr(self, name)) or not 0 <= getattr(self, name) <= 1:
                raise bad(name, "a probability in [0, 1]")
        top = self.n_parents * self.parent_prob
        if top > 1 + 1e-9:
            raise bad("parent_prob", f"at most 1 / n_parents = {1 / self.n_parents:.4g} (the parents' total "
                      f"{top:.4g} exceeds 1)")
        if self.n_leaves == 0 and abs(top - 1) > 1e-9:
            raise bad("parent_prob", f"exactly 1 / n_parents = {1 / self.n_parents:.4g} when n_leaves=0 (one "
                      "top-level feature is always chosen)", "Or add leaves (n_leaves > 0).")
        if self.n_children * self.child_prob > 1 + 1e-9:
            raise bad("child_prob", f"at most 1 / n_children = {1 / self.n_children:.4g}")
        if self.d_model is not None and (not _is_int(self.d_model) or self.d_model < 2):
            raise bad("d_model", "an int >= 2, or None (= the number of features)")
        if not _is_num(self.noise) or self.noise < 0:
            raise bad("noise", "a finite number >= 0 (noise norm relative to a unit feature)")
        if not isinstance(self.tied_magnitudes, bool):
            raise bad("tied_magnitudes", "True or False")
        if not _is_int(self.seed):
            raise bad("seed", "an int")

    @property
    def n_features(self) -> int:
        """Read-out features: parents, their children and the leaves."""
        return self.n_parents * (1 + self.n_children) + self.n_leaves

    @property
    def dim(self) -> int:
        """The ambient dimension actually used."""
        return self.n_features if self.d_model is None else self.d_model

    @property
    def cosine(self) -> float:
        """Requested sibling cosine, 0.1 · level."""
        return 0.1 * self.level

    def replace(self, **changes) -> "ToyConfig":
        return dataclasses.replace(self, **changes)


class ToyBatch(NamedTuple):
    """Samples with their ground truth."""

    x: Float[Tensor, "n d"]
    """What the SAE sees: signal + noise."""
    signal: Float[Tensor, "n d"]
    """Noise-free part, codes @ directions."""
    codes: Float[Tensor, "n f"]
    """True magnitudes of every feature (0 = inactive)."""
    top: Int[Tensor, " n"]
    """Index of the active top-level feature."""
    child: Int[Tensor, " n"]
    """Index of the active child, −1 where none."""

    @property
    def hierarchical(self) -> Bool[Tensor, " n"]:
        """Samples holding a parent and one of its children."""
        return self.child >= 0

    @property
    def flat(self) -> Bool[Tensor, " n"]:
        """Samples holding one top-level feature alone (a leaf, or a parent without child)."""
        return self.child < 0


class ToyDictionaryCheck(NamedTuple):
    """How closely the directions meet the requested geometry."""

    sibling_min: float
    """Smallest cosine between two siblings."""
    sibling_max: float
    """Largest cosine between two siblings."""
    parent_child_max: float
    """Largest |cosine| between a parent and one of its children."""
    other_max: float
    """Largest |cosine| between two features that are neither siblings nor parent and child."""


class HierarchicalToy:
    """The tree, its true directions and a sampler.

        toy = HierarchicalToy(ToyConfig(level=3, d_model=12, noise=0.05))
        toy.directions.shape        # torch.Size([20, 12])
        toy.frequencies             # marginal probability of each feature
    """

    def __init__(self, cfg: ToyConfig | None = None):
        self.cfg = cfg = cfg or ToyConfig()
        n_p, n_c = cfg.n_parents, cfg.n_children
        self.parents = [p * (1 + n_c) for p in range(n_p)]
        """Feature index of each parent (its children follow it)."""
        self.children = {p: list(range(p + 1, p + 1 + n_c)) for p in self.parents}
        """Parent index -> its children's indices."""
        self.leaves = list(range(n_p * (1 + n_c), cfg.n_features))
        self.top_level = self.parents + self.leaves
        parent_of = torch.full((cfg.n_features,), -1, dtype=torch.long)
        for p, cs in self.children.items():
            parent_of[cs] = p
        self.parent_of = parent_of
        """Parent of each feature, −1 for top-level features."""
        leaf_p = (1 - n_p * cfg.parent_prob) / cfg.n_leaves if cfg.n_leaves else 0.0
        self.top_probs = torch.tensor([cfg.parent_prob] * n_p + [leaf_p] * cfg.n_leaves, dtype=torch.float64)
        """Choice probabilities of the top-level features (in ``top_level`` order)."""
        self.child_probs = torch.tensor([cfg.child_prob] * n_c + [max(0.0, 1 - n_c * cfg.child_prob)],
                                        dtype=torch.float64)
        """Choice probabilities of each child and, last, of "no child"."""
        self.directions = self._directions()

    @property
    def frequencies(self) -> Float[Tensor, " f"]:
        """Marginal probability that each feature is active in a sample (from the tree)."""
        f = torch.zeros(self.cfg.n_features, dtype=torch.float64)
        f[self.top_level] = self.top_probs
        for p, cs in self.children.items():
            f[cs] = self.cfg.parent_prob * self.cfg.child_prob
        return f

    def sibling_groups(self) -> list[list[int]]:
        """Feature indices of each sibling group: the top level, then each parent's children."""
        return [self.top_level] + [self.children[p] for p in self.parents]

    def _directions(self) -> Float[Tensor, "f d"]:
        cfg = self.cfg
        n, d, c = cfg.n_features, cfg.dim, cfg.cosine
        mix = torch.zeros(n, n, dtype=torch.float64)
        for group in self.sibling_groups():
            m = len(group)
            # G^½ of G = (1 − c) I + c 11ᵀ (eigenvalues 1 − c, m − 1 times, and 1 + (m − 1) c).
            a = math.sqrt(1 - c)
            root = a * torch.eye(m, dtype=torch.float64) + (math.sqrt(1 + (m - 1) * c) - a) / m
            idx = torch.tensor(group)
            mix[idx[:, None], idx[None, :]] = root
        gen = torch.Generator().manual_seed(cfg.seed)
        if d >= n:
            q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
            basis = q[:n]  # orthonormal rows
        else:
            q, _ = torch.linalg.qr(torch.randn(n, d, generator=gen, dtype=torch.float64))
            basis = q  # [n, d] with orthonormal columns: a random tight frame
        v = mix @ basis
        return (v / v.norm(dim=-1, keepdim=True)).float()

    def check(self) -> ToyDictionaryCheck:
        """The achieved cosines (exact up to rounding without superposition).

            toy.check().sibling_max     # ≈ 0.1 · level
        """
        g = (self.directions.double() @ self.directions.double().T)
        n = g.shape[0]
        sib = torch.zeros(n, n, dtype=torch.bool)
        for group in self.sibling_groups():
            idx = torch.tensor(group)
            sib[idx[:, None], idx[None, :]] = True
        pc = torch.zeros(n, n, dtype=torch.bool)
        for p, cs in self.children.items():
            pc[p, cs] = pc[cs, p] = True
        off = ~torch.eye(n, dtype=torch.bool)
        sib &= off
        other = off & ~sib & ~pc
        return ToyDictionaryCheck(
            float(g[sib].min()), float(g[sib].max()),
            float(g[pc].abs().max()) if pc.any() else 0.0,
            float(g[other].abs().max()) if other.any() else 0.0)

    def sample(self, n: int, generator: torch.Generator | None = None) -> ToyBatch:
        """``n`` samples of the tree (float32).

            batch = toy.sample(10_000, torch.Generator().manual_seed(1))
        """
        if not _is_int(n) or n < 1:
            raise ValueError(f"sample: n={n!r}; it must be an int >= 1.")
        cfg = self.cfg
        rows = torch.arange(n)
        top_pick = torch.multinomial(self.top_probs, n, replacement=True, generator=generator)
        top = torch.tensor(self.top_level)[top_pick]
        child_pick = torch.multinomial(self.child_probs, n, replacement=True, generator=generator)
        has_child = (top_pick < cfg.n_parents) & (child_pick < cfg.n_children)
        child = torch.where(has_child, top + 1 + child_pick, torch.full_like(top, -1))
        mags = torch.randn(n, 2, generator=generator).mul_(cfg.sigma).add_(cfg.magnitude_mean).clamp_min_(0)
        if cfg.tied_magnitudes:
            mags[:, 1] = mags[:, 0]
        codes = torch.zeros(n, cfg.n_features)
        codes[rows, top] = mags[:, 0]
        codes[rows[has_child], child[has_child]] = mags[has_child, 1]
        signal = codes @ self.directions
        x = signal
        if cfg.noise > 0:
            x = signal + torch.randn(n, cfg.dim, generator=generator) * (cfg.noise / math.sqrt(cfg.dim))
        return ToyBatch(x, signal, codes, top, child)

    def batches(self, n_samples: int, batch_size: int, generator: torch.Generator) -> Iterator[ToyBatch]:
        """``ceil(n_samples / batch_size)`` fresh batches (the last one may be smaller).

            for b in toy.batches(200_000, 500, torch.Generator().manual_seed(0)): trainer.step({"toy": b.x})
        """
        if not _is_int(batch_size) or batch_size < 1:
            raise ValueError(f"batches: batch_size={batch_size!r}; it must be an int >= 1.")
        done = 0
        while done < n_samples:
            b = min(batch_size, n_samples - done)
            yield self.sample(b, generator)
            done += b


__all__ = ["ToyConfig", "ToyBatch", "ToyDictionaryCheck", "HierarchicalToy"]
