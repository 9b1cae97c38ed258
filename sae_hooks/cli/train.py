"""``sae-hooks train``: train one or more SAEs online on a live model; resumable; torchrun-ready.

One SAE per (``--arch``, ``--hook``) combination — 2 archs × 3 hooks = 6 SAEs — all fed by the
same stopped forward per token batch; or give ``--sae ARCH:HOOK[:key=value...]`` (repeatable) for
SAEs with their own options (``--sae topk:resid_post.6:d_sae=4608:k=32``). The default hook,
``resid_post.6``, is a middle-early residual stream: deep enough for abstract features, shallow
enough that the forward stops after 7 of 30 blocks (DESIGN.md: ~5x faster than a full pass),
and before layer 12 where the position-0 sink reaches norms of ~23,000.

Run folder ``--out``: ``run.json`` (settings), ``saes/<name>/`` (SAELens v6 layout, takes raw
activations), ``metrics.jsonl`` (training log), ``metrics.json`` (final held-out metrics),
``summary.txt``, ``curves.png``, ``checkpoints/``. A folder that holds another run is refused
unless ``--resume`` (continue it; settings must match) or ``--overwrite`` (start afresh).

Data parallel: ``torchrun --nproc_per_node=N -m sae_hooks train ...`` (see ``sae_hooks.distributed``).

    $ sae-hooks train --tokens 400000 --out runs/l6 --json
    $ sae-hooks train --arch topk --arch matching_pursuit --hook resid_post.3 --hook resid_post.6 --out runs/grid
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HELP = "train SAEs online on a live model (several at once, resumable, data-parallel under torchrun)"

TOPK_FAMILY = ("topk", "batchtopk", "matryoshka", "matching_pursuit")
# Settings that may differ between a run and its resumption: how a run executes and reports, not what it
# trains (--device and --sequential change float rounding only).
NOT_FINGERPRINTED = ("out", "resume", "overwrite", "json", "wandb", "wandb_project", "device", "eval_every",
                     "eval_tokens", "eval_ce_tokens", "checkpoint_every", "keep_checkpoints", "progress", "sequential")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m-instruct", help="model name or local HF folder")
    p.add_argument("--corpus", default="stdlib", help="'stdlib', local txt/jsonl/parquet path or glob, or an HF dataset name")
    p.add_argument("--hook", action="append", default=None, help="hook point, repeatable (default: resid_post.6)")
    p.add_argument("--arch", action="append", default=None,
                   help="SAE architecture, repeatable: topk, batchtopk, matryoshka, matching_pursuit, standard, jumprelu "
                        "(default: topk). One SAE per --arch × --hook.")
    p.add_argument("--sae", action="append", default=None, metavar="ARCH:HOOK[:key=value...]",
                   help="an SAE with its own options, repeatable, e.g. topk:resid_post.6:d_sae=4608:k=32 "
                        "(replaces --arch/--hook when given)")
    p.add_argument("--d-sae", type=int, default=None, help="latents per SAE (default: expansion × hook width)")
    p.add_argument("--expansion", type=int, default=8, help="d_sae = expansion × width when --d-sae is not given")
    p.add_argument("--k", type=int, default=32, help="active latents per token (TopK family) / pursuit steps (MP)")
    p.add_argument("--l1", type=float, default=5.0, help="L1 coefficient of standard / jumprelu SAEs")
    p.add_argument("--lr", type=float, default=2e-3, help="peak Adam learning rate (activations are norm-scaled)")
    p.add_argument("--warmup-frac", type=float, default=0.05, help="fraction of steps of linear lr warm-up")
    p.add_argument("--decay", default="cosine", choices=["cosine", "linear", "constant"], help="lr decay after warm-up")
    p.add_argument("--dead-window", type=int, default=None,
                   help="tokens without firing after which a latent counts as dead for AuxK (default: min(10M, tokens/20))")
    p.add_argument("--tokens", type=int, default=1_000_000, help="training tokens (fed to the model, all ranks together)")
    p.add_argument("--ctx", type=int, default=128, help="context length of each sequence")
    p.add_argument("--batch-tokens", type=int, default=4096, help="tokens per LM batch and per SAE step, per rank")
    p.add_argument("--mix-batches", type=int, default=4, help="LM batches shuffled together by the buffer")
    p.add_argument("--cycle", action="store_true", help="wrap around the corpus if it holds fewer tokens than --tokens")
    p.add_argument("--nonfinite", default="skip", choices=["skip", "raise"],
                   help="NaN/inf activation rows: skip (counted, warned; stops past 1%% of rows) or raise")
    p.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints (0 = none)")
    p.add_argument("--keep-checkpoints", type=int, default=2, help="checkpoints kept")
    p.add_argument("--eval-every", type=int, default=50, help="steps between live held-out evaluations (0 = end only)")
    p.add_argument("--eval-tokens", type=int, default=16_384, help="held-out tokens for FVU / L0 / dead")
    p.add_argument("--eval-ce-tokens", type=int, default=4096,
                   help="held-out tokens for the spliced CE / recaptured loss (0 = skip)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete what --out holds and start afresh")
    p.add_argument("--seed", type=int, default=0, help="seed of SAE init and buffer shuffle")
    p.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun: cuda:LOCAL_RANK automatically)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32", "fp16"],
                   help="LM dtype (SAE math is fp32). bf16: ~5,070 vs ~2,340 tok/s to layer 6 on an AVX512-BF16 CPU")
    p.add_argument("--autocast", default="auto", choices=["none", "bf16", "fp16", "auto"],
                   help="dense products (and under bf16 the sparse gathers) of the SAE step in bf16/fp16; params, "
                        "grads and Adam stay fp32; fp16 adds loss scaling. auto = bf16 where the device has native bf16 "
                        "(CUDA, AVX512-BF16/AMX CPUs)")
    p.add_argument("--sequential", action="store_true",
                   help="step the SAEs one after another, each with all threads (default on the CPU: concurrently, "
                        "each with its share of the threads)")
    p.add_argument("--out", default="runs/train", help="run folder")
    p.add_argument("--wandb", action="store_true", help="log to Weights & Biases (needs `pip install wandb`)")
    p.add_argument("--wandb-project", default="sae-hooks", help="W&B project")
    p.add_argument("--progress", default="auto", choices=["auto", "on", "off"], help="tqdm progress bar")


def run(args: argparse.Namespace) -> dict:
    from .._malloc import tune_malloc

    tune_malloc()  # the CLI process is a training run: keep step buffers in the heap (SAE_HOOKS_MALLOC=0: off)
    return execute(args)


# ---------------------------------------------------------------------------------------------


def _parse_value(v: str) -> Any:
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    if "," in v or v.startswith("("):
        return tuple(_parse_value(x) for x in v.strip("()").split(",") if x)
    return v


def sae_specs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """[{name, arch, hook, d_sae|None, kwargs}] from --sae, or from --arch × --hook."""
    specs = []
    if args.sae:
        for text in args.sae:
            parts = text.split(":")
            if len(parts) < 2 or not parts[0] or not parts[1]:
                raise ValueError(f"--sae {text!r}: expected ARCH:HOOK[:key=value...], e.g. topk:resid_post.6:d_sae=4608:k=32.")
            kw = {}
            for item in parts[2:]:
                if "=" not in item:
                    raise ValueError(f"--sae {text!r}: option {item!r} is not key=value.")
                key, val = item.split("=", 1)
                kw[key] = _parse_value(val)
            specs.append({"arch": parts[0], "hook": parts[1], "d_sae": kw.pop("d_sae", None), "kwargs": kw})
    else:
        for hook in args.hook or ["resid_post.6"]:
            for arch in args.arch or ["topk"]:
                specs.append({"arch": arch, "hook": hook, "d_sae": args.d_sae, "kwargs": {}})
    seen: dict[str, int] = {}
    for s in specs:
        base = f"{s['arch']}_{s['hook']}"
        seen[base] = seen.get(base, 0) + 1
        s["name"] = base if seen[base] == 1 else f"{base}_{seen[base]}"
    return specs


def _arch_defaults(arch: str, d_sae: int, args: argparse.Namespace) -> dict[str, Any]:
    if arch in TOPK_FAMILY:
        kw: dict[str, Any] = {"k": args.k}
        if arch == "matryoshka":
            # Nested prefixes at ~1/9, 1/4, 1/2 and all of d_sae (512/1152/2304/4608 at 4608).
            kw["widths"] = tuple(sorted({max(1, d_sae // 9), max(1, d_sae // 4), max(1, d_sae // 2), d_sae}))
        return kw
    if arch in ("standard", "jumprelu"):
        return {"l1_coef": args.l1}
    return {}


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in sorted(vars(args).items()) if k not in NOT_FINGERPRINTED}


def _prepare_out(out: Path, args: argparse.Namespace, settings: dict[str, Any]) -> bool:
    """Refuse to mix runs: an existing run needs --resume (same settings) or --overwrite.

    Returns whether --out must be emptied (--overwrite over existing files); the caller does it only
    once the inputs have been read, so a run that fails on a bad corpus deletes nothing.
    """
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite exclude each other: --resume continues the run in --out, "
                         "--overwrite deletes it.")
    run_file = out / "run.json"
    if args.resume:
        if not run_file.is_file():
            raise FileNotFoundError(f"--resume: {out} holds no run (no run.json). Drop --resume to start one there.")
        old = json.loads(run_file.read_text())["settings"]
        diff = {k: (old.get(k), v) for k, v in settings.items() if json.dumps(old.get(k)) != json.dumps(v)}
        if diff:
            shown = ", ".join(f"{k}: was {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"--resume: the run in {out} was started with other settings ({shown}). "
                             "Resume with the original settings, or use --overwrite / another --out.")
        return False
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            what = "another run" if run_file.is_file() else "other files"
            raise ValueError(f"--out {out} already holds {what}. Pass --resume to continue it, --overwrite to "
                             "replace it, or choose another --out.")
        return True
    return False


def execute(args: argparse.Namespace, on_step: Callable[[int], None] | None = None) -> dict:
    """The whole run; ``on_step(step)`` is called after every step (tests use it to slow a run down).

        result = execute(build_parser().parse_args([...]))
    """
    from ..distributed import init_distributed, shutdown

    _validate(args)
    dist = init_distributed(args.device)
    try:
        return _execute(args, dist, on_step)
    finally:
        shutdown(dist)


def _validate(args: argparse.Namespace) -> None:
    for name in ("tokens", "ctx", "batch_tokens", "mix_batches", "k", "expansion", "keep_checkpoints", "eval_tokens"):
        v = getattr(args, name)
        if v is None or v < 1:
            raise ValueError(f"--{name.replace('_', '-')}={v}; it must be >= 1.")
    for name in ("checkpoint_every", "eval_every", "eval_ce_tokens"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)}; it must be >= 0.")
    if args.batch_tokens < args.ctx:
        raise ValueError(f"--batch-tokens={args.batch_tokens} is less than one sequence of --ctx={args.ctx}. "
                         f"Use --batch-tokens >= {args.ctx}.")
    if args.tokens < args.ctx:
        raise ValueError(f"--tokens={args.tokens} is less than one sequence of --ctx={args.ctx}.")


def _execute(args: argparse.Namespace, dist, on_step) -> dict:
    import torch

    from ..activations import stream_activations
    from ..buffer import shuffled
    from ..checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
    from ..data import CorpusConfig, CorpusError, iter_batches, load_token_tensor
    from ..models import load_model
    from ..sae import ARCHITECTURES, make_sae
    from ..trainer import Target, TrainConfig, Trainer

    out = Path(args.out)
    settings = _settings(args)
    specs = sae_specs(args)
    for s in specs:
        if s["arch"] not in ARCHITECTURES:
            raise ValueError(f"Unknown SAE architecture {s['arch']!r}; valid: {', '.join(sorted(ARCHITECTURES))}.")
    wipe = _prepare_out(out, args, settings) if dist.is_main else False
    device = args.device if not (dist.enabled and str(args.device).startswith("cuda")) else f"cuda:{dist.local_rank}"
    torch.manual_seed(args.seed)
    cfg = TrainConfig(lr=args.lr, warmup_frac=args.warmup_frac, decay=args.decay, dead_window_tokens=args.dead_window,
                      autocast=args.autocast, concurrent=not args.sequential)
    adapter = load_model(args.model, backend="hf", dtype=args.dtype, device=device)
    tok = adapter.tokenizer

    targets = []
    for i, s in enumerate(specs):
        hook = adapter.canonical(s["hook"])
        width = adapter.width(hook)
        d_sae = s["d_sae"] or args.expansion * width
        kw = {**_arch_defaults(s["arch"], d_sae, args), **s["kwargs"]}
        layer = adapter.resolve(hook).layer
        meta = {"model_name": args.model, "hook_name": hook if layer is None else _tl_name(hook),
                "context_size": args.ctx, "prepend_bos": False, "dataset_path": args.corpus,
                "exclude_first": 1, "exclude_special_tokens": True}
        sae = make_sae(s["arch"], width, d_sae, seed=args.seed + i, metadata=meta, **kw)
        targets.append(Target(s["name"], hook, sae.to(device)))
    hooks = sorted({t.hook for t in targets}, key=lambda h: adapter.resolve(h).layer or 0)

    corpus = CorpusConfig(source=args.corpus, ctx=args.ctx)
    batch_size = args.batch_tokens // args.ctx
    total_seq = args.tokens // args.ctx
    per_rank = total_seq // dist.world_size
    total_steps = max(1, math.ceil(per_rank / batch_size))
    trainer = Trainer(targets, cfg, total_steps=total_steps, total_tokens=args.tokens, dist=dist, device=device)

    position, block = 0, 0
    if args.resume:
        ckpt = latest_checkpoint(out / "checkpoints")
        if ckpt is not None:
            state = load_checkpoint(ckpt)
            trainer.load_state_dict(state["trainer"])
            set_rng_state(state["rng"])
            position, block = int(state["sequences"]), int(state["block"]) + 1
    log_path = out / "metrics.jsonl"
    held = None
    if dist.is_main:
        eval_cfg = CorpusConfig(source=args.corpus, ctx=args.ctx, split="eval")
        held = _held_out(adapter, tok, eval_cfg, args, hooks, load_token_tensor)

    # The run folder is written (and an --overwrite'n one emptied) only once the held-out block has been
    # read: a bad --corpus or a --ctx the model cannot take leaves no run.json behind that a corrected
    # rerun would refuse, and deletes no earlier run.
    if dist.is_main:
        if wipe:
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        if not args.resume or not (out / "run.json").is_file():
            (out / "run.json").write_text(json.dumps({"settings": settings, "saes": specs}, indent=1, default=str))
        if not args.resume and log_path.exists():
            log_path.unlink()

    wb = _wandb(args, settings) if dist.is_main else None
    token_batches = iter_batches(tok, corpus, batch_size, max_tokens=args.tokens, cycle=args.cycle, rank=dist.rank,
                                 world_size=dist.world_size, skip_sequences=position,
                                 max_positions=adapter.max_positions)
    acts = stream_activations(adapter, hooks, token_batches, start_sequences=position, world_size=dist.world_size,
                              nonfinite=args.nonfinite)
    bar = _bar(args, total_steps, trainer.step_count, dist.is_main)
    last_ckpt = trainer.step_count
    nonfinite_rows = 0
    t_train = time.perf_counter()
    eval_s = 0.0
    tokens_at_start = trainer.tokens
    ran_dry: CorpusError | None = None
    with open(log_path, "a") if dist.is_main else _NullFile() as log:
        try:
            for batch in shuffled(acts, blocks=args.mix_batches, seed=args.seed, start_block=block):
                stats = trainer.step(batch.acts)
                nonfinite_rows += batch.nonfinite_rows
                step = trainer.step_count
                if on_step is not None:
                    on_step(step)
                record = {"step": step, "tokens": trainer.tokens,
                          **{f"{n}/{k}": v for n, s in stats.items() for k, v in _stat_dict(s).items()}}
                if args.eval_every and step % args.eval_every == 0 and step < total_steps and dist.is_main:
                    t0 = time.perf_counter()
                    record.update(_live_eval(trainer, held, adapter, args, final=False))
                    eval_s += time.perf_counter() - t0
                if dist.is_main:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    if wb is not None:
                        wb.log(record, step=step)
                if bar is not None:
                    elapsed = time.perf_counter() - t_train - eval_s
                    bar.update(1)
                    first = next(iter(stats.values()))
                    bar.set_postfix(tok_s=f"{(trainer.tokens - tokens_at_start) / max(elapsed, 1e-9):,.0f}",
                                    fvu=f"{first.fvu:.3f}", l0=f"{first.l0:.1f}", dead=f"{first.dead_frac:.2f}")
                if batch.end_of_block and args.checkpoint_every and step - last_ckpt >= args.checkpoint_every \
                        and step < total_steps:
                    if dist.is_main:
                        save_checkpoint(out / "checkpoints", step,
                                        {"trainer": trainer.state_dict(), "sequences": batch.sequences,
                                         "block": batch.block, "rng": rng_state(), "settings": settings},
                                        keep=args.keep_checkpoints)
                    last_ckpt = step
        except CorpusError as e:
            # The corpus ran dry before --tokens: keep what was trained (exported below), then say so.
            ran_dry = e
    if ran_dry is not None and trainer.step_count == 0:
        raise ran_dry
    train_s = time.perf_counter() - t_train - eval_s
    if bar is not None:
        bar.close()
    trained = trainer.tokens - tokens_at_start
    if not dist.is_main:
        return {"rank": dist.rank, "steps": trainer.step_count}
    t0 = time.perf_counter()
    final = _live_eval(trainer, held, adapter, args, final=True)
    eval_s += time.perf_counter() - t0
    exported = trainer.export()
    result_saes = []
    for t in targets:
        path = out / "saes" / t.name
        exported[t.name].save(str(path), metadata={"sae_hooks_train": {
            "hook": t.hook, "steps": trainer.step_count, "tokens": trainer.tokens, "input_scale": trainer.scales[t.hook],
            "lr": args.lr, "dead_window_tokens": trainer.dead_window}})
        m = final["saes"][t.name]
        # since_fired == all tokens trained on: the latent never fired during the whole run.
        never = float((trainer.since_fired[t.name] >= trainer.tokens).float().mean())
        result_saes.append({"name": t.name, "path": str(path), "hook": t.hook, "arch": t.sae.architecture,
                            "d_sae": t.sae.cfg.d_sae, **m, "train_never_fired_frac": never,
                            "train_dead_frac": float((trainer.since_fired[t.name] >= trainer.dead_window).float().mean())})
    result = {
        "out": str(out), "model": args.model, "tokens": trainer.tokens, "trained_tokens_this_session": trained,
        "steps": trainer.step_count, "autocast": trainer.autocast, "seconds": round(train_s, 2), "eval_seconds": round(eval_s, 2),
        "tokens_per_s": round(trained / max(train_s, 1e-9), 1), "world_size": dist.world_size,
        "sae_workers": trainer.workers(),
        "nonfinite_rows_skipped": nonfinite_rows, "dead_window_tokens": trainer.dead_window,
        "held_out_tokens": int(held["rows"]), "saes": result_saes,
        "metric_definitions": "held-out, position 0 and special tokens excluded; FVU = Σ‖x−x̂‖²/Σ‖x−x̄‖²; "
                              "L0 = mean active latents/token; dead_frac = latents never firing on the held-out tokens; "
                              "recaptured_zero = (CE_zero−CE_spliced)/(CE_zero−CE_clean)",
    }
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    (out / "summary.txt").write_text(_summary(result))
    _plot(log_path, out / "curves.png", [t.name for t in targets])
    if wb is not None:
        wb.log({f"final/{s['name']}/{k}": v for s in result_saes for k, v in s.items() if isinstance(v, (int, float))})
        wb.finish()
    if ran_dry is not None:
        raise CorpusError(f"{ran_dry} Stopped after {trainer.tokens:,} tokens; the SAEs trained so far are saved "
                          f"in {out / 'saes'} (metrics.json has their held-out scores).")
    if not args.json:
        print(_summary(result))
    return result


def _tl_name(hook: str) -> str:
    kind, layer = hook.split(".")
    return f"blocks.{layer}.hook_{kind}"


class _NullFile:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def write(self, s: str) -> None:
        pass

    def flush(self) -> None:
        pass


def _stat_dict(s) -> dict[str, float]:
    return {"loss": s.loss, "fvu": s.fvu, "l0": s.l0, "dead_frac": s.dead_frac, "lr": s.lr,
            **{f"part_{k}": v for k, v in s.parts.items()}}


def _held_out(adapter, tok, eval_cfg, args, hooks, load_token_tensor) -> dict:
    """Held-out activation rows per hook (FVU/L0/dead) and a token block for spliced CE."""
    import torch

    n = max(args.eval_tokens, args.eval_ce_tokens)
    block = load_token_tensor(tok, eval_cfg, n, max_positions=adapter.max_positions)
    rows: dict[str, list] = {h: [] for h in hooks}
    n_fvu_seq = math.ceil(args.eval_tokens / args.ctx)
    for i in range(0, n_fvu_seq, 16):
        ids, mask = block.input_ids[i:i + 16], block.mask[i:i + 16]
        with torch.inference_mode():
            acts = adapter.capture(ids, hooks, stop=True)
        for h in hooks:
            rows[h].append(acts[h][mask.to(acts[h].device)].float())
    n_ce = math.ceil(args.eval_ce_tokens / args.ctx)
    ce_block = type(block)(block.input_ids[:n_ce], block.mask[:n_ce]) if n_ce else None
    acts = {h: torch.cat(r) for h, r in rows.items()}
    return {"acts": acts, "ce_tokens": ce_block, "rows": next(iter(acts.values())).shape[0]}


def _live_eval(trainer, held, adapter, args, final: bool) -> dict:
    """Held-out FVU / L0 / dead for every SAE; spliced CE via sae_hooks.evaluate when asked."""
    import torch

    from ..evaluate import evaluate_many
    from ..trainer import held_out_metrics

    exported = trainer.export()
    saes = {}
    for t in trainer.targets:
        saes[t.name] = held_out_metrics(exported[t.name], held["acts"][t.hook].to(trainer.device))
    if held["ce_tokens"] is not None:
        with torch.inference_mode():
            reports = evaluate_many(adapter, [(t.hook, exported[t.name]) for t in trainer.targets], held["ce_tokens"],
                                    top_contexts=0)
        for t, r in zip(trainer.targets, reports):
            saes[t.name].update(ce_clean=r.ce_clean, ce_spliced=r.ce_spliced, delta_ce=r.delta_ce,
                                recaptured_zero=r.recaptured_zero, recaptured_mean=r.recaptured_mean, kl=r.kl)
    if final:
        return {"saes": saes}
    return {f"eval/{n}/{k}": v for n, m in saes.items() for k, v in m.items()}


def _bar(args, total: int, start: int, main: bool):
    show = args.progress == "on" or (args.progress == "auto" and main and sys.stderr.isatty())
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)


def _wandb(args, settings):
    if not args.wandb:
        return None
    try:
        import wandb
    except ImportError:
        raise ValueError("--wandb needs the wandb package: pip install wandb (or drop --wandb).") from None
    return wandb.init(project=args.wandb_project, config=settings, dir=str(args.out))


def _summary(r: dict) -> str:
    lines = [f"sae-hooks train: {r['tokens']:,} tokens in {r['steps']} steps; {r['tokens_per_s']:,.0f} tokens/s "
             f"(training {r['seconds']} s, evaluation {r['eval_seconds']} s), world size {r['world_size']}",
             f"held-out: {r['held_out_tokens']:,} activation rows (position 0 and special tokens excluded)"]
    for s in r["saes"]:
        ce = f", ΔCE {s['delta_ce']:.3f} nats, recaptured(zero) {s['recaptured_zero']:.3f}" if "delta_ce" in s else ""
        lines.append(f"  {s['name']:<34} FVU {s['fvu']:.3f}  L0 {s['l0']:.1f}  dead {100 * s['dead_frac']:.1f}%{ce}  -> {s['path']}")
    return "\n".join(lines) + "\n"


def _plot(log_path: Path, png: Path, names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, key in zip(axes, ("fvu", "l0", "dead_frac")):
        for n in names:
            xs = [r["tokens"] for r in recs if f"{n}/{key}" in r]
            ax.plot(xs, [r[f"{n}/{key}"] for r in recs if f"{n}/{key}" in r], label=n)
            ev = [(r["tokens"], r[f"eval/{n}/{key}"]) for r in recs if f"eval/{n}/{key}" in r]
            if ev:
                ax.plot(*zip(*ev), "o", label=f"{n} (held-out)")
        ax.set_xlabel("tokens")
        ax.set_title(f"{key} (training batch)")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    tmp = png.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, png)
