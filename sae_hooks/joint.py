"""What several SAEs cost *together*: all of them spliced into one forward at their hook points.

Circuit work with SAEs at several layers replaces every hooked activation at once, and errors
compound: the SAE at ``resid_post.6`` then encodes an activation that the SAE at ``resid_post.3``
already changed. ``evaluate_joint`` reports the joint next-token metrics beside each SAE's own row
(each spliced alone, as ``evaluate`` does), from one clean forward per batch shared by all of them:

- joint CE spliced: every SAE replaces its hook point's activation in the same forward; an SAE above
  another encodes the activation as it arrives (already changed by the SAEs below it);
- joint zero / mean ablation: every hooked activation replaced by zeros / by its mean over the
  evaluated tokens, all together; recaptured = (CE_ablated − CE_spliced) / (CE_ablated − CE_clean);
- ΔCE = CE_spliced − CE_clean and KL(p_clean ‖ p_spliced) per token, as for one SAE.

Positions excluded from evaluation (position 0, the attention sink, and special tokens by default)
keep their activation at every hook point. The joint row of one SAE *is* that SAE's own row (the same
conditions, accumulated by the same code), and identity SAEs at every hook give ΔCE = KL = 0 exactly:
an SAE group whose every member returns its input unchanged leaves the forward clean by construction.

    >>> report = evaluate_joint(adapter, [(None, sae3), (None, sae6)], held_out)
    >>> report.delta_ce, [r.delta_ce for r in report.each]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .adapters.base import Adapter
from .data import TokenBatch
from .evaluate import METRIC_DEFINITIONS, EvalReport, _ratio, evaluate_groups
from .splice import _model_key

__all__ = ["JointReport", "evaluate_joint"]

JOINT_DEFINITIONS = ("joint: every SAE spliced at its hook point in one forward (an SAE above another encodes the "
                     "activation the lower one changed); joint ablations replace every hooked activation at once. "
                     + METRIC_DEFINITIONS)


@dataclass(frozen=True)
class JointReport:
    """Next-token metrics of several SAEs spliced together, and each SAE's own report.

        >>> r = evaluate_joint(adapter, [(None, sae3), (None, sae6)], tokens); print(r.table())
        >>> r.to_dict()["joint"]["delta_ce"]
    """

    hooks: tuple[str, ...]
    """Canonical hook points, one per SAE, in the order given."""
    ce_clean: float
    """Mean next-token CE of the untouched model, nats."""
    ce_spliced: float
    """Mean next-token CE with every SAE spliced at once, nats."""
    ce_zero_ablated: float
    """Mean next-token CE with every hooked activation replaced by zeros, nats."""
    ce_mean_ablated: float
    """Mean next-token CE with every hooked activation replaced by its mean over evaluated tokens, nats."""
    recaptured_zero: float
    """(CE_zero − CE_spliced) / (CE_zero − CE_clean), all hook points together."""
    recaptured_mean: float
    """(CE_mean − CE_spliced) / (CE_mean − CE_clean), all hook points together."""
    delta_ce: float
    """CE_spliced − CE_clean, nats."""
    kl: float
    """Mean per-token KL(p_clean ‖ p_spliced), nats."""
    tokens: int
    """Evaluated next-token predictions (the same for the joint and every single row)."""
    keep_error: bool
    """Whether the SAE error terms were kept (spliced = clean then)."""
    ablation_scope: str
    """``"evaluated"`` (ablate where the SAEs splice) or ``"all"`` (every position)."""
    each: tuple[EvalReport, ...]
    """Each SAE spliced alone, in the order given."""
    loss_delta: Float[Tensor, "seq pred"] = field(repr=False)
    """Per-token joint CE_spliced − CE_clean [n_seq, ctx − 1]; NaN where the position is not evaluated."""

    def to_dict(self) -> dict[str, Any]:
        """``{"joint": scalars, "saes": [each SAE's EvalReport.to_dict()], "definitions": ...}`` (non-finite → None)."""
        joint: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            if name in ("each", "loss_delta"):
                continue
            v = getattr(self, name)
            joint[name] = None if isinstance(v, float) and not math.isfinite(v) else v
        joint["hooks"] = list(self.hooks)
        return {"joint": joint, "saes": [r.to_dict() for r in self.each], "definitions": JOINT_DEFINITIONS}

    def table(self) -> str:
        """One row per SAE alone and a last row for all of them together, then the definitions."""
        labels = [f"{r.hook} ({r.architecture}, {r.d_sae})" for r in self.each] + ["all together: " + "+".join(self.hooks)]
        w = max(len(x) for x in [*labels, "SAEs spliced"])
        head = f"{'SAEs spliced':<{w}} {'CE':>8} {'dCE':>9} {'KL':>8} {'rec.zero':>9} {'rec.mean':>9} {'FVU':>7} {'L0':>7}"
        lines = [f"CE clean {self.ce_clean:.4f} nats over {self.tokens} tokens; ablation scope {self.ablation_scope}"
                 + ("; error terms kept" if self.keep_error else ""), head]
        for label, r in zip(labels, self.each):
            lines.append(f"{label:<{w}} {r.ce_spliced:>8.4f} {r.delta_ce:>+9.4f} {r.kl:>8.4f} {r.recaptured_zero:>9.4f} "
                         f"{r.recaptured_mean:>9.4f} {r.fvu:>7.4f} {r.l0:>7.2f}")
        lines.append(f"{labels[-1]:<{w}} {self.ce_spliced:>8.4f} {self.delta_ce:>+9.4f} {self.kl:>8.4f} "
                     f"{self.recaptured_zero:>9.4f} {self.recaptured_mean:>9.4f}")
        lines.append("definitions: " + JOINT_DEFINITIONS)
        return "\n".join(lines)


def _pairs(saes: Sequence[tuple[str | None, Any]] | Mapping[str, Any]) -> list[tuple[str | None, Any]]:
    if isinstance(saes, Mapping):
        return list(saes.items())
    pairs = []
    for item in saes:
        if isinstance(item, tuple) and len(item) == 2:
            pairs.append(item)
        elif hasattr(item, "encode") and hasattr(item, "decode"):
            pairs.append((None, item))  # a bare SAE: its hook point from its metadata
        else:
            raise TypeError(f"evaluate_joint: saes must be (hook, sae) pairs, bare SAEs or a {{hook: sae}} mapping; got "
                            f"an item of type {type(item).__name__}.")
    return pairs


def _check_one_model(pairs: list[tuple[str | None, Any]]) -> None:
    """SAEs whose metadata names different models cannot all fit one model: refuse before any forward."""
    named = [(i, (getattr(sae, "metadata", None) or {}).get("model_name")) for i, (_, sae) in enumerate(pairs)]
    named = [(i, m) for i, m in named if m]
    if len({_model_key(m) for _, m in named}) > 1:
        listing = "; ".join(f"SAE {i}: {m!r}" for i, m in named)
        raise ValueError(f"evaluate_joint: the SAEs' metadata name different models ({listing}). Splicing them into one "
                         "model together needs SAEs trained on that model; evaluate them one at a time on their own "
                         "models instead.")


@torch.no_grad()
def evaluate_joint(
    adapter: Adapter,
    saes: Sequence[tuple[str | None, Any]] | Mapping[str, Any],
    tokens: TokenBatch | Int[Tensor, "batch pos"],
    *,
    batch_size: int = 8,
    keep_error: bool = False,
    strict: bool = False,
    allow_hook_mismatch: bool = False,
    top_contexts: int = 5,
    ablation_scope: str = "evaluated",
    encode_kwargs: Mapping[str, Any] | None = None,
    exclude_first: int = 1,
    shared_prefix: bool = True,
) -> JointReport:
    """Splice every SAE at its hook point at once and report the joint CE, ΔCE, KL and recaptured loss
    beside each SAE's own report (see the module docstring). ``saes``: ``(hook, sae)`` pairs
    (``hook=None``: the SAE's metadata), bare SAEs, or ``{hook: sae}``; one SAE per hook point, all
    for the same model. The other arguments are ``evaluate_many``'s.

        >>> r = evaluate_joint(adapter, {"resid_post.3": sae3, "resid_post.6": sae6}, held_out)
        >>> print(r.table())
    """
    pairs = _pairs(saes)
    if not pairs:
        raise ValueError("evaluate_joint needs at least one SAE; got none.")
    _check_one_model(pairs)
    n = len(pairs)
    groups = [(i,) for i in range(n)] + [tuple(range(n))]
    each, rows = evaluate_groups(adapter, pairs, tokens, groups, batch_size=batch_size, keep_error=keep_error,
                                 strict=strict, allow_hook_mismatch=allow_hook_mismatch, top_contexts=top_contexts,
                                 ablation_scope=ablation_scope, encode_kwargs=encode_kwargs,
                                 exclude_first=exclude_first, shared_prefix=shared_prefix)
    j = rows[-1]
    return JointReport(
        hooks=j.hooks, ce_clean=j.ce_clean, ce_spliced=j.ce_spliced, ce_zero_ablated=j.ce_zero_ablated,
        ce_mean_ablated=j.ce_mean_ablated,
        recaptured_zero=_ratio(j.ce_zero_ablated, j.ce_spliced, j.ce_clean),
        recaptured_mean=_ratio(j.ce_mean_ablated, j.ce_spliced, j.ce_clean),
        delta_ce=j.ce_spliced - j.ce_clean, kl=j.kl, tokens=j.tokens, keep_error=keep_error,
        ablation_scope=ablation_scope, each=tuple(each), loss_delta=j.loss_delta)
