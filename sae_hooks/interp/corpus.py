"""Labelled token sequences: Python documents of a corpus split, tokenized with their character
offsets, labelled by ``labels.token_labels`` and packed into ``ctx``-token rows like training data.

    >>> toks = labelled_tokens(adapter.tokenizer, CorpusConfig(split="eval"), n_tokens=50_000)
    >>> toks.input_ids.shape, toks.labels.shape        # (391, 128), (391, 128, len(LABELS))
    >>> toks.skipped                                   # {'SyntaxError': 2}: documents Python cannot parse

Documents come from ``iter_documents`` in stream order; each is followed (or preceded) by the
separator token, as in ``CorpusConfig``; the mask drops the first ``exclude_first`` positions (the
attention sink) and special tokens, as everywhere else. A document that is not Python (a syntax
error, or English text as in the stdlib corpus's pydoc topics) is skipped and counted, never fed.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, NamedTuple

import numpy as np
import torch
from jaxtyping import Bool, Int64
from torch import Tensor

from ..data import CorpusConfig, CorpusError, iter_documents, make_mask
from .labels import LABELS, NotPython, token_labels


class LabelledTokens(NamedTuple):
    """Packed sequences of Python source tokens and the labels of every position."""

    input_ids: Int64[Tensor, "seq ctx"]
    """Token ids."""
    mask: Bool[Tensor, "seq ctx"]
    """Positions that are scored: not among the first ``exclude_first``, not a special token."""
    labels: Bool[Tensor, "seq ctx n_labels"]
    """``labels[s, t, l]``: the token at (s, t) carries label ``LABELS[l]`` (False on separators)."""
    documents: int
    """Python documents packed (the last one possibly in part)."""
    skipped: dict[str, int]
    """Documents skipped because Python rejects them, by error type (e.g. ``{"SyntaxError": 2}``)."""
    straddled: tuple[int, ...]
    """Per label: packed tokens that overlap its spans but also hold non-whitespace outside them."""


def labelled_tokens(tokenizer: Any, cfg: CorpusConfig, n_tokens: int, *,
                    max_positions: int | None = None) -> LabelledTokens:
    """The first ``ceil(n_tokens / cfg.ctx)`` rows of the corpus split's Python documents, labelled.

        >>> toks = labelled_tokens(tok, CorpusConfig(split="eval", ctx=128), 20_000)

    Needs a fast tokenizer (for its offsets mapping). Raises ``CorpusError`` when the split holds no
    Python document, or fewer tokens of them than asked (the message says how many it holds).
    """
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
        raise ValueError(f"labelled_tokens: n_tokens={n_tokens!r}; it must be an int >= 1.")
    if max_positions is not None and cfg.ctx > max_positions:
        raise ValueError(f"CorpusConfig.ctx={cfg.ctx} exceeds the model's maximum positions ({max_positions}). "
                         f"Use ctx <= {max_positions}.")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"Token labels need a fast tokenizer (its offsets mapping ties tokens to source "
                         f"characters); got {type(tokenizer).__name__}. Load the tokenizer with use_fast=True.")
    n_seq = math.ceil(n_tokens / cfg.ctx)
    body = cfg.ctx - (1 if cfg.prepend_bos else 0)
    bos = _special(tokenizer, "bos") if cfg.prepend_bos else None
    sep = _special(tokenizer, cfg.separator)
    n_labels = len(LABELS)
    none = np.zeros((1, n_labels), dtype=bool)

    ids: list[int] = []                  # the joined stream, as in training data
    labs: list[np.ndarray] = []          # one [n, n_labels] block per document or separator
    straddles: list[np.ndarray] = []     # the same blocks for TokenLabels.straddled
    skipped: Counter[str] = Counter()
    used = seen = 0
    pending: list[str] = []

    def flush() -> None:
        nonlocal used
        enc = tokenizer(pending, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        for text, doc_ids, offsets in zip(pending, enc["input_ids"], enc["offset_mapping"]):
            if not doc_ids or len(ids) >= n_seq * body:
                continue
            try:
                tl = token_labels(text, offsets)
            except NotPython as e:
                skipped[str(e).split(":", 1)[0]] += 1
                continue
            used += 1
            if cfg.separator == "bos":
                ids.append(sep)
                labs.append(none)
                straddles.append(none)
            ids.extend(doc_ids)
            labs.append(tl.labels)
            straddles.append(tl.straddled)
            if cfg.separator == "eos":
                ids.append(sep)
                labs.append(none)
                straddles.append(none)
        pending.clear()

    for doc in iter_documents(cfg):
        if isinstance(doc, list):
            raise CorpusError(f"Corpus {cfg.source!r} is pre-tokenized (input_ids rows): token labels need the "
                              "source text. Pass a corpus of Python source text (the default 'stdlib').")
        seen += 1
        pending.append(doc)
        if len(pending) >= cfg.docs_per_chunk:
            flush()
        if len(ids) >= n_seq * body:
            break
    if pending:
        flush()

    if used == 0:
        raise CorpusError(
            f"Corpus {cfg.source!r} split {cfg.split!r} holds no Python source: {seen} document(s), "
            f"{sum(skipped.values())} rejected by Python's parser ({dict(skipped)}). Token labels come from "
            "Python's tokenize and ast; pass a corpus of Python code (the default 'stdlib').")
    have = len(ids) // body
    if have < n_seq:
        raise CorpusError(
            f"Corpus {cfg.source!r} split {cfg.split!r} holds {len(ids):,} tokens of Python source ({used} documents; "
            f"{sum(skipped.values())} skipped as not Python) = {have:,} sequences of ctx={cfg.ctx}, but "
            f"{n_tokens:,} tokens ask for {n_seq:,}. Ask for at most {have * cfg.ctx:,} tokens, or use a larger "
            "corpus or split.")
    flat = np.concatenate(labs)[: n_seq * body]
    straddled = np.concatenate(straddles)[: n_seq * body].sum(0)
    input_ids = torch.tensor(ids[: n_seq * body], dtype=torch.long).view(n_seq, body)   # [seq, body]
    labels = torch.from_numpy(flat).view(n_seq, body, n_labels)
    if bos is not None:
        input_ids = torch.cat([torch.full((n_seq, 1), bos, dtype=torch.long), input_ids], dim=1)  # [seq, ctx]
        labels = torch.cat([torch.zeros(n_seq, 1, n_labels, dtype=torch.bool), labels], dim=1)
    mask = make_mask(input_ids, tokenizer, cfg.exclude_first, cfg.exclude_special)
    return LabelledTokens(input_ids, mask, labels, used, dict(skipped), tuple(int(s) for s in straddled))


def _special(tokenizer: Any, which: str) -> int:
    token_id = getattr(tokenizer, f"{which}_token_id", None)
    if token_id is None:
        raise CorpusError(f"The tokenizer has no {which.upper()} token, which the corpus settings need "
                          f"(separator / prepend_bos). Set tokenizer.{which}_token, or change those settings.")
    return int(token_id)
