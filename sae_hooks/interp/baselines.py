"""Baselines a trained SAE's interpretability scores must beat, scored by the same code.

- ``random_like(sae, sample, seed)``: an SAE of the same class and config (so the same shape, k,
  thresholds...) as training would start it: the architecture's own random initialisation, then
  ``b_dec`` set from the data the way the trainer does (geometric median of a sample), and a learned
  inference threshold (BatchTopK, Matryoshka) set to the sample's batch-TopK threshold, as the first
  training step sets it. Its latents fire by the SAE's own rule (code > 0).
- ``ResidualCoordinates``: the hook's coordinates as "latents". A coordinate has no zero to fire
  above, so each coordinate j gives ``2 · len(quantiles)`` detectors: for sign s in (+, -) and
  quantile q, it fires where s·x_j exceeds the q-quantile of s·x_j over the training tokens (it
  fires on a fraction 1 - q of them). The default quantiles (0.5, 0.8, 0.95, 0.99) give the
  576-wide residual of SmolLM2 4,608 detectors, as many as an 8x SAE has latents, firing on 50 %,
  20 %, 5 % and 1 % of tokens. The probes read the raw coordinates, signed and dense.

    >>> twin = random_like(sae, x_train[:4096], seed=0)
    >>> resid = ResidualCoordinates(x_train, quantiles=(0.5, 0.8, 0.95, 0.99))
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from .scores import Dictionary


def random_like(sae: Any, sample: Float[Tensor, "n d_in"], seed: int) -> Any:
    """A freshly initialised SAE of ``sae``'s class and config; ``b_dec`` from ``sample`` (geometric median).

        >>> twin = random_like(sae, x_train[:4096], seed=0)     # same shape, untrained
    """
    cfg = getattr(sae, "cfg", None)
    if cfg is None or not callable(getattr(sae, "reset_parameters", None)) \
            or not callable(getattr(sae, "init_from_data", None)):
        raise TypeError(f"The random-SAE baseline rebuilds an sae_hooks SAE from its config; {type(sae).__name__} "
                        "has no cfg / reset_parameters / init_from_data. Drop 'random' from the baselines.")
    twin = type(sae)(cfg, metadata=dict(getattr(sae, "metadata", {}) or {}))
    twin.reset_parameters(torch.Generator().manual_seed(seed))
    twin.init_from_data(sample.float(), method="geometric_median")
    if callable(getattr(twin, "set_threshold", None)):
        # A learned inference threshold (BatchTopK, Matryoshka) is 0 before training, which makes an
        # untrained twin a dense ReLU (~half its latents fire); set it as the first training step
        # would, to the sample's batch-TopK threshold, so that the twin fires ~k latents per token.
        with torch.no_grad():
            twin.set_threshold(float(twin.training_loss(sample.float()).batch_threshold))
    return twin.to(sae.W_dec.device).eval()


class ResidualCoordinates(Dictionary):
    """The activation's coordinates as latents, with quantile detectors (see the module docstring).

        >>> r = ResidualCoordinates(x_train, (0.5, 0.99))
        >>> r.detector_name(0)          # '+x0>q0.5'
    """

    kind = "residual"
    sparse = False

    def __init__(self, x_train: Float[Tensor, "n d_in"], quantiles: tuple[float, ...]):
        if x_train.dim() != 2 or x_train.shape[0] < 2:
            raise ValueError(f"ResidualCoordinates needs training activations [n >= 2, d_in]; got {tuple(x_train.shape)}.")
        self.d_in = x_train.shape[1]
        self.quantiles = tuple(float(q) for q in quantiles)
        signed = torch.cat([x_train, -x_train], dim=1).float().numpy()              # [n, 2 d_in]
        # np.quantile has no size limit (torch.quantile refuses more than 2^24 elements).
        self.thresholds = torch.from_numpy(np.quantile(signed, self.quantiles, axis=0).astype(np.float32))  # [Q, 2 d_in]

    @property
    def n_values(self) -> int:
        return self.d_in

    @property
    def n_detectors(self) -> int:
        return self.thresholds.numel()

    def values(self, x: Tensor) -> Tensor:
        return x.float().cpu()

    def fires(self, x: Tensor, values: Tensor) -> Tensor:
        signed = torch.cat([values, -values], dim=1)                      # [n, 2 d_in]
        return (signed[:, None, :] > self.thresholds[None]).flatten(1)    # [n, Q * 2 d_in]

    def detector_name(self, j: int) -> str:
        q, rest = divmod(j, 2 * self.d_in)
        sign, coord = divmod(rest, self.d_in)
        return f"{'+-'[sign]}x{coord}>q{self.quantiles[q]:g}"
