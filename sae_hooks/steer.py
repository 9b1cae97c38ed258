"""Steering: edit SAE latents inside a live model, during any forward or generation.

An edit changes one latent's code ``z_f`` at a hook point; the activation written back is the
exact error-preserving form ``x + (decode(z_edited) - decode(z))`` (``keep_error=True``, the
default; DESIGN.md), so an edit that changes nothing leaves the logits bitwise equal and ``add``
moves the activation by ``value · W_dec[f]`` whatever the SAE fails to reconstruct.

Kinds (``Edit.parse("LATENT:KIND:VALUE")``):

- ``add``    z_f ← z_f + v  (the activation moves by v·W_dec[f], at every selected position)
- ``clamp``  z_f ← v        (clamp to 0 with the error kept removes exactly the latent's contribution)
- ``scale``  z_f ← v·z_f
- ``ablate`` z_f ← 0        (``LATENT:ablate``; a value, if given, must be 0)

Positions: ``"all"``, ``"prompt"`` or ``"generated"``. With a KV cache, ``generate`` first runs
the whole prompt (the prompt positions) and then one new token per forward (the generated
positions); the hook sees only ``[batch, 1, d]`` then, so each hook keeps a position counter.
The first ``exclude_first`` positions are never edited: position 0 is an attention sink in
SmolLM2 (residual norms ~23,000) that no SAE is trained on.

    >>> with steer(adapter, {"resid_post.6": (sae, ["123:add:8"])}):
    ...     out = generate(adapter, prompt_ids, max_new_tokens=20)
    >>> effects = side_effects(adapter, {"resid_post.6": (sae, ["123:add:8"])}, held_out)
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .adapters.base import Adapter, HookFn
from .data import TokenBatch, make_mask
from .splice import Spliced, check_width, reconstruct

EDIT_KINDS: tuple[str, ...] = ("add", "clamp", "scale", "ablate")
POSITIONS: tuple[str, ...] = ("all", "prompt", "generated")


# ---------------------------------------------------------------------------------------------
# Edits


@dataclass(frozen=True)
class Edit:
    """One change to one latent's code. ``Edit.parse("123:add:8")`` reads the CLI form.

        >>> Edit(123, "clamp", 0.0)
        >>> Edit.parse("7:ablate")
    """

    latent: int
    """Index of the latent in the SAE's dictionary (0 <= latent < d_sae; checked by ``steer``)."""
    kind: str
    """``add`` (z += value), ``clamp`` (z = value), ``scale`` (z *= value) or ``ablate`` (z = 0)."""
    value: float = 0.0
    """The number the kind uses; must be finite; 0 for ``ablate``."""

    def __post_init__(self) -> None:
        if isinstance(self.latent, bool) or not isinstance(self.latent, int) or self.latent < 0:
            raise ValueError(f"Edit.latent={self.latent!r}; it must be an int >= 0 (an index into the SAE's latents).")
        if self.kind not in EDIT_KINDS:
            raise ValueError(f"Edit.kind={self.kind!r} is unknown; valid kinds: {', '.join(EDIT_KINDS)}.")
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)) or not math.isfinite(self.value):
            raise ValueError(f"Edit.value={self.value!r}; it must be a finite number (e.g. 8 or -2.5).")
        if self.kind == "ablate" and self.value != 0:
            raise ValueError(f"Edit ablate of latent {self.latent} was given value {self.value}; ablate takes no "
                             "value (write LATENT:ablate). To set a latent to a number use LATENT:clamp:VALUE.")

    @classmethod
    def parse(cls, text: str) -> "Edit":
        """``"123:add:8"`` → ``Edit(123, "add", 8.0)``; ``"5:ablate"`` → ``Edit(5, "ablate", 0.0)``.

            >>> Edit.parse("42:scale:0.5")
        """
        if isinstance(text, Edit):
            return text
        form = "LATENT:KIND:VALUE (e.g. 123:add:8, 7:clamp:0, 9:scale:2, 5:ablate)"
        if not isinstance(text, str):
            raise ValueError(f"An edit must be a string of the form {form}; got {text!r}.")
        parts = text.strip().split(":")
        if len(parts) not in (2, 3):
            raise ValueError(f"Edit {text!r} is not of the form {form}.")
        latent_s, kind = parts[0].strip(), parts[1].strip().lower()
        try:
            latent = int(latent_s)
        except ValueError:
            raise ValueError(f"Edit {text!r}: latent {latent_s!r} is not an integer index. Form: {form}.") from None
        if kind not in EDIT_KINDS:
            raise ValueError(f"Edit {text!r}: unknown kind {kind!r}; valid kinds: {', '.join(EDIT_KINDS)}.")
        if len(parts) == 2:
            if kind != "ablate":
                raise ValueError(f"Edit {text!r}: kind {kind!r} needs a value, e.g. {latent}:{kind}:8. Form: {form}.")
            return cls(latent, kind, 0.0)
        try:
            value = float(parts[2])
        except ValueError:
            raise ValueError(f"Edit {text!r}: value {parts[2]!r} is not a number. Form: {form}.") from None
        return cls(latent, kind, value)

    def __str__(self) -> str:
        return f"{self.latent}:ablate" if self.kind == "ablate" else f"{self.latent}:{self.kind}:{self.value:g}"


