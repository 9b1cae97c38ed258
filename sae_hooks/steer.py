"""Steering: edit SAE latents inside a live model, during any forward or generation.

An edit changes one latent's code ``z_f`` at a hook point; the activation written back is the
exact error-preserving form ``x + (decode(z_edited) - decode(z))`` (``keep_error=True``, the
default), so an edit that changes nothing leaves the logits bitwise equal and ``add`` moves the
activation by ``value · W_dec[f]`` whatever the SAE fails to reconstruct.

Kinds (``Edit.parse("LATENT:KIND:VALUE")``):

- ``add``    z_f ← z_f + v  (the activation moves by v·W_dec[f], at every selected position)
- ``clamp``  z_f ← v        (clamp to 0 with the error kept removes exactly the latent's contribution)
- ``scale``  z_f ← v·z_f
- ``ablate`` z_f ← 0        (``LATENT:ablate``; a value, if given, must be 0)

Positions: ``"all"``, ``"prompt"`` or ``"generated"``. With a KV cache, ``generate`` first runs
the whole prompt (the prompt positions) and then one new token per forward (the generated
positions); the hook sees only ``[batch, 1, d]`` then, so each hook keeps a position counter.
Where a backend reruns the whole sequence at every step, the adapter's ``generating`` state gives
the prompt length. The first ``exclude_first`` positions are never edited: position 0 is an
attention sink in SmolLM2 (residual norms ~23,000) that no SAE is trained on.

An SAE is applied only at the hook point its metadata names unless ``allow_hook_mismatch=True``,
the same check as ``evaluate`` (``splice.resolve_hook``).

    >>> with steer(adapter, {"resid_post.6": (sae, ["123:add:8"])}):
    ...     out = generate(adapter, prompt_ids, max_new_tokens=20)
    >>> effects = side_effects(adapter, {"resid_post.6": (sae, ["123:add:8"])}, held_out)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .adapters.base import Adapter, HookFn
from .data import TokenBatch
from .logits import counted, from_hidden, from_logits, token_stats
from .splice import Spliced, reconstruct, resolve_hook, token_batch

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


def _normalize(adapter: Adapter, interventions: Interventions, *, allow_hook_mismatch: bool = False,
               strict: bool = False) -> dict[str, tuple[Any, tuple[Edit, ...]]]:
    """Canonical hook names, parsed edits, latent ranges, SAE widths and metadata checked — before any hook."""
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
        name = resolve_hook(adapter, sae, hook, allow_hook_mismatch=allow_hook_mismatch, strict=strict)
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
    """Leading positions never edited. Position 0 is an attention sink (residual norms far above every
    other position's) that no SAE is trained on; 0 edits it too."""
    prompt_len: int | None = None
    """Prompt length. None: the prompt length of the adapter's ``generate`` in progress; outside one,
    the positions of a forward that starts a sequence are the prompt, and the one-token forwards of
    a KV-cached decoding that follow it are generated. Give it for a generation loop of your own
    without a KV cache (each step reruns the whole sequence)."""

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

    def __init__(self, adapter: Adapter, interventions: dict[str, tuple[Any, tuple[Edit, ...]]], cfg: SteerConfig,
                 observe: Callable[[str, Spliced, Tensor], None] | None = None):
        self.adapter = adapter
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
        elif self.adapter.generating is not None:
            prompt = self.adapter.generating.prompt_len
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
    allow_hook_mismatch: bool = False,
    strict: bool = False,
) -> Iterator[Steering]:
    """Apply latent edits at one or several hook points for the duration of the block.

    Works around any forward of the adapter and around ``generate`` (the backend's own generation),
    with or without a KV cache (see ``SteerConfig.prompt_len``). Everything is checked before a hook
    is attached, the SAEs' metadata as in ``evaluate`` (``allow_hook_mismatch``, ``strict``); hooks
    are removed on exit, error or not.
    Prompts in one batch must have the same length (no padding): positions are counted per column.
    ``observe(hook, spliced, selected_positions)`` sees the codes of every steered forward.

        >>> with steer(adapter, {"resid_post.6": (sae, ["123:add:8", "9:ablate"])}, positions="generated"):
        ...     text = generate(adapter, ids, 20).texts[0]
    """
    cfg = SteerConfig(positions, keep_error, exclude_first, prompt_len)
    norm = _normalize(adapter, interventions, allow_hook_mismatch=allow_hook_mismatch, strict=strict)
    state = Steering(adapter, norm, cfg, observe)
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
    tok = adapter.tokenizer
    eos = getattr(tok, "eos_token_id", None) if tok is not None else None
    device = adapter.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        out = adapter.generate(prompt_ids, max_new_tokens, sample=sample, temperature=temperature,
                               eos_token_id=eos if stop_at_eos else None, use_cache=use_cache)
    new = out[:, prompt_ids.shape[-1]:]
    texts = []
    for row in new.tolist():
        if eos is not None and stop_at_eos and eos in row:
            row = row[: row.index(eos)]
        texts.append(tok.decode(row, skip_special_tokens=True) if tok is not None else " ".join(map(str, row)))
    return Generation(out, new, texts)


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
    allow_hook_mismatch: bool = False,
    strict: bool = False,
) -> SideEffects:
    """ΔCE and KL of the steered model against the clean one on ``tokens``, and re-encoded latents.

    The edits are applied at every evaluated position (there are no generated positions in a
    plain forward): this measures what the edit does to ordinary text, the worst case for
    ``positions="generated"``. Special tokens and the first ``exclude_first`` positions are left
    alone. CE and KL come from the same tiled statistics as ``evaluate`` (``logits.token_stats``),
    and the steered forward reruns only the blocks above the earliest edited hook point.

        >>> held_out = load_token_tensor(tok, CorpusConfig(split="eval"), 4096)
        >>> fx = side_effects(adapter, {"resid_post.6": (sae, ["123:add:8"])}, held_out)
    """
    norm = _normalize(adapter, interventions, allow_hook_mismatch=allow_hook_mismatch, strict=strict)
    ids, mask = token_batch(adapter, tokens, exclude_first=exclude_first)
    mask = mask.clone()
    mask[:, :exclude_first] = False
    if not bool(mask[:, :-1].any()):
        raise ValueError("side_effects: every position is masked out; use longer sequences.")
    # As in evaluate: end at the final normed hidden state where the adapter applies the head itself.
    hidden = adapter.has_unembed
    ce_c = ce_s = kl = 0.0
    n = 0
    # Per edit: sums of clean code, target code, re-encoded code, clean firing, re-encoded firing.
    acc = {(h, i): [0.0] * 5 for h, (_, edits) in norm.items() for i in range(len(edits))}
    n_act = 0
    for b0 in range(0, ids.shape[0], batch_size):
        bid = ids[b0:b0 + batch_size].to(adapter.device)
        bm = mask[b0:b0 + batch_size].to(adapter.device)
        at, targets = counted(bid, bm)
        out, prefix = adapter.forward_recording(bid, resume_at=list(norm), unembed=not hidden)
        fns = {name: _measuring_fn(sae, edits, bm, keep_error, acc, name) for name, (sae, edits) in norm.items()}
        steered = adapter.resume(prefix, fns, unembed=not hidden)
        rows = [from_hidden(o, at, adapter.unembed, adapter.vocab_size) if hidden else from_logits(o, at)
                for o in (out, steered)]
        ce, kl_tok = token_stats(rows, targets, kl_to={1})
        ce_c += float(ce[0].sum())
        ce_s += float(ce[1].sum())
        kl += float(kl_tok[1].sum())
        n += int(at.shape[0])
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
        z_again = sae.encode(res.out.to(device=sae.device, dtype=sae.dtype))[sel]
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
