"""Held-out scores of SAEs while they train: a fixed block of held-out tokens, read once per run.

The block comes from the corpus's ``eval`` split (documents chosen by a stable hash of their
identity, never shuffled, never trained on), in a fixed order, so a score at step 50 and one at
step 100 are on the same tokens. FVU / L0 / dead fraction are computed on activation rows captured
once (the model's part is fixed); the spliced CE and recaptured loss need a forward per evaluation
and use a smaller block.

    held = load_held_out(adapter, CorpusConfig(split="eval", ctx=128), ["resid_post.6"], 16_384, 4_096)
    scores = held_out_scores(trainer, held, adapter)       # {sae name: {"fvu": ..., "ce_spliced": ...}}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from .adapters import Adapter
from .data import CorpusConfig, TokenBatch, load_token_tensor
from .evaluate import evaluate_many
from .trainer import Trainer, held_out_metrics

__all__ = ["HeldOut", "held_out_scores", "load_held_out"]

CAPTURE_SEQUENCES = 16
"""Sequences per forward when capturing the held-out rows."""


class HeldOut(NamedTuple):
    """The held-out data of a run."""

    acts: dict[str, Float[Tensor, "rows d"]]
    """Activation rows per hook at the scored positions (position 0 and special tokens excluded), fp32."""
    ce_tokens: TokenBatch | None
    """Token block for the spliced CE / recaptured loss; None when that is switched off."""
    rows: int
    """Rows per hook in ``acts``."""


def load_held_out(adapter: Adapter, corpus: CorpusConfig, hooks: Sequence[str], eval_tokens: int,
                  ce_tokens: int) -> HeldOut:
    """Read the held-out block and capture its activation rows at ``hooks``.

        held = load_held_out(adapter, CorpusConfig(split="eval"), ["resid_post.6"], 16_384, 4_096)
    """
    block = load_token_tensor(adapter.tokenizer, corpus, max(eval_tokens, ce_tokens),
                              max_positions=adapter.max_positions)
    rows: dict[str, list[Tensor]] = {h: [] for h in hooks}
    for i in range(0, math.ceil(eval_tokens / corpus.ctx), CAPTURE_SEQUENCES):
        ids, mask = block.input_ids[i:i + CAPTURE_SEQUENCES], block.mask[i:i + CAPTURE_SEQUENCES]
        with torch.inference_mode():
            acts = adapter.capture(ids, list(hooks), stop=True)
        for h in hooks:
            rows[h].append(acts[h][mask.to(acts[h].device)].float())  # [B, T, d] -> [rows, d]
    n_ce = math.ceil(ce_tokens / corpus.ctx)
    ce_block = TokenBatch(block.input_ids[:n_ce], block.mask[:n_ce]) if n_ce else None
    cat = {h: torch.cat(r) for h, r in rows.items()}
    return HeldOut(cat, ce_block, next(iter(cat.values())).shape[0])


def held_out_scores(trainer: Trainer, held: HeldOut, adapter: Adapter) -> dict[str, dict[str, float]]:
    """Held-out FVU / L0 / dead fraction of every SAE of ``trainer`` (as exported: raw activations), and
    the spliced CE, ΔCE, recaptured loss (zero and mean ablation) and KL when ``held.ce_tokens`` is set.

        scores = held_out_scores(trainer, held, adapter)["topk_resid_post.6"]["fvu"]
    """
    exported = trainer.export()
    scores: dict[str, dict[str, Any]] = {}
    for t in trainer.targets:
        scores[t.name] = held_out_metrics(exported[t.name], held.acts[t.hook].to(trainer.device))
    if held.ce_tokens is not None:
        with torch.inference_mode():
            reports = evaluate_many(adapter, [(t.hook, exported[t.name]) for t in trainer.targets], held.ce_tokens,
                                    top_contexts=0)
        for t, r in zip(trainer.targets, reports):
            scores[t.name].update(ce_clean=r.ce_clean, ce_spliced=r.ce_spliced, delta_ce=r.delta_ce,
                                  recaptured_zero=r.recaptured_zero, recaptured_mean=r.recaptured_mean, kl=r.kl)
    return scores