def apply_edits(z: Float[Tensor, "... d_sae"], edits: Sequence[Edit]) -> Float[Tensor, "... d_sae"]:
    """The codes after the edits, applied in order (a new tensor; ``z`` is not modified).

        >>> z_edited = apply_edits(sae.encode(x), [Edit(3, "clamp", 0.0)])
    """
    out = z.clone()
    for e in edits:
        col = out[..., e.latent]
        if e.kind == "add":
            out[..., e.latent] = col + e.value
        elif e.kind == "clamp":
            out[..., e.latent] = e.value
        elif e.kind == "scale":
            out[..., e.latent] = col * e.value
        else:  # ablate
            out[..., e.latent] = 0.0
    return out


Interventions = Mapping[str, tuple[Any, Sequence["Edit | str"]]]
"""``{hook point: (sae, [edits])}``; edits as ``Edit`` or their string form."""


def _normalize(adapter: Adapter, interventions: Interventions) -> dict[str, tuple[Any, tuple[Edit, ...]]]:
    """Canonical hook names, parsed edits, latent ranges and SAE widths checked — before any hook."""
    if not isinstance(interventions, Mapping) or not interventions:
        raise ValueError("steer() needs at least one {hook: (sae, [edits])} entry; got "
                         f"{interventions!r}. Example: {{'resid_post.6': (sae, ['123:add:8'])}}.")
    out: dict[str, tuple[Any, tuple[Edit, ...]]] = {}
    for hook, pair in interventions.items():
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ValueError(f"steer(): the value for hook {hook!r} must be a pair (sae, [edits]); got {pair!r}.")
        sae, edits = pair
        if isinstance(edits, (str, Edit)):
            edits = [edits]
        edits = tuple(Edit.parse(e) for e in edits)
        name = check_width(adapter, hook, sae)
        d_sae = int(sae.cfg.d_sae)
        for e in edits:
            if e.latent >= d_sae:
                raise ValueError(f"Edit {e} at {name}: latent {e.latent} is out of range; this SAE has {d_sae} latents "
                                 f"(0..{d_sae - 1}).")
        if name in out:
            raise ValueError(f"Hook point {name} is given twice (as {hook!r}); put all its edits in one list.")
        out[name] = (sae, edits)
    return out


# ---------------------------------------------------------------------------------------------
# Positions during generation


