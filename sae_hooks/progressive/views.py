"""A vanilla SAE reduced to G of its latents, in the two ways a pruned dictionary can be run.

- ``mask``: the full SAE encodes as trained (all latents take part in its selection) and only the
  codes of the G kept latents are used. For TopK this leaves fewer than k active latents per token
  wherever some of a token's top k were pruned.
- ``reselect``: the SAE is rebuilt from the G kept latents (``sae.pruned``) and its own encoder
  selects among the survivors: TopK picks k of G. For architectures whose latents do not compete
  (ReLU, JumpReLU, BatchTopK at inference: one threshold per latent) the two modes give the same codes.

L0 therefore differs between the modes and from a Matryoshka prefix of the same width, which is why
every evaluated row carries its own L0.

The kept latents are held in ascending index order (the set is what matters), so that at G = d_sae
both views compute exactly what the SAE itself computes.

    >>> order = imp.importance.argsort(descending=True)
    >>> small = reduce_sae(sae, order, 512, "mask")
    >>> x_hat = small.decode(small.encode(x))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

PRUNE_MODES = ("mask", "reselect")
"""How a pruned vanilla SAE is run (see the module docstring)."""


@dataclass(frozen=True)
class ViewConfig:
    """The widths a reduced view reports (what evaluation reads from ``sae.cfg``)."""

    d_in: int
    """Width of the activations read."""
    d_sae: int
    """Latents kept (G)."""


class MaskedLatents:
    """``sae`` with its codes restricted to the latents ``keep`` (``mask`` mode).

        >>> view = MaskedLatents(sae, torch.tensor([3, 17, 40]))
        >>> view.encode(x).shape      # [..., 3]
    """

    def __init__(self, sae: Any, keep: Int[Tensor, " G"]):
        keep = _checked_indices(keep, int(sae.cfg.d_sae))
        self.parent = sae
        """The full SAE (encodes and decodes)."""
        self.keep = keep.to(sae.device)
        """Kept latent indices, ascending."""
        self.cfg = ViewConfig(int(sae.cfg.d_in), int(keep.numel()))
        self.metadata: dict[str, Any] = dict(getattr(sae, "metadata", None) or {})
        self.architecture = f"{sae.architecture}[mask]"

    @property
    def device(self) -> torch.device:
        return self.parent.device

    @property
    def dtype(self) -> torch.dtype:
        return self.parent.dtype

    @property
    def W_dec(self) -> Float[Tensor, "G d_in"]:
        """Decoder rows of the kept latents (for importance and norms)."""
        return self.parent.W_dec[self.keep]

    def encode(self, x: Float[Tensor, "... d_in"], **kwargs: Any) -> Float[Tensor, "... G"]:
        """The full SAE's codes of the kept latents."""
        return self.parent.encode(x, **kwargs)[..., self.keep]

    def decode(self, z: Float[Tensor, "... G"]) -> Float[Tensor, "... d_in"]:
        """The full SAE's decoder applied to the kept codes (zeros elsewhere)."""
        if z.shape[-1] != self.cfg.d_sae:
            raise ValueError(f"z must have shape [..., {self.cfg.d_sae}] (kept latents); got {tuple(z.shape)}.")
        full = z.new_zeros(*z.shape[:-1], int(self.parent.cfg.d_sae))  # [..., d_sae]
        full[..., self.keep] = z
        return self.parent.decode(full)

    def __call__(self, x: Float[Tensor, "... d_in"]) -> tuple[Tensor, Tensor]:
        z = self.encode(x)
        return self.decode(z), z

    def inference_variant(self, *, width: int | None = None, k: int | None = None,
                          residual_threshold: float | None = None) -> Any:
        """This view at the full SAE's inference settings (a pursuit ``k``, ...); it has no nested prefixes.

            view, kw = masked.inference_variant(k=16)     # a matching-pursuit SAE's codes at k = 16, masked
        """
        if width is not None:
            raise ValueError(f"width={width}: a pruned SAE has no nested prefixes; choose its size G when pruning.")
        variant = self.parent.inference_variant(k=k, residual_threshold=residual_threshold)
        return type(variant)(self, variant.encode_kwargs)


def _checked_indices(keep: Any, d_sae: int) -> Tensor:
    idx = torch.as_tensor(keep, dtype=torch.long).flatten().cpu()
    if idx.numel() == 0:
        raise ValueError("a reduced SAE needs at least one latent; got none.")
    if int(idx.min()) < 0 or int(idx.max()) >= d_sae:
        raise ValueError(f"latent indices must lie in [0, {d_sae}); got [{int(idx.min())}, {int(idx.max())}].")
    sorted_idx = idx.unique()  # ascending
    if sorted_idx.numel() != idx.numel():
        raise ValueError("latent indices must be distinct.")
    return sorted_idx


def check_size(size: Any, d_sae: int, what: str = "size") -> int:
    """``size`` as an int in [1, d_sae], or a ValueError saying what is valid."""
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= d_sae:
        raise ValueError(f"{what} G={size!r} is not a number of latents of this SAE: it must be an int in "
                         f"[1, d_sae={d_sae}].")
    return size


def reduce_sae(sae: Any, order: Int[Tensor, " d_sae"], size: int, mode: str) -> Any:
    """``sae`` reduced to the ``size`` first latents of ``order`` (most important first), run in ``mode``.

        >>> reduce_sae(sae, imp.importance.argsort(descending=True), 512, "reselect")
    """
    d_sae = int(sae.cfg.d_sae)
    check_size(size, d_sae)
    if mode not in PRUNE_MODES:
        raise ValueError(f"prune mode {mode!r}; valid: {', '.join(PRUNE_MODES)}.")
    if tuple(order.shape) != (d_sae,):
        raise ValueError(f"order must rank all {d_sae} latents; got shape {tuple(order.shape)}.")
    keep = order[:size].cpu().sort().values
    return MaskedLatents(sae, keep) if mode == "mask" else sae.pruned(keep)


__all__ = ["MaskedLatents", "PRUNE_MODES", "ViewConfig", "check_size", "reduce_sae"]
