"""Activations on disk: write them once (``write_cache``), train any number of SAEs from them (``ActivationCache``).

A sweep over SAE settings chosen after a first run would otherwise rerun the language model for
every SAE; on SmolLM2 the forward to layer 6 costs more than a TopK step, so reading activations
back is the cheaper half. The cache holds exactly what a live run feeds its SAEs: the rows at the
evaluated positions (position 0, the attention sink, and special tokens excluded) of the same
token stream, computed by the same stopped forward with the same number of sequences per forward.
Training from it (``RunConfig.from_cache``, ``sae-hooks train --from-cache DIR``) therefore gives
bitwise the SAEs of a live run with the same token stream, model dtype and seed.

A cache is a folder:

- ``shard_00000.safetensors``, ...: fixed-size shards of ``shard_sequences`` sequences each (the last
  may be shorter), each holding ``input_ids`` [seqs, ctx] (int32), ``mask`` [seqs, ctx] (bool; False at
  the excluded positions and at rows dropped as NaN/inf) and one ``acts.<hook>`` [rows, d] per hook
  point (fp32 or bf16), row i being the i-th True position of ``mask`` in row-major order;
- ``manifest.json``: the settings (model, backend, hooks and widths, model and storage dtype, ctx,
  corpus, document order, token budget), the special token ids and excluded leading positions, the
  activation-norm statistics per hook point, the sae_hooks version and git commit, and per shard its
  sequences, rows, size in bytes and sha256.

Every shard is written atomically (a temporary file renamed into place) before the manifest lists
it, and the manifest itself is replaced atomically: after a crash, a kill or a full disk the folder
holds only whole shards that the manifest lists. Running the same ``sae-hooks cache`` command again
continues after the last listed shard and ends with the same files as an uninterrupted run (shard
boundaries fall on LM-batch boundaries, so every forward sees the same batch). Memory: one shard.

Reading memory-maps the shards (``safetensors.safe_open``) and yields the same LM batches a live run
would (``batches``), sharded over torchrun ranks the way the live stream is; the run's seeded block
shuffle (``buffer.shuffled``) then mixes them exactly as it mixes live batches.

    $ sae-hooks cache --hook resid_post.6 --tokens 400000 --out acts/l6 --model-dtype bf16
    $ sae-hooks train --from-cache acts/l6 --tokens 400000 --arch topk --d-sae 4608 --out runs/l6
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from ._io import atomic_write_bytes, atomic_write_text
from .activations import NONFINITE_POLICIES, NonFiniteActivations
from .data import CorpusConfig, CorpusError, iter_batches, special_token_ids
from .hardware import MODEL_DTYPES, resolve_model_dtype
from .hookpoints import parse_hook
from .models import DEFAULT_MODEL

__all__ = ["ActivationCache", "CacheConfig", "CacheError", "CacheResult", "CachedBatch", "write_cache"]

FORMAT = "sae-hooks activation cache"
VERSION = 1
MANIFEST = "manifest.json"
STORAGE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
BACKENDS = ("hf", "tl")
PROGRESS = ("auto", "on", "off")
VERIFY = ("size", "sha256")


class CacheError(ValueError):
    """A folder is not a usable cache, or not the cache a run asks for (the message says how to fix it)."""


@dataclass(frozen=True)
class CacheConfig:
    """What to cache and how. The fields down to ``shard_mb`` decide the cache's content and must match
    to continue an interrupted cache; the rest decide how it runs.

        cfg = CacheConfig(hooks=("resid_post.6",), tokens=400_000, out="acts/l6")
    """

    model: str = DEFAULT_MODEL
    """Model name or local HF folder."""
    backend: str = "hf"
    """hf = transformers, tl = TransformerLens (TransformerBridge); a run training from the cache must use the same."""
    corpus: str = "stdlib"
    """'stdlib', local txt/jsonl/parquet path or glob, or an HF dataset name (its train side, as a live run)."""
    hooks: tuple[str, ...] = ("resid_post.6",)
    """Hook points to store (the forward stops after the deepest one)."""
    tokens: int = 1_000_000
    """Tokens fed to the model (positions excluded from training, e.g. position 0, are not stored)."""
    ctx: int = 128
    """Context length of each sequence."""
    batch_tokens: int = 4096
    """Tokens per LM forward; a live run with the same batch_tokens sees bitwise the same activations."""
    model_dtype: str = "auto"
    """LM dtype (auto = bf16 where the device multiplies bf16 natively, else fp32, as `sae-hooks train` resolves
    it); a run training from the cache must use the same (its --dtype)."""
    dtype: str = "fp32"
    """Storage dtype: fp32, or bf16 (half the disk; exact when the model runs in bf16)."""
    shuffle: bool = True
    """Shuffle the documents, seeded by seed (as a live run with the same seed does)."""
    seed: int = 0
    """Seed of the document order."""
    cycle: bool = False
    """Wrap around the corpus if it holds fewer tokens than asked for."""
    nonfinite: str = "skip"
    """NaN/inf activation rows: skip (dropped at every hook, counted in the manifest; stops past 1%) or raise."""
    shard_mb: int = 128
    """Target shard size in MB (rounded to whole LM batches); one shard is held in memory while writing."""

    out: str = "acts/cache"
    """Cache folder."""
    overwrite: bool = False
    """Replace a cache with other settings in out (deletes only cache files)."""
    device: str = "cpu"
    """cpu or cuda."""
    progress: str = "auto"
    """tqdm progress bar: auto (when stderr is a terminal), on, off."""

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "backend": BACKENDS, "model_dtype": MODEL_DTYPES, "dtype": tuple(STORAGE_DTYPES), "nonfinite": NONFINITE_POLICIES,
        "progress": PROGRESS}
    NOT_FINGERPRINTED: ClassVar[tuple[str, ...]] = ("out", "overwrite", "device", "progress")

    def __post_init__(self) -> None:
        v = self.hooks
        object.__setattr__(self, "hooks", (v,) if isinstance(v, str) else tuple(v))
        object.__setattr__(self, "out", os.fspath(self.out))
        for name, lo in (("tokens", 1), ("ctx", 2), ("batch_tokens", 1), ("seed", 0), ("shard_mb", 1)):
            x = getattr(self, name)
            if isinstance(x, bool) or not isinstance(x, int) or x < lo:
                raise ValueError(f"CacheConfig.{name}={x!r}; it must be an int >= {lo}.")
        for name, valid in self.CHOICES.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"CacheConfig.{name}={getattr(self, name)!r}; valid: {', '.join(valid)}.")
        for name in ("shuffle", "cycle", "overwrite"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"CacheConfig.{name}={getattr(self, name)!r}; it must be True or False.")
        for name in ("model", "corpus", "out", "device"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"CacheConfig.{name}={getattr(self, name)!r}; it must be a non-empty string.")
        if not self.hooks:
            raise ValueError("CacheConfig.hooks needs at least one hook point (--hook resid_post.6).")
        names = [str(parse_hook(h)) for h in self.hooks]
        if len(set(names)) != len(names):
            raise ValueError(f"CacheConfig.hooks={list(self.hooks)} names the same hook point twice ({names}).")
        if self.batch_tokens < self.ctx:
            raise ValueError(f"CacheConfig.batch_tokens={self.batch_tokens} is less than one sequence of ctx={self.ctx}. "
                             f"Use batch_tokens >= {self.ctx}.")
        if self.tokens < self.ctx:
            raise ValueError(f"CacheConfig.tokens={self.tokens} is less than one sequence of ctx={self.ctx}.")

    def fingerprint(self) -> dict[str, Any]:
        """The settings that decide the cache's content, hooks in canonical spelling (JSON-able)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in self.NOT_FINGERPRINTED}
        out["hooks"] = [str(parse_hook(h)) for h in self.hooks]
        out["model_dtype"] = self.resolved_model_dtype()
        return out

    def resolved_model_dtype(self) -> str:
        """``model_dtype`` with ``auto`` resolved for ``device`` (bf16 where it multiplies bf16 natively, else fp32)."""
        return resolve_model_dtype(self.model_dtype, self.device)


