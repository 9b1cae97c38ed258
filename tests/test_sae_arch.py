"""Properties every architecture must have, on tiny random SAEs (seeded, several seeds)."""

import dataclasses

import pytest
import torch

from sae_hooks.sae import ARCHITECTURES, load_sae, make_sae

D_IN, D_SAE = 32, 128
KW = {
    "standard": {},
    "topk": {"k": 6},
    "batchtopk": {"k": 6},
    "jumprelu": {},
    "matryoshka": {"k": 6, "widths": (16, 64, 128)},
    "matching_pursuit": {"k": 6},
}
SEEDS = [0, 1, 2]


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny tensors: one thread avoids OpenMP wake-up costs on a shared 2-core box.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _sae(arch, seed=0):
    sae = make_sae(arch, D_IN, D_SAE, seed=seed, **KW[arch])
    with torch.no_grad():  # non-trivial biases and thresholds so the checks bite
        g = torch.Generator().manual_seed(seed + 100)
        sae.b_dec.copy_(0.1 * torch.randn(D_IN, generator=g))
        if not sae.tied:
            sae.b_enc.copy_(0.1 * torch.randn(D_SAE, generator=g))
        if arch == "jumprelu":
            sae.threshold.copy_(0.2 * torch.rand(D_SAE, generator=g))
        if arch in ("batchtopk", "matryoshka"):
            sae.set_threshold(0.3)
    return sae


def _x(seed, n=40):
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed))


def test_table_is_explicit_and_complete():
    assert set(ARCHITECTURES) == set(KW)
    for name, cls in ARCHITECTURES.items():
        assert cls.architecture == name == cls.config_class.architecture


@pytest.mark.parametrize("arch", sorted(KW))
@pytest.mark.parametrize("seed", SEEDS)
def test_forward_is_decode_of_encode(arch, seed):
    sae, x = _sae(arch, seed), _x(seed)
    out = sae(x)
    assert torch.equal(out.z, sae.encode(x))
    assert torch.equal(out.x_hat, sae.decode(sae.encode(x)))
    assert out.z.shape == (40, D_SAE) and out.x_hat.shape == x.shape
    # Leading dims are kept.
    assert sae.encode(x.view(4, 10, D_IN)).shape == (4, 10, D_SAE)


@pytest.mark.parametrize("arch", sorted(KW))
def test_save_load_bit_identical(arch, tmp_path):
    sae, x = _sae(arch), _x(0)
    sae.save(tmp_path / "s", metadata={"hook_name": "blocks.1.hook_resid_post"})
    back = load_sae(tmp_path / "s")
    assert type(back) is type(sae)
    assert back.cfg == sae.cfg
    assert back.metadata["hook_name"] == "blocks.1.hook_resid_post"
    for name, p in sae.state_dict().items():
        assert torch.equal(p, back.state_dict()[name]), name
    assert torch.equal(back(x).x_hat, sae(x).x_hat)
    assert torch.equal(back.encode(x), sae.encode(x))


@pytest.mark.parametrize("seed", SEEDS)
def test_topk_l0_is_k(seed):
    sae = _sae("topk", seed)
    z = sae.encode(_x(seed) * 3)
    assert ((z != 0).sum(-1) <= 6).all()
    # With ReLU'd top-k only non-positive pre-activations can drop out; bias them up.
    with torch.no_grad():
        sae.b_enc.fill_(10.0)
    z = sae.encode(_x(seed))
    assert ((z != 0).sum(-1) == 6).all()
    out = sae.training_loss(_x(seed))
    assert float(out.l0) == 6.0
    assert torch.equal(out.fired, (sae.encode(_x(seed)) != 0).any(0))  # fired = latents non-zero on some token


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka"])
@pytest.mark.parametrize("seed", SEEDS)
def test_sparse_training_path_matches_dense(arch, seed):
    x = _x(seed, 64)
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[::3] = True
    grads = []
    for sparse in (True, False):
        sae = _sae(arch, seed)
        out = sae.training_loss(x, dead, sparse=sparse)
        out.loss.backward()
        grads.append((out.loss.detach(), {n: p.grad.clone() for n, p in sae.named_parameters()},
                      out.parts))
    (ls, gs, ps), (ld, gd, pd) = grads
    assert torch.allclose(ls, ld, rtol=1e-5, atol=1e-5)
    assert set(ps) == set(pd) and "auxk" in ps
    for name in gd:
        assert torch.allclose(gs[name], gd[name], rtol=1e-4, atol=1e-5), name


