"""Next-token cross-entropy and KL between conditions of a model, tile by tile over the vocabulary.

Evaluating an SAE (clean / spliced / zero- and mean-ablated) and measuring a steering edit's side
effects (clean / steered) both compare the model's next-token distributions under several
conditions on the same tokens. Each condition is a ``LogitRows``: its logits at the counted
positions (``counted``), produced on demand one [rows, VOCAB_TILE] tile at a time, either from the
final normed hidden state and the model's head (``from_hidden``) or from full logits
(``from_logits``). ``token_stats`` reduces each tile right after it is made, so no [pos, vocab]
tensor is built for the hidden-state form:

    per tile t:  m_t = max_v l_v,  s_t = Σ_v exp(l_v − m_t),  (KL)  Σ_v exp(l0_v − m0_t)·(l0_v − li_v)
    combined in float64:  log Σ_v exp(l_v) = M + log Σ_t exp(m_t − M)·s_t  with M = max_t m_t
    CE = lse − l_target;   KL(p_0 ‖ p_i) = Σ p_0·(l_0 − l_i) − lse_0 + lse_i

Conditions that share the head have their hidden rows stacked into one [conditions × positions, d]
product per tile. Conditions with the same logits by construction are computed once.

    >>> at, targets = counted(ids, mask)
    >>> clean = from_hidden(h_clean, at, adapter.unembed, adapter.vocab_size)
    >>> ce, kl = token_stats([clean, from_hidden(h_spliced, at, adapter.unembed, adapter.vocab_size)], targets, kl_to={1})
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

CHUNK_ROWS = 512
"""Most positions per block of the head product (each block streams the whole head weight once)."""

STACK_ROWS = 2048
"""Most rows of one head product. Where every condition comes from a final hidden state, their rows for
a block of positions are stacked into one [conditions × positions, d] operand, so each vocabulary
tile is one larger product instead of one per condition; a block then holds
min(CHUNK_ROWS, STACK_ROWS // conditions) positions. Measured on SmolLM2 (1,008 positions, 4
conditions, fp32, 2 threads): head + statistics 0.85 s stacked against 0.95–1.00 s one product per
condition."""

VOCAB_TILE = 1024
"""Vocabulary columns per tile of the head product. The [conditions × positions, 1024] tile of logits
(8 MB at most) is reduced right after the product, so [pos, vocab] logits never exist. Measured on
SmolLM2 (1,008 positions, 3 conditions, fp32, 2 threads, one product per condition): head +
statistics 0.82 s in tiles, against 0.83 s for the bare head products over whole-vocabulary rows
(512 at a time) and 0.96 s for those plus the log-softmax statistics taken 8 rows at a time."""


class LogitRows(NamedTuple):
    """One condition's logits at the counted positions, produced tile by tile on demand.

        >>> LogitRows(vocab, lambda lo, hi, v0, v1: logits[lo:hi, v0:v1], source=logits)
    """

    vocab: int
    """Number of vocabulary columns."""
    tile: Callable[[int, int, int, int], Tensor]
    """(lo, hi, v0, v1) → logits [hi − lo, v1 − v0] of counted positions lo:hi, columns v0:v1."""
    hidden: Tensor | None = None
    """The final normed hidden state at the counted positions [n, d], where the logits are
    ``head(hidden)``: conditions sharing ``head`` are stacked into one product per tile."""
    head: Callable[[Tensor, slice], Tensor] | None = None
    """(hidden rows, vocabulary columns) → logits, e.g. ``adapter.unembed``."""
    source: Tensor | None = None
    """The tensor the tiles are read from (the hidden rows, or the full logits indexed by ``at``): two
    conditions with equal sources read the same way have equal logits, and are computed once."""
    at: Tensor | None = None
    """The flat positions read from ``source`` when it holds full logits."""

    def same_as(self, other: "LogitRows") -> bool:
        """Whether ``other`` has the same logits by construction (equal source, read the same way)."""
        if other is self:
            return True
        if self.source is None or other.source is None or self.head != other.head or self.at is not other.at:
            return False
        same_kind = self.source.shape == other.source.shape and self.source.dtype == other.source.dtype
        return same_kind and torch.equal(self.source, other.source)


class Counted(NamedTuple):
    """The positions whose next-token loss counts, and what they predict."""

    at: Int[Tensor, " n"]
    """Flat indices into [batch·pos], row-major like ``mask[:, :-1][...]``."""
    targets: Int[Tensor, " n"]
    """The token each of them predicts (the next one)."""


def counted(ids: Int[Tensor, "batch pos"], mask: Bool[Tensor, "batch pos"]) -> Counted:
    """The positions whose next-token loss counts: evaluated (``mask``) and not the last of their row.

    Position t predicts token t + 1 and counts when t is evaluated, since that is the activation an
    SAE or an edit changed (SAELens counts the same way).

        >>> at, targets = counted(ids, mask)
    """
    lm = mask[:, :-1]
    flat = torch.arange(ids.numel(), device=ids.device).view(ids.shape)[:, :-1]
    return Counted(flat[lm], ids[:, 1:][lm])


def from_hidden(hidden: Float[Tensor, "batch pos d"], at: Int[Tensor, " n"], head: Callable[[Tensor, slice], Tensor],
                vocab: int) -> LogitRows:
    """The rows at ``at`` of ``head`` applied to the final normed hidden state, tile by tile.

        >>> rows = from_hidden(h, counted(ids, mask).at, adapter.unembed, adapter.vocab_size)
    """
    h = hidden.reshape(-1, hidden.shape[-1])[at]  # [n, d]
    return LogitRows(vocab, lambda lo, hi, v0, v1: head(h[lo:hi], slice(v0, v1)), h, head, h)


def from_logits(logits: Float[Tensor, "batch pos vocab"], at: Int[Tensor, " n"]) -> LogitRows:
    """The rows at ``at`` of full logits, tile by tile.

        >>> rows = from_logits(adapter.forward(ids), counted(ids, mask).at)
    """
    flat = logits.reshape(-1, logits.shape[-1])  # [batch·pos, vocab], a view
    return LogitRows(flat.shape[-1], lambda lo, hi, v0, v1: flat[at[lo:hi], v0:v1], source=flat, at=at)


_LOWEST = torch.finfo(torch.float32).min


def _chunks(n: int, size: int):
    return ((lo, min(n, lo + size)) for lo in range(0, n, size))


class TokenStats(NamedTuple):
    """Per counted position: every condition's next-token CE, and KL to condition 0 where asked."""

    ce: list[Float[Tensor, " n"]]
    """CE in nats (float64) of condition i, at each counted position."""
    kl: dict[int, Float[Tensor, " n"]]
    """KL(p_0 ‖ p_i) in nats (float64) for each i of ``kl_to``."""


