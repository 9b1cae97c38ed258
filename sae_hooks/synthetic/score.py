"""Scoring a learned dictionary against the toy's ground truth.

Definitions (stated in every report):

- **MCC**: learned directions (decoder rows, normalised) are matched one-to-one to the true
  directions by the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``) maximising the
  summed cosine; MCC is the mean matched cosine over the true features (a true feature left
  without a latent, when d_sae < n_features, counts 0). Matching makes it independent of the
  latents' order.
- **Reconstruction errors** are normalised squared errors Σ‖x − x̂‖² / Σ‖x‖² pooled over a subset:
  *flat* samples (one top-level feature alone) and *hierarchical* samples (a parent with one
  of its children); *clean* compares x̂ with the noise-free signal instead of x (it tells a
  better fit of the noise from a better fit of the features). FVU = Σ‖x − x̂‖² / Σ‖x − x̄‖².
- **Absorption**: on hierarchical samples, the fraction in which the latent matched to the
  active parent is silent (code exactly 0) although the parent is present; an unmatched parent
  counts as silent.
- **L0**: mean number of non-zero codes per sample.
- **Geometry** (``sae_hooks.geometry``): the coherence of the learned atoms, of those that fire, and
  the support coherence (max |cos| among the atoms a sample uses, averaged over samples).

    toy = HierarchicalToy(); held_out = toy.sample(20_000, torch.Generator().manual_seed(1))
    s = score_sae(sae, toy, held_out)           # s.mcc, s.flat_err, s.hier_err, s.absorption
    oracle = score_oracle(toy, held_out)        # the true dictionary with the true codes: MCC 1
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from jaxtyping import Float, Int
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ..geometry import coherence, support_coherence
from .toy import HierarchicalToy, ToyBatch

SCORE_DEFINITIONS = (
    "MCC = mean over true features of the cosine with its Hungarian-matched latent (decoder rows; "
    "unmatched = 0); flat/hier/clean err = sum||x - x_hat||^2 / sum||x||^2 over flat samples (one "
    "top-level feature), hierarchical samples (parent + child), and against the noise-free signal; "
    "FVU = sum||x - x_hat||^2 / sum||x - mean x||^2; absorption = fraction of hierarchical samples whose "
    "parent's matched latent is silent; L0 = mean non-zero codes per sample; coherence = max |cos| between learned "
    "atoms (all / those that fire); support cos = mean over samples of the max |cos| among the atoms they use."
)


class Matching(NamedTuple):
    """A one-to-one matching of true features to latents."""

    latent: Int[Tensor, " f"]
    """Latent matched to each true feature, −1 where none (d_sae < n_features)."""
    cosine: Float[Tensor, " f"]
    """Cosine between each true direction and its matched latent's direction (0 where none)."""

    @property
    def mcc(self) -> float:
        """Mean matched cosine over the true features."""
        return float(self.cosine.mean())


class ToyScore(NamedTuple):
    """How one dictionary (with its encoder) does on the toy's held-out samples (see module docstring)."""

    mcc: float
    fvu: float
    flat_err: float
    hier_err: float
    clean_err: float
    absorption: float
    l0: float
    dead_frac: float
    """Fraction of latents that never fired on the held-out samples."""
    coherence: float
    """max |cos| between two learned atoms (the true dictionary's is 0.1 · level)."""
    fired_coherence: float
    """The same over the atoms that fire on the held-out samples."""
    support_cos: float
    """Mean over samples with >= 2 active latents of the max |cos| among them (how correlated the atoms used
    together are; for the truth: a parent and its child, 0)."""

    def to_dict(self) -> dict[str, float]:
        return self._asdict()