def test_auxk_trains_only_dead_latents_encoder_columns():
    sae, x = _sae("topk"), _x(0, 64)
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[:10] = True
    out = sae.training_loss(x, dead)
    assert float(out.parts["auxk"]) > 0
    out.loss.backward()
    assert sae.W_enc.grad[:, :10].abs().sum() > 0  # AuxK reached the dead latents
    # Without dead latents there is no AuxK term and the gradient of unselected columns is 0.
    sae.zero_grad()
    out = sae.training_loss(x)
    assert "auxk" not in out.parts
    out.loss.backward()
    never = ~out.fired
    assert never.any() and sae.W_enc.grad[:, never].abs().sum() == 0


def test_matryoshka_prefix_uses_only_its_latents():
    sae, x = _sae("matryoshka"), _x(0)
    small = sae.prefix(64)
    assert small.cfg.d_sae == 64 and small.cfg.widths == (16, 64)
    z_full = sae.encode(x)
    # A [40, 64] product against a [40, 128] one: another shape, whose elements may round differently.
    torch.testing.assert_close(small.encode(x), z_full[:, :64], rtol=1e-5, atol=1e-6)
    expected = z_full[:, :64] @ sae.W_dec[:64] + sae.b_dec
    assert torch.allclose(small(x).x_hat, expected, atol=1e-6)
    # Changing latents beyond the prefix does not change the prefix reconstruction.
    with torch.no_grad():
        sae.W_dec[64:] += 1.0
        sae.W_enc[:, 64:] += 1.0
    assert torch.equal(sae.prefix(64)(x).x_hat, small(x).x_hat)
    out = _sae("matryoshka").training_loss(x)
    assert {"mse_w16", "mse_w64", "mse_w128"} <= set(out.parts)


def test_batchtopk_inference_l0_close_to_k_on_heldout():
    torch.manual_seed(0)
    d_in, d_sae, k = 32, 256, 8
    basis = torch.randn(d_sae, d_in)
    def data(n, seed):
        g = torch.Generator().manual_seed(seed)
        codes = torch.rand(n, d_sae, generator=g) * (torch.rand(n, d_sae, generator=g) < 0.03)
        return codes @ basis + 0.05 * torch.randn(n, d_in, generator=g)
    for arch, kw in [("batchtopk", {}), ("matryoshka", {"widths": (64, 256)})]:
        sae = make_sae(arch, d_in, d_sae, k=k, seed=0, **kw)
        sae.init_from_data(data(512, 99))
        opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
        for step in range(60):  # a short run: where SAELens's EMA threshold fails
            out = sae.training_loss(data(256, step))
            opt.zero_grad(); out.loss.backward(); opt.step(); sae.after_step(out)
            assert abs(float(out.l0) - k) < 1e-6 or float(out.l0) <= k
        held = data(2048, 12345)
        l0 = (sae.encode(held) != 0).sum(-1).float().mean().item()
        assert abs(l0 - k) / k < 0.25, (arch, l0)


def test_pruned_keeps_the_chosen_latents():
    for arch in sorted(KW):
        sae, x = _sae(arch), _x(0)
        idx = torch.tensor([5, 1, 77, 3])
        p = sae.pruned(idx)
        assert type(p) is type(sae) and p.cfg.d_sae == 4
        assert torch.equal(p.W_dec, sae.W_dec[idx])
        if arch in ("standard", "jumprelu", "batchtopk"):
            # per-latent activations: pruning = selecting columns of the codes
            assert torch.allclose(p.encode(x), sae.encode(x)[:, idx])


@pytest.mark.parametrize("arch", ["standard", "topk", "batchtopk", "jumprelu"])
def test_fold_input_scale_keeps_codes(arch):
    sae, x = _sae(arch), _x(0)
    s = 3.7
    z_scaled = sae.encode(x * s)
    xh_scaled = sae.decode(z_scaled)
    sae.fold_input_scale(s)
    assert torch.allclose(sae.encode(x), z_scaled, atol=1e-5)
    assert torch.allclose(sae.decode(sae.encode(x)), xh_scaled / s, atol=1e-5)


