"""Token streams for SAE training and evaluation.

A corpus becomes one deterministic, possibly infinite stream of fixed-length sequences;
everything else (batches, data-parallel shards, resuming, token budgets) is an index into that
stream. That makes a position cheap to save (one integer) and every rank agree on what it sees.

    documents ──tokenize in chunks──▶ doc ids + separator ──pack──▶ [ctx] rows ──▶ TokenBatch

Sources (``CorpusConfig.source``):

- ``"stdlib"`` (default, offline): the running interpreter's standard library — its ``.py``
  sources without test directories, the machine-generated codec tables of ``encodings/`` and the
  build-config ``_sysconfigdata_*`` (~10.6 M characters on 3.11), and the English documentation in
  ``pydoc_data.topics`` (~0.5 M characters). One document per file / per topic, sorted by id.
- local ``.txt`` / ``.jsonl`` / ``.json`` / ``.parquet`` files, directories or globs of them,
  read through ``datasets`` (a ``.txt`` file yields one document per paragraph by default).
- any other string: a HuggingFace dataset name, streamed with
  ``datasets.load_dataset(name, split=hf_split, streaming=True)``.

Rows that carry an ``input_ids`` column (pre-tokenized data, what SAELens users keep) are fed to
the model row by row as they are, without re-packing.

Train/eval split: a document is in ``eval`` when a stable hash (blake2b) of its identity falls
below ``eval_fraction``; identity = relative path for stdlib files, ``pydoc_data.topics:<key>``
for pydoc topics, and the document's own content for every other source (so exact duplicates
never straddle the split, and shuffling or re-sharding a dataset cannot move a document).

Position 0 is an attention sink in SmolLM2 (residual norms ~23,000 from layer 12 on, see
DESIGN.md), so masks exclude it and the tokenizer's special tokens by default.

    cfg = CorpusConfig(source="stdlib", ctx=128)
    for input_ids, mask in iter_batches(tokenizer, cfg, batch_size=32, max_tokens=400_000): ...
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib
import logging
import math
import os
import random
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from jaxtyping import Bool, Int64
from torch import Tensor

__all__ = [
    "CorpusConfig",
    "CorpusError",
    "TokenBatch",
    "describe_corpus",
    "iter_batches",
    "iter_documents",
    "load_token_tensor",
    "make_mask",
    "special_token_ids",
]

# Column names tried, in order, when CorpusConfig.text_column is not given.
TEXT_COLUMN_CANDIDATES = ("text", "content", "document", "body", "raw_content", "code", "article", "sentence")
FILE_BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
# Directory names left out of the stdlib corpus: test suites (test/, tests/, idlelib/idle_test,
# lib2to3/tests, ...) are machine-like fixtures, and site-packages is not the standard library.
STDLIB_EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})
STDLIB_TOPICS_PREFIX = "pydoc_data.topics:"
# pydoc_data/topics.py is the topics dict itself: kept as a .py document it would duplicate every
# topic document, across the train/eval split. _sysconfigdata_*.py is the interpreter's build
# configuration, written by a machine.
STDLIB_EXCLUDED_FILES = frozenset({"pydoc_data/topics.py"})
STDLIB_EXCLUDED_PREFIXES = ("_sysconfigdata_",)


class CorpusError(ValueError):
    """A corpus cannot be read or cannot deliver what was asked (the message says how to fix it)."""


@dataclass(frozen=True)
class CorpusConfig:
    """Where tokens come from and how they are packed and masked.

        cfg = CorpusConfig(source="data/*.jsonl", ctx=256, split="eval")
        batch = load_token_tensor(tokenizer, cfg, n_tokens=50_000)
    """

    source: str = "stdlib"
    """``"stdlib"`` (the interpreter's own standard library, offline); a local file, directory or
    glob of ``.txt``/``.jsonl``/``.json``/``.parquet`` files; or a HuggingFace dataset name."""

    source_kind: str = "auto"
    """How to read ``source``: ``"auto"`` (stdlib if ``"stdlib"``, files if it is an existing path or
    a glob, else HF), ``"stdlib"``, ``"files"``, or ``"hf"`` (forces ``datasets.load_dataset(source)``,
    which also accepts a local dataset folder)."""

    split: str = "train"
    """Which side of the deterministic document split to stream: ``"train"`` or ``"eval"``."""

    ctx: int = 128
    """Sequence length fed to the model, in tokens (>= 2)."""

    text_column: str | None = None
    """Column holding the text. ``None`` auto-detects the first of ``text``, ``content``,
    ``document``, ``body``, ``raw_content``, ``code``, ``article``, ``sentence``; a row with an
    ``input_ids`` column and no text column is treated as pre-tokenized."""

    prepend_bos: bool = False
    """Start every packed sequence with the tokenizer's BOS token (then ``ctx - 1`` corpus tokens).
    Off by default: SmolLM2 has no BOS by default. For pre-tokenized rows it checks instead that
    every row already starts with BOS."""

    separator: str = "eos"
    """Token placed between documents: ``"eos"`` (appended after each document) or ``"bos"``
    (prepended before each document)."""

    exclude_first: int = 1
    """Number of leading positions masked out of every sequence. Position 0 is an attention sink
    (DESIGN.md: residual norms ~23,000 in SmolLM2) that would dominate SAE training and metrics."""

    exclude_special: bool = True
    """Mask out positions whose token is special (``tokenizer.all_special_ids`` plus added tokens
    flagged special), e.g. the ``<|im_end|>`` separators."""

    eval_fraction: float = 0.03
    """Fraction of documents (by stable hash of their identity) that form the ``eval`` split, in (0, 1)."""

    hf_split: str = "train"
    """Split name passed to ``datasets.load_dataset`` for an HF dataset (our train/eval split is
    carved out of it)."""

    hf_subset: str | None = None
    """Configuration (subset) name of an HF dataset, e.g. ``"wikitext-103-raw-v1"``."""

    txt_sample_by: str = "paragraph"
    """What one document is in a ``.txt`` file: ``"paragraph"`` (blank-line separated), ``"line"``
    or ``"document"`` (the whole file; a single-file corpus then has an empty side of the split)."""

    truncate_rows: bool = False
    """Pre-tokenized rows longer than ``ctx``: keep their first ``ctx`` tokens instead of raising."""

    shuffle_docs: bool = False
    """Shuffle document order (seeded, reshuffled each epoch with ``seed + epoch``). stdlib: a full
    permutation; files and HF datasets: shuffled file order plus a ``shuffle_buffer``-row buffer."""

    seed: int = 0
    """Seed of the document shuffle."""

    shuffle_buffer: int = 10_000
    """Rows held by the buffered shuffle of file and HF sources."""

    docs_per_chunk: int = 64
    """Documents tokenized per batched call of the (fast) tokenizer."""

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source:
            raise ValueError(f"CorpusConfig.source must be a non-empty string, got {self.source!r}; "
                             "use 'stdlib', a local path or glob, or an HF dataset name.")
        if self.source_kind not in ("auto", "stdlib", "files", "hf"):
            raise ValueError(f"CorpusConfig.source_kind={self.source_kind!r}; valid: 'auto', 'stdlib', 'files', 'hf'.")
        if self.split not in ("train", "eval"):
            raise ValueError(f"CorpusConfig.split={self.split!r}; valid: 'train', 'eval'.")
        if isinstance(self.ctx, bool) or not isinstance(self.ctx, int) or self.ctx < 2:
            raise ValueError(f"CorpusConfig.ctx={self.ctx!r}; it must be an int >= 2 "
                             "(next-token loss needs at least two positions).")
        if self.separator not in ("eos", "bos"):
            raise ValueError(f"CorpusConfig.separator={self.separator!r}; valid: 'eos', 'bos'.")
        if isinstance(self.exclude_first, bool) or not isinstance(self.exclude_first, int) \
                or not 0 <= self.exclude_first < self.ctx:
            raise ValueError(f"CorpusConfig.exclude_first={self.exclude_first!r}; it must be an int in "
                             f"[0, ctx={self.ctx}) so that some positions stay unmasked.")
        if not isinstance(self.eval_fraction, (int, float)) or not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"CorpusConfig.eval_fraction={self.eval_fraction!r}; it must lie in (0, 1), e.g. 0.03.")
        if self.txt_sample_by not in ("paragraph", "line", "document"):
            raise ValueError(f"CorpusConfig.txt_sample_by={self.txt_sample_by!r}; "
                             "valid: 'paragraph', 'line', 'document'.")
        if not isinstance(self.shuffle_buffer, int) or self.shuffle_buffer < 1:
            raise ValueError(f"CorpusConfig.shuffle_buffer={self.shuffle_buffer!r}; it must be an int >= 1.")
        if not isinstance(self.docs_per_chunk, int) or self.docs_per_chunk < 1:
            raise ValueError(f"CorpusConfig.docs_per_chunk={self.docs_per_chunk!r}; it must be an int >= 1.")
        if not isinstance(self.seed, int):
            raise ValueError(f"CorpusConfig.seed={self.seed!r}; it must be an int.")


class TokenBatch(NamedTuple):
    """A batch of sequences and the positions that count (for SAE training and metrics)."""

    input_ids: Int64[Tensor, "batch ctx"]
    """Token ids, int64."""
    mask: Bool[Tensor, "batch ctx"]
    """True where a position is used: not among the first ``exclude_first``, not a special token."""


# ---------------------------------------------------------------------------------------------
# Masks


def special_token_ids(tokenizer: Any) -> list[int]:
    """Sorted ids of every special token: ``all_special_ids`` plus added tokens flagged special.

        special_token_ids(tok)  # SmolLM2: [0, 1, ..., 16] (<|endoftext|>, <|im_start|>, <|im_end|>, <repo_name>, ...)
    """
    ids = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
    # SmolLM2 flags 17 added tokens special but lists only 3 in all_special_ids; the other 14
    # (<file_sep>, <jupyter_code>, ...) are control tokens just the same.
    for token_id, added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(added, "special", False):
            ids.add(int(token_id))
    return sorted(ids)


def make_mask(
    input_ids: Int64[Tensor, "batch ctx"],
    tokenizer_or_special_ids: Any,
    exclude_first: int = 1,
    exclude_special: bool = True,
) -> Bool[Tensor, "batch ctx"]:
    """Positions to train and evaluate on: ``False`` at ``t < exclude_first`` and at special tokens.

        mask = make_mask(input_ids, tokenizer)            # position 0 and <|im_end|> etc. excluded
        mask = make_mask(input_ids, [2], exclude_first=0)  # only id 2 excluded
    """
    if input_ids.dim() != 2:
        raise ValueError(f"make_mask: input_ids must be [batch, ctx], got shape {tuple(input_ids.shape)}.")
    if isinstance(exclude_first, bool) or not isinstance(exclude_first, int) or exclude_first < 0:
        raise ValueError(f"make_mask: exclude_first={exclude_first!r}; it must be an int >= 0.")
    mask = torch.ones(input_ids.shape, dtype=torch.bool, device=input_ids.device)
    mask[:, :exclude_first] = False
    if exclude_special:
        if isinstance(tokenizer_or_special_ids, Tensor):
            special = tokenizer_or_special_ids.to(device=input_ids.device, dtype=input_ids.dtype)
        elif hasattr(tokenizer_or_special_ids, "all_special_ids"):
            special = torch.tensor(special_token_ids(tokenizer_or_special_ids), dtype=input_ids.dtype,
                                   device=input_ids.device)
        else:
            special = torch.tensor([int(i) for i in tokenizer_or_special_ids], dtype=input_ids.dtype,
                                   device=input_ids.device)
        if special.numel():
            mask &= ~torch.isin(input_ids, special)
    return mask


# ---------------------------------------------------------------------------------------------
# Documents


def _hash_unit(identity: bytes) -> float:
    """A stable number in [0, 1) for a document identity (independent of Python's hash seed)."""
    return int.from_bytes(hashlib.blake2b(identity, digest_size=8).digest(), "big") / 2.0**64


def _in_split(identity: bytes, cfg: CorpusConfig) -> bool:
    return (_hash_unit(identity) < cfg.eval_fraction) == (cfg.split == "eval")


def _stdlib_dir() -> str:
    return sysconfig.get_paths()["stdlib"]


def _stdlib_doc_ids() -> list[str]:
    """Sorted ids of stdlib documents: relative ``.py`` paths and ``pydoc_data.topics:<key>``."""
    root = _stdlib_dir()
    ids: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in STDLIB_EXCLUDED_DIRS)
        rel_dir = os.path.relpath(dirpath, root)
        for name in filenames:
            rel = os.path.normpath(os.path.join(rel_dir, name)).replace(os.sep, "/")
            if name.endswith(".py") and rel not in STDLIB_EXCLUDED_FILES \
                    and not name.startswith(STDLIB_EXCLUDED_PREFIXES) \
                    and not _is_generated_codec(os.path.join(dirpath, name), rel):
                ids.append(rel)
    ids.extend(STDLIB_TOPICS_PREFIX + key for key in _pydoc_topics())
    return sorted(ids)


def _is_generated_codec(path: str, rel: str) -> bool:
    """encodings/cp1252.py & co.: charmap codecs, mostly 256-entry tables written by gencodec.py
    (~1.4 M characters of \\uXXXX escapes), not human-written text."""
    if not rel.startswith("encodings/"):
        return False
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    return "decoding_table = (" in text or "decoding_map = codecs.make_identity_dict" in text


def _pydoc_topics() -> dict[str, str]:
    try:
        return dict(importlib.import_module("pydoc_data.topics").topics)
    except ImportError:  # some distributions strip pydoc_data; the .py sources still make a corpus
        return {}


def _stdlib_texts(cfg: CorpusConfig, epoch: int) -> Iterator[str]:
    ids = [i for i in _stdlib_doc_ids() if _in_split(i.encode(), cfg)]
    if cfg.shuffle_docs:
        random.Random(cfg.seed + epoch).shuffle(ids)
    root, topics = _stdlib_dir(), None
    for doc_id in ids:
        if doc_id.startswith(STDLIB_TOPICS_PREFIX):
            topics = topics if topics is not None else _pydoc_topics()
            yield topics[doc_id[len(STDLIB_TOPICS_PREFIX):]]
        else:
            with open(os.path.join(root, doc_id), encoding="utf-8", errors="replace") as f:
                yield f.read()


def _resolve_kind(cfg: CorpusConfig) -> str:
    if cfg.source_kind != "auto":
        return cfg.source_kind
    if cfg.source == "stdlib":
        return "stdlib"
    if os.path.exists(cfg.source) or glob.has_magic(cfg.source):
        return "files"
    looks_like_path = cfg.source.startswith(("/", "./", "../", "~")) or \
        os.path.splitext(cfg.source)[1].lower() in FILE_BUILDERS
    if looks_like_path:
        raise CorpusError(f"Corpus path {cfg.source!r} does not exist (cwd: {os.getcwd()}). "
                          "Fix the path, or pass source_kind='hf' if it is an HF dataset name.")
    return "hf"


def _local_files(source: str) -> list[str]:
    """Sorted data files named by a file, a directory (searched recursively) or a glob."""
    expanded = os.path.expanduser(source)
    if os.path.isdir(expanded):
        candidates = glob.glob(os.path.join(expanded, "**", "*"), recursive=True)
    elif glob.has_magic(expanded):
        candidates = glob.glob(expanded, recursive=True)
    elif os.path.isfile(expanded):
        candidates = [expanded]
    else:
        raise CorpusError(f"Corpus path {source!r} does not exist (cwd: {os.getcwd()}). Fix the path.")
    files = sorted(p for p in candidates if os.path.isfile(p) and os.path.splitext(p)[1].lower() in FILE_BUILDERS)
    if not files:
        raise CorpusError(f"Corpus source {source!r} names no readable data file: found "
                          f"{len(candidates)} path(s), none ending in {', '.join(FILE_BUILDERS)}. "
                          "Point it at .txt / .jsonl / .json / .parquet files, or a directory of them.")
    return files


def _describe_files(paths: list[str]) -> str:
    if len(paths) == 1:
        return f"corpus file {paths[0]!r}"
    return f"one of {len(paths)} corpus files ({paths[0]!r} ... {paths[-1]!r})"


def _load_file_rows(paths: list[str], builder: str, cfg: CorpusConfig):
    import datasets  # heavy import; only file and HF sources need it

    for path in paths:
        if os.path.getsize(path) == 0:
            raise CorpusError(f"Corpus file {path!r} is empty. Remove it from the source or give it text.")
    extra = {"sample_by": cfg.txt_sample_by} if builder == "text" else {}
    try:
        with _builder_errors_held_back():
            return datasets.load_dataset(builder, data_files=paths, split="train", streaming=True, **extra)
    except Exception as e:  # datasets raises many types for one cause: an unreadable file
        raise CorpusError(f"{_describe_files(paths)} cannot be read as {builder}: {type(e).__name__}: "
                          f"{str(e).rstrip('.')}. {_FILE_HINTS[builder]}") from e


def _load_hf_rows(cfg: CorpusConfig):
    import datasets

    from .models import _hub_unreachable

    # Streaming reads the hub's files; where its host does not resolve, say so now rather than after
    # ~28 s of retries (measured here).
    unreachable = None if Path(cfg.source).exists() else _hub_unreachable()  # a local dataset folder needs no hub
    if unreachable:
        raise CorpusError(
            f"Could not load HF dataset {cfg.source!r}: the hub is unreachable from here ({unreachable}). Download "
            "the data elsewhere and pass local .txt/.jsonl/.parquet files, or use source='stdlib'.")
    try:
        return datasets.load_dataset(cfg.source, cfg.hf_subset, split=cfg.hf_split, streaming=True)
    except Exception as e:  # network, auth, unknown name or split: all reported the same way
        raise CorpusError(
            f"Could not load HF dataset {cfg.source!r} (subset={cfg.hf_subset!r}, split={cfg.hf_split!r}): "
            f"{type(e).__name__}: {e}. If the hub is unreachable, download the data elsewhere and pass "
            "local .txt/.jsonl/.parquet files, or use source='stdlib'.") from e


def _row_sources(cfg: CorpusConfig, epoch: int) -> Iterator[tuple[str, Iterable[dict]]]:
    """(name for error messages, iterable of row dicts) for file and HF corpora, in stream order."""
    kind = _resolve_kind(cfg)
    if kind == "hf":
        ds = _load_hf_rows(cfg)
        if cfg.shuffle_docs:
            ds = ds.shuffle(seed=cfg.seed + epoch, buffer_size=cfg.shuffle_buffer)
        yield f"HF dataset {cfg.source!r}", ds
        return
    files = _local_files(cfg.source)
    if cfg.shuffle_docs:
        random.Random(cfg.seed + epoch).shuffle(files)
    # One load_dataset call per run of same-format files, not per file: every call costs a
    # download-count request to the hub (~0.1 s each here, where it fails).
    runs: list[list[str]] = []
    for path in files:
        if runs and _builder(runs[-1][0]) == _builder(path):
            runs[-1].append(path)
        else:
            runs.append([path])
    for paths in runs:
        ds = _load_file_rows(paths, _builder(paths[0]), cfg)
        if cfg.shuffle_docs:
            ds = ds.shuffle(seed=cfg.seed + epoch, buffer_size=cfg.shuffle_buffer)
        yield _describe_files(paths), _guarded_rows(ds, paths)


def _builder(path: str) -> str:
    return FILE_BUILDERS[os.path.splitext(path)[1].lower()]


def _guarded_rows(rows: Iterable[dict], paths: list[str]) -> Iterator[dict]:
    """Rows of a streamed file; a parse error (raised lazily, mid-stream) names the file."""
    iterator = iter(rows)
    while True:
        try:
            with _builder_errors_held_back():
                row = next(iterator)
        except StopIteration:
            return
        except Exception as e:  # pyarrow / json raise many types for one cause: a malformed file
            raise CorpusError(f"{_describe_files(paths)} cannot be read: {type(e).__name__}: "
                              f"{str(e).rstrip('.')}. {_FILE_HINTS[_builder(paths[0])]}") from e
        yield row


_FILE_HINTS = {"json": "Check that it is valid JSON Lines (one JSON object per line).",
               "parquet": "Check that it is a complete parquet file.",
               "text": "Check that it is UTF-8 text."}


@contextlib.contextmanager
def _builder_errors_held_back() -> Iterator[None]:
    """datasets' json and parquet builders log their own copy of a read error before raising it;
    the CorpusError raised here says the same with the file's name, so that copy is held back
    (only for the duration of the block: the loggers are left as they were)."""
    loggers = [logging.getLogger(f"datasets.packaged_modules.{b}.{b}") for b in ("json", "parquet")]
    for log in loggers:
        log.addFilter(_below_error)
    try:
        yield
    finally:
        for log in loggers:
            log.removeFilter(_below_error)


def _below_error(record: logging.LogRecord) -> bool:
    return record.levelno < logging.ERROR


def _pick_column(row: dict, cfg: CorpusConfig, where: str) -> tuple[str, bool]:
    """(column, is_pretokenized) for the rows of one source, decided from its first row."""
    columns = list(row)
    if cfg.text_column is not None:
        if cfg.text_column not in row:
            raise CorpusError(f"{where} has no column {cfg.text_column!r} (text_column); its columns are "
                              f"{columns}. Set text_column to one of them.")
        return cfg.text_column, cfg.text_column == "input_ids"
    for name in TEXT_COLUMN_CANDIDATES:
        if name in row and (row[name] is None or isinstance(row[name], str)):
            return name, False
    if "input_ids" in row:
        return "input_ids", True
    raise CorpusError(f"{where} has no text column: its columns are {columns}; tried "
                      f"{list(TEXT_COLUMN_CANDIDATES)} and 'input_ids'. Pass text_column=<name>.")


def iter_documents(cfg: CorpusConfig, epoch: int = 0) -> Iterator[str | list[int]]:
    """Documents of ``cfg.split`` in stream order: strings, or lists of ids for pre-tokenized rows.

        eval_docs = list(iter_documents(CorpusConfig(split="eval")))  # 22 stdlib files and topics (3.11)
        n_chars = sum(map(len, eval_docs))
    """
    if _resolve_kind(cfg) == "stdlib":
        yield from _stdlib_texts(cfg, epoch)
        return
    mode: bool | None = None
    for where, rows in _row_sources(cfg, epoch):
        column = None
        for row in rows:
            if column is None:
                column, pretokenized = _pick_column(row, cfg, where)
                if mode is not None and mode != pretokenized:
                    raise CorpusError(f"{where} is {'pre-tokenized' if pretokenized else 'text'} but earlier "
                                      "files were not; do not mix text and input_ids files in one corpus.")
                mode = pretokenized
            value = row.get(column)
            if value is None:
                continue
            if pretokenized:
                ids = [int(t) for t in value]
                identity = b"ids:" + b",".join(str(t).encode() for t in ids)
                if _in_split(identity, cfg):
                    yield ids
            elif value and _in_split(value.encode("utf-8", "surrogatepass"), cfg):
                yield value


# ---------------------------------------------------------------------------------------------
# The sequence stream


class _StreamStats:
    """Running counts of one stream, for the error raised when it runs dry."""

    def __init__(self) -> None:
        self.docs = 0
        self.tokens = 0
        self.sequences = 0


def _token_id(tokenizer: Any, which: str, why: str) -> int:
    token_id = getattr(tokenizer, f"{which}_token_id", None)
    if token_id is None:
        other = "bos" if which == "eos" else "eos"
        raise CorpusError(f"The tokenizer has no {which.upper()} token, needed for {why}. Set "
                          f"tokenizer.{which}_token, or use separator={other!r} / prepend_bos=False.")
    return int(token_id)


def _tokenize(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    # One batched call: the fast tokenizer parallelises it in Rust (~440k tokens/s on 2 cores for
    # SmolLM2 on stdlib code, ~100x what the trainer consumes).
    return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]


def _sequence_stream(tokenizer: Any, cfg: CorpusConfig, cycle: bool, stats: _StreamStats) -> Iterator[Tensor]:
    """Every [ctx] sequence of the corpus split, in order; endless when ``cycle``."""
    bos = _token_id(tokenizer, "bos", "prepend_bos=True") if cfg.prepend_bos else None
    body = cfg.ctx - (1 if cfg.prepend_bos else 0)
    buffer: list[int] = []
    epoch = 0
    while True:
        docs_before = stats.docs
        pending: list[str] = []
        for doc in iter_documents(cfg, epoch):
            if isinstance(doc, list):
                yield _check_row(doc, cfg, bos, stats)
                stats.docs += 1
                stats.tokens += cfg.ctx
                stats.sequences += 1
                continue
            pending.append(doc)
            if len(pending) >= cfg.docs_per_chunk:
                yield from _pack(tokenizer, cfg, pending, buffer, body, bos, stats)
                pending = []
        if pending:
            yield from _pack(tokenizer, cfg, pending, buffer, body, bos, stats)
        if stats.docs == docs_before:
            raise CorpusError(f"Corpus {cfg.source!r} split {cfg.split!r} holds no documents. The source is "
                              f"empty, or eval_fraction={cfg.eval_fraction} left no document on this side; "
                              "add documents, or change eval_fraction / txt_sample_by.")
        if stats.sequences == 0:
            raise CorpusError(f"Corpus {cfg.source!r} split {cfg.split!r} holds {stats.tokens} tokens, fewer than "
                              f"one sequence of ctx={cfg.ctx}. Add text or lower ctx.")
        if not cycle:
            return
        # Wrapping around keeps the leftover tokens of this epoch: the stream stays one packed
        # sequence of documents, epoch after epoch (reshuffled with seed + epoch when shuffling).
        epoch += 1


def _pack(tokenizer: Any, cfg: CorpusConfig, texts: list[str], buffer: list[int], body: int,
          bos: int | None, stats: _StreamStats) -> Iterator[Tensor]:
    if cfg.separator == "eos":
        sep, before = _token_id(tokenizer, "eos", "separator='eos'"), False
    else:
        sep, before = _token_id(tokenizer, "bos", "separator='bos'"), True
    for ids in _tokenize(tokenizer, texts):
        if not ids:
            continue
        stats.docs += 1
        stats.tokens += len(ids) + 1
        if before:
            buffer.append(sep)
        buffer.extend(ids)
        if not before:
            buffer.append(sep)
        start = 0
        while len(buffer) - start >= body:
            row = buffer[start: start + body] if bos is None else [bos] + buffer[start: start + body]
            start += body
            stats.sequences += 1
            yield torch.tensor(row, dtype=torch.long)
        del buffer[:start]  # once per document: deleting per row would shift a long buffer each time


def _check_row(ids: list[int], cfg: CorpusConfig, bos: int | None, stats: _StreamStats) -> Tensor:
    if len(ids) != cfg.ctx:
        if len(ids) > cfg.ctx and cfg.truncate_rows:
            ids = ids[: cfg.ctx]
        else:
            fix = "pass truncate_rows=True to keep the first ctx tokens, or " if len(ids) > cfg.ctx else ""
            raise CorpusError(f"Pre-tokenized corpus {cfg.source!r}: row {stats.docs} has {len(ids)} tokens but "
                              f"ctx={cfg.ctx}. Pre-tokenized rows are used as they are; {fix}set ctx={len(ids)}.")
    if bos is not None and ids[0] != bos:
        raise CorpusError(f"Pre-tokenized corpus {cfg.source!r}: prepend_bos=True but row {stats.docs} starts with "
                          f"id {ids[0]}, not BOS {bos}. Rows are used as they are: set prepend_bos=False, "
                          "or re-tokenize with BOS.")
    return torch.tensor(ids, dtype=torch.long)


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
    (with ``cycle=True`` it wraps around endlessly, epoch after epoch, without a gap).

    - ``max_tokens``: token budget of the whole run, all ranks together, counted as tokens fed to
      the model: the run covers stream positions ``[0, max_tokens // ctx)``. ``None``: until the
      corpus ends (or forever with ``cycle``). If the corpus split holds fewer sequences than that
      and ``cycle`` is False, raises ``CorpusError`` (saying both numbers) when the stream runs dry.
    - ``rank`` / ``world_size``: data parallelism. Rank r takes positions ``skip + k*world_size + r``;
      shards are disjoint and every rank gets the same number of sequences (a trailing incomplete
      group is dropped), so collective ops never hang on an uneven last step.
    - ``skip_sequences``: resume from global stream position N (sequences already consumed by all
      ranks together, e.g. ``steps * batch_size * world_size``). The budget still counts from 0,
      so a resumed run yields exactly the remainder of the original run. Cost: the skipped prefix
      is re-read and re-tokenized (~440k tokens/s for SmolLM2 on 2 cores; ~1 s per 400k tokens).
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
    stats = _StreamStats()
    stream = _sequence_stream(tokenizer, cfg, cycle, stats)
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
            raise CorpusError(
                f"Corpus {cfg.source!r} split {cfg.split!r} holds {stats.tokens:,} tokens = {stats.sequences:,} "
                f"sequences of ctx={cfg.ctx}, but max_tokens={max_tokens:,} asks for {total:,} sequences "
                f"({total * cfg.ctx:,} tokens). Pass cycle=True to wrap around, or ask for at most "
                f"{stats.sequences * cfg.ctx:,} tokens.")
    if taken:
        yield _make_batch(taken, special, cfg)


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


def describe_corpus(source: str = "stdlib") -> dict[str, Any]:
    """A short description of a corpus source, without tokenizing or downloading anything.

        describe_corpus("stdlib")
        # {'kind': 'stdlib', 'root': '/usr/lib/python3.11', 'files': 662, 'topics': 79, 'documents': 741, 'approx_characters': 10483010}
    """
    kind = _resolve_kind(CorpusConfig(source=source))
    if kind == "stdlib":
        ids = _stdlib_doc_ids()
        py = [i for i in ids if not i.startswith(STDLIB_TOPICS_PREFIX)]
        root = _stdlib_dir()
        chars = sum(os.path.getsize(os.path.join(root, p)) for p in py) + sum(map(len, _pydoc_topics().values()))
        return {"kind": "stdlib", "root": root, "files": len(py), "topics": len(ids) - len(py),
                "documents": len(ids), "approx_characters": chars}
    if kind == "files":
        files = _local_files(source)
        return {"kind": "files", "source": source, "files": len(files),
                "approx_characters": sum(os.path.getsize(p) for p in files)}
    return {"kind": "hf", "source": source, "files": None, "approx_characters": None}
