"""The documents of one split in stream order: stored order, or a seeded shuffle drawn per epoch.

With ``CorpusConfig.shuffle_docs`` the order of epoch ``e`` is a function of ``(seed, e)`` alone,
so a run's position in the stream stays one integer: a resumed run re-reads the same order and
skips what it had consumed. Every epoch is reshuffled (a run that cycles sees each document once
per epoch, in a new order).

- stdlib: a full permutation of the split's document ids (texts are read lazily, in that order);
- local files: a full permutation of the split's documents, read into memory once per epoch;
- HF datasets: ``datasets``' buffered shuffle (``shuffle_buffer`` rows, shard order shuffled too),
  the only shuffle a stream of unknown length allows.

Unshuffled, the stdlib comes sorted by path and other sources in file / stored order; a training
run on the sorted stdlib would see only the alphabetically first modules in its first epoch.

    docs = list(iter_documents(CorpusConfig(shuffle_docs=True, seed=3), epoch=1))
"""

from __future__ import annotations

import hashlib
import random
from array import array
from collections.abc import Iterator

from .config import CorpusConfig
from .sources import read_stdlib_documents, resolve_kind, source_documents, stdlib_doc_ids
from .split import document_in_split, in_split

__all__ = ["epoch_seed", "iter_documents"]


def epoch_seed(seed: int, epoch: int) -> int:
    """The 64-bit seed of epoch ``epoch``'s document order: a hash of both, so no two (seed, epoch)
    pairs share an order by construction (``seed + epoch`` would give seed 1 the order of seed 0's
    second epoch).

        epoch_seed(0, 1) != epoch_seed(1, 0)
    """
    return int.from_bytes(hashlib.blake2b(f"{int(seed)}:{int(epoch)}".encode(), digest_size=8).digest(), "big")


def iter_documents(cfg: CorpusConfig, epoch: int = 0) -> Iterator[str | list[int]]:
    """Documents of ``cfg.split`` in stream order: strings, or lists of ids for pre-tokenized rows.

        eval_docs = list(iter_documents(CorpusConfig(split="eval")))  # 22 stdlib files and topics (3.11)
        n_chars = sum(map(len, eval_docs))
    """
    kind = resolve_kind(cfg)
    if kind == "stdlib":
        ids = [i for i in stdlib_doc_ids() if in_split(cfg, i.encode())]
        if cfg.shuffle_docs:
            random.Random(epoch_seed(cfg.seed, epoch)).shuffle(ids)
        yield from read_stdlib_documents(ids)
        return
    hf_seed = epoch_seed(cfg.seed, epoch) if cfg.shuffle_docs and kind == "hf" else None
    docs = (d for d in source_documents(cfg, hf_seed) if document_in_split(cfg, d))
    if not cfg.shuffle_docs or kind == "hf":
        yield from docs
        return
    # Pre-tokenized rows are held as int64 arrays: 8 bytes a token instead of ~36 in a list of ints.
    held = [d if isinstance(d, str) else array("q", d) for d in docs]
    random.Random(epoch_seed(cfg.seed, epoch)).shuffle(held)
    for d in held:
        yield d if isinstance(d, str) else d.tolist()
