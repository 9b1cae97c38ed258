"""Splice SAE reconstructions into a live model at one or several hook points.

Inside ``with splice(adapter, {hook: sae}):`` every forward of the model sees, at each hook,
``decode(edit(encode(x)))`` instead of ``x`` — or, with ``keep_error=True``, the exact
error-preserving form ``x + (decode(edit(z)) - decode(z))`` that is bitwise ``x`` when there is
no edit. Excluded positions keep the original activation: position 0 is an attention sink in
SmolLM2 (its residual norm reaches ~23,000 from layer 12 on, far above every other position) that
no SAE is trained on, so replacing it would measure the sink, not the SAE. Special tokens are
excluded too when the ids are known (``token_mask``).

    >>> with splice(adapter, {"resid_post.6": sae}, input_ids=ids):
    ...     logits = adapter.forward(ids)

The per-activation transform is a plain hook function from ``splice_fn`` so that feature edits
(steering: add / clamp / scale / ablate latents) reuse it by passing ``edit=``:

    >>> fn = splice_fn(sae, edit=lambda z: z.index_fill(-1, torch.tensor([42]), 0.0), keep_error=True)
    >>> logits = adapter.forward(ids, hooks={"resid_post.6": fn})

Before an SAE is applied at a hook point, ``resolve_hook`` checks that it fits there: its width, and
the hook point and model its metadata names.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .adapters.base import Adapter, HookFn
from .data import TokenBatch, make_mask

EditFn = Callable[[Tensor], Tensor]
"""A function of the latent codes ``z [..., d_sae]`` returning edited codes of the same shape
(``steer.Edit`` describes one latent edit; ``steer`` turns a list of them into such a function)."""


class Spliced(NamedTuple):
    """What one SAE does to one activation (see ``reconstruct``)."""

    out: Tensor
    """The activation to write back [B, T, d], in the activation's dtype and device."""
    z: Tensor
    """Codes of the unedited activation [B, T, d_sae], in the SAE's dtype and device."""
    x_hat: Tensor
    """Unedited reconstruction decode(z) [B, T, d], in the SAE's dtype and device."""


def token_mask(
    adapter: Adapter, input_ids: Int[Tensor, "batch pos"], *, exclude_first: int = 1, exclude_special: bool = True
) -> Bool[Tensor, "batch pos"]:
    """The positions of ``input_ids`` an SAE is applied to and scored on (True): all but the first
    ``exclude_first`` and, where the adapter has a tokenizer (``exclude_special``), its special tokens.

        >>> token_mask(adapter, ids)[:, 0]      # all False: position 0 is the attention sink
    """
    ids = input_ids if input_ids.dim() == 2 else input_ids[None]
    special = exclude_special and adapter.tokenizer is not None
    return make_mask(ids, adapter.tokenizer if special else [], exclude_first=exclude_first, exclude_special=special)


def token_batch(adapter: Adapter, tokens: TokenBatch | Int[Tensor, "batch pos"], *, exclude_first: int = 1) -> TokenBatch:
    """``tokens`` as a ``TokenBatch``: a TokenBatch (or ``(ids, mask)`` pair) as given, bare ids with
    ``token_mask``; checked to be [batch, pos >= 2] (a next-token loss needs two positions).

        >>> ids, mask = token_batch(adapter, held_out_ids)
    """
    if isinstance(tokens, TokenBatch) or (isinstance(tokens, tuple) and len(tokens) == 2):
        ids, mask = tokens
    elif isinstance(tokens, Tensor):
        ids = tokens if tokens.dim() == 2 else tokens[None]
        mask = token_mask(adapter, ids, exclude_first=exclude_first)
    else:
        raise TypeError(f"tokens must be a TokenBatch(input_ids, mask) or an int tensor [batch, pos]; got {type(tokens).__name__}.")
    if ids.dim() != 2 or tuple(mask.shape) != tuple(ids.shape):
        raise ValueError(f"tokens: input_ids {tuple(ids.shape)} and mask {tuple(mask.shape)} must both be [batch, pos].")
    if ids.shape[1] < 2:
        raise ValueError(f"tokens have {ids.shape[1]} positions; next-token loss needs at least 2.")
    return TokenBatch(ids.long(), mask.bool())


