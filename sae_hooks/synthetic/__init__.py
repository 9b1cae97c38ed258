"""Synthetic ground truth for SAEs: the MP-SAE paper's hierarchical toy, a scorer, and the experiments.

    from sae_hooks.synthetic import HierarchicalToy, ToyConfig, SynthConfig, run_synth, score_sae
    toy = HierarchicalToy(ToyConfig(level=1, sigma=0.25))          # 20 features in a tree
    result = run_synth([("paper", ToyConfig())], (20, 40), SynthConfig(), seeds=3)
    print(result.table())                                           # MCC, errors, absorption: mean ± sd
"""

from .experiment import (TOY_ARCHS, SummaryRow, SynthConfig, SynthResult, SynthRow, arch_options, parse_condition,
                         run_one, run_synth, train_toy)
from .score import SCORE_DEFINITIONS, Matching, ToyScore, match_directions, score_codes, score_oracle, score_sae
from .toy import HierarchicalToy, ToyBatch, ToyConfig, ToyDictionaryCheck

__all__ = [
    "HierarchicalToy", "ToyBatch", "ToyConfig", "ToyDictionaryCheck",
    "Matching", "ToyScore", "SCORE_DEFINITIONS", "match_directions", "score_codes", "score_oracle", "score_sae",
    "TOY_ARCHS", "SynthConfig", "SynthResult", "SynthRow", "SummaryRow", "arch_options", "parse_condition",
    "run_one", "run_synth", "train_toy",
]