@dataclass(frozen=True)
class SteerConfig:
    """Where and how edits are written back (see ``steer``)."""

    positions: str = "all"
    """``"all"``, ``"prompt"`` (positions of the prompt / of plain forwards) or ``"generated"``
    (positions produced by generation)."""
    keep_error: bool = True
    """Write ``x + (decode(z_edited) - decode(z))`` (exact; no edit ⇒ bitwise ``x``). False writes
    ``decode(z_edited)``, i.e. also replaces the activation by the SAE reconstruction."""
    exclude_first: int = 1
    """Leading positions never edited. Position 0 is an attention sink (DESIGN.md); 0 edits it too."""
    prompt_len: int | None = None
    """Prompt length. None: the positions of a forward that starts a sequence are the prompt, and
    the one-token forwards of a KV-cached generation that follow it are generated. Give it for
    generation without a KV cache (each step reruns the whole sequence)."""

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ValueError(f"positions={self.positions!r}; valid: {', '.join(POSITIONS)}.")
        if not isinstance(self.keep_error, bool):
            raise ValueError(f"keep_error={self.keep_error!r}; it must be True or False.")
        if isinstance(self.exclude_first, bool) or not isinstance(self.exclude_first, int) or self.exclude_first < 0:
            raise ValueError(f"exclude_first={self.exclude_first!r}; it must be an int >= 0 "
                             "(1 leaves the attention sink at position 0 alone).")
        if self.prompt_len is not None and (isinstance(self.prompt_len, bool) or not isinstance(self.prompt_len, int)
                                            or self.prompt_len < 1):
            raise ValueError(f"prompt_len={self.prompt_len!r}; it must be None or an int >= 1.")


# Prompt length of the ``generate`` call in progress (None outside one). Lets the position counters
# tell prompt from generated positions when a backend reruns the whole sequence at every step.
_GENERATING_PROMPT_LEN: contextvars.ContextVar[int | None] = contextvars.ContextVar("_GENERATING_PROMPT_LEN",
                                                                                  default=None)


class _PositionCounter:
    """Absolute positions of the tokens one hook sees, across the forwards of a generation.

    A forward of more than one token, or the first forward, starts a sequence at position 0
    (a prompt prefill, or a full uncached rerun); a one-token forward after it continues the
    sequence (a KV-cached decoding step). A one-token *prompt* right after another sequence is
    indistinguishable from a decoding step: call ``Steering.reset()`` between such sequences.
    """

    def __init__(self) -> None:
        self.seen = 0
        self.prompt = 0

    def advance(self, t: int) -> tuple[int, int]:
        """(start position, prompt length) for a forward of ``t`` tokens."""
        if t == 1 and self.seen > 0:
            start = self.seen
        else:
            start = 0
            self.prompt = t
        self.seen = start + t
        return start, self.prompt


class Steering:
    """The live steering of one ``with steer(...)`` block: hooks, counters, and what they did.

    ``edited_positions[hook]`` lists, per forward, the absolute positions edited (for checks).

        >>> with steer(adapter, {"resid_post.6": (sae, ["5:add:4"])}) as s:
        ...     generate(adapter, ids, 10); s.edited_positions["resid_post.6"]
    """

    def __init__(self, interventions: dict[str, tuple[Any, tuple[Edit, ...]]], cfg: SteerConfig,
                 observe: Callable[[str, Spliced, Tensor], None] | None = None):
        self.interventions = interventions
        self.cfg = cfg
        self.observe = observe
        self.counters = {name: _PositionCounter() for name in interventions}
        self.edited_positions: dict[str, list[list[int]]] = {name: [] for name in interventions}

    def reset(self) -> None:
        """Forget position counts: the next forward starts a new sequence."""
        for c in self.counters.values():
            c.seen = c.prompt = 0

    def _selected(self, name: str, t: int, device: torch.device) -> tuple[Bool[Tensor, " pos"], Tensor]:
        start, prompt = self.counters[name].advance(t)
        pos = torch.arange(start, start + t, device=device)
        if self.cfg.prompt_len is not None:
            prompt = self.cfg.prompt_len
        elif _GENERATING_PROMPT_LEN.get() is not None:
            prompt = _GENERATING_PROMPT_LEN.get()
        keep = pos >= self.cfg.exclude_first
        if self.cfg.positions == "prompt":
            keep &= pos < prompt
        elif self.cfg.positions == "generated":
            keep &= pos >= prompt
        return keep, pos

    def hook_fn(self, name: str) -> HookFn:
        """The hook function that applies this block's edits at hook point ``name``."""
        sae, edits = self.interventions[name]

        def edit(z: Tensor) -> Tensor:
            return apply_edits(z, edits)

        def fn(x: Tensor) -> Tensor | None:
            sel, pos = self._selected(name, x.shape[1], x.device)
            self.edited_positions[name].append(pos[sel].tolist())
            if not bool(sel.any()) and self.observe is None:
                return None  # nothing to edit in this forward: skip the SAE entirely
            res = reconstruct(sae, x, edit=edit if edits else None, keep_error=self.cfg.keep_error,
                              mask=sel[None].expand(x.shape[0], -1), exclude_first=0)
            if self.observe is not None:
                self.observe(name, res, sel)
            return res.out

        return fn


