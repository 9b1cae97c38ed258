"""MP-SAE put to the test (mirrors tutorials/mp_sae.md): each claim of Costa et al. 2025 and each published
critique, measured with numbers on this machine.

Parts (``--parts``, comma-separated; all by default):

- ``toy``: the hierarchical toy grid through ``sae-hooks synth`` (4 conditions × 2 widths × 5 architectures ×
  seeds): MCC, flat / hierarchical errors, absorption; the superposed-and-noisy condition is the
  SynthSAEBench critique (reconstruction against MCC).
- ``digits``: ReLU, TopK and MP-SAE dictionaries on scikit-learn's 8×8 digits: reconstruction against k,
  coherence and the Babel function, the atoms as images.
- ``live``: SmolLM2 ``resid_post.6``; TopK, BatchTopK and MP-SAE (k = 32, d_sae 2304) for each init seed, all
  trained in ONE ``sae-hooks train`` run (reused when present), then adaptive inference (MP at k ∈ {4..128} and at
  residual thresholds, TopK / BatchTopK at other k) in one sweep, dictionary geometry, MP's residual
  monotonicity, dead latents.

    python tutorials/mp_sae.py                        # everything, 3 seeds
    python tutorials/mp_sae.py --small                # the CI setting: tiny sizes, 1-2 seeds, a few minutes
    python tutorials/mp_sae.py --parts live --runs runs/mp_live --out runs/mp_results
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import torch

from sae_hooks.adaptive import SweepConfig, activation_sweep, capture_rows, residual_norms, sparsity_sweep
from sae_hooks.cli import main as sae_hooks_cli
from sae_hooks.data import CorpusConfig, load_token_tensor
from sae_hooks.geometry import GEOMETRY_DEFINITIONS, dictionary_geometry
from sae_hooks.models import cache_root
from sae_hooks.synthetic.digits import DigitsConfig, run_digits
from sae_hooks.synthetic.score import mean_sd

HOOK = "resid_post.6"
LIVE_WIDTH = 2304  # 4x the residual width (576)
ARCHS = ("topk", "batchtopk", "matching_pursuit")
# The toy grid: the paper's setting, strongly correlated siblings, superposition with noise (the
# SynthSAEBench critique), and tied parent/child magnitudes (absorption made free).
CONDITIONS = ("paper:level=1", "correlated:level=5", "superposed_noisy:d_model=12,noise=0.1",
              "tied:level=1,tied_magnitudes=true")


def pm(values: list[float], digits: int = 3) -> str:
    m, s = mean_sd(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def part_toy(out: Path, small: bool, seeds: int) -> dict:
    args = ["synth", *sum((["--condition", c] for c in (CONDITIONS[:2] if small else CONDITIONS)), []),
            "--d-sae", "20", *([] if small else ["--d-sae", "40"]), "--n-train", "20000" if small else "200000",
            "--n-eval", "5000" if small else "20000", "--seeds", str(seeds), "--out", str(out / "toy"), "--json"]
    print(f"\n== Toy: sae-hooks {' '.join(args)}", flush=True)
    t0 = time.perf_counter()
    rc = sae_hooks_cli(args)
    if rc != 0:
        raise SystemExit(f"sae-hooks synth failed (exit code {rc}).")
    res = json.loads((out / "toy" / "results.json").read_text())
    print((out / "toy" / "table.md").read_text())
    res["wall_total"] = time.perf_counter() - t0
    return res


def part_digits(out: Path, small: bool, seeds: int) -> dict:
    cfg = DigitsConfig(epochs=5, ks=(2, 8), l1_coefs=(0.3, 1.0), inference_ks=(2, 8, 32)) if small else DigitsConfig()
    print(f"\n== Digits: {cfg}", flush=True)
    res = run_digits(cfg, seeds=seeds, progress=lambda s, rows: print(f"  seed {s} done", flush=True))
    (out / "digits").mkdir(parents=True, exist_ok=True)
    (out / "digits" / "results.json").write_text(json.dumps(res.to_dict(), indent=1))
    (out / "digits" / "table.md").write_text(res.table() + f"\n\nwall {res.wall_seconds:.1f} s\n")
    res.plot_curve(out / "digits" / "k_curve.png")
    res.plot_atoms(out / "digits" / "atoms.png")
    print(res.table())
    print(f"wall {res.wall_seconds:.1f} s; plots in {out / 'digits'}")
    return res.to_dict()


def live_name(arch: str, replica: int) -> str:
    """The run's name for an SAE: the train CLI suffixes repeated (arch, hook) pairs with _2, _3, ..."""
    return f"{arch}_{HOOK}" + ("" if replica == 0 else f"_{replica + 1}")


