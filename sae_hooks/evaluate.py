"""What splicing an SAE into the live model costs: recaptured LM loss, ΔCE, KL, FVU, L0.

Metrics, all over the *evaluated* tokens — positions kept by the token mask (position 0, the
attention sink, and special tokens are excluded by default):

- FVU = Σ‖x − x̂‖² / Σ‖x − x̄‖², pooled; explained variance = 1 − FVU.
- L0 = mean number of non-zero latents per token; dead = never fired on these tokens;
  dense = fires on more than 10 % of them.
- CE clean / spliced / zero-ablated / mean-ablated = mean next-token cross-entropy in nats. The
  loss at position t (predicting token t+1) counts when position t is evaluated, since that is
  the activation the SAE replaced (the SAELens convention too).
- Recaptured LM loss = (CE_ablated − CE_spliced) / (CE_ablated − CE_clean), a ratio of means,
  for zero-ablation and mean-ablation. The mean is the mean activation over the evaluated tokens
  only: the excluded sink position has norms ~23,000 in SmolLM2 and would dominate it.
- ΔCE = CE_spliced − CE_clean (nats); KL = mean over tokens of KL(p_clean ‖ p_spliced).

Ablations replace the same positions the SAE replaces (``ablation_scope="evaluated"``), so the
three conditions differ only in what is written there. SAELens zero-ablates every position,
the sink included (``ablation_scope="all"`` reproduces its number).

The blocks below the hook point run once per batch: the clean forward records their calls and the
spliced / zero / mean conditions rerun only the blocks above the hook (``adapter.resume``;
``resid_post.6``: blocks 7..; a backend that cannot resume reruns the whole forward). Where the
adapter can stop before the head (``adapter.has_unembed``), every condition ends at the final
normed hidden state and the head runs over the counted positions only, one stacked product per
vocabulary tile for all conditions (``logits.token_stats``), so no [batch, pos, vocab] logits are
built.

    >>> report = evaluate(adapter, sae, load_token_tensor(tok, CorpusConfig(split="eval"), 50_000))
    >>> report.recaptured_zero, report.delta_ce, report.fvu
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .adapters.base import Adapter, HookFn
from .data import TokenBatch
from .logits import LogitRows, counted, from_hidden, from_logits, token_stats
from .splice import MetadataMismatchWarning, reconstruct, resolve_hook, token_batch

DENSE_THRESHOLD = 0.1
"""A latent firing on more than this fraction of evaluated tokens counts as dense."""

ABLATION_SCOPES = ("evaluated", "all")

METRIC_DEFINITIONS = (
    "FVU = sum||x - x_hat||^2 / sum||x - mean(x)||^2 pooled over evaluated tokens; "
    "L0 = mean non-zero latents per token; dead = never fired, dense = fires on > 10% of tokens; "
    "CE = mean next-token cross-entropy (nats) over the same tokens; "
    "recaptured = (CE_ablated - CE_spliced) / (CE_ablated - CE_clean), ratio of means, for zero- and "
    "mean-ablation (mean over evaluated tokens); delta_CE = CE_spliced - CE_clean; "
    "KL = mean per-token KL(p_clean || p_spliced). Evaluated tokens exclude the first position(s) and special tokens."
)


@dataclass(frozen=True)
class WorstContext:
    """A place where splicing hurts the next-token loss most."""

    seq: int
    """Row of the evaluated token block."""
    pos: int
    """Position whose prediction got worse (it predicts token ``pos + 1``)."""
    delta: float
    """CE_spliced − CE_clean at that position, nats."""
    ce_clean: float
    """Clean next-token loss there, nats."""
    text: str
    """Preceding context with the predicted token marked as ⟦token⟧."""


@dataclass(frozen=True)
class EvalReport:
    """Downstream and reconstruction metrics of one SAE on one block of tokens (see module docstring).

        >>> r = evaluate(adapter, sae, tokens); print(r.table())
        >>> json.dumps(r.to_dict())
    """

    hook: str
    """Canonical hook point the SAE was spliced at."""
    architecture: str
    """The SAE's architecture name."""
    d_sae: int
    """Number of latents."""
    ce_clean: float
    """Mean next-token CE of the untouched model, nats."""
    ce_spliced: float
    """Mean next-token CE with the SAE reconstruction spliced in, nats."""
    ce_zero_ablated: float
    """Mean next-token CE with the activation replaced by zeros, nats."""
    ce_mean_ablated: float
    """Mean next-token CE with the activation replaced by its mean over evaluated tokens, nats."""
    recaptured_zero: float
    """(CE_zero − CE_spliced) / (CE_zero − CE_clean)."""
    recaptured_mean: float
    """(CE_mean − CE_spliced) / (CE_mean − CE_clean)."""
    delta_ce: float
    """CE_spliced − CE_clean, nats."""
    kl: float
    """Mean per-token KL(p_clean ‖ p_spliced), nats."""
    fvu: float
    """Fraction of variance unexplained, pooled over evaluated tokens."""
    explained_variance: float
    """1 − FVU."""
    l0: float
    """Mean number of non-zero latents per evaluated token."""
    dead_frac: float
    """Fraction of latents that never fired on the evaluated tokens."""
    dense_frac: float
    """Fraction of latents firing on more than 10 % of evaluated tokens."""
    tokens: int
    """Evaluated next-token predictions (the CE / KL denominators)."""
    act_tokens: int
    """Evaluated activations (the FVU / L0 denominators)."""
    keep_error: bool
    """Whether the SAE error term was kept (spliced = clean then)."""
    ablation_scope: str
    """``"evaluated"`` (ablate where the SAE splices) or ``"all"`` (every position, SAELens's way)."""
    loss_delta: Float[Tensor, "seq pred"] = field(repr=False)
    """Per-token CE_spliced − CE_clean [n_seq, ctx − 1]; NaN where the position is not evaluated."""
    fire_freq: Float[Tensor, " d_sae"] = field(repr=False)
    """Fraction of evaluated tokens on which each latent fired."""
    worst: tuple[WorstContext, ...] = ()
    """Contexts where splicing raises the loss most, worst first."""

    def to_dict(self) -> dict[str, Any]:
        """Every scalar (non-finite → None), the worst contexts and the definitions; no big tensors."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            if name in ("loss_delta", "fire_freq", "worst"):
                continue
            v = getattr(self, name)
            out[name] = None if isinstance(v, float) and not math.isfinite(v) else v
        out["worst"] = [dataclasses.asdict(w) for w in self.worst]
        out["definitions"] = METRIC_DEFINITIONS
        return out

    def table(self) -> str:
        """A readable report with the metric definitions."""
        rows = [
            ("hook / architecture", f"{self.hook} / {self.architecture} (d_sae {self.d_sae})"),
            ("tokens (CE / activations)", f"{self.tokens} / {self.act_tokens}"),
            ("CE clean", f"{self.ce_clean:.4f} nats"),
            ("CE spliced", f"{self.ce_spliced:.4f} nats" + ("  (error term kept)" if self.keep_error else "")),
            ("CE zero-ablated", f"{self.ce_zero_ablated:.4f} nats"),
            ("CE mean-ablated", f"{self.ce_mean_ablated:.4f} nats"),
            ("recaptured (zero)", f"{self.recaptured_zero:.4f}"),
            ("recaptured (mean)", f"{self.recaptured_mean:.4f}"),
            ("delta CE", f"{self.delta_ce:+.4f} nats"),
            ("KL(clean || spliced)", f"{self.kl:.4f} nats/token"),
            ("FVU (explained var.)", f"{self.fvu:.4f} ({self.explained_variance:.4f})"),
            ("L0", f"{self.l0:.2f}"),
            ("dead / dense latents", f"{self.dead_frac:.2%} / {self.dense_frac:.2%}"),
            ("ablation scope", self.ablation_scope),
        ]
        width = max(len(k) for k, _ in rows)
        lines = [f"{k:<{width}}  {v}" for k, v in rows]
        if self.worst:
            lines.append("worst contexts (delta CE, nats):")
            lines += [f"  {w.delta:+.3f}  seq {w.seq} pos {w.pos}: {w.text!r}" for w in self.worst]
        lines.append("definitions: " + METRIC_DEFINITIONS)
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# What is evaluated


def inference_view(sae: Any, *, width: int | None = None, k: int | None = None,
                   residual_threshold: float | None = None) -> tuple[Any, dict[str, Any]]:
    """(SAE to evaluate, encode kwargs) for a Matryoshka prefix ``width`` or an MP inference ``k`` /
    ``residual_threshold``, with a clear error where the SAE has no such knob
    (``sae.inference_variant``).

        >>> small, kw = inference_view(matryoshka_sae, width=1152)
        >>> mp, kw = inference_view(mp_sae, k=16)        # kw == {"k": 16}
    """
    view = sae.inference_variant(width=width, k=k, residual_threshold=residual_threshold)
    return view.sae, dict(view.encode_kwargs)


# ---------------------------------------------------------------------------------------------
# Accumulation


class _CEStats:
    """Running next-token sums of one spliced condition (one SAE, or several spliced together)."""

    def __init__(self, n_seq: int, ctx: int):
        self.ce = {c: 0.0 for c in ("clean", "spliced", "zero", "mean")}
        self.kl = 0.0
        self.n_pred = 0
        self.loss_delta = torch.full((n_seq, ctx - 1), float("nan"))
        self.ce_clean_tok = torch.full((n_seq, ctx - 1), float("nan"))


class _Stats(_CEStats):
    """Running sums for one SAE; float64 so that pooled FVU over 10^5 tokens stays exact enough."""

    def __init__(self, d_in: int, d_sae: int, n_seq: int, ctx: int):
        super().__init__(n_seq, ctx)
        self.n_act = 0
        self.sq_err = 0.0
        self.sum_x = torch.zeros(d_in, dtype=torch.float64)
        self.sum_x2 = 0.0
        self.l0 = 0.0
        self.fired = torch.zeros(d_sae, dtype=torch.float64)

    def add_acts(self, x: Tensor, x_hat: Tensor, z: Tensor, m: Tensor) -> None:
        xs = x[m].double().cpu()
        xh = x_hat[m].double().cpu()
        self.n_act += xs.shape[0]
        self.sq_err += float((xs - xh).pow(2).sum())
        self.sum_x += xs.sum(0)
        self.sum_x2 += float(xs.pow(2).sum())
        # Firing counts per latent over the evaluated positions, without copying z[m] out.
        fired = (z != 0).logical_and_(m[..., None].to(z.device)).sum(tuple(range(z.dim() - 1)))
        self.l0 += float(fired.sum())
        self.fired += fired.double().cpu()

    def mean_act(self) -> Tensor:
        if self.n_act == 0:
            raise ValueError("No evaluated tokens: every position is masked out. Use longer sequences or a looser mask.")
        return self.sum_x / self.n_act


def _ratio(ablated: float, spliced: float, clean: float) -> float:
    den = ablated - clean
    return (ablated - spliced) / den if den != 0 else float("nan")


def _replace(value: Tensor | None, m: Tensor | None) -> HookFn:
    """Hook writing ``value`` (None → zeros) at the masked positions (all if ``m`` is None)."""

    def fn(x: Tensor) -> Tensor:
        v = torch.zeros((), dtype=x.dtype, device=x.device) if value is None else value.to(device=x.device, dtype=x.dtype)
        if m is None:
            return v.expand_as(x).clone()
        return torch.where(m[..., None].to(x.device), v, x)

    return fn


def _worst(stats: _Stats, ids: Tensor, tokenizer: Any, n: int, window: int = 24) -> tuple[WorstContext, ...]:
    d = stats.loss_delta
    finite = torch.nan_to_num(d, nan=-float("inf"))
    n = min(n, int(torch.isfinite(d).sum()))
    if n <= 0:
        return ()
    vals, flat = finite.flatten().topk(n)
    out = []
    for v, f in zip(vals.tolist(), flat.tolist()):
        s, p = divmod(f, d.shape[1])
        ctx_ids = ids[s, max(0, p + 1 - window): p + 1].tolist()
        target = int(ids[s, p + 1])
        if tokenizer is not None:
            text = tokenizer.decode(ctx_ids) + "⟦" + tokenizer.decode([target]) + "⟧"
        else:
            text = " ".join(map(str, ctx_ids)) + f" ⟦{target}⟧"
        out.append(WorstContext(s, p, float(v), float(stats.ce_clean_tok[s, p]), text))
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# The evaluators


@torch.no_grad()
def evaluate_many(
    adapter: Adapter,
    saes: Sequence[tuple[str | None, Any]],
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
) -> list[EvalReport]:
    """Evaluate several SAEs (any hook points) on the same tokens, sharing the clean forward.

    ``saes`` is a list of ``(hook, sae)``; ``hook=None`` uses the SAE's metadata, and a hook other than
    the metadata's is refused unless ``allow_hook_mismatch`` (see ``splice.resolve_hook``; ``strict``
    also refuses another model name). Each SAE is spliced alone (``joint.evaluate_joint`` splices them
    together). ``tokens`` is a ``TokenBatch`` (its mask says which positions are evaluated) or bare ids
    (mask: the first ``exclude_first`` positions and special tokens excluded). ``shared_prefix=False``
    forces plain full forwards returning logits (the reference path of the tests).

        >>> r3, r6 = evaluate_many(adapter, [("resid_post.3", sae3), (None, sae6)], held_out)
    """
    reports, _ = evaluate_groups(adapter, saes, tokens, [(i,) for i in range(len(saes))], batch_size=batch_size,
                                 keep_error=keep_error, strict=strict, allow_hook_mismatch=allow_hook_mismatch,
                                 top_contexts=top_contexts, ablation_scope=ablation_scope, encode_kwargs=encode_kwargs,
                                 exclude_first=exclude_first, shared_prefix=shared_prefix)
    return reports


class GroupCE(NamedTuple):
    """Next-token metrics of a group of SAEs spliced together (see ``evaluate_groups``)."""

    hooks: tuple[str, ...]
    """Canonical hook points of the group's SAEs, in the order given."""
    ce_clean: float
    """Mean next-token CE of the untouched model, nats."""
    ce_spliced: float
    """Mean next-token CE with every SAE of the group spliced at once, nats."""
    ce_zero_ablated: float
    """Mean next-token CE with every hooked activation of the group replaced by zeros, nats."""
    ce_mean_ablated: float
    """Mean next-token CE with every hooked activation replaced by its mean over evaluated tokens, nats."""
    kl: float
    """Mean per-token KL(p_clean ‖ p_spliced), nats."""
    tokens: int
    """Evaluated next-token predictions."""
    loss_delta: Float[Tensor, "seq pred"]
    """Per-token CE_spliced − CE_clean [n_seq, ctx − 1]; NaN where the position is not evaluated."""