def token_stats(conds: Sequence[LogitRows], targets: Int[Tensor, " n"], kl_to: Collection[int] = ()) -> TokenStats:
    """Next-token CE of every condition and KL(p_0 ‖ p_i) for each i in ``kl_to``, per counted position.

    Conditions with the same logits by construction (``LogitRows.same_as``: an identity SAE, a kept error
    term, a zero SAE against zero-ablation) are computed once and share the result, so their CE is
    equal and their KL to condition 0 exactly 0 on every CPU. Reducing them separately would not
    guarantee it: the same hidden rows placed at two positions of one stacked head product may round
    differently, depending on the CPU's matrix kernel.
    """
    unique: list[LogitRows] = []
    rep = []  # conds[i] is unique[rep[i]]'s logits
    for c in conds:
        j = next((u for u, d in enumerate(unique) if d.same_as(c)), None)
        if j is None:
            unique.append(c)
            j = len(unique) - 1
        rep.append(j)
    ce_u, kl_u = _tile_stats(unique, targets, {rep[i] for i in kl_to if rep[i] != 0})
    zero = torch.zeros(targets.shape[0], dtype=torch.float64, device=targets.device)
    return TokenStats([ce_u[j] for j in rep], {i: zero if rep[i] == 0 else kl_u[rep[i]] for i in kl_to})


