"""The hook-point vocabulary shared by every backend.

A hook point names one activation of the model, independent of how the backend stores it:

    resid_pre.L    residual stream entering block L (resid_pre.0 is the embedding output)
    resid_mid.L    residual stream between attention and MLP of block L
    resid_post.L   residual stream leaving block L
    attn_out.L     attention output of block L, before it is added to the residual stream
    mlp_out.L      MLP output of block L, before it is added to the residual stream
    module:PATH    escape hatch: the output of any submodule (HF) or any HookPoint name (TL)

Names used by the rest of the ecosystem are understood too: TransformerLens names such as
``blocks.6.hook_resid_post`` and EleutherAI sparsify names such as ``layers.6`` (the output of
block 6) both mean ``resid_post.6``.

    >>> parse_hook("blocks.6.hook_resid_post")
    HookName(kind='resid_post', layer=6, path=None)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KINDS: tuple[str, ...] = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
MODULE_PREFIX = "module:"

_OURS = re.compile(r"^(?P<kind>[a-z_]+)\.(?P<layer>-?\d+)$")
_TL = re.compile(r"^blocks\.(?P<layer>\d+)\.hook_(?P<kind>resid_pre|resid_mid|resid_post|attn_out|mlp_out)$")
_SPARSIFY = re.compile(r"^layers\.(?P<layer>\d+)$")


@dataclass(frozen=True)
class HookName:
    """A parsed hook point: either ``kind`` + ``layer``, or a raw module/HookPoint ``path``."""

    kind: str
    """One of KINDS, or ``"module"`` for the escape hatch."""
    layer: int | None = None
    """Block index for the standard kinds; None for ``module``."""
    path: str | None = None
    """Module path (HF) or HookPoint name (TransformerLens) for ``module``."""

    def __str__(self) -> str:
        return f"{MODULE_PREFIX}{self.path}" if self.kind == "module" else f"{self.kind}.{self.layer}"


def parse_hook(name: str) -> HookName:
    """Parse a hook-point name of our vocabulary or of TransformerLens / sparsify.

    Names that match none of these forms are treated as module paths (``module:`` may be
    omitted); the adapter then checks that the path exists in the model.

        >>> parse_hook("resid_post.6"), parse_hook("module:model.layers.3.mlp.down_proj")
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(
            f"Hook point must be a non-empty string, got {name!r}. "
            f"Valid forms: {', '.join(k + '.L' for k in KINDS)}, or module:PATH."
        )
    name = name.strip()
    if name.startswith(MODULE_PREFIX):
        path = name[len(MODULE_PREFIX) :]
        if not path:
            raise ValueError(f"Hook point {name!r} names no module: write module:PATH, e.g. module:model.layers.3.mlp")
        return HookName("module", None, path)
    for pattern in (_TL, _SPARSIFY, _OURS):
        m = pattern.match(name)
        if m is None:
            continue
        kind = m.groupdict().get("kind", "resid_post")
        layer = int(m.group("layer"))
        if kind not in KINDS:
            raise ValueError(
                f"Unknown hook kind {kind!r} in {name!r}. Valid kinds: {', '.join(KINDS)}; "
                f"or use module:PATH for any submodule output."
            )
        return HookName(kind, layer, None)
    if re.match(r"^[a-z_]+\.\S+$", name) and name.split(".", 1)[0] in {"resid", "attn", "mlp"} | set(KINDS):
        raise ValueError(
            f"Cannot read hook point {name!r}: the layer must be an integer. "
            f"Valid forms: {', '.join(k + '.L' for k in KINDS)}, or module:PATH."
        )
    return HookName("module", None, name)