@torch.no_grad()
def evaluate_groups(
    adapter: Adapter,
    saes: Sequence[tuple[str | None, Any]],
    tokens: TokenBatch | Int[Tensor, "batch pos"],
    groups: Sequence[Sequence[int]],
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
) -> tuple[list[EvalReport], list[GroupCE]]:
    """Per SAE its own ``EvalReport``, and per group of SAE indices (each a tuple of indices into ``saes``,
    at distinct hook points) the next-token metrics with all of the group's SAEs spliced at once.

    One clean forward per batch serves every SAE and every group. A group of one SAE *is* that SAE's
    own spliced / ablated conditions (the same code and the same sums), so its ``GroupCE`` equals the
    SAE's ``EvalReport`` exactly. Within a group, an SAE whose input equals the clean activation takes
    the reconstruction already made of it; an SAE below which another one changed the forward encodes
    the activation it receives there. Where every SAE of a group returns its input unchanged (an
    identity SAE, a kept error term) the spliced forward *is* the clean one and is not rerun.

        >>> reports, (joint,) = evaluate_groups(adapter, [(None, sae3), (None, sae6)], held_out, [(0, 1)])
    """
    if ablation_scope not in ABLATION_SCOPES:
        raise ValueError(f"ablation_scope={ablation_scope!r}; valid: {', '.join(ABLATION_SCOPES)}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}; it must be an int >= 1 (sequences per forward).")
    if not saes:
        raise ValueError("evaluate_many needs at least one (hook, sae) pair; got none.")
    ids_all, mask_all = token_batch(adapter, tokens, exclude_first=exclude_first)
    names = [resolve_hook(adapter, sae, hook, allow_hook_mismatch=allow_hook_mismatch, strict=strict)
             for hook, sae in saes]
    groups = [tuple(g) for g in groups]
    for g in groups:
        if not g or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(saes) for i in g):
            raise ValueError(f"evaluate_groups: group {g} must be a non-empty tuple of SAE indices in "
                             f"0..{len(saes) - 1}.")
        at = [names[i] for i in g]
        if len(set(at)) != len(at):
            dup = sorted({h for h in at if at.count(h) > 1})
            raise ValueError(f"Two SAEs of one joint group sit at the same hook point {', '.join(dup)} (SAEs "
                             f"{[i for i in g if names[i] in dup]}): one hook point takes one SAE. Evaluate them "
                             "separately (evaluate_many), or splice one SAE per hook point.")
    kw = dict(encode_kwargs or {})
    n_seq, ctx = ids_all.shape
    stats = [_Stats(int(sae.cfg.d_in), int(sae.cfg.d_sae), n_seq, ctx) for _, sae in saes]
    # A group of one SAE accumulates into that SAE's own sums: its conditions are the SAE's conditions.
    unique: list[tuple[int, ...]] = []
    for g in groups:
        if g not in unique:
            unique.append(g)
    gstats: list[_CEStats] = [stats[g[0]] if len(g) == 1 else _CEStats(n_seq, ctx) for g in unique]
    # Conditions end at the final normed hidden state where the adapter applies the head itself (the
    # head then runs tile by tile over the counted positions only); else at logits. The clean forward
    # records what the other conditions need to rerun only the blocks above their hook point.
    hidden = shared_prefix and adapter.has_unembed
    resume_at = sorted(set(names)) if shared_prefix else ()

    def rows(out: Tensor, at: Tensor) -> LogitRows:
        return from_hidden(out, at, adapter.unembed, adapter.vocab_size) if hidden else from_logits(out, at)

    kept: list[tuple[Tensor, Tensor, Any]] = []  # (ids, mask, prefix) of every batch, for the mean pass

    for lo in range(0, n_seq, batch_size):
        ids = ids_all[lo: lo + batch_size].to(adapter.device)
        m = mask_all[lo: lo + batch_size].to(adapter.device)
        lm = m[:, :-1].cpu()
        at, targets = counted(ids, m)
        acts: dict[str, Tensor] = {}

        def grab(key: str) -> HookFn:
            def fn(x: Tensor) -> None:
                acts[key] = x.detach()

            return fn

        out, prefix = adapter.forward_recording(ids, hooks={n: grab(n) for n in set(names)}, resume_at=resume_at,
                                                unembed=not hidden)
        clean = rows(out, at)
        del out

        def run(fns: Mapping[str, HookFn]) -> LogitRows:
            return rows(adapter.resume(prefix, fns, unembed=not hidden), at)

        ablate_mask = m if ablation_scope == "evaluated" else None
        batch_rows = slice(lo, lo + ids.shape[0])
        pending: list[tuple[int, LogitRows, LogitRows]] = []

        def flush() -> None:
            # The clean rows serve every pending group; logits (not hidden states) flush one group at a
            # time so that only one group's [batch, pos, vocab] logits are alive.
            conds = [clean] + [c for _, s, a in pending for c in (s, a)]
            ce, kl = token_stats(conds, targets, kl_to={1 + 2 * j for j in range(len(pending))})
            ce_clean = ce[0].cpu()
            for j, (g, _, _) in enumerate(pending):
                st = gstats[g]
                ce_s, kl_tok, ce_z = ce[1 + 2 * j].cpu(), kl[1 + 2 * j].cpu(), ce[2 + 2 * j].cpu()
                st.ce["clean"] += float(ce_clean.sum())
                st.ce["spliced"] += float(ce_s.sum())
                st.ce["zero"] += float(ce_z.sum())
                st.kl += float(kl_tok.sum())
                st.n_pred += ce_clean.shape[0]
                st.loss_delta[batch_rows][lm] = (ce_s - ce_clean).float()
                st.ce_clean_tok[batch_rows][lm] = ce_clean.float()
            pending.clear()

        outs: list[Tensor] = []
        for i, (_, sae) in enumerate(saes):
            x = acts[names[i]]
            res = reconstruct(sae, x, keep_error=keep_error, mask=m, encode_kwargs=kw)
            stats[i].add_acts(x, res.x_hat, res.z, m)
            outs.append(res.out)
            del res

        def spliced_fn(i: int) -> HookFn:
            x, out, sae = acts[names[i]], outs[i], saes[i][1]

            def fn(a: Tensor) -> Tensor:
                # The clean activation (every SAE of a single group; the lowest of a joint group) takes the
                # reconstruction made above; one changed by an SAE below is encoded as it arrives.
                if a is x or torch.equal(a, x):
                    return out
                return reconstruct(sae, a, keep_error=keep_error, mask=m, encode_kwargs=kw).out

            return fn

        zero: dict[frozenset, LogitRows] = {}  # zero-ablation depends on the hook points alone: one rerun per set
        for g, group in enumerate(unique):
            # Every SAE returning its input unchanged leaves the whole forward unchanged: the spliced
            # condition is then the clean condition, not a rerun that should agree with it.
            same = all(outs[i] is acts[names[i]] or torch.equal(outs[i], acts[names[i]]) for i in group)
            spliced = clean if same else run({names[i]: spliced_fn(i) for i in group})
            key = frozenset(names[i] for i in group)
            if key not in zero:
                zero[key] = run({names[i]: _replace(None, ablate_mask) for i in group})
            pending.append((g, spliced, zero[key]))
            if not hidden:
                flush()
        if pending:
            flush()
        del acts, clean, zero, outs
        kept.append((ids, m, prefix))

    # The mean activation is over all evaluated tokens, so mean-ablation needs a second pass. Groups at the
    # same hook points with the same means (the same activations summed in the same order) share one rerun.
    means = [st.mean_act() for st in stats]
    owner = []  # owner[g]: the group whose mean-ablated CE group g takes
    for g, group in enumerate(unique):
        j = next((h for h in range(g) if owner[h] == h and [names[i] for i in unique[h]] == [names[i] for i in group]
                  and all(torch.equal(means[a], means[b]) for a, b in zip(unique[h], group))), g)
        owner.append(j)
    own = sorted(set(owner))
    for ids, m, prefix in kept:
        at, targets = counted(ids, m)
        ablate_mask = m if ablation_scope == "evaluated" else None
        # Hidden states: every group's mean-ablated state in one stacked head pass; logits one at a time
        # (each holds [batch, pos, vocab] logits).
        for part in ([own] if hidden else [[g] for g in own]):
            conds = [rows(adapter.resume(prefix, {names[i]: _replace(means[i].float(), ablate_mask) for i in unique[g]},
                                         unembed=not hidden), at) for g in part]
            for g, ce_m in zip(part, token_stats(conds, targets).ce):
                gstats[g].ce["mean"] += float(ce_m.cpu().sum())
    for g, j in enumerate(owner):
        gstats[g].ce["mean"] = gstats[j].ce["mean"]
    kept.clear()

    reports = []
    for (_, sae), name, st in zip(saes, names, stats):
        reports.append(_report(sae, name, st, ids_all, adapter.tokenizer, keep_error, ablation_scope, top_contexts))
    rows_out = []
    for g in groups:
        st = gstats[unique.index(g)]
        if st.n_pred == 0:
            raise ValueError("No evaluated next-token predictions: every position is masked out.")
        ce = {c: v / st.n_pred for c, v in st.ce.items()}
        rows_out.append(GroupCE(tuple(names[i] for i in g), ce["clean"], ce["spliced"], ce["zero"], ce["mean"],
                                st.kl / st.n_pred, st.n_pred, st.loss_delta))
    return reports, rows_out


