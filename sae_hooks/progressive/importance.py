"""How much each latent of an SAE matters, and the shape of that ranking.

- Importance of latent i = E[(a_i · ‖d_i‖)²] over tokens: the mean energy latent i puts into the
  reconstruction (Peter & Søgaard 2025, arXiv 2505.00190); the firing frequency is offered next to it.
- ``fit_power_law``: importance ≈ C · rank^(−α), least squares of log importance on log rank.
- ``fit_exponential``: importance ≈ C · e^(−λ · rank), least squares of log importance on rank.
  Both fits explain the same quantity (log importance) over the same ranks, so their R² compare
  directly: a high power-law R² alone does not show a power law, a higher one than the
  exponential's over the same ranks is evidence for it.

    >>> imp = latent_importance(sae, acts)
    >>> fit_power_law(imp.importance).exponent, fit_exponential(imp.importance).rate
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor


class Importance(NamedTuple):
    """Per-latent statistics over a set of tokens."""

    importance: Tensor
    """E[(a_i · ‖d_i‖)²] [d_sae]."""
    frequency: Tensor
    """Fraction of tokens on which latent i is non-zero [d_sae]."""


class PowerLaw(NamedTuple):
    """importance ≈ exp(intercept) · rank^(−exponent), fitted in log-log space."""

    exponent: float
    """Decay exponent α (positive for decaying importances)."""
    intercept: float
    """Log-importance at rank 1 on the fitted line."""
    r2: float
    """Coefficient of determination of log importance on log rank."""
    n: int
    """Number of importances fitted (positive ones, inside the rank range)."""
    rank_lo: int
    """First rank fitted (1 = the most important latent)."""
    rank_hi: int
    """Last rank fitted (inclusive)."""


class Exponential(NamedTuple):
    """importance ≈ exp(intercept − rate · rank), fitted in log-linear space."""

    rate: float
    """Decay rate λ per rank (positive for decaying importances)."""
    intercept: float
    """Log-importance at rank 0 on the fitted line."""
    r2: float
    """Coefficient of determination of log importance on rank."""
    n: int
    """Number of importances fitted (positive ones, inside the rank range)."""
    rank_lo: int
    """First rank fitted (1 = the most important latent)."""
    rank_hi: int
    """Last rank fitted (inclusive)."""


@torch.no_grad()
def latent_importance(sae: Any, acts: Float[Tensor, "N d_in"], *, batch: int = 4096,
                      encode_kwargs: dict | None = None) -> Importance:
    """Importance and firing frequency of every latent over activation rows ``acts``.

        >>> imp = latent_importance(sae, acts)          # acts: held-out rows, position 0 excluded
        >>> order = imp.importance.argsort(descending=True)
    """
    if acts.dim() != 2 or acts.shape[0] == 0:
        raise ValueError(f"acts must be non-empty rows [N, d_in]; got shape {tuple(acts.shape)}.")
    norms = sae.W_dec.detach().float().norm(dim=-1)
    sq = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    for x in acts.split(batch):
        z = sae.encode(x.to(sae.device, sae.dtype), **(encode_kwargs or {})).float()
        sq += ((z * norms).pow(2)).sum(0).double().cpu()
        fired += (z != 0).sum(0).double().cpu()
    n = acts.shape[0]
    return Importance((sq / n).float(), (fired / n).float())


class _Ranked(NamedTuple):
    rank: Tensor
    """1-based ranks of the fitted values (float64)."""
    log_value: Tensor
    """Their logarithms (float64)."""
    lo: int
    hi: int


def _ranked(values: Tensor, ranks: tuple[int, int] | None, what: str) -> _Ranked:
    """The positive values sorted descending with their ranks, inside ``ranks`` (1-based, inclusive;
    default: rank 1 to the last positive value). Zeros (dead latents) carry no log and are dropped."""
    v = values.detach().double().flatten().sort(descending=True).values
    n_pos = int((v > 0).sum())
    lo, hi = (1, n_pos) if ranks is None else ranks
    if isinstance(lo, bool) or isinstance(hi, bool) or not isinstance(lo, int) or not isinstance(hi, int) \
            or not 1 <= lo < hi <= v.numel():
        raise ValueError(f"{what}: rank range {ranks!r} must be two ints 1 <= lo < hi <= {v.numel()} (the number of "
                         "values), e.g. (1, 1000).")
    rank = torch.arange(lo, hi + 1, dtype=torch.float64)
    v = v[lo - 1: hi]
    keep = v > 0
    if int(keep.sum()) < 3:
        raise ValueError(f"{what} needs at least 3 positive values in ranks {lo}..{hi}; got {int(keep.sum())} "
                         f"({n_pos} of {values.numel()} values are positive).")
    return _Ranked(rank[keep], v[keep].log(), lo, hi)


def _line(x: Tensor, y: Tensor) -> tuple[float, float, float]:
    """(slope, intercept, R²) of the least-squares line y ≈ intercept + slope · x."""
    xm, ym = x.mean(), y.mean()
    slope = ((x - xm) * (y - ym)).sum() / (x - xm).pow(2).sum()
    intercept = ym - slope * xm
    total = (y - ym).pow(2).sum()
    r2 = 1 - (y - (intercept + slope * x)).pow(2).sum() / total if total > 0 else torch.tensor(math.nan)
    return float(slope), float(intercept), float(r2)


def fit_power_law(values: Float[Tensor, " n"], ranks: tuple[int, int] | None = None) -> PowerLaw:
    """Least-squares line through (log rank, log value) of the values sorted descending, over ``ranks``
    (1-based, inclusive; default all positive values); zeros are dropped.

        >>> fit_power_law(torch.arange(1, 101.0) ** -1.5).exponent   # 1.5
        >>> fit_power_law(imp.importance, ranks=(10, 1000))         # skip the head, stop before the tail
    """
    r = _ranked(values, ranks, "fit_power_law")
    slope, intercept, r2 = _line(r.rank.log(), r.log_value)
    return PowerLaw(-slope, intercept, r2, int(r.rank.numel()), r.lo, r.hi)


def fit_exponential(values: Float[Tensor, " n"], ranks: tuple[int, int] | None = None) -> Exponential:
    """Least-squares line through (rank, log value) of the values sorted descending, over ``ranks``
    (as in ``fit_power_law``, so the two R² compare).

        >>> fit_exponential(torch.exp(-0.01 * torch.arange(1, 501.0))).rate   # 0.01
    """
    r = _ranked(values, ranks, "fit_exponential")
    slope, intercept, r2 = _line(r.rank, r.log_value)
    return Exponential(-slope, intercept, r2, int(r.rank.numel()), r.lo, r.hi)


__all__ = ["Exponential", "Importance", "PowerLaw", "fit_exponential", "fit_power_law", "latent_importance"]
