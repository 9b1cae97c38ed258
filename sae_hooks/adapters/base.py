"""What every backend adapter offers: named hook points that capture or replace activations.

A hook function receives the activation ``[batch, pos, d]`` at its hook point and returns either
``None`` (leave it alone; used to capture) or a tensor of the same shape that replaces it
downstream. Hooks live only inside ``with adapter.hooks(...)``: they are removed on exit, whether
the block ends normally, raises, or is interrupted.

    >>> with adapter.hooks({"resid_post.6": lambda x: x * 0}):
    ...     logits = adapter.forward(input_ids)

Besides hooks, every adapter offers what evaluation, steering and feature search need from a
backend, so that those modules never ask which backend they run on:

- ``forward_recording`` / ``resume``: run several conditions that agree below a layer while paying
  for the blocks below it once (a backend that cannot resume reruns the whole forward);
- ``unembed`` / ``vocab_size``: the head applied to the final normed hidden state, where the backend
  can stop before it (``has_unembed``);
- ``readout``: the unembedding and the final norm's gain, to read a direction through to the logits;
- ``generate``: the backend's own generation, with every active hook acting during it.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from ..hookpoints import KINDS, HookName, parse_hook

HookFn = Callable[[Tensor], Tensor | None]


class _StopForward(Exception):
    """Raised from the last needed hook to end a forward early (bitwise equal up to that point)."""


@dataclass(frozen=True)
class Site:
    """A hook point resolved against one model."""

    name: str
    """Canonical name in our vocabulary (``resid_post.6``) or ``module:PATH``."""
    layer: int | None
    """Block index, or None for module hooks outside the block list."""
    module: nn.Module
    """The module whose forward (pre-)hook carries the activation."""
    pre: bool
    """True: the activation is the module's first input (forward pre-hook)."""
    replaceable: bool = True
    """False where the backend exposes the value but cannot substitute it downstream."""


@dataclass
class Prefix:
    """What ``forward_recording`` kept so that ``resume`` reruns only the blocks above a layer.

    References to the recorded tensors, no copies. A prefix with ``layer=None`` recorded nothing:
    every ``resume`` from it is a full forward of ``input_ids``."""

    input_ids: Tensor
    """The ids of the recorded forward (what a full-forward resume reruns)."""
    layer: int | None = None
    """The first block whose call was recorded; None when nothing was."""
    calls: list = field(default_factory=list)
    """Per block, the (args, kwargs) of its call from ``layer`` on (None below it). A block no resume
    starts from keeps only what the blocks need besides the hidden state (masks, rotary tables)."""
    final: Tensor | None = None
    """The last block's output (the final norm's input), where a hook at the last ``resid_post``
    resumes; None when not recorded."""


class Readout(NamedTuple):
    """How the final hidden state becomes logits, for reading a direction through to them."""

    W_U: Float[Tensor, "vocab d"]
    """The unembedding, one row per token."""
    gain: Float[Tensor, " d"] | None
    """The final norm's elementwise gain as it multiplies (None: no final norm, or one without a gain)."""
    centers: bool
    """True when the final norm subtracts the mean over d_model (LayerNorm), not only rescales (RMSNorm)."""


@dataclass(frozen=True)
class Generating:
    """The ``generate`` call in progress on an adapter (``adapter.generating``)."""

    prompt_len: int
    """Tokens of the prompt: positions below it are the prompt's, the others generated. Hooks need it
    where a backend reruns the whole sequence at every step (no KV cache)."""


def norm_centers(norm: nn.Module) -> bool:
    """Whether a final norm subtracts the mean over d_model (LayerNorm) rather than only rescaling (RMSNorm)."""
    norm = getattr(norm, "original_component", norm)  # the TransformerLens bridge wraps the HF module
    return isinstance(norm, nn.LayerNorm) or type(norm).__name__ in ("LayerNorm", "LayerNormPre")


