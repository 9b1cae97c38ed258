"""Offline interpretability scores: SAE latents against labels that Python itself gives its code.

The default corpus is Python source, whose structure ``tokenize`` and ``ast`` know exactly, so
every model token can carry true labels (comment, docstring, each frequent keyword, name being
defined, inside a function body, ...) and every latent can be scored against them, with no
language-model judge:

- ``labels``: the label set (hierarchical where the grammar is) and the labeller;
- ``corpus``: Python documents of a corpus split, tokenized with offsets, labelled and packed;
- ``scores``: k-sparse probing, best single latent and coverage, latent labels, absorption;
- ``baselines``: a random SAE of the same shape, and the residual coordinates as latents;
- ``report``: ``interp()``, one model pass for every SAE and baseline, and its ``InterpReport``.

    >>> from sae_hooks.interp import interp, labelled_tokens
    >>> toks = labelled_tokens(adapter.tokenizer, CorpusConfig(split="eval"), 50_000)
    >>> report = interp(adapter, {"topk": sae}, toks)
    >>> print(report.table())

Several SAEs share the one model pass: the sizes of a progressive-coding sweep, Matryoshka
prefixes, a TopK and an MP-SAE at the same hook (each gets its own random twin; pass
``InterpConfig(baselines=("residual",))`` to skip the twins):

    >>> sizes = {f"G={g}": sae.pruned(order[:g]) for g in (512, 1152, 2304, 4608)}
    >>> report = interp(adapter, sizes, toks, config=InterpConfig(baselines=("residual",)))
"""

from .baselines import ResidualCoordinates, random_like
from .corpus import LabelledTokens, labelled_tokens
from .labels import KEYWORDS, LABEL_NAMES, LABELS, Label, NotPython, TokenLabels, children, label_spans, token_labels
from .report import DEFINITIONS, InterpReport, interp
from .scores import (
    Absorption,
    BestLatent,
    ChildAbsorption,
    Dictionary,
    DictionaryScores,
    InterpConfig,
    LabelStats,
    LatentLabel,
    SAEDictionary,
    label_stats,
    score_dictionary,
)

__all__ = [
    "DEFINITIONS",
    "KEYWORDS",
    "LABELS",
    "LABEL_NAMES",
    "Absorption",
    "BestLatent",
    "ChildAbsorption",
    "Dictionary",
    "DictionaryScores",
    "InterpConfig",
    "InterpReport",
    "Label",
    "LabelStats",
    "LabelledTokens",
    "LatentLabel",
    "NotPython",
    "ResidualCoordinates",
    "SAEDictionary",
    "TokenLabels",
    "children",
    "interp",
    "label_spans",
    "label_stats",
    "labelled_tokens",
    "random_like",
    "score_dictionary",
    "token_labels",
]
