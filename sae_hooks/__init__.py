"""sae_hooks: attach sparse autoencoders to live language models.

    >>> import sae_hooks
    >>> adapter = sae_hooks.load_model()                  # embedded SmolLM2-135M, offline
    >>> acts = adapter.capture(ids, ["resid_post.6"])
"""

from .adapters import Adapter, HFAdapter, TLAdapter, adapt
from .hookpoints import KINDS, parse_hook
from .models import DEFAULT_MODEL, load_model

__version__ = "0.1.0"

__all__ = ["Adapter", "HFAdapter", "TLAdapter", "adapt", "KINDS", "parse_hook", "DEFAULT_MODEL", "load_model"]
