"""Round trips with the real sae_lens package (second venv); skipped where it is absent."""

import pytest
import torch

sae_lens = pytest.importorskip("sae_lens")
from sae_lens import SAE as LensSAE  # noqa: E402

from sae_hooks.sae import load_sae, make_sae  # noqa: E402

pytestmark = pytest.mark.saelens

D_IN, D_SAE = 16, 64
KW = {
    "standard": {},
    "topk": {"k": 5},
    "jumprelu": {},
    "batchtopk": {"k": 5},
    "matryoshka": {"k": 5, "widths": (16, 64)},
    "matching_pursuit": {"k": 5},
}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _ours(arch):
    sae = make_sae(arch, D_IN, D_SAE, seed=0, **KW[arch])
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.2)
        if not sae.tied:
            sae.b_enc.normal_(0, 0.2)
        if arch == "jumprelu":
            sae.threshold.uniform_(0, 0.3)
        if arch in ("batchtopk", "matryoshka"):
            sae.set_threshold(0.25)
    return sae


@pytest.mark.parametrize("arch", sorted(KW))
def test_ours_opens_in_saelens_with_same_outputs(arch, tmp_path):
    sae = _ours(arch)
    sae.save(tmp_path / arch, metadata={"hook_name": "blocks.0.hook_resid_post"})
    lens = LensSAE.load_from_disk(str(tmp_path / arch))
    expected = {"batchtopk": "jumprelu", "matryoshka": "jumprelu"}.get(arch, arch)
    assert lens.cfg.architecture() == expected
    assert lens.cfg.metadata.hook_name == "blocks.0.hook_resid_post"
    x = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z_lens, z_ours = lens.encode(x), sae.encode(x)
        assert (z_ours != 0).any()
        assert torch.allclose(z_lens, z_ours, atol=1e-6)
        assert torch.allclose(lens.decode(z_lens), sae.decode(z_ours), atol=1e-6)
        assert torch.allclose(lens(x), sae(x).x_hat, atol=1e-6)


def _lens_sae(arch, **extra):
    from sae_lens.saes import (JumpReLUSAE, JumpReLUSAEConfig, MatchingPursuitSAE,
                               MatchingPursuitSAEConfig, StandardSAE, StandardSAEConfig,
                               TopKSAE, TopKSAEConfig)
    table = {"standard": (StandardSAE, StandardSAEConfig), "topk": (TopKSAE, TopKSAEConfig),
             "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig),
             "matching_pursuit": (MatchingPursuitSAE, MatchingPursuitSAEConfig)}
    cls, cfg_cls = table[arch]
    sae = cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, **extra))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True))
        if arch == "jumprelu":
            sae.threshold.copy_(torch.rand(D_SAE, generator=g) * 0.3)
    return sae


@pytest.mark.parametrize("arch,extra", [
    ("standard", {}),
    ("topk", {"k": 7}),
    ("topk", {"k": 7, "rescale_acts_by_decoder_norm": True}),
    ("jumprelu", {}),
    ("matching_pursuit", {"max_iterations": 9, "residual_threshold": 0.0,
                          "stop_on_duplicate_support": False}),
    ("matching_pursuit", {}),  # SAELens defaults: threshold 1e-2, d_in steps, dup-stop
])
def test_saelens_saved_opens_in_load_sae(arch, extra, tmp_path):
    lens = _lens_sae(arch, **extra)
    if extra.get("rescale_acts_by_decoder_norm"):
        with torch.no_grad():
            lens.W_dec.mul_(torch.rand(D_SAE, 1) + 0.5)  # non-unit rows matter here
    lens.save_model(str(tmp_path / "m"))
    ours = load_sae(tmp_path / "m")
    x = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        z_lens, z_ours = lens.encode(x), ours.encode(x)
        assert (z_ours != 0).any()
        assert torch.allclose(z_lens, z_ours, atol=1e-5)
        assert torch.allclose(lens(x), ours(x).x_hat, atol=1e-5)
