"""Progressive coding (Peter & Søgaard 2025, arXiv 2505.00190): can one SAE serve at many sizes?

Two ways to get a small dictionary out of a big one: prune a vanilla SAE to its G most important
latents, or train a Matryoshka SAE whose first G latents are trained to reconstruct on their own.
This package measures both on a live model:

- ``importance``: latent importance E[(a_i·‖d_i‖)²] and frequency; power-law and exponential fits;
- ``views``: a vanilla SAE reduced to G latents, in ``mask`` or ``reselect`` mode;
- ``rsa``: representational similarity of two reconstructions, in bounded memory;
- ``sweep``: every size of every SAE evaluated from one clean forward per batch, as a
  ``ProgressiveReport`` (rows, mean ± sd over seeds, fits);
- ``plots`` / ``outputs``: the report's JSON, Markdown and PNG plots in one folder.

    >>> from sae_hooks.progressive import sweep, SweepConfig
    >>> report = sweep(adapter, {"topk": topk}, {"matryoshka": mat}, held, imp_held,
    ...                config=SweepConfig(sizes=(256, 2304)))
    >>> print(report.markdown())

``sae-hooks progressive`` runs it from the command line.
"""

from .importance import Exponential, Importance, PowerLaw, fit_exponential, fit_power_law, latent_importance
from .outputs import check_out, write_outputs
from .rsa import rsa
from .sweep import (
    DEFINITIONS,
    METRICS,
    RANKINGS,
    Aggregate,
    FitSummary,
    ProgressiveReport,
    SweepConfig,
    SweepRow,
    aggregate,
    check_kinds,
    check_saes,
    default_sizes,
    matryoshka_sweep,
    prune_sweep,
    sweep,
)
from .views import PRUNE_MODES, MaskedLatents, check_size, reduce_sae

__all__ = [
    "Aggregate", "DEFINITIONS", "Exponential", "FitSummary", "Importance", "METRICS", "MaskedLatents", "PRUNE_MODES",
    "PowerLaw", "ProgressiveReport", "RANKINGS", "SweepConfig", "SweepRow", "aggregate", "check_kinds", "check_out",
    "check_saes", "check_size",
    "default_sizes", "fit_exponential", "fit_power_law", "latent_importance", "matryoshka_sweep", "prune_sweep",
    "reduce_sae", "rsa", "sweep", "write_outputs",
]
