"""Backend adapters: one hook-point vocabulary over HuggingFace and TransformerLens models.

    >>> from sae_hooks.adapters import adapt
    >>> adapter = adapt(model, tokenizer)        # HF CausalLM, TransformerBridge or HookedTransformer
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import Adapter, Generating, HookFn, Prefix, Readout, Site
from .hf import FAMILIES, HFAdapter
from .tl import TLAdapter


def adapt(model: Any, tokenizer: Any = None, name: str | None = None) -> Adapter:
    """Wrap a model in the adapter for its backend (an Adapter is returned as it is).

    >>> adapter = adapt(AutoModelForCausalLM.from_pretrained(path), tokenizer)
    """
    if isinstance(model, Adapter):
        return model
    if hasattr(model, "hook_dict") and hasattr(model, "cfg"):
        return TLAdapter(model, tokenizer, name)
    if isinstance(model, nn.Module) and hasattr(model, "config"):
        return HFAdapter(model, tokenizer, name)
    raise TypeError(
        f"Cannot adapt {type(model).__name__}: expected a transformers causal LM, a TransformerLens "
        "TransformerBridge / HookedTransformer, or an Adapter."
    )


__all__ = ["Adapter", "Generating", "HookFn", "Prefix", "Readout", "Site", "HFAdapter", "TLAdapter", "FAMILIES", "adapt"]
