"""The C matching-pursuit kernel: same pursuit as the PyTorch path in fp32, and a clean fallback."""

import os
import warnings

import pytest
import torch

import sae_hooks._native as native
from sae_hooks.sae.pursuit import matching_pursuit, padded_gram

needs_kernel = pytest.mark.skipif(native.load_kernel("mp_kernel") is None, reason="no C compiler here")


def _dictionary(seed, n=400, d_in=64, d_sae=520):
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(d_sae, d_in, generator=g)
    D /= D.norm(dim=-1, keepdim=True)
    x = torch.randn(n, d_in, generator=g) * 3
    return D, x


def _both(monkeypatch, *args, **kw):
    out = {}
    for env in ("1", "0"):
        monkeypatch.setenv(native.NATIVE_ENV, env)
        out[env] = matching_pursuit(*args, **kw)
    return out["1"], out["0"]


@needs_kernel
@pytest.mark.parametrize("stop", [{}, {"residual_threshold": 8.0}, {"stop_on_duplicate_support": True}])
@pytest.mark.parametrize("threads", [1, 2])
def test_kernel_matches_torch_path_in_fp32(monkeypatch, stop, threads):
    # d_sae 520 is not a multiple of the argmax block: the Gram matrix carries padding columns.
    D, x = _dictionary(threads)
    n = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fast, ref = _both(monkeypatch, x, D, 24, gram=padded_gram(D), **stop)
    finally:
        torch.set_num_threads(n)
    assert torch.equal(fast.indices, ref.indices)
    torch.testing.assert_close(fast.values, ref.values, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.residual, ref.residual, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.norms, ref.norms, rtol=1e-5, atol=1e-5)
    if stop:  # the stopping rules really stopped some tokens early
        assert bool((fast.values == 0).any())


@needs_kernel
def test_kernel_gradients_match_torch_path(monkeypatch):
    D, x = _dictionary(3, n=64)
    grads = []
    for env in ("1", "0"):
        monkeypatch.setenv(native.NATIVE_ENV, env)
        Dg, xg = D.clone().requires_grad_(), x.clone().requires_grad_()
        res = matching_pursuit(xg, Dg, 16, gram=padded_gram(D))
        (res.values.square().sum() + res.residual.square().sum()).backward()
        grads.append((Dg.grad, xg.grad))
    for a, b in zip(*grads):  # values differ by fp32 summation order (~1e-7), gradients follow
        assert float((a - b).abs().max() / b.abs().max()) < 1e-5


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2])
def test_kernel_gradient_rows_of_unchosen_atoms_are_zero(monkeypatch, threads):
    # The kernel's gradient buffer starts uninitialised: rows are assigned on their first write and
    # the rows no token chose are zeroed afterwards, per shard (600 tokens: 2 shards on 2 threads).
    D, x = _dictionary(5, n=600, d_sae=2048)
    n = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        grads = []
        for env in ("1", "0"):
            monkeypatch.setenv(native.NATIVE_ENV, env)
            # Freed NaN blocks of the gradient's size, so that the kernel's empty buffer likely reuses one.
            del_me = torch.full((threads, *D.shape), float("nan"))
            del del_me
            Dg = D.clone().requires_grad_()
            res = matching_pursuit(x, Dg, 3, gram=padded_gram(D))
            res.residual.square().sum().backward()
            grads.append(Dg.grad)
            chosen = torch.zeros(D.shape[0], dtype=torch.bool)
            chosen[res.indices[res.values > 0]] = True
    finally:
        torch.set_num_threads(n)
    fast, ref = grads
    assert int((~chosen).sum()) > 100  # many atoms were never chosen
    assert torch.equal(fast[~chosen], torch.zeros_like(fast[~chosen]))
    assert float((fast - ref).abs().max() / ref.abs().max()) < 1e-5


