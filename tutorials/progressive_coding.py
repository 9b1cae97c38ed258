"""Progressive coding, reproduced: Matryoshka SAEs against pruned vanilla SAEs (tutorials/progressive_coding.md).

Peter & Søgaard 2025 ("Empirical Evaluation of Progressive Coding for Sparse Autoencoders", arXiv
2505.00190) claim that (1) a vanilla SAE's dictionary importance follows a power law, (2) Matryoshka
SAEs reconstruct better and recapture more LM loss than vanilla SAEs pruned to the same size, (3)
their reduced reconstructions are more similar (RSA) to the full one, and (4) pruned vanilla SAEs
are more interpretable. This script checks all four on the live model, from a fresh checkout:

1. ``sae-hooks train``: a TopK, a ReLU-L1 (``standard``) and a Matryoshka SAE of one width per seed and
   hook point, all trained on the same tokens from one forward pass per batch;
2. ``sae-hooks progressive`` at each hook point: importances and their fits, every pruned size in
   both prune modes, every Matryoshka prefix, RSA and (optionally) the offline interpretability scores;
3. the verdict on each claim, decided by the rules in ``CRITERIA`` (fixed before any run), written to
   ``OUT/claims.md`` and ``OUT/claims.json`` with the numbers behind it.

    python tutorials/progressive_coding.py --small --out runs/prog_small   # a few minutes (CI runs it)
    python tutorials/progressive_coding.py --out runs/prog                  # the README's experiment

A finished training run in ``OUT/train`` with the same settings is reused rather than retrained.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from sae_hooks.cli import main as sae_hooks_cli

CRITERIA = {
    "1": "for every vanilla SAE the power law explains log importance better than the exponential over the "
         "same ranks (R² higher) and with R² >= 0.9",
    "2": "at every Matryoshka width G < d_sae, the Matryoshka prefix has a lower mean FVU and a higher mean "
         "recaptured LM loss (zero ablation) than the pruned vanilla SAE of that size (each vanilla architecture "
         "and prune mode, means over seeds)",
    "3": "at every Matryoshka width G < d_sae, the Matryoshka prefix has a higher mean RSA with its full "
         "reconstruction than the pruned vanilla SAE has with its own",
    "4": "at every Matryoshka width G < d_sae, the pruned vanilla SAE has a higher mean best-latent F1 (the offline "
         "interpretability score: mean over labels of the best single latent's held-out F1) than the Matryoshka prefix",
}
PAPER = {
    "1": "dictionary importance in vanilla SAEs follows a power law",
    "2": "Matryoshka SAEs have lower reconstruction loss and recaptured LM loss than pruned vanilla SAEs",
    "3": "Matryoshka SAEs have higher representational similarity",
    "4": "pruned vanilla SAEs are more interpretable",
}

FULL = dict(hooks=("resid_post.6", "resid_post.20"), seeds=3, d_sae=1152, k=32, l1=(1.5, 2.5), tokens=32_768,
            batch_tokens=256, eval_tokens=1024, importance_tokens=4096, rsa_tokens=512, interp_tokens=4096,
            sizes=(128, 288, 576, 1152))
SMALL = dict(hooks=("resid_post.6",), seeds=2, d_sae=256, k=16, l1=(5.0,), tokens=4096, batch_tokens=256,
             eval_tokens=256, importance_tokens=512, rsa_tokens=128, interp_tokens=0, sizes=(28, 64, 128, 256))


def train_argv(cfg: dict[str, Any], out: Path) -> list[str]:
    """`sae-hooks train` flags: per hook and seed a TopK SAE, a ReLU-L1 SAE per L1 coefficient in
    ``cfg["l1"]`` and a Matryoshka SAE, all of one width. All SAEs of the run see the same token batches
    (one forward per batch); SAE i is initialised with seed + i."""
    specs = []
    for hook in cfg["hooks"]:
        for _ in range(cfg["seeds"]):
            specs += ["--sae", f"topk:{hook}:d_sae={cfg['d_sae']}"]
            for l1 in cfg["l1"]:
                specs += ["--sae", f"standard:{hook}:d_sae={cfg['d_sae']}:l1_coef={l1:g}"]
            specs += ["--sae", f"matryoshka:{hook}:d_sae={cfg['d_sae']}"]
    return ["train", *specs, "--k", str(cfg["k"]), "--tokens", str(cfg["tokens"]), "--batch-tokens",
            str(cfg["batch_tokens"]), "--eval-every", "0", "--eval-tokens", "2048", "--eval-ce-tokens", "0",
            "--checkpoint-every", "0", "--progress", "off", "--seed", "0", "--out", str(out)]


def choose_l1(run: Path, hook: str, k: int) -> tuple[float, dict[str, float]]:
    """The L1 coefficient whose ReLU-L1 SAEs at ``hook`` have the mean held-out L0 nearest ``k`` (ties: the
    larger coefficient), from the run's own end-of-run scores; and every coefficient's mean L0. Decided
    on L0 alone, before any progressive metric is computed."""
    info = json.loads((run / "run.json").read_text())
    scores = {s["name"]: s for s in json.loads((run / "metrics.json").read_text())["saes"]}
    l0s: dict[float, list[float]] = {}
    for e in info["saes"]:
        if e["arch"] == "standard" and e["hook"] == hook:
            l0s.setdefault(float(e["options"]["l1_coef"]), []).append(scores[e["name"]]["l0"])
    means = {l1: sum(v) / len(v) for l1, v in l0s.items()}
    best = min(means, key=lambda l1: (abs(means[l1] - k), -l1))
    return best, {f"{l1:g}": round(m, 2) for l1, m in sorted(means.items())}


def sae_folders(run: Path, hook: str, l1: float) -> tuple[list[str], list[str]]:
    """(vanilla, Matryoshka) SAE folders of ``run`` at ``hook``: the TopK SAEs and the ReLU-L1 SAEs of
    coefficient ``l1``; the Matryoshka SAEs."""
    info = json.loads((run / "run.json").read_text())
    vanilla, mat = [], []
    for e in info["saes"]:
        if e["hook"] != hook:
            continue
        folder = str(run / "saes" / e["name"])
        if e["arch"] == "matryoshka":
            mat.append(folder)
        elif e["arch"] == "topk" or float(e["options"].get("l1_coef", -1)) == l1:
            vanilla.append(folder)
    return vanilla, mat


def progressive_argv(cfg: dict[str, Any], run: Path, hook: str, out: Path, l1: float) -> list[str]:
    vanilla, mat = sae_folders(run, hook, l1)
    saes = [a for f in vanilla for a in ("--vanilla", f)] + [a for f in mat for a in ("--matryoshka", f)]
    return ["progressive", *saes, "--hook", hook, "--tokens", str(cfg["eval_tokens"]),
            "--importance-tokens", str(cfg["importance_tokens"]), "--rsa-tokens", str(cfg["rsa_tokens"]),
            "--sizes", *map(str, cfg["sizes"]), "--interp-tokens", str(cfg["interp_tokens"]), "--dtype", "bf16",
            "--out", str(out), "--overwrite"]


def _finished(run: Path, argv: list[str]) -> bool:
    """Whether ``run`` holds a finished run of exactly these settings (then it is reused)."""
    info = run / "run.json"
    if not info.is_file():
        return False
    data = json.loads(info.read_text())
    if data.get("status") != "finished":
        return False
    recorded = data.get("settings", {})
    specs = [argv[i + 1] for i, a in enumerate(argv) if a == "--sae"]
    flags = {argv[i]: argv[i + 1] for i in range(1, len(argv) - 1) if argv[i].startswith("--") and argv[i] != "--sae"}
    return (recorded.get("saes") == specs and recorded.get("tokens") == int(flags["--tokens"])
            and recorded.get("k") == int(flags["--k"]) and recorded.get("batch_tokens") == int(flags["--batch-tokens"])
            and recorded.get("seed") == int(flags["--seed"]))


def run_cli(argv: list[str]) -> float:
    """Run one `sae-hooks` command in this process (the same code as the shell command); its wall time."""
    print("$ sae-hooks " + " ".join(argv), flush=True)
    t = time.perf_counter()
    rc = sae_hooks_cli(argv)
    if rc != 0:
        raise SystemExit(f"sae-hooks {argv[0]} failed (exit {rc}); see the line above.")
    return time.perf_counter() - t


# ---------------------------------------------------------------------------------------------
# The verdicts


def _pm(mean: float | None, sd: float | None, digits: int = 3) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" if sd is None else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return None, None
    m = sum(v) / len(v)
    return m, (math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else None)


def claim_1(report: dict[str, Any]) -> dict[str, Any]:
    fits = report["fits"]
    ok = all(f["power_law"]["r2"] is not None and f["power_law"]["r2"] > f["exponential"]["r2"]
             and f["power_law"]["r2"] >= 0.9 for f in fits)
    by_arch: dict[str, dict[str, Any]] = {}
    for arch in sorted({f["arch"] for f in fits}):
        mine = [f for f in fits if f["arch"] == arch]
        by_arch[arch] = {k: _mean_sd([f[law][field] for f in mine]) for k, (law, field) in {
            "alpha": ("power_law", "exponent"), "r2_power": ("power_law", "r2"),
            "lambda": ("exponential", "rate"), "r2_exp": ("exponential", "r2")}.items()}
        by_arch[arch]["n"] = len(mine)
        by_arch[arch]["ranks"] = f"{mine[0]['power_law']['rank_lo']}–{mine[0]['power_law']['rank_hi']}"
    text = "; ".join(f"{a}: α = {_pm(*v['alpha'], 2)}, R² {_pm(*v['r2_power'])} vs exponential R² "
                     f"{_pm(*v['r2_exp'])} (ranks {v['ranks']}, n={v['n']})" for a, v in by_arch.items())
    return {"reproduced": ok, "text": text, "by_arch": by_arch}


def _at(report: dict[str, Any], arch: str, mode: str, size: int) -> dict[str, Any] | None:
    return next((s for s in report["summary"] if (s["arch"], s["mode"], s["size"]) == (arch, mode, size)), None)


def _duplicates(report: dict[str, Any]) -> set[tuple[str, str]]:
    """(arch, "reselect") groups whose every row below full size has the mask rows' codes (same_codes_as):
    one dictionary under two names, compared once (as mask)."""
    out = set()
    for arch in {r["arch"] for r in report["rows"]}:
        rows = [r for r in report["rows"]
                if r["arch"] == arch and r["mode"] == "reselect" and r["size"] < report["d_sae"]]
        if rows and all(r["same_codes_as"] == "mask" for r in rows):
            out.add((arch, "reselect"))
    return out


def _compare(report: dict[str, Any], metric: str, better: str) -> dict[str, Any]:
    """Matryoshka prefix against every distinct pruned (arch, mode) at each Matryoshka width G < d_sae."""
    widths = sorted({s["size"] for s in report["summary"] if s["mode"] == "prefix" and s["size"] < report["d_sae"]})
    pruned = sorted({(s["arch"], s["mode"]) for s in report["summary"] if s["mode"] != "prefix"} - _duplicates(report))
    cells, wins, total = [], 0, 0
    for arch, mode in pruned:
        for g in widths:
            m, p = _at(report, "matryoshka", "prefix", g), _at(report, arch, mode, g)
            if m is None or p is None or metric not in m or m[metric]["mean"] is None or p[metric]["mean"] is None:
                continue
            a, b = m[metric]["mean"], p[metric]["mean"]
            mat_better = a < b if better == "lower" else a > b
            wins += mat_better
            total += 1
            cells.append({"arch": arch, "mode": mode, "size": g, "matryoshka": m[metric], "pruned": p[metric],
                          "l0_matryoshka": m["l0"]["mean"], "l0_pruned": p["l0"]["mean"],
                          "matryoshka_better": mat_better})
    return {"cells": cells, "matryoshka_wins": wins, "comparisons": total}


def _cells_text(cmp: dict[str, Any], digits: int = 3) -> str:
    parts = []
    for c in cmp["cells"]:
        mat = _pm(c["matryoshka"]["mean"], c["matryoshka"]["sd"], digits)
        pruned = _pm(c["pruned"]["mean"], c["pruned"]["sd"], digits)
        parts.append(f"G={c['size']} {c['arch']}/{c['mode']}: Matryoshka {mat} vs pruned {pruned}")
    return "; ".join(parts)


def _compact(cmp: dict[str, Any], name: str, wins_by: str = "Matryoshka") -> str:
    """'Matryoshka better in w/n; at G=<smallest>: <name> Matryoshka m ± sd vs arch/mode m ± sd, ...'."""
    if not cmp["cells"]:
        return "–"
    g = min(c["size"] for c in cmp["cells"])
    at = [c for c in cmp["cells"] if c["size"] == g]
    wins = cmp["matryoshka_wins"] if wins_by == "Matryoshka" else cmp["comparisons"] - cmp["matryoshka_wins"]
    head = f"{wins_by} better in {wins}/{cmp['comparisons']}"
    vs = ", ".join(f"{c['arch']}/{c['mode']} {_pm(c['pruned']['mean'], c['pruned']['sd'])}" for c in at)
    return f"{head}; G={g}: {name} Matryoshka {_pm(at[0]['matryoshka']['mean'], at[0]['matryoshka']['sd'])} vs {vs}"


def claims(reports: dict[str, dict[str, Any]], meta: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per (claim, hook): the paper's statement, ours with the numbers, reproduced or not."""
    out = []
    for hook, rep in reports.items():
        c1 = claim_1(rep)
        out.append({"claim": "1", "hook": hook, "reproduced": "yes" if c1["reproduced"] else "no", "ours": c1["text"],
                    "compact": c1["text"]})
        fvu, rec = _compare(rep, "fvu", "lower"), _compare(rep, "recaptured_zero", "higher")
        ok = fvu["comparisons"] > 0 and fvu["matryoshka_wins"] == fvu["comparisons"] \
            and rec["matryoshka_wins"] == rec["comparisons"]
        out.append({"claim": "2", "hook": hook, "reproduced": "yes" if ok else "no",
                    "ours": f"Matryoshka lower FVU in {fvu['matryoshka_wins']}/{fvu['comparisons']} and higher "
                            "recaptured "
                            f"(zero abl.) in {rec['matryoshka_wins']}/{rec['comparisons']} comparisons. FVU: "
                            f"{_cells_text(fvu)}. Recaptured: {_cells_text(rec)}",
                    "compact": _compact(fvu, "FVU") + "; " + _compact(rec, "recaptured"),
                    "tally": f"FVU {fvu['matryoshka_wins']}/{fvu['comparisons']}, recaptured "
                             f"{rec['matryoshka_wins']}/{rec['comparisons']}",
                    "fvu": fvu, "recaptured_zero": rec})
        r = _compare(rep, "rsa_full", "higher")
        ok = r["comparisons"] > 0 and r["matryoshka_wins"] == r["comparisons"]
        out.append({"claim": "3", "hook": hook, "reproduced": "yes" if ok else "no",
                    "ours": f"Matryoshka higher RSA with its full reconstruction in "
                            f"{r['matryoshka_wins']}/{r['comparisons']}: "
                            f"{_cells_text(r)}", "compact": _compact(r, "RSA"), "rsa_full": r,
                    "tally": f"{r['matryoshka_wins']}/{r['comparisons']}"})
        i = _compare(rep, "interp_best_latent_f1", "higher")
        if i["comparisons"] == 0:
            out.append({"claim": "4", "hook": hook, "reproduced": "not measured",
                        "ours": "no interpretability scores in this run (--interp-tokens 0)",
                        "compact": "not measured (--interp-tokens 0)"})
        else:
            pruned_wins = i["comparisons"] - i["matryoshka_wins"]
            out.append({"claim": "4", "hook": hook, "reproduced": "yes" if pruned_wins == i["comparisons"] else "no",
                        "ours": f"pruned vanilla higher best-latent F1 in {pruned_wins}/{i['comparisons']}: "
                                f"{_cells_text(i)}",
                        "compact": _compact(i, "best-latent F1", wins_by="pruned"), "best_latent_f1": i,
                        "tally": f"{pruned_wins}/{i['comparisons']}"})
    for entry in out:
        entry["paper"] = PAPER[entry["claim"]]
        entry["criterion"] = CRITERIA[entry["claim"]]
        entry["setting"] = meta
    return out