def _tile_stats(conds: Sequence[LogitRows], targets: Int[Tensor, " n"], kl_to: Collection[int] = ()) -> TokenStats:
    """``token_stats`` for conditions that are all different.

    One pass over [conditions, rows, VOCAB_TILE] tiles of logits, taking from each tile its row
    maxima m_t, Σ exp(l − m_t) and (against condition 0) Σ exp(l_0 − m_t)·(l_0 − l_i); the tiles are
    then combined in float64: log Σ_v exp(l_v) = M + log Σ_t exp(m_t − M)·s_t with M = max_t m_t, and
    KL(p_0 ‖ p_i) = Σ p_0·(l_0 − l_i) − lse_0 + lse_i. No [pos, vocab] tensor is ever built.
    """
    n, dev, n_c = targets.shape[0], targets.device, len(conds)
    kls = sorted(kl_to)
    vocab, head = conds[0].vocab, conds[0].head
    stacked = head is not None and all(c.hidden is not None and c.head == head for c in conds)
    tiles = list(_chunks(vocab, VOCAB_TILE))
    ce = torch.empty(n_c, n, dtype=torch.float64, device=dev)
    kl = torch.empty(len(kls), n, dtype=torch.float64, device=dev)
    scratch: dict[tuple, Tensor] = {}

    def buf(k: int, like: Tensor) -> Tensor:  # reused scratch tiles: a fresh one costs page faults
        key = (k, *like.shape)
        if key not in scratch:
            scratch[key] = torch.empty_like(like)
        return scratch[key]

    for lo, hi in _chunks(n, max(1, min(CHUNK_ROWS, STACK_ROWS // n_c))):
        r, t = hi - lo, targets[lo:hi]
        t_max = torch.empty(len(tiles), n_c, r, device=dev)
        t_sum = torch.empty_like(t_max)
        t_dot = torch.empty(len(tiles), len(kls), r, device=dev)
        target = torch.zeros(n_c, r, device=dev)
        h = torch.cat([c.hidden[lo:hi] for c in conds]) if stacked else None
        for j, (v0, v1) in enumerate(tiles):
            # A fresh tensor either way: overwritten in place below.
            if stacked:
                logits = head(h, slice(v0, v1)).float().view(n_c, r, v1 - v0)
            else:
                logits = torch.stack([c.tile(lo, hi, v0, v1).float() for c in conds])
            mx = logits.amax(-1, keepdim=True).clamp_(min=_LOWEST)  # a row of -inf tile: exp(l − m) = 0
            t_max[j] = mx[..., 0]
            inside = (t >= v0) & (t < v1)
            col = (t - v0).clamp_(0, v1 - v0 - 1)[None, :, None].expand(n_c, r, 1)
            torch.where(inside, logits.gather(-1, col)[..., 0], target, out=target)
            if kls:  # exp(l_0 − m_0) before the tile is overwritten
                e_0 = torch.sub(logits[0], mx[0], out=buf(0, logits[0])).exp_()
                for q, i in enumerate(kls):
                    torch.sum(torch.sub(logits[0], logits[i], out=buf(1, logits[0])).mul_(e_0), -1, out=t_dot[j, q])
            torch.sum(logits.sub_(mx).exp_(), -1, out=t_sum[j])
        m_t = t_max.double()  # [tiles, conditions, rows]
        top = m_t.amax(0)
        w = (m_t - top).exp_()
        total = (t_sum.double() * w).sum(0)
        ce[:, lo:hi] = (top - target.double()) + total.log()
        for q, i in enumerate(kls):
            cross = (t_dot[:, q].double() * w[:, 0]).sum(0) / total[0]
            kl[q, lo:hi] = (cross + (top[i] - top[0]) + (total[i].log() - total[0].log())).clamp_min_(0)  # >= 0; rounding aside
    return TokenStats(list(ce.unbind(0)), {i: kl[q] for q, i in enumerate(kls)})


__all__ = ["CHUNK_ROWS", "STACK_ROWS", "VOCAB_TILE", "Counted", "LogitRows", "TokenStats", "counted", "from_hidden",
           "from_logits", "token_stats"]
