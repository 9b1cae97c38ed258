"""Training several SAEs on the same activation batches: the optimiser side of ``sae-hooks train``.

The trainer never sees a language model: ``Trainer.step`` takes ``{hook: rows [N, d]}`` from any
source (a live stream, a cache, synthetic data) and updates every SAE that reads one of those
hooks. Per SAE: Adam, a warm-up + decay schedule that is a function of the step, gradient
clipping, dead-latent counters feeding AuxK, and the activation-norm scale of its hook point.

Choices for short runs, and why (the job: 400k tokens = 98 steps of 4,096 tokens):

- **lr 2e-3 with 5 % warm-up and cosine decay to 10 %.** SAELens's 3e-4 constant leaves a 98-step
  TopK run at FVU 0.57 (SmolLM2-135M, layer 6, measured here); a short run needs a bigger step and a
  decay to settle.
- **Activation norm scaling**: x is multiplied by ``s = sqrt(d_in / E‖x‖²)`` (estimated on the
  first batch, all ranks pooled), so the lr means the same thing at every hook point and model.
  ``export`` folds ``s`` into the weights: saved SAEs take raw activations.
- **b_dec from data** (geometric median of the first batch, robust to outlier tokens); W_enc starts
  as W_decᵀ (``make_sae``).
- **Dead window in tokens, relative to the run**: a latent is dead for AuxK once it has not fired
  for ``dead_window_tokens`` tokens; default ``min(10M, total_tokens / 20)`` — 20k tokens (5 steps)
  here. SAELens's fixed 1,000-step window never engages in a 98-step run, and 44 % of its latents
  end up never firing.
- **SAEs step concurrently on the CPU**: the SAEs of one batch are independent, so
  ``Trainer.step`` runs them on a small thread pool, each with its share of the intra-op threads
  (2 SAEs at a time with 1 thread each on 2 cores), longest first. Many of a step's ops are
  memory-bound or too small to split well over threads; four SAEs (topk, batchtopk, matryoshka,
  matching pursuit at 576 → 4608) took ~460 ms per step concurrently against ~550 ms one after
  another here (median over 13 steps, the same process). Each SAE's result is deterministic either
  way, though not bitwise the same across the two modes (reductions split over threads
  differently). Sequential under torchrun (the ranks' collectives must come in the same order), on
  GPUs, with one SAE or one thread, or with ``TrainConfig(concurrent=False)``.

    trainer = Trainer([Target("topk", "resid_post.6", make_sae("topk", 576, 4608, k=32, seed=0))],
                      TrainConfig(), total_steps=98, total_tokens=400_000)
    for batch in batches: trainer.step(batch.acts)
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from ._threads import thread_pool
from .distributed import DistContext, all_reduce_, all_reduce_grads, gather_rows
from .hardware import native_bf16
from .sae import SAE

__all__ = ["TrainConfig", "Target", "StepStats", "Trainer", "lr_factor", "default_dead_window", "held_out_metrics",
           "native_bf16"]

DECAYS = ("cosine", "linear", "constant")
B_DEC_INITS = ("geometric_median", "mean", "none")
AUTOCASTS = ("none", "bf16", "fp16", "auto")


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser and bookkeeping settings shared by every SAE of a run (see the module docstring)."""

    lr: float = 2e-3
    """Peak Adam learning rate (on norm-scaled activations, so it transfers across hooks/models)."""
    warmup_frac: float = 0.05
    """Fraction of the steps spent ramping the lr linearly from lr/warmup_steps up to lr."""
    decay: str = "cosine"
    """Shape after warm-up: ``"cosine"``, ``"linear"`` (both down to ``final_lr_frac · lr``) or ``"constant"``."""
    final_lr_frac: float = 0.1
    """lr at the last step as a fraction of ``lr``, in [0, 1]."""
    beta1: float = 0.9
    """Adam β1."""
    beta2: float = 0.999
    """Adam β2."""
    grad_clip: float = 1.0
    """Max global gradient norm per SAE; 0 turns clipping off."""
    normalize_activations: bool = True
    """Train on ``x · s`` with E‖x·s‖² = d_in (s estimated on the first batch, folded into the saved weights)."""
    b_dec_init: str = "geometric_median"
    """Decoder-bias init from the first batch: ``"geometric_median"``, ``"mean"`` or ``"none"``."""
    dead_window_tokens: int | None = None
    """A latent unfired for this many training tokens is dead (AuxK revives it). None: min(10M, run tokens / 20)."""
    autocast: str = "none"
    """Mixed precision for the SAE step's dense products: ``"none"``, ``"bf16"``, ``"fp16"``, or ``"auto"`` = bf16
    where the device has native bf16 matrix units (CUDA with bf16; a CPU with AVX512-BF16 or AMX), else none.
    Parameters, gradients and optimizer state stay fp32; under bf16 the TopK family's sparse gathers read bf16
    copies of their tables (`sae_hooks.sae.sparse.table_dtype`), as a dense autocast product would. fp16 adds
    dynamic loss scaling per SAE (``torch.amp.GradScaler``: a step whose scaled gradients overflow is skipped)."""
    concurrent: bool = True
    """Step the SAEs of a batch concurrently on CPU threads, each with its share of the intra-op threads
    (see the module docstring). Off: one after another, each with all threads."""

    def __post_init__(self) -> None:
        for name in ("lr", "beta1", "beta2", "grad_clip", "warmup_frac", "final_lr_frac"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"TrainConfig.{name}={v!r}; it must be a finite number.")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr={self.lr!r}; it must be > 0 (e.g. 2e-3).")
        if not 0 <= self.beta1 < 1 or not 0 <= self.beta2 < 1:
            raise ValueError(f"TrainConfig.beta1/beta2=({self.beta1}, {self.beta2}); both must lie in [0, 1).")
        if self.grad_clip < 0:
            raise ValueError(f"TrainConfig.grad_clip={self.grad_clip!r}; it must be >= 0 (0 = off).")
        if not 0 <= self.warmup_frac < 1:
            raise ValueError(f"TrainConfig.warmup_frac={self.warmup_frac!r}; it must lie in [0, 1).")
        if not 0 <= self.final_lr_frac <= 1:
            raise ValueError(f"TrainConfig.final_lr_frac={self.final_lr_frac!r}; it must lie in [0, 1].")
        if self.decay not in DECAYS:
            raise ValueError(f"TrainConfig.decay={self.decay!r}; valid: {', '.join(DECAYS)}.")
        if self.b_dec_init not in B_DEC_INITS:
            raise ValueError(f"TrainConfig.b_dec_init={self.b_dec_init!r}; valid: {', '.join(B_DEC_INITS)}.")
        if not isinstance(self.concurrent, bool):
            raise ValueError(f"TrainConfig.concurrent={self.concurrent!r}; it must be True or False.")
        if self.autocast not in AUTOCASTS:
            raise ValueError(f"TrainConfig.autocast={self.autocast!r}; valid: {', '.join(AUTOCASTS)}.")
        w = self.dead_window_tokens
        if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < 1):
            raise ValueError(f"TrainConfig.dead_window_tokens={w!r}; it must be an int >= 1 or None (auto).")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Target(NamedTuple):
    """One SAE of a run and the hook point it reads."""

    name: str
    """Unique name (also its output subfolder), e.g. ``topk_resid_post.6``."""
    hook: str
    """Key of its activations in the batches given to ``Trainer.step``."""
    sae: SAE
    """The SAE being trained (updated in place)."""


