"""sae_hooks: attach sparse autoencoders to live language models.

    >>> import sae_hooks
    >>> adapter = sae_hooks.load_model()                         # embedded SmolLM2-135M, offline
    >>> acts = adapter.capture(ids, ["resid_post.6"])           # stops after block 6
    >>> sae = sae_hooks.load_sae("runs/x/saes/topk_resid_post.6")    # SAELens layout (or sparsify)
    >>> with sae_hooks.splice(adapter, {"resid_post.6": sae}, input_ids=ids):
    ...     logits = adapter.forward(ids)
    >>> report = sae_hooks.evaluate(adapter, sae, held_out)      # CE, recaptured, KL, FVU, L0
    >>> with sae_hooks.steer(adapter, {"resid_post.6": (sae, ["123:add:8"])}):
    ...     text = sae_hooks.generate(adapter, ids, 20).texts[0]
"""

from .adapters import Adapter, HFAdapter, TLAdapter, adapt
from .evaluate import EvalReport, evaluate, evaluate_many
from .hookpoints import KINDS, parse_hook
from .joint import JointReport, evaluate_joint
from .models import DEFAULT_MODEL, load_model
from .pretrained import load_pretrained
from .run import RunConfig, RunResult, train
from .sae import ARCHITECTURES, SAE, load_sae, make_sae
from .splice import splice
from .steer import Edit, generate, side_effects, steer

__version__ = "0.1.0"

__all__ = [
    "Adapter", "HFAdapter", "TLAdapter", "adapt", "KINDS", "parse_hook", "DEFAULT_MODEL", "load_model",
    "ARCHITECTURES", "SAE", "load_sae", "make_sae", "load_pretrained",
    "splice", "evaluate", "evaluate_many", "EvalReport", "evaluate_joint", "JointReport",
    "steer", "generate", "side_effects", "Edit",
    "RunConfig", "RunResult", "train",
]
