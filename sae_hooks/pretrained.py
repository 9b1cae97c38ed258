"""The SAEs this project trained and ships, their registry, and what ``--sae`` accepts.

The shipped SAEs live in the repository's ``pretrained/`` folder, one SAELens-layout folder each,
beside ``registry.json``: for every SAE its model, hook, architecture, width, k, the
``sae-hooks train`` command that made it, the ``sae-hooks eval`` command that measured it and the
figures it printed, and the size and sha256 of every file. The package reaches that folder as
``sae_hooks/zoo`` (a link in the checkout, real files in an installed wheel), so an installed
``sae-hooks`` finds its SAEs without any setting.

    >>> from sae_hooks import load_pretrained
    >>> sae = load_pretrained("smollm2-l6-topk")            # checks the files against the registry
    >>> resolve_sae_path("pretrained:smollm2-l28-topk-2304") # what every --sae flag does
    >>> [e.name for e in load_registry().entries]

``--sae`` takes a folder, ``pretrained:NAME``, ``saelens:RELEASE:SAE_ID`` or
``sparsify:ORG/REPO:HOOKPOINT`` (the last two through the Hugging Face cache, see ``sae_hooks.hub``).
``$SAE_HOOKS_PRETRAINED`` may name a folder of extra SAE folders, searched before the shipped ones.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

PREFIX = "pretrained:"
ENV = "SAE_HOOKS_PRETRAINED"
REGISTRY = "registry.json"
REGISTRY_FORMAT = 1
# One folder name, no path separators or "..": pretrained:NAME never reaches outside its folder.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# The figures `sae-hooks eval --json` prints that the registry keeps for every SAE.
METRIC_KEYS = ("fvu", "l0", "dead_frac", "recaptured_zero", "recaptured_mean", "delta_ce", "kl",
               "ce_clean", "ce_spliced", "ce_zero_ablated", "ce_mean_ablated", "tokens")


def shipped_dir() -> Path:
    """The folder of shipped SAEs: ``sae_hooks/zoo`` (the wheel's copy, or the checkout's link to
    ``pretrained/``), else the checkout's ``pretrained/`` itself (a clone without symlinks).

        >>> shipped_dir()                     # in a checkout; site-packages/sae_hooks/zoo when installed
        PosixPath('/home/me/sae_hooks/pretrained')
    """
    here = Path(__file__).resolve().parent
    zoo = (here / "zoo").resolve()  # the checkout's link resolves to pretrained/: messages show the real folder
    if (zoo / REGISTRY).is_file():
        return zoo
    return here.parent / "pretrained"


def pretrained_dirs() -> list[Path]:
    """Folders searched for ``pretrained:NAME``, in order: ``$SAE_HOOKS_PRETRAINED`` if set (a folder
    of SAE folders, no registry needed), then the shipped SAEs (``shipped_dir()``).

        >>> pretrained_dirs()
        [PosixPath('/home/me/sae_hooks/pretrained')]
    """
    dirs = []
    env = os.environ.get(ENV)
    if env:
        root = Path(env).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"{ENV}={env!r} is not a folder; point it at a folder holding one "
                                    "folder per SAE (NAME/cfg.json + weights), or unset it.")
        dirs.append(root)
    dirs.append(shipped_dir())
    return dirs


# ---------------------------------------------------------------------------------------------
# The registry


class FileRecord(NamedTuple):
    """One file of a shipped SAE folder, as the registry records it."""

    bytes: int
    """Size in bytes."""
    sha256: str
    """Hex sha256 of the content."""


@dataclass(frozen=True)
class Entry:
    """One shipped SAE: what it is, how it was trained and measured, and its files."""

    name: str
    """Folder name under ``pretrained/`` and the NAME of ``pretrained:NAME``."""
    model: str
    """Model it was trained on (an embedded name or an HF hub name)."""
    hook: str
    """Canonical hook point (``resid_post.6``)."""
    architecture: str
    """sae_hooks architecture (``topk``, ``matryoshka``, ``matching_pursuit``, ``standard``, ...)."""
    d_in: int
    """Width of the hooked activation."""
    d_sae: int
    """Number of latents."""
    k: int | None
    """Active latents per token (TopK family) or pursuit steps (MP); None for L1-penalised SAEs."""
    files: dict[str, FileRecord]
    """File name -> size and sha256, for every file of the folder."""
    tensors: dict[str, tuple[int, ...]]
    """Stored tensor name -> shape."""
    training: dict[str, Any]
    """How it was trained: ``command``, ``commit``, ``tokens``, ``steps``, ``seed``, ``wall_s``, ..."""
    metrics: dict[str, Any] | None = None
    """Held-out figures of ``metrics["command"]`` (an ``sae-hooks eval`` line), or None if not measured."""
    interpretability: dict[str, Any] | None = None
    """Offline interpretability scores and the command that made them, once measured."""
    options: dict[str, Any] = field(default_factory=dict)
    """Architecture options beyond k (Matryoshka ``widths``, standard ``l1_coef``, ...)."""
    description: str = ""
    """One line for humans."""

    @property
    def size(self) -> int:
        """Bytes of the folder's files."""
        return sum(f.bytes for f in self.files.values())

    def to_dict(self) -> dict[str, Any]:
        """The entry as stored in ``registry.json`` (without its name, which is the key)."""
        return {
            "description": self.description, "model": self.model, "hook": self.hook,
            "architecture": self.architecture, "d_in": self.d_in, "d_sae": self.d_sae, "k": self.k,
            "options": self.options,
            "files": {n: {"bytes": f.bytes, "sha256": f.sha256} for n, f in sorted(self.files.items())},
            "tensors": {n: list(s) for n, s in sorted(self.tensors.items())},
            "training": self.training, "metrics": self.metrics, "interpretability": self.interpretability,
        }


