"""Finding features to steer: where a latent fires, what it writes to the logits, what fires on a word.

- ``harvest`` runs a corpus through the model once and keeps, for every latent, its top
  activations (with their places), how often it fires and its mean code; ``Harvest.contexts``
  renders a latent's top contexts as text with the firing tokens marked «like this».
- ``logit_effects`` reads a latent's decoder direction through the unembedding: the tokens it
  promotes and suppresses when added to the residual stream.
- ``latents_for_text`` ranks the latents that fire most on a prompt, or on one word inside it.

    >>> h = harvest(adapter, sae, "resid_post.6", iter_batches(tok, CorpusConfig(), 32, max_tokens=200_000))
    >>> for c in h.contexts(123, tok): print(f"{c.activation:.1f}  {c.text}")
    >>> logit_effects(adapter, sae, 123).promoted[:5]
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .adapters.base import Adapter
from .data import TokenBatch
from .splice import check_width, token_mask

MARK_OPEN, MARK_CLOSE = "«", "»"


def _sae_codes(sae: Any, x: Tensor) -> Tensor:
    return sae.encode(x.to(device=sae.device, dtype=sae.dtype))


# ---------------------------------------------------------------------------------------------
# Top-activating contexts


class Context(NamedTuple):
    """One place where a latent fires strongly."""

    activation: float
    """The latent's code at the marked peak token."""
    seq: int
    """Row of the harvested token block."""
    pos: int
    """Position of the peak token in that row."""
    token: str
    """The peak token, decoded."""
    text: str
    """The window around it; every token where the latent fires is marked «token»."""


@dataclass
class Harvest:
    """Per-latent statistics of one SAE over a token stream (see ``harvest``)."""

    hook: str
    """Canonical hook point the activations were read at."""
    top_values: Float[Tensor, "d_sae k"]
    """Largest codes of each latent, descending (0 where it fired fewer than k times)."""
    top_seq: Int[Tensor, "d_sae k"]
    """Row (into ``input_ids``) of each top value."""
    top_pos: Int[Tensor, "d_sae k"]
    """Position of each top value."""
    fire_count: Int[Tensor, " d_sae"]
    """Evaluated tokens on which each latent fired."""
    code_sum: Float[Tensor, " d_sae"]
    """Sum of each latent's code over the evaluated tokens."""
    n_tokens: int
    """Evaluated tokens (position 0 and special tokens excluded by the batches' masks)."""
    input_ids: Int[Tensor, "seq ctx"] = field(repr=False)
    """Every harvested row, to render contexts."""

    @property
    def frequency(self) -> Float[Tensor, " d_sae"]:
        """Fraction of evaluated tokens on which each latent fires."""
        return self.fire_count.float() / max(self.n_tokens, 1)

    @property
    def mean_code(self) -> Float[Tensor, " d_sae"]:
        """Mean code of each latent over all evaluated tokens (zeros included)."""
        return self.code_sum / max(self.n_tokens, 1)

    def contexts(self, latent: int, tokenizer: Any, *, adapter: Adapter | None = None, sae: Any = None,
                 n: int | None = None, before: int = 12, after: int = 4) -> list[Context]:
        """The latent's top contexts, strongest first, as text with the peak token marked «so».

        With ``adapter`` and ``sae`` given, every token of the window where the latent fires is
        marked (one extra forward of the rows shown); otherwise only the peak token.

            >>> for c in h.contexts(123, tok): print(f"{c.activation:5.1f}  {c.text}")
        """
        d_sae, k = self.top_values.shape
        if isinstance(latent, bool) or not isinstance(latent, int) or not 0 <= latent < d_sae:
            raise ValueError(f"latent={latent!r} is out of range; this SAE has {d_sae} latents (0..{d_sae - 1}).")
        n = k if n is None else min(n, k)
        out = []
        for j in range(n):
            v = float(self.top_values[latent, j])
            if v <= 0:
                break
            s, p = int(self.top_seq[latent, j]), int(self.top_pos[latent, j])
            row = self.input_ids[s]
            lo, hi = max(0, p - before), min(row.shape[0], p + after + 1)
            fires = {p}
            if adapter is not None and sae is not None:
                z = _sae_codes(sae, adapter.capture(row[None], [self.hook])[self.hook])[0, :, latent]
                fires |= {i for i in range(lo, hi) if i > 0 and float(z[i]) > 0}
            pieces = []
            for i in range(lo, hi):
                t = tokenizer.decode([int(row[i])])
                pieces.append(f"{MARK_OPEN}{t}{MARK_CLOSE}" if i in fires else t)
            out.append(Context(v, s, p, tokenizer.decode([int(row[p])]), "".join(pieces)))
        return out


