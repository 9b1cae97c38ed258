"""Where documents come from: the standard library, local data files, or an HF dataset.

Each reader hands out documents in the source's stored order — strings, or lists of token ids for
pre-tokenized rows — and knows nothing of splits or shuffling, except that an HF dataset can
only be shuffled by ``datasets`` itself (a buffered shuffle, asked for with ``hf_shuffle_seed``).

- ``"stdlib"``: the running interpreter's standard library — its ``.py`` sources without test
  directories, the machine-generated codec tables of ``encodings/`` and the build-config
  ``_sysconfigdata_*`` (~10.6 M characters on 3.11), and the English documentation in
  ``pydoc_data.topics`` (~0.5 M characters). One document per file / per topic, sorted by id.
- local ``.txt`` / ``.jsonl`` / ``.json`` / ``.parquet`` files, directories or globs of them,
  read through ``datasets`` (a ``.txt`` file yields one document per paragraph by default).
- any other string: a HuggingFace dataset name, streamed with
  ``datasets.load_dataset(name, split=hf_split, streaming=True)``.

    describe_corpus("stdlib")["documents"]   # 741 on 3.11
"""

from __future__ import annotations

import contextlib
import glob
import importlib
import logging
import os
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .config import CorpusConfig, CorpusError

__all__ = [
    "FILE_BUILDERS",
    "STDLIB_EXCLUDED_DIRS",
    "STDLIB_EXCLUDED_FILES",
    "STDLIB_EXCLUDED_PREFIXES",
    "STDLIB_TOPICS_PREFIX",
    "TEXT_COLUMN_CANDIDATES",
    "describe_corpus",
    "read_stdlib_documents",
    "resolve_kind",
    "source_documents",
    "stdlib_doc_ids",
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


def resolve_kind(cfg: CorpusConfig) -> str:
    """``"stdlib"``, ``"files"`` or ``"hf"``: how ``cfg.source`` is read."""
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


# ---------------------------------------------------------------------------------------------
# The standard library


def _stdlib_dir() -> str:
    return sysconfig.get_paths()["stdlib"]


def stdlib_doc_ids() -> list[str]:
    """Sorted ids of stdlib documents: relative ``.py`` paths and ``pydoc_data.topics:<key>``.

        stdlib_doc_ids()[:2]  # ['__future__.py', '__hello__.py']
    """
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


def read_stdlib_documents(doc_ids: Iterable[str]) -> Iterator[str]:
    """The text of each stdlib document id, read lazily in the order given.

        first = next(read_stdlib_documents(["os.py"]))
    """
    root, topics = _stdlib_dir(), None
    for doc_id in doc_ids:
        if doc_id.startswith(STDLIB_TOPICS_PREFIX):
            topics = topics if topics is not None else _pydoc_topics()
            yield topics[doc_id[len(STDLIB_TOPICS_PREFIX):]]
        else:
            with open(os.path.join(root, doc_id), encoding="utf-8", errors="replace") as f:
                yield f.read()


# ---------------------------------------------------------------------------------------------
# Local files and HF datasets


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

    from ..models import _hub_unreachable

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


def _row_sources(cfg: CorpusConfig, hf_shuffle_seed: int | None) -> Iterator[tuple[str, Iterable[dict]]]:
    """(name for error messages, iterable of row dicts) for file and HF corpora, in stored order."""
    if resolve_kind(cfg) == "hf":
        ds = _load_hf_rows(cfg)
        if hf_shuffle_seed is not None:
            ds = ds.shuffle(seed=hf_shuffle_seed, buffer_size=cfg.shuffle_buffer)
        yield f"HF dataset {cfg.source!r}", ds
        return
    # One load_dataset call per run of same-format files, not per file: every call costs a
    # download-count request to the hub (~0.1 s each here, where it fails).
    runs: list[list[str]] = []
    for path in _local_files(cfg.source):
        if runs and _builder(runs[-1][0]) == _builder(path):
            runs[-1].append(path)
        else:
            runs.append([path])
    for paths in runs:
        yield _describe_files(paths), _guarded_rows(_load_file_rows(paths, _builder(paths[0]), cfg), paths)


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


def source_documents(cfg: CorpusConfig, hf_shuffle_seed: int | None = None) -> Iterator[str | list[int]]:
    """Every document of a file or HF source in stored order (HF: buffer-shuffled with
    ``hf_shuffle_seed`` when given): non-empty strings, or lists of ids for pre-tokenized rows.

        n_docs = sum(1 for _ in source_documents(CorpusConfig(source="data/*.jsonl")))
    """
    mode: bool | None = None
    for where, rows in _row_sources(cfg, hf_shuffle_seed):
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
                yield [int(t) for t in value]
            elif value:
                yield value


def describe_corpus(source: str = "stdlib") -> dict[str, Any]:
    """A short description of a corpus source, without tokenizing or downloading anything.

        describe_corpus("stdlib")
        # {'kind': 'stdlib', 'root': '/usr/lib/python3.11', 'files': 662, 'topics': 79, 'documents': 741, 'approx_characters': 10483010}
    """
    kind = resolve_kind(CorpusConfig(source=source))
    if kind == "stdlib":
        ids = stdlib_doc_ids()
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