class Registry(NamedTuple):
    """The parsed ``registry.json`` of a folder of SAEs."""

    path: Path
    """The registry file."""
    entries: list[Entry]
    """One per SAE, sorted by name."""
    info: dict[str, Any]
    """Top-level fields other than the entries (format, description, budget)."""

    def get(self, name: str) -> Entry | None:
        """The entry called ``name``, or None."""
        return next((e for e in self.entries if e.name == name), None)

    @property
    def names(self) -> list[str]:
        """Every entry's name, sorted."""
        return [e.name for e in self.entries]


def _bad(path: Path, what: str) -> ValueError:
    return ValueError(f"{path}: {what}. The registry is damaged; reinstall sae-hooks or restore "
                      f"{REGISTRY} from the repository.")


def _parse_entry(path: Path, name: str, raw: Any) -> Entry:
    if not isinstance(raw, dict):
        raise _bad(path, f"entry {name!r} is a {type(raw).__name__}, not an object")
    need = ("model", "hook", "architecture", "d_in", "d_sae", "files", "tensors", "training")
    missing = [k for k in need if k not in raw]
    if missing:
        raise _bad(path, f"entry {name!r} lacks {missing}")
    for key in ("d_in", "d_sae"):
        if isinstance(raw[key], bool) or not isinstance(raw[key], int) or raw[key] < 1:
            raise _bad(path, f"entry {name!r}: {key} must be a positive int, got {raw[key]!r}")
    files = {}
    for fname, rec in dict(raw["files"]).items():
        if not isinstance(rec, dict) or not isinstance(rec.get("bytes"), int) or \
                not re.fullmatch(r"[0-9a-f]{64}", str(rec.get("sha256", ""))):
            raise _bad(path, f"entry {name!r}: file {fname!r} needs 'bytes' (int) and 'sha256' (64 hex digits)")
        files[fname] = FileRecord(rec["bytes"], rec["sha256"])
    return Entry(name=name, model=raw["model"], hook=raw["hook"], architecture=raw["architecture"],
                 d_in=raw["d_in"], d_sae=raw["d_sae"], k=raw.get("k"), files=files,
                 tensors={t: tuple(s) for t, s in dict(raw["tensors"]).items()}, training=dict(raw["training"]),
                 metrics=raw.get("metrics"), interpretability=raw.get("interpretability"),
                 options=dict(raw.get("options") or {}), description=raw.get("description", ""))


