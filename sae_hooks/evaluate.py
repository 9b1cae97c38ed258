"""What splicing an SAE into the live model costs: recaptured LM loss, ΔCE, KL, FVU, L0.

Metrics (DESIGN.md "Metrics"), all over the *evaluated* tokens — positions kept by the token
mask (position 0, the attention sink, and special tokens are excluded by default):

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

On HF models the blocks below the hook run once per batch: the clean forward records the block
inputs and the spliced / zero / mean conditions rerun only the blocks above the hook point
(``resid_post.6``: blocks 7..). Every condition stops at the final normed hidden state; the head
then runs over the counted positions only, one product per 1,024-token vocabulary tile for all
conditions at once (their hidden rows stacked: [conditions × up to 512 positions, d]), and the
per-tile statistics (row maxima, Σ exp, the KL dot products) are combined in float64, so no
[batch, pos, vocab] logits are ever built (``_head_stats``).

    >>> report = evaluate(adapter, sae, load_token_tensor(tok, CorpusConfig(split="eval"), 50_000))
    >>> report.recaptured_zero, report.delta_ce, report.fvu
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .adapters.base import Adapter, HookFn
from .data import TokenBatch, make_mask
from .splice import check_width, reconstruct

DENSE_THRESHOLD = 0.1
"""A latent firing on more than this fraction of evaluated tokens counts as dense (DESIGN.md)."""

ABLATION_SCOPES = ("evaluated", "all")

METRIC_DEFINITIONS = (
    "FVU = sum||x - x_hat||^2 / sum||x - mean(x)||^2 pooled over evaluated tokens; "
    "L0 = mean non-zero latents per token; dead = never fired, dense = fires on > 10% of tokens; "
    "CE = mean next-token cross-entropy (nats) over the same tokens; "
    "recaptured = (CE_ablated - CE_spliced) / (CE_ablated - CE_clean), ratio of means, for zero- and "
    "mean-ablation (mean over evaluated tokens); delta_CE = CE_spliced - CE_clean; "
    "KL = mean per-token KL(p_clean || p_spliced). Evaluated tokens exclude the first position(s) and special tokens."
)


class MetadataMismatchWarning(UserWarning):
    """The SAE's metadata names another model or hook point than the one it is evaluated on."""


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
# Checks on what is evaluated


def _model_key(name: Any) -> str:
    return str(name).rstrip("/").rsplit("/", 1)[-1].strip().lower()


def _mismatch(msg: str, strict: bool) -> None:
    if strict:
        raise ValueError(msg + " (strict mode: refusing; drop --strict to evaluate anyway).")
    warnings.warn(msg + " Evaluating anyway; pass strict=True (--strict) to make this an error.",
                  MetadataMismatchWarning, stacklevel=3)


def resolve_hook(adapter: Adapter, sae: Any, hook: str | None = None, *, strict: bool = False) -> str:
    """The canonical hook point to evaluate ``sae`` at, after checking width and metadata.

    ``hook=None`` takes the SAE's ``metadata["hook_name"]`` in any spelling the adapter knows
    (``resid_post.6``, ``blocks.6.hook_resid_post``, ``model.layers.6``). A metadata model or hook
    that differs from the one used warns (``MetadataMismatchWarning``), or raises with ``strict``.

        >>> resolve_hook(adapter, sae)           # from the SAE's metadata
        'resid_post.6'
    """
    meta = getattr(sae, "metadata", None) or {}
    meta_hook = meta.get("hook_name")
    if hook is None:
        if not meta_hook:
            raise ValueError(
                "No hook point given and the SAE's metadata names none (metadata['hook_name'] is missing). "
                "Pass hook='resid_post.6' (CLI: --hook resid_post.6)."
            )
        try:
            name = adapter.canonical(meta_hook)
        except ValueError as e:
            raise ValueError(f"The SAE's metadata names hook point {meta_hook!r}, which {adapter.name} does not have: {e} "
                             "Pass the hook point explicitly.") from None
    else:
        name = adapter.canonical(hook)
        if meta_hook:
            try:
                meta_name = adapter.canonical(meta_hook)
            except ValueError:
                meta_name = None
            if meta_name != name:
                _mismatch(f"The SAE was trained at {meta_hook!r}"
                          f"{'' if meta_name is None else f' (= {meta_name})'} but is evaluated at {name}.", strict)
    model_name = meta.get("model_name")
    if model_name and _model_key(model_name) != _model_key(adapter.name):
        _mismatch(f"The SAE's metadata names model {model_name!r} but it is evaluated on {adapter.name!r}.", strict)
    return check_width(adapter, name, sae)