def live_train_args(run: Path, seeds: int, tokens: int) -> list[str]:
    """One ``sae-hooks train`` run holding every SAE: ARCHS repeated ``seeds`` times. SAE i starts from init seed i;
    all of them see the same tokens in the same order (one model forward per batch for all)."""
    specs = [f"{a}:{HOOK}:d_sae={LIVE_WIDTH}" for _ in range(seeds) for a in ARCHS]
    return ["train", *sum((["--sae", sp] for sp in specs), []), "--k", "32", "--tokens", str(tokens), "--seed", "0",
            # Only the run's own end-of-run report is cut down (training is the same); the tutorial measures after.
            "--eval-every", "0", "--checkpoint-every", "0", "--eval-tokens", "4096", "--eval-ce-tokens", "1024",
            "--progress", "off", "--out", str(run)]


def train_or_reuse(run: Path, seeds: int, tokens: int) -> Path:
    args = live_train_args(run, seeds, tokens)
    done = run / "run.json"
    if not (done.is_file() and json.loads(done.read_text()).get("status") == "finished"
            and all((run / "saes" / live_name(a, r) / "cfg.json").is_file() for a in ARCHS for r in range(seeds))):
        print(f"  training: sae-hooks {' '.join(args)}", flush=True)
        t0 = time.perf_counter()
        rc = sae_hooks_cli(args + (["--overwrite"] if run.exists() else []))
        if rc != 0:
            raise SystemExit(f"sae-hooks train failed (exit code {rc}).")
        print(f"  trained in {time.perf_counter() - t0:.0f} s", flush=True)
    return run / "saes"


def last_step(run: Path, names: dict[str, str]) -> dict:
    """Each SAE's batch FVU, L0 and dead fraction (unfired for the trainer's dead window) at the last step."""
    lines = (run / "metrics.jsonl").read_text().strip().splitlines()
    last = json.loads(lines[-1]) if lines else {}
    return {a: {m: last.get(f"{n}/{m}") for m in ("fvu", "l0", "dead_frac")} | {"step": last.get("step")}
            for a, n in names.items()}


