"""Interpretability scores of a dictionary of latents against true token labels.

A *dictionary* is what gets scored: an SAE's latents, or a baseline's stand-ins for latents. It
offers activation **values** (what probes read) and binary **detectors** (what "fires"): for an
SAE both are its latents and a latent fires where its code is > 0; ``baselines.py`` defines the
residual-coordinate baseline, whose detectors are per-coordinate quantile thresholds.

Every score selects on the *training* part of the tokens and reports on the *held-out* part:

- **k-sparse probing** (Gurnee et al. 2023, arXiv 2305.01610; Kantamneni et al. 2025, arXiv
  2502.16681): per label, the k values whose mean differs most (absolute difference) between
  labelled and unlabelled training tokens; a logistic regression (scikit-learn, L2, C=1, on
  standardised values) fitted on them; held-out F1 of its predictions;
- **best single latent**: per label, the detector with the highest training F1 (ties: lowest id);
  its held-out F1, precision and recall; **coverage** = labels whose best latent reaches held-out
  F1 >= ``coverage_f1`` and beats the F1 of a detector that fires on every token (2p / (1 + p) at
  base rate p, >= 0.5 for any label on a third of the tokens or more);
- **latent labels**: per live detector (>= ``min_latent_fires`` firings on training tokens), the
  label with its highest training F1; that label's held-out precision and recall; the fraction of
  live detectors whose held-out precision is >= ``precise``;
- **absorption** (after Chanin et al. 2024, arXiv 2409.14507): for a parent label with children
  (``keyword`` -> ``keyword.def``, ...), take the parent's best latent p; a detector is *specific* to
  child c when it is not p, is live, and has training precision >= ``specific_precision`` for c.
  Absorption of c = fraction of c's held-out tokens on which p is silent while a detector specific
  to c fires; a parent's absorption pools the (child, token) pairs of its scored children.

A label is scored only when both parts hold at least ``min_label_tokens`` tokens with it and
without it; the others are reported as skipped, with their counts, and enter no mean.

    >>> scores = score_dictionary(SAEDictionary(sae), x_train, y_train, x_test, y_test, InterpConfig())
    >>> scores.probe_mean(1), scores.coverage, scores.precise_fraction
"""

from __future__ import annotations

import abc
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
from jaxtyping import Bool, Float
from threadpoolctl import threadpool_limits
from torch import Tensor

from .labels import LABEL_INDEX, LABELS, children

# Codes with at most this fraction of non-zeros are kept between the two passes (a TopK SAE with
# k = 32 of 4,608 latents: 0.7 %); denser ones (an untrained ReLU SAE fires on ~half) are encoded twice.
SPARSE_CACHE_DENSITY = 0.1