@torch.no_grad()
def harvest(
    adapter: Adapter,
    sae: Any,
    hook: str,
    batches: Iterable[TokenBatch | Tensor],
    *,
    k: int = 10,
) -> Harvest:
    """One pass over ``batches``: each latent's top-``k`` codes and where, firing counts, mean code.

    Batches are ``TokenBatch``es (their mask says which positions count: position 0 and special
    tokens are excluded by ``iter_batches``) or plain id tensors (masked with ``make_mask``).
    The forward stops right after ``hook`` (``adapter.capture``).

        >>> h = harvest(adapter, sae, "resid_post.6", iter_batches(tok, CorpusConfig(split="eval"), 16, max_tokens=50_000))
        >>> h.frequency.topk(5)
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r}; it must be an int >= 1 (contexts kept per latent).")
    name = check_width(adapter, hook, sae)
    d_sae = int(sae.cfg.d_sae)
    vals = torch.zeros(d_sae, 0)
    where = torch.zeros(d_sae, 0, dtype=torch.long)  # flat index seq * ctx + pos
    count = torch.zeros(d_sae, dtype=torch.long)
    code_sum = torch.zeros(d_sae, dtype=torch.float64)
    rows: list[Tensor] = []
    n_tokens = n_rows = 0
    ctx = None
    for batch in batches:
        if isinstance(batch, Tensor):
            ids = batch if batch.dim() == 2 else batch[None]
            mask = token_mask(adapter, ids)
        else:
            ids, mask = batch
        if ctx is None:
            ctx = ids.shape[1]
        elif ids.shape[1] != ctx:
            raise ValueError(f"harvest: every batch must have the same length; got {ids.shape[1]} after {ctx}.")
        z = _sae_codes(sae, adapter.capture(ids, [name])[name]).float().cpu()  # [B, T, d_sae]
        m = mask.cpu()
        z = z * m[..., None]
        count += (z > 0).sum((0, 1))
        code_sum += z.sum((0, 1)).double()
        flat = z.reshape(-1, d_sae).T  # [d_sae, B*T]
        kk = min(k, flat.shape[1])
        bv, bi = flat.topk(kk, dim=1)
        vals = torch.cat([vals, bv], 1)
        where = torch.cat([where, bi + n_rows * ctx], 1)
        keep = vals.topk(min(k, vals.shape[1]), dim=1)
        vals, where = keep.values, where.gather(1, keep.indices)
        rows.append(ids.cpu())
        n_rows += ids.shape[0]
        n_tokens += int(m.sum())
    if n_rows == 0:
        raise ValueError("harvest: the batches were empty; pass at least one batch of token ids.")
    return Harvest(name, vals, where // ctx, where % ctx, count, code_sum.float(), n_tokens, torch.cat(rows))


def top_contexts(adapter: Adapter, sae: Any, hook: str, latent: int, batches: Iterable[TokenBatch | Tensor],
                 *, n: int = 10) -> list[Context]:
    """Top-``n`` activating contexts of one latent over ``batches``, firing tokens marked «so».

        >>> for c in top_contexts(adapter, sae, "resid_post.6", 123, held_out_batches): print(c.text)
    """
    d_sae = int(sae.cfg.d_sae)
    if isinstance(latent, bool) or not isinstance(latent, int) or not 0 <= latent < d_sae:
        raise ValueError(f"latent={latent!r} is out of range; this SAE has {d_sae} latents (0..{d_sae - 1}).")
    h = harvest(adapter, sae, hook, batches, k=n)
    return h.contexts(latent, adapter.tokenizer, adapter=adapter, sae=sae, n=n)


# ---------------------------------------------------------------------------------------------
# What a latent writes to the logits


class TokenScore(NamedTuple):
    """A token and how much a latent's direction moves its logit."""

    token_id: int
    """Vocabulary id."""
    token: str
    """The token, decoded."""
    score: float
    """Logit change per unit of the latent's code (before the final norm's 1/rms scaling)."""


class LogitEffects(NamedTuple):
    """The tokens a latent's decoder direction promotes and suppresses (see ``logit_effects``)."""

    latent: int
    """The latent."""
    promoted: list[TokenScore]
    """Largest logit increases, largest first."""
    suppressed: list[TokenScore]
    """Largest logit decreases, most negative first."""
    through_norm: bool
    """True when the final norm's gain was applied to the direction before W_U."""