def part_live(out: Path, small: bool, seeds: int, runs: Path) -> dict:
    from sae_hooks import load_model
    from sae_hooks.data import TokenBatch
    from sae_hooks.sae import load_sae

    tokens = 20_000 if small else 300_000
    # CE needs a rerun of the blocks above the hook per setting: a few thousand tokens. Activation-only
    # measures (dead latents, geometry, stopping steps, monotonicity) use many more held-out rows.
    n_eval, n_rows, n_calib = (512, 2048, 1024) if small else (512, 8192, 4096)
    sweep_cfg = SweepConfig(ks=(4, 16, 32, 64), threshold_ks=(8, 32), max_steps=64) if small else \
        SweepConfig(threshold_ks=(8, 16, 32))
    print(f"\n== Live model: {HOOK}, {', '.join(ARCHS)} at k = 32, d_sae {LIVE_WIDTH}, {seeds} init seed(s) in one "
          f"run, {tokens:,} training tokens", flush=True)
    sae_dir = train_or_reuse(runs / "live", seeds, tokens)
    names = {(a, r): live_name(a, r) for r in range(seeds) for a in ARCHS}
    key = {"layout": 2, "eval": n_eval, "rows": n_rows, "calib": n_calib, "sweep": dataclasses.asdict(sweep_cfg),
           "run": str(sae_dir.resolve()),
           "mtimes": [os.path.getmtime(sae_dir / n / "cfg.json") for n in names.values()]}
    cached = out / "live" / "results.json"
    if cached.is_file() and json.loads(cached.read_text()).get("key") == key:
        res = json.loads(cached.read_text())
        print(f"  read back from {cached}", flush=True)
        print(live_summary(res))
        return res
    adapter = load_model()  # fp32 for evaluation
    tok = adapter.tokenizer
    held_out = load_token_tensor(tok, CorpusConfig(split="eval", ctx=128), n_rows)
    n_seq = max(1, n_eval // held_out.input_ids.shape[1])
    ce_tokens = TokenBatch(held_out.input_ids[:n_seq], held_out.mask[:n_seq])
    eval_rows = capture_rows(adapter, held_out, HOOK)
    calib_rows = capture_rows(adapter, load_token_tensor(tok, CorpusConfig(split="train", ctx=128), n_calib), HOOK)
    saes = {n: load_sae(sae_dir / n).eval().requires_grad_(False) for n in names.values()}
    t0 = time.perf_counter()
    # LM loss needs a rerun of the blocks above the hook per setting: seed 0's SAEs at every setting, in one
    # sweep (one clean forward per batch for all). FVU, L0, dead latents and stopping steps need no model
    # forward: every seed's SAEs at every setting on the many held-out rows.
    mine0 = {names[(a, 0)]: a for a in ARCHS}
    sweep = sparsity_sweep(adapter, {n: saes[n] for n in mine0}, HOOK, ce_tokens, calib_rows, sweep_cfg,
                           eval_rows=eval_rows)
    print(f"  LM-loss sweep of {len(sweep.points)} settings in {sweep.wall_seconds:.0f} s", flush=True)
    acts = activation_sweep(saes, HOOK, eval_rows, calib_rows, sweep_cfg)
    print(f"  activation sweep of {len(acts.points)} settings in {acts.wall_seconds:.0f} s", flush=True)
    per_seed = []
    (out / "live").mkdir(parents=True, exist_ok=True)
    for r in range(seeds):
        mine = {names[(a, r)]: a for a in ARCHS}
        mp_name = names[("matching_pursuit", r)]
        part = dataclasses.replace(
            acts, points=tuple(p._replace(sae=mine[p.sae]) for p in acts.points if p.sae in mine),
            stopping={k.replace(mp_name, "matching_pursuit"): v for k, v in acts.stopping.items()
                      if k.rsplit(" eps_k", 1)[0] == mp_name})
        geometry = {a: dictionary_geometry(saes[n], eval_rows).to_dict() for n, a in mine.items()}
        norms = residual_norms(saes[mp_name], eval_rows, max(sweep_cfg.ks))
        rises = norms[:, 1:] - norms[:, :-1]
        mono = {"max_rise": float(rises.max()), "steps_rising": float((rises > 0).double().mean()),
                "max_rise_rel": float((rises / norms[:, :1]).max())}
        per_seed.append({"seed": r, "sae_names": {a: n for n, a in mine.items()}, "acts": part.to_dict(),
                         "geometry": geometry, "monotone": mono,
                         "training": last_step(sae_dir.parent, {a: n for n, a in mine.items()})})
    ce = dataclasses.replace(sweep, points=tuple(p._replace(sae=mine0[p.sae]) for p in sweep.points),
                             stopping={k.replace(names[("matching_pursuit", 0)], "matching_pursuit"): v
                                       for k, v in sweep.stopping.items()})
    ce.plot(out / "live" / "adaptive_seed0.png")
    (out / "live" / "sweep_seed0.md").write_text(ce.table())
    print(ce.table())
    res = {"key": key, "per_seed": per_seed, "ce_sweep_seed0": ce.to_dict(), "eval_tokens": sweep.eval_tokens,
           "row_tokens": int(eval_rows.shape[0]), "calib_tokens": int(calib_rows.shape[0]), "train_tokens": tokens,
           "d_sae": LIVE_WIDTH, "train_command": "sae-hooks " + " ".join(live_train_args(Path("runs/mp_live"), seeds,
                                                                                        tokens)),
           "sweep_seconds": sweep.wall_seconds, "activation_sweep_seconds": acts.wall_seconds,
           "seconds": time.perf_counter() - t0}
    cached.write_text(json.dumps(res, indent=1))
    print(live_summary(res))
    return res


def live_summary(res: dict) -> str:
    """Mean ± sd over seeds of every sweep point, the geometry, dead latents and the monotonicity check."""
    seeds = res["per_seed"]
    lines = [f"\nLive model, {len(seeds)} init seed(s), d_sae {res['d_sae']}, {res['train_tokens']:,} training tokens; "
             f"{res['row_tokens']:,} held-out rows (mean ± sd over seeds):",
             "| SAE | mode | k | L0 | FVU | dead (held-out) | mean steps |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    keys = [(p["sae"], p["mode"], p["k"]) for p in seeds[0]["acts"]["points"]]
    for key in keys:
        ps = [next(p for p in s["acts"]["points"] if (p["sae"], p["mode"], p["k"]) == key) for s in seeds]
        steps = "-" if ps[0]["mean_steps"] is None else pm([p["mean_steps"] for p in ps], 1)
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {pm([p['l0'] for p in ps], 2)} | "
                     f"{pm([p['fvu'] for p in ps])} | {pm([p['dead_frac'] for p in ps], 4)} | {steps} |")
    for label in seeds[0]["acts"]["stopping"]:
        qs = [stop_quantiles(s["acts"]["stopping"][label]) for s in seeds]
        lines.append(f"{label}: stopping step p10 / p50 / p90 = " + " / ".join(
            pm([q[i] for q in qs], 1) for i in range(3)) + f"; at the cap: {pm([q[3] for q in qs])}")
    ce = res["ce_sweep_seed0"]
    lines += ["", f"LM loss, seed 0, {res['eval_tokens']:,} held-out tokens (the same SAEs):",
              "| SAE | mode | k | L0 | FVU | recaptured (zero) | recaptured (mean) | ΔCE | KL |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in ce["points"]:
        lines.append(f"| {p['sae']} | {p['mode']} | {p['k']} | {p['l0']:.2f} | {p['fvu']:.3f} | "
                     f"{p['recaptured_zero']:.4f} | {p['recaptured_mean']:.4f} | {p['delta_ce']:.3f} | {p['kl']:.3f} |")
    lines += ["", "Geometry (decoder rows; 'fired' = atoms that fire on the held-out rows at the trained k):",
              "| SAE | coherence | Babel μ1(8) | Babel μ1(32) | dead (held-out) | coherence (fired) | μ1(32) (fired) | "
              "support max cos | support mean cos |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for a in ARCHS:
        gs = [s["geometry"][a] for s in seeds]
        lines.append(f"| {a} | {pm([g['coherence'] for g in gs])} | {pm([g['babel'][7] for g in gs], 2)} | "
                     f"{pm([g['babel'][31] for g in gs], 2)} | "
                     f"{pm([1 - g['n_selected'] / g['n_atoms'] for g in gs], 4)} | "
                     f"{pm([g['selected_coherence'] for g in gs])} | {pm([g['selected_babel'][31] for g in gs], 2)} | "
                     f"{pm([g['support_max_cos'] for g in gs])} | {pm([g['support_mean_cos'] for g in gs])} |")
    g0 = seeds[0]["geometry"]["topk"]
    lines.append(f"Reference: Welch bound {g0['welch_bound']:.3f}; a random unit dictionary of the same shape has "
                 f"coherence {g0['random_coherence']:.3f}, μ1(8) {g0['random_babel'][7]:.2f}, μ1(32) "
                 f"{g0['random_babel'][31]:.2f}. {GEOMETRY_DEFINITIONS}")
    lines += ["", "At the end of training (last step's batch; dead = unfired for the trainer's dead window, "
              f"{res['train_tokens'] // 20:,} tokens):", "| SAE | batch FVU | L0 | dead |", "| --- | --- | --- | --- |"]
    for a in ARCHS:
        ts = [s["training"][a] for s in seeds]
        lines.append(f"| {a} | {pm([t['fvu'] for t in ts])} | {pm([t['l0'] for t in ts], 2)} | "
                     f"{pm([t['dead_frac'] for t in ts], 4)} |")
    mono = [s["monotone"] for s in seeds]
    lines.append(f"MP residual monotonicity on the held-out rows: largest rise of ||r|| over one step "
                 f"{max(m['max_rise'] for m in mono):.3g} "
                 f"(relative to ||r0||: {max(m['max_rise_rel'] for m in mono):.2g}); "
                 f"fraction of steps with any rise {max(m['steps_rising'] for m in mono):.3g}.")
    return "\n".join(lines)


def stop_quantiles(counts: list[int]) -> tuple[int, int, int, float]:
    """p10, p50, p90 of the stopping steps from their histogram, and the fraction of tokens at the cap."""
    total, acc, qs = sum(counts), 0, []
    for i, c in enumerate(counts):
        acc += c
        while len(qs) < 3 and acc >= (0.1, 0.5, 0.9)[len(qs)] * total:
            qs.append(i)
    return qs[0], qs[1], qs[2], counts[-1] / total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="toy,digits,live", help="comma-separated: toy, digits, live")
    p.add_argument("--small", action="store_true", help="tiny sizes (the CI setting)")
    p.add_argument("--seeds", type=int, default=None, help="seeds (default 3; --small: 2 for toy/digits, 1 live)")
    p.add_argument("--out", default=None, help="results folder (default: the sae_hooks cache)")
    p.add_argument("--runs", default=None, help="folder of the live training run (RUNS/live; reused when finished)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch threads")
    args = p.parse_args()
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    bad = sorted(set(parts) - {"toy", "digits", "live"})
    if bad:
        raise SystemExit(f"--parts: unknown {bad}; valid: toy, digits, live.")
    torch.set_num_threads(args.threads)
    root = cache_root() / "tutorials" / ("mp_sae_small" if args.small else "mp_sae")
    out = Path(args.out) if args.out else root / "results"
    runs = Path(args.runs) if args.runs else root / "runs"
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {}
    t0 = time.perf_counter()
    if "toy" in parts:
        summary["toy"] = part_toy(out, args.small, args.seeds or (2 if args.small else 3))
    if "digits" in parts:
        summary["digits"] = part_digits(out, args.small, args.seeds or (1 if args.small else 3))
    if "live" in parts:
        summary["live"] = part_live(out, args.small, args.seeds or (1 if args.small else 3), runs)
    summary["wall_seconds"] = time.perf_counter() - t0
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"\nAll parts done in {summary['wall_seconds']:.0f} s; results in {out}")


if __name__ == "__main__":
    main()
