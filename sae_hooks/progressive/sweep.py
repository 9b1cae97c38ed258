"""The progressive-coding sweep: vanilla SAEs pruned to G latents against Matryoshka prefixes.

For SAEs at one hook point of one model (Peter & Søgaard 2025, arXiv 2505.00190):

1. every vanilla SAE's latent importance E[(a_i·‖d_i‖)²] and firing frequency on a block of
   held-out tokens of its own (``importance_tokens``), with power-law and exponential fits;
2. each vanilla SAE reduced to its G most important latents, for every G in ``sizes`` and every
   prune mode (``mask``, ``reselect``: see ``views``); each Matryoshka SAE at each of its nested
   widths, as trained;
3. every one of these evaluated on the same evaluated tokens, all sharing one clean forward per
   batch (``evaluate_many``): FVU, L0, recaptured LM loss (zero and mean ablation), ΔCE, KL;
4. RSA of each reduced reconstruction with its own SAE's full reconstruction and with the original
   activations, on the first ``rsa_tokens`` evaluated positions.

The ranking is computed on tokens that are not evaluated, so that the pruned SAEs are not chosen on
the data that scores them.

    >>> report = sweep(adapter, {"topk": topk, "standard": relu}, {"matryoshka": mat}, held, imp_tokens)
    >>> print(report.markdown())
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..data import TokenBatch
from ..evaluate import EvalReport, evaluate_many
from ..splice import resolve_hook, token_batch
from .importance import Exponential, Importance, PowerLaw, fit_exponential, fit_power_law, latent_importance
from .rsa import rsa
from .views import PRUNE_MODES, check_size, reduce_sae

RANKINGS = ("importance", "frequency")
"""What orders the latents for pruning."""

METRICS = ("fvu", "l0", "recaptured_zero", "recaptured_mean", "delta_ce", "kl", "rsa_full", "rsa_input")
"""The per-row metrics that are averaged over seeds."""

DEFINITIONS = (
    "importance_i = E[(a_i * ||d_i||)^2] over the importance tokens; fits: least squares of log importance on "
    "log rank (power law, exponent alpha) and on rank (exponential, rate lambda), same ranks, R^2 of log importance; "
    "mask = the full SAE's codes of the top-G latents; reselect = the SAE rebuilt from the top-G latents, its "
    "encoder choosing among them (TopK: k of G); a reselect row with same_codes_as=mask has the mask row's active "
    "latents at every evaluated position and its codes to float rounding, and shares its evaluation; "
    "prefix = a Matryoshka SAE's first G latents as trained; "
    "FVU, L0, recaptured (zero/mean ablation), delta CE, KL as in sae-hooks eval; rsa_full / rsa_input = Pearson "
    "correlation of the pairwise Euclidean token distances of the reduced reconstruction with those of the SAE's "
    "full reconstruction / of the original activations, on the first rsa_tokens evaluated positions."
)


@dataclass(frozen=True)
class SweepConfig:
    """What the sweep evaluates and on how much data.

        >>> SweepConfig(sizes=(256, 576, 1152, 2304), modes=("mask",), rsa_tokens=512)
    """

    sizes: tuple[int, ...] = ()
    """Sizes G of the pruned vanilla SAEs; empty = the Matryoshka widths plus ``grid`` log-spaced sizes."""
    grid: int = 6
    """Log-spaced sizes in the default grid: d_sae/2^(grid−1) ... d_sae (used when ``sizes`` is empty)."""
    modes: tuple[str, ...] = PRUNE_MODES
    """Prune modes of the vanilla SAEs: mask and/or reselect."""
    rank_by: str = "importance"
    """Order of pruning: importance (E[(a·‖d‖)²]) or frequency (firing rate)."""
    fit_ranks: tuple[int, int] | None = None
    """Ranks (1-based, inclusive) the power-law and exponential fits use; None = every latent with importance > 0."""
    rsa_tokens: int = 1024
    """Evaluated positions in the RSA sample (the distance matrices are N × N over them, built in blocks)."""
    batch_size: int = 8
    """Sequences per forward."""
    ablation_scope: str = "evaluated"
    """Zero/mean ablation at the evaluated positions only, or at every position (as in sae-hooks eval)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes", tuple(self.sizes))
        object.__setattr__(self, "modes", tuple(self.modes))
        for g in self.sizes:
            if isinstance(g, bool) or not isinstance(g, int) or g < 1:
                raise ValueError(f"SweepConfig.sizes: G={g!r}; every size must be an int >= 1 (a number of latents).")
        if len(set(self.sizes)) != len(self.sizes):
            raise ValueError(f"SweepConfig.sizes {list(self.sizes)} repeats a size; give each G once.")
        if not self.modes or any(m not in PRUNE_MODES for m in self.modes) or len(set(self.modes)) != len(self.modes):
            raise ValueError(f"SweepConfig.modes={list(self.modes)!r}; give one or both of {', '.join(PRUNE_MODES)}, "
                             "once each.")
        if self.rank_by not in RANKINGS:
            raise ValueError(f"SweepConfig.rank_by={self.rank_by!r}; valid: {', '.join(RANKINGS)}.")
        for name, lo in (("grid", 1), ("rsa_tokens", 3), ("batch_size", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"SweepConfig.{name}={v!r}; it must be an int >= {lo}.")
        if self.fit_ranks is not None:
            r = tuple(self.fit_ranks)
            if len(r) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in r) or not 1 <= r[0] < r[1]:
                raise ValueError(f"SweepConfig.fit_ranks={self.fit_ranks!r}; give two ints 1 <= lo < hi, or None.")
            object.__setattr__(self, "fit_ranks", r)
        if self.ablation_scope not in ("evaluated", "all"):
            raise ValueError(f"SweepConfig.ablation_scope={self.ablation_scope!r}; valid: evaluated, all.")