def _report(sae: Any, name: str, st: _Stats, ids: Tensor, tokenizer: Any, keep_error: bool,
            scope: str, top_contexts: int) -> EvalReport:
    if st.n_pred == 0:
        raise ValueError("No evaluated next-token predictions: every position is masked out.")
    ce = {c: v / st.n_pred for c, v in st.ce.items()}
    mean = st.sum_x / st.n_act
    total_var = st.sum_x2 - st.n_act * float(mean.pow(2).sum())
    fvu = st.sq_err / total_var if total_var > 0 else float("nan")
    freq = (st.fired / st.n_act).float()
    return EvalReport(
        hook=name,
        architecture=str(getattr(sae, "architecture", type(sae).__name__)),
        d_sae=int(sae.cfg.d_sae),
        ce_clean=ce["clean"], ce_spliced=ce["spliced"], ce_zero_ablated=ce["zero"], ce_mean_ablated=ce["mean"],
        recaptured_zero=_ratio(ce["zero"], ce["spliced"], ce["clean"]),
        recaptured_mean=_ratio(ce["mean"], ce["spliced"], ce["clean"]),
        delta_ce=ce["spliced"] - ce["clean"],
        kl=st.kl / st.n_pred,
        fvu=fvu, explained_variance=1 - fvu,
        l0=st.l0 / st.n_act,
        dead_frac=float((st.fired == 0).double().mean()),
        dense_frac=float((freq > DENSE_THRESHOLD).double().mean()),
        tokens=st.n_pred, act_tokens=st.n_act,
        keep_error=keep_error, ablation_scope=scope,
        loss_delta=st.loss_delta, fire_freq=freq,
        worst=_worst(st, ids, tokenizer, top_contexts),
    )