def position_mask(
    x: Tensor, mask: Tensor | None, exclude_first: int
) -> Bool[Tensor, "batch pos"] | None:
    """The [B, T] positions to replace in activation ``x [B, T, d]``, or None for "all of them".

    ``mask`` (True = replace) wins when given; otherwise the first ``exclude_first`` positions are
    left alone. Positions are the activation's own time axis, so with a KV cache (one new token
    per forward) pass ``exclude_first=0`` or an explicit mask.

        >>> position_mask(x, None, exclude_first=1)[:, 0]   # all False
    """
    B, T = x.shape[0], x.shape[1]
    if mask is not None:
        m = mask.to(device=x.device, dtype=torch.bool)
        if m.dim() == 1:
            m = m[None].expand(B, -1)
        if tuple(m.shape) != (B, T):
            raise ValueError(
                f"Splice mask has shape {tuple(mask.shape)} but the activation is [batch={B}, pos={T}, d]: "
                "pass a bool mask [batch, pos] (True = replace) for the same input_ids as the forward."
            )
        return m
    if exclude_first <= 0:
        return None
    m = torch.ones(B, T, dtype=torch.bool, device=x.device)
    m[:, :exclude_first] = False
    return m


def reconstruct(
    sae: Any,
    x: Float[Tensor, "batch pos d"],
    *,
    edit: EditFn | None = None,
    keep_error: bool = False,
    mask: Bool[Tensor, "batch pos"] | None = None,
    exclude_first: int = 1,
    encode_kwargs: Mapping[str, Any] | None = None,
) -> Spliced:
    """Encode ``x`` in the SAE's dtype/device, optionally edit the codes, and build the replacement.

    Without ``keep_error`` the replacement is ``decode(edit(z))``; with it, the exact
    ``x + (decode(edit(z)) - decode(z))``, which is ``x`` itself when ``edit`` is None (the other
    order, ``decode(z) + (x - decode(z))``, is off from ``x`` by up to 0.03 in bf16 on SmolLM2).
    Positions outside the mask keep ``x``.

        >>> out, z, x_hat = reconstruct(sae, acts, keep_error=False)
        >>> (z != 0).sum(-1).float().mean()     # L0
    """
    kw = dict(encode_kwargs or {})
    x_sae = x.to(device=sae.device, dtype=sae.dtype)
    z = sae.encode(x_sae, **kw)
    x_hat = sae.decode(z)
    if keep_error:
        if edit is None:
            out = x
        else:
            out = x + (sae.decode(edit(z)) - x_hat).to(device=x.device, dtype=x.dtype)
    else:
        out = (x_hat if edit is None else sae.decode(edit(z))).to(device=x.device, dtype=x.dtype)
    m = position_mask(x, mask, exclude_first)
    if m is not None and out is not x:
        out = torch.where(m[..., None], out, x)
    return Spliced(out, z, x_hat)


def splice_fn(
    sae: Any,
    edit: EditFn | None = None,
    *,
    keep_error: bool = False,
    mask: Bool[Tensor, "batch pos"] | None = None,
    exclude_first: int = 1,
    encode_kwargs: Mapping[str, Any] | None = None,
    observe: Callable[[Spliced], None] | None = None,
) -> HookFn:
    """A hook function (for ``adapter.hooks`` / ``adapter.forward(hooks=...)``) that splices ``sae``.

    ``observe`` receives every ``Spliced`` result (codes, reconstruction) — for metrics or for
    reading feature activations while steering — and must not modify it.

        >>> fn = splice_fn(sae, edit=lambda z: z * 2, keep_error=True)
        >>> adapter.forward(ids, hooks={"resid_post.6": fn})
    """
    if isinstance(exclude_first, bool) or not isinstance(exclude_first, int) or exclude_first < 0:
        raise ValueError(f"exclude_first={exclude_first!r}; it must be an int >= 0 (1 keeps the attention sink at position 0).")

    def fn(x: Tensor) -> Tensor:
        res = reconstruct(sae, x, edit=edit, keep_error=keep_error, mask=mask,
                          exclude_first=exclude_first, encode_kwargs=encode_kwargs)
        if observe is not None:
            observe(res)
        return res.out

    return fn


def check_width(adapter: Adapter, hook: str, sae: Any) -> str:
    """Canonical hook name, after checking that the SAE reads activations as wide as the hook's.

        >>> check_width(adapter, "blocks.6.hook_resid_post", sae)
        'resid_post.6'
    """
    site = adapter.resolve(hook)
    width = adapter.width(hook)
    d_in = int(sae.cfg.d_in)
    if d_in != width:
        raise ValueError(
            f"SAE width mismatch at {site.name}: the SAE reads d_in={d_in} but the activation at {site.name} of "
            f"{adapter.name} has width {width}. Use an SAE trained on this model and hook point "
            f"(or pass the hook point it was trained on)."
        )
    return site.name


