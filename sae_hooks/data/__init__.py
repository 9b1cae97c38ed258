"""Token streams for SAE training and evaluation.

A corpus becomes one deterministic, possibly infinite stream of fixed-length sequences;
everything else (batches, data-parallel shards, resuming, token budgets) is an index into that
stream. That makes a position cheap to save (one integer) and every rank agree on what it sees.

    source ──▶ documents of a split, in order ──tokenize, pack──▶ [ctx] rows ──▶ TokenBatch

One module per step:

- ``config``: ``CorpusConfig`` (every setting below, documented per field) and ``CorpusError``;
- ``sources``: the standard library (the offline default), local txt/jsonl/json/parquet files,
  or an HF dataset, in stored order; pre-tokenized rows (an ``input_ids`` column) pass as they are;
- ``split``: train / eval by a stable hash of each document's identity, or ``"all"``;
- ``order``: stored order, or a seeded shuffle drawn anew per epoch (``shuffle_docs``, ``seed``);
- ``packing``: tokenizing in chunks and cutting the joined documents into ``ctx``-token rows;
- ``batches``: the token budget, rank shards and resuming (``iter_batches``, ``load_token_tensor``);
- ``masks``: the positions that count (not the attention-sink position 0, not special tokens).

    cfg = CorpusConfig(source="stdlib", ctx=128, shuffle_docs=True, seed=0)
    for input_ids, mask in iter_batches(tokenizer, cfg, batch_size=32, max_tokens=400_000): ...
"""

from .batches import TokenBatch, iter_batches, load_token_tensor
from .config import SPLITS, CorpusConfig, CorpusError
from .masks import make_mask, special_token_ids
from .order import iter_documents
from .sources import (
    FILE_BUILDERS,
    STDLIB_EXCLUDED_DIRS,
    STDLIB_EXCLUDED_FILES,
    STDLIB_EXCLUDED_PREFIXES,
    STDLIB_TOPICS_PREFIX,
    TEXT_COLUMN_CANDIDATES,
    describe_corpus,
)

__all__ = [
    "CorpusConfig",
    "CorpusError",
    "SPLITS",
    "TokenBatch",
    "describe_corpus",
    "iter_batches",
    "iter_documents",
    "load_token_tensor",
    "make_mask",
    "special_token_ids",
    "FILE_BUILDERS",
    "STDLIB_EXCLUDED_DIRS",
    "STDLIB_EXCLUDED_FILES",
    "STDLIB_EXCLUDED_PREFIXES",
    "STDLIB_TOPICS_PREFIX",
    "TEXT_COLUMN_CANDIDATES",
]