def match_directions(learned: Float[Tensor, "m d"], true: Float[Tensor, "f d"]) -> Matching:
    """Hungarian matching of true directions to learned ones by cosine (signed: codes are >= 0, so a
    flipped atom is not the feature).

        m = match_directions(sae.W_dec, toy.directions); m.mcc
    """
    if learned.ndim != 2 or true.ndim != 2 or learned.shape[1] != true.shape[1]:
        raise ValueError(f"match_directions: learned {tuple(learned.shape)} and true {tuple(true.shape)} must be "
                         "[atoms, d] with the same d.")
    a = torch.nn.functional.normalize(learned.detach().double().cpu(), dim=-1)
    b = torch.nn.functional.normalize(true.detach().double().cpu(), dim=-1)
    cos = b @ a.T  # [f, m]
    rows, cols = linear_sum_assignment(cos.numpy(), maximize=True)
    latent = torch.full((true.shape[0],), -1, dtype=torch.long)
    latent[torch.as_tensor(rows)] = torch.as_tensor(cols, dtype=torch.long)
    matched = torch.zeros(true.shape[0], dtype=torch.float64)
    matched[torch.as_tensor(rows)] = cos[torch.as_tensor(rows), torch.as_tensor(cols)]
    return Matching(latent, matched.float())


def score_codes(codes: Float[Tensor, "n m"], x_hat: Float[Tensor, "n d"], learned: Float[Tensor, "m d"],
                toy: HierarchicalToy, batch: ToyBatch) -> ToyScore:
    """Score codes and reconstructions of ``batch`` made with the dictionary ``learned``.

        score_codes(z, sae.decode(z), sae.W_dec, toy, batch)
    """
    n = batch.x.shape[0]
    if codes.shape[0] != n or x_hat.shape != batch.x.shape or codes.shape[1] != learned.shape[0]:
        raise ValueError(f"score_codes: codes {tuple(codes.shape)}, x_hat {tuple(x_hat.shape)} and dictionary "
                         f"{tuple(learned.shape)} do not fit a batch of {tuple(batch.x.shape)}.")
    x, s = batch.x.double(), batch.signal.double()
    xh = x_hat.detach().double()
    err = (x - xh).pow(2).sum(-1)  # [n]
    norm = x.pow(2).sum(-1)

    def rel(mask: Tensor) -> float:
        return float(err[mask].sum() / norm[mask].sum()) if bool(mask.any()) else float("nan")

    match = match_directions(learned, toy.directions)
    active = codes.detach() != 0
    hier = batch.hierarchical
    if bool(hier.any()):
        parent = toy.parent_of[batch.child[hier]]  # the active parent of each hierarchical sample
        lat = match.latent[parent]
        fired = torch.zeros_like(lat, dtype=torch.bool)
        ok = lat >= 0
        fired[ok] = active[hier][ok, lat[ok]]
        absorption = float((~fired).double().mean())
    else:
        absorption = float("nan")
    centered = (x - x.mean(0)).pow(2).sum()
    fired = active.any(0)
    return ToyScore(
        mcc=match.mcc,
        fvu=float(err.sum() / centered),
        flat_err=rel(batch.flat),
        hier_err=rel(hier),
        clean_err=float((s - xh).pow(2).sum() / s.pow(2).sum()),
        absorption=absorption,
        l0=float(active.sum(-1).double().mean()),
        dead_frac=float((~fired).double().mean()),
        coherence=coherence(learned),
        fired_coherence=coherence(learned[fired]) if int(fired.sum()) > 1 else float("nan"),
        support_cos=support_coherence(codes.detach().float(), learned)[0],
    )


@torch.no_grad()
def score_sae(sae: Any, toy: HierarchicalToy, batch: ToyBatch, chunk: int = 8192, **encode_kwargs: Any) -> ToyScore:
    """Encode ``batch.x`` with the SAE (raw units, as ``Trainer.export`` gives it) and score it.

        score_sae(sae, toy, held_out)             # MP: score_sae(mp, toy, held_out, k=4)
    """
    zs, xs = [], []
    for part in batch.x.split(chunk):
        z = sae.encode(part, **encode_kwargs)
        zs.append(z)
        xs.append(sae.decode(z))
    return score_codes(torch.cat(zs), torch.cat(xs).float(), sae.W_dec, toy, batch)


def score_oracle(toy: HierarchicalToy, batch: ToyBatch) -> ToyScore:
    """The true dictionary with the true codes: MCC 1, absorption 0, errors = the noise alone.

        score_oracle(toy, held_out).mcc     # 1.0
    """
    return score_codes(batch.codes, batch.signal, toy.directions, toy, batch)


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value), NaNs ignored."""
    arr = np.asarray([v for v in values if v == v], dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


__all__ = ["Matching", "ToyScore", "SCORE_DEFINITIONS", "match_directions", "score_codes", "score_sae",
           "score_oracle", "mean_sd"]