class StepStats(NamedTuple):
    """What one SAE did in one step (detached floats)."""

    loss: float
    """Total training loss."""
    fvu: float
    """Batch FVU (on the training batch, before the update)."""
    l0: float
    """Mean active latents per token."""
    dead_frac: float
    """Fraction of latents currently past the dead window."""
    lr: float
    """Learning rate used."""
    parts: dict[str, float]
    """The SAE's named loss parts (mse, auxk, mse_w512, ...)."""


def default_dead_window(total_tokens: int) -> int:
    """``min(10M, total_tokens // 20)``: long runs get the usual 10M; short runs still see AuxK engage.

        default_dead_window(400_000)   # 20,000 tokens, ~5 steps of 4,096
    """
    return max(1, min(10_000_000, total_tokens // 20))


def lr_factor(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Multiplier of ``cfg.lr`` at ``step`` (0-based): linear warm-up, then the chosen decay.

        [round(lr_factor(s, 100, TrainConfig()), 3) for s in (0, 4, 50, 99)]   # [0.2, 1.0, 0.59, 0.1]
    """
    warmup = max(1, round(cfg.warmup_frac * total_steps)) if cfg.warmup_frac > 0 else 0
    if step < warmup:
        return (step + 1) / warmup
    if cfg.decay == "constant":
        return 1.0
    span = max(1, total_steps - warmup - 1)
    p = min(1.0, (step - warmup) / span)
    shape = 0.5 * (1 + math.cos(math.pi * p)) if cfg.decay == "cosine" else 1.0 - p
    return cfg.final_lr_frac + (1.0 - cfg.final_lr_frac) * shape


class Trainer:
    """Adam + schedule + dead-latent tracking for a list of SAEs; every rank holds identical state.

        trainer = Trainer(targets, TrainConfig(lr=1e-3), total_steps=98, total_tokens=400_000)
        stats = trainer.step({"resid_post.6": x})      # {name: StepStats}
        saes = trainer.export()                        # copies that take raw activations
    """

    def __init__(self, targets: Sequence[Target], cfg: TrainConfig, *, total_steps: int, total_tokens: int,
                 dist: DistContext | None = None, device: str | torch.device = "cpu"):
        names = [t.name for t in targets]
        if not targets:
            raise ValueError("Trainer needs at least one Target (name, hook, sae).")
        if len(set(names)) != len(names):
            raise ValueError(f"Trainer: SAE names must be unique; got {names}.")
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"Trainer: total_steps={total_steps!r}; it must be an int >= 1.")
        self.targets = list(targets)
        self.cfg = cfg
        self.total_steps = total_steps
        self.dist = dist or DistContext()
        self.device = torch.device(device)
        self.dead_window = cfg.dead_window_tokens or default_dead_window(total_tokens)
        # The autocast mode in effect ("auto" resolved once for this device, not at every step).
        self.autocast = cfg.autocast if cfg.autocast != "auto" else ("bf16" if native_bf16(self.device) else "none")
        self.step_count = 0
        self.tokens = 0
        self.scales: dict[str, float] = {}
        self.initialized = False
        self.opts = {t.name: torch.optim.Adam(t.sae.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                              fused=self._fused_adam(t.sae))
                     for t in self.targets}
        self.since_fired = {t.name: torch.zeros(t.sae.cfg.d_sae, dtype=torch.long, device=self.device)
                            for t in self.targets}
        # fp16 autocast: dynamic loss scaling per SAE (fp16 gradients of the dense products underflow
        # without it); disabled scalers (bf16, none) pass everything through unchanged.
        self.scalers = {t.name: torch.amp.GradScaler(self.device.type, enabled=self.autocast == "fp16")
                        for t in self.targets}
        self.step_seconds: dict[str, float] = {}
        """Each SAE's last step time (wall seconds); concurrent steps start the longest first."""

    # ---- the step --------------------------------------------------------------------

    def step(self, acts: Mapping[str, Float[Tensor, "rows d"]]) -> dict[str, StepStats]:
        """One optimiser step of every SAE on this batch (rows are this rank's share).

            stats = trainer.step({"resid_post.6": x})
        """
        self._check(acts)
        if not self.initialized:
            self._init(acts)
        n_local = next(iter(acts.values())).shape[0]
        n_global = int(all_reduce_(self.dist, torch.tensor(n_local, dtype=torch.long), "sum"))
        lr = self.cfg.lr * lr_factor(self.step_count, self.total_steps, self.cfg)
        # Per hook, once for all the SAEs that read it: the norm-scaled rows and their total variance.
        inputs: dict[str, tuple[Tensor, float]] = {}
        for hook in {t.hook for t in self.targets}:
            x = acts[hook].to(self.device)
            if self.cfg.normalize_activations:
                x = x * self.scales[hook]
            with torch.no_grad():
                xf = x.float()
                centered = xf - xf.mean(0)
                inputs[hook] = (x, float(torch.dot(centered.view(-1), centered.view(-1))))
        workers = self.workers()
        if workers > 1:
            out = self._step_concurrently(workers, inputs, n_global, lr)
        else:
            out = {t.name: self._timed_step(t, inputs, n_global, lr) for t in self.targets}
        self.step_count += 1
        self.tokens += n_global
        return out

    def workers(self) -> int:
        """How many SAEs step at once: 1 (sequential) unless on the CPU, not distributed, concurrent, and
        there are >= 2 SAEs and >= 2 intra-op threads."""
        if not self.cfg.concurrent or self.dist.enabled or self.device.type != "cpu":
            return 1
        return min(len(self.targets), torch.get_num_threads())

    def _step_concurrently(self, workers: int, inputs: Mapping[str, tuple[Tensor, float]], n_global: int,
                           lr: float) -> dict[str, StepStats]:
        """`_step_one` for every SAE on ``workers`` pool threads with threads // workers intra-op threads
        each, the longest last step first (so the pool's tail is short). Every SAE's step is waited
        for, even when one raises; then the first error is raised."""
        threads = torch.get_num_threads()
        share = max(1, threads // workers)

        def run(t: Target) -> StepStats:
            torch.set_num_threads(share)  # this pool thread's own setting
            return self._timed_step(t, inputs, n_global, lr)

        order = sorted(self.targets, key=lambda t: -self.step_seconds.get(t.name, 0.0))
        results: dict[str, StepStats] = {}
        error: BaseException | None = None
        try:
            futures = [(t.name, thread_pool("step", workers).submit(run, t)) for t in order]
            for name, f in futures:
                try:
                    results[name] = f.result()
                except BaseException as e:  # noqa: BLE001 - re-raised below, once all steps are done
                    error = error or e
        finally:
            # set_num_threads in a pool thread also changes the default new threads start with; the
            # caller's own setting is untouched. Put the default back.
            torch.set_num_threads(threads)
        if error is not None:
            raise error
        return {t.name: results[t.name] for t in self.targets}

    def _timed_step(self, t: Target, inputs: Mapping[str, tuple[Tensor, float]], n_global: int,
                    lr: float) -> StepStats:
        """`_step_one` on t's hook input, its wall time kept in ``step_seconds``."""
        t0 = time.perf_counter()
        stats = self._step_one(t, *inputs[t.hook], n_global, lr)
        self.step_seconds[t.name] = time.perf_counter() - t0
        return stats

    def _step_one(self, t: Target, x: Tensor, var: float, n_global: int, lr: float) -> StepStats:
        """One update of one SAE on its (already norm-scaled) rows x; ``var`` = Σ‖x − x̄‖² for the batch FVU."""
        sae, opt = t.sae, self.opts[t.name]
        dead = self.since_fired[t.name] >= self.dead_window
        with self._autocast():
            res = sae.training_loss(x, dead)
        scaler = self.scalers[t.name]  # a no-op unless fp16 autocast
        scaler.scale(res.loss).backward()
        all_reduce_grads(self.dist, sae.parameters())
        scaler.unscale_(opt)  # ranks hold the same reduced gradients, so they agree on skipping
        if self.cfg.grad_clip > 0:
            clip_grad_norm(sae.parameters(), self.cfg.grad_clip)
        for group in opt.param_groups:
            group["lr"] = lr
        scaler.step(opt)  # skipped when the scaled gradients overflowed (fp16), then the scale backs off
        scaler.update()
        opt.zero_grad(set_to_none=True)
        sae.after_step(res)
        if self.dist.enabled:  # running statistics (BatchTopK's threshold) saw only this rank's rows
            for buf in sae.buffers():
                if buf.is_floating_point():
                    all_reduce_(self.dist, buf, "mean")
        fired = all_reduce_(self.dist, res.fired.to(torch.uint8), "max").bool()
        counter = self.since_fired[t.name]
        counter += n_global
        counter[fired] = 0
        if "mse" in res.parts:  # Σ‖x − x_hat‖² / rows (TrainLoss's contract): no second pass over the batch
            err = float(res.parts["mse"]) * x.shape[0]
        else:
            with torch.no_grad():
                diff = (res.x_hat.float() - x.float()).view(-1)
                err = float(torch.dot(diff, diff))
        fvu = err / max(var, 1e-12)
        return StepStats(float(res.loss.detach()), fvu, float(res.l0), float(dead.float().mean()), lr,
                         {k: float(v) for k, v in res.parts.items()})

    def _fused_adam(self, sae: SAE) -> bool:
        """Fused Adam (one kernel per parameter) where PyTorch has it: ~13 ms against ~25 ms per
        step for a 576×4608 SAE here (the per-op loop makes ~7 passes over each weight matrix)."""
        return self.device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in sae.parameters())

    def _autocast(self):
        if self.autocast == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.autocast == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _check(self, acts: Mapping[str, Tensor]) -> None:
        rows = set()
        for t in self.targets:
            if t.hook not in acts:
                raise ValueError(f"SAE {t.name!r} reads hook {t.hook!r}, absent from the batch (hooks: {sorted(acts)}).")
            x = acts[t.hook]
            if x.ndim != 2 or x.shape[-1] != t.sae.cfg.d_in:
                raise ValueError(
                    f"SAE {t.name!r} has d_in={t.sae.cfg.d_in}, but hook {t.hook!r} gives activations of shape "
                    f"{tuple(x.shape)} (width {x.shape[-1] if x.ndim else '?'}). Use d_in={x.shape[-1]} for this "
                    f"hook point, or pick a hook point of width {t.sae.cfg.d_in}.")
            rows.add(x.shape[0])
        if len(rows) != 1 or 0 in rows:
            raise ValueError(f"Trainer.step: every hook must give the same, non-zero number of rows; got {sorted(rows)}.")

    @torch.no_grad()
    def _init(self, acts: Mapping[str, Tensor]) -> None:
        """Norm scales and decoder biases from the first batch, pooled over ranks."""
        for hook in sorted({t.hook for t in self.targets}):  # same order on every rank (collectives below)
            x = acts[hook].to(self.device).float()
            sums = torch.tensor([x.pow(2).sum().item(), float(x.shape[0])], dtype=torch.float64)
            all_reduce_(self.dist, sums, "sum")
            mean_sq = float(sums[0] / sums[1])
            self.scales[hook] = math.sqrt(x.shape[-1] / mean_sq) if self.cfg.normalize_activations and mean_sq > 0 else 1.0
        if self.cfg.b_dec_init != "none":
            samples: dict[str, Tensor] = {}
            for t in self.targets:
                if t.hook not in samples:
                    x = acts[t.hook].to(self.device).float() * self.scales[t.hook]
                    samples[t.hook] = gather_rows(self.dist, x)
                t.sae.init_from_data(samples[t.hook], method=self.cfg.b_dec_init)
        self.initialized = True

    # ---- results and state -----------------------------------------------------------

    def export(self) -> dict[str, SAE]:
        """Copies of the SAEs with the activation scale folded in (they take raw activations).

            for name, sae in trainer.export().items(): sae.save(f"out/{name}")
        """
        out = {}
        for t in self.targets:
            sae = copy.deepcopy(t.sae)
            if self.cfg.normalize_activations and self.scales.get(t.hook, 1.0) != 1.0:
                sae.fold_input_scale(self.scales[t.hook])
            out[t.name] = sae
        return out

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue bit for bit (with the data position saved elsewhere).

        A deep copy: the optimiser's state_dict holds the live moment tensors, and a loader on the
        same device would share them otherwise.
        """
        return copy.deepcopy({
            "step": self.step_count, "tokens": self.tokens, "scales": dict(self.scales),
            "initialized": self.initialized, "dead_window": self.dead_window,
            "saes": {t.name: t.sae.state_dict() for t in self.targets},
            "extra": {t.name: t.sae.extra_state() for t in self.targets},
            "opts": {n: o.state_dict() for n, o in self.opts.items()},
            "scalers": {n: s.state_dict() for n, s in self.scalers.items()},
            "since_fired": dict(self.since_fired),
        })

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()`` output into SAEs built with the same targets.

            trainer.load_state_dict(torch.load(path)["trainer"])
        """
        names = {t.name for t in self.targets}
        if set(state["saes"]) != names:
            raise ValueError(f"Checkpoint holds SAEs {sorted(state['saes'])}, this run trains {sorted(names)}.")
        for t in self.targets:
            t.sae.load_state_dict(state["saes"][t.name])
            t.sae.load_extra_state(state["extra"][t.name])
            self.opts[t.name].load_state_dict(state["opts"][t.name])
            if self._fused_adam(t.sae):  # checkpoints from before fused Adam carry fused=None and CPU step counts
                opt = self.opts[t.name]
                for group in opt.param_groups:
                    group["fused"] = True
                    for p in group["params"]:
                        if "step" in opt.state.get(p, {}):
                            opt.state[p]["step"] = opt.state[p]["step"].to(p.device, torch.float32)
            self.since_fired[t.name].copy_(state["since_fired"][t.name])
            scaler_state = state.get("scalers", {}).get(t.name)
            if scaler_state and self.scalers[t.name].is_enabled():  # empty when saved by a disabled one
                self.scalers[t.name].load_state_dict(scaler_state)
        self.step_count = int(state["step"])
        self.tokens = int(state["tokens"])
        self.scales = dict(state["scales"])
        self.initialized = bool(state["initialized"])
        self.dead_window = int(state["dead_window"])


def clip_grad_norm(params: Iterable[Tensor], max_norm: float) -> Tensor:
    """`torch.nn.utils.clip_grad_norm_` (same norm, same factor, same result), except that on the CPU the
    gradients are multiplied only when the factor is < 1. PyTorch multiplies them by min(1, factor)
    always, to spare a GPU a sync; on the CPU the check costs nothing and the skipped pass over every
    gradient ~1.2 ms per step of a 576×4608 SAE here. Returns the total norm.

        clip_grad_norm(sae.parameters(), 1.0)
    """
    params = [p for p in params if p.grad is not None]
    if not params or any(p.grad.device.type != "cpu" for p in params):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    grads = [p.grad for p in params]
    total = torch.nn.utils.get_total_norm(grads)
    coef = max_norm / (total + 1e-6)  # as PyTorch computes it
    if bool(coef < 1):
        torch._foreach_mul_(grads, coef)
    return total


@torch.no_grad()
def held_out_metrics(sae: SAE, x: Float[Tensor, "rows d"], chunk: int = 4096) -> dict[str, float]:
    """Pooled FVU, L0 and never-fired fraction of an SAE on activation rows (raw units).

        held_out_metrics(trainer.export()["topk_resid_post.6"], eval_rows)  # {'fvu': ..., 'l0': ..., 'dead_frac': ...}
    """
    x = x.float()
    mean = x.mean(0)
    err = var = 0.0
    nnz = 0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool, device=x.device)
    for part in x.split(chunk):
        z = sae.encode(part)
        x_hat = sae.decode(z)
        err += float((x_hat.float() - part).pow(2).sum())
        var += float((part - mean).pow(2).sum())
        active = z != 0
        nnz += int(active.sum())
        fired |= active.any(0)
    return {"fvu": err / max(var, 1e-12), "l0": nnz / max(1, x.shape[0]), "dead_frac": float((~fired).float().mean())}
