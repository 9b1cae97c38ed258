"""Dictionary geometry: coherence, the Babel function, and how correlated the atoms an encoder picks are.

For unit atoms d_1..d_N (decoder rows, normalised here):

- **coherence** μ = max_{i≠j} |⟨d_i, d_j⟩|;
- **Babel function** μ₁(s) = max_j max_{|Λ|=s, j∉Λ} Σ_{i∈Λ} |⟨d_i, d_j⟩| (Tropp 2004, "Greed is good"):
  how much s atoms together can look like another one. μ₁(1) = μ; μ₁(s) ≤ s·μ. Greedy pursuit
  recovers every s-sparse code exactly when μ₁(s − 1) + μ₁(s) < 1 (Tropp's exact recovery
  condition), so a small μ₁ is what a one-shot, thresholding encoder implicitly relies on;
- **support coherence**: per token, the largest and the mean |cos| among the atoms its code uses,
  averaged over tokens — whether an encoder actually selects correlated atoms together.

Both are reported over all atoms and over the atoms that fire at least once on held-out data (dead
atoms can sit anywhere and say nothing about the encoder). The Welch bound √((N − d) / (d (N − 1)))
is the smallest coherence N unit vectors in d dimensions can have; a random unit dictionary of the
same shape is the other reference.

    g = dictionary_geometry(sae, held_out_rows)              # MP: dictionary_geometry(mp, x, k=16)
    g.coherence, g.babel[:4], g.selected_babel[31], g.support_max_cos
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from jaxtyping import Bool, Float
from torch import Tensor

GEOMETRY_DEFINITIONS = (
    "coherence = max_{i!=j} |cos(d_i, d_j)| over unit decoder rows; Babel mu1(s) = max_j of the sum of the s "
    "largest |cos(d_i, d_j)|, i != j; 'selected' = over the atoms that fire on held-out data; support max/mean cos "
    "= per token, max / mean |cos| among the atoms its code uses, averaged over tokens with >= 2 of them; "
    "Welch bound = sqrt((N - d) / (d (N - 1)))."
)


def _unit(atoms: Tensor) -> Tensor:
    if atoms.ndim != 2 or atoms.shape[0] < 1:
        raise ValueError(f"atoms must be a 2-D tensor [n_atoms, d]; got shape {tuple(atoms.shape)}.")
    return torch.nn.functional.normalize(atoms.detach().float(), dim=-1)


def babel(atoms: Float[Tensor, "n d"], s_max: int = 32, chunk: int = 1024) -> Float[Tensor, " s_max"]:
    """μ₁(s) for s = 1..s_max (entry s−1); NaN where s ≥ n_atoms (fewer other atoms than s).

    Rows of |D Dᵀ| are formed ``chunk`` at a time, so N = 4,608 atoms need ~19 MB at once, not 85 MB.

        mu = babel(sae.W_dec, 32); mu[0]   # the coherence
    """
    if isinstance(s_max, bool) or not isinstance(s_max, int) or s_max < 1:
        raise ValueError(f"s_max={s_max!r}; it must be an int >= 1.")
    d = _unit(atoms)
    n = d.shape[0]
    out = torch.full((s_max,), float("nan"))
    s_eff = min(s_max, n - 1)
    if s_eff < 1:
        return out
    best = torch.zeros(s_eff)
    for lo in range(0, n, chunk):
        g = (d[lo: lo + chunk] @ d.T).abs_()
        rows = torch.arange(g.shape[0])
        g[rows, rows + lo] = -1.0  # an atom is not in its own Λ
        top = g.topk(s_eff, dim=-1).values.cumsum(-1)  # [rows, s]: sum of the s largest
        best = torch.maximum(best, top.amax(0))
    out[:s_eff] = best
    return out


def coherence(atoms: Float[Tensor, "n d"]) -> float:
    """max_{i≠j} |cos(d_i, d_j)| (0 for a single atom).

        coherence(sae.W_dec)
    """
    mu = babel(atoms, 1)
    return 0.0 if math.isnan(float(mu[0])) else float(mu[0])


def welch_bound(n: int, d: int) -> float:
    """Smallest possible coherence of n unit vectors in d dimensions (0 when n <= d).

        welch_bound(4608, 576)    # ≈ 0.039
    """
    return math.sqrt((n - d) / (d * (n - 1))) if n > d else 0.0


def support_coherence(z: Float[Tensor, "N n"], atoms: Float[Tensor, "n d"], chunk: int = 2048) -> tuple[float, float]:
    """(mean over tokens of the max |cos| among a token's active atoms, mean over tokens of the mean |cos| over
    its pairs of active atoms), over tokens with at least two active atoms; NaN if there are none.

        support_coherence(sae.encode(x), sae.W_dec)
    """
    d = _unit(atoms)
    if z.ndim != 2 or z.shape[1] != d.shape[0]:
        raise ValueError(f"z must be [tokens, {d.shape[0]}]; got {tuple(z.shape)}.")
    k = int((z != 0).sum(-1).max()) if z.numel() else 0
    if k < 2:
        return float("nan"), float("nan")
    tot_max = tot_mean = 0.0
    count = 0
    chunk = max(1, min(chunk, 2**24 // (k * d.shape[1])))  # the [chunk, k, d] gather stays under ~64 MB
    for part in z.split(chunk):
        active = part != 0
        n_act = active.sum(-1)
        # The k largest |z| hold every active atom (k = the most any token has); padding slots are masked.
        idx = part.abs().topk(k, dim=-1).indices  # [c, k]
        valid = torch.arange(k)[None, :] < n_act[:, None]
        a = d[idx]  # [c, k, d]
        g = (a @ a.transpose(1, 2)).abs_()  # [c, k, k]
        pair = valid[:, :, None] & valid[:, None, :] & ~torch.eye(k, dtype=torch.bool)[None]
        keep = n_act >= 2
        if not bool(keep.any()):
            continue
        g = g.masked_fill(~pair, 0.0)
        tot_max += float(g.amax((1, 2))[keep].sum())
        n_pairs = (n_act * (n_act - 1)).clamp_min(1).float()
        tot_mean += float((g.sum((1, 2)) / n_pairs)[keep].sum())
        count += int(keep.sum())
    return (tot_max / count, tot_mean / count) if count else (float("nan"), float("nan"))


class GeometryReport(NamedTuple):
    """The geometry of one dictionary, and of the atoms its encoder uses on held-out data."""

    n_atoms: int
    d: int
    coherence: float
    babel: list[float]
    """μ₁(s), s = 1..s_max, over all atoms."""
    n_selected: int
    """Atoms that fired at least once on the held-out data."""
    selected_coherence: float
    selected_babel: list[float]
    """μ₁(s) over the atoms that fired."""
    support_max_cos: float
    support_mean_cos: float
    welch_bound: float
    random_coherence: float
    """Coherence of a random unit dictionary of the same shape (seed 0)."""
    random_babel: list[float]

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()


@torch.no_grad()
def dictionary_geometry(sae: Any, x: Float[Tensor, "N d"] | None = None, *, s_max: int = 32, chunk: int = 4096,
                        codes: Float[Tensor, "N n"] | None = None, **encode_kwargs: Any) -> GeometryReport:
    """Geometry of ``sae.W_dec``; with held-out rows ``x`` (or precomputed ``codes``) also over the atoms that fire
    and within each token's support.

        dictionary_geometry(sae, held_out)          # MP at another k: dictionary_geometry(mp, held_out, k=8)
    """
    atoms = sae.W_dec.detach().float()
    n, dim = atoms.shape
    fired: Bool[Tensor, " n"] | None = None
    sup = (float("nan"), float("nan"))
    if codes is None and x is not None:
        codes = torch.cat([sae.encode(part, **encode_kwargs).float() for part in x.split(chunk)])
    if codes is not None:
        fired = (codes != 0).any(0)
        sup = support_coherence(codes, atoms)
    sel = atoms[fired] if fired is not None else atoms[:0]
    sel_babel = babel(sel, s_max) if sel.shape[0] else torch.full((s_max,), float("nan"))
    gen = torch.Generator().manual_seed(0)
    rand = torch.randn(n, dim, generator=gen)
    rand_babel = babel(rand, s_max)
    all_babel = babel(atoms, s_max)
    return GeometryReport(
        n_atoms=n, d=dim, coherence=float(all_babel[0]), babel=all_babel.tolist(),
        n_selected=int(sel.shape[0]), selected_coherence=float(sel_babel[0]), selected_babel=sel_babel.tolist(),
        support_max_cos=sup[0], support_mean_cos=sup[1], welch_bound=welch_bound(n, dim),
        random_coherence=float(rand_babel[0]), random_babel=rand_babel.tolist())


__all__ = ["GEOMETRY_DEFINITIONS", "GeometryReport", "babel", "coherence", "welch_bound", "support_coherence",
           "dictionary_geometry"]