def inference_view(sae: Any, *, width: int | None = None, k: int | None = None,
                   residual_threshold: float | None = None) -> tuple[Any, dict[str, Any]]:
    """(SAE to evaluate, encode kwargs) for a Matryoshka prefix ``width`` or an MP inference ``k`` /
    ``residual_threshold``, with a clear error where the SAE has no such knob.

        >>> small, kw = inference_view(matryoshka_sae, width=1152)
        >>> mp, kw = inference_view(mp_sae, k=16)        # kw == {"k": 16}
    """
    view, kw = sae.inference_variant(width=width, k=k, residual_threshold=residual_threshold)
    return view, kw


# ---------------------------------------------------------------------------------------------
# Accumulation


class _Stats:
    """Running sums for one SAE; float64 so that pooled FVU over 10^5 tokens stays exact enough."""

    def __init__(self, d_in: int, d_sae: int, n_seq: int, ctx: int):
        self.ce = {c: 0.0 for c in ("clean", "spliced", "zero", "mean")}
        self.kl = 0.0
        self.n_pred = 0
        self.n_act = 0
        self.sq_err = 0.0
        self.sum_x = torch.zeros(d_in, dtype=torch.float64)
        self.sum_x2 = 0.0
        self.l0 = 0.0
        self.fired = torch.zeros(d_sae, dtype=torch.float64)
        self.loss_delta = torch.full((n_seq, ctx - 1), float("nan"))
        self.ce_clean_tok = torch.full((n_seq, ctx - 1), float("nan"))

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


CHUNK_ROWS = 512
"""Most positions per block of the head product (each block streams the whole head weight once)."""

STACK_ROWS = 2048
"""Most rows of one head product. Where every condition comes from a final hidden state, their rows for
a block of positions are stacked into one [conditions × positions, d] operand, so each vocabulary
tile is one larger product instead of one per condition; a block then holds
min(CHUNK_ROWS, STACK_ROWS // conditions) positions. Measured on SmolLM2 (1,008 positions, 4
conditions, fp32, 2 threads): head + statistics 0.85 s stacked against 0.95–1.00 s one product per
condition."""

VOCAB_TILE = 1024
"""Vocabulary columns per tile of the head product. The [conditions × positions, 1024] tile of logits
(8 MB at most) is reduced right after the product, so [pos, vocab] logits never exist. Measured on
SmolLM2 (1,008 positions, 3 conditions, fp32, 2 threads, one product per condition): head +
statistics 0.82 s in tiles, against 0.83 s for the bare head products over whole-vocabulary rows
(512 at a time) and 0.96 s for those plus the log-softmax statistics taken 8 rows at a time."""


class _Logits(NamedTuple):
    """One condition's logits at the counted positions, produced tile by tile on demand."""

    vocab: int
    tile: Callable[[int, int, int, int], Tensor]
    """(lo, hi, v0, v1) → logits [hi − lo, v1 − v0] of counted positions lo:hi, columns v0:v1."""
    hidden: Tensor | None = None
    """The final normed hidden state at the counted positions [n, d], where the logits are
    ``head(hidden)``: conditions sharing ``head`` are stacked into one product per tile."""
    head: Callable[[Tensor, slice], Tensor] | None = None
    """(hidden rows, vocabulary columns) → logits, e.g. ``adapter.unembed``."""
    source: Tensor | None = None
    """The tensor the tiles are read from (the hidden rows, or the full logits indexed by ``at``): two
    conditions with equal sources read the same way have equal logits, and are computed once."""
    at: Tensor | None = None
    """The flat positions read from ``source`` when it holds full logits."""

    def same_as(self, other: "_Logits") -> bool:
        """Whether ``other`` has the same logits by construction (equal source, read the same way)."""
        if other is self:
            return True
        if self.source is None or other.source is None or self.head != other.head or self.at is not other.at:
            return False
        return self.source.shape == other.source.shape and torch.equal(self.source, other.source)


