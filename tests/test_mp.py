"""MP-SAE: the fast encoder equals the plain loop forward and backward; MP invariants."""

import pytest
import torch

from sae_hooks._native import NATIVE_ENV, load_kernel
from sae_hooks.sae import make_sae
from sae_hooks.sae.pursuit import matching_pursuit, padded_gram


@pytest.fixture(autouse=True, params=["native", "torch"])
def _one_thread(request, monkeypatch):
    """Every test runs on both selection paths: the C kernel and the PyTorch ops."""
    if request.param == "native" and load_kernel("mp_kernel") is None:
        pytest.skip("no C compiler here: the PyTorch path is tested alone")
    monkeypatch.setenv(NATIVE_ENV, "1" if request.param == "native" else "0")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def plain_mp(sae_in, D, k):
    """The textbook loop: k full products D r, autograd through values only."""
    r = sae_in
    z = torch.zeros(sae_in.shape[0], D.shape[0], dtype=D.dtype)
    for _ in range(k):
        with torch.no_grad():
            j = (r @ D.T).relu().max(dim=1).indices
        a = D[j]
        v = (r * a).sum(-1, keepdim=True).relu()
        z = z.scatter_add(1, j[:, None], v)
        r = r - v * a
    return z, r


def _setup(seed, n=48, d_in=24, d_sae=96):
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(d_sae, d_in, generator=g, dtype=torch.float64)
    D /= D.norm(dim=-1, keepdim=True)
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    return D, x


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("use_gram", [True, False])
def test_fast_equals_plain_forward_and_backward(seed, use_gram):
    D, x = _setup(seed)
    k = 12
    D1, x1 = D.clone().requires_grad_(), x.clone().requires_grad_()
    z_ref, r_ref = plain_mp(x1, D1, k)
    (z_ref.pow(2).sum() + r_ref.pow(2).sum()).backward()
    D2, x2 = D.clone().requires_grad_(), x.clone().requires_grad_()
    res = matching_pursuit(x2, D2, k, gram=padded_gram(D) if use_gram else None)
    z = torch.zeros_like(z_ref).scatter_add(1, res.indices, res.values)
    (z.pow(2).sum() + res.residual.pow(2).sum()).backward()
    assert torch.allclose(z, z_ref, atol=1e-10)
    assert torch.allclose(res.residual, r_ref, atol=1e-10)
    assert torch.allclose(D2.grad, D1.grad, atol=1e-9)
    assert torch.allclose(x2.grad, x1.grad, atol=1e-9)


def test_duplicate_selection_accumulates():
    # Two nearly parallel atoms: MP bounces between them and reselects.
    D = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6]], dtype=torch.float64)
    x = torch.tensor([[2.0, 1.0]], dtype=torch.float64)
    res = matching_pursuit(x, D, 6)
    assert res.indices[0].unique().numel() < 6  # some atom was chosen twice
    z_ref, r_ref = plain_mp(x, D, 6)
    z = torch.zeros(1, 3, dtype=torch.float64).scatter_add(1, res.indices, res.values)
    assert torch.allclose(z, z_ref) and torch.allclose(res.residual, r_ref)


@pytest.mark.parametrize("seed", range(3))
def test_residual_monotone_and_xhat_is_x_minus_r(seed):
    sae = make_sae("matching_pursuit", 24, 96, k=10, seed=seed)
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.3)
    x = torch.randn(50, 24, generator=torch.Generator().manual_seed(seed))
    res = sae.pursue(x)
    steps = res.norms.diff(dim=1)
    assert (steps <= 1e-6).all()
    # each step lowers ‖r‖² by v² exactly (unit atoms)
    assert torch.allclose(res.norms[:, :-1] ** 2 - res.norms[:, 1:] ** 2, res.values ** 2, atol=1e-4)
    x_hat = sae(x).x_hat
    assert torch.allclose(x_hat, x - res.residual, atol=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_k1_equals_topk1_projection(seed):
    mp = make_sae("matching_pursuit", 24, 96, k=1, seed=seed, apply_b_dec_to_input=True)
    topk = make_sae("topk", 24, 96, k=1, seed=seed)
    with torch.no_grad():  # same dictionary, tied encoder, no encoder bias
        topk.W_enc.copy_(mp.W_dec.T)
        topk.W_dec.copy_(mp.W_dec)
        topk.b_enc.zero_()
        b = torch.randn(24, generator=torch.Generator().manual_seed(9))
        mp.b_dec.copy_(b)
        topk.b_dec.copy_(b)
    x = torch.randn(40, 24, generator=torch.Generator().manual_seed(seed + 7))
    assert torch.allclose(mp.encode(x), topk.encode(x), atol=1e-6)
    assert torch.allclose(mp(x).x_hat, topk(x).x_hat, atol=1e-6)


def test_adaptive_inference_threshold_and_k():
    sae = make_sae("matching_pursuit", 24, 96, k=8, seed=0)
    x = torch.randn(64, 24, generator=torch.Generator().manual_seed(1))
    l0 = lambda z: (z != 0).sum(-1).float().mean().item()  # noqa: E731
    z8, z20 = sae.encode(x), sae.encode(x, k=20)
    assert l0(z20) > l0(z8)
    res = sae.pursue(x, k=40, residual_threshold=2.0)
    final = res.norms.gather(1, (res.values > 0).sum(-1, keepdim=True).clamp(max=40))
    stopped = (res.values[:, -1] == 0)
    assert (final[stopped] < 2.0 + 1e-6).all()
    assert stopped.any()
    dup = sae.pursue(x, k=40, stop_on_duplicate_support=True)
    assert (dup.values > 0).sum(-1).float().mean() < 40


def test_training_runs_fixed_k_and_renormalises():
    sae = make_sae("matching_pursuit", 24, 96, k=6, seed=0, residual_threshold=100.0)
    x = torch.randn(64, 24)
    out = sae.training_loss(x)  # ignores the inference threshold: always k steps
    assert float(out.l0) > 1
    out.loss.backward()
    torch.optim.SGD(sae.parameters(), lr=0.1).step()
    sae.after_step(out)
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(96), atol=1e-6)
    assert sae.gram() is not None  # rebuilt for the new dictionary
    assert torch.allclose(sae.gram()[:, :96], sae.W_dec @ sae.W_dec.T, atol=1e-6)