@dataclass(frozen=True)
class CacheResult:
    """What ``write_cache`` did (the ``--json`` object of ``sae-hooks cache``)."""

    out: str
    """Cache folder."""
    hooks: tuple[str, ...]
    """Canonical hook points stored."""
    shards: int
    """Shards in the cache."""
    sequences: int
    """Sequences cached (tokens fed to the model = sequences × ctx)."""
    tokens: int
    """Tokens fed to the model."""
    rows: int
    """Activation rows stored per hook point (the evaluated positions)."""
    bytes: int
    """Size of the shards on disk."""
    mb_per_million_tokens_per_hook: float
    """Disk use per million tokens fed to the model and per hook point, MB (10^6 bytes)."""
    resumed_from_sequence: int
    """Where this call started (0 for a fresh cache; the sequences already cached when continuing)."""
    seconds: float
    """Wall time of this call (model loading excluded)."""
    tokens_per_s: float
    """Tokens cached per second in this call."""
    nonfinite_rows_skipped: int
    """Rows dropped for NaN/inf, whole cache."""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hooks"] = list(self.hooks)
        return d


class CachedBatch(NamedTuple):
    """The activation rows of one LM batch read back from a cache (what ``buffer.shuffled`` takes)."""

    acts: dict[str, Float[Tensor, "rows d"]]
    """Rows per canonical hook point, fp32."""
    tokens: int
    """Rows (equal for every hook)."""
    sequences: int
    """Global stream position after this batch: sequences consumed by all ranks together."""
    nonfinite_rows: int
    """Always 0: NaN/inf rows were dropped when the cache was written (counted in its manifest)."""