def _counted(ids: Tensor, m: Tensor) -> tuple[Int[Tensor, " n"], Int[Tensor, " n"]]:
    """Flat indices into [batch·pos] of the positions whose next-token loss counts (evaluated and not
    last), row-major like ``m[:, :-1][...]``, and the token each of them predicts."""
    lm = m[:, :-1]
    flat = torch.arange(ids.numel(), device=ids.device).view(ids.shape)[:, :-1]
    return flat[lm], ids[:, 1:][lm]


def _from_hidden(adapter: Adapter, hidden: Float[Tensor, "batch pos d"], at: Tensor) -> _Logits:
    """The head applied tile by tile to the final normed hidden state at the counted positions."""
    h = hidden.reshape(-1, hidden.shape[-1])[at]  # [n, d]
    head = adapter.unembed
    return _Logits(adapter.vocab_size, lambda lo, hi, v0, v1: head(h[lo:hi], slice(v0, v1)), h, head, h)


def _from_logits(logits: Float[Tensor, "batch pos vocab"], at: Tensor) -> _Logits:
    flat = logits.reshape(-1, logits.shape[-1])  # [batch·pos, vocab], a view
    return _Logits(flat.shape[-1], lambda lo, hi, v0, v1: flat[at[lo:hi], v0:v1], source=flat, at=at)


_LOWEST = torch.finfo(torch.float32).min


def _chunks(n: int, size: int):
    return ((lo, min(n, lo + size)) for lo in range(0, n, size))


def _head_stats(conds: Sequence[_Logits], targets: Int[Tensor, " n"], kl_to: Collection[int] = ()
                ) -> tuple[list[Tensor], dict[int, Tensor]]:
    """Next-token CE of every condition and KL(p_0 ‖ p_i) for each i in ``kl_to``, per counted position.

    Conditions with the same logits by construction (``_Logits.same_as``: an identity SAE, a kept error
    term, a zero SAE against zero-ablation) are computed once and share the result, so their CE is
    equal and their KL to condition 0 exactly 0 on every CPU. Reducing them separately would not
    guarantee it: the same hidden rows placed at two positions of one stacked head product may round
    differently, depending on the CPU's matrix kernel.
    """
    unique: list[_Logits] = []
    rep = []  # conds[i] is unique[rep[i]]'s logits
    for c in conds:
        j = next((u for u, d in enumerate(unique) if d.same_as(c)), None)
        if j is None:
            unique.append(c)
            j = len(unique) - 1
        rep.append(j)
    ce_u, kl_u = _tile_stats(unique, targets, {rep[i] for i in kl_to if rep[i] != 0})
    zero = torch.zeros(targets.shape[0], dtype=torch.float64, device=targets.device)
    return [ce_u[j] for j in rep], {i: zero if rep[i] == 0 else kl_u[rep[i]] for i in kl_to}