def test_fold_input_scale_rescales_codes():
    sae = make_sae("matching_pursuit", 24, 96, k=6, seed=0)
    with torch.no_grad():
        sae.b_dec.normal_()
    x = torch.randn(16, 24)
    z_scaled, xh_scaled = sae.encode(3 * x), sae(3 * x).x_hat
    sae.fold_input_scale(3.0)
    assert torch.allclose(sae.encode(x), z_scaled / 3, atol=1e-5)
    assert torch.allclose(sae(x).x_hat, xh_scaled / 3, atol=1e-5)


def _plain_codes_grads(x, D, k, loss):
    D1, x1 = D.clone().requires_grad_(), x.clone().requires_grad_()
    z, r = plain_mp(x1, D1, k)
    loss(z, r).backward()
    return z.detach(), r.detach(), D1.grad, x1.grad


def _fast_codes_grads(x, D, k, loss, gram):
    D2, x2 = D.clone().requires_grad_(), x.clone().requires_grad_()
    res = matching_pursuit(x2, D2, k, gram=gram)
    z = torch.zeros(x.shape[0], D.shape[0], dtype=D.dtype).scatter_add(1, res.indices, res.values)
    loss(z, res.residual).backward()
    return z.detach(), res.residual.detach(), D2.grad, x2.grad


LOSSES = {
    "residual only": lambda z, r: r.pow(2).sum(),  # the training loss: no gradient on values
    "codes only": lambda z, r: (z * torch.linspace(-1, 1, z.shape[1], dtype=z.dtype)).pow(2).sum(),
    "both": lambda z, r: z.pow(2).sum() + (r * r.flip(0)).sum(),
}


@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("use_gram", [True, False])
def test_backward_equals_plain_for_each_output(loss, use_gram):
    D, x = _setup(11, n=64)
    ref = _plain_codes_grads(x, D, 10, LOSSES[loss])
    got = _fast_codes_grads(x, D, 10, LOSSES[loss], padded_gram(D) if use_gram else None)
    for a, b in zip(got, ref):
        assert torch.allclose(a, b, atol=1e-9)


@pytest.mark.parametrize("use_gram", [True, False])
def test_reselected_atoms_backward_equals_plain(use_gram):
    # Few atoms, many steps: most tokens reselect atoms, so gradients of one atom add up
    # over several steps (and the Gram/SDDMM path sees duplicate entries).
    D, x = _setup(3, n=40, d_in=6, d_sae=9)
    ref = _plain_codes_grads(x, D, 14, LOSSES["both"])
    res = matching_pursuit(x, D, 14)
    assert (res.indices.sort(-1).values.diff(dim=-1) == 0).any(-1).float().mean() > 0.9
    got = _fast_codes_grads(x, D, 14, LOSSES["both"], padded_gram(D) if use_gram else None)
    for a, b in zip(got, ref):
        assert torch.allclose(a, b, atol=1e-9)


def test_exact_ties_pick_the_first_atom_like_the_reference():
    # Atom 70 duplicates atom 3 and atom 50 duplicates atom 20: their correlations tie
    # exactly at every step; the reference `max` takes the first index.
    D, x = _setup(5)
    D[70], D[50] = D[3], D[20]
    x[:10] = 2.0 * D[3] + 0.5 * D[20] + 0.01 * x[:10]
    z_ref, r_ref = plain_mp(x, D, 8)
    res = matching_pursuit(x, D, 8, gram=padded_gram(D))
    assert not ((res.indices == 70) | (res.indices == 50)).any()
    z = torch.zeros_like(z_ref).scatter_add(1, res.indices, res.values)
    assert torch.equal(z != 0, z_ref != 0) and torch.allclose(z, z_ref, atol=1e-12)