class Adapter(ABC):
    """One model behind the hook-point vocabulary. Subclasses resolve names and run forwards."""

    backend: str = "?"

    def __init__(self, model: nn.Module, tokenizer: Any = None, name: str | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name or type(model).__name__
        self._sites: dict[str, Site] = {}
        self.generating: Generating | None = None
        """The ``generate`` call in progress (its prompt length), None outside one."""

    # ---- what subclasses provide -------------------------------------------------------
    @property
    @abstractmethod
    def n_layers(self) -> int: ...

    @property
    @abstractmethod
    def d_model(self) -> int: ...

    @property
    @abstractmethod
    def max_positions(self) -> int | None: ...

    @abstractmethod
    def _resolve(self, hook: HookName) -> Site: ...

    @abstractmethod
    def _call(self, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
        """Run the model and return logits [batch, pos, vocab]."""

    @abstractmethod
    def _attach(self, site: Site, fn: HookFn) -> Any:
        """Register ``fn`` at ``site``; return a handle with ``.remove()``."""

    @abstractmethod
    def module_paths(self) -> list[str]:
        """Paths usable with ``module:`` (for error messages and ``sae-hooks info``)."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of logits the model produces per position."""

    @abstractmethod
    def readout(self) -> Readout:
        """The unembedding and the final norm's gain (see ``Readout``).

        >>> W_U, gain, centers = adapter.readout()
        """

    @abstractmethod
    def _generate(self, input_ids: Tensor, max_new_tokens: int, sample: bool, temperature: float,
                  eos_token_id: int | None, use_cache: bool) -> Tensor:
        """The backend's generation: prompt + new ids [batch, prompt + new]."""

    # ---- shared behaviour --------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def hook_points(self) -> list[str]:
        """Every standard hook point of this model, in forward order.

        >>> adapter.hook_points()[:3]
        ['resid_pre.0', 'resid_mid.0', 'attn_out.0']
        """
        order = ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")
        return [f"{k}.{i}" for i in range(self.n_layers) for k in order if self._supports(k)]

    def _supports(self, kind: str) -> bool:
        return True

    def resolve(self, name: str) -> Site:
        """Resolve a hook-point name to a site of this model, with a helpful error if impossible.

        >>> adapter.resolve("resid_post.6").layer
        6
        """
        if name in self._sites:
            return self._sites[name]
        hook = parse_hook(name)
        if hook.kind in KINDS:
            if not -self.n_layers <= hook.layer < self.n_layers:
                raise ValueError(
                    f"No hook point {name!r}: this {self.name} model has {self.n_layers} layers "
                    f"(0..{self.n_layers - 1}). Kinds: {', '.join(KINDS)}."
                )
            if hook.layer < 0:
                hook = HookName(hook.kind, hook.layer + self.n_layers)
        site = self._resolve(hook)
        self._sites[name] = site
        return site

    def canonical(self, name: str) -> str:
        """Our name for a hook point given in any accepted spelling (``model.layers.6`` → ``resid_post.6``)."""
        return self.resolve(name).name

    def width(self, name: str) -> int:
        """Size of the last dimension of the activation at ``name``."""
        site = self.resolve(name)
        if not site.name.startswith("module:"):
            return self.d_model
        probe = torch.zeros(1, 2, dtype=torch.long, device=self.device)
        return self.capture(probe, [name])[site.name].shape[-1]

    @contextlib.contextmanager
    def hooks(self, fns: Mapping[str, HookFn]) -> Iterator[None]:
        """Install hook functions for the duration of the block; always removes them.

        >>> with adapter.hooks({"resid_post.3": lambda x: None}):
        ...     adapter.forward(ids)
        """
        sites = {name: self.resolve(name) for name in fns}  # resolve all before attaching any
        handles = []
        try:
            for name, fn in fns.items():
                handles.append(self._attach(sites[name], _checked(sites[name], fn)))
            yield
        finally:
            for h in handles:
                h.remove()

    def forward(
        self,
        input_ids: Int[Tensor, "batch pos"],
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        hooks: Mapping[str, HookFn] | None = None,
    ) -> Float[Tensor, "batch pos vocab"]:
        """Logits of the model, with optional hook functions active for this one call.

        >>> logits = adapter.forward(ids, hooks={"resid_post.6": lambda x: x})
        """
        input_ids = self.check_ids(input_ids)
        with self.hooks(hooks or {}):
            return self._call(input_ids, attention_mask)

    @torch.no_grad()
    def capture(
        self,
        input_ids: Int[Tensor, "batch pos"],
        names: Sequence[str],
        *,
        stop: bool = True,
        attention_mask: Tensor | None = None,
    ) -> dict[str, Float[Tensor, "batch pos d"]]:
        """Activations at several hook points from one forward, keyed by canonical name.

        With ``stop=True`` (default) the forward ends as soon as every requested activation is
        captured: what runs is bitwise the same as the full forward up to that point.

        >>> acts = adapter.capture(ids, ["resid_post.2", "mlp_out.5"])
        >>> acts["resid_post.2"].shape   # [batch, pos, d_model]
        """
        if isinstance(names, str):
            names = [names]
        input_ids = self.check_ids(input_ids)
        canon = {n: self.resolve(n).name for n in names}
        acts: dict[str, Tensor] = {}
        wanted = set(canon.values())

        def grab(key: str) -> HookFn:
            def fn(x: Tensor) -> None:
                acts[key] = x.detach()
                if stop and wanted.issubset(acts):
                    raise _StopForward

            return fn

        with self.hooks({n: grab(c) for n, c in canon.items()}):
            try:
                self._call(input_ids, attention_mask)
            except _StopForward:
                pass
        missing = wanted - set(acts)
        if missing:
            raise RuntimeError(f"Hook points {sorted(missing)} did not fire during the forward of {self.name}.")
        return acts

    # ---- the head ------------------------------------------------------------------------
    @property
    def has_unembed(self) -> bool:
        """Whether this adapter can stop a forward at the final normed hidden state and apply the head
        itself (``unembed``); otherwise its forwards give logits only."""
        return False

    def unembed(self, hidden: Float[Tensor, "... d"], cols: slice | None = None) -> Float[Tensor, "... vocab"]:
        """Logits from the final normed hidden state; ``cols`` computes only those vocabulary columns.

        >>> h, prefix = adapter.forward_recording(ids, 6, unembed=False)
        >>> adapter.unembed(h[:, :64], slice(0, 1024))   # some positions, the first 1,024 tokens
        """
        raise NotImplementedError(f"The {self.backend} adapter of {self.name} gives logits only (has_unembed is False).")

    def _final_hidden(self, input_ids: Tensor, hooks: Mapping[str, HookFn] | None) -> Tensor:
        """The final normed hidden state [batch, pos, d] of a forward under ``hooks`` (where ``has_unembed``)."""
        raise NotImplementedError(f"The {self.backend} adapter of {self.name} gives logits only (has_unembed is False).")

    def _output(self, input_ids: Tensor, hooks: Mapping[str, HookFn] | None, unembed: bool) -> Tensor:
        return self.forward(input_ids, hooks=hooks) if unembed else self._final_hidden(input_ids, hooks)

    def _check_unembed(self, unembed: bool) -> None:
        if not unembed and not self.has_unembed:
            raise ValueError(f"unembed=False needs an adapter that can stop before the head; the {self.backend} "
                             f"adapter of {self.name} cannot (check adapter.has_unembed).")

    # ---- sharing the blocks below a layer between several forwards ----------------------------
    @torch.no_grad()
    def forward_recording(
        self,
        input_ids: Int[Tensor, "batch pos"],
        layer: int | None = None,
        hooks: Mapping[str, HookFn] | None = None,
        *,
        resume_at: Collection[str] | None = None,
        unembed: bool = True,
    ) -> tuple[Tensor, Prefix]:
        """The output of a forward under ``hooks`` (logits; ``unembed=False``: the final normed hidden
        state) and a ``Prefix`` from which ``resume`` reruns only the blocks a later hook needs.

        Several conditions that agree below a hook point (clean, spliced, ablated) then pay for the
        blocks below it once. ``layer`` records every block call from that block on; ``resume_at``
        (hook points the resumes will hook) records only the calls they restart from. This base
        version records nothing: ``resume`` reruns the whole forward, with the same result.

        >>> logits, prefix = adapter.forward_recording(ids, resume_at=["resid_post.6"])
        >>> spliced = adapter.resume(prefix, {"resid_post.6": splice_fn})
        """
        self._check_unembed(unembed)
        input_ids = self.check_ids(input_ids)
        return self._output(input_ids, hooks, unembed), Prefix(input_ids)

    @torch.no_grad()
    def resume(self, prefix: Prefix, hooks: Mapping[str, HookFn] | None = None, *, unembed: bool = True) -> Tensor:
        """The output of the recorded forward rerun under ``hooks`` (logits; ``unembed=False``: the final
        normed hidden state), rerunning only the blocks above the earliest hook where the prefix
        allows, the whole forward otherwise.

        >>> zeroed = adapter.resume(prefix, {"resid_post.6": torch.zeros_like})
        """
        self._check_unembed(unembed)
        return self._output(prefix.input_ids, hooks, unembed)

    # ---- generation ------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        input_ids: Int[Tensor, "batch prompt"],
        max_new_tokens: int,
        *,
        sample: bool = False,
        temperature: float = 1.0,
        eos_token_id: int | None = None,
        use_cache: bool = True,
    ) -> Int[Tensor, "batch total"]:
        """Prompt + continuation ids from the backend's own generate, with every active hook (steering
        edits, splices) acting during it. Greedy, or sampled from the full distribution at
        ``temperature`` (no top-k / top-p; seed the global RNG first). Rows stop at ``eos_token_id``
        (None: exactly ``max_new_tokens``). While it runs, ``self.generating`` holds the prompt length.

        >>> with steer(adapter, plan):
        ...     ids = adapter.generate(prompt_ids, 20)
        """
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens!r}; it must be an int >= 1.")
        if sample and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                       or not temperature > 0 or not math.isfinite(temperature)):
            raise ValueError(f"temperature={temperature!r}; sampling needs a finite number > 0.")
        ids = self.check_ids(input_ids)
        if ids.shape[1] == 0:
            raise ValueError("The prompt is empty (0 tokens); give at least one token.")
        if self.max_positions is not None and ids.shape[1] + max_new_tokens > self.max_positions:
            raise ValueError(f"Prompt of {ids.shape[1]} tokens + {max_new_tokens} new tokens exceeds the model's "
                             f"{self.max_positions} positions; shorten the prompt or lower max_new_tokens.")
        outer, self.generating = self.generating, Generating(ids.shape[1])
        try:
            out = self._generate(ids, max_new_tokens, sample, float(temperature), eos_token_id, use_cache)
        finally:
            self.generating = outer
        return out.to(ids.device)

    def check_ids(self, input_ids: Tensor) -> Tensor:
        """``input_ids`` as [batch, pos] on the model's device, after checking type and length.

        >>> adapter.check_ids(torch.tensor([5, 6, 7])).shape
        torch.Size([1, 3])
        """
        if not isinstance(input_ids, Tensor) or input_ids.dtype not in (torch.long, torch.int32, torch.int64):
            raise TypeError(
                f"input_ids must be an integer tensor [batch, pos], got {type(input_ids).__name__}"
                f"{'' if not isinstance(input_ids, Tensor) else ' of dtype ' + str(input_ids.dtype)}. "
                "Tokenize first (tokenizer(text, return_tensors='pt').input_ids): every backend gets token ids, "
                "so no backend silently prepends BOS."
            )
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, pos], got shape {tuple(input_ids.shape)}.")
        if self.max_positions is not None and input_ids.shape[1] > self.max_positions:
            raise ValueError(
                f"Context of {input_ids.shape[1]} tokens is longer than {self.name} allows "
                f"({self.max_positions} positions). Use a shorter --ctx."
            )
        return input_ids.to(self.device)


def _checked(site: Site, fn: HookFn) -> HookFn:
    """Wrap a hook so that a replacement of the wrong shape fails with a clear message."""

    def wrapped(x: Tensor) -> Tensor | None:
        out = fn(x)
        if out is None:
            return None
        if not site.replaceable:
            raise ValueError(
                f"Hook point {site.name} can be captured but not replaced on this backend "
                "(the residual is held in a local variable). Replace resid_post of the previous "
                "layer or use the TransformerLens adapter."
            )
        if out.shape != x.shape:
            raise ValueError(
                f"Hook at {site.name} returned shape {tuple(out.shape)}; it must keep the activation's "
                f"shape {tuple(x.shape)}."
            )
        return out.to(x.dtype)

    return wrapped
