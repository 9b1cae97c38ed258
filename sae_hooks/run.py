"""A training run: ``train(RunConfig(...))`` trains SAEs online on a live model and returns a ``RunResult``.

The model streams activations while the SAEs learn: one SAE per (architecture, hook) pair, or one
per ``ARCH:HOOK[:key=value...]`` spec, all fed by the same forward per token batch, which stops
after the deepest hook point. The default hook, ``resid_post.6`` of the embedded SmolLM2-135M, is a
middle-early residual stream: deep enough for abstract features, shallow enough that the forward
stops after 7 of 30 blocks (~5x faster than a full pass), and before layer 12, from where the
position-0 attention sink reaches residual norms of ~23,000.

Documents are shuffled by default (seeded by ``seed``, reshuffled per epoch with ``cycle``): in file
order the run would learn from the alphabetically first modules of the corpus only. The held-out
block is never shuffled and never trained on. ``sae-hooks train`` is this function behind flags;
``torchrun --nproc_per_node=N -m sae_hooks train ...`` runs it data-parallel
(``sae_hooks.distributed``). The run folder and its rules (lock, resume, overwrite) are
``sae_hooks.runfolder``; SIGINT / SIGTERM stop a run cleanly after the current step
(``sae_hooks.interrupts``).

    from sae_hooks import RunConfig, train
    result = train(RunConfig(archs=("topk", "matching_pursuit"), tokens=400_000, out="runs/l6"))
    [(s.name, s.fvu) for s in result.saes]
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch

from ._io import atomic_write_text
from .activations import NONFINITE_POLICIES, stream_activations
from .buffer import shuffled
from .cache import ActivationCache
from .checkpoint import CheckpointError, load_latest, rng_state, save_checkpoint, set_rng_state
from .data import CorpusConfig, CorpusError, TokenBatch, iter_batches
from .distributed import DistContext, all_reduce_, init_distributed, shutdown
from .hardware import MODEL_DTYPES, resolve_model_dtype
from .hookpoints import parse_hook
from .interrupts import RunInterrupted, StopSignals
from .live_eval import HeldOut, held_out_scores, load_held_out
from .models import DEFAULT_MODEL, load_model
from .run_report import open_wandb, plot_curves, progress_bar, summary_text, update_bar
from .runfolder import RunFolder
from .sae import SAESpec, architecture_class, make_sae, parse_sae_spec, train_options
from .trainer import AUTOCASTS, DECAYS, StepStats, Target, TrainConfig, Trainer

__all__ = ["RunConfig", "RunInterrupted", "RunResult", "SAEResult", "StepInfo", "held_out_corpus", "train",
           "training_batches"]

BACKENDS = ("hf", "tl")
PROGRESS = ("auto", "on", "off")


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs. The fields down to ``autocast`` decide what the run trains and
    form its resume fingerprint; the rest decide how it runs and reports, and may change on resume.

        cfg = RunConfig(hooks=("resid_post.6",), archs=("topk",), d_sae=4608, tokens=400_000, out="runs/l6")
    """

    model: str = DEFAULT_MODEL
    """Model name or local HF folder."""
    corpus: str = "stdlib"
    """'stdlib', local txt/jsonl/parquet path or glob, or an HF dataset name."""
    hooks: tuple[str, ...] = ("resid_post.6",)
    """Hook points; one SAE per arch × hook."""
    archs: tuple[str, ...] = ("topk",)
    """SAE architectures: topk, batchtopk, matryoshka, matching_pursuit, standard, jumprelu."""
    saes: tuple[str, ...] = ()
    """SAEs with their own options, ARCH:HOOK[:key=value...], e.g. topk:resid_post.6:d_sae=4608:k=32
    (replaces archs × hooks when given)."""
    d_sae: int | None = None
    """Latents per SAE (default: expansion × hook width)."""
    expansion: int = 8
    """d_sae = expansion × width when d_sae is not given."""
    k: int = 32
    """Active latents per token (TopK family) / pursuit steps (MP)."""
    l1_coef: float = 5.0
    """L1 coefficient of standard SAEs (jumprelu SAEs take their own l0_coef in an SAE spec)."""
    lr: float = 2e-3
    """Peak Adam learning rate (activations are norm-scaled)."""
    warmup_frac: float = 0.05
    """Fraction of steps of linear lr warm-up."""
    decay: str = "cosine"
    """lr decay after warm-up."""
    dead_window: int | None = None
    """Tokens without firing after which a latent counts as dead for AuxK (default: min(10M, tokens/20))."""
    tokens: int = 1_000_000
    """Training tokens (fed to the model, all ranks together)."""
    ctx: int = 128
    """Context length of each sequence."""
    batch_tokens: int = 4096
    """Tokens per LM batch and per SAE step, per rank."""
    mix_batches: int = 4
    """LM batches shuffled together by the buffer."""
    cycle: bool = False
    """Wrap around the corpus if it holds fewer tokens than asked for."""
    shuffle: bool = True
    """Shuffle the training documents, seeded by seed and reshuffled per epoch (off: stream order, as stored)."""
    nonfinite: str = "skip"
    """NaN/inf activation rows: skip (counted, warned; stops past 1% of rows) or raise."""
    seed: int = 0
    """Seed of SAE init (SAE i gets seed + i), document shuffle and buffer shuffle."""
    dtype: str = "auto"
    """LM dtype (SAE math is fp32). auto = bf16 where the device multiplies bf16 natively (CUDA, AVX512-BF16/AMX
    CPUs), else fp32: bf16 ran 1.89x fp32 to layer 6 on an AVX512-BF16 CPU, 0.27-0.50x without native bf16."""
    backend: str = "hf"
    """Model backend: hf (transformers) or tl (TransformerLens TransformerBridge); the same hook names."""
    from_cache: str | None = None
    """Train from an activation cache written by `sae-hooks cache` (a folder) instead of running the model on the
    corpus; its model, backend, hooks, dtype and ctx must be the run's. The model still scores the held-out data."""
    autocast: str = "auto"
    """Dense products (and under bf16 the sparse gathers) of the SAE step in bf16/fp16; params, grads and
    Adam stay fp32; fp16 adds loss scaling. auto = bf16 where the device has native bf16 (CUDA,
    AVX512-BF16/AMX CPUs)."""

    out: str = "runs/train"
    """Run folder."""
    resume: bool = False
    """Continue the run in out from its last checkpoint."""
    overwrite: bool = False
    """Replace the run in out (deletes only what a run wrote)."""
    device: str = "cpu"
    """cpu or cuda (under torchrun: cuda:LOCAL_RANK automatically)."""
    sequential: bool = False
    """Step the SAEs one after another, each with all threads (default on the CPU: concurrently, each
    with its share of the threads)."""
    checkpoint_every: int = 50
    """Steps between checkpoints (0 = none)."""
    keep_checkpoints: int = 2
    """Checkpoints kept."""
    eval_every: int = 50
    """Steps between live held-out evaluations (0 = end only)."""
    eval_tokens: int = 16_384
    """Held-out tokens for FVU / L0 / dead."""
    eval_ce_tokens: int = 4096
    """Held-out tokens for the spliced CE / recaptured loss (0 = skip)."""
    progress: str = "auto"
    """tqdm progress bar: auto (when stderr is a terminal), on, off."""
    wandb: bool = False
    """Log to Weights & Biases (needs `pip install wandb`)."""
    wandb_project: str = "sae-hooks"
    """W&B project."""

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "decay": DECAYS, "nonfinite": NONFINITE_POLICIES, "dtype": MODEL_DTYPES, "autocast": AUTOCASTS, "progress": PROGRESS,
        "backend": BACKENDS}
    # How a run executes and reports, not what it trains (device and sequential change float rounding only).
    NOT_FINGERPRINTED: ClassVar[tuple[str, ...]] = (
        "out", "resume", "overwrite", "device", "sequential", "checkpoint_every", "keep_checkpoints", "eval_every",
        "eval_tokens", "eval_ce_tokens", "progress", "wandb", "wandb_project")

    def __post_init__(self) -> None:
        # Normalise spellings a Python caller may use (a list, one string, a Path, an int lr) so that the
        # fingerprint of equal settings is equal; the values are not changed.
        for name in ("hooks", "archs", "saes"):
            v = getattr(self, name)
            object.__setattr__(self, name, (v,) if isinstance(v, str) else tuple(v))
        object.__setattr__(self, "out", os.fspath(self.out))
        if self.from_cache is not None and not isinstance(self.from_cache, str):
            object.__setattr__(self, "from_cache", os.fspath(self.from_cache))
        for name in ("l1_coef", "lr", "warmup_frac"):
            v = getattr(self, name)
            if isinstance(v, int) and not isinstance(v, bool):
                object.__setattr__(self, name, float(v))
        self._validate()

    def _validate(self) -> None:
        for name, lo in (("tokens", 1), ("ctx", 2), ("batch_tokens", 1), ("mix_batches", 1), ("k", 1),
                         ("expansion", 1), ("keep_checkpoints", 1), ("eval_tokens", 1), ("seed", 0),
                         ("checkpoint_every", 0), ("eval_every", 0), ("eval_ce_tokens", 0)):
            _check_int(name, getattr(self, name), lo)
        for name in ("d_sae", "dead_window"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1, "or None (the default)")
        for name, valid in self.CHOICES.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"RunConfig.{name}={getattr(self, name)!r}; valid: {', '.join(valid)}.")
        for name in ("cycle", "shuffle", "resume", "overwrite", "sequential", "wandb"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"RunConfig.{name}={getattr(self, name)!r}; it must be True or False.")
        for name in ("model", "corpus", "out", "device", "wandb_project"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"RunConfig.{name}={getattr(self, name)!r}; it must be a non-empty string.")
        if self.from_cache is not None and not self.from_cache:
            raise ValueError("RunConfig.from_cache=''; give the folder of an activation cache, or None to run the "
                             "model.")
        # TrainConfig checks lr, warmup_frac and decay with its own messages; build one to run them.
        TrainConfig(lr=self.lr, warmup_frac=self.warmup_frac, decay=self.decay, dead_window_tokens=self.dead_window)
        if not isinstance(self.l1_coef, float) or not math.isfinite(self.l1_coef) or self.l1_coef < 0:
            raise ValueError(f"RunConfig.l1_coef={self.l1_coef!r}; it must be a finite number >= 0.")
        if self.batch_tokens < self.ctx:
            raise ValueError(f"RunConfig.batch_tokens={self.batch_tokens} is less than one sequence of ctx={self.ctx}. "
                             f"Use batch_tokens >= {self.ctx}.")
        if self.tokens < self.ctx:
            raise ValueError(f"RunConfig.tokens={self.tokens} is less than one sequence of ctx={self.ctx}.")
        if self.eval_ce_tokens and self.ctx < 3:
            raise ValueError(f"RunConfig.ctx={self.ctx} leaves no next-token prediction to score: position 0 is "
                             "excluded (the attention sink) and the last position has no next token. Use ctx >= 3, "
                             "or eval_ce_tokens=0 to skip the spliced CE.")
        if self.resume and self.overwrite:
            raise ValueError("RunConfig.resume and RunConfig.overwrite exclude each other (--resume and --overwrite): "
                             "resume continues the run in out, overwrite replaces it.")
        if not self.hooks or not self.archs:
            raise ValueError("RunConfig.hooks and RunConfig.archs need at least one entry each.")
        for h in self.hooks:
            parse_hook(h)
        for a in self.archs:
            try:
                architecture_class(a)
            except ValueError as e:
                raise ValueError(f"RunConfig.archs: {e}") from None
        for s in self.saes:
            spec = parse_sae_spec(s)
            parse_hook(spec.hook)
            if spec.d_sae is not None and spec.d_sae < 1:
                raise ValueError(f"RunConfig.saes: SAE spec {s!r} has d_sae={spec.d_sae}; it must be >= 1 (or left "
                                 "out: expansion × hook width).")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"RunConfig.device={self.device!r} is not a device ({e}). Use cpu, cuda or cuda:N.") \
                from None

    def fingerprint(self) -> dict[str, Any]:
        """The settings that decide what the run trains, as JSON-able values, hooks in canonical spelling
        (``blocks.6.hook_resid_post`` and ``resid_post.6`` are the same). A resumed run must match it.

            RunConfig(hooks=("blocks.6.hook_resid_post",)).fingerprint()["hooks"]    # ['resid_post.6']
        """
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in self.NOT_FINGERPRINTED}
        out["dtype"] = self.resolved_dtype()  # what runs: a run resumed on hardware that resolves auto otherwise is refused
        return _canonical(out)

    def resolved_dtype(self) -> str:
        """The LM dtype this run uses on its device: ``dtype``, with ``auto`` resolved (bf16 where the device
        multiplies bf16 natively, else fp32).

            RunConfig(dtype="auto", device="cpu").resolved_dtype()   # "bf16" on an AVX512-BF16 CPU, else "fp32"
        """
        return resolve_model_dtype(self.dtype, self.device)

    @classmethod
    def upgrade_fingerprint(cls, old: Mapping[str, Any]) -> dict[str, Any]:
        """A fingerprint recorded by an earlier version, in today's fields (its flag-named keys renamed,
        None lists replaced by their default, fields it predates at the value they had then)."""
        renamed = {"hook": "hooks", "arch": "archs", "sae": "saes", "l1": "l1_coef"}
        new = {renamed.get(k, k): v for k, v in old.items()}
        for name in ("hooks", "archs", "saes"):
            if new.get(name) is None:
                new[name] = list(cls.__dataclass_fields__[name].default)
        new.setdefault("shuffle", False)  # documents were read in stream order before the field existed
        new.setdefault("backend", "hf")
        new.setdefault("from_cache", None)
        return _canonical(new)

    def sae_specs(self) -> list[SAESpec]:
        """What to build, in order: from ``saes`` if given, else every arch for every hook.

            RunConfig(archs=("topk", "standard")).sae_specs()[1]   # SAESpec('standard', 'resid_post.6', None, {})
        """
        if self.saes:
            return [parse_sae_spec(s) for s in self.saes]
        return [SAESpec(a, h, self.d_sae, {}) for h in self.hooks for a in self.archs]