def _tile_stats(conds: Sequence[_Logits], targets: Int[Tensor, " n"], kl_to: Collection[int] = ()
                ) -> tuple[list[Tensor], dict[int, Tensor]]:
    """``_head_stats`` for conditions that are all different.

    One pass over [conditions, rows, VOCAB_TILE] tiles of logits, taking from each tile its row
    maxima m_t, Σ exp(l − m_t) and (against condition 0) Σ exp(l_0 − m_t)·(l_0 − l_i); the tiles are
    then combined in float64: log Σ_v exp(l_v) = M + log Σ_t exp(m_t − M)·s_t with M = max_t m_t, and
    KL(p_0 ‖ p_i) = Σ p_0·(l_0 − l_i) − lse_0 + lse_i. No [pos, vocab] tensor is ever built.
    """
    n, dev, n_c = targets.shape[0], targets.device, len(conds)
    kls = sorted(kl_to)
    vocab, head = conds[0].vocab, conds[0].head
    stacked = head is not None and all(c.hidden is not None and c.head == head for c in conds)
    tiles = list(_chunks(vocab, VOCAB_TILE))
    ce = torch.empty(n_c, n, dtype=torch.float64, device=dev)
    kl = torch.empty(len(kls), n, dtype=torch.float64, device=dev)
    scratch: dict[tuple, Tensor] = {}

    def buf(k: int, like: Tensor) -> Tensor:  # reused scratch tiles: a fresh one costs page faults
        key = (k, *like.shape)
        if key not in scratch:
            scratch[key] = torch.empty_like(like)
        return scratch[key]

    for lo, hi in _chunks(n, max(1, min(CHUNK_ROWS, STACK_ROWS // n_c))):
        r, t = hi - lo, targets[lo:hi]
        t_max = torch.empty(len(tiles), n_c, r, device=dev)
        t_sum = torch.empty_like(t_max)
        t_dot = torch.empty(len(tiles), len(kls), r, device=dev)
        target = torch.zeros(n_c, r, device=dev)
        h = torch.cat([c.hidden[lo:hi] for c in conds]) if stacked else None
        for j, (v0, v1) in enumerate(tiles):
            # A fresh tensor either way: overwritten in place below.
            if stacked:
                logits = head(h, slice(v0, v1)).float().view(n_c, r, v1 - v0)
            else:
                logits = torch.stack([c.tile(lo, hi, v0, v1).float() for c in conds])
            mx = logits.amax(-1, keepdim=True).clamp_(min=_LOWEST)  # a row of -inf tile: exp(l − m) = 0
            t_max[j] = mx[..., 0]
            inside = (t >= v0) & (t < v1)
            col = (t - v0).clamp_(0, v1 - v0 - 1)[None, :, None].expand(n_c, r, 1)
            torch.where(inside, logits.gather(-1, col)[..., 0], target, out=target)
            if kls:  # exp(l_0 − m_0) before the tile is overwritten
                e_0 = torch.sub(logits[0], mx[0], out=buf(0, logits[0])).exp_()
                for q, i in enumerate(kls):
                    torch.sum(torch.sub(logits[0], logits[i], out=buf(1, logits[0])).mul_(e_0), -1, out=t_dot[j, q])
            torch.sum(logits.sub_(mx).exp_(), -1, out=t_sum[j])
        m_t = t_max.double()  # [tiles, conditions, rows]
        top = m_t.amax(0)
        w = (m_t - top).exp_()
        total = (t_sum.double() * w).sum(0)
        ce[:, lo:hi] = (top - target.double()) + total.log()
        for q, i in enumerate(kls):
            cross = (t_dot[:, q].double() * w[:, 0]).sum(0) / total[0]
            kl[q, lo:hi] = (cross + (top[i] - top[0]) + (total[i].log() - total[0].log())).clamp_min_(0)  # >= 0; rounding aside
    return list(ce.unbind(0)), {i: kl[q] for q, i in enumerate(kls)}


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


def _as_tokens(adapter: Adapter, tokens: TokenBatch | Tensor, exclude_first: int) -> tuple[Tensor, Tensor]:
    if isinstance(tokens, TokenBatch) or (isinstance(tokens, tuple) and len(tokens) == 2):
        ids, mask = tokens
    elif isinstance(tokens, Tensor):
        ids = tokens if tokens.dim() == 2 else tokens[None]
        special = adapter.tokenizer if adapter.tokenizer is not None else []
        mask = make_mask(ids, special, exclude_first=exclude_first, exclude_special=adapter.tokenizer is not None)
    else:
        raise TypeError(f"tokens must be a TokenBatch(input_ids, mask) or an int tensor [batch, pos]; got {type(tokens).__name__}.")
    if ids.dim() != 2 or tuple(mask.shape) != tuple(ids.shape):
        raise ValueError(f"tokens: input_ids {tuple(ids.shape)} and mask {tuple(mask.shape)} must both be [batch, pos].")
    if ids.shape[1] < 2:
        raise ValueError(f"tokens have {ids.shape[1]} positions; next-token loss needs at least 2.")
    return ids.long(), mask.bool()


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
    top_contexts: int = 5,
    ablation_scope: str = "evaluated",
    encode_kwargs: Mapping[str, Any] | None = None,
    exclude_first: int = 1,
    shared_prefix: bool = True,
) -> list[EvalReport]:
    """Evaluate several SAEs (any hook points) on the same tokens, sharing the clean forward.

    ``saes`` is a list of ``(hook, sae)``; ``hook=None`` uses the SAE's metadata. Each SAE is
    spliced alone. ``tokens`` is a ``TokenBatch`` (its mask says which positions are evaluated) or
    bare ids (mask: the first ``exclude_first`` positions and special tokens excluded).
    ``shared_prefix=False`` forces plain full forwards (the reference path of the tests).

        >>> r3, r6 = evaluate_many(adapter, [("resid_post.3", sae3), (None, sae6)], held_out)
    """
    if ablation_scope not in ABLATION_SCOPES:
        raise ValueError(f"ablation_scope={ablation_scope!r}; valid: {', '.join(ABLATION_SCOPES)}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}; it must be an int >= 1 (sequences per forward).")
    if not saes:
        raise ValueError("evaluate_many needs at least one (hook, sae) pair; got none.")
    ids_all, mask_all = _as_tokens(adapter, tokens, exclude_first)
    names = [resolve_hook(adapter, sae, hook, strict=strict) for hook, sae in saes]
    sites = [adapter.resolve(n) for n in names]
    kw = dict(encode_kwargs or {})
    n_seq, ctx = ids_all.shape
    stats = [_Stats(int(sae.cfg.d_in), int(sae.cfg.d_sae), n_seq, ctx) for _, sae in saes]
    # Blocks below the hook are shared by all four conditions: record them once (HF only). The
    # clean forward then stops before the head, every condition returns its final normed hidden
    # state, and the head runs tile by tile over the counted positions only (``_head_stats``).
    use_prefix = (shared_prefix and hasattr(adapter, "forward_recording") and
                  getattr(getattr(adapter, "family", None), "final_norm", None) is not None and
                  adapter.model.get_output_embeddings() is not None and
                  all(s.layer is not None for s in sites))
    first_layer = min(s.layer for s in sites) if use_prefix else None
    entries = {adapter.entry_layer(n) for n in names} if use_prefix else set()
    kept: list[tuple[int, Tensor, Tensor, Any]] = []  # (row offset, ids, mask, prefix) for the mean pass

    for lo in range(0, n_seq, batch_size):
        ids = ids_all[lo: lo + batch_size].to(adapter.device)
        m = mask_all[lo: lo + batch_size].to(adapter.device)
        lm = m[:, :-1].cpu()
        at, targets = _counted(ids, m)
        acts: dict[str, Tensor] = {}

        def grab(key: str) -> HookFn:
            def fn(x: Tensor) -> None:
                acts[key] = x.detach()

            return fn

        capture = {n: grab(n) for n in set(names)}
        if use_prefix:
            hidden, prefix = adapter.forward_recording(ids, layer=first_layer, hooks=capture, unembed=False)
            prefix = _trim(prefix, entries, adapter.n_layers)
            clean = _from_hidden(adapter, hidden, at)
            del hidden
        else:
            prefix = None
            clean = _from_logits(adapter.forward(ids, hooks=capture), at)
        run = _runner(adapter, ids, at, prefix)

        ablate_mask = m if ablation_scope == "evaluated" else None
        rows = slice(lo, lo + ids.shape[0])
        pending: list[tuple[int, _Logits, _Logits]] = []

        def flush() -> None:
            # The clean tiles serve every pending SAE; plain forwards (logits) flush one SAE at a
            # time so that only one SAE's [batch, pos, vocab] logits are alive.
            conds = [clean] + [c for _, s, a in pending for c in (s, a)]
            ce, kl = _head_stats(conds, targets, kl_to={1 + 2 * j for j in range(len(pending))})
            ce_clean = ce[0].cpu()
            for j, (i, _, _) in enumerate(pending):
                st = stats[i]
                ce_s, kl_tok, ce_z = ce[1 + 2 * j].cpu(), kl[1 + 2 * j].cpu(), ce[2 + 2 * j].cpu()
                st.ce["clean"] += float(ce_clean.sum())
                st.ce["spliced"] += float(ce_s.sum())
                st.ce["zero"] += float(ce_z.sum())
                st.kl += float(kl_tok.sum())
                st.n_pred += ce_clean.shape[0]
                st.loss_delta[rows][lm] = (ce_s - ce_clean).float()
                st.ce_clean_tok[rows][lm] = ce_clean.float()
            pending.clear()

        for i, (_, sae) in enumerate(saes):
            x = acts[names[i]]
            res = reconstruct(sae, x, keep_error=keep_error, mask=m, encode_kwargs=kw)
            stats[i].add_acts(x, res.x_hat, res.z, m)
            # With the error term kept and no edit the spliced activation is the clean one itself: the
            # spliced condition is the clean condition, not a rerun that should agree with it.
            spliced = clean if res.out is x else run(names[i], lambda a, out=res.out: out)
            pending.append((i, spliced, run(names[i], _replace(None, ablate_mask))))
            del res
            if prefix is None:
                flush()
        if pending:
            flush()
        del acts, clean
        kept.append((lo, ids, m, prefix))

    # The mean activation is over all evaluated tokens, so mean-ablation needs a second pass.
    means = [st.mean_act() for st in stats]
    for lo, ids, m, prefix in kept:
        at, targets = _counted(ids, m)
        run = _runner(adapter, ids, at, prefix)
        ablate_mask = m if ablation_scope == "evaluated" else None
        # From the shared prefix every SAE's mean-ablated state goes into one stacked head pass;
        # plain forwards one SAE at a time (each holds [batch, pos, vocab] logits).
        for group in ([range(len(saes))] if prefix is not None else [[i] for i in range(len(saes))]):
            conds = [run(names[i], _replace(means[i].float(), ablate_mask)) for i in group]
            for i, ce_m in zip(group, _head_stats(conds, targets)[0]):
                stats[i].ce["mean"] += float(ce_m.cpu().sum())
    kept.clear()

    reports = []
    for (_, sae), name, st in zip(saes, names, stats):
        reports.append(_report(sae, name, st, ids_all, adapter.tokenizer, keep_error, ablation_scope, top_contexts))
    return reports


def _runner(adapter: Adapter, ids: Tensor, at: Tensor, prefix: Any) -> Callable[[str, HookFn], _Logits]:
    """How one condition runs on this batch: ``run(hook, fn)`` gives the logits of the counted
    positions ``at`` under ``fn``, from the shared prefix (final hidden state, head applied lazily
    tile by tile) or, without a prefix, from a plain full forward."""

    def run(name: str, fn: HookFn) -> _Logits:
        if prefix is None:
            return _from_logits(adapter.forward(ids, hooks={name: fn}), at)
        return _from_hidden(adapter, adapter.resume(prefix, {name: fn}, unembed=False), at)

    return run


def _trim(prefix: Any, keep: set[int], n_layers: int) -> Any:
    """Drop recorded hidden states of blocks no condition restarts from (they can be large)."""
    from .adapters.hf import Prefix

    calls = list(prefix.calls)
    for i in range(prefix.layer, len(calls)):
        if i in keep or calls[i] is None:
            continue
        args, kw = calls[i]
        calls[i] = ((None, *args[1:]) if args else args, {k: v for k, v in kw.items() if k != "hidden_states"})
    return Prefix(prefix.layer, calls, prefix.final if n_layers in keep else None)


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
                         strict=strict, top_contexts=top_contexts, ablation_scope=ablation_scope,
                         encode_kwargs=kw, exclude_first=exclude_first, shared_prefix=shared_prefix)[0]


__all__ = ["EvalReport", "MetadataMismatchWarning", "WorstContext", "evaluate", "evaluate_many",
           "inference_view", "resolve_hook", "METRIC_DEFINITIONS"]
