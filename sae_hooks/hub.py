"""SAEs published on the Hugging Face hub: SAELens releases and EleutherAI sparsify repositories.

Files come through ``huggingface_hub`` and its cache (``~/.cache/huggingface/hub`` by default,
``$HF_HUB_CACHE`` / ``$HF_HOME`` move it). Where the hub cannot be reached (no network, or
``HF_HUB_OFFLINE=1``), only what the cache already holds is used, and a missing SAE fails with the
command that downloads it and the folder it must end up in.

- SAELens release + SAE id → repository and folder, as SAELens's release table
  (``pretrained_saes.yaml``, shipped inside the ``sae-lens`` package) maps them. Without that
  package, give the repository yourself: ``saelens:ORG/REPO:FOLDER``. Releases that SAELens
  converts from another format (Gemma Scope, Llama Scope, ...) are refused with a pointer to
  SAELens; native-layout releases load, pre-6.0 configs included.
- sparsify: one folder per hook point (``layers.6`` = output of block 6, ``resid_post.6`` here).

    >>> sae = load_saelens("gpt2-small-res-jb", "blocks.8.hook_resid_pre")
    >>> sae = load_sparsify("EleutherAI/sae-pythia-70m-32k", "layers.3")
    >>> # on the command line: --sae saelens:RELEASE:SAE_ID  or  --sae sparsify:ORG/REPO:HOOKPOINT
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

SAELENS_PREFIX = "saelens:"
SPARSIFY_PREFIX = "sparsify:"
SPEC_PREFIXES = (SAELENS_PREFIX, SPARSIFY_PREFIX)
SAELENS_FILES = ("cfg.json", "sae_weights.safetensors")
SPARSIFY_FILES = ("cfg.json", "sae.safetensors")
_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


class Release(NamedTuple):
    """One SAELens release, as its release table lists it."""

    repo_id: str
    """Hugging Face repository holding the release's SAEs."""
    model: str
    """Model the SAEs were trained on."""
    conversion: str | None
    """SAELens's converter for a non-native layout (None: SAELens's own folders)."""
    folders: dict[str, str]
    """SAE id -> folder inside the repository."""
    norm_scaling: dict[str, float]
    """SAE id -> activation norm scaling factor that SAELens folds into the weights."""
    overrides: dict[str, Any]
    """cfg.json fields the table overrides."""


class HubLocation(NamedTuple):
    """Where a hub SAE lives: repository, folder inside it, files it needs."""

    repo_id: str
    """Hugging Face repository."""
    folder: str
    """Folder inside the repository ('' for the root)."""
    files: tuple[str, ...]
    """Files the folder must hold."""
    what: str
    """The SAE as the user named it, for messages."""


# ---------------------------------------------------------------------------------------------
# SAELens's release table


def saelens_table_path() -> Path | None:
    """``pretrained_saes.yaml`` of the installed ``sae-lens`` package (found, not imported), or None."""
    try:
        spec = importlib.util.find_spec("sae_lens")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / "pretrained_saes.yaml"
    return path if path.is_file() else None


