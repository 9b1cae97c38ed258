"""Progressive coding (Peter & Søgaard 2025): latent importance, its power law, pruning vs Matryoshka, RSA.

- Importance of latent i = E[(a_i · ‖d_i‖)²] over tokens (its share of reconstructed energy);
  activation frequency is offered next to it.
- A power law is fitted to the sorted importances by least squares in log-log space over ranks.
- A vanilla SAE pruned to its top-G latents is evaluated at every G (FVU, recaptured LM loss),
  next to a Matryoshka SAE at each of its prefixes; all share one clean forward per batch.
- RSA: Pearson correlation between the upper triangles of the token × token Euclidean
  dissimilarity matrices of two reconstructions of the same tokens.

    >>> imp = latent_importance(sae, acts)
    >>> fit_power_law(imp.importance).exponent
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from .evaluate import EvalReport, evaluate_many


class Importance(NamedTuple):
    """Per-latent statistics over a set of tokens."""

    importance: Tensor
    """E[(a_i · ‖d_i‖)²] [d_sae]."""
    frequency: Tensor
    """Fraction of tokens on which latent i is non-zero [d_sae]."""


class PowerLaw(NamedTuple):
    """importance ≈ exp(intercept) · rank^(−exponent), fitted in log-log space."""

    exponent: float
    """Decay exponent (positive for decaying importances)."""
    intercept: float
    """Log-importance at rank 1 on the fitted line."""
    r2: float
    """Coefficient of determination of the log-log fit."""
    n: int
    """Number of (positive) importances used."""


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
        z = sae.encode(x.to(sae.W_dec.device, sae.W_dec.dtype), **(encode_kwargs or {})).float()
        sq += ((z * norms).pow(2)).sum(0).double().cpu()
        fired += (z != 0).sum(0).double().cpu()
    n = acts.shape[0]
    return Importance((sq / n).float(), (fired / n).float())


def fit_power_law(values: Float[Tensor, " n"]) -> PowerLaw:
    """Least-squares line through (log rank, log value) of the values sorted descending; zeros dropped.

        >>> fit_power_law(torch.arange(1, 101.0) ** -1.5).exponent   # 1.5
    """
    v = values.detach().double().flatten().sort(descending=True).values
    v = v[v > 0]
    if v.numel() < 3:
        raise ValueError(f"fit_power_law needs at least 3 positive values; got {v.numel()}.")
    x = torch.log(torch.arange(1, v.numel() + 1, dtype=torch.float64))
    y = torch.log(v)
    xm, ym = x.mean(), y.mean()
    slope = ((x - xm) * (y - ym)).sum() / (x - xm).pow(2).sum()
    intercept = ym - slope * xm
    resid = y - (intercept + slope * x)
    r2 = 1 - resid.pow(2).sum() / (y - ym).pow(2).sum()
    return PowerLaw(float(-slope), float(intercept), float(r2), int(v.numel()))


def rsa(a: Float[Tensor, "N d"], b: Float[Tensor, "N d"]) -> float:
    """Pearson correlation of the token × token Euclidean dissimilarities of two representations.

        >>> rsa(pruned_sae(x).x_hat, matryoshka.prefix(512)(x).x_hat)
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[0] or a.shape[0] < 3:
        raise ValueError(f"rsa needs two [N, d] tensors over the same N >= 3 tokens; got {tuple(a.shape)} and {tuple(b.shape)}.")
    iu = torch.triu_indices(a.shape[0], a.shape[0], offset=1)
    da = torch.cdist(a.double(), a.double())[iu[0], iu[1]]
    db = torch.cdist(b.double(), b.double())[iu[0], iu[1]]
    da, db = da - da.mean(), db - db.mean()
    den = da.norm() * db.norm()
    return float((da * db).sum() / den) if den > 0 else float("nan")


def prune_sweep(adapter: Any, sae: Any, tokens: Any, sizes: Sequence[int], importance: Tensor, *,
                hook: str | None = None, **eval_kwargs: Any) -> list[tuple[int, EvalReport]]:
    """Evaluate ``sae`` pruned to its ``G`` most important latents for every G in ``sizes``.

        >>> for G, r in prune_sweep(adapter, sae, held, [512, 1152, 4608], imp.importance): print(G, r.fvu)
    """
    order = importance.argsort(descending=True)
    bad = [g for g in sizes if not 1 <= g <= sae.cfg.d_sae]
    if bad:
        raise ValueError(f"sizes {bad} are outside [1, d_sae={sae.cfg.d_sae}].")
    pairs = [(hook, sae.pruned(order[:g])) for g in sizes]
    return list(zip(sizes, evaluate_many(adapter, pairs, tokens, **eval_kwargs)))


def matryoshka_sweep(adapter: Any, sae: Any, tokens: Any, widths: Sequence[int] | None = None, *,
                     hook: str | None = None, **eval_kwargs: Any) -> list[tuple[int, EvalReport]]:
    """Evaluate a Matryoshka SAE at each prefix width (default: its nested widths).

        >>> for w, r in matryoshka_sweep(adapter, mat, held): print(w, r.recaptured_zero)
    """
    if not hasattr(sae, "prefix"):
        raise ValueError(f"matryoshka_sweep needs a Matryoshka SAE (with .prefix); got {getattr(sae, 'architecture', type(sae).__name__)!r}.")
    widths = list(widths if widths is not None else sae.cfg.widths)
    pairs = [(hook, sae.prefix(w)) for w in widths]
    return list(zip(widths, evaluate_many(adapter, pairs, tokens, **eval_kwargs)))


__all__ = ["Importance", "PowerLaw", "fit_power_law", "latent_importance", "matryoshka_sweep", "prune_sweep", "rsa"]