def test_without_a_compiler_the_torch_path_runs_with_one_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("SAE_HOOKS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(native, "_loaded", {})
    with pytest.warns(RuntimeWarning, match="mp_kernel.*unavailable.*PyTorch path"):
        assert native.load_kernel("mp_kernel") is None
    D, x = _dictionary(4, n=32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per process, not at every call
        res = matching_pursuit(x, D, 8, gram=padded_gram(D))
    assert not list((tmp_path / "cache").rglob("*.so"))
    x_hat = x - res.residual
    assert torch.allclose(res.norms[:, -1], res.residual.norm(dim=-1), atol=1e-4)
    assert float((x - x_hat).norm()) < float(x.norm())


@needs_kernel
def test_kernel_is_built_once_and_reused(monkeypatch, tmp_path):
    monkeypatch.setenv("SAE_HOOKS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(native, "_loaded", {})
    assert native.load_kernel("mp_kernel") is not None
    (so,) = (tmp_path / "cache" / "kernels").glob("mp_kernel-*.so")
    stamp = so.stat().st_mtime_ns
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(native, "_build", lambda *a: pytest.fail("rebuilt a cached kernel"))
    assert native.load_kernel("mp_kernel") is not None
    assert so.stat().st_mtime_ns == stamp
    assert not list(so.parent.glob("*.tmp"))


def test_native_env_switch(monkeypatch):
    monkeypatch.setenv(native.NATIVE_ENV, "0")
    assert native.load_kernel("mp_kernel") is None and not native.native_enabled()


@needs_kernel
def test_bf16_autocast_training_uses_bf16_correlations_and_stays_close(monkeypatch):
    from sae_hooks.sae import make_sae

    g = torch.Generator().manual_seed(7)
    x = torch.randn(512, 64, generator=g) * 2
    out = {}
    for mode in ("fp32", "bf16"):
        sae = make_sae("matching_pursuit", 64, 520, k=12, seed=0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
            res = sae.training_loss(x)
        res.loss.backward()
        out[mode] = (float(res.loss.detach()), sae.W_dec.grad.clone(), res.x_hat, sae._gram.dtype)
    assert out["fp32"][3] == torch.float32 and out["bf16"][3] == torch.bfloat16
    assert out["bf16"][2].dtype == torch.float32
    # bf16 correlations flip some near-tied choices; the pursuit's quality and direction hold.
    assert out["bf16"][0] == pytest.approx(out["fp32"][0], rel=0.02)
    cos = torch.nn.functional.cosine_similarity(out["bf16"][1].flatten(), out["fp32"][1].flatten(), dim=0)
    assert float(cos) > 0.9
    D = sae.W_dec.detach()
    exact = matching_pursuit(x, D, 12, gram=padded_gram(D))
    fast = matching_pursuit(x, D, 12, gram=padded_gram(D, torch.bfloat16))
    assert float((exact.indices == fast.indices).float().mean()) > 0.9
    assert bool((fast.norms[:, 1:] <= fast.norms[:, :-1] + 1e-5).all())  # still a monotone pursuit
    torch.testing.assert_close(fast.norms[:, -1], fast.residual.norm(dim=-1), rtol=1e-4, atol=1e-4)


def test_bf16_autocast_without_the_kernel_selects_exactly(monkeypatch):
    from sae_hooks.sae import make_sae

    monkeypatch.setenv(native.NATIVE_ENV, "0")
    sae = make_sae("matching_pursuit", 32, 128, k=6, seed=0)
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res = sae.training_loss(x)
    assert sae._gram.dtype == torch.float32
    torch.testing.assert_close(res.x_hat, sae(x).x_hat, rtol=1e-5, atol=1e-5)


@needs_kernel
@pytest.mark.parametrize("gram_dtype", [torch.float32, torch.bfloat16])
def test_portable_loops_match_the_avx512_ones(monkeypatch, tmp_path, gram_dtype):
    """A CPU without AVX-512 compiles the portable C loops: the same pursuit."""
    D, x = _dictionary(9, n=200)
    gram = padded_gram(D, gram_dtype)
    default = matching_pursuit(x, D, 16, gram=gram)
    monkeypatch.setenv(native.CFLAGS_ENV, "-mno-avx512f")
    monkeypatch.setenv("SAE_HOOKS_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "_loaded", {})
    assert native.load_kernel("mp_kernel") is not None
    portable = matching_pursuit(x, D, 16, gram=gram)
    assert torch.equal(portable.indices, default.indices)
    torch.testing.assert_close(portable.values, default.values, rtol=1e-5, atol=1e-5)


def test_tune_malloc_sets_glibc_thresholds_and_can_be_switched_off(monkeypatch):
    import subprocess
    import sys

    from sae_hooks._malloc import MALLOC_ENV, tune_malloc

    monkeypatch.setenv(MALLOC_ENV, "0")
    assert tune_malloc() is False
    # In a fresh process (the setting is process-wide): mallopt accepts both thresholds on glibc.
    code = "from sae_hooks._malloc import tune_malloc; print(tune_malloc())"
    env = {k: v for k, v in os.environ.items() if k != MALLOC_ENV}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    import platform

    assert out.strip() == str(sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc")


def test_cli_train_tunes_malloc_before_the_run(monkeypatch):
    import sae_hooks._malloc as m
    import sae_hooks.cli.train as cli_train

    calls = []
    monkeypatch.setattr(m, "tune_malloc", lambda: calls.append("tune") or True)
    monkeypatch.setattr(cli_train, "execute", lambda args: calls.append("execute") or {})
    cli_train.run(None)
    assert calls == ["tune", "execute"]
