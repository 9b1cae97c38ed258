"""What a feature page shows, gathered in one pass: ``sae_hooks.features.harvest`` plus every code.

``profile`` runs ``harvest`` (top contexts, firing counts, mean code) over a token stream and, in the
same forward passes, keeps every positive code that harvest counts (one ``(latent, value)`` pair per
firing: ~L0 pairs per token, ~13 MB for 50k tokens at L0 32), from which each latent's activation
quantiles and histogram follow. ``context_windows`` then re-encodes only the rows that hold the
chosen latents' top contexts, a batch of rows per forward, to shade every token of each window.

    >>> prof = profile(adapter, sae, "resid_post.6", iter_batches(tok, CorpusConfig(split="eval"), 8, max_tokens=50_000))
    >>> prof.quantiles(123), prof.histogram(123)
    >>> windows = context_windows(adapter, sae, prof.harvest, [123], n=10)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..adapters.base import Adapter
from ..data import TokenBatch, make_mask
from ..features import Harvest, harvest

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)


class _Observed:
    """An SAE seen through ``harvest``: ``encode`` passes through and keeps each positive code at the
    positions the current batch's mask counts (the mask harvest applies right after encoding)."""

    def __init__(self, sae: Any):
        self.sae = sae
        self.mask: Tensor | None = None
        self.latents: list[Tensor] = []
        self.values: list[Tensor] = []

    def __getattr__(self, name: str) -> Any:  # cfg, W_dec, metadata, ... of the wrapped SAE
        return getattr(self.sae, name)

    def encode(self, x: Tensor, **kwargs: Any) -> Tensor:
        z = self.sae.encode(x, **kwargs)
        if self.mask is None or tuple(self.mask.shape) != tuple(z.shape[:-1]):
            raise RuntimeError("profile: harvest encoded activations that match no batch mask; "
                               "sae_hooks.features.harvest changed how it reads batches.")
        kept = z.detach().float().cpu() * self.mask[..., None]
        where = (kept > 0).nonzero()  # [n, 3]: (row, position, latent)
        self.latents.append(where[:, -1].to(torch.int32))
        self.values.append(kept[where[:, 0], where[:, 1], where[:, 2]])
        return z

    def watch(self, batches: Iterable[TokenBatch]) -> Iterator[TokenBatch]:
        for batch in batches:
            if not isinstance(batch, TokenBatch):
                raise TypeError(f"profile: batches must be TokenBatch (from iter_batches), got {type(batch).__name__}.")
            self.mask = batch.mask.cpu()
            yield batch


class Profile(NamedTuple):
    """A harvest plus every positive code per latent (see ``profile``)."""

    harvest: Harvest
    """Top contexts, firing counts and mean codes of every latent."""
    order: Int[Tensor, " n"]
    """Latent of each kept code, sorted ascending."""
    codes: Float[Tensor, " n"]
    """The kept positive codes, grouped by latent (same order as ``order``)."""
    offsets: Int[Tensor, " d_sae_plus_1"]
    """codes[offsets[i]:offsets[i+1]] are latent i's codes."""

    def codes_of(self, latent: int) -> Float[Tensor, " m"]:
        """Every positive code of ``latent`` on the evaluated tokens."""
        return self.codes[int(self.offsets[latent]):int(self.offsets[latent + 1])]

    def quantiles(self, latent: int) -> dict[str, float] | None:
        """Quantiles of the latent's positive codes (where it fires), or None if it never fired.

            >>> prof.quantiles(123)["p50"]
        """
        c = self.codes_of(latent)
        if c.numel() == 0:
            return None
        q = torch.quantile(c.double(), torch.tensor(QUANTILES, dtype=torch.float64))
        return {f"p{round(p * 100)}": float(v) for p, v in zip(QUANTILES, q)}

    def histogram(self, latent: int, bins: int = 30) -> tuple[list[int], float]:
        """(counts of the positive codes in ``bins`` equal bins over (0, max], max), ([], 0.0) if it never fired."""
        c = self.codes_of(latent)
        if c.numel() == 0:
            return [], 0.0
        top = float(c.max())
        counts = torch.histc(c, bins=bins, min=0.0, max=top)
        return [int(v) for v in counts], top