class MetadataMismatchWarning(UserWarning):
    """The SAE's metadata names another model than the one it is applied to."""


def _model_key(name: Any) -> str:
    return str(name).rstrip("/").rsplit("/", 1)[-1].strip().lower()


def resolve_hook(adapter: Adapter, sae: Any, hook: str | None = None, *, allow_hook_mismatch: bool = False,
                 strict: bool = False) -> str:
    """The canonical hook point to apply ``sae`` at, after checking its width and its metadata.

    ``hook=None`` takes the SAE's ``metadata["hook_name"]`` in any spelling the adapter knows
    (``resid_post.6``, ``blocks.6.hook_resid_post``, ``model.layers.6``). A given hook point other than
    the one the metadata names is an error: the SAE's latents were learned on another activation.
    ``allow_hook_mismatch=True`` applies it anyway. A metadata model name other than the adapter's
    only warns (``MetadataMismatchWarning``): names are often aliases or local paths of the same
    model. ``strict=True`` refuses that too.

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
        if meta_hook and not allow_hook_mismatch:
            try:
                meta_name = adapter.canonical(meta_hook)
            except ValueError:
                meta_name = None
            if meta_name != name:
                raise ValueError(
                    f"The SAE was trained at {meta_hook!r}{'' if meta_name is None else f' (= {meta_name})'} but is "
                    f"applied at {name}: its latents describe another activation. Pass the hook point it was "
                    "trained at (or none, to take it from the metadata), or allow_hook_mismatch=True "
                    "(CLI: --allow-hook-mismatch) to apply it there anyway.")
    model_name = meta.get("model_name")
    if model_name and _model_key(model_name) != _model_key(adapter.name):
        msg = f"The SAE's metadata names model {model_name!r} but it is applied to {adapter.name!r}."
        if strict:
            raise ValueError(msg + " Refusing (strict mode); drop strict (--strict) if the two names are the same model.")
        warnings.warn(msg + " Applying it anyway: model names are often aliases or local paths of the same model. "
                      "Pass strict=True (--strict) to make this an error.", MetadataMismatchWarning, stacklevel=2)
    return check_width(adapter, name, sae)


@contextlib.contextmanager
def splice(
    adapter: Adapter,
    saes: Mapping[str, Any],
    *,
    keep_error: bool = False,
    mask: Bool[Tensor, "batch pos"] | None = None,
    input_ids: Tensor | None = None,
    exclude_first: int = 1,
    exclude_special: bool = True,
    edits: Mapping[str, EditFn] | None = None,
    encode_kwargs: Mapping[str, Any] | None = None,
) -> Iterator[None]:
    """Replace the activation at every hook in ``saes`` by its SAE reconstruction, for the block.

    Excluded positions keep the original activation: ``mask`` (True = replace) if given; else
    positions ``< exclude_first`` and, when ``input_ids`` are given, special tokens of
    ``adapter.tokenizer`` (``exclude_special``). ``edits`` maps a hook to a latent edit. The hooks are
    removed on exit, whether the block ends normally or raises.

        >>> with splice(adapter, {"resid_post.3": sae3, "resid_post.6": sae6}, input_ids=ids):
        ...     logits = adapter.forward(ids)
    """
    if not saes:
        raise ValueError("splice() needs at least one {hook: sae} pair; got none.")
    edits = dict(edits or {})
    unknown = set(edits) - set(saes)
    if unknown:
        raise ValueError(f"edits name hook points {sorted(unknown)} that have no SAE; SAEs are at {sorted(saes)}.")
    if mask is None and input_ids is not None:
        mask = token_mask(adapter, input_ids, exclude_first=exclude_first, exclude_special=exclude_special)
    fns: dict[str, HookFn] = {}
    for hook, sae in saes.items():
        name = check_width(adapter, hook, sae)
        if name in fns:
            raise ValueError(f"Two SAEs given for the same hook point {name} (as {hook!r}); splice one SAE per hook.")
        fns[name] = splice_fn(sae, edits.get(hook), keep_error=keep_error, mask=mask,
                              exclude_first=exclude_first, encode_kwargs=encode_kwargs)
    with adapter.hooks(fns):
        yield


__all__ = ["EditFn", "MetadataMismatchWarning", "Spliced", "check_width", "position_mask", "reconstruct", "resolve_hook",
           "splice", "splice_fn", "token_batch", "token_mask"]