def _check_int(name: str, v: Any, lo: int, extra: str = "") -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"RunConfig.{name}={v!r}; it must be an int >= {lo}{' ' + extra if extra else ''}.")


def _canonical(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Sorted keys, lists for tuples, hooks (alone or inside SAE specs) in our spelling."""
    out = {}
    for k, v in sorted(settings.items()):
        if k == "hooks":
            v = [str(parse_hook(h)) for h in v]
        elif k == "saes":
            v = [":".join([s.split(":")[0], str(parse_hook(s.split(":")[1])), *s.split(":")[2:]]) for s in v]
        elif isinstance(v, tuple):
            v = list(v)
        out[k] = v
    return out


# ---- results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SAEResult:
    """One trained SAE and its final held-out scores (position 0 and special tokens excluded)."""

    name: str
    """Unique name, ``<arch>_<hook>`` (also its folder under ``saes/``)."""
    path: str
    """Folder of the saved SAE (SAELens layout; takes raw activations)."""
    hook: str
    """Hook point, canonical spelling."""
    arch: str
    """Architecture."""
    d_sae: int
    """Latents."""
    fvu: float
    """Σ‖x − x̂‖² / Σ‖x − x̄‖² over the held-out rows."""
    l0: float
    """Mean active latents per held-out token."""
    dead_frac: float
    """Fraction of latents that never fire on the held-out rows."""
    ce_clean: float | None
    """Mean next-token CE of the clean model (nats); None when the spliced CE is off (eval_ce_tokens=0)."""
    ce_spliced: float | None
    """CE with the SAE's reconstruction spliced in."""
    delta_ce: float | None
    """ce_spliced − ce_clean."""
    recaptured_zero: float | None
    """(CE_zero − CE_spliced) / (CE_zero − CE_clean), zero-ablation baseline."""
    recaptured_mean: float | None
    """The same with mean-ablation as baseline."""
    kl: float | None
    """Mean KL(p_clean ‖ p_spliced) per token."""
    train_never_fired_frac: float
    """Fraction of latents that never fired during the whole run."""
    train_dead_frac: float
    """Fraction of latents past the dead window at the end of training."""


CE_FIELDS = ("ce_clean", "ce_spliced", "delta_ce", "recaptured_zero", "recaptured_mean", "kl")
"""SAEResult fields that are None when the spliced CE is off (eval_ce_tokens=0)."""

METRIC_DEFINITIONS = ("held-out, position 0 and special tokens excluded; FVU = Σ‖x−x̂‖²/Σ‖x−x̄‖²; "
                      "L0 = mean active latents/token; dead_frac = latents never firing on the held-out tokens; "
                      "recaptured_zero = (CE_zero−CE_spliced)/(CE_zero−CE_clean)")


@dataclass(frozen=True)
class RunResult:
    """What a run did. On ranks other than 0 of a torchrun job ``saes`` is empty (rank 0 evaluates and writes).

        result = train(cfg); result.saes[0].fvu; result.to_dict()   # the --json object
    """

    out: str
    """Run folder."""
    model: str
    """Model name or folder."""
    tokens: int
    """Tokens trained on, all sessions of the run together."""
    trained_tokens_this_session: int
    """Tokens trained on in this call (less than ``tokens`` after a resume)."""
    steps: int
    """Optimizer steps, all sessions."""
    autocast: str
    """Autocast mode in effect (``auto`` resolved)."""
    seconds: float
    """Training wall time of this session (evaluation excluded)."""
    eval_seconds: float
    """Held-out evaluation wall time of this session."""
    tokens_per_s: float
    """trained_tokens_this_session / seconds."""
    world_size: int
    """Data-parallel processes."""
    rank: int
    """This process's rank."""
    sae_workers: int
    """SAEs stepped at once (1: sequential)."""
    nonfinite_rows_skipped: int
    """Activation rows dropped for NaN/inf in this session."""
    dead_window_tokens: int
    """Dead window in effect."""
    held_out_tokens: int
    """Held-out activation rows scored per SAE."""
    resumed_from_step: int | None
    """Step of the checkpoint this session resumed from; None for a fresh start."""
    saes: tuple[SAEResult, ...] = field(default=())
    """The SAEs, in the order of the run's specs."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (what ``sae-hooks train --json`` prints and ``metrics.json`` holds)."""
        d = dataclasses.asdict(self)
        d["saes"] = [dataclasses.asdict(s) for s in self.saes]
        d["metric_definitions"] = METRIC_DEFINITIONS
        return d


class StepInfo(NamedTuple):
    """Passed to ``train``'s ``on_step`` after every step."""

    step: int
    """Steps done."""
    total_steps: int
    """Steps of the whole run."""
    tokens: int
    """Tokens trained on so far (all ranks)."""
    stats: dict[str, StepStats]
    """Per SAE: loss, batch FVU, L0, dead fraction, lr."""


# ---- the run ----------------------------------------------------------------------------------


def training_batches(cfg: RunConfig, tokenizer: Any, *, rank: int = 0, world_size: int = 1, skip_sequences: int = 0,
                     max_positions: int | None = None) -> Iterator[TokenBatch]:
    """The token batches a run trains on, in order (what ``train`` feeds the model).

        first = next(training_batches(RunConfig(), adapter.tokenizer))
    """
    corpus = CorpusConfig(source=cfg.corpus, ctx=cfg.ctx, shuffle_docs=cfg.shuffle, seed=cfg.seed)
    return iter_batches(tokenizer, corpus, cfg.batch_tokens // cfg.ctx, max_tokens=cfg.tokens, cycle=cfg.cycle,
                        rank=rank, world_size=world_size, skip_sequences=skip_sequences, max_positions=max_positions)


def held_out_corpus(cfg: RunConfig) -> CorpusConfig:
    """The held-out side of the corpus a run scores on: the ``eval`` split in its stored order, whatever
    ``shuffle`` and ``seed`` say (a score at step 50 and one at step 100 are on the same tokens).

        held_out_corpus(RunConfig(seed=1)) == held_out_corpus(RunConfig(shuffle=False))   # True
    """
    return CorpusConfig(source=cfg.corpus, ctx=cfg.ctx, split="eval")


def train(cfg: RunConfig, *, on_step: Callable[[StepInfo], None] | None = None) -> RunResult:
    """Run ``cfg``: train its SAEs, save them in ``cfg.out`` with their held-out scores, return a ``RunResult``.

    Raises ``ValueError``/``FileNotFoundError``/``CorpusError`` on bad input, before anything is
    written; ``RunFolderBusy`` when another run holds ``cfg.out``; ``RunInterrupted`` after a SIGINT /
    SIGTERM (a checkpoint and the SAEs so far are saved; ``resume=True`` continues bit for bit).
    ``on_step(StepInfo)`` is called after every step.

        result = train(RunConfig(tokens=200_000, out="runs/quick"))
    """
    if not isinstance(cfg, RunConfig):
        raise TypeError(f"train() takes a RunConfig, got {type(cfg).__name__}.")
    _check_device(cfg.device)
    dist = init_distributed(cfg.device)
    try:
        folder = RunFolder(cfg.out) if dist.is_main else None
        with StopSignals() as stop, (folder.locked() if folder else contextlib.nullcontext()):
            return _Run(cfg, dist, folder, stop, on_step).execute()
    finally:
        shutdown(dist)


def _check_device(device: str) -> None:
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise ValueError(f"--device {device}: PyTorch sees no CUDA device here (torch {torch.__version__}, "
                             f"{build}). Use --device cpu, or a machine with a GPU and a CUDA build of PyTorch.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                             f"(cuda:0..cuda:{torch.cuda.device_count() - 1}).")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available here. Use --device cpu.")


class _Session(NamedTuple):
    """What the steps of one ``train`` call did (the final phase reports it)."""

    train_seconds: float
    eval_seconds: float
    trained_tokens: int
    nonfinite_rows: int
    ran_dry: CorpusError | None
    """The corpus ended before the token budget (the SAEs so far are still scored and saved)."""


class _Run:
    """One call of ``train``: the phases in order, sharing the run's state."""

    def __init__(self, cfg: RunConfig, dist: DistContext, folder: RunFolder | None, stop: StopSignals,
                 on_step: Callable[[StepInfo], None] | None):
        self.cfg, self.dist, self.folder, self.stop, self.on_step = cfg, dist, folder, stop, on_step
        self.main = dist.is_main
        self.fingerprint = cfg.fingerprint()

    def execute(self) -> RunResult:
        cfg = self.cfg
        # 1. The folder's rules and the checkpoint to resume from, before the model loads.
        plan = self.folder.plan(resume=cfg.resume, overwrite=cfg.overwrite, fingerprint=self.fingerprint,
                                upgrade=RunConfig.upgrade_fingerprint) if self.main else "fresh"
        found = self._find_checkpoint() if cfg.resume else None
        self.cache = self._open_cache() if cfg.from_cache else None
        # 2. Model and SAEs (the order of these calls keeps runs bitwise reproducible).
        under_torchrun_on_gpus = self.dist.enabled and cfg.device.startswith("cuda")
        device = f"cuda:{self.dist.local_rank}" if under_torchrun_on_gpus else cfg.device
        torch.manual_seed(cfg.seed)
        tcfg = TrainConfig(lr=cfg.lr, warmup_frac=cfg.warmup_frac, decay=cfg.decay, dead_window_tokens=cfg.dead_window,
                           autocast=cfg.autocast, concurrent=not cfg.sequential)
        self.stop.where = "while loading the model; nothing was written"
        adapter = load_model(cfg.model, backend=cfg.backend, dtype=cfg.resolved_dtype(), device=device)
        targets, built = self._targets(adapter, device)
        hooks = sorted({t.hook for t in targets}, key=lambda h: adapter.resolve(h).layer or 0)
        per_rank = cfg.tokens // cfg.ctx // self.dist.world_size
        total_steps = max(1, math.ceil(per_rank / (cfg.batch_tokens // cfg.ctx)))
        trainer = Trainer(targets, tcfg, total_steps=total_steps, total_tokens=cfg.tokens, dist=self.dist,
                          device=device)
        position, block, into = 0, 0, 0
        if found is not None:
            state = found.state
            trainer.load_state_dict(state["trainer"])
            set_rng_state(state["rng"])
            position, block, into = int(state["sequences"]), int(state["block"]) + 1, int(state.get("in_block", 0))
        # 3. The held-out block: a bad corpus or a ctx the model cannot take stops here, before any write.
        self.stop.where = "while reading the held-out data; nothing was written"
        held = None
        if self.main:
            held = load_held_out(adapter, held_out_corpus(cfg), hooks, cfg.eval_tokens, cfg.eval_ce_tokens)
            self.folder.start(plan, {"tool": "sae-hooks", "settings": self.fingerprint, "saes": built},
                              resume_step=trainer.step_count)
        self.stop.where, self.stop.resumable = "before its first step", found is not None
        wb = open_wandb(cfg.wandb_project, self.fingerprint, cfg.out) if cfg.wandb and self.main else None
        session = self._loop(adapter, trainer, hooks, held, wb, position, block, into)
        # 4. Final scores, the SAEs and the report.
        self.stop.where = "during the final evaluation (the checkpoints are kept)"
        return self._finish(adapter, trainer, held, wb, session, found)

    def _open_cache(self) -> ActivationCache:
        """The activation cache to train from, checked against the run before anything loads or is written."""
        cfg = self.cfg
        cache = ActivationCache(cfg.from_cache)
        cache.check_run(model=cfg.model, backend=cfg.backend, hooks=[s.hook for s in cfg.sae_specs()],
                        model_dtype=cfg.resolved_dtype(), ctx=cfg.ctx, tokens=cfg.tokens, cycle=cfg.cycle)
        return cache

    def _find_checkpoint(self):
        if not self.main:
            return load_latest(RunFolder(self.cfg.out).checkpoints)  # ranks share the folder's checkpoints
        try:
            found = load_latest(self.folder.checkpoints)
        except CheckpointError as e:
            if "There is no checkpoint" not in str(e):
                raise CheckpointError(f"--resume: {e} Start the run again with --overwrite.") from None
            every = self.cfg.checkpoint_every
            when = f"checkpoints come every {every} steps" if every else "checkpoints were off (--checkpoint-every 0)"
            raise CheckpointError(f"--resume: the run in {self.folder.path} has no checkpoint to resume from (it "
                                  f"stopped before its first one; {when}). Start it again with --overwrite.") from None
        for path, why in found.skipped:
            warnings.warn(f"--resume: skipped {path.name}: {why} Resuming from {found.path.name}.", stacklevel=2)
        return found

    def _targets(self, adapter, device) -> tuple[list[Target], list[dict[str, Any]]]:
        cfg, targets, built, seen = self.cfg, [], [], {}
        for i, p in enumerate(cfg.sae_specs()):
            hook = adapter.canonical(p.hook)
            base = f"{p.arch}_{hook}"
            seen[base] = seen.get(base, 0) + 1
            name = base if seen[base] == 1 else f"{base}_{seen[base]}"
            width = adapter.width(hook)
            d_sae = p.d_sae or cfg.expansion * width
            kw = {**train_options(p.arch, d_sae, k=cfg.k, l1_coef=cfg.l1_coef), **p.options}
            layer = adapter.resolve(hook).layer
            meta = {"model_name": cfg.model, "hook_name": hook if layer is None else _tl_name(hook),
                    "context_size": cfg.ctx, "prepend_bos": False, "dataset_path": cfg.corpus,
                    "exclude_first": 1, "exclude_special_tokens": True}
            sae = make_sae(p.arch, width, d_sae, seed=cfg.seed + i, metadata=meta, **kw)
            targets.append(Target(name, hook, sae.to(device)))
            built.append({"name": name, "arch": p.arch, "hook": hook, "d_sae": d_sae, "options": kw})
        return targets, built

    def _loop(self, adapter, trainer: Trainer, hooks, held: HeldOut | None, wb, position: int, block: int,
              into: int) -> _Session:
        """The steps, from stream position ``position`` (block ``block``, ``into`` of its batches done)."""
        cfg, dist, folder, stop = self.cfg, self.dist, self.folder, self.stop
        if self.cache is not None:  # the same LM batches, read back from disk instead of computed
            acts = self.cache.batches(hooks, cfg.batch_tokens // cfg.ctx, max_sequences=cfg.tokens // cfg.ctx,
                                      cycle=cfg.cycle, rank=dist.rank, world_size=dist.world_size,
                                      skip_sequences=position,
                                      reshuffle_seed=cfg.seed if self.cache.manifest["corpus"]["shuffle"] else None)
        else:
            batches = training_batches(cfg, adapter.tokenizer, rank=dist.rank, world_size=dist.world_size,
                                       skip_sequences=position, max_positions=adapter.max_positions)
            acts = stream_activations(adapter, hooks, batches, start_sequences=position, world_size=dist.world_size,
                                      nonfinite=cfg.nonfinite)
        bar = progress_bar(cfg.progress, trainer.total_steps, trainer.step_count, self.main)
        last_ckpt, nonfinite_rows, eval_s, ran_dry = trainer.step_count, 0, 0.0, None
        tokens_at_start, block_start, in_block = trainer.tokens, position, 0
        t_train = time.perf_counter()
        with contextlib.ExitStack() as files:
            log = files.enter_context(open(folder.log_path, "a")) if self.main else None
            try:
                stop.graceful = True
                for batch in shuffled(acts, blocks=cfg.mix_batches, seed=cfg.seed, start_block=block):
                    if into:  # the training batches of an interrupted block that were trained before it stopped
                        into -= 1
                        in_block += 1
                        continue
                    stats = trainer.step(batch.acts)
                    nonfinite_rows += batch.nonfinite_rows
                    step = trainer.step_count
                    if self.on_step is not None:
                        self.on_step(StepInfo(step, trainer.total_steps, trainer.tokens, stats))
                    record = {"step": step, "tokens": trainer.tokens,
                              **{f"{n}/{k}": v for n, s in stats.items() for k, v in _stat_dict(s).items()}}
                    if cfg.eval_every and step % cfg.eval_every == 0 and step < trainer.total_steps and self.main:
                        t0 = time.perf_counter()
                        scores = held_out_scores(trainer, held, adapter)
                        record.update({f"eval/{n}/{k}": v for n, m in scores.items() for k, v in m.items()})
                        eval_s += time.perf_counter() - t0
                    if log is not None:  # main rank only
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                        if wb is not None:
                            wb.log(record, step=step)
                    if bar is not None:
                        elapsed = max(time.perf_counter() - t_train - eval_s, 1e-9)
                        update_bar(bar, stats, (trainer.tokens - tokens_at_start) / elapsed)
                    # Where a resumed run picks up: the start of the current block, and how far into it.
                    if batch.end_of_block:
                        block_start, in_block = batch.sequences, 0
                    else:
                        in_block += 1
                    state = {"sequences": block_start, "block": batch.block - (0 if batch.end_of_block else 1),
                             "in_block": in_block}
                    if batch.end_of_block and cfg.checkpoint_every and step - last_ckpt >= cfg.checkpoint_every \
                            and step < trainer.total_steps:
                        self._checkpoint(trainer, state)
                        last_ckpt = step
                    signum = self._stop_requested()
                    if signum:
                        if bar is not None:
                            bar.close()
                        self._interrupted(signum, trainer, state)
            except CorpusError as e:
                # The corpus ran dry before the token budget: keep what was trained (saved below), then say so.
                ran_dry = e
        stop.graceful = False
        if ran_dry is not None and trainer.step_count == 0:
            raise ran_dry
        if bar is not None:
            bar.close()
        return _Session(time.perf_counter() - t_train - eval_s, eval_s, trainer.tokens - tokens_at_start,
                        nonfinite_rows, ran_dry)

    def _finish(self, adapter, trainer: Trainer, held: HeldOut | None, wb, session: _Session, found) -> RunResult:
        """Score the SAEs on the held-out block, save them and the report (main rank), mark the run finished."""
        cfg, dist, folder = self.cfg, self.dist, self.folder
        train_s, eval_s, trained = session.train_seconds, session.eval_seconds, session.trained_tokens
        common = dict(out=cfg.out, model=cfg.model, tokens=trainer.tokens, trained_tokens_this_session=trained,
                      steps=trainer.step_count, autocast=trainer.autocast, seconds=round(train_s, 2),
                      tokens_per_s=round(trained / max(train_s, 1e-9), 1), world_size=dist.world_size, rank=dist.rank,
                      sae_workers=trainer.workers(), nonfinite_rows_skipped=session.nonfinite_rows,
                      dead_window_tokens=trainer.dead_window,
                      resumed_from_step=None if found is None else int(found.state["trainer"]["step"]))
        if not self.main:
            return RunResult(**common, eval_seconds=round(eval_s, 2), held_out_tokens=0)
        t0 = time.perf_counter()
        final = held_out_scores(trainer, held, adapter)
        eval_s += time.perf_counter() - t0
        paths = self._save_saes(trainer, partial=False)
        saes = []
        for t in trainer.targets:
            m = final[t.name]
            ce = {k: m.get(k) for k in CE_FIELDS}
            # since_fired == all tokens trained on: the latent never fired during the whole run.
            never = float((trainer.since_fired[t.name] >= trainer.tokens).float().mean())
            dead = float((trainer.since_fired[t.name] >= trainer.dead_window).float().mean())
            saes.append(SAEResult(t.name, paths[t.name], t.hook, t.sae.architecture, t.sae.cfg.d_sae, m["fvu"], m["l0"],
                                  m["dead_frac"], **ce, train_never_fired_frac=never, train_dead_frac=dead))
        result = RunResult(**common, eval_seconds=round(eval_s, 2), held_out_tokens=int(held.rows), saes=tuple(saes))
        atomic_write_text(folder.path / "metrics.json", json.dumps(result.to_dict(), indent=1))
        atomic_write_text(folder.path / "summary.txt", summary_text(result))
        plot_curves(folder.log_path, folder.path / "curves.png", [t.name for t in trainer.targets])
        folder.update(status="finished", steps=trainer.step_count)
        if wb is not None:
            wb.log({f"final/{s.name}/{k}": v for s in saes for k, v in dataclasses.asdict(s).items()
                    if isinstance(v, (int, float))})
            wb.finish()
        if session.ran_dry is not None:
            raise CorpusError(f"{session.ran_dry} Stopped after {trainer.tokens:,} tokens; the SAEs trained so far "
                              f"are saved in {folder.saes} (metrics.json has their held-out scores).")
        return result

    def _checkpoint(self, trainer: Trainer, position: dict[str, int]):
        if not self.main:
            return None
        path = save_checkpoint(self.folder.checkpoints, trainer.step_count,
                               {"trainer": trainer.state_dict(), **position, "rng": rng_state(),
                                "settings": self.fingerprint}, keep=self.cfg.keep_checkpoints)
        self.stop.resumable = True
        return path

    def _stop_requested(self) -> int:
        """The signal that asked this run to stop, agreed by every rank (all stop after the same step)."""
        signum = self.stop.requested or 0
        if self.dist.enabled:
            signum = int(all_reduce_(self.dist, torch.tensor([signum]), "max")[0])
        return signum

    def _interrupted(self, signum: int, trainer: Trainer, position: dict[str, int]) -> None:
        step, total = trainer.step_count, trainer.total_steps
        path = self._checkpoint(trainer, position)
        if self.main:
            self._save_saes(trainer, partial=True)
            self.folder.update(status="interrupted", steps=step)
        name = RunInterrupted(signum, "").signal
        where = f"checkpoint {path}, the SAEs so far (partial) in {self.folder.saes}" if self.main else "rank stopped"
        raise RunInterrupted(signum, f"stopped by {name} at step {step} of {total}: {where}", resumable=True)

    def _save_saes(self, trainer: Trainer, partial: bool) -> dict[str, str]:
        paths, exported = {}, trainer.export()
        for t in trainer.targets:
            path = self.folder.saes / t.name
            exported[t.name].save(str(path), metadata={"sae_hooks_train": {
                "hook": t.hook, "steps": trainer.step_count, "tokens": trainer.tokens,
                "input_scale": trainer.scales[t.hook], "lr": self.cfg.lr, "dead_window_tokens": trainer.dead_window,
                **({"partial": True, "total_steps": trainer.total_steps} if partial else {})}})
            paths[t.name] = str(path)
        return paths


def _tl_name(hook: str) -> str:
    kind, layer = hook.split(".")
    return f"blocks.{layer}.hook_{kind}"


def _stat_dict(s: StepStats) -> dict[str, float]:
    return {"loss": s.loss, "fvu": s.fvu, "l0": s.l0, "dead_frac": s.dead_frac, "lr": s.lr,
            **{f"part_{k}": v for k, v in s.parts.items()}}