@dataclass(frozen=True)
class InterpConfig:
    """How interpretability scores are computed (every field has a default).

        cfg = InterpConfig(ks=(1, 5, 20), test_fraction=0.3, seed=0)
    """

    ks: tuple[int, ...] = (1, 5, 20)
    """Numbers of values the sparse probes read, each scored separately."""

    test_fraction: float = 0.3
    """Fraction of the sequences held out for reporting; selection and fitting use the rest."""

    seed: int = 0
    """Seed of the held-out draw and of the random-SAE baseline."""

    min_label_tokens: int = 20
    """A label is scored only with at least this many tokens with it, and without it, in each part."""

    coverage_f1: float = 0.5
    """Held-out F1 a label's best latent must reach to count towards coverage."""

    precise: float = 0.8
    """Held-out precision a live latent's label must reach to count as explained."""

    min_latent_fires: int = 5
    """Firings on training tokens that make a latent live (latent labels, absorption)."""

    specific_precision: float = 0.8
    """Training precision for a child label that makes a latent specific to it (absorption)."""

    baselines: tuple[str, ...] = ("random", "residual")
    """Baselines scored beside the SAEs: ``"random"`` (an untrained SAE of the same class and
    shape), ``"residual"`` (the hook's coordinates as latents); ``()`` for none."""

    residual_quantiles: tuple[float, ...] = (0.5, 0.8, 0.95, 0.99)
    """Residual baseline: coordinate j with sign s and quantile q is a detector that fires where
    s·x_j exceeds its q-quantile over the training tokens (2 · d_in · len(quantiles) detectors)."""

    chunk: int = 4096
    """Tokens encoded at a time (bounds memory: codes are never held for all tokens at once)."""

    max_iter: int = 1000
    """Iteration cap of each logistic-regression fit (lbfgs)."""

    def __post_init__(self) -> None:
        if not isinstance(self.ks, tuple) or not self.ks or any(
                isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in self.ks):
            raise ValueError(f"InterpConfig.ks={self.ks!r}; it must be a non-empty tuple of ints >= 1, e.g. (1, 5, 20).")
        if len(set(self.ks)) != len(self.ks):
            raise ValueError(f"InterpConfig.ks={self.ks!r} repeats a value; give each k once.")
        if not isinstance(self.test_fraction, (int, float)) or not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"InterpConfig.test_fraction={self.test_fraction!r}; it must lie in (0, 1), e.g. 0.3.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"InterpConfig.seed={self.seed!r}; it must be an int.")
        for name in ("min_label_tokens", "min_latent_fires", "chunk", "max_iter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"InterpConfig.{name}={value!r}; it must be an int >= 1.")
        for name in ("coverage_f1", "precise", "specific_precision"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
                raise ValueError(f"InterpConfig.{name}={value!r}; it must lie in (0, 1].")
        if not isinstance(self.baselines, tuple) or any(b not in ("random", "residual") for b in self.baselines):
            raise ValueError(f"InterpConfig.baselines={self.baselines!r}; valid: a tuple of 'random' and/or "
                             "'residual', or () for none.")
        if not isinstance(self.residual_quantiles, tuple) or not self.residual_quantiles or any(
                isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 < q < 1.0
                for q in self.residual_quantiles):
            raise ValueError(f"InterpConfig.residual_quantiles={self.residual_quantiles!r}; it must be a non-empty "
                             "tuple of numbers in (0, 1), e.g. (0.5, 0.8, 0.95, 0.99).")


# ---------------------------------------------------------------------------------------------
# What is scored


class Dictionary(abc.ABC):
    """Latents to score: activation values (for probes) and binary detectors (for firing scores)."""

    kind: str = "?"
    """``"sae"``, ``"random_sae"`` or ``"residual"``."""
    sparse: bool = True
    """Whether the values are mostly zero (then the probe columns are kept as a sparse matrix)."""
    fires_from_values: bool = False
    """True when a detector fires exactly where its value is > 0 (then sparse codes are cached)."""

    @property
    @abc.abstractmethod
    def n_values(self) -> int: ...

    @property
    @abc.abstractmethod
    def n_detectors(self) -> int: ...

    @abc.abstractmethod
    def values(self, x: Float[Tensor, "n d_in"]) -> Float[Tensor, "n n_values"]:
        """Activation values of a chunk of tokens, float32 on the CPU."""

    @abc.abstractmethod
    def fires(self, x: Float[Tensor, "n d_in"], values: Float[Tensor, "n n_values"]) -> Bool[Tensor, "n n_detectors"]:
        """Which detectors fire on each token of the chunk (``values`` = ``self.values(x)``)."""

    def detector_name(self, j: int) -> str:
        """A readable name of detector ``j`` (its latent id for an SAE)."""
        return str(j)


class SAEDictionary(Dictionary):
    """An SAE's latents: values = ``sae.encode(x)``; latent i fires where its code is > 0.

        >>> SAEDictionary(sae).n_detectors == sae.cfg.d_sae
    """

    fires_from_values = True

    def __init__(self, sae: Any, kind: str = "sae"):
        if not callable(getattr(sae, "encode", None)):
            raise TypeError(f"SAEDictionary needs an object with encode(x) -> codes; got {type(sae).__name__}.")
        self.sae = sae
        self.kind = kind
        self._width: int | None = None
        cfg = getattr(sae, "cfg", None)
        if cfg is not None:
            self._width = int(cfg.d_sae)

    @property
    def n_values(self) -> int:
        if self._width is None:
            raise ValueError("The width of this encoder is known after the first chunk; call values() first.")
        return self._width

    n_detectors = n_values

    @torch.no_grad()
    def values(self, x: Tensor) -> Tensor:
        device = getattr(self.sae, "W_dec", x).device
        z = self.sae.encode(x.to(device)).float().cpu()   # [n, d_sae]
        self._width = z.shape[-1]
        return z

    def fires(self, x: Tensor, values: Tensor) -> Tensor:
        return values > 0


# ---------------------------------------------------------------------------------------------
# Results


class LabelStats(NamedTuple):
    """How often a label occurs, and whether it is scored."""

    name: str
    parent: str | None
    train_tokens: int
    """Training-part tokens carrying the label."""
    test_tokens: int
    """Held-out tokens carrying the label."""
    base_rate: float
    """Held-out fraction of tokens carrying the label."""
    chance_f1: float
    """Held-out F1 of a detector that fires on every token: 2p / (1 + p) at base rate p. A score at or
    below it says nothing."""
    scored: bool
    skipped: str | None
    """Why the label is not scored (None when it is)."""


class BestLatent(NamedTuple):
    """The detector that best detects one label."""

    latent: int
    name: str
    f1: float
    """Held-out F1."""
    precision: float
    recall: float


class LatentLabel(NamedTuple):
    """The label that best explains one live detector's firing."""

    latent: int
    name: str
    label: str
    precision: float
    """Held-out fraction of the detector's firings that carry the label (0 when it never fires there)."""
    recall: float
    """Held-out fraction of the label's tokens on which the detector fires."""
    f1: float
    test_fires: int


class ChildAbsorption(NamedTuple):
    """Absorption of one child label by detectors specific to it."""

    label: str
    tokens: int
    """Held-out tokens carrying the child."""
    parent_silent: float
    """Fraction of them on which the parent's best latent is silent."""
    absorbed: float
    """Fraction on which it is silent while a detector specific to the child fires."""
    specific_latents: int
    """Detectors specific to the child (training precision >= specific_precision)."""


class Absorption(NamedTuple):
    """Absorption under one parent label."""

    parent: str
    latent: int
    """The parent's best latent."""
    name: str
    absorbed: float
    """Pooled over the (child, token) pairs of the scored children."""
    children: tuple[ChildAbsorption, ...]


@dataclass(frozen=True)
class DictionaryScores:
    """All scores of one dictionary on one labelled token set."""

    name: str
    kind: str
    detectors: int
    """Number of detectors (latents) scored."""
    live: int
    """Detectors with at least ``min_latent_fires`` training firings."""
    probe: dict[int, dict[str, float]]
    """k -> scored label -> held-out F1 of the k-sparse probe."""
    best: dict[str, BestLatent]
    """Scored label -> its best single latent."""
    latent_labels: tuple[LatentLabel, ...]
    """One row per live detector."""
    absorption: tuple[Absorption, ...]
    chance_f1: dict[str, float]
    """Scored label -> held-out F1 of a detector that fires on every token (``LabelStats.chance_f1``)."""
    config: InterpConfig = field(repr=False)

    def probe_mean(self, k: int) -> float:
        """Mean held-out F1 of the k-sparse probes over the scored labels."""
        return _mean(self.probe[k].values())

    @property
    def best_mean_f1(self) -> float:
        return _mean(b.f1 for b in self.best.values())

    @property
    def coverage(self) -> int:
        """Scored labels whose best latent reaches held-out F1 >= coverage_f1 and beats the label's
        chance F1: a label on more than a third of the tokens (in_function, in_class, ...) is
        "covered" at F1 >= 0.5 by a detector that fires everywhere, which detects nothing."""
        return sum(b.f1 >= self.config.coverage_f1 and b.f1 > self.chance_f1[label] for label, b in self.best.items())

    @property
    def precise_fraction(self) -> float:
        """Fraction of live detectors whose label has held-out precision >= precise."""
        if not self.latent_labels:
            return 0.0
        return sum(r.precision >= self.config.precise for r in self.latent_labels) / len(self.latent_labels)

    @property
    def absorption_mean(self) -> float | None:
        """Mean of the parents' absorption (None when no parent has a scored child)."""
        return _mean(a.absorbed for a in self.absorption) if self.absorption else None

    def summary(self) -> dict[str, Any]:
        """The headline numbers, JSON-ready."""
        return {
            "kind": self.kind, "detectors": self.detectors, "live": self.live,
            "probe_f1": {str(k): _round(self.probe_mean(k)) for k in self.probe},
            "best_latent_f1": _round(self.best_mean_f1),
            "coverage": self.coverage, "labels_scored": len(self.best),
            "coverage_fraction": _round(self.coverage / len(self.best)) if self.best else 0.0,
            "precise_fraction": _round(self.precise_fraction),
            "absorption": None if self.absorption_mean is None else _round(self.absorption_mean),
        }

    def per_label(self) -> dict[str, dict[str, Any]]:
        """Scored label -> probe F1 per k and the best latent (id, name, F1, precision, recall)."""
        return {label: {"probe_f1": {str(k): _round(self.probe[k][label]) for k in self.probe},
                        "best_latent": b.latent, "best_name": b.name, "f1": _round(b.f1),
                        "precision": _round(b.precision), "recall": _round(b.recall)}
                for label, b in self.best.items()}

    def to_dict(self, latents: bool = False) -> dict[str, Any]:
        """Summary, per-label table and absorption; with ``latents`` the per-latent table too."""
        out = {"name": self.name, **self.summary(), "labels": self.per_label(),
               "absorption_by_parent": {a.parent: {
                   "latent": a.latent, "name": a.name, "absorbed": _round(a.absorbed),
                   "children": {c.label: {"tokens": c.tokens, "parent_silent": _round(c.parent_silent),
                                          "absorbed": _round(c.absorbed), "specific_latents": c.specific_latents}
                                for c in a.children}} for a in self.absorption}}
        if latents:
            out["latent_labels"] = [r._asdict() for r in self.latent_labels]
        return out


def _mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else 0.0


def _round(x: float) -> float:
    return round(float(x), 4)


# ---------------------------------------------------------------------------------------------
# Scoring


def label_stats(y_train: Bool[Tensor, "n_train n_labels"], y_test: Bool[Tensor, "n_test n_labels"],
                config: InterpConfig) -> tuple[LabelStats, ...]:
    """Counts of every label in both parts and whether it is scored (see ``InterpConfig.min_label_tokens``).

        >>> [s.name for s in label_stats(y_train, y_test, InterpConfig()) if not s.scored]
    """
    if y_train.shape[1] != len(LABELS) or y_test.shape[1] != len(LABELS):
        raise ValueError(f"Label matrices need {len(LABELS)} columns (one per label); got "
                         f"{y_train.shape[1]} and {y_test.shape[1]}.")
    n_tr, n_te = y_train.shape[0], y_test.shape[0]
    pos_tr = y_train.sum(0).tolist()
    pos_te = y_test.sum(0).tolist()
    need = config.min_label_tokens
    out = []
    for label, a, b in zip(LABELS, pos_tr, pos_te):
        rate = b / n_te if n_te else 0.0
        low = min(a, b, n_tr - a, n_te - b)
        reason = None
        if low < need:
            reason = (f"{a} training / {b} held-out tokens carry it ({n_tr - a} / {n_te - b} do not); "
                      f"scoring needs >= {need} of each in both parts")
        out.append(LabelStats(label.name, label.parent, int(a), int(b), rate, 2 * rate / (1 + rate),
                              reason is None, reason))
    return tuple(out)


def score_dictionary(
    dictionary: Dictionary,
    x_train: Float[Tensor, "n_train d_in"],
    y_train: Bool[Tensor, "n_train n_labels"],
    x_test: Float[Tensor, "n_test d_in"],
    y_test: Bool[Tensor, "n_test n_labels"],
    config: InterpConfig,
    name: str = "sae",
) -> DictionaryScores:
    """Every score of ``dictionary`` (see the module docstring) on activations ``x_*`` whose tokens
    carry labels ``y_*`` (columns in ``LABELS`` order).

        >>> s = score_dictionary(SAEDictionary(sae), x_tr, y_tr, x_te, y_te, InterpConfig())
        >>> s.summary()["coverage"]

    Two chunked passes over the activations: the first accumulates counts and sums, the second
    keeps only the columns the probes and the absorption score read (from the first pass's cache
    when the codes are sparse).
    """
    for part, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise ValueError(f"score_dictionary: x_{part} {tuple(x.shape)} and y_{part} {tuple(y.shape)} must be "
                             "[n, d_in] and [n, n_labels] with the same n >= 1.")
    stats = label_stats(y_train, y_test, config)
    scored = [i for i, s in enumerate(stats) if s.scored]
    n_tr = y_train.shape[0]
    pos_tr = y_train.sum(0).double()
    pos_te = y_test.sum(0).double()

    # Pass 1: firing counts per (detector, label) on both parts; value sums on the training part.
    # Sparse codes (a TopK SAE's: k of d_sae per token) are kept as CSR so that pass 2 need not
    # encode again; codes denser than SPARSE_CACHE_DENSITY are encoded again instead.
    first = _Totals()
    cache: dict[str, list[sp.csr_matrix]] | None = {"train": [], "test": []} if dictionary.fires_from_values else None
    for part, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        for i in range(0, x.shape[0], config.chunk):
            yc = y[i:i + config.chunk].float()                        # [n, L]
            v = dictionary.values(x[i:i + config.chunk])              # [n, n_values]
            f = dictionary.fires(x[i:i + config.chunk], v).float()    # [n, n_detectors]
            first.add(part, f, yc, v)
            if cache is not None:
                block = _csr(v)
                cache = None if block.nnz > SPARSE_CACHE_DENSITY * v.numel() else cache
                if cache is not None:
                    cache[part].append(block)
    tp_tr, fired_tr = first.tp["train"], first.fired["train"]         # [D, L], [D]
    tp_te, fired_te = first.tp["test"], first.fired["test"]

    # Probe selection: the values whose mean differs most between labelled and unlabelled tokens.
    kmax = min(max(config.ks), dictionary.n_values)
    mean_pos = first.vsum_pos / pos_tr.clamp(min=1)
    mean_neg = (first.vsum[:, None] - first.vsum_pos) / (n_tr - pos_tr).clamp(min=1)
    diff = (mean_pos - mean_neg).abs()                                # [n_values, L]
    chosen = {l: torch.argsort(diff[:, l], descending=True, stable=True)[:kmax].tolist() for l in scored}

    # Best single latent: the highest training F1 per label.
    f1_tr = 2 * tp_tr / (fired_tr[:, None] + pos_tr[None, :]).clamp(min=1)   # [D, L]
    best: dict[str, BestLatent] = {}
    best_idx: dict[int, int] = {}
    for l in scored:
        j = int(torch.argmax(f1_tr[:, l]))
        best_idx[l] = j
        best[LABELS[l].name] = BestLatent(j, dictionary.detector_name(j), *_prf(tp_te[j, l], fired_te[j], pos_te[l]))

    # Latent labels: each live detector's label of highest training F1, scored on held-out tokens.
    live = torch.nonzero(fired_tr >= config.min_latent_fires).flatten()
    rows = []
    if scored and live.numel():
        cols = torch.tensor(scored)
        pick = cols[torch.argmax(f1_tr[live][:, cols], dim=1)]
        for j, l in zip(live.tolist(), pick.tolist()):
            f1, p, r = _prf(tp_te[j, l], fired_te[j], pos_te[l])
            rows.append(LatentLabel(j, dictionary.detector_name(j), LABELS[l].name, p, r, f1, int(fired_te[j])))

    # Absorption: detectors specific to each scored child of a scored parent.
    precision_tr = tp_tr / fired_tr[:, None].clamp(min=1)
    is_live = fired_tr >= config.min_latent_fires
    plan: list[tuple[int, int, list[tuple[int, list[int]]]]] = []    # (parent, its best latent, [(child, specific)])
    for l in scored:
        kids = [LABEL_INDEX[c] for c in children(LABELS[l].name) if stats[LABEL_INDEX[c]].scored]
        if not kids:
            continue
        p = best_idx[l]
        spec = []
        for c in kids:
            ok = is_live & (precision_tr[:, c] >= config.specific_precision)
            ok[p] = False
            spec.append((c, torch.nonzero(ok).flatten().tolist()))
        plan.append((l, p, spec))

    # Pass 2: only the columns the probes (both parts) and absorption (held-out part) read.
    value_cols = sorted({j for js in chosen.values() for j in js})
    fire_cols = sorted({p for _, p, _ in plan} | {j for _, _, spec in plan for _, js in spec for j in js})
    if cache is not None:
        codes = {part: sp.vstack(blocks, format="csc") for part, blocks in cache.items()}   # [n, n_values]
        v_tr, v_te = codes["train"][:, value_cols], codes["test"][:, value_cols]
        test_fires = [torch.from_numpy(codes["test"][:, fire_cols].toarray() > 0)] if fire_cols else []
    else:
        kept = {"train": [], "test": []}
        test_fires = []
        for part, x in (("train", x_train), ("test", x_test)):
            for i in range(0, x.shape[0], config.chunk):
                v = dictionary.values(x[i:i + config.chunk])
                kept[part].append(_keep(v[:, value_cols], dictionary.sparse))
                if part == "test" and fire_cols:
                    test_fires.append(dictionary.fires(x[i:i + config.chunk], v)[:, fire_cols])
        v_tr, v_te = _stack(kept["train"]), _stack(kept["test"])
    where = {j: i for i, j in enumerate(value_cols)}

    probe: dict[int, dict[str, float]] = {k: {} for k in config.ks}
    # One BLAS thread: these products are [n, <= 20] and threads only add overhead (a fit took 0.24 s
    # on one thread and 1.8 s on a busy 2-core machine's default pool, measured here).
    with threadpool_limits(1):
        for l in scored:
            for k in config.ks:
                idx = [where[j] for j in chosen[l][:k]]
                probe[k][LABELS[l].name] = _probe_f1(_columns(v_tr, idx), y_train[:, l].numpy(),
                                                     _columns(v_te, idx), y_test[:, l].numpy(), config.max_iter)

    absorption = []
    if plan:
        fired_cols = torch.cat(test_fires) if test_fires else torch.zeros(0, 0, dtype=torch.bool)
        at = {j: i for i, j in enumerate(fire_cols)}
        for l, p, spec in plan:
            silent = ~fired_cols[:, at[p]]
            kids, pooled, total = [], 0, 0
            for c, js in spec:
                on = y_test[:, c]
                n = int(on.sum())
                other = fired_cols[:, [at[j] for j in js]].any(1) if js else torch.zeros_like(on)
                absorbed = int((on & silent & other).sum())
                kids.append(ChildAbsorption(LABELS[c].name, n, int((on & silent).sum()) / n, absorbed / n, len(js)))
                pooled, total = pooled + absorbed, total + n
            absorption.append(Absorption(LABELS[l].name, p, dictionary.detector_name(p), pooled / total, tuple(kids)))

    return DictionaryScores(name, dictionary.kind, dictionary.n_detectors, int(live.numel()), probe, best,
                            tuple(rows), tuple(absorption), {stats[l].name: stats[l].chance_f1 for l in scored}, config)


class _Totals:
    """Pass-1 accumulators, float64 (counts stay exact far beyond any token budget)."""

    def __init__(self) -> None:
        self.tp: dict[str, Tensor] = {}
        self.fired: dict[str, Tensor] = {}
        self.vsum_pos: Tensor | None = None
        self.vsum: Tensor | None = None

    def add(self, part: str, f: Tensor, y: Tensor, v: Tensor) -> None:
        # float32 products count exactly up to 2^24 tokens per chunk; the running sums are float64.
        tp, fired = (f.T @ y).double(), f.sum(0).double()
        self.tp[part] = tp if part not in self.tp else self.tp[part] + tp
        self.fired[part] = fired if part not in self.fired else self.fired[part] + fired
        if part == "train":
            vs_pos, vs = (v.T @ y).double(), v.sum(0).double()
            self.vsum_pos = vs_pos if self.vsum_pos is None else self.vsum_pos + vs_pos
            self.vsum = vs if self.vsum is None else self.vsum + vs


def _prf(tp: Tensor, fired: Tensor, pos: Tensor) -> tuple[float, float, float]:
    """(F1, precision, recall) from counts; precision is 0 for a detector that never fires."""
    tp, fired, pos = float(tp), float(fired), float(pos)
    precision = tp / fired if fired else 0.0
    recall = tp / pos if pos else 0.0
    f1 = 2 * tp / (fired + pos) if fired + pos else 0.0
    return f1, precision, recall


def _csr(v: Tensor) -> sp.csr_matrix:
    """A dense [n, m] chunk as a scipy CSR matrix."""
    return sp.csr_matrix(v.numpy())


def _keep(v: Tensor, sparse: bool):
    """A chunk of kept columns: CSR when the dictionary's values are sparse (SAE codes), else dense."""
    return _csr(v) if sparse else v.numpy()


def _stack(blocks: list):
    if blocks and sp.issparse(blocks[0]):
        return sp.vstack(blocks, format="csc")
    return np.concatenate(blocks) if blocks else np.zeros((0, 0), dtype=np.float32)


def _columns(m, idx: Sequence[int]) -> np.ndarray:
    cols = m[:, idx]
    return cols.toarray() if sp.issparse(cols) else np.asarray(cols)


def _probe_f1(a_tr: np.ndarray, y_tr: np.ndarray, a_te: np.ndarray, y_te: np.ndarray, max_iter: int) -> float:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    # Standardised on the training part: codes of very different scales meet one L2 penalty.
    mu = a_tr.mean(0)
    sd = a_tr.std(0)
    sd[sd == 0] = 1.0
    with warnings.catch_warnings():
        # A fit that stops at max_iter is still a valid (slightly under-fitted) probe.
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = LogisticRegression(max_iter=max_iter).fit((a_tr - mu) / sd, y_tr)
    return float(f1_score(y_te, clf.predict((a_te - mu) / sd), zero_division=0.0))
