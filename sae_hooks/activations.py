"""Activation batches from a live model: one stopped forward per token batch, every hook at once.

The language model runs under ``torch.inference_mode`` and only up to the deepest requested hook
(``adapter.capture(..., stop=True)``: bitwise the same activations, ~5x faster at layer 6 of
SmolLM2's 30 than the full forward). Positions masked out by the token batch (position 0, the
attention sink, and special tokens by default) are dropped here, and rows are cast to fp32 once:
the SAE math stays fp32 whatever dtype the LM runs in.

Non-finite activations (an fp16 overflow, a broken checkpoint) are handled by ``nonfinite``:
``"skip"`` drops the affected rows (the same rows at every hook, so hooks stay aligned), counts
them and warns once; ``"raise"`` stops with the batch's position in the stream. Skipping more than
``max_skip_frac`` of all rows seen stops too: at that point the data, not a stray token, is wrong.

    stream = stream_activations(adapter, ["resid_post.6"], iter_batches(tok, cfg, 32))
    for b in stream: b.acts["resid_post.6"].shape   # [rows, 576], fp32
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from .adapters import Adapter
from .data import TokenBatch

__all__ = ["ActivationBatch", "NonFiniteActivations", "stream_activations"]

NONFINITE_POLICIES = ("skip", "raise")


class NonFiniteActivations(ValueError):
    """Activations held NaN/inf and the policy says stop."""


class ActivationBatch(NamedTuple):
    """Activation rows of one token batch."""

    acts: dict[str, Float[Tensor, "rows d"]]
    """Rows at the masked-in positions, per canonical hook name, fp32."""
    tokens: int
    """Rows kept (equal for every hook)."""
    sequences: int
    """Global stream position after this batch: sequences consumed by all ranks together."""
    nonfinite_rows: int
    """Rows dropped from this batch because some hook had a NaN/inf there."""


def stream_activations(
    adapter: Adapter,
    hooks: Sequence[str],
    token_batches: Iterable[TokenBatch],
    *,
    start_sequences: int = 0,
    world_size: int = 1,
    nonfinite: str = "skip",
    max_skip_frac: float = 0.01,
) -> Iterator[ActivationBatch]:
    """Run the model on each token batch and yield the masked activation rows of every hook.

    ``start_sequences`` / ``world_size`` only keep ``ActivationBatch.sequences`` in global stream
    units (what ``iter_batches(skip_sequences=...)`` takes when resuming).

        for b in stream_activations(adapter, ["resid_post.3", "resid_post.6"], batches):
            x3, x6 = b.acts["resid_post.3"], b.acts["resid_post.6"]
    """
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"stream_activations: nonfinite={nonfinite!r}; valid: {', '.join(NONFINITE_POLICIES)}.")
    names = [adapter.canonical(h) for h in hooks]
    if len(set(names)) != len(names):
        raise ValueError(f"stream_activations: hooks {list(hooks)} name the same hook point twice ({names}).")
    position, seen, skipped, warned = start_sequences, 0, 0, False
    for batch in token_batches:
        ids, mask = batch.input_ids, batch.mask
        with torch.inference_mode():
            captured = adapter.capture(ids, names, stop=True)
        keep = mask.to(next(iter(captured.values())).device)
        # [B, T, d] -> [rows, d]: boolean indexing copies once; .float() is a no-op for fp32 LMs.
        acts = {h: captured[h][keep].float() for h in names}
        position += ids.shape[0] * world_size
        finite = torch.ones(next(iter(acts.values())).shape[0], dtype=torch.bool, device=keep.device)
        for a in acts.values():
            finite &= torch.isfinite(a).all(-1)
        n_bad = int((~finite).sum())
        seen += finite.numel()
        if n_bad:
            where = f"stream sequences {position - ids.shape[0] * world_size}..{position - 1}"
            if nonfinite == "raise":
                raise NonFiniteActivations(
                    f"{n_bad} of {finite.numel()} activation rows are NaN/inf at {names} ({where}). "
                    "Run the model in fp32/bf16 rather than fp16, or pass nonfinite='skip' to drop such rows.")
            skipped += n_bad
            if skipped > max_skip_frac * seen:
                raise NonFiniteActivations(
                    f"{skipped} of {seen} activation rows so far were NaN/inf (over max_skip_frac={max_skip_frac}); "
                    f"last at {where}. The model or its dtype is producing garbage; fix that rather than skip.")
            if not warned:
                warnings.warn(f"Skipping {n_bad} NaN/inf activation rows at {where}; the count is kept in the "
                              "training log (nonfinite_rows).", stacklevel=2)
                warned = True
            acts = {h: a[finite] for h, a in acts.items()}
        yield ActivationBatch(acts, int(finite.sum()), position, n_bad)
