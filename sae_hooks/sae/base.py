"""The SAE base class: config, named outputs, input checks, shared weights and helpers.

Every architecture is one subclass that owns its `encode`, `decode` and `training_loss`
(STYLE habit 3). Tensor names and shapes follow the SAELens v6 layout so that saving and
loading is a plain copy: `W_enc` [d_in, d_sae], `b_enc` [d_sae], `W_dec` [d_sae, d_in],
`b_dec` [d_in].

    sae = make_sae("topk", d_in=576, d_sae=4608, k=32)
    z = sae.encode(x); x_hat = sae.decode(z)
"""

from __future__ import annotations

import abc
import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from .layout import check_tensors, write_saelens

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
"""Parameter dtypes by the names configs and cfg.json files use (SAELens's names)."""
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class SAEConfig:
    """Fields every SAE has. Architectures subclass this and add their own fields."""

    architecture: ClassVar[str] = "base"

    d_in: int
    """Width of the activations the SAE reads (e.g. the model's d_model)."""

    d_sae: int
    """Number of latents (dictionary atoms)."""

    dtype: str = "float32"
    """Parameter dtype: one of float32, float64, float16, bfloat16."""

    apply_b_dec_to_input: bool = True
    """Subtract b_dec from the input before encoding (SAELens's default and ours)."""

    def __post_init__(self) -> None:
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int; got {value!r}.")
        if self.dtype not in DTYPES:
            raise ValueError(
                f"dtype must be one of {sorted(DTYPES)}; got {self.dtype!r}."
            )

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["architecture"] = self.architecture
        return out


class InferenceVariant(NamedTuple):
    """What ``sae.inference_variant(...)`` returns: the SAE to run and the options its encode takes."""

    sae: "SAE"
    """The SAE to evaluate (the SAE itself, or e.g. a Matryoshka prefix)."""
    encode_kwargs: dict[str, Any]
    """Keyword arguments for ``sae.encode`` (e.g. a matching-pursuit ``k``); empty for most."""


class SAEOutput(NamedTuple):
    """What `sae(x)` returns."""

    x_hat: Tensor
    """Reconstruction, same shape as the input."""
    z: Tensor
    """Dense codes [..., d_sae]."""


class TrainLoss(NamedTuple):
    """What `sae.training_loss(x, dead_mask)` returns."""

    loss: Tensor
    """Scalar to backpropagate."""
    parts: dict[str, Tensor]
    """Named detached components (mse, l1, l0, auxk, mse_w512, ...). ``mse``, where present, is
    Σ‖x − x_hat‖² / rows for this batch and ``x_hat`` below (the trainer's batch FVU reads it)."""
    x_hat: Tensor
    """Reconstruction [B, d_in] of the full SAE (detached)."""
    fired: Tensor
    """Bool [d_sae]: latents that were non-zero on at least one token of the batch."""
    l0: Tensor
    """Mean number of non-zero latents per token (detached scalar)."""
    batch_threshold: Tensor | None = None
    """BatchTopK family: the smallest pre-activation this batch's selection kept, which
    ``after_step(loss)`` folds into the inference threshold; None for other architectures."""