def load_registry(root: str | os.PathLike | None = None) -> Registry:
    """Parse ``ROOT/registry.json`` (default: the shipped SAEs' folder).

        >>> reg = load_registry()
        >>> reg.get("smollm2-l6-topk").metrics["fvu"]
    """
    root = shipped_dir() if root is None else Path(root)
    path = root / REGISTRY
    if not path.is_file():
        raise FileNotFoundError(f"No {REGISTRY} in {root}: this folder holds no registry of pretrained SAEs. "
                                "Reinstall sae-hooks, or run from a checkout that has pretrained/.")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _bad(path, f"not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("saes"), dict):
        raise _bad(path, "expected an object with a 'saes' object")
    if data.get("format") != REGISTRY_FORMAT:
        raise _bad(path, f"format {data.get('format')!r}; this sae_hooks reads format {REGISTRY_FORMAT}")
    entries = []
    for name, raw in sorted(data["saes"].items()):
        if not _NAME.fullmatch(name):
            raise _bad(path, f"entry name {name!r} is not a single folder name")
        entries.append(_parse_entry(path, name, raw))
    info = {k: v for k, v in data.items() if k != "saes"}
    return Registry(path, entries, info)


def write_registry(reg: Registry) -> None:
    """Write ``reg`` back to its file (sorted keys, atomically).

        >>> write_registry(reg._replace(entries=reg.entries + [entry]))
    """
    from ._io import atomic_write_text

    names = [e.name for e in reg.entries]
    if len(set(names)) != len(names):
        raise ValueError(f"registry entries must have distinct names; got {sorted(names)}.")
    data = {**reg.info, "format": REGISTRY_FORMAT,
            "saes": {e.name: e.to_dict() for e in sorted(reg.entries, key=lambda e: e.name)}}
    atomic_write_text(reg.path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks.

        >>> sha256_file("pretrained/smollm2-l6-topk/cfg.json")
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_entry(entry: Entry, root: str | os.PathLike | None = None, *, shapes: bool = False) -> Path:
    """Check that ``ROOT/NAME`` holds exactly the registry's files (sizes and sha256) and, with
    ``shapes=True``, the registry's tensor shapes. Returns the folder; raises a ValueError (or
    FileNotFoundError) naming the file that is missing, extra, truncated or altered.

        >>> verify_entry(load_registry().get("smollm2-l6-topk"), shapes=True)
    """
    folder = (shipped_dir() if root is None else Path(root)) / entry.name
    if not folder.is_dir():
        raise FileNotFoundError(f"Pretrained SAE {entry.name!r}: its folder {folder} is missing. Reinstall sae-hooks "
                                "or restore the folder from the repository.")
    for fname, rec in sorted(entry.files.items()):
        p = folder / fname
        if not p.is_file():
            raise FileNotFoundError(f"Pretrained SAE {entry.name!r}: file {p} is missing (the registry lists it, "
                                    f"{rec.bytes} bytes). Reinstall sae-hooks or restore the folder.")
        size = p.stat().st_size
        if size != rec.bytes:
            raise ValueError(f"Pretrained SAE {entry.name!r}: file {p} has {size} bytes, the registry says {rec.bytes} "
                             "(truncated or replaced). Reinstall sae-hooks or restore the folder.")
        digest = sha256_file(p)
        if digest != rec.sha256:
            raise ValueError(f"Pretrained SAE {entry.name!r}: file {p} is corrupt or altered (sha256 {digest[:12]}..., "
                             f"the registry says {rec.sha256[:12]}...). Reinstall sae-hooks or restore the folder.")
    extra = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name not in entry.files)
    if extra:
        raise ValueError(f"Pretrained SAE {entry.name!r}: {folder} holds files the registry does not list: {extra}. "
                         "Remove them, or re-add the SAE with pretrained/pack.py.")
    if shapes:
        from safetensors import safe_open

        for fname in entry.files:
            if not fname.endswith(".safetensors"):
                continue
            with safe_open(str(folder / fname), framework="pt") as f:
                got = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
            if got != entry.tensors:
                raise ValueError(f"Pretrained SAE {entry.name!r}: {folder / fname} holds tensors {got}, the registry "
                                 f"says {entry.tensors}.")
    return folder


# ---------------------------------------------------------------------------------------------
# Names and --sae specs


def _available(roots: list[Path]) -> list[str]:
    names = set()
    for root in roots:
        if (root / REGISTRY).is_file():
            try:
                names.update(load_registry(root).names)
                continue
            except ValueError:
                pass
        if root.is_dir():
            names.update(p.name for p in root.iterdir() if _NAME.fullmatch(p.name) and (p / "cfg.json").is_file())
    return sorted(names)


def resolve_pretrained(name: str, *, verify: bool = True) -> Path:
    """The folder of the pretrained SAE ``name``: ``$SAE_HOOKS_PRETRAINED/NAME`` if that holds a
    cfg.json, else the shipped ``NAME`` (checked against the registry when ``verify``). An unknown
    name fails with the close matches, every available name and every folder searched.

        >>> resolve_pretrained("smollm2-l6-topk")
        PosixPath('/home/me/sae_hooks/pretrained/smollm2-l6-topk')
    """
    roots = pretrained_dirs()
    shipped = roots[-1]
    if isinstance(name, str) and _NAME.fullmatch(name):
        for root in roots[:-1]:
            if (root / name / "cfg.json").is_file():
                return root / name
        if (shipped / REGISTRY).is_file():
            entry = load_registry(shipped).get(name)
            if entry is not None:
                return verify_entry(entry, shipped) if verify else shipped / name
        elif (shipped / name / "cfg.json").is_file():
            return shipped / name
    have = _available(roots)
    close = difflib.get_close_matches(str(name), have, n=3, cutoff=0.6)
    hint = f"Did you mean {', '.join(close)}? " if close else ""
    looked = "; ".join(f"{root}{'' if root.is_dir() else ' (absent)'}" for root in roots)
    raise FileNotFoundError(
        f"No pretrained SAE {name!r}. {hint}Available: {', '.join(have) or 'none'}. Looked in: {looked}. "
        f"See `sae-hooks pretrained list`; set {ENV} to a folder of SAE folders for your own, "
        "or pass --sae PATH to a folder with cfg.json."
    )


def load_pretrained(name: str, *, verify: bool = True):
    """Load the pretrained SAE ``name`` (after checking its files against the registry).

        >>> sae = load_pretrained("smollm2-l28-topk-2304")
        >>> sae.metadata["hook_name"]
        'blocks.28.hook_resid_post'
    """
    from .sae import load_sae

    if isinstance(name, str) and name.startswith(PREFIX):
        name = name[len(PREFIX):]
    return load_sae(resolve_pretrained(name, verify=verify))


def resolve_sae_path(spec: str) -> Path:
    """The local folder behind an ``--sae`` value: a folder path, ``pretrained:NAME``,
    ``saelens:RELEASE:SAE_ID`` or ``sparsify:ORG/REPO:HOOKPOINT`` (the last two from the local
    Hugging Face cache, downloaded first where the hub is reachable; see ``sae_hooks.hub``).

        >>> resolve_sae_path("pretrained:smollm2-l6-topk")
        >>> resolve_sae_path("saelens:gpt2-small-res-jb:blocks.8.hook_resid_pre")
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"--sae {spec!r}: give a folder, pretrained:NAME, saelens:RELEASE:SAE_ID or "
                         "sparsify:ORG/REPO:HOOKPOINT.")
    if spec.startswith(PREFIX):
        return resolve_pretrained(spec[len(PREFIX):])
    from . import hub

    if spec.startswith(hub.SPEC_PREFIXES):
        return hub.resolve_spec(spec)
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"SAE folder {spec!r} does not exist. Pass a folder with cfg.json, pretrained:NAME "
                                "(see `sae-hooks pretrained list`), saelens:RELEASE:SAE_ID or sparsify:ORG/REPO:HOOKPOINT.")
    return path


def load_sae_spec(spec: str):
    """Load the SAE an ``--sae`` value names (see ``resolve_sae_path``); pretrained SAEs are checked
    against the registry, SAELens folders of any version are read.

        >>> sae = load_sae_spec("pretrained:smollm2-l6-matryoshka-2304")
    """
    from . import hub
    from .sae import load_sae

    if isinstance(spec, str) and spec.startswith(hub.SPEC_PREFIXES):
        return hub.load_spec(spec)
    return load_sae(resolve_sae_path(spec))


__all__ = ["ENV", "PREFIX", "Entry", "FileRecord", "Registry", "load_pretrained", "load_registry", "load_sae_spec",
           "pretrained_dirs", "resolve_pretrained", "resolve_sae_path", "sha256_file", "shipped_dir", "verify_entry",
           "write_registry"]