def test_residual_reaching_zero_stays_cheap_and_close():
    # Tokens that are exact multiples of atoms: after one step every correlation is
    # rounding noise, so every atom ties. The fallback settles these rows with the full
    # product (bounded memory) instead of dotting every atom in the band.
    D, x = _setup(6, n=30)
    x[:20] = 3.0 * D[:20]
    z_ref, r_ref = plain_mp(x, D, 6)
    res = matching_pursuit(x, D, 6, gram=padded_gram(D))
    z = torch.zeros_like(z_ref).scatter_add(1, res.indices, res.values)
    assert torch.allclose(z, z_ref, atol=1e-9) and torch.allclose(res.residual, r_ref, atol=1e-9)
    assert torch.equal(res.indices[:20, 0], torch.arange(20))


@pytest.mark.parametrize("stop", [{}, {"residual_threshold": 2.5}, {"stop_on_duplicate_support": True}])
def test_row_shards_in_threads_equal_one_thread(monkeypatch, stop):
    import sae_hooks.sae.pursuit as pursuit

    monkeypatch.setattr(pursuit, "_CHUNK", 16)  # 100 rows: 7 chunks over 2 thread shards
    D, x = _setup(8, n=100)
    gram = padded_gram(D)
    one = matching_pursuit(x, D, 12, gram=gram, **stop)
    torch.set_num_threads(2)
    two = matching_pursuit(x, D, 12, gram=gram, **stop)
    assert torch.get_num_threads() == 2
    seen = []  # a thread started afterwards still gets the caller's setting
    t = __import__("threading").Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert seen == [2]
    for a, b in zip(one, two):
        assert torch.equal(a, b)
    if not stop:
        z_ref, _ = plain_mp(x, D, 12)
        z = torch.zeros_like(z_ref).scatter_add(1, two.indices, two.values)
        assert torch.allclose(z, z_ref, atol=1e-10)


def test_thread_shards_under_inference_mode(monkeypatch):
    """The live stream and evaluation run under torch.inference_mode, which is per thread like grad mode."""
    import sae_hooks.sae.pursuit as pursuit

    monkeypatch.setattr(pursuit, "_CHUNK", 16)
    D, x = _setup(8, n=100)
    torch.set_num_threads(2)
    ref = matching_pursuit(x, D, 12, gram=padded_gram(D))
    with torch.inference_mode():
        got = matching_pursuit(x.clone(), D.clone(), 12, gram=padded_gram(D))
    for a, b in zip(ref, got):
        assert torch.equal(a, b)


def test_norms_follow_the_values_without_stopping_rules():
    D, x = _setup(9)
    res = matching_pursuit(x, D, 10, gram=padded_gram(D))
    assert torch.allclose(res.norms[:, 0], x.norm(dim=-1))
    assert torch.allclose(res.norms[:, -1], res.residual.norm(dim=-1), atol=1e-9)
    assert (res.norms.diff(dim=1) <= 0).all()


def test_training_l0_counts_distinct_atoms_like_encode():
    sae = make_sae("matching_pursuit", 6, 9, k=8, seed=0)  # tiny dictionary: reselections
    x = torch.randn(200, 6, generator=torch.Generator().manual_seed(4))
    out = sae.training_loss(x)
    assert float(out.l0) == pytest.approx((sae.encode(x) != 0).sum(-1).float().mean().item())
    assert float(out.l0) < 8


def test_training_step_emits_no_sparse_warnings():
    # PyTorch warns once per process when a CSR tensor is first built: check a fresh one.
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from sae_hooks.sae import make_sae\n"
        "for arch in ('matching_pursuit', 'topk', 'batchtopk'):\n"
        "    sae = make_sae(arch, 16, 64, k=4, seed=0)\n"
        "    sae.training_loss(torch.randn(32, 16)).loss.backward()\n"
    )
    out = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_gram_rebuild_writes_into_the_old_matrix_and_is_current(dtype):
    sae = make_sae("matching_pursuit", 16, 64, k=4, seed=0)
    g1 = sae.gram(dtype)
    ptr = g1.data_ptr()
    with torch.no_grad():
        sae.W_dec.mul_(0.5).add_(0.01)  # an optimiser step changes W_dec in place
    g2 = sae.gram(dtype)
    assert g2.data_ptr() == ptr  # no fresh allocation per training step
    D = sae.W_dec.detach().to(dtype or torch.float32)
    assert torch.equal(g2, D @ D.T)
    assert sae.gram(dtype) is g2  # unchanged W_dec: cached
    # A graph that saved the previous matrix refuses to use the rewritten one.
    D0 = sae.W_dec.detach().clone().requires_grad_(True)
    res = matching_pursuit(torch.randn(8, 16), D0, 4, gram=sae.gram())
    with torch.no_grad():
        sae.W_dec.mul_(0.9)
    sae.gram()
    if not res.values.requires_grad:
        return
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        res.values.sum().backward()