def check_input(x: Tensor, d_in: int, what: str = "x") -> None:
    """Raise a ValueError for a wrong last dimension or any NaN/inf in `x`.

    The happy path is one sum: a sum over any NaN/inf is not finite, so only then (or when finite
    values overflow it) the elementwise `isfinite` runs. ~1.4 ms against ~7 ms for
    `isfinite(x).all()` on a 4096×576 fp32 batch here, paid by every SAE at every step.

        check_input(x, sae.cfg.d_in)
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor; got {type(x).__name__}.")
    if x.ndim == 0 or x.shape[-1] != d_in:
        raise ValueError(
            f"{what} must have shape [..., {d_in}] (last dim = d_in); got {tuple(x.shape)}."
        )
    if not x.is_floating_point():
        raise ValueError(f"{what} must be a floating tensor; got dtype {x.dtype}.")
    if not bool(torch.isfinite(x.detach().sum())) and not bool(torch.isfinite(x).all()):
        bad = ~torch.isfinite(x.detach())
        n_bad = int(bad.sum())
        rows = bad.reshape(-1, d_in).any(-1).nonzero().flatten()
        first = rows[:5].tolist()
        n_nan = int(torch.isnan(x.detach()).sum())
        raise ValueError(
            f"{what} contains {n_bad} non-finite values ({n_nan} NaN, {n_bad - n_nan} inf) "
            f"in {rows.numel()} of {x.numel() // d_in} rows (flattened row indices, first "
            f"few: {first}). Drop or clean those rows (e.g. exclude the attention-sink "
            f"position 0, or check the capture dtype) before passing them to the SAE."
        )


def mse_per_token(x_hat: Tensor, x: Tensor) -> Tensor:
    """Squared error summed over d_in, averaged over tokens (the loss every SAE here uses).

        loss = mse_per_token(x_hat, x)      # (x_hat - x).pow(2).sum(-1).mean()
    """
    if (x_hat.shape == x.shape and x.ndim and x.numel() and x_hat.dtype == x.dtype
            and x.dtype in (torch.float32, torch.float64)):
        return _MSEPerToken.apply(x_hat, x)
    return (x_hat - x).pow(2).sum(-1).mean()


def squared_norm_per_token(r: Tensor) -> Tensor:
    """Σ‖r‖² over d_in, averaged over tokens: `mse_per_token` of a residual r = x − x_hat given directly
    (one dot product forward, one scaled copy backward; no difference to form).

        loss = squared_norm_per_token(residual)      # residual.pow(2).sum(-1).mean()
    """
    if r.ndim and r.numel() and r.dtype in (torch.float32, torch.float64):
        return _SquaredNormPerToken.apply(r)
    return r.pow(2).sum(-1).mean()


class _SquaredNormPerToken(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r):  # type: ignore[override]
        flat = r.reshape(-1)
        ctx.save_for_backward(r)
        ctx.n_tokens = flat.numel() // r.shape[-1]
        return torch.dot(flat, flat) / ctx.n_tokens

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (r,) = ctx.saved_tensors
        return r * (2.0 * g / ctx.n_tokens)


class _MSEPerToken(torch.autograd.Function):
    """mse_per_token with one [B, d_in] temporary: the difference (forward: one pass and a dot product;
    backward: one scaled copy). Autograd's sub/pow/sum/mean chain makes ~6 passes over [B, d_in],
    ~5 ms per call at 4096×576 here, and a TopK-family step calls it twice (reconstruction, AuxK)."""

    @staticmethod
    def forward(ctx, x_hat, x):  # type: ignore[override]
        diff = (x_hat - x).reshape(-1)
        n_tokens = diff.numel() // x.shape[-1]
        ctx.save_for_backward(diff)
        ctx.shape, ctx.n_tokens = x.shape, n_tokens
        return torch.dot(diff, diff) / n_tokens

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (diff,) = ctx.saved_tensors
        grad = (diff * (2.0 * g / ctx.n_tokens)).view(ctx.shape)
        return (grad if ctx.needs_input_grad[0] else None), (-grad if ctx.needs_input_grad[1] else None)


def geometric_median(points: Float[Tensor, "N d"], iters: int = 30) -> Float[Tensor, " d"]:
    """Weiszfeld iterations; robust to outlier tokens (e.g. an attention-sink position whose
    residual norm is orders of magnitude above the others), which drag a mean far off.

        b = geometric_median(x_sample)
    """
    y = points.mean(0)
    for _ in range(iters):
        w = 1.0 / (points - y).norm(dim=-1).clamp_min(1e-8)
        y_new = (w[:, None] * points).sum(0) / w.sum()
        if torch.allclose(y_new, y, rtol=1e-6, atol=1e-8):
            return y_new
        y = y_new
    return y


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _typed(name: str, text: str, hint: Any) -> Any:
    """``text`` as a value of the config field type ``hint`` (int, float, bool, str, X | None,
    tuple[int, ...]); a ValueError naming the option otherwise."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        if text.strip().lower() in ("none", "null", ""):
            return None
        (hint,) = [a for a in args if a is not type(None)]
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        return tuple(_typed(name, part, item) for part in text.strip("()[] ").split(",") if part.strip())
    value = text.strip()
    if hint is bool:
        if value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        raise ValueError(f"option {name}={text!r} must be true or false.")
    if hint in (int, float):
        try:
            return hint(value)
        except ValueError:
            kind = "an int" if hint is int else "a number"
            raise ValueError(f"option {name}={text!r} must be {kind}.") from None
    return text


