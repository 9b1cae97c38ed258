"""What every backend adapter offers: named hook points that capture or replace activations.

A hook function receives the activation ``[batch, pos, d]`` at its hook point and returns either
``None`` (leave it alone; used to capture) or a tensor of the same shape that replaces it
downstream. Hooks live only inside ``with adapter.hooks(...)``: they are removed on exit, whether
the block ends normally, raises, or is interrupted.

    >>> with adapter.hooks({"resid_post.6": lambda x: x * 0}):
    ...     logits = adapter.forward(input_ids)
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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


class Adapter(ABC):
    """One model behind the hook-point vocabulary. Subclasses resolve names and run forwards."""

    backend: str = "?"

    def __init__(self, model: nn.Module, tokenizer: Any = None, name: str | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name or type(model).__name__
        self._sites: dict[str, Site] = {}

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
        input_ids = self._check_ids(input_ids)
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
        input_ids = self._check_ids(input_ids)
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

    def _check_ids(self, input_ids: Tensor) -> Tensor:
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