class FitSummary(NamedTuple):
    """The ranking of one vanilla SAE's latents and the fits to it."""

    sae: str
    """The SAE's name."""
    arch: str
    """Its architecture."""
    power_law: PowerLaw
    """Power-law fit of the sorted importances."""
    exponential: Exponential
    """Exponential fit of the sorted importances, same ranks."""
    frequency_power_law: PowerLaw | None
    """Power-law fit of the sorted firing frequencies (None when fewer than 3 latents fire)."""
    dead: int
    """Latents that never fired on the importance tokens (importance 0; left out of the fits)."""


@dataclass(frozen=True)
class SweepRow:
    """One reduced SAE evaluated: a pruned vanilla SAE at (mode, G) or a Matryoshka prefix at G."""

    sae: str
    """Name of the SAE it comes from."""
    arch: str
    """That SAE's architecture."""
    mode: str
    """mask, reselect (pruned vanilla) or prefix (Matryoshka)."""
    size: int
    """Latents kept (G)."""
    fvu: float
    """Fraction of variance unexplained."""
    l0: float
    """Mean active latents per evaluated token."""
    recaptured_zero: float
    """Recaptured LM loss against zero-ablation."""
    recaptured_mean: float
    """Recaptured LM loss against mean-ablation."""
    delta_ce: float
    """CE_spliced − CE_clean, nats."""
    kl: float
    """Mean KL(p_clean ‖ p_spliced), nats."""
    ce_spliced: float
    """CE with this reconstruction spliced in, nats."""
    dead_frac: float
    """Fraction of the kept latents that never fired on the evaluated tokens."""
    rsa_full: float
    """RSA of this reconstruction with the full SAE's reconstruction."""
    rsa_input: float
    """RSA of this reconstruction with the original activations."""
    interp: Mapping[str, float] = field(default_factory=dict)
    """Offline interpretability scores of the reduced dictionary (empty when not computed)."""
    same_codes_as: str = ""
    """"mask" when this reselect row has the mask row's active latents at every evaluated position and
    its codes equal to float rounding (rtol 1e-5): its numbers are then that row's, evaluated once."""