def evaluate(
    adapter: Adapter,
    sae: Any,
    tokens: TokenBatch | Int[Tensor, "batch pos"],
    *,
    hook: str | None = None,
    batch_size: int = 8,
    keep_error: bool = False,
    strict: bool = False,
    allow_hook_mismatch: bool = False,
    top_contexts: int = 5,
    ablation_scope: str = "evaluated",
    width: int | None = None,
    k: int | None = None,
    residual_threshold: float | None = None,
    exclude_first: int = 1,
    shared_prefix: bool = True,
) -> EvalReport:
    """Splice one SAE at ``hook`` (default: its metadata's hook) and measure what it costs.

    ``width`` evaluates a Matryoshka prefix; ``k`` / ``residual_threshold`` set a matching-pursuit
    SAE's inference sparsity. See ``evaluate_many`` for the rest.

        >>> r = evaluate(adapter, sae, held_out, hook="resid_post.6")
        >>> print(r.table())
    """
    view, kw = inference_view(sae, width=width, k=k, residual_threshold=residual_threshold)
    return evaluate_many(adapter, [(hook, view)], tokens, batch_size=batch_size, keep_error=keep_error,
                         strict=strict, allow_hook_mismatch=allow_hook_mismatch, top_contexts=top_contexts,
                         ablation_scope=ablation_scope, encode_kwargs=kw, exclude_first=exclude_first,
                         shared_prefix=shared_prefix)[0]


__all__ = ["EvalReport", "GroupCE", "MetadataMismatchWarning", "WorstContext", "evaluate", "evaluate_groups",
           "evaluate_many", "inference_view", "resolve_hook", "METRIC_DEFINITIONS"]