@contextlib.contextmanager
def steer(
    adapter: Adapter,
    interventions: Interventions,
    *,
    positions: str = "all",
    keep_error: bool = True,
    exclude_first: int = 1,
    prompt_len: int | None = None,
    observe: Callable[[str, Spliced, Tensor], None] | None = None,
) -> Iterator[Steering]:
    """Apply latent edits at one or several hook points for the duration of the block.

    Works around any forward of the adapter and around ``generate`` (HF ``model.generate``,
    TransformerLens ``generate``), with or without a KV cache (see ``SteerConfig.prompt_len``).
    Everything is checked before a hook is attached; hooks are removed on exit, error or not.
    Prompts in one batch must have the same length (no padding): positions are counted per column.
    ``observe(hook, spliced, selected_positions)`` sees the codes of every steered forward.

        >>> with steer(adapter, {"resid_post.6": (sae, ["123:add:8", "9:ablate"])}, positions="generated"):
        ...     text = generate(adapter, ids, 20).texts[0]
    """
    cfg = SteerConfig(positions, keep_error, exclude_first, prompt_len)
    norm = _normalize(adapter, interventions)
    state = Steering(norm, cfg, observe)
    with adapter.hooks({name: state.hook_fn(name) for name in norm}):
        yield state


# ---------------------------------------------------------------------------------------------
# Generation on either backend


class Generation(NamedTuple):
    """Output of ``generate``."""

    ids: Int[Tensor, "batch total"]
    """Prompt followed by the new tokens (rows that stopped at EOS are padded with EOS)."""
    new_ids: Int[Tensor, "batch new"]
    """The generated tokens only."""
    texts: list[str]
    """The generated tokens decoded per row (special tokens and everything after EOS dropped)."""


