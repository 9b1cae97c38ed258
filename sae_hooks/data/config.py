"""What a token stream is made of: ``CorpusConfig`` (source, split, order, packing, masks)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SPLITS", "CorpusConfig", "CorpusError"]

SPLITS = ("train", "eval", "all")


class CorpusError(ValueError):
    """A corpus cannot be read or cannot deliver what was asked (the message says how to fix it)."""


@dataclass(frozen=True)
class CorpusConfig:
    """Where tokens come from and how they are ordered, packed and masked.

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
    """Which documents to stream: ``"train"`` or ``"eval"`` (the two sides of a split by a stable
    hash of each document, ``eval_fraction`` of them held out), or ``"all"`` (every document of the
    source, in file order, no hashing: for a file that is already a held-out set)."""

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
    """Number of leading positions masked out of every sequence. Position 0 is an attention sink:
    in SmolLM2-135M its residual norm reaches ~23,000 from layer 12 on, orders of magnitude above
    the other positions, and would dominate SAE training and reconstruction metrics."""

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
    """Stream documents in a seeded order, drawn anew each epoch from ``(seed, epoch)``: stdlib and
    local files by a full permutation of the split's documents (local files are read into memory
    once per epoch for it, about the size of their text), HF datasets by their buffered shuffle
    (``shuffle_buffer`` rows, shard order shuffled too). Off: stored order (stdlib: sorted by path).
    Not for ``split="eval"``: a held-out set keeps one fixed order, so evaluations compare alike."""

    seed: int = 0
    """Seed of the document shuffle."""

    shuffle_buffer: int = 10_000
    """Rows held by the buffered shuffle of HF datasets."""

    docs_per_chunk: int = 64
    """Documents tokenized per batched call of the (fast) tokenizer."""

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source:
            raise ValueError(f"CorpusConfig.source must be a non-empty string, got {self.source!r}; "
                             "use 'stdlib', a local path or glob, or an HF dataset name.")
        if self.source_kind not in ("auto", "stdlib", "files", "hf"):
            raise ValueError(f"CorpusConfig.source_kind={self.source_kind!r}; valid: 'auto', 'stdlib', 'files', 'hf'.")
        if self.split not in SPLITS:
            raise ValueError(f"CorpusConfig.split={self.split!r}; valid: {', '.join(map(repr, SPLITS))}.")
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
        if isinstance(self.shuffle_buffer, bool) or not isinstance(self.shuffle_buffer, int) or self.shuffle_buffer < 1:
            raise ValueError(f"CorpusConfig.shuffle_buffer={self.shuffle_buffer!r}; it must be an int >= 1.")
        if isinstance(self.docs_per_chunk, bool) or not isinstance(self.docs_per_chunk, int) or self.docs_per_chunk < 1:
            raise ValueError(f"CorpusConfig.docs_per_chunk={self.docs_per_chunk!r}; it must be an int >= 1.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"CorpusConfig.seed={self.seed!r}; it must be an int.")
        if not isinstance(self.shuffle_docs, bool):
            raise ValueError(f"CorpusConfig.shuffle_docs={self.shuffle_docs!r}; it must be True or False.")
        if self.shuffle_docs and self.split == "eval":
            raise ValueError("CorpusConfig.shuffle_docs=True with split='eval': the held-out split keeps one fixed "
                             "order so that every evaluation reads the same tokens. Set shuffle_docs=False for it "
                             "(e.g. dataclasses.replace(cfg, split='eval', shuffle_docs=False)).")