# ---- writing ------------------------------------------------------------------------------------


def _commit() -> str | None:
    """The git commit of the sae_hooks source, when it runs from a checkout (None otherwise)."""
    try:
        out = subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _shard_name(i: int) -> str:
    return f"shard_{i:05d}.safetensors"


def _is_ours(name: str) -> bool:
    return name == MANIFEST or (name.startswith("shard_") and name.endswith(".safetensors")) or \
        (name.startswith(".") and name.endswith(".tmp") and (name[1:].startswith("shard_") or name[1:].startswith(MANIFEST)))


def _disk_full(e: OSError, what: str, folder: Path, shards: int, sequences: int, ctx: int) -> OSError:
    return OSError(e.errno, f"No space left on device while writing {what} in {folder}: the {shards} shard(s) listed in "
                            f"{MANIFEST} ({sequences * ctx:,} tokens) are complete and kept, nothing half-written. Free "
                            "some space (or choose --out on another disk) and run the same command again to continue.")


def _prepare_folder(cfg: CacheConfig) -> dict[str, Any] | None:
    """The manifest of a cache to continue (same settings), or None for a fresh one; refuses what it must not touch."""
    folder = Path(cfg.out)
    if folder.exists() and not folder.is_dir():
        raise CacheError(f"--out {folder} is a file, not a folder. Choose another --out.")
    if not folder.exists():
        folder.mkdir(parents=True)
        return None
    names = [p.name for p in folder.iterdir()]
    foreign = sorted(n for n in names if not _is_ours(n))
    if foreign:
        raise CacheError(f"--out {folder} holds files that are not an activation cache ({', '.join(foreign[:5])}"
                         f"{', ...' if len(foreign) > 5 else ''}). Choose an empty or new folder for the cache.")
    for n in names:  # temporaries of a write that was killed: never listed, never read
        if n.startswith(".") and n.endswith(".tmp"):
            (folder / n).unlink()
    if MANIFEST not in names:
        for n in names:  # shards without a manifest never became a cache
            if n.startswith("shard_"):
                (folder / n).unlink()
        return None
    manifest = _read_manifest(folder)
    if manifest["settings"] == cfg.fingerprint():
        return manifest
    if not cfg.overwrite:
        diff = {k: (manifest["settings"].get(k), v) for k, v in cfg.fingerprint().items() if manifest["settings"].get(k) != v}
        listing = "; ".join(f"{k}: cache {a!r}, asked {b!r}" for k, (a, b) in sorted(diff.items()))
        raise CacheError(f"--out {folder} holds a cache with other settings ({listing}). Use another --out, the same "
                         "settings to continue it, or --overwrite to replace it (deletes only cache files).")
    for n in names:
        if _is_ours(n):
            (folder / n).unlink()
    return None


def _norm_sums(rows: Tensor) -> dict[str, float]:
    norms = rows.double().norm(dim=-1)
    return {"rows": int(norms.numel()), "sum_norm": float(norms.sum()), "sum_sq_norm": float(norms.pow(2).sum()),
            "max_norm": float(norms.max()) if norms.numel() else 0.0}