@torch.no_grad()
def logit_effects(adapter: Adapter, sae: Any, latent: int, *, k: int = 10, through_norm: bool = True) -> LogitEffects:
    """Tokens promoted / suppressed by adding latent ``latent``'s decoder direction to the residual.

    score = W_U (g ⊙ d_latent): the direction passed through the final norm's gain g and the
    unembedding. The norm's 1/rms factor is a positive scalar per token, so it scales but does not
    reorder the scores; it is left out. A LayerNorm (GPT-2, Pythia) also subtracts the mean over
    d_model, so there d_latent is centered first: adding a constant to every coordinate of the
    residual changes no logit. ``through_norm=False`` drops g and the centering (the plain "logit
    lens" of the direction). Meaningful for SAEs on the residual stream.

        >>> fx = logit_effects(adapter, sae, 123)
        >>> [t.token for t in fx.promoted[:5]]
    """
    d_sae = int(sae.cfg.d_sae)
    if isinstance(latent, bool) or not isinstance(latent, int) or not 0 <= latent < d_sae:
        raise ValueError(f"latent={latent!r} is out of range; this SAE has {d_sae} latents (0..{d_sae - 1}).")
    W, gain, center = adapter.readout()
    d = sae.W_dec[latent].detach().to(device=W.device, dtype=torch.float32)
    if d.shape[0] != W.shape[1]:
        raise ValueError(f"logit_effects: the SAE's decoder rows have width {d.shape[0]} but the unembedding reads "
                         f"{W.shape[1]}; this works for SAEs on the residual stream of this model.")
    if through_norm and center:
        d = d - d.mean()
    used = through_norm and gain is not None
    if used:
        d = d * gain.detach().float()
    scores = W.detach().float() @ d  # [vocab]
    k = min(k, scores.shape[0])
    tok = adapter.tokenizer

    def rows(v: Tensor, i: Tensor) -> list[TokenScore]:
        return [TokenScore(int(t), tok.decode([int(t)]) if tok is not None else str(int(t)), float(s))
                for s, t in zip(v.tolist(), i.tolist())]

    top = scores.topk(k)
    bottom = (-scores).topk(k)
    return LogitEffects(latent, rows(top.values, top.indices), rows(-bottom.values, bottom.indices), used)


# ---------------------------------------------------------------------------------------------
# What fires on a word


class LatentScore(NamedTuple):
    """A latent ranked by how strongly it fires on the chosen tokens."""

    latent: int
    """The latent."""
    mean: float
    """Mean code over the chosen tokens."""
    max: float
    """Largest code over the chosen tokens."""
    fraction: float
    """Fraction of the chosen tokens on which it fires."""


@torch.no_grad()
def latents_for_text(
    adapter: Adapter,
    sae: Any,
    hook: str,
    text: str,
    *,
    word: str | None = None,
    top: int = 10,
    exclude_first: int = 1,
) -> list[LatentScore]:
    """Latents that fire most on ``text`` (all its tokens but the first) or on the tokens of ``word`` in it.

    Ranked by mean code over the chosen tokens. Dense latents fire on everything: compare with
    ``Harvest.frequency`` to keep the specific ones.

        >>> latents_for_text(adapter, sae, "resid_post.6", "import os\\nimport sys", word="import")
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text={text!r}; give a non-empty string.")
    tok = adapter.tokenizer
    if tok is None:
        raise ValueError("latents_for_text needs the adapter's tokenizer; build the adapter with one.")
    enc = tok(text, return_offsets_mapping=word is not None, add_special_tokens=False)
    ids = torch.tensor([enc["input_ids"]])
    chosen = torch.arange(ids.shape[1]) >= exclude_first
    if word is not None:
        if not word.strip() or word not in text:
            raise ValueError(f"word={word!r} does not occur in the text {text[:60]!r}; choose a word of the text.")
        spans, start = [], text.find(word)
        while start >= 0:
            spans.append((start, start + len(word)))
            start = text.find(word, start + 1)
        on_word = torch.tensor([any(a < e and b > s for s, e in spans) for a, b in enc["offset_mapping"]])
        chosen &= on_word
        if not bool(chosen.any()):
            raise ValueError(f"word={word!r} occurs only in the first {exclude_first} token(s) of the text, which are "
                             "excluded (attention sink); put some text before it.")
    if not bool(chosen.any()):
        raise ValueError(f"text {text!r} has {ids.shape[1]} token(s); after excluding the first {exclude_first} "
                         "none are left. Give a longer text.")
    name = check_width(adapter, hook, sae)
    z = _sae_codes(sae, adapter.capture(ids, [name])[name])[0][chosen.to(adapter.device)].float()  # [n, d_sae]
    mean, mx, frac = z.mean(0), z.max(0).values, (z > 0).float().mean(0)
    order = mean.argsort(descending=True)[:top]
    return [LatentScore(int(i), float(mean[i]), float(mx[i]), float(frac[i])) for i in order if float(mx[i]) > 0]


__all__ = ["Context", "Harvest", "LatentScore", "LogitEffects", "TokenScore", "harvest", "latents_for_text",
           "logit_effects", "top_contexts"]