def claims_markdown(entries: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    l1 = ", ".join(f"{h} L1 {c['l1']:g} (mean L0 by L1: {c['mean_l0_by_l1']})" for h, c in meta["l1_chosen"].items())
    setting = (f"{meta['model']}, d_sae {meta['d_sae']}, k {meta['k']}, {meta['seeds']} seeds, {meta['tokens']:,} "
               f"training tokens in batches of {meta['batch_tokens']}, {meta['eval_tokens']:,} evaluated tokens; {l1}")
    lines = [f"Setting: {setting}.", "",
             "| claim | paper's statement | hook | ours (mean ± sd over seeds) | reproduced? |",
             "|---|---|---|---|---|"]
    for e in entries:
        tally = f" ({e['tally']})" if e.get("tally") else ""
        lines.append(f"| {e['claim']} | {e['paper']} | {e['hook']} | {e['compact']} | {e['reproduced']}{tally} |")
    lines += ["", "Criteria (fixed before the runs):"] + [f"- claim {k}: {v}" for k, v in CRITERIA.items()]
    lines += ["", "Every comparison:"] + [f"- claim {e['claim']}, {e['hook']}: {e['ours']}" for e in entries]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="a few minutes: one hook, 2 seeds, d_sae 256, 4,096 tokens")
    p.add_argument("--out", default="runs/progressive_coding", help="folder for the run, the sweeps and claims.md")
    p.add_argument("--interp-tokens", type=int, default=None, help="override: tokens of the interpretability scores")
    p.add_argument("--reuse-sweeps", action="store_true",
                   help="decide the claims from the sweeps already in OUT (written by this script) instead of "
                        "rerunning them")
    args = p.parse_args(argv)
    cfg = dict(SMALL if args.small else FULL)
    if args.interp_tokens is not None:
        cfg["interp_tokens"] = args.interp_tokens
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    walls: dict[str, float] = {}

    train = train_argv(cfg, out / "train")
    if _finished(out / "train", train):
        print(f"reusing the finished training run in {out / 'train'} (same settings)")
    else:
        walls["train"] = run_cli(train + ["--overwrite"])
    reports, chosen = {}, {}
    for hook in cfg["hooks"]:
        l1, l0s = choose_l1(out / "train", hook, cfg["k"])
        chosen[hook] = {"l1": l1, "mean_l0_by_l1": l0s}
        print(f"{hook}: ReLU-L1 mean held-out L0 by L1 coefficient {l0s}; using L1 = {l1:g} (nearest k = {cfg['k']})")
        folder = out / f"progressive_{hook}"
        if args.reuse_sweeps and (folder / "report.json").is_file():
            print(f"reusing the sweep in {folder}")
        else:
            walls[f"progressive {hook}"] = run_cli(progressive_argv(cfg, out / "train", hook, folder, l1))
        reports[hook] = json.loads((folder / "report.json").read_text())

    meta = {"model": "smollm2-135m-instruct", "l1_chosen": chosen,
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}}
    entries = claims(reports, meta)
    text = claims_markdown(entries, meta)
    phases = {h: ", ".join(f"{k} {v:.0f}" for k, v in r["seconds"].items() if k != "total") for h, r in reports.items()}
    sweeps = ", ".join(f"{h} {r['seconds']['total']:.0f} s ({phases[h]})" for h, r in reports.items())
    text += f"\n\nSweep wall times (from each report): {sweeps}.\n"
    if walls:
        text += "Wall times of this invocation: " + ", ".join(f"{k} {v:.0f} s" for k, v in walls.items()) + "\n"
    (out / "claims.md").write_text(text)
    (out / "claims.json").write_text(json.dumps({"claims": entries, "wall_s": walls}, indent=1, default=str))
    print(text)
    for hook, rep in reports.items():
        print(f"\n## {hook}\n\n" + (out / f"progressive_{hook}" / "report.md").read_text())


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
