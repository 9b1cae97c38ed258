"""Coherence, the Babel function and support coherence against brute force on small dictionaries."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from sae_hooks.geometry import babel, coherence, dictionary_geometry, support_coherence, welch_bound
from sae_hooks.sae import make_sae


def brute_babel(d: torch.Tensor, s: int) -> float:
    d = torch.nn.functional.normalize(d.double(), dim=-1)
    g = (d @ d.T).abs()
    n = d.shape[0]
    best = 0.0
    for j in range(n):
        others = [i for i in range(n) if i != j]
        for subset in itertools.combinations(others, s):
            best = max(best, float(g[j, list(subset)].sum()))
    return best


@pytest.mark.parametrize("seed", [0, 1])
def test_babel_equals_brute_force(seed):
    d = torch.randn(7, 3, generator=torch.Generator().manual_seed(seed))
    mu = babel(d, 8, chunk=3)  # chunks smaller than the dictionary
    for s in range(1, 7):
        assert float(mu[s - 1]) == pytest.approx(brute_babel(d, s), rel=1e-5)
    assert math.isnan(float(mu[6])) and math.isnan(float(mu[7]))  # s >= n: no such Λ
    assert float(mu[0]) == pytest.approx(coherence(d), rel=1e-6)
    assert all(float(mu[i + 1]) >= float(mu[i]) for i in range(5))


def test_orthonormal_and_duplicate_atoms():
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(0)))
    assert coherence(q) < 1e-5
    assert float(babel(q, 4).max()) < 4e-5
    dup = torch.cat([q[:3], q[:1] * 2.5])  # a rescaled copy: same direction
    assert coherence(dup) == pytest.approx(1.0, abs=1e-6)


def test_welch_bound():
    assert welch_bound(10, 20) == 0.0
    assert welch_bound(4608, 576) == pytest.approx(math.sqrt(4032 / (576 * 4607)))
    # The bound holds for any dictionary.
    d = torch.randn(40, 8, generator=torch.Generator().manual_seed(0))
    assert coherence(d) >= welch_bound(40, 8)


def test_support_coherence_by_hand():
    d = torch.randn(7, 3, generator=torch.Generator().manual_seed(0))
    u = torch.nn.functional.normalize(d, dim=-1)
    g = (u @ u.T).abs()
    z = torch.zeros(4, 7)
    z[0, [1, 2]] = 1.0
    z[1, [0, 3, 5]] = torch.tensor([2.0, 0.5, 1.0])
    z[2, 4] = 1.0  # one atom: no pairs, not counted
    mx, mean = support_coherence(z, d)
    t1 = [float(g[0, 3]), float(g[0, 5]), float(g[3, 5])]
    assert mx == pytest.approx((float(g[1, 2]) + max(t1)) / 2, rel=1e-5)
    assert mean == pytest.approx((float(g[1, 2]) + sum(t1) / 3) / 2, rel=1e-5)
    assert all(math.isnan(v) for v in support_coherence(torch.zeros(3, 7), d))


def test_dictionary_geometry_on_an_sae():
    sae = make_sae("topk", 16, 64, k=4, seed=0)
    with torch.no_grad():
        sae.W_dec[:32] = sae.W_dec[32:] * 3.0  # half the atoms repeat the other half (rescaled)
    x = torch.randn(200, 16, generator=torch.Generator().manual_seed(1))
    g = dictionary_geometry(sae, x, s_max=8)
    assert g.n_atoms == 64 and g.d == 16 and len(g.babel) == 8
    assert g.coherence == pytest.approx(1.0, abs=1e-5)
    assert 0 < g.n_selected <= 64 and g.selected_coherence <= g.coherence + 1e-6
    assert g.welch_bound == pytest.approx(welch_bound(64, 16))
    assert 0 < g.random_coherence < 1 and not math.isnan(g.support_max_cos)
    codes = sae.encode(x)
    assert dictionary_geometry(sae, codes=codes, s_max=8) == g
    bare = dictionary_geometry(sae, s_max=8)
    assert bare.n_selected == 0 and math.isnan(bare.support_max_cos)