@torch.no_grad()
def generate(
    adapter: Adapter,
    prompt_ids: Int[Tensor, "batch prompt"],
    max_new_tokens: int = 20,
    *,
    sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    stop_at_eos: bool = True,
    use_cache: bool = True,
) -> Generation:
    """Greedy (default) or seeded sampled continuation, through the backend's own generate.

    Any hooks active on the adapter (``steer``, ``splice``) act during generation. Sampling draws
    from the full distribution at ``temperature`` (no top-k / top-p), seeded by ``seed`` without
    touching the global RNG state.

        >>> ids = adapter.tokenizer("The capital of France is", return_tensors="pt").input_ids
        >>> generate(adapter, ids, 20).texts[0]
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r}; it must be an int >= 1.")
    if sample and not (isinstance(temperature, (int, float)) and temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature={temperature!r}; sampling needs a finite number > 0.")
    ids = adapter._check_ids(prompt_ids)
    if ids.shape[1] == 0:
        raise ValueError("The prompt is empty (0 tokens); give at least one token.")
    limit = adapter.max_positions
    if limit is not None and ids.shape[1] + max_new_tokens > limit:
        raise ValueError(f"Prompt of {ids.shape[1]} tokens + {max_new_tokens} new tokens exceeds the model's "
                         f"{limit} positions; shorten the prompt or lower max_new_tokens.")
    tok = adapter.tokenizer
    eos = getattr(tok, "eos_token_id", None) if tok is not None else None
    token = _GENERATING_PROMPT_LEN.set(ids.shape[1])
    try:
        with torch.random.fork_rng(devices=[ids.device] if ids.device.type == "cuda" else []):
            torch.manual_seed(seed)
            if adapter.backend == "hf":
                out = _generate_hf(adapter, ids, max_new_tokens, sample, temperature, eos if stop_at_eos else None,
                                   use_cache)
            else:
                # TransformerLens 4.3's bridge reads the KV cache from a `past_key_values` kwarg that
                # transformers >= 5.2x passes as `cache=`: its cached decoding then attends to the new token
                # alone (measured: greedy tokens differ from full reruns even with no hook). Rerun the
                # whole sequence at each step instead; HookedTransformer (TL 3.x) keeps its own cache.
                cached = use_cache and type(adapter.model).__name__ != "TransformerBridge"
                out = adapter.model.generate(
                    ids, max_new_tokens=max_new_tokens, do_sample=sample, temperature=float(temperature),
                    top_k=None, top_p=None, stop_at_eos=stop_at_eos and eos is not None, eos_token_id=eos,
                    use_past_kv_cache=cached, verbose=False, return_type="tokens")
    finally:
        _GENERATING_PROMPT_LEN.reset(token)
    out = out.to(ids.device)
    new = out[:, ids.shape[1]:]
    texts = []
    for row in new.tolist():
        if eos is not None and stop_at_eos and eos in row:
            row = row[: row.index(eos)]
        texts.append(tok.decode(row, skip_special_tokens=True) if tok is not None else " ".join(map(str, row)))
    return Generation(out, new, texts)


def _generate_hf(adapter: Adapter, ids: Tensor, n: int, sample: bool, temperature: float, eos: int | None,
                 use_cache: bool) -> Tensor:
    from transformers import GenerationConfig

    # A fresh config: the checkpoint's own generation_config (SmolLM2: temperature 0.2, top_p 0.9)
    # would otherwise change what "greedy" and "sampled" mean.
    kw: dict[str, Any] = dict(max_new_tokens=n, do_sample=sample, use_cache=use_cache,
                              eos_token_id=eos, pad_token_id=eos if eos is not None else 0)
    if sample:
        kw.update(temperature=float(temperature), top_k=0, top_p=1.0)
    if eos is None:
        kw["min_new_tokens"] = n
    cfg = GenerationConfig(**kw)
    return adapter.model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=cfg)


# ---------------------------------------------------------------------------------------------
# Side effects on neutral text


class LatentChange(NamedTuple):
    """Whether an edited latent moved: its code before and after, re-encoded from the activation."""

    hook: str
    """Canonical hook point."""
    edit: str
    """The edit, in its string form."""
    clean: float
    """Mean code of the latent on the clean activations (evaluated positions)."""
    target: float
    """Mean code the edit asked for (the edited codes, before decoding)."""
    reencoded: float
    """Mean code after re-encoding the steered activation with the same SAE."""
    active_clean: float
    """Fraction of evaluated positions where the latent fires on the clean activation."""
    active_steered: float
    """Fraction of evaluated positions where it fires on the re-encoded steered activation."""

    @property
    def moved(self) -> bool:
        """True when re-encoding moves the latent at least half-way from clean toward the target."""
        want = self.target - self.clean
        if want == 0:
            return self.reencoded == self.clean
        return (self.reencoded - self.clean) / want >= 0.5


class SideEffects(NamedTuple):
    """What a set of edits costs on held-out text (every evaluated position steered)."""

    ce_clean: float
    """Mean next-token CE of the unsteered model, nats."""
    ce_steered: float
    """Mean next-token CE with the edits applied, nats."""
    delta_ce: float
    """ce_steered − ce_clean, nats."""
    kl: float
    """Mean per-token KL(p_clean ‖ p_steered), nats."""
    tokens: int
    """Next-token predictions counted (position t counts when it is evaluated, as in evaluate.py)."""
    latent_change: list[LatentChange]
    """Per edit: did the edited latent actually move when the steered activation is re-encoded."""


@torch.no_grad()
def side_effects(
    adapter: Adapter,
    interventions: Interventions,
    tokens: TokenBatch | Int[Tensor, "batch pos"],
    *,
    keep_error: bool = True,
    exclude_first: int = 1,
    batch_size: int = 8,
) -> SideEffects:
    """ΔCE and KL of the steered model against the clean one on ``tokens``, and re-encoded latents.

    The edits are applied at every evaluated position (there are no generated positions in a
    plain forward): this measures what the edit does to ordinary text, the worst case for
    ``positions="generated"``. Special tokens and the first ``exclude_first`` positions are left alone.

        >>> held_out = load_token_tensor(tok, CorpusConfig(split="eval"), 4096)
        >>> fx = side_effects(adapter, {"resid_post.6": (sae, ["123:add:8"])}, held_out)
    """
    norm = _normalize(adapter, interventions)
    if isinstance(tokens, Tensor):
        ids = tokens if tokens.dim() == 2 else tokens[None]
        special = adapter.tokenizer if adapter.tokenizer is not None else []
        mask = make_mask(ids, special, exclude_first=exclude_first, exclude_special=adapter.tokenizer is not None)
    else:
        ids, mask = tokens
        mask = mask.clone()
        mask[:, :exclude_first] = False
    if ids.dim() != 2 or ids.shape[1] < 2 or tuple(mask.shape) != tuple(ids.shape):
        raise ValueError(f"side_effects: tokens must be [batch, pos >= 2] with a mask of the same shape; got ids "
                         f"{tuple(ids.shape)}, mask {tuple(mask.shape)}.")
    if not bool(mask[:, :-1].any()):
        raise ValueError("side_effects: every position is masked out; use longer sequences.")
    ce_c = ce_s = kl = 0.0
    n = 0
    # Per edit: sums of clean code, target code, re-encoded code, clean firing, re-encoded firing.
    acc = {(h, i): [0.0] * 5 for h, (_, edits) in norm.items() for i in range(len(edits))}
    n_act = 0
    for b0 in range(0, ids.shape[0], batch_size):
        bid = ids[b0:b0 + batch_size].to(adapter.device)
        bm = mask[b0:b0 + batch_size].to(adapter.device)
        clean = adapter.forward(bid).float()
        fns: dict[str, HookFn] = {}
        for name, (sae, edits) in norm.items():
            fns[name] = _measuring_fn(sae, edits, bm, keep_error, acc, name)
        steered = adapter.forward(bid, hooks=fns).float()
        m = bm[:, :-1]  # position t predicts t+1 and counts when t is evaluated
        tgt = bid[:, 1:]
        lp_c = F.log_softmax(clean[:, :-1], -1)
        lp_s = F.log_softmax(steered[:, :-1], -1)
        ce_c += float(-lp_c.gather(-1, tgt[..., None])[..., 0][m].sum())
        ce_s += float(-lp_s.gather(-1, tgt[..., None])[..., 0][m].sum())
        kl += float((lp_c.exp() * (lp_c - lp_s)).sum(-1)[m].sum())
        n += int(m.sum())
        n_act += int(bm.sum())
    changes = []
    for (name, i), (c, t, r, ac, ar) in acc.items():
        e = norm[name][1][i]
        changes.append(LatentChange(name, str(e), c / n_act, t / n_act, r / n_act, ac / n_act, ar / n_act))
    return SideEffects(ce_c / n, ce_s / n, (ce_s - ce_c) / n, kl / n, n, changes)


def _measuring_fn(sae: Any, edits: tuple[Edit, ...], mask: Tensor, keep_error: bool,
                  acc: dict[tuple[str, int], list[float]], name: str) -> HookFn:
    """Steering hook over a fixed mask that also accumulates the edited latents' codes."""

    def fn(x: Tensor) -> Tensor:
        res = reconstruct(sae, x, edit=(lambda z: apply_edits(z, edits)) if edits else None,
                          keep_error=keep_error, mask=mask, exclude_first=0)
        sel = mask.to(res.z.device)
        z_clean = res.z[sel]  # [n, d_sae]
        z_target = apply_edits(z_clean, edits)
        z_again = sae.encode(res.out.to(device=sae.W_dec.device, dtype=sae.W_dec.dtype))[sel]
        for i, e in enumerate(edits):
            s = acc[(name, i)]
            f = e.latent
            s[0] += float(z_clean[:, f].sum())
            s[1] += float(z_target[:, f].sum())
            s[2] += float(z_again[:, f].sum())
            s[3] += float((z_clean[:, f] != 0).sum())
            s[4] += float((z_again[:, f] != 0).sum())
        return res.out

    return fn


__all__ = ["EDIT_KINDS", "POSITIONS", "Edit", "Generation", "LatentChange", "SideEffects", "SteerConfig",
           "Steering", "apply_edits", "generate", "side_effects", "steer"]