class Aggregate(NamedTuple):
    """Mean and sample standard deviation of one metric over the SAEs (seeds) of one group."""

    mean: float
    sd: float
    """Sample standard deviation (n − 1); NaN for a single SAE."""
    n: int


@dataclass(frozen=True)
class ProgressiveReport:
    """Everything one sweep measured (see the module docstring and ``DEFINITIONS``).

        >>> report.to_dict()["summary"][0]      # {'arch': 'topk', 'mode': 'mask', 'size': 256, 'fvu': {...}, ...}
    """

    model: str
    """Model the SAEs were spliced into."""
    hook: str
    """Canonical hook point."""
    d_sae: int
    """Width of every SAE."""
    sizes: tuple[int, ...]
    """Sizes G of the pruned vanilla SAEs."""
    config: SweepConfig
    """The sweep's settings."""
    tokens: int
    """Evaluated next-token predictions (CE / KL denominator)."""
    act_tokens: int
    """Evaluated activations (FVU / L0 denominator)."""
    importance_tokens: int
    """Activations the importances were measured on (disjoint from the evaluated ones)."""
    rsa_tokens: int
    """Positions in the RSA sample."""
    ce_clean: float
    """Clean CE on the evaluated tokens, nats."""
    ce_zero_ablated: float
    """CE with the hook's activation zeroed, nats."""
    ce_mean_ablated: float
    """CE with the hook's activation replaced by its mean, nats."""
    fits: tuple[FitSummary, ...]
    """One per vanilla SAE."""
    rows: tuple[SweepRow, ...]
    """One per (SAE, mode, G)."""
    seconds: Mapping[str, float]
    """Wall time of each phase."""
    importances: Mapping[str, Importance] = field(default_factory=dict, repr=False)
    """Per vanilla SAE: the per-latent importance and frequency (for plots; not in ``to_dict``)."""

    def groups(self) -> dict[tuple[str, str, int], list[SweepRow]]:
        """Rows by (arch, mode, size), SAEs of one architecture (the seeds) together, in row order."""
        out: dict[tuple[str, str, int], list[SweepRow]] = {}
        for r in self.rows:
            out.setdefault((r.arch, r.mode, r.size), []).append(r)
        return out

    def summary(self) -> list[dict[str, Any]]:
        """Per (arch, mode, size): every metric's mean, sd and n over the SAEs of that architecture."""
        out = []
        for (arch, mode, size), rows in self.groups().items():
            entry: dict[str, Any] = {"arch": arch, "mode": mode, "size": size, "n": len(rows)}
            for m in METRICS:
                entry[m] = aggregate([getattr(r, m) for r in rows])._asdict()
            for key in sorted({k for r in rows for k in r.interp}):
                entry[f"interp_{key}"] = aggregate([r.interp.get(key, math.nan) for r in rows])._asdict()
            out.append(entry)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: settings, counts, fits, rows, the per-group summary and the definitions."""
        return _finite({
            "model": self.model, "hook": self.hook, "d_sae": self.d_sae, "sizes": list(self.sizes),
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self.config).items()},
            "tokens": self.tokens, "act_tokens": self.act_tokens, "importance_tokens": self.importance_tokens,
            "rsa_tokens": self.rsa_tokens, "ce_clean": self.ce_clean, "ce_zero_ablated": self.ce_zero_ablated,
            "ce_mean_ablated": self.ce_mean_ablated,
            "fits": [{"sae": f.sae, "arch": f.arch, "dead": f.dead, "power_law": f.power_law._asdict(),
                      "exponential": f.exponential._asdict(),
                      "frequency_power_law": None if f.frequency_power_law is None else f.frequency_power_law._asdict()}
                     for f in self.fits],
            "rows": [{k: (dict(v) if isinstance(v, Mapping) else v) for k, v in vars(r).items()} for r in self.rows],
            "summary": self.summary(),
            "seconds": dict(self.seconds),
            "definitions": DEFINITIONS,
        })

    def markdown(self) -> str:
        """Markdown: the setting, the fits, and one table row per (arch, mode, G) with mean ± sd over seeds."""
        lines = [f"Progressive coding on {self.model} at {self.hook}: d_sae {self.d_sae}; {self.act_tokens} evaluated "
                 f"activations ({self.tokens} next-token predictions), importances on {self.importance_tokens} other "
                 f"activations, RSA on {self.rsa_tokens} positions. CE clean {self.ce_clean:.4f}, zero-ablated "
                 f"{self.ce_zero_ablated:.4f}, mean-ablated {self.ce_mean_ablated:.4f} nats.", ""]
        if self.fits:
            lines += ["| SAE | power law α | R² | exponential λ | R² | ranks | dead |",
                      "|---|---|---|---|---|---|---|"]
            for f in self.fits:
                p, e = f.power_law, f.exponential
                lines.append(f"| {f.sae} ({f.arch}) | {p.exponent:.3f} | {p.r2:.4f} | {e.rate:.3g} | {e.r2:.4f} | "
                             f"{p.rank_lo}–{p.rank_hi} | {f.dead} |")
            lines.append("")
        summary = self.summary()
        extra = sorted({k for s in summary for k in s if k.startswith("interp_")})
        cols = list(METRICS) + extra
        lines += ["| arch | mode | G | n | " + " | ".join(cols) + " |", "|---|---|---|---|" + "---|" * len(cols)]
        for s in summary:
            cells = [_pm(s[c]) for c in cols]
            lines.append(f"| {s['arch']} | {s['mode']} | {s['size']} | {s['n']} | " + " | ".join(cells) + " |")
        lines += ["", DEFINITIONS]
        return "\n".join(lines)


def aggregate(values: Sequence[float]) -> Aggregate:
    """Mean and sample sd of the finite values (NaN when there are none).

        >>> aggregate([0.1, 0.2, 0.3])   # Aggregate(mean=0.2, sd=0.1, n=3)
    """
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return Aggregate(math.nan, math.nan, 0)
    mean = sum(v) / len(v)
    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else math.nan
    return Aggregate(mean, sd, len(v))


def _pm(a: Mapping[str, Any]) -> str:
    mean, sd = a["mean"], a["sd"]
    if mean is None or not math.isfinite(mean):
        return "–"
    return f"{mean:.4g}" if sd is None or not math.isfinite(sd) else f"{mean:.4g} ± {sd:.2g}"


def _finite(obj: Any) -> Any:
    """NaN / inf → None, recursively (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------
# Checks


def default_sizes(d_sae: int, matryoshka_widths: Sequence[int], grid: int) -> tuple[int, ...]:
    """The Matryoshka widths plus ``grid`` log-spaced sizes d_sae/2^(grid−1) ... d_sae, ascending.

        >>> default_sizes(2304, (256, 576, 1152, 2304), 6)    # (72, 144, 256, 288, 576, 1152, 2304)
    """
    log_grid = {max(1, round(d_sae / 2 ** i)) for i in range(grid)}
    return tuple(sorted(log_grid | {w for w in matryoshka_widths if 1 <= w <= d_sae}))


def check_kinds(vanilla: Mapping[str, Any], matryoshka: Mapping[str, Any]) -> int:
    """The d_sae every SAE shares, after checking that the Matryoshka SAEs are Matryoshka SAEs: the
    checks that need no model (a command line runs them before loading one).

        >>> check_kinds({"topk": sae}, {"matryoshka": mat})    # 2304
    """
    if not vanilla and not matryoshka:
        raise ValueError("The progressive sweep needs at least one SAE (vanilla or Matryoshka); got none.")
    clash = sorted(set(vanilla) & set(matryoshka))
    if clash:
        raise ValueError(f"SAE name(s) {clash} are given both as vanilla and as Matryoshka; give each SAE once.")
    for name, sae in matryoshka.items():
        if not callable(getattr(sae, "prefix", None)) or not getattr(getattr(sae, "cfg", None), "widths", None):
            arch = getattr(sae, "architecture", type(sae).__name__)
            raise ValueError(f"{name!r} is given as the Matryoshka SAE but it is a {arch!r} SAE, which has no nested "
                             "prefixes. Pass it as a vanilla SAE (it is then pruned), or give a "
                             "Matryoshka SAE (trained with --arch matryoshka).")
    saes = {**vanilla, **matryoshka}
    widths = {name: (int(sae.cfg.d_in), int(sae.cfg.d_sae)) for name, sae in saes.items()}
    if len(set(widths.values())) > 1:
        listing = ", ".join(f"{n}: d_in {w[0]}, d_sae {w[1]}" for n, w in widths.items())
        raise ValueError(f"The SAEs have different widths ({listing}); pruned sizes G compare only between "
                         "dictionaries of one size. Give SAEs of one d_sae.")
    return next(iter(widths.values()))[1]


def check_saes(adapter: Any, vanilla: Mapping[str, Any], matryoshka: Mapping[str, Any], hook: str | None,
               *, allow_hook_mismatch: bool = False) -> tuple[str, int]:
    """(canonical hook, d_sae) shared by every SAE, or one ValueError naming what differs (``check_kinds``,
    then the hook points on ``adapter``).

        >>> check_saes(adapter, {"topk": sae}, {"matryoshka": mat}, "resid_post.6")   # ('resid_post.6', 2304)
    """
    d_sae = check_kinds(vanilla, matryoshka)
    saes = {**vanilla, **matryoshka}
    hooks = {name: resolve_hook(adapter, sae, hook, allow_hook_mismatch=allow_hook_mismatch)
             for name, sae in saes.items()}
    if len(set(hooks.values())) > 1:
        listing = ", ".join(f"{n} at {h}" for n, h in hooks.items())
        raise ValueError(f"The SAEs belong to different hook points ({listing}); the sweep compares SAEs of one hook "
                         "point. Give SAEs of one hook (with a run folder: --hook chooses its SAEs of that hook).")
    return next(iter(hooks.values())), d_sae


# ---------------------------------------------------------------------------------------------
# The sweep


def _same_codes(za: Tensor, zb: Tensor) -> bool:
    """The same latents active on every row and their values equal up to float rounding. A pruned
    encoder's product has another shape than the full one's, so its codes may differ in the last bits
    (~1e-7 relative) even where the architecture makes them equal (ReLU: no competition between latents)."""
    if za.shape != zb.shape or not torch.equal(za != 0, zb != 0):
        return False
    scale = float(za.abs().max()) if za.numel() else 0.0
    return bool(torch.allclose(za.float(), zb.float(), rtol=1e-5, atol=1e-6 * scale))


@torch.no_grad()
def _scan(adapter: Any, tokens: TokenBatch, hook: str, batch_size: int, sample: int,
          pairs: Sequence[tuple[Any, Any]]) -> tuple[Tensor, list[bool]]:
    """(the first ``sample`` evaluated activation rows [n, d] (float32, CPU), for each (a, b) of ``pairs``
    whether a and b encode every evaluated position to the same codes (``_same_codes``)), from forwards
    that stop at the hook, batch by batch as the evaluation runs them. Without pairs it stops once the
    sample is full."""
    got, n = [], 0
    same = [True] * len(pairs)
    for lo in range(0, tokens.input_ids.shape[0], batch_size):
        if n >= sample and not any(same):
            break
        ids, m = tokens.input_ids[lo: lo + batch_size], tokens.mask[lo: lo + batch_size]
        x = adapter.capture(ids.to(adapter.device), [hook])[hook]
        rows = x[m.to(x.device)]  # [n_b, d]
        if n < sample:
            got.append(rows[: sample - n].float().cpu())
            n += got[-1].shape[0]
        for k, (a, b) in enumerate(pairs):
            if same[k]:
                same[k] = _same_codes(a.encode(rows.to(a.device, a.dtype)), b.encode(rows.to(b.device, b.dtype)))
    out = torch.cat(got) if got else torch.zeros(0, adapter.width(hook))
    return out, same


def _importance(saes: Mapping[str, Any], adapter: Any, tokens: TokenBatch, hook: str, batch_size: int
                ) -> tuple[dict[str, Importance], int]:
    """Importance and frequency of every vanilla SAE over the evaluated positions of ``tokens``, streamed:
    one capture per batch, weighted means of the per-batch statistics."""
    sums = {n: [torch.zeros(int(s.cfg.d_sae), dtype=torch.float64), torch.zeros(int(s.cfg.d_sae), dtype=torch.float64)]
            for n, s in saes.items()}
    total = 0
    for lo in range(0, tokens.input_ids.shape[0], batch_size):
        ids, m = tokens.input_ids[lo: lo + batch_size], tokens.mask[lo: lo + batch_size]
        x = adapter.capture(ids.to(adapter.device), [hook])[hook]
        rows = x[m.to(x.device)]
        if rows.shape[0] == 0:
            continue
        for name, sae in saes.items():
            imp = latent_importance(sae, rows)
            sums[name][0] += imp.importance.double() * rows.shape[0]
            sums[name][1] += imp.frequency.double() * rows.shape[0]
        total += rows.shape[0]
    if total == 0:
        raise ValueError("The importance tokens hold no evaluated position (all masked out); give more tokens.")
    return {n: Importance((s[0] / total).float(), (s[1] / total).float()) for n, s in sums.items()}, total


def _fits(name: str, sae: Any, imp: Importance, ranks: tuple[int, int] | None) -> FitSummary:
    try:
        freq = fit_power_law(imp.frequency, ranks)
    except ValueError:
        freq = None  # fewer than 3 latents fire in that range: there is no frequency curve to fit
    return FitSummary(name, str(sae.architecture), fit_power_law(imp.importance, ranks),
                      fit_exponential(imp.importance, ranks), freq, int((imp.importance == 0).sum()))


class _Condition(NamedTuple):
    sae: str
    arch: str
    mode: str
    size: int
    view: Any
    full: Any
    """The SAE the view comes from (its full reconstruction is the RSA reference)."""


def _reconstruct(sae: Any, x: Tensor) -> Tensor:
    return sae.decode(sae.encode(x.to(sae.device, sae.dtype))).float().cpu()


def sweep(
    adapter: Any,
    vanilla: Mapping[str, Any],
    matryoshka: Mapping[str, Any],
    tokens: TokenBatch,
    importance_tokens: TokenBatch,
    *,
    hook: str | None = None,
    config: SweepConfig = SweepConfig(),
    allow_hook_mismatch: bool = False,
    interp_scores: Any = None,
) -> ProgressiveReport:
    """Run the sweep (module docstring) for ``vanilla`` and ``matryoshka`` SAEs (``{name: SAE}``) of one hook.

    ``tokens`` are evaluated; ``importance_tokens`` (other held-out tokens) rank the vanilla SAEs'
    latents. ``interp_scores``, if given, is called as ``interp_scores({name: reduced SAE}, hook)`` and
    returns ``{name: {score: value}}`` for the rows' ``interp`` field. Every check runs before the
    model does: a size outside [1, d_sae], a non-Matryoshka SAE given as the Matryoshka one, SAEs of
    different hook points or widths, no evaluated token.

        >>> report = sweep(adapter, {"topk": topk}, {"matryoshka": mat}, held, imp_held, hook="resid_post.6")
    """
    if not isinstance(config, SweepConfig):
        raise TypeError(f"config must be a SweepConfig; got {type(config).__name__}.")
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    hook, d_sae = check_saes(adapter, vanilla, matryoshka, hook, allow_hook_mismatch=allow_hook_mismatch)
    widths = sorted({int(w) for s in matryoshka.values() for w in s.cfg.widths})
    sizes = config.sizes or default_sizes(d_sae, widths, config.grid)
    for g in sizes:
        check_size(g, d_sae, "sweep size")
    sizes = tuple(sorted(sizes))
    tokens = token_batch(adapter, tokens)
    importance_tokens = token_batch(adapter, importance_tokens)
    for what, tb in (("evaluated tokens", tokens), ("importance tokens", importance_tokens)):
        if not bool(tb.mask.any()):
            raise ValueError(f"The {what} hold no evaluated position (every position masked out); give more tokens.")

    # 1. Importances and fits (their own tokens).
    importances, n_imp = _importance(vanilla, adapter, importance_tokens, hook, config.batch_size)
    fits = tuple(_fits(n, vanilla[n], importances[n], config.fit_ranks) for n in vanilla)
    times["importance"] = time.perf_counter() - t0

    # 2. What is evaluated. At G = d_sae both prune modes are the SAE itself (all latents kept, in order).
    conditions: list[_Condition] = []
    for name, sae in vanilla.items():
        ranking = importances[name].importance if config.rank_by == "importance" else importances[name].frequency
        # Ties (dead latents) keep index order, so that the order is a function of the ranking alone.
        order = ranking.sort(descending=True, stable=True).indices
        for mode in config.modes:
            for g in sizes:
                view = sae if g == d_sae else reduce_sae(sae, order, g, mode)
                conditions.append(_Condition(name, str(sae.architecture), mode, g, view, sae))
    for name, sae in matryoshka.items():
        for w in sae.cfg.widths:
            view = sae if w == d_sae else sae.prefix(int(w))
            conditions.append(_Condition(name, str(sae.architecture), "prefix", int(w), view, sae))

    # 3. One pass over the evaluated activations (the forward stops at the hook): the RSA sample, and
    # whether a reselect view gives its mask view's codes at every evaluated position (same active
    # latents, values equal to float rounding: ReLU, JumpReLU, thresholded BatchTopK, whose latents do
    # not compete). Such a pair is evaluated once and its rows say so (same_codes_as="mask").
    t1 = time.perf_counter()
    twins = {(c.sae, c.size): c.view for c in conditions if c.mode == "mask" and c.size != d_sae}
    candidates = {id(c.view): (c.view, twins[(c.sae, c.size)]) for c in conditions
                  if c.mode == "reselect" and (c.sae, c.size) in twins}
    x, same = _scan(adapter, tokens, hook, config.batch_size, config.rsa_tokens, list(candidates.values()))
    if x.shape[0] < 3:
        raise ValueError(f"The RSA sample has {x.shape[0]} evaluated positions; it needs at least 3. Give more tokens.")
    canon = {k: id(candidates[k][1]) if same[n] else k for n, k in enumerate(candidates)}
    times["scan"] = time.perf_counter() - t1

    # 4. One evaluate_many call: one clean forward per batch for every distinct reduced SAE. The G = d_sae
    # conditions of the prune modes are the SAE itself: evaluated once.
    unique: dict[int, int] = {}
    pairs: list[tuple[str, Any]] = []
    for c in conditions:
        key = canon.get(id(c.view), id(c.view))
        if key not in unique:
            unique[key] = len(pairs)
            pairs.append((hook, c.view))
    t2 = time.perf_counter()
    reports: list[EvalReport] = evaluate_many(adapter, pairs, tokens, batch_size=config.batch_size, top_contexts=0,
                                              ablation_scope=config.ablation_scope,
                                              allow_hook_mismatch=allow_hook_mismatch)
    times["evaluate"] = time.perf_counter() - t2

    # 5. RSA on the sample: each distinct reduced reconstruction against its SAE's full one and the input.
    t3 = time.perf_counter()
    full_recon = {id(sae): _reconstruct(sae, x) for sae in {**vanilla, **matryoshka}.values()}
    rsa_of: list[tuple[float, float]] = []
    for _, view in pairs:
        full = next(c.full for c in conditions if c.view is view)
        r = _reconstruct(view, x)
        rsa_of.append((rsa(r, full_recon[id(full)]), rsa(r, x)))
    times["rsa"] = time.perf_counter() - t3

    # 6. Interpretability of the distinct reduced dictionaries, where a scorer is given.
    scores: dict[int, Mapping[str, float]] = {}
    if interp_scores is not None:
        t4 = time.perf_counter()
        got = dict(interp_scores({f"view{n}": view for n, (_, view) in enumerate(pairs)}, hook))
        scores = {n: got.get(f"view{n}", {}) for n in range(len(pairs))}
        times["interp"] = time.perf_counter() - t4

    rows = []
    for c in conditions:
        n = unique[canon.get(id(c.view), id(c.view))]
        rep, (r_full, r_in) = reports[n], rsa_of[n]
        shared = "mask" if canon.get(id(c.view), id(c.view)) != id(c.view) else ""
        rows.append(SweepRow(c.sae, c.arch, c.mode, c.size, rep.fvu, rep.l0, rep.recaptured_zero, rep.recaptured_mean,
                             rep.delta_ce, rep.kl, rep.ce_spliced, rep.dead_frac, r_full, r_in,
                             dict(scores.get(n, {})), shared))
    first = reports[0]
    times["total"] = time.perf_counter() - t0
    return ProgressiveReport(
        model=str(getattr(adapter, "name", "model")), hook=hook, d_sae=d_sae, sizes=sizes, config=config,
        tokens=first.tokens, act_tokens=first.act_tokens, importance_tokens=n_imp, rsa_tokens=int(x.shape[0]),
        ce_clean=first.ce_clean, ce_zero_ablated=first.ce_zero_ablated, ce_mean_ablated=first.ce_mean_ablated,
        fits=fits, rows=tuple(rows), seconds={k: round(v, 2) for k, v in times.items()}, importances=importances)


def prune_sweep(adapter: Any, sae: Any, tokens: Any, sizes: Sequence[int], importance: Tensor, *,
                hook: str | None = None, mode: str = "reselect", **eval_kwargs: Any) -> list[tuple[int, EvalReport]]:
    """``sae`` reduced to its G most important latents (``mode``: see ``views``) for every G in ``sizes``,
    evaluated together (one clean forward per batch).

        >>> for G, r in prune_sweep(adapter, sae, held, [512, 1152, 4608], imp.importance): print(G, r.fvu, r.l0)
    """
    sizes = [check_size(g, int(sae.cfg.d_sae), "prune_sweep size") for g in sizes]
    order = importance.sort(descending=True, stable=True).indices
    pairs = [(hook, reduce_sae(sae, order, g, mode)) for g in sizes]
    return list(zip(sizes, evaluate_many(adapter, pairs, tokens, **eval_kwargs)))


def matryoshka_sweep(adapter: Any, sae: Any, tokens: Any, widths: Sequence[int] | None = None, *,
                     hook: str | None = None, **eval_kwargs: Any) -> list[tuple[int, EvalReport]]:
    """A Matryoshka SAE at each prefix width (default: its nested widths), evaluated together.

        >>> for w, r in matryoshka_sweep(adapter, mat, held): print(w, r.recaptured_zero)
    """
    if not callable(getattr(sae, "prefix", None)):
        raise ValueError(f"matryoshka_sweep needs a Matryoshka SAE (nested prefixes); got a "
                         f"{getattr(sae, 'architecture', type(sae).__name__)!r} SAE.")
    widths = [check_size(int(w), int(sae.cfg.d_sae), "prefix width")
              for w in (widths if widths is not None else sae.cfg.widths)]
    pairs = [(hook, sae.prefix(w)) for w in widths]
    return list(zip(widths, evaluate_many(adapter, pairs, tokens, **eval_kwargs)))


__all__ = ["Aggregate", "DEFINITIONS", "FitSummary", "METRICS", "ProgressiveReport", "RANKINGS", "SweepConfig",
           "SweepRow", "aggregate", "check_kinds", "check_saes", "default_sizes", "matryoshka_sweep", "prune_sweep",
           "sweep"]