@pytest.mark.parametrize("arch", sorted(KW))
def test_one_training_step_lowers_loss_and_after_step(arch):
    sae, x = _sae(arch), _x(0, 128)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    first = None
    for _ in range(5):
        out = sae.training_loss(x)
        first = first if first is not None else float(out.loss.detach())
        opt.zero_grad(); out.loss.backward(); opt.step(); sae.after_step(out)
    assert float(sae.training_loss(x).loss.detach()) < first
    assert out.fired.dtype == torch.bool and out.fired.shape == (D_SAE,)
    if arch in ("topk", "batchtopk", "matryoshka", "matching_pursuit"):
        assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(D_SAE), atol=1e-5)


def test_seeded_init_is_reproducible_and_private():
    torch.manual_seed(5)
    before = torch.rand(1)
    a = make_sae("topk", D_IN, D_SAE, k=4, seed=3)
    b = make_sae("topk", D_IN, D_SAE, k=4, seed=3)
    torch.manual_seed(5)
    assert torch.equal(before, torch.rand(1))  # global RNG untouched by seeded builds
    assert torch.equal(a.W_dec, b.W_dec)


def test_configs_are_frozen():
    sae = _sae("topk")
    with pytest.raises(dataclasses.FrozenInstanceError):
        sae.cfg.k = 3


