"""The train/eval split: a document belongs to ``eval`` when a stable hash of its identity is small.

Identity = relative path for stdlib files, ``pydoc_data.topics:<key>`` for pydoc topics, and the
document's own content for every other source — so exact duplicates never straddle the split,
and shuffling, re-sharding or re-ordering a dataset cannot move a document across it. The hash is
blake2b, independent of Python's per-process hash seed. ``split="all"`` skips hashing altogether.

    in_split(CorpusConfig(split="eval"), b"os.py")   # the same answer on every machine and run
"""

from __future__ import annotations

import hashlib

from .config import CorpusConfig

__all__ = ["document_in_split", "document_identity", "hash_unit", "in_split"]


def hash_unit(identity: bytes) -> float:
    """A stable number in [0, 1) for a document identity.

        hash_unit(b"os.py") < 0.03   # is os.py held out at the default eval_fraction?
    """
    return int.from_bytes(hashlib.blake2b(identity, digest_size=8).digest(), "big") / 2.0**64


def in_split(cfg: CorpusConfig, identity: bytes) -> bool:
    """Whether the document with this identity belongs to ``cfg.split``."""
    if cfg.split == "all":
        return True
    return (hash_unit(identity) < cfg.eval_fraction) == (cfg.split == "eval")


def document_identity(doc: str | list[int]) -> bytes:
    """The identity of a file or HF document: its text, or its ids for a pre-tokenized row."""
    if isinstance(doc, str):
        return doc.encode("utf-8", "surrogatepass")
    return b"ids:" + b",".join(str(t).encode() for t in doc)


def document_in_split(cfg: CorpusConfig, doc: str | list[int]) -> bool:
    """``in_split`` for a document identified by its content (hashing skipped for ``"all"``)."""
    return cfg.split == "all" or in_split(cfg, document_identity(doc))