@lru_cache(maxsize=4)
def _read_table(path: str, mtime: float) -> dict[str, Release]:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C parser reads the ~44k-line table ~5x faster
    try:
        with open(path) as f:
            data = yaml.load(f, Loader=loader)
    except yaml.YAMLError as e:
        raise ValueError(f"SAELens release table {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):  # a damaged file, not a caller's wrong argument type
        raise ValueError(f"SAELens release table {path}: expected a mapping of release names.")  # noqa: TRY004
    table = {}
    for release, value in data.items():
        if not isinstance(value, dict) or "repo_id" not in value or "saes" not in value:
            raise ValueError(f"SAELens release table {path}: release {release!r} lacks 'repo_id' or 'saes'.")
        folders, scaling = {}, {}
        for sae in value["saes"]:
            folders[str(sae["id"])] = str(sae["path"])
            if "norm_scaling_factor" in sae:
                scaling[str(sae["id"])] = float(sae["norm_scaling_factor"])
        table[str(release)] = Release(value["repo_id"], str(value.get("model", "")), value.get("conversion_func"),
                                      folders, scaling, dict(value.get("config_overrides") or {}))
    return table


def release_table(path: str | os.PathLike | None = None) -> dict[str, Release]:
    """SAELens's release table: release name -> ``Release`` (cached per file and modification time).

        >>> release_table()["gpt2-small-res-jb"].repo_id
        'jbloom/GPT2-Small-SAEs-Reformatted'
    """
    p = Path(path) if path is not None else saelens_table_path()
    if p is None:
        return {}
    if not p.is_file():
        raise FileNotFoundError(f"SAELens release table {p} does not exist.")
    return _read_table(str(p), p.stat().st_mtime)


def saelens_location(release: str, sae_id: str, *, table: str | os.PathLike | None = None) -> tuple[HubLocation, Release | None]:
    """(where the files are, the table's release or None) for a SAELens release and SAE id.

    A release missing from the table but shaped ``ORG/REPO`` is taken as the repository and
    ``sae_id`` as the folder in it (SAELens does the same).

        >>> saelens_location("gpt2-small-res-jb", "blocks.8.hook_resid_pre")[0].folder
    """
    what = f"SAELens release {release!r}, SAE {sae_id!r}"
    tab = release_table(table)
    rel = tab.get(release)
    if rel is None:
        if _REPO.fullmatch(release):
            return HubLocation(release, sae_id.strip("/"), SAELENS_FILES, what), None
        if not tab:
            raise ValueError(
                f"Unknown SAELens release {release!r}: the release table ships with the sae-lens package, which is not "
                "installed here. Install it (pip install sae-lens) to use release names, or name the repository and "
                "folder yourself: saelens:ORG/REPO:FOLDER."
            )
        import difflib

        close = difflib.get_close_matches(release, list(tab), n=5, cutoff=0.6)
        raise ValueError(f"Unknown SAELens release {release!r}"
                         + (f"; close matches: {', '.join(close)}" if close else "")
                         + f". The table ({len(tab)} releases) is SAELens's pretrained_saes.yaml; or give saelens:ORG/REPO:FOLDER.")
    if sae_id not in rel.folders:
        import difflib

        close = difflib.get_close_matches(sae_id, list(rel.folders), n=5, cutoff=0.5)
        shown = close or sorted(rel.folders)[:5]
        raise ValueError(f"SAELens release {release!r} has no SAE {sae_id!r}; {'close matches' if close else 'e.g.'}: "
                         f"{', '.join(shown)} ({len(rel.folders)} SAEs in all).")
    if rel.conversion is not None:
        raise ValueError(
            f"SAELens release {release!r} is stored in the {rel.conversion!r} layout, which SAELens converts on load and "
            "sae_hooks does not read. Load it once with sae_lens (SAE.from_pretrained(release, sae_id)), save it with "
            "sae.save_model(FOLDER), and pass --sae FOLDER."
        )
    return HubLocation(rel.repo_id, rel.folders[sae_id].strip("/"), SAELENS_FILES, what), rel


# ---------------------------------------------------------------------------------------------
# Fetching through the HF cache


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _hub_offline() -> str | None:
    """Why the hub cannot be asked from here (HF_HUB_OFFLINE, or its host does not resolve), or None."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    from .models import _hub_unreachable

    return _hub_unreachable()


def fetch(loc: HubLocation, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
          local_only: bool | None = None) -> Path:
    """The local folder holding ``loc.files`` of ``loc.repo_id/loc.folder``, from the HF cache, downloaded
    first where the hub can be reached (``local_only=None``: decide by reachability; True: cache only).

        >>> fetch(saelens_location("gpt2-small-res-jb", "blocks.8.hook_resid_pre")[0])
        PosixPath('.../models--jbloom--GPT2-Small-SAEs-Reformatted/snapshots/<rev>/blocks.8.hook_resid_pre')
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    if not _REPO.fullmatch(loc.repo_id):
        raise ValueError(f"{loc.what}: {loc.repo_id!r} is not a hub repository name (ORG/NAME).")
    if ".." in loc.folder.split("/"):
        raise ValueError(f"{loc.what}: folder {loc.folder!r} may not contain '..'.")
    cache = _cache_dir(cache_dir)
    why = _hub_offline() if local_only is None else ("local_only=True" if local_only else None)
    paths = []
    for name in loc.files:
        filename = f"{loc.folder}/{name}" if loc.folder else name
        try:
            paths.append(Path(hf_hub_download(loc.repo_id, filename, revision=revision, cache_dir=str(cache),
                                              local_files_only=why is not None)))
        except LocalEntryNotFoundError:
            include = f"{loc.folder}/*" if loc.folder else "*"
            raise FileNotFoundError(
                f"{loc.what}: {filename} of {loc.repo_id} is not in the local Hugging Face cache ({cache})"
                + (f", and the hub cannot be reached from here ({why})" if why else "")
                + f". On a machine with network run `hf download {loc.repo_id} --include '{include}'"
                + (f" --revision {revision}" if revision else "")
                + f"` (huggingface_hub's CLI; older versions: `huggingface-cli download ...`), then copy its "
                f"models--{loc.repo_id.replace('/', '--')} folder into {cache} here (or point HF_HUB_CACHE at a copy)."
            ) from None
        except EntryNotFoundError:
            raise FileNotFoundError(f"{loc.what}: the repository {loc.repo_id} has no file {filename}. "
                                    "Check the folder / hook point name.") from None
        except HfHubHTTPError as e:
            raise OSError(f"{loc.what}: the hub refused {loc.repo_id}/{filename}: {' '.join(str(e).split())}") from None
    folder = paths[0].parent
    if any(p.parent != folder for p in paths):  # a revision that moved between two downloads
        raise OSError(f"{loc.what}: the files of {loc.repo_id}/{loc.folder} came from different revisions; "
                      "pass an explicit revision.")
    return folder


# ---------------------------------------------------------------------------------------------
# Reading what was fetched


def _v6_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """A SAELens cfg.json of any version in the v6 shape our loader reads (pre-6.0 configs kept
    architecture, hook and model at the top level and named some fields differently)."""
    version = str(cfg.get("sae_lens_version") or (cfg.get("metadata") or {}).get("sae_lens_version") or "0")
    if "metadata" in cfg and int(re.match(r"\d*", version).group() or 0) >= 6:
        return cfg
    old = {{"hook_point": "hook_name", "activation_fn_str": "activation_fn",
            "hook_point_head_index": "hook_head_index"}.get(k, k): v for k, v in cfg.items()}
    new = {k: old[k] for k in ("d_in", "d_sae", "dtype", "apply_b_dec_to_input", "k", "architecture",
                               "rescale_acts_by_decoder_norm", "residual_threshold", "max_iterations",
                               "stop_on_duplicate_support") if k in old}
    new.setdefault("architecture", "standard")
    new.setdefault("apply_b_dec_to_input", True)
    kwargs = old.get("activation_fn_kwargs") or {}
    if old.get("activation_fn") == "topk" and kwargs.get("k") is not None:
        new["architecture"], new["k"] = "topk", int(kwargs["k"])
    elif old.get("activation_fn", "relu") != "relu" and new["architecture"] == "standard":
        raise ValueError(f"SAELens config with activation {old.get('activation_fn')!r} is not supported "
                         "(relu and topk are).")
    norm = old.get("normalize_activations", "none")
    new["normalize_activations"] = ("expected_average_only_in" if norm else "none") if isinstance(norm, bool) else (norm or "none")
    new["reshape_activations"] = "hook_z" if "hook_z" in str(old.get("hook_name", "")) else "none"
    new["metadata"] = {k: old[k] for k in ("model_name", "hook_name", "hook_head_index", "context_size", "prepend_bos",
                                           "dataset_path", "neuronpedia_id") if k in old}
    new["metadata"]["sae_lens_version"] = version
    return new


def load_folder(path: str | os.PathLike, *, norm_scaling: float | None = None, overrides: dict[str, Any] | None = None):
    """Load an SAE folder fetched from the hub: SAELens folders of any version (pre-6.0 configs converted),
    sparsify folders (the repository's ``config.json`` beside it names the model). ``norm_scaling``
    folds SAELens's activation norm scaling factor into the weights, as SAELens does on load.

        >>> sae = load_folder(fetch(loc))
    """
    import torch

    from .sae import load_sae
    from .sae.formats import _load_saelens  # load_sae's SAELens branch, with the converted config
    from .sae.layout import SAELENS_WEIGHTS, read_json

    p = Path(path)
    if (p / SAELENS_WEIGHTS).is_file() and (p / "cfg.json").is_file():
        cfg = read_json(p / "cfg.json")
        cfg.update(overrides or {})
        cfg = _v6_config(cfg)
        if norm_scaling is not None and cfg.get("normalize_activations") == "expected_average_only_in":
            cfg["normalize_activations"] = "none"
        sae = _load_saelens(p, cfg)
        if norm_scaling is not None:
            with torch.no_grad():  # x/s in, x_hat*s out: W_enc*s and W_dec/s, b_dec/s reproduce it on raw x
                sae.W_enc.mul_(norm_scaling)
                sae.W_dec.div_(norm_scaling)
                sae.b_dec.div_(norm_scaling)
        return sae
    sae = load_sae(p)
    if sae.metadata.get("source_format") == "sparsify":
        parent = p.parent / "config.json"
        if parent.is_file():
            try:
                run = json.loads(parent.read_text())
            except json.JSONDecodeError:
                run = {}
            if isinstance(run, dict) and isinstance(run.get("model"), str):
                sae.metadata["model_name"] = run["model"]
    return sae


class HubSpec(NamedTuple):
    """An ``--sae`` value naming a hub SAE, split into its parts."""

    kind: str
    """``saelens`` or ``sparsify``."""
    source: str
    """SAELens release (or ORG/REPO), or the sparsify repository."""
    sae: str
    """SAELens SAE id (or folder), or the sparsify hook point folder."""


def parse_spec(spec: str) -> HubSpec:
    """Split ``saelens:RELEASE:SAE_ID`` or ``sparsify:ORG/REPO:HOOKPOINT`` (no file access).

        >>> parse_spec("sparsify:EleutherAI/sae-pythia-70m-32k:layers.3")
        HubSpec(kind='sparsify', source='EleutherAI/sae-pythia-70m-32k', sae='layers.3')
    """
    for prefix, example in ((SAELENS_PREFIX, "saelens:gpt2-small-res-jb:blocks.8.hook_resid_pre, or saelens:ORG/REPO:FOLDER"),
                            (SPARSIFY_PREFIX, "sparsify:EleutherAI/sae-pythia-70m-32k:layers.3")):
        if spec.startswith(prefix):
            source, sep, sae = spec[len(prefix):].partition(":")
            ok = sep and source and sae.strip("/") and (prefix == SAELENS_PREFIX or _REPO.fullmatch(source))
            if not ok:
                raise ValueError(f"--sae {spec!r}: expected {prefix}{'RELEASE:SAE_ID' if prefix == SAELENS_PREFIX else 'ORG/REPO:HOOKPOINT'}"
                                 f", e.g. {example}.")
            return HubSpec(prefix[:-1], source, sae.strip("/"))
    raise ValueError(f"--sae {spec!r} is not a hub SAE; expected saelens:RELEASE:SAE_ID or sparsify:ORG/REPO:HOOKPOINT.")


def _sparsify_location(repo_id: str, hookpoint: str) -> HubLocation:
    return HubLocation(repo_id, hookpoint.strip("/"), SPARSIFY_FILES, f"sparsify repository {repo_id!r}, hook point {hookpoint!r}")


def resolve_spec(spec: str, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """The local folder of a ``saelens:``/``sparsify:`` spec (from the HF cache; see ``fetch``).

        >>> resolve_spec("sparsify:EleutherAI/sae-pythia-70m-32k:layers.3")
    """
    s = parse_spec(spec)
    loc = saelens_location(s.source, s.sae)[0] if s.kind == "saelens" else _sparsify_location(s.source, s.sae)
    return fetch(loc, revision=revision, cache_dir=cache_dir)


def load_saelens(release: str, sae_id: str, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                 table: str | os.PathLike | None = None):
    """Load SAE ``sae_id`` of SAELens release ``release`` (or ``ORG/REPO`` + folder) through the HF cache.

        >>> sae = load_saelens("gpt2-small-res-jb", "blocks.8.hook_resid_pre")
    """
    loc, rel = saelens_location(release, sae_id, table=table)
    folder = fetch(loc, revision=revision, cache_dir=cache_dir)
    scaling = rel.norm_scaling.get(sae_id) if rel is not None else None
    sae = load_folder(folder, norm_scaling=scaling, overrides=rel.overrides if rel is not None else None)
    if rel is not None and rel.model and not sae.metadata.get("model_name"):
        sae.metadata["model_name"] = rel.model
    return sae


def load_sparsify(repo_id: str, hookpoint: str, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None):
    """Load the sparsify SAE at ``hookpoint`` (a folder such as ``layers.6``) of ``repo_id`` through the HF cache.

        >>> sae = load_sparsify("EleutherAI/sae-pythia-70m-32k", "layers.3")
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    if not _REPO.fullmatch(repo_id) or not hookpoint.strip("/"):
        raise ValueError(f"load_sparsify: repo_id {repo_id!r} must be ORG/NAME and hookpoint {hookpoint!r} a folder "
                         "such as layers.6.")
    folder = fetch(_sparsify_location(repo_id, hookpoint), revision=revision, cache_dir=cache_dir)
    try:  # the run's config.json at the repository root names the model; optional, so a miss is no error
        hf_hub_download(repo_id, "config.json", revision=revision, cache_dir=str(_cache_dir(cache_dir)),
                        local_files_only=_hub_offline() is not None)
    except (EntryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError, OSError):
        pass
    return load_folder(folder)


def load_spec(spec: str, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None):
    """Load the SAE of a ``saelens:RELEASE:SAE_ID`` or ``sparsify:ORG/REPO:HOOKPOINT`` spec.

        >>> sae = load_spec("saelens:gpt2-small-res-jb:blocks.8.hook_resid_pre")
    """
    s = parse_spec(spec)
    load = load_saelens if s.kind == "saelens" else load_sparsify
    return load(s.source, s.sae, revision=revision, cache_dir=cache_dir)


__all__ = ["HubLocation", "HubSpec", "Release", "fetch", "load_folder", "load_saelens", "load_sparsify", "load_spec", "parse_spec",
           "release_table", "resolve_spec", "saelens_location", "saelens_table_path"]