def test_sparse_path_input_gradient_matches_dense():
    grads = []
    for sparse in (True, False):
        sae = _sae("topk")
        x = _x(4, 32).requires_grad_(True)
        sae.training_loss(x, sparse=sparse).loss.backward()
        grads.append(x.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


@pytest.mark.parametrize("arch", sorted(KW))
def test_training_step_under_bf16_autocast(arch):
    """`--autocast bf16`: the dense products (and the TopK family's sparse gathers) run in bf16; the loss,
    parameters and gradients stay fp32."""
    sae, x = _sae(arch), _x(0, 128)
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[:5] = True
    with torch.autocast("cpu", dtype=torch.bfloat16):  # first call: caches (MP's Gram) are built under autocast
        out = sae.training_loss(x, dead)
    ref = float(sae.training_loss(x, dead).loss.detach())
    out.loss.backward()
    assert out.loss.dtype == torch.float32
    assert abs(float(out.loss.detach()) - ref) <= 0.05 * abs(ref)  # bf16 products: ~0.4 % per element
    for name, p in sae.named_parameters():
        if p.grad is not None:
            assert p.grad.dtype == torch.float32 and bool(torch.isfinite(p.grad).all()), name


def test_sparse_decode_gathers_bf16_tables_under_bf16_autocast():
    """Under bf16 autocast the decode and dW_dec gather bf16 copies (what a dense autocast product reads and
    writes); the values' gradient (SDDMM) reads W_dec in fp32. fp16 autocast keeps fp32 tables."""
    from sae_hooks.sae.sparse import dense_codes, sparse_decode, table_dtype

    g = torch.Generator().manual_seed(0)
    n, d_sae, d_in, k = 64, 256, 48, 6
    W = torch.randn(d_sae, d_in, generator=g).requires_grad_(True)
    rows = torch.arange(n).repeat_interleave(k)
    cols = torch.stack([torch.randperm(d_sae, generator=g)[:k] for _ in range(n)]).reshape(-1)
    vals = torch.rand(n * k, generator=g).requires_grad_(True)
    g_out = torch.randn(n, d_in, generator=g)
    out = {}
    for mode, dtype in (("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            assert table_dtype(W) == (torch.bfloat16 if mode == "bf16" else torch.float32)
            y = sparse_decode(rows, cols, vals, W, None, n)
        y.backward(g_out)
        out[mode] = (y.detach(), W.grad, vals.grad)
        W.grad = vals.grad = None
    y16, gW16, gv16 = out["bf16"]
    assert y16.dtype == gW16.dtype == torch.float32
    assert torch.equal(y16, y16.bfloat16().float())  # each sum rounded to bf16, as an autocast product's output
    assert not torch.equal(y16, out["fp32"][0])
    rounded = dense_codes(rows, cols, vals.detach().bfloat16().float(), n, d_sae) @ W.detach().bfloat16().float()
    torch.testing.assert_close(y16, rounded, rtol=1e-2, atol=1e-2)
    rel = float((gW16 - out["fp32"][1]).norm() / out["fp32"][1].norm())
    assert 0 < rel < 1e-2
    assert torch.equal(gv16, out["fp32"][2])
    assert all(torch.equal(a, b) for a, b in zip(out["fp16"], out["fp32"]))


# ---- sparse training kernels against straightforward dense references ----------------------------


def _reference_loss(sae, x, dead):
    """The TopK-family training loss written out densely from the papers, sharing no code with the SAE.

    TopK: each token's k largest pre-activations; BatchTopK / Matryoshka: the B·k largest positive
    pre-activations of the batch; ReLU; MSE (summed over d_in, mean over tokens), for Matryoshka the
    mean over nested prefixes; AuxK: each token's top aux_k dead latents reconstruct the detached
    residual, normalised by its variance, weighted by aux_coef.
    """
    cfg = sae.cfg
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc  # [B, d_sae]
    acts = pre.relu()
    if sae.architecture == "topk":
        keep = torch.zeros_like(pre, dtype=torch.bool).scatter(1, pre.topk(cfg.k, dim=1).indices, True)
    else:
        flat = acts.detach().flatten()
        keep = torch.zeros_like(flat, dtype=torch.bool)
        keep[flat.topk(cfg.k * x.shape[0]).indices] = True
        keep = keep.view_as(pre) & (acts.detach() > 0)
    z = acts * keep
    if sae.architecture == "matryoshka":
        mses = [((z[:, :w] @ sae.W_dec[:w] + sae.b_dec - x) ** 2).sum(1).mean() for w in cfg.widths]
        recon = torch.stack(mses).mean() if cfg.prefix_loss == "mean" else torch.stack(mses).sum()
    else:
        recon = ((z @ sae.W_dec + sae.b_dec - x) ** 2).sum(1).mean()
    x_hat = z @ sae.W_dec + sae.b_dec
    aux_k = min(cfg.aux_k or cfg.d_in // 2, int(dead.sum()))
    masked = pre.detach().masked_fill(~dead, float("-inf"))
    aux_keep = torch.zeros_like(pre, dtype=torch.bool).scatter(1, masked.topk(aux_k, dim=1).indices, True)
    e = (x - x_hat).detach()
    e_hat = (acts * aux_keep) @ sae.W_dec
    aux = ((e_hat - e) ** 2).sum(1).mean() / ((e - e.mean(0)) ** 2).sum(1).mean()
    return recon + cfg.aux_coef * aux


@pytest.mark.parametrize("arch,extra", [("topk", {}), ("batchtopk", {}), ("matryoshka", {}),
                                        ("matryoshka", {"prefix_loss": "sum", "widths": (5, 40, 41, 128)})])
@pytest.mark.parametrize("seed", SEEDS)
# More dead latents than aux_k = d_in // 2 = 16; fewer; and few enough (<= d_sae / 16) for AuxK's small product.
@pytest.mark.parametrize("dead_every", [3, 12, 40])
def test_training_loss_and_gradients_match_a_dense_reference(arch, extra, seed, dead_every):
    """Loss and every parameter's gradient (and the input's) of the sparse training path equal the dense math."""
    x = _x(seed, 64) * 2
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[seed::dead_every] = True
    results = []
    for path in ("sparse", "reference"):
        sae = make_sae(arch, D_IN, D_SAE, seed=seed, **{**KW[arch], **extra})
        with torch.no_grad():
            g = torch.Generator().manual_seed(seed + 100)
            sae.b_dec.copy_(0.1 * torch.randn(D_IN, generator=g))
            sae.b_enc.copy_(0.1 * torch.randn(D_SAE, generator=g))
        xg = x.clone().requires_grad_(True)
        loss = sae.training_loss(xg, dead).loss if path == "sparse" else _reference_loss(sae, xg, dead)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in sae.named_parameters()}, xg.grad))
    (ls, gs, xs), (lr, gr, xr) = results
    torch.testing.assert_close(ls, lr, rtol=1e-5, atol=1e-6)
    for name in gr:
        torch.testing.assert_close(gs[name], gr[name], rtol=1e-4, atol=1e-6, msg=name)
    torch.testing.assert_close(xs, xr, rtol=1e-4, atol=1e-6)


def test_matryoshka_training_outputs_match_its_dense_path():
    """Per-prefix MSEs, x_hat, fired and L0 of the sparse path equal the dense path's."""
    x = _x(3, 64)
    outs = [_sae("matryoshka", 3).training_loss(x, sparse=s) for s in (True, False)]
    for key in ("mse_w16", "mse_w64", "mse_w128", "mse", "l0"):
        torch.testing.assert_close(outs[0].parts[key], outs[1].parts[key], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outs[0].x_hat, outs[1].x_hat, rtol=1e-5, atol=1e-5)
    assert torch.equal(outs[0].fired, outs[1].fired)


@pytest.mark.parametrize("case", ["plain", "concentrated", "few_positive", "all_selected", "bf16"])
def test_topk_batch_is_the_exact_batch_topk(case):
    """`topk_batch` returns exactly the B·k largest positive values (a flat top-k), sorted by (row, col)."""
    from sae_hooks.sae.sparse import topk_batch

    g = torch.Generator().manual_seed(7)
    for trial in range(25):
        small = case == "bf16"  # bf16 holds the integers up to 256 exactly: distinct values, a unique top set
        n_rows = int(torch.randint(1, 16 if small else 400, (1,), generator=g))
        d_sae = int(torch.randint(2, 32 if small else 900, (1,), generator=g))
        k = int(torch.randint(1, min(d_sae, 40) + 1, (1,), generator=g)) if case != "all_selected" else d_sae
        pre = torch.randn(n_rows, d_sae, generator=g, dtype=torch.float64)
        if case == "concentrated":  # a few tokens carry most of the batch's activity
            pre[: max(1, n_rows // 20)] += 6
        if case == "few_positive":
            pre -= 3
        if small:
            pre = (torch.randperm(n_rows * d_sae, generator=g) - n_rows * d_sae // 2).view(n_rows, d_sae)
            pre = pre.to(torch.bfloat16)
        rows, cols, threshold = topk_batch(pre, k)
        flat = pre.relu().flatten().double()
        total = min(k * n_rows, flat.numel())
        vals, idx = flat.topk(total)
        want = idx[vals > 0].sort().values
        got = rows * d_sae + cols
        assert torch.equal(got, want), (trial, n_rows, d_sae, k)
        assert float(threshold) == (float(vals[-1]) if bool(vals[-1] > 0) else 0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_topk_batch_scans_large_blocks_in_parallel_parts_exactly(dtype):
    """A block big enough for the threaded candidate scan (each thread a slice) gives the same
    entries as one thread and as a flat top-k, in (row, col) order."""
    from sae_hooks.sae import sparse

    g = torch.Generator().manual_seed(3)
    pre = torch.randn(1200, 2048, generator=g).to(dtype)  # 2.5M values: two parts on two threads
    pre[:40] += 3  # concentrated activity, as BatchTopK sees it
    assert pre.numel() >= 2 * sparse._PARALLEL_MIN
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        rows, cols, threshold = sparse.topk_batch(pre, 16)
        torch.set_num_threads(1)
        rows1, cols1, threshold1 = sparse.topk_batch(pre, 16)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(rows, rows1) and torch.equal(cols, cols1) and float(threshold) == float(threshold1)
    got = rows * pre.shape[1] + cols
    assert bool((got[1:] > got[:-1]).all())
    vals = pre.flatten().float()[got]
    assert got.numel() == 16 * pre.shape[0] and float(vals.min()) == float(threshold)
    outside = torch.ones(pre.numel(), dtype=torch.bool)
    outside[got] = False
    assert float(pre.flatten().float()[outside].max()) <= float(threshold)


def test_mse_per_token_value_and_gradients():
    """The fused MSE equals (x_hat − x)² summed over d_in and averaged over tokens, with both gradients."""
    from sae_hooks.sae.base import mse_per_token

    g = torch.Generator().manual_seed(0)
    for shape in [(7, 5), (2, 3, 4)]:
        a = torch.randn(shape, generator=g, requires_grad=True)
        b = torch.randn(shape, generator=g, requires_grad=True)
        (3 * mse_per_token(a, b)).backward()
        a2, b2 = a.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
        ref = (a2 - b2).pow(2).sum(-1).mean()
        (3 * ref).backward()
        torch.testing.assert_close(mse_per_token(a, b), ref)
        torch.testing.assert_close(a.grad, a2.grad)
        torch.testing.assert_close(b.grad, b2.grad)
    # Broadcasting falls back to the plain formula.
    torch.testing.assert_close(mse_per_token(torch.ones(4, 3), torch.zeros(3)), torch.tensor(3.0))


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka"])
def test_reused_pre_activation_block_leaves_no_trace(arch):
    """The training step's reused [B, d_sae] block: two losses built before one backward get the same
    gradients as two separate backwards (no graph keeps a view of it), and copies do not carry it."""
    import copy

    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[::5] = True
    x1, x2 = _x(1, 64), _x(2, 48) * 2
    together, apart = _sae(arch), _sae(arch)
    (together.training_loss(x1, dead).loss + together.training_loss(x2, dead).loss).backward()
    apart.training_loss(x1, dead).loss.backward()
    apart.training_loss(x2, dead).loss.backward()
    for (name, p), q in zip(together.named_parameters(), apart.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)
    assert copy.deepcopy(together)._pre_block is None


def test_an_architecture_missing_a_method_cannot_be_built():
    from sae_hooks.sae.base import SAE, SAEConfig

    class NoEncode(SAE):
        def training_loss(self, x, dead_mask=None):
            return None

        def saelens_view(self):
            return {}, {}

    with pytest.raises(TypeError, match="encode"):
        NoEncode(SAEConfig(d_in=4, d_sae=8))


def test_device_and_dtype_properties():
    sae = make_sae("topk", D_IN, D_SAE, k=4, dtype="float64", seed=0)
    assert sae.device == torch.device("cpu") and sae.dtype == torch.float64
    assert make_sae("matching_pursuit", D_IN, D_SAE, k=4).dtype == torch.float32


def test_train_options_come_from_each_class():
    from sae_hooks.sae import train_options

    got = {arch: train_options(arch, 4608, k=32, l1_coef=5.0) for arch in ARCHITECTURES}
    assert got == {"standard": {"l1_coef": 5.0}, "topk": {"k": 32}, "batchtopk": {"k": 32}, "jumprelu": {},
                   "matryoshka": {"k": 32, "widths": (512, 1152, 2304, 4608)}, "matching_pursuit": {"k": 32}}
    for arch in ARCHITECTURES:  # every default set builds an SAE
        make_sae(arch, D_IN, D_SAE, **train_options(arch, D_SAE, k=6, l1_coef=1.0))
    with pytest.raises(ValueError, match="unknown SAE architecture 'gated'"):
        train_options("gated", 16, k=2, l1_coef=1.0)


def test_parse_sae_spec_types_values_by_the_config_fields():
    from sae_hooks.sae import SAESpec, parse_sae_spec

    spec = parse_sae_spec("matryoshka:resid_post.6:d_sae=4608:k=32:widths=512,1152,2304,4608:prefix_loss=sum")
    assert spec == SAESpec("matryoshka", "resid_post.6", 4608,
                           {"k": 32, "widths": (512, 1152, 2304, 4608), "prefix_loss": "sum"})
    spec = parse_sae_spec("topk:blocks.6.hook_resid_post:aux_k=none:aux_coef=0.5:rescale_acts_by_decoder_norm=true")
    assert spec.options == {"aux_k": None, "aux_coef": 0.5, "rescale_acts_by_decoder_norm": True}
    assert type(spec.options["aux_coef"]) is float
    assert parse_sae_spec("jumprelu:resid_post.1:l0_coef=1").options == {"l0_coef": 1.0}
    assert parse_sae_spec("standard:resid_post.1") == SAESpec("standard", "resid_post.1", None, {})
    sae = make_sae("matryoshka", 64, spec.d_sae or 4608, **parse_sae_spec(
        "matryoshka:h:k=4:widths=(512,4608)").options)
    assert sae.cfg.widths == (512, 4608)


@pytest.mark.parametrize("text, message", [
    ("topk", r"expected ARCH:HOOK\[:key=value...\]"),
    ("topk:", r"expected ARCH:HOOK"),
    ("tpk:resid_post.6", r"unknown SAE architecture 'tpk'; valid: \['batchtopk'"),
    ("topk:resid_post.6:kk=3", r"'topk' SAEs have no option 'kk'; valid: \[.*'k'"),
    ("jumprelu:resid_post.6:l1_coef=5", r"'jumprelu' SAEs have no option 'l1_coef'; valid: \[.*'l0_coef'"),
    ("topk:resid_post.6:k=3.5", r"option k='3.5' must be an int"),
    ("topk:resid_post.6:aux_coef=big", r"option aux_coef='big' must be a number"),
    ("topk:resid_post.6:rescale_acts_by_decoder_norm=maybe", r"must be true or false"),
    ("topk:resid_post.6:k", r"option 'k' is not key=value"),
    ("topk:resid_post.6:k=3:k=4", r"option 'k' is given twice"),
    ("topk:resid_post.6:d_in=3", r"no option 'd_in'"),
])
def test_parse_sae_spec_errors_name_the_option_and_the_valid_ones(text, message):
    from sae_hooks.sae import parse_sae_spec

    with pytest.raises(ValueError, match=message):
        parse_sae_spec(text)


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka"])
def test_batchtopk_threshold_update_travels_in_the_train_loss(arch):
    sae = _sae(arch)
    out = sae.training_loss(_x(0))
    assert out.batch_threshold is not None and out.batch_threshold.ndim == 0
    with pytest.raises(ValueError, match=r"after_step needs the step's training_loss result.*after_step\(out\)"):
        sae.after_step()
    before = sae.threshold
    sae.after_step(out)
    d = sae.cfg.threshold_decay  # bias-corrected running mean, started from set_threshold(0.3)
    assert sae.threshold == pytest.approx((d * 0.3 + float(out.batch_threshold)) / (d + 1))
    assert sae.threshold != before
    assert not any(name.startswith("_pending") for name in vars(sae))
    assert _sae("topk").training_loss(_x(0)).batch_threshold is None


def test_inference_variant_names_what_each_architecture_takes():
    from sae_hooks.sae import InferenceVariant

    mat, mp, top = _sae("matryoshka"), _sae("matching_pursuit"), _sae("topk")
    small, kw = mat.inference_variant(width=64)
    assert small.cfg.d_sae == 64 and small.cfg.widths == (16, 64) and kw == {}
    assert torch.equal(small.W_dec, mat.W_dec[:64])
    view = mp.inference_variant(k=3, residual_threshold=0.5)
    assert isinstance(view, InferenceVariant) and view.sae is mp
    assert view.encode_kwargs == {"k": 3, "residual_threshold": 0.5}
    assert torch.equal(view.sae.encode(_x(1), **view.encode_kwargs), mp.encode(_x(1), k=3, residual_threshold=0.5))
    assert top.inference_variant() == (top, {})
    with pytest.raises(ValueError, match="k=4 is an inference option of matching-pursuit SAEs; this SAE is 'topk'"):
        top.inference_variant(k=4)
    with pytest.raises(ValueError, match="width=4 selects a Matryoshka prefix, but this SAE is 'matching_pursuit'"):
        mp.inference_variant(width=4)
    with pytest.raises(ValueError, match="residual_threshold"):
        mat.inference_variant(width=64, residual_threshold=0.1)


@pytest.mark.parametrize("arch", sorted(KW))
def test_restore_checks_the_tensors_of_the_saelens_view(arch):
    sae = _sae(arch)
    _, tensors = sae.saelens_view()
    back = type(sae).restore(sae.cfg, tensors, state=sae.extra_state(), where="here")
    x = _x(3)
    assert torch.equal(back.encode(x), sae.encode(x))
    with pytest.raises(ValueError, match=r"'here': expected tensors .* missing \['W_dec'\]"):
        type(sae).restore(sae.cfg, {k: v for k, v in tensors.items() if k != "W_dec"}, where="here")
