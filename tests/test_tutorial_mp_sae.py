"""tutorials/mp_sae.py --small runs end to end and its numbers obey what must hold at any size (slow: it trains on
the real embedded model; still run in CI, a few minutes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "tutorials" / "mp_sae.py"


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mp_sae")
    env = dict(os.environ, PYTHONPATH=str(SCRIPT.parents[1]))
    cmd = [sys.executable, str(SCRIPT), "--small", "--out", str(tmp / "out"), "--runs", str(tmp / "runs")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp / "out"
    return out, json.loads((out / "summary.json").read_text()), proc.stdout


def test_files_and_tables(small_run):
    out, _, stdout = small_run
    for name in ("toy/plot.png", "digits/atoms.png", "digits/k_curve.png", "live/adaptive_seed0.png"):
        assert (out / name).stat().st_size > 5_000, name
    assert "| paper | 20 | matching_pursuit |" in (out / "toy" / "table.md").read_text()
    assert "stopping step p10/p50/p90" in (out / "live" / "sweep_seed0.md").read_text()
    assert "MP residual monotonicity" in stdout and "Welch bound" in stdout


def test_toy_oracle_and_scores(small_run):
    _, summary, _ = small_run
    rows = summary["toy"]["summary"]
    oracle = [s for s in rows if s["arch"] == "oracle"]
    assert len(oracle) == 2 and all(s["n_seeds"] == 2 for s in oracle)
    assert all(abs(s["mean"]["mcc"] - 1) < 1e-6 and s["mean"]["absorption"] == 0 for s in oracle)
    learned = [s for s in rows if s["arch"] != "oracle"]
    assert {s["arch"] for s in learned} == {"standard", "topk", "batchtopk", "matryoshka", "matching_pursuit"}
    # A learned dictionary cannot beat the truth; the k-sparse SAEs use at most k = 2 latents.
    assert all(0 < s["mean"]["mcc"] <= 1 + 1e-6 for s in learned)
    assert all(s["mean"]["l0"] <= 2 + 1e-6 for s in learned if s["arch"] in ("topk", "matryoshka", "matching_pursuit"))


def test_digits_mp_error_falls_with_inference_k(small_run):
    _, summary, _ = small_run
    runs = [r for r in summary["digits"]["runs"] if r["arch"] == "matching_pursuit" and r["infer_k"] is not None]
    by_k = sorted((r["infer_k"], r["fvu"], r["l0"]) for r in runs)
    assert [k for k, _, _ in by_k] == [2, 8, 32]
    # Every pursuit step lowers each image's residual, so the pooled error cannot rise with k (float slack).
    assert all(b[1] <= a[1] * (1 + 1e-5) for a, b in zip(by_k, by_k[1:]))
    assert all(l0 <= k + 1e-9 for k, _, l0 in by_k)


def test_live_sweep_monotone_and_trained_one_run(small_run):
    _, summary, _ = small_run
    live = summary["live"]
    seed = live["per_seed"][0]
    # MP never raises its residual: any rise is float rounding, far below the residual's scale.
    assert seed["monotone"]["max_rise_rel"] < 1e-4
    ks = (4, 16, 32, 64)
    for points in (seed["acts"]["points"], live["ce_sweep_seed0"]["points"]):
        by = {(p["sae"], p["mode"], p["k"]): p for p in points}
        assert {a for a, _, _ in by} == {"topk", "batchtopk", "matching_pursuit"}
        assert all(by[("topk", "k", k)]["l0"] <= k + 1e-9 for k in ks)
        mp = [by[("matching_pursuit", "k", k)]["fvu"] for k in ks]
        assert all(b <= a * (1 + 1e-5) for a, b in zip(mp, mp[1:]))
        # MP at its training k is the trained SAE.
        assert by[("matching_pursuit", "k", 32)]["fvu"] == by[("matching_pursuit", "trained", 32)]["fvu"]
    # The LM-loss sweep and the activation sweep score the same codes (on different numbers of rows).
    ce = {(p["sae"], p["mode"], p["k"]): p for p in live["ce_sweep_seed0"]["points"]}
    assert all(0 < p["recaptured_zero"] <= 1.05 for p in ce.values())
    # The stopping-step histograms count every held-out row once, and no token goes past the cap.
    for label, counts in seed["acts"]["stopping"].items():
        assert sum(counts) == live["row_tokens"] and len(counts) == 64 + 1, label
    # The end-of-training figures were found in the run's log under each SAE's name.
    assert all(seed["training"][a]["l0"] is not None for a in ("topk", "batchtopk", "matching_pursuit"))
    assert "--sae matching_pursuit:resid_post.6:d_sae=2304" in live["train_command"]
