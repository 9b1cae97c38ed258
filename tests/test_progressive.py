"""Progressive coding helpers: importance, power-law fit, RSA, pruning and Matryoshka sweeps."""

from __future__ import annotations

import pytest
import torch

from sae_hooks.progressive import fit_power_law, latent_importance, matryoshka_sweep, prune_sweep, rsa
from sae_hooks.sae import make_sae


def test_importance_matches_its_definition():
    sae = make_sae("topk", 16, 48, k=4, seed=0)
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.5, 2.0, 48)[:, None])
    x = torch.randn(100, 16, generator=torch.Generator().manual_seed(0))
    imp = latent_importance(sae, x, batch=33)
    z = sae.encode(x)
    assert torch.allclose(imp.importance, (z * sae.W_dec.norm(dim=-1)).pow(2).mean(0), rtol=1e-5, atol=1e-7)
    assert torch.allclose(imp.frequency, (z != 0).float().mean(0))
    assert imp.frequency.sum().item() == pytest.approx(4.0)


def test_power_law_recovers_exponent():
    v = 3.0 * torch.arange(1, 201, dtype=torch.float64) ** -1.5
    fit = fit_power_law(v[torch.randperm(200)])
    assert fit.exponent == pytest.approx(1.5, abs=1e-9) and fit.r2 == pytest.approx(1.0)
    noisy = fit_power_law(torch.rand(200, generator=torch.Generator().manual_seed(0)))
    assert noisy.r2 < 0.99
    with pytest.raises(ValueError, match="at least 3"):
        fit_power_law(torch.tensor([1.0, 0.0]))


def test_rsa_properties():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(30, 8, generator=g)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))
    assert rsa(a, a) == pytest.approx(1.0)
    assert rsa(a, 3 * a @ q + 1) == pytest.approx(1.0)  # distances only: rotation, scale, shift
    assert abs(rsa(a, torch.randn(30, 8, generator=g))) < 0.5
    with pytest.raises(ValueError):
        rsa(a, a[:10])


def test_sweeps_on_tiny_model(tiny_hf, tiny_ids):
    acts = tiny_hf.capture(tiny_ids, ["resid_post.1"])["resid_post.1"][:, 1:].reshape(-1, 64)
    sae = make_sae("topk", 64, 96, k=8, seed=0)
    imp = latent_importance(sae, acts)
    res = prune_sweep(tiny_hf, sae, tiny_ids, [8, 32, 96], imp.importance, hook="resid_post.1")
    assert [g for g, _ in res] == [8, 32, 96] and [r.d_sae for _, r in res] == [8, 32, 96]
    from sae_hooks.evaluate import evaluate

    full = evaluate(tiny_hf, sae, tiny_ids, hook="resid_post.1")  # G = d_sae is a mere permutation
    assert res[-1][1].fvu == pytest.approx(full.fvu, rel=1e-5) and res[-1][1].ce_spliced == pytest.approx(full.ce_spliced, rel=1e-5)
    mat = make_sae("matryoshka", 64, 96, k=8, widths=(16, 48, 96), seed=0)
    out = matryoshka_sweep(tiny_hf, mat, tiny_ids, hook="resid_post.1")
    assert [w for w, _ in out] == [16, 48, 96] and out[0][1].ce_clean == out[2][1].ce_clean
    with pytest.raises(ValueError, match="outside"):
        prune_sweep(tiny_hf, sae, tiny_ids, [200], imp.importance, hook="resid_post.1")