def _norm_stats(shards: list[dict[str, Any]], hooks: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per hook: rows, mean / RMS / max activation norm over every cached row (summed shard by shard, in order)."""
    out = {}
    for h in hooks:
        n = sum(s["norms"][h]["rows"] for s in shards)
        s1 = sum(s["norms"][h]["sum_norm"] for s in shards)
        s2 = sum(s["norms"][h]["sum_sq_norm"] for s in shards)
        out[h] = {"rows": n, "mean_norm": s1 / n if n else None, "rms_norm": math.sqrt(s2 / n) if n else None,
                  "max_norm": max((s["norms"][h]["max_norm"] for s in shards), default=None)}
    return out


def write_cache(cfg: CacheConfig, *, on_shard: Callable[[int], None] | None = None) -> CacheResult:
    """Run the model over ``cfg``'s token stream and store the activations of ``cfg.hooks`` in ``cfg.out``.

    Continues an interrupted cache with the same settings (a complete one is returned as it is);
    refuses a folder with another cache (unless ``overwrite``) or with other files. ``on_shard(i)`` is
    called after shard ``i`` is written and listed. Raises ``OSError`` (ENOSPC) on a full disk with the
    completed shards kept and the manifest consistent.

        result = write_cache(CacheConfig(hooks=("resid_post.6",), tokens=400_000, out="acts/l6"))
    """
    from .models import load_model

    if not isinstance(cfg, CacheConfig):
        raise TypeError(f"write_cache() takes a CacheConfig, got {type(cfg).__name__}.")
    folder = Path(cfg.out)
    manifest = _prepare_folder(cfg)
    if manifest is not None and manifest["complete"]:
        return _result(folder, manifest, manifest["sequences"], 0.0, 0)
    adapter = load_model(cfg.model, backend=cfg.backend, dtype=cfg.resolved_model_dtype(), device=cfg.device)
    names = [adapter.canonical(h) for h in cfg.hooks]
    widths = {h: adapter.width(h) for h in names}
    store = STORAGE_DTYPES[cfg.dtype]
    batch_seqs = cfg.batch_tokens // cfg.ctx
    total = cfg.tokens // cfg.ctx
    row_bytes = cfg.ctx * sum(widths.values()) * store.itemsize
    # Whole LM batches per shard: a continued cache then runs the same forwards as an uninterrupted one.
    shard_seqs = max(1, (cfg.shard_mb * 10**6 // row_bytes) // batch_seqs) * batch_seqs
    corpus = CorpusConfig(source=cfg.corpus, ctx=cfg.ctx, shuffle_docs=cfg.shuffle, seed=cfg.seed)
    if manifest is None:
        manifest = {"format": FORMAT, "version": VERSION, "settings": cfg.fingerprint(), "complete": False,
                    "model": cfg.model, "backend": cfg.backend, "hooks": names, "widths": widths, "ctx": cfg.ctx,
                    "model_dtype": cfg.resolved_model_dtype(), "dtype": cfg.dtype, "batch_sequences": batch_seqs,
                    "shard_sequences": shard_seqs, "sequences_asked": total,
                    "corpus": {"source": cfg.corpus, "split": corpus.split, "shuffle": cfg.shuffle, "seed": cfg.seed,
                               "cycle": cfg.cycle},
                    "excluded_positions": {"first": corpus.exclude_first, "special_tokens": corpus.exclude_special,
                                           "special_token_ids": special_token_ids(adapter.tokenizer),
                                           "nonfinite_rows": "dropped (mask False), counted per shard"},
                    "sae_hooks_version": _version(), "commit": _commit(), "python": sys.version.split()[0],
                    "torch": torch.__version__, "sequences": 0, "rows": 0, "shards": [], "norms": {}}
    elif manifest["shard_sequences"] != shard_seqs or manifest["widths"] != widths:
        raise CacheError(f"{folder}: the cache was started with shards of {manifest['shard_sequences']} sequences and "
                         f"widths {manifest['widths']}, this model gives {shard_seqs} and {widths}. Continue it with the "
                         "same model, or --overwrite.")
    start = int(manifest["sequences"])
    batches = iter_batches(adapter.tokenizer, corpus, batch_seqs, max_tokens=cfg.tokens, cycle=cfg.cycle,
                           skip_sequences=start, max_positions=adapter.max_positions)
    bar = _bar(cfg.progress, total * cfg.ctx, start * cfg.ctx)
    t0, seen = time.perf_counter(), 0
    buf_ids: list[Tensor] = []
    buf_mask: list[Tensor] = []
    buf_rows: dict[str, list[Tensor]] = {h: [] for h in names}
    skipped = sum(s["nonfinite_rows"] for s in manifest["shards"])
    seen_rows = manifest["rows"] + skipped
    try:
        for ids, mask in batches:
            with torch.inference_mode():
                captured = adapter.capture(ids, names, stop=True)
            keep = mask.to(next(iter(captured.values())).device)
            rows = {h: captured[h][keep] for h in names}  # [rows, d], row-major over [batch, ctx]
            finite = torch.ones(int(keep.sum()), dtype=torch.bool, device=keep.device)
            for r in rows.values():
                finite &= torch.isfinite(r).all(-1)
            n_bad = int((~finite).sum())
            seen_rows += finite.numel()
            if n_bad:
                where = f"stream sequences {start + seen}..{start + seen + ids.shape[0] - 1}"
                if cfg.nonfinite == "raise" or skipped + n_bad > 0.01 * seen_rows:
                    raise NonFiniteActivations(f"{n_bad} activation rows are NaN/inf at {names} ({where}). Run the model "
                                               "in fp32/bf16 rather than fp16; nonfinite='skip' drops up to 1% of rows.")
                skipped += n_bad
                rows = {h: r[finite] for h, r in rows.items()}
                mask = mask.clone()
                mask[mask.clone()] = finite.cpu()  # dropped rows count as excluded positions
            buf_ids.append(ids.to(torch.int32).cpu())
            buf_mask.append(mask.cpu())
            for h in names:
                # The live stream casts with .float(); fp32 storage keeps exactly that, bf16 the model's own rows.
                buf_rows[h].append((rows[h].float() if store == torch.float32 else rows[h].to(store)).cpu())
            seen += ids.shape[0]
            if bar is not None:
                bar.update(ids.shape[0] * cfg.ctx)
            if sum(t.shape[0] for t in buf_ids) >= shard_seqs:
                _flush(folder, manifest, buf_ids, buf_mask, buf_rows, names, n_bad_total=skipped, ctx=cfg.ctx)
                if on_shard is not None:
                    on_shard(len(manifest["shards"]) - 1)
        if buf_ids:
            _flush(folder, manifest, buf_ids, buf_mask, buf_rows, names, n_bad_total=skipped, ctx=cfg.ctx)
            if on_shard is not None:
                on_shard(len(manifest["shards"]) - 1)
        manifest["complete"] = True
        _write_manifest(folder, manifest, cfg.ctx)
    except CorpusError as e:
        raise CorpusError(f"{e} The {len(manifest['shards'])} shard(s) written so far are kept in {folder}; rerun with "
                          "--cycle or a larger corpus (the same --out continues the cache only with the same settings; "
                          "use --overwrite after changing them).") from None
    finally:
        if bar is not None:
            bar.close()
    return _result(folder, manifest, start, time.perf_counter() - t0, seen)


def _flush(folder: Path, manifest: dict[str, Any], buf_ids: list[Tensor], buf_mask: list[Tensor],
           buf_rows: dict[str, list[Tensor]], names: Sequence[str], *, n_bad_total: int, ctx: int) -> None:
    """Write the buffered sequences as the next shard, then list it in the manifest (both atomically)."""
    from safetensors.torch import save

    i = len(manifest["shards"])
    ids, mask = torch.cat(buf_ids), torch.cat(buf_mask)  # [seqs, ctx]
    tensors = {"input_ids": ids, "mask": mask}
    for h in names:
        tensors[f"acts.{h}"] = torch.cat(buf_rows[h]).contiguous()
    buf_ids.clear()
    buf_mask.clear()
    for h in names:
        buf_rows[h].clear()
    first = int(manifest["sequences"])
    # One metadata key: safetensors writes several in hash-map order, and equal shards must be equal bytes.
    blob = save(tensors, metadata={"sae_hooks": json.dumps({"format": FORMAT, "shard": i, "first_sequence": first})})
    rows = int(mask.sum())
    before = sum(s["nonfinite_rows"] for s in manifest["shards"])
    entry = {"file": _shard_name(i), "first_sequence": first, "sequences": int(ids.shape[0]), "rows": rows,
             "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest(), "nonfinite_rows": n_bad_total - before,
             "norms": {h: _norm_sums(tensors[f"acts.{h}"]) for h in names}}
    del tensors
    try:
        atomic_write_bytes(folder / entry["file"], blob)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full(e, entry["file"], folder, i, first, ctx) from None
        raise
    del blob
    manifest["shards"].append(entry)
    manifest["sequences"] = first + entry["sequences"]
    manifest["rows"] += rows
    try:
        _write_manifest(folder, manifest, ctx)
    except OSError:
        manifest["shards"].pop()  # the manifest on disk is the previous one: keep the object equal to it
        manifest["sequences"], manifest["rows"] = first, manifest["rows"] - rows
        raise


def _write_manifest(folder: Path, manifest: dict[str, Any], ctx: int) -> None:
    manifest["norms"] = _norm_stats(manifest["shards"], manifest["hooks"])
    manifest["tokens"] = manifest["sequences"] * ctx
    manifest["bytes"] = sum(s["bytes"] for s in manifest["shards"])
    try:
        atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1))
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            n = len(manifest["shards"]) - 1
            raise _disk_full(e, MANIFEST, folder, n, sum(s["sequences"] for s in manifest["shards"][:n]), ctx) from None
        raise


def _result(folder: Path, manifest: dict[str, Any], start: int, seconds: float, seen: int) -> CacheResult:
    ctx, hooks = manifest["ctx"], tuple(manifest["hooks"])
    tokens = manifest["sequences"] * ctx
    size = sum(s["bytes"] for s in manifest["shards"])
    return CacheResult(str(folder), hooks, len(manifest["shards"]), manifest["sequences"], tokens, manifest["rows"], size,
                       round(size / 1e6 / (tokens / 1e6) / len(hooks), 2) if tokens else 0.0, start, round(seconds, 2),
                       round(seen * ctx / seconds, 1) if seconds > 0 else 0.0,
                       sum(s["nonfinite_rows"] for s in manifest["shards"]))


def _version() -> str:
    from . import __version__

    return __version__


def _bar(mode: str, total_tokens: int, start_tokens: int):
    """A tqdm bar over tokens fed to the model, or None (``auto``: when stderr is a terminal)."""
    if not (mode == "on" or (mode == "auto" and sys.stderr.isatty())):
        return None
    from tqdm import tqdm

    return tqdm(total=total_tokens, initial=start_tokens, unit="tok", unit_scale=True, dynamic_ncols=True,
                desc="caching")


# ---- reading ------------------------------------------------------------------------------------


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CacheError(f"{path} is not valid JSON ({e}); the folder is not a usable activation cache. Write it again "
                         "with sae-hooks cache --overwrite.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CacheError(f"{path} is not the manifest of an activation cache (no format {FORMAT!r}). Write a cache with "
                         "sae-hooks cache --out DIR and pass that DIR.")
    if manifest.get("version") != VERSION:
        raise CacheError(f"{path} is a cache of format version {manifest.get('version')}; this sae_hooks reads version "
                         f"{VERSION}. Write it again with this version (sae-hooks cache --overwrite).")
    return manifest


class ActivationCache:
    """A cache written by ``write_cache``, opened for reading (shards memory-mapped on demand).

    Opening checks the manifest and that every shard is on disk with the size it lists
    (``verify="sha256"`` also checks each shard's hash, reading the whole cache once).

        cache = ActivationCache("acts/l6")
        cache.check_run(model="smollm2-135m-instruct", hooks=["resid_post.6"], model_dtype="bf16", ctx=128)
        for b in cache.batches(["resid_post.6"], batch_size=32): b.acts["resid_post.6"]   # [rows, 576] fp32
    """

    def __init__(self, path: str | os.PathLike, *, verify: str = "size"):
        if verify not in VERIFY:
            raise ValueError(f"ActivationCache: verify={verify!r}; valid: {', '.join(VERIFY)}.")
        self.path = Path(path)
        if not self.path.is_dir():
            raise CacheError(f"Activation cache {self.path}: no such folder. Write one with sae-hooks cache --out "
                             f"{self.path} (or pass the folder a cache was written to).")
        if not (self.path / MANIFEST).is_file():
            raise CacheError(f"{self.path} is not an activation cache: it has no {MANIFEST}. Write one with sae-hooks "
                             f"cache --out {self.path} ... (or pass the folder a cache was written to).")
        self.manifest = m = _read_manifest(self.path)
        if not m["complete"]:
            raise CacheError(f"The activation cache {self.path} is incomplete: {m['sequences'] * m['ctx']:,} of "
                             f"{m['sequences_asked'] * m['ctx']:,} tokens written (it was interrupted). Run the same "
                             "sae-hooks cache command again to finish it.")
        for s in m["shards"]:
            f = self.path / s["file"]
            if not f.is_file():
                raise CacheError(f"Shard {s['file']} of the activation cache {self.path} is missing. Write the cache "
                                 "again (sae-hooks cache --overwrite).")
            size = f.stat().st_size
            if size != s["bytes"]:
                raise CacheError(f"Shard {s['file']} of the activation cache {self.path} is {size:,} bytes on disk but "
                                 f"{s['bytes']:,} in the manifest: it is truncated or damaged. Write the cache again "
                                 "(sae-hooks cache --overwrite).")
            if verify == "sha256":
                h = hashlib.sha256()
                with open(f, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 24), b""):
                        h.update(chunk)
                if h.hexdigest() != s["sha256"]:
                    raise CacheError(f"Shard {s['file']} of the activation cache {self.path} does not match its sha256 "
                                     "in the manifest: it is damaged. Write the cache again (sae-hooks cache --overwrite).")
        self.hooks: tuple[str, ...] = tuple(m["hooks"])
        self.ctx: int = int(m["ctx"])
        self.sequences: int = int(m["sequences"])
        self._starts = [s["first_sequence"] for s in m["shards"]]
        self._open: dict[int, Any] = {}
        self._offsets: dict[int, Tensor] = {}
        self._order: tuple[tuple[int, int] | None, Tensor | None] = (None, None)

    @property
    def tokens(self) -> int:
        """Tokens fed to the model (sequences × ctx)."""
        return self.sequences * self.ctx

    def __repr__(self) -> str:
        m = self.manifest
        return (f"ActivationCache({str(self.path)!r}: {m['model']} [{m['backend']}, {m['model_dtype']}], hooks "
                f"{list(self.hooks)}, {self.tokens:,} tokens, {m['dtype']}, {len(m['shards'])} shards)")

    def check_run(self, *, model: str, hooks: Sequence[str], model_dtype: str, ctx: int, backend: str = "hf",
                  tokens: int | None = None, cycle: bool = False, flag: str = "--from-cache") -> None:
        """Refuse, saying what differs, a run that asks for another model, backend, hook point, model dtype or
        context than the cache holds, or for more tokens than it holds without ``cycle``."""
        m, where = self.manifest, f"{flag} {self.path}"
        if model != m["model"]:
            raise CacheError(f"{where}: the cache holds activations of model {m['model']!r}, the run asks for {model!r}. "
                             f"Pass --model {m['model']} or a cache of that model.")
        if backend != m["backend"]:
            raise CacheError(f"{where}: the cache was written with backend {m['backend']!r}, the run asks for "
                             f"{backend!r}. Pass --backend {m['backend']} or a cache written with that backend.")
        missing = [h for h in (str(parse_hook(h)) for h in hooks) if h not in self.hooks]
        if missing:
            raise CacheError(f"{where}: the cache holds hook point(s) {', '.join(self.hooks)}, not {', '.join(missing)}. "
                             f"Train at those hook points, or write a cache with --hook {' --hook '.join(missing)}.")
        if model_dtype != m["model_dtype"]:
            raise CacheError(f"{where}: the cache's activations come from the model in {m['model_dtype']}, the run asks "
                             f"for dtype {model_dtype}. Pass --dtype {m['model_dtype']} or a cache written with "
                             f"--model-dtype {model_dtype}.")
        if ctx != self.ctx:
            raise CacheError(f"{where}: the cache's sequences have ctx={self.ctx}, the run asks for ctx={ctx}. Pass "
                             f"--ctx {self.ctx}.")
        if tokens is not None and tokens // ctx > self.sequences and not cycle:
            raise CacheError(f"{where}: the cache holds {self.tokens:,} tokens ({self.sequences:,} sequences of "
                             f"ctx={ctx}) but the run asks for {tokens:,}. Pass --tokens {self.tokens} or fewer, or "
                             "--cycle to read the cache again (each later pass reshuffled when it was written with "
                             "shuffling).")

    def _shard(self, i: int):
        if i not in self._open:
            from safetensors import safe_open

            self._open.clear()  # one shard mapped at a time: reads go forward through the cache
            self._offsets.clear()
            f = safe_open(str(self.path / self.manifest["shards"][i]["file"]), framework="pt")
            counts = f.get_tensor("mask").sum(1)  # rows per sequence
            self._offsets[i] = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
            self._open[i] = f
        return self._open[i], self._offsets[i]

    def rows(self, hooks: Sequence[str], first: int, stop: int) -> dict[str, Tensor]:
        """The rows of sequences ``first .. stop - 1`` (cache numbering) per hook point, fp32 [rows, d].

            x = cache.rows(["resid_post.6"], 0, 32)["resid_post.6"]
        """
        parts: dict[str, list[Tensor]] = {h: [] for h in hooks}
        s = first
        while s < stop:
            i = _bisect(self._starts, s)
            f, off = self._shard(i)
            base = self._starts[i]
            end = min(stop, base + self.manifest["shards"][i]["sequences"])
            lo, hi = int(off[s - base]), int(off[end - base])
            for h in hooks:
                parts[h].append(f.get_slice(f"acts.{h}")[lo:hi])
            s = end
        return {h: (p[0] if len(p) == 1 else torch.cat(p)).float() for h, p in parts.items()}

    def batches(self, hooks: Sequence[str], batch_size: int, *, max_sequences: int | None = None, cycle: bool = False,
                rank: int = 0, world_size: int = 1, skip_sequences: int = 0,
                reshuffle_seed: int | None = None) -> Iterator[CachedBatch]:
        """The LM batches a live run with the same stream would feed its SAEs: ``batch_size`` sequences each,
        rank ``rank`` taking global sequences ``skip + k*world_size + rank`` (as ``data.iter_batches`` does),
        up to ``max_sequences`` in all ranks together (default: the whole cache); ``cycle`` rereads the cache
        past its end. The first pass is always in cache order; with ``reshuffle_seed`` every later pass reads
        the shards in another order and, within each shard, its LM batches in another order (a function of
        the seed and the pass, see ``epoch_order``), as a live run reshuffles its documents per epoch.

            for b in shuffled(cache.batches(["resid_post.6"], 32), blocks=4, seed=0): trainer.step(b.acts)
        """
        names = [str(parse_hook(h)) for h in hooks]
        missing = [h for h in names if h not in self.hooks]
        if missing:
            raise CacheError(f"{self.path}: the cache holds hook point(s) {', '.join(self.hooks)}, not {', '.join(missing)}.")
        total = self.sequences if max_sequences is None else max_sequences
        if total > self.sequences and not cycle:
            raise CorpusError(f"The activation cache {self.path} holds {self.sequences:,} sequences; "
                              f"{total:,} were asked for. Ask for fewer, or pass cycle=True (--cycle).")
        if not 0 <= rank < world_size:
            raise ValueError(f"ActivationCache.batches: rank={rank} is not in [0, world_size={world_size}).")
        return self._batches(names, batch_size, total, rank, world_size, skip_sequences, reshuffle_seed)

    def epoch_order(self, seed: int, epoch: int) -> Tensor:
        """Cache sequence read at each position of pass ``epoch`` (0-based) when cycling with ``reshuffle_seed=seed``:
        pass 0 is the cache's order; a later pass permutes the shards, and the LM batches (``batch_sequences``
        each, as written) inside each shard, with a generator seeded by a hash of (seed, epoch).

            cache.epoch_order(0, 1)[:4]   # e.g. tensor([3712, 3713, 3714, 3715])
        """
        if epoch == 0:
            return torch.arange(self.sequences)
        digest = hashlib.sha256(f"sae_hooks.cache.epoch:{seed}:{epoch}".encode()).digest()
        g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
        per_batch = int(self.manifest["batch_sequences"])
        pieces = []
        for i in torch.randperm(len(self._starts), generator=g).tolist():
            first, n = self._starts[i], int(self.manifest["shards"][i]["sequences"])
            blocks = torch.arange(first, first + n).split(per_batch)
            pieces += [blocks[j] for j in torch.randperm(len(blocks), generator=g).tolist()]
        return torch.cat(pieces)

    def _batches(self, names, batch_size, total, rank, world_size, skip, seed) -> Iterator[CachedBatch]:
        quota = (total - skip) // world_size
        position, taken = skip, 0
        while taken < quota:
            n = min(batch_size, quota - taken)
            if world_size == 1:
                acts = self._span(names, position, position + n, seed)
            else:
                seqs = [position + k * world_size + rank for k in range(n)]
                pieces = [self._span(names, s, s + 1, seed) for s in seqs]
                acts = {h: torch.cat([p[h] for p in pieces]) for h in names}
            position += n * world_size
            taken += n
            yield CachedBatch(acts, int(next(iter(acts.values())).shape[0]), position, 0)

    def _span(self, names, first: int, stop: int, seed: int | None) -> dict[str, Tensor]:
        """Rows of global stream positions first..stop-1, wrapping around the cache (cycle), later passes in
        ``epoch_order`` when a reshuffle seed is set."""
        parts: list[dict[str, Tensor]] = []
        while first < stop:
            epoch, a = divmod(first, self.sequences)
            b = min(self.sequences, a + (stop - first))
            if epoch == 0 or seed is None:
                parts.append(self.rows(names, a, b))
            else:
                if self._order[0] != (seed, epoch):
                    self._order = ((seed, epoch), self.epoch_order(seed, epoch))
                src = self._order[1][a:b]
                # Runs of consecutive cache sequences (an LM batch, or part of one) are read in one slice.
                breaks = (torch.nonzero(src[1:] != src[:-1] + 1).flatten() + 1).tolist()
                for lo, hi in zip([0, *breaks], [*breaks, len(src)]):
                    parts.append(self.rows(names, int(src[lo]), int(src[hi - 1]) + 1))
            first += b - a
        return parts[0] if len(parts) == 1 else {h: torch.cat([p[h] for p in parts]) for h in names}


def _bisect(starts: list[int], s: int) -> int:
    import bisect

    return bisect.bisect_right(starts, s) - 1
