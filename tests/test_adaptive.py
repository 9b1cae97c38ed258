"""Adaptive sparsity at inference: the views, the calibrations and the sweep on a tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sae_hooks.adaptive import (MPView, SweepConfig, activation_sweep, batchtopk_at, capture_rows, residual_norms,
                                sparsity_sweep, stopping_steps, topk_at)
from sae_hooks.data import TokenBatch, make_mask
from sae_hooks.sae import make_sae


@pytest.fixture
def tokens(tiny_tokenizer):
    ids = torch.randint(3, 128, (8, 16), generator=torch.Generator().manual_seed(3))
    return TokenBatch(ids, make_mask(ids, tiny_tokenizer))


def _rows(n=300, d=64, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * 2 + 0.5


def test_mp_view_is_the_sae_at_another_k():
    mp = make_sae("matching_pursuit", 64, 256, k=8, seed=0)
    x = _rows()
    view = MPView(mp, k=3)
    assert torch.equal(view.encode(x), mp.encode(x, k=3))
    assert torch.equal(view.decode(view.encode(x)), mp.decode(mp.encode(x, k=3)))
    assert view.cfg is mp.cfg and view.W_dec is mp.W_dec and view.architecture == "matching_pursuit"
    with pytest.raises(ValueError, match="matching-pursuit"):
        MPView(make_sae("topk", 64, 256, k=8, seed=0), k=3)


def test_topk_at_keeps_k_latents_and_the_weights():
    topk = make_sae("topk", 64, 256, k=8, seed=0)
    x = _rows()
    wide = topk_at(topk, 32)
    assert wide.cfg.k == 32 and torch.equal(wide.W_enc, topk.W_enc) and topk.cfg.k == 8
    assert int((wide.encode(x) != 0).sum(-1).max()) <= 32
    assert torch.equal(topk_at(topk, 8).encode(x), topk.encode(x))


def test_batchtopk_threshold_calibrated_to_mean_l0():
    btk = make_sae("batchtopk", 64, 256, k=8, seed=0)
    calib = _rows(400, seed=1)
    for k in (2, 8, 20):
        view, theta = batchtopk_at(btk, k, calib)
        l0 = float((view.encode(calib) != 0).sum(-1).float().mean())
        assert l0 == pytest.approx(k, abs=1e-6)  # continuous pre-activations: no ties at the threshold
        assert theta > 0
    with pytest.raises(ValueError, match="Lower k"):
        batchtopk_at(btk, 250, calib)


def test_stopping_steps_and_residual_norms():
    mp = make_sae("matching_pursuit", 64, 256, k=8, seed=0)
    rows = _rows()
    norms = residual_norms(mp, rows, 16)
    assert norms.shape == (300, 17)
    assert bool((norms[:, 1:] <= norms[:, :-1] + 1e-5).all())  # MP never raises the residual
    eps = float(norms[:, 6].median())
    steps = stopping_steps(mp, rows, eps, 16)
    assert int(steps.max()) <= 16
    # The median row needs about 6 steps to get below the median norm after 6 steps.
    assert 4 <= float(steps.float().median()) <= 8
    assert bool((stopping_steps(mp, rows, 0.0, 5) == 5).all())


def test_capture_rows_excludes_masked_positions(tiny_hf, tokens):
    rows = capture_rows(tiny_hf, tokens, "resid_post.1", batch_size=3)
    assert rows.shape == (int(tokens.mask.sum()), 64)
    full = tiny_hf.capture(tokens.input_ids, ["resid_post.1"])["resid_post.1"]
    assert torch.equal(rows, full[tokens.mask])


def test_sparsity_sweep_on_a_tiny_model(tiny_hf, tokens, tmp_path):
    saes = {"mp": make_sae("matching_pursuit", 64, 128, k=4, seed=0),
            "topk": make_sae("topk", 64, 128, k=4, seed=1),
            "btk": make_sae("batchtopk", 64, 128, k=4, seed=2)}
    calib = capture_rows(tiny_hf, tokens, "resid_post.1")
    cfg = SweepConfig(ks=(2, 4, 8), threshold_ks=(2, 4), max_steps=16)
    res = sparsity_sweep(tiny_hf, saes, "resid_post.1", tokens, calib, cfg, batch_size=4)
    by = {(p.sae, p.mode, p.k): p for p in res.points}
    assert len(res.points) == (1 + 3 + 2) + (1 + 3) + (1 + 3)
    # The MP SAE at its training k is the trained SAE: same encode, same numbers.
    assert by[("mp", "k", 4)].fvu == by[("mp", "trained", 4)].fvu
    assert by[("mp", "k", 4)].delta_ce == by[("mp", "trained", 4)].delta_ce
    # More pursuit steps never raise any token's error, so the pooled FVU cannot rise either.
    fvus = [by[("mp", "k", k)].fvu for k in (2, 4, 8)]
    assert fvus[0] >= fvus[1] * (1 - 1e-6) and fvus[1] >= fvus[2] * (1 - 1e-6)
    assert by[("topk", "k", 8)].l0 <= 8 and by[("topk", "k", 2)].l0 <= 2
    assert by[("mp", "threshold", 4)].mean_steps is not None
    assert set(res.stopping) == {"mp eps_k2", "mp eps_k4"}
    assert sum(res.stopping["mp eps_k2"]) == res.eval_tokens == int(tokens.mask.sum())
    assert "stopping step p10/p50/p90" in res.table()
    res.plot(tmp_path / "a.png")
    assert (tmp_path / "a.png").stat().st_size > 10_000
    json.dumps(res.to_dict())
    with pytest.raises(ValueError, match="supported"):
        sparsity_sweep(tiny_hf, {"s": make_sae("standard", 64, 128, seed=0)}, "resid_post.1", tokens, calib, cfg)


def test_sweep_config_validation():
    with pytest.raises(ValueError, match="SweepConfig.ks"):
        SweepConfig(ks=(0, 4))
    with pytest.raises(ValueError, match="exceeds max_steps"):
        SweepConfig(threshold_ks=(64,), max_steps=32)


def test_sweep_runs_one_clean_forward_per_batch_for_every_setting(tiny_hf, tokens):
    # The point of one evaluate_many call: the embedding and the blocks below the hook run once per batch, however
    # many (SAE, k) variants are scored; only the blocks above the hook rerun per variant.
    saes = {"mp": make_sae("matching_pursuit", 64, 128, k=4, seed=0),
            "topk": make_sae("topk", 64, 128, k=4, seed=1),
            "btk": make_sae("batchtopk", 64, 128, k=4, seed=2)}
    rows = capture_rows(tiny_hf, tokens, "resid_post.1")
    calls = {"embed": 0, "block0": 0, "block2": 0}

    def counter(key):
        def hook(module, args, output):
            calls[key] += 1
        return hook

    handles = [tiny_hf.model.get_input_embeddings().register_forward_hook(counter("embed")),
               tiny_hf.layers[0].register_forward_hook(counter("block0")),
               tiny_hf.layers[2].register_forward_hook(counter("block2"))]
    try:
        cfg = SweepConfig(ks=(2, 4, 8, 16), threshold_ks=(2, 4), max_steps=16)
        res = sparsity_sweep(tiny_hf, saes, "resid_post.1", tokens, rows, cfg, eval_rows=rows, batch_size=4)
    finally:
        for h in handles:
            h.remove()
    n_batches = 2  # 8 sequences, 4 per forward
    assert len(res.points) == (1 + 4 + 2) + (1 + 4) + (1 + 4) == 17
    assert calls["embed"] == calls["block0"] == n_batches
    # Above the hook: the clean pass, each variant's splice, one zero-ablation and one mean-ablation per batch.
    assert calls["block2"] == n_batches * (1 + len(res.points) + 1 + 1)


def test_activation_sweep_matches_the_lm_sweep_on_the_same_rows(tiny_hf, tokens):
    saes = {"mp": make_sae("matching_pursuit", 64, 128, k=4, seed=0),
            "topk": make_sae("topk", 64, 128, k=4, seed=1),
            "btk": make_sae("batchtopk", 64, 128, k=4, seed=2)}
    rows = capture_rows(tiny_hf, tokens, "resid_post.1")
    cfg = SweepConfig(ks=(2, 8), threshold_ks=(2,), max_steps=16)
    lm = sparsity_sweep(tiny_hf, saes, "resid_post.1", tokens, rows, cfg, eval_rows=rows, batch_size=4)
    acts = activation_sweep(saes, "resid_post.1", rows, rows, cfg, chunk=50)
    assert [(p.sae, p.mode, p.k) for p in acts.points] == [(p.sae, p.mode, p.k) for p in lm.points]
    assert acts.stopping == lm.stopping and acts.eval_tokens == lm.eval_tokens
    for a, b in zip(acts.points, lm.points):
        # Same codes; the sums run in another order and precision (float64 here), hence the tolerance.
        assert a.fvu == pytest.approx(b.fvu, rel=1e-4) and a.l0 == pytest.approx(b.l0, abs=1e-9)
        assert a.dead_frac == pytest.approx(b.dead_frac, abs=1e-9) and a.mean_steps == b.mean_steps
        assert math.isnan(a.delta_ce) and math.isnan(a.recaptured_zero)
    with pytest.raises(ValueError, match="rows must be"):
        activation_sweep(saes, "resid_post.1", rows[:1], rows, cfg)
