"""Batches out of the sequence stream: the token budget, data-parallel shards and resuming.

The stream of a corpus split is numbered 0, 1, 2, ... (one number per packed sequence); a run's
budget, each rank's share and a resume point are all positions in it, so a position is one
integer and every rank agrees on what it sees.

    for input_ids, mask in iter_batches(tok, CorpusConfig(), 32, max_tokens=400_000): ...
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from jaxtyping import Bool, Int64
from torch import Tensor

from .config import CorpusConfig, CorpusError
from .masks import make_mask, special_token_ids
from .packing import StreamStats, sequence_stream

__all__ = ["TokenBatch", "iter_batches", "load_token_tensor"]


class TokenBatch(NamedTuple):
    """A batch of sequences and the positions that count (for SAE training and metrics)."""

    input_ids: Int64[Tensor, "batch ctx"]
    """Token ids, int64."""
    mask: Bool[Tensor, "batch ctx"]
    """True where a position is used: not among the first ``exclude_first``, not a special token."""


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"iter_batches: {name}={value!r}; it must be an int >= {minimum}.")


def iter_batches(
    tokenizer: Any,
    cfg: CorpusConfig,
    batch_size: int,
    *,
    max_tokens: int | None = None,
    cycle: bool = False,
    rank: int = 0,
    world_size: int = 1,
    skip_sequences: int = 0,
    max_positions: int | None = None,
) -> Iterator[TokenBatch]:
    """Stream ``TokenBatch``es of ``batch_size`` sequences of ``cfg.ctx`` tokens.

        for input_ids, mask in iter_batches(tok, CorpusConfig(), 32, max_tokens=400_000):
            ...  # input_ids: [32, 128] int64 (the last batch may be smaller); mask: [32, 128] bool

    The corpus split is one deterministic stream of packed sequences, numbered 0, 1, 2, ...
    (with ``cycle=True`` it wraps around endlessly, epoch after epoch, without a gap; with
    ``cfg.shuffle_docs`` each epoch has its own document order, a function of (seed, epoch)).

    - ``max_tokens``: token budget of the whole run, all ranks together, counted as tokens fed to
      the model: the run covers stream positions ``[0, max_tokens // ctx)``. ``None``: until the
      corpus ends (or forever with ``cycle``). If the corpus split holds fewer sequences than that
      and ``cycle`` is False, raises ``CorpusError`` (saying both numbers) when the stream runs dry.
    - ``rank`` / ``world_size``: data parallelism. Rank r takes positions ``skip + k*world_size + r``;
      shards are disjoint and every rank gets the same number of sequences (a trailing incomplete
      group is dropped), so collective ops never hang on an uneven last step.
    - ``skip_sequences``: resume from global stream position N (sequences already consumed by all
      ranks together, e.g. ``steps * batch_size * world_size``). The budget still counts from 0,
      so a resumed run yields exactly the remainder of the original run, shuffled or not. Cost: the
      skipped prefix is re-read and re-tokenized (~440k tokens/s for SmolLM2 on 2 cores; ~1 s per
      400k tokens).
    - ``max_positions``: the model's maximum positions; ``cfg.ctx`` must not exceed it.
    """
    _check_int("batch_size", batch_size, 1)
    _check_int("world_size", world_size, 1)
    _check_int("skip_sequences", skip_sequences, 0)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"iter_batches: rank={rank!r}; it must be an int in [0, world_size={world_size}).")
    if max_positions is not None and cfg.ctx > max_positions:
        raise ValueError(f"CorpusConfig.ctx={cfg.ctx} exceeds the model's maximum positions "
                         f"({max_positions}). Use ctx <= {max_positions}.")
    total: int | None = None
    if max_tokens is not None:
        _check_int("max_tokens", max_tokens, 1)
        total = max_tokens // cfg.ctx
        if skip_sequences > total:
            raise ValueError(f"iter_batches: skip_sequences={skip_sequences} is past the end of the budget: "
                             f"max_tokens={max_tokens} is {total} sequences of ctx={cfg.ctx}.")
        if (total - skip_sequences) // world_size == 0 and skip_sequences < total:
            raise ValueError(f"iter_batches: max_tokens={max_tokens} leaves {total - skip_sequences} sequence(s) "
                             f"of ctx={cfg.ctx} after skip_sequences={skip_sequences}: fewer than one per rank "
                             f"for world_size={world_size}. Raise max_tokens to at least "
                             f"{(skip_sequences + world_size) * cfg.ctx}.")
    return _batches(tokenizer, cfg, batch_size, total, cycle, rank, world_size, skip_sequences, max_tokens)


def _batches(tokenizer: Any, cfg: CorpusConfig, batch_size: int, total: int | None, cycle: bool, rank: int,
             world_size: int, skip: int, max_tokens: int | None) -> Iterator[TokenBatch]:
    quota = None if total is None else (total - skip) // world_size
    special = torch.tensor(special_token_ids(tokenizer), dtype=torch.long)
    stats = StreamStats()
    stream = sequence_stream(tokenizer, cfg, cycle, stats)
    taken: list[Tensor] = []
    n_taken = 0
    group: list[Tensor] = []
    if quota == 0:  # resuming a run that had already finished
        return
    for position, seq in enumerate(stream):
        if position < skip:
            continue
        group.append(seq)
        if len(group) < world_size:
            continue
        taken.append(group[rank])
        group = []
        n_taken += 1
        if len(taken) == batch_size:
            yield _make_batch(taken, special, cfg)
            taken = []
        if n_taken == quota:
            break
    else:
        if quota is not None and n_taken < quota:
            raise CorpusError(_too_short(cfg, stats, total, max_tokens))
    if taken:
        yield _make_batch(taken, special, cfg)


def _too_short(cfg: CorpusConfig, stats: StreamStats, total: int, max_tokens: int) -> str:
    message = (f"Corpus {cfg.source!r} split {cfg.split!r} holds {stats.tokens:,} tokens = {stats.sequences:,} "
               f"sequences of ctx={cfg.ctx}, but max_tokens={max_tokens:,} asks for {total:,} sequences "
               f"({total * cfg.ctx:,} tokens). Pass cycle=True to wrap around, or ask for at most "
               f"{stats.sequences * cfg.ctx:,} tokens.")
    if cfg.split == "all":
        return message
    side = ("holds only the documents held out by a hash split" if cfg.split == "eval"
            else "leaves out the documents held out by a hash split")
    return (f"{message} Split {cfg.split!r} {side} (eval_fraction={cfg.eval_fraction}, about {cfg.eval_fraction:.0%} "
            "of them); if the whole source is the set you mean to read (e.g. a held-out file), pass split='all' "
            "(--split all on the command line) to read every document, in file order.")


def _make_batch(rows: list[Tensor], special: Tensor, cfg: CorpusConfig) -> TokenBatch:
    input_ids = torch.stack(rows)  # [batch, ctx]
    return TokenBatch(input_ids, make_mask(input_ids, special, cfg.exclude_first, cfg.exclude_special))


def load_token_tensor(tokenizer: Any, cfg: CorpusConfig, n_tokens: int,
                      max_positions: int | None = None) -> TokenBatch:
    """The first ``ceil(n_tokens / ctx)`` sequences of ``cfg``'s stream as one fixed block.

        held_out = load_token_tensor(tok, CorpusConfig(split="eval"), n_tokens=20_000)
        held_out.input_ids.shape  # (157, 128)
    """
    _check_int("n_tokens", n_tokens, 1)
    n_seq = math.ceil(n_tokens / cfg.ctx)
    batches = list(iter_batches(tokenizer, cfg, n_seq, max_tokens=n_seq * cfg.ctx, max_positions=max_positions))
    return batches[0]