def profile(adapter: Adapter, sae: Any, hook: str, batches: Iterable[TokenBatch], *, k: int = 10) -> Profile:
    """One pass of ``harvest`` (top-``k`` contexts of every latent) that also keeps every counted code.

        >>> prof = profile(adapter, sae, "resid_post.6", batches, k=10)
    """
    seen = _Observed(sae)
    h = harvest(adapter, seen, hook, seen.watch(batches), k=k)
    latents = torch.cat(seen.latents) if seen.latents else torch.zeros(0, dtype=torch.int32)
    values = torch.cat(seen.values) if seen.values else torch.zeros(0)
    order, perm = latents.sort(stable=True)
    d_sae = int(sae.cfg.d_sae)
    offsets = torch.zeros(d_sae + 1, dtype=torch.long)
    offsets[1:] = torch.bincount(order.long(), minlength=d_sae).cumsum(0)
    return Profile(h, order, values[perm], offsets)


class Window(NamedTuple):
    """One top context of one latent, token by token."""

    activation: float
    """The latent's code at the peak token (as harvested)."""
    peak: int
    """Index of the peak token within ``tokens``."""
    tokens: list[str]
    """The window's tokens, decoded one by one."""
    acts: list[float]
    """The latent's code at each token (0 where it does not fire or the position is not counted)."""


@torch.no_grad()
def context_windows(adapter: Adapter, sae: Any, h: Harvest, latents: list[int], *, n: int = 10,
                    before: int = 16, after: int = 6, batch_size: int = 16,
                    exclude_first: int = 1) -> dict[int, list[Window]]:
    """The top-``n`` contexts of each latent as token windows with the latent's code at every token.

    Only the rows holding those contexts are re-encoded (``batch_size`` rows per forward). Positions
    that harvest does not count (the first ``exclude_first``, special tokens) show code 0.

        >>> context_windows(adapter, sae, prof.harvest, [123, 456], n=5)[123][0].tokens
    """
    tok = adapter.tokenizer
    want: dict[int, list[tuple[int, int, int, float]]] = {}  # seq -> [(latent, j, pos, value)]
    for latent in latents:
        for j in range(min(n, h.top_values.shape[1])):
            v = float(h.top_values[latent, j])
            if v <= 0:
                break
            want.setdefault(int(h.top_seq[latent, j]), []).append((latent, j, int(h.top_pos[latent, j]), v))
    out: dict[int, list[Window | None]] = {latent: [] for latent in latents}
    slots: dict[tuple[int, int], Window] = {}
    decoded: dict[int, str] = {}

    def text(i: int) -> str:
        if i not in decoded:
            decoded[i] = tok.decode([i]) if tok is not None else str(i)
        return decoded[i]

    rows = sorted(want)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        ids = h.input_ids[chunk]  # [b, ctx]
        mask = make_mask(ids, tok if tok is not None else [], exclude_first=exclude_first,
                         exclude_special=tok is not None)
        x = adapter.capture(ids, [h.hook])[h.hook]
        z = sae.encode(x.to(device=sae.W_dec.device, dtype=sae.W_dec.dtype)).float().cpu() * mask[..., None]
        for b, seq in enumerate(chunk):
            row = ids[b].tolist()
            for latent, j, pos, v in want[seq]:
                lo, hi = max(0, pos - before), min(len(row), pos + after + 1)
                slots[(latent, j)] = Window(v, pos - lo, [text(t) for t in row[lo:hi]],
                                            [float(a) for a in z[b, lo:hi, latent]])
    for latent in latents:
        j = 0
        while (latent, j) in slots:
            out[latent].append(slots[(latent, j)])
            j += 1
    return out  # type: ignore[return-value]


def choose_latents(frequency: Tensor, n: int) -> list[int]:
    """``n`` latents spread evenly over the ranks of their firing frequency (rarest to densest), never-firing
    latents left out; every firing latent if there are no more than ``n``.

        >>> choose_latents(prof.harvest.frequency, 200)
    """
    alive = (frequency > 0).nonzero().flatten()
    if alive.numel() <= n:
        return alive.tolist()
    ranked = alive[frequency[alive].argsort(stable=True)]
    picks = torch.linspace(0, ranked.numel() - 1, n).round().long().unique()
    return sorted(ranked[picks].tolist())