class SAE(nn.Module, abc.ABC):
    """Base class: parameters, input handling, save/prune helpers.

    Subclasses set `architecture` and `config_class`, and implement `encode`,
    `decode` and `training_loss`. Evaluation code only needs `encode`/`decode`/`forward`.
    What else an architecture knows lives on its class too: its run defaults
    (`train_options`), its text options (`parse_options`), its inference settings
    (`inference_variant`), its on-disk mappings (`saelens_view` / `from_saelens`,
    `sparsify_view` / `from_sparsify`).

        sae = make_sae("standard", d_in=64, d_sae=256)
        x_hat, z = sae(x)
    """

    architecture: ClassVar[str] = "base"
    config_class: ClassVar[type[SAEConfig]] = SAEConfig
    tied: ClassVar[bool] = False
    """Tied SAEs (matching pursuit) have no W_enc / b_enc."""

    def __init__(self, cfg: SAEConfig, metadata: dict[str, Any] | None = None):
        super().__init__()
        if not isinstance(cfg, self.config_class):
            raise TypeError(
                f"{type(self).__name__} needs a {self.config_class.__name__}; "
                f"got {type(cfg).__name__}."
            )
        self.cfg = cfg
        self.metadata: dict[str, Any] = dict(metadata or {})
        dt = cfg.torch_dtype
        if not self.tied:
            self.W_enc = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_sae, dtype=dt))
            self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dt))
        self.W_dec = nn.Parameter(torch.zeros(cfg.d_sae, cfg.d_in, dtype=dt))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, dtype=dt))

    @property
    def device(self) -> torch.device:
        """Where the parameters live (all of them live together)."""
        return self.W_dec.device

    @property
    def dtype(self) -> torch.dtype:
        """The parameters' dtype; inputs are cast to it before encoding.

            z = sae.encode(x.to(sae.device, sae.dtype))
        """
        return self.W_dec.dtype

    # ---- options: what a config takes, from Python and from text ----------------------

    @classmethod
    def options(cls) -> tuple[str, ...]:
        """Names of the architecture's options: its config fields other than d_in and d_sae.

            TopKSAE.options()    # ('dtype', 'apply_b_dec_to_input', 'k', 'aux_k', ...)
        """
        return tuple(f.name for f in dataclasses.fields(cls.config_class) if f.name not in ("d_in", "d_sae"))

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """A ValueError naming any key of ``options`` that is not an option of this architecture."""
        unknown = sorted(set(options) - set(cls.options()))
        if unknown:
            raise ValueError(
                f"{cls.architecture!r} SAEs have no option(s) {unknown}; valid: {sorted(cls.options())}."
            )

    @classmethod
    def parse_options(cls, pairs: Mapping[str, str]) -> dict[str, Any]:
        """Options given as text (``{"k": "32", "widths": "512,1152"}``), typed by the config's fields;
        ``d_sae`` is accepted too. Errors name the option, the type it needs and the valid options.

            MatryoshkaSAE.parse_options({"k": "32", "widths": "512,4608"})   # {'k': 32, 'widths': (512, 4608)}
        """
        hints = typing.get_type_hints(cls.config_class)
        valid = ("d_sae", *cls.options())
        out: dict[str, Any] = {}
        for name, text in pairs.items():
            if name not in valid:
                raise ValueError(f"{cls.architecture!r} SAEs have no option {name!r}; valid: {sorted(valid)}.")
            out[name] = _typed(name, text, hints[name])
        return out

    @classmethod
    def train_options(cls, d_sae: int, *, k: int, l1_coef: float) -> dict[str, Any]:
        """This architecture's options for a training run whose sparsity settings are ``k`` (active
        latents or pursuit steps) and ``l1_coef`` (L1 weight); each architecture takes what applies
        to it. None here: the config's defaults.

            TopKSAE.train_options(4608, k=32, l1_coef=5.0)    # {'k': 32}
        """
        return {}

    # ---- initialisation -------------------------------------------------------------

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Unit-norm random decoder rows, encoder = decoder transpose, zero biases.

            sae.reset_parameters(torch.Generator().manual_seed(0))
        """
        w = torch.randn(
            self.cfg.d_sae, self.cfg.d_in, generator=generator, dtype=torch.float32
        )
        w /= w.norm(dim=-1, keepdim=True)
        self.W_dec.copy_(w)
        self.b_dec.zero_()
        if not self.tied:
            self.W_enc.copy_(w.T)
            self.b_enc.zero_()

    @torch.no_grad()
    def init_from_data(
        self, x_sample: Float[Tensor, "N d_in"], method: str = "geometric_median"
    ) -> None:
        """Set b_dec from a sample of training activations before training starts.

            sae.init_from_data(first_batch)              # geometric median
            sae.init_from_data(first_batch, method="mean")
        """
        check_input(x_sample, self.cfg.d_in, "x_sample")
        pts = x_sample.reshape(-1, self.cfg.d_in).float()
        if method == "geometric_median":
            b = geometric_median(pts)
        elif method == "mean":
            b = pts.mean(0)
        else:
            raise ValueError(
                f"method must be 'geometric_median' or 'mean'; got {method!r}."
            )
        self.b_dec.copy_(b.to(self.b_dec.dtype))

    # ---- the shared math ------------------------------------------------------------

    def _sae_in(self, x: Tensor) -> Tensor:
        check_input(x, self.cfg.d_in)
        x = x.to(self.W_dec.dtype)
        return x - self.b_dec if self.cfg.apply_b_dec_to_input else x

    def _pre(self, x: Tensor) -> Tensor:
        """Encoder pre-activations [..., d_sae]."""
        return self._sae_in(x) @ self.W_enc + self.b_enc

    @abc.abstractmethod
    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """Latent codes [..., d_sae] (each architecture its own)."""

    def decode(self, z: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_in"]:
        """x_hat = z W_dec + b_dec.

            x_hat = sae.decode(sae.encode(x))
        """
        if z.shape[-1] != self.cfg.d_sae:
            raise ValueError(
                f"z must have shape [..., {self.cfg.d_sae}] (d_sae); got {tuple(z.shape)}."
            )
        return z.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def forward(self, x: Float[Tensor, "... d_in"]) -> SAEOutput:
        z = self.encode(x)
        return SAEOutput(self.decode(z), z)

    encode_options: ClassVar[tuple[str, ...]] = ()
    """Inference options ``encode`` takes as keyword arguments (matching pursuit: k, residual_threshold)."""

    def inference_variant(
        self, *, width: int | None = None, k: int | None = None, residual_threshold: float | None = None,
    ) -> InferenceVariant:
        """The SAE at other inference settings: a nested-prefix ``width`` (Matryoshka), a pursuit ``k`` or
        ``residual_threshold`` (matching pursuit); None leaves a setting as it is. A ValueError names
        any setting this architecture does not have.

            view, kw = mp_sae.inference_variant(k=16)         # kw == {"k": 16}
            z = view.encode(x, **kw)
        """
        if width is not None:
            raise ValueError(
                f"width={width} selects a Matryoshka prefix, but this SAE is {self.architecture!r}, which has no "
                "nested prefixes. Drop --width, or prune it (sae.pruned(indices))."
            )
        kw: dict[str, Any] = {}
        for name, value in (("k", k), ("residual_threshold", residual_threshold)):
            if value is None:
                continue
            if name not in self.encode_options:
                raise ValueError(
                    f"{name}={value} is an inference option of matching-pursuit SAEs; this SAE is "
                    f"{self.architecture!r}, whose encode takes no {name!r}. Drop the option."
                )
            kw[name] = value
        return InferenceVariant(self, kw)

    @abc.abstractmethod
    def training_loss(
        self, x: Float[Tensor, "B d_in"], dead_mask: Bool[Tensor, " d_sae"] | None = None
    ) -> TrainLoss:
        """Loss of one training batch, its parts, x_hat, the fired latents and L0 (see TrainLoss)."""

    def after_step(self, loss: TrainLoss | None = None) -> None:
        """Called by the trainer after `opt.step()` with the step's `training_loss` result: decoder
        renorm, running statistics. No-op here.

            out = sae.training_loss(x); out.loss.backward(); opt.step(); sae.after_step(out)
        """

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale decoder rows to unit norm (TopK family, MP)."""
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12))

    # ---- folding, pruning, saving ----------------------------------------------------

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Make an SAE trained on `x * scale` work on raw `x` (call once, before saving).

        The trainer may normalise activations by a scalar (e.g. so E‖x‖² = d_in). With
        apply_b_dec_to_input the encoder sees (s·x − b) W = (x − b/s)(s·W), and the
        reconstruction in raw units is (z W_dec + b_dec)/s; so W_enc ← s·W_enc,
        W_dec ← W_dec/s, b_dec ← b_dec/s leave the codes unchanged (the same holds
        without apply_b_dec_to_input). Matching pursuit overrides this.

            sae.fold_input_scale(trainer.input_scale); sae.save(path)
        """
        s = float(scale)
        if not (s > 0 and s != float("inf")):
            raise ValueError(f"scale must be a finite positive number; got {scale!r}.")
        self.W_enc.mul_(s)
        self.W_dec.div_(s)
        self.b_dec.div_(s)

    def _arch_kwargs_for_pruned(self, m: int) -> dict[str, Any]:
        return {}

    @torch.no_grad()
    def pruned(self, indices: Int[Tensor, " m"] | list[int]) -> "SAE":
        """A new SAE of the same class keeping only the given latents, in that order.

            top = importance.argsort(descending=True)[:512]
            small = sae.pruned(top)
        """
        idx = torch.as_tensor(indices, dtype=torch.long).flatten()
        if idx.numel() == 0:
            raise ValueError("pruned() needs at least one latent index; got none.")
        if int(idx.min()) < 0 or int(idx.max()) >= self.cfg.d_sae:
            raise ValueError(
                f"latent indices must lie in [0, {self.cfg.d_sae}); got range "
                f"[{int(idx.min())}, {int(idx.max())}]."
            )
        if idx.unique().numel() != idx.numel():
            raise ValueError("pruned() latent indices must be distinct.")
        m = idx.numel()
        cfg = dataclasses.replace(self.cfg, d_sae=m, **self._arch_kwargs_for_pruned(m))
        new = type(self)(cfg, metadata=dict(self.metadata))
        new.W_dec.copy_(self.W_dec[idx])
        new.b_dec.copy_(self.b_dec)
        if not self.tied:
            new.W_enc.copy_(self.W_enc[:, idx])
            new.b_enc.copy_(self.b_enc[idx])
        self._copy_extra_pruned(new, idx)
        return new

    def _copy_extra_pruned(self, new: "SAE", idx: Tensor) -> None:
        pass

    def save(self, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> None:
        """Write the SAELens v6 layout (cfg.json + sae_weights.safetensors), atomically; our own
        config and extra state go under ``metadata.sae_hooks``, so the folder loads back as this class.

            sae.save("runs/l6_topk", metadata={"hook_name": "blocks.6.hook_resid_post"})
        """
        arch_cfg, tensors = self.saelens_view()
        write_saelens(
            path, d_in=self.cfg.d_in, d_sae=self.cfg.d_sae, dtype=self.cfg.dtype,
            apply_b_dec_to_input=self.cfg.apply_b_dec_to_input, arch_cfg=arch_cfg, tensors=tensors,
            metadata={**self.metadata, **(metadata or {})},
            ours={"architecture": self.architecture, "config": self.cfg.to_dict(), "state": self.extra_state()},
        )

    # ---- the on-disk mappings (formats.py matches folders to classes) ----------------------

    saelens_architecture: ClassVar[str | None] = None
    """The SAELens ``architecture`` this class reads from a SAELens folder (None: none). A class may
    write another one in ``saelens_view`` (BatchTopK saves as the JumpReLU it is at inference)."""

    @abc.abstractmethod
    def saelens_view(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """(SAELens cfg fields, tensors) for inference-equivalent loading by sae_lens."""

    @classmethod
    def saelens_options(cls, cfg: Mapping[str, Any]) -> dict[str, Any]:
        """This architecture's config fields from a SAELens cfg.json (the inverse of the cfg part of
        ``saelens_view``). None here."""
        return {}

    @torch.no_grad()
    def load_saelens_tensors(self, tensors: Mapping[str, Tensor]) -> None:
        """Copy in tensors named and shaped as ``saelens_view`` gives them (the inverse of its tensor part)."""
        for name in ("W_dec", "b_dec") if self.tied else ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(self, name).copy_(tensors[name])

    @classmethod
    def restore(
        cls, cfg: SAEConfig, tensors: Mapping[str, Tensor], *, metadata: dict[str, Any] | None = None,
        state: Mapping[str, Any] | None = None, where: str = "tensors",
    ) -> "SAE":
        """An SAE of config ``cfg`` holding ``tensors`` (exactly those of its ``saelens_view``, in those
        shapes; a ValueError naming ``where`` otherwise) and its ``extra_state``.

            sae = TopKSAE.restore(TopKConfig(d_in=8, d_sae=16, k=2), tensors)
        """
        sae = cls(cfg, metadata=metadata)
        check_tensors(where, tensors, {name: tuple(t.shape) for name, t in sae.saelens_view()[1].items()})
        sae.load_saelens_tensors(tensors)
        sae.load_extra_state(state or {})
        return sae

    @classmethod
    def from_saelens(
        cls, cfg: Mapping[str, Any], tensors: Mapping[str, Tensor], *, metadata: dict[str, Any] | None = None,
        where: str = "cfg.json",
    ) -> "SAE":
        """An SAE from a SAELens cfg.json and its tensors: the inverse of ``saelens_view``.

            sae = TopKSAE.from_saelens(json.load(open("cfg.json")), load_file("sae_weights.safetensors"))
        """
        for key in ("d_in", "d_sae"):
            if isinstance(cfg.get(key), bool) or not isinstance(cfg.get(key), int):
                raise ValueError(f"{where!r}: cfg.json needs an int {key!r}; got {cfg.get(key)!r}.")
        dtype = str(cfg.get("dtype", "float32")).removeprefix("torch.")
        if dtype not in DTYPES:
            raise ValueError(f"{where!r}: dtype {dtype!r} not in {sorted(DTYPES)}.")
        fields = {"d_in": cfg["d_in"], "d_sae": cfg["d_sae"], "dtype": dtype,
                  "apply_b_dec_to_input": bool(cfg.get("apply_b_dec_to_input", True)), **cls.saelens_options(cfg)}
        return cls.restore(cls.config_class(**fields), tensors, metadata=metadata, where=where)

    sparsify_activation: ClassVar[str | None] = None
    """The sparsify ``activation`` this class reads and writes (None: no sparsify layout)."""

    def sparsify_view(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """(sparsify cfg.json, tensors) of this SAE; only architectures with a sparsify layout have one."""
        raise ValueError(
            f"sparsify folders hold TopK SAEs only; got {self.architecture!r}. "
            "Use sae.save(path) for the SAELens layout instead."
        )

    @classmethod
    def from_sparsify(
        cls, cfg: Mapping[str, Any], tensors: Mapping[str, Tensor], *, metadata: dict[str, Any] | None = None,
        where: str = "sae.safetensors",
    ) -> "SAE":
        """An SAE from a sparsify cfg.json and its tensors: the inverse of ``sparsify_view``."""
        raise ValueError(f"{where!r}: {cls.architecture!r} SAEs have no sparsify layout.")

    def extra_state(self) -> dict[str, Any]:
        """JSON-able state that is not a SAELens tensor (kept under metadata.sae_hooks)."""
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        pass

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.cfg.to_dict().items())
