"""Our zero-ablation recaptured score agrees with SAELens's own evaluator on the same SAE and tokens.

Runs in the second venv (sae-lens + TransformerLens 3.x ``HookedTransformer``); skipped elsewhere.
SAELens zero-ablates every position (excluded ones too) and scores next-token losses where the
input token is not ignored, so ours runs with ``ablation_scope="all"`` and the same ignored ids.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.saelens

sae_lens = pytest.importorskip("sae_lens")
tl = pytest.importorskip("transformer_lens")
try:  # TL 4.x raises ImportError for the removed class
    tl.HookedTransformer
except (ImportError, AttributeError):
    pytest.skip("needs TransformerLens 3.x HookedTransformer", allow_module_level=True)

from sae_lens.evals import get_recons_loss  # noqa: E402
from sae_lens.training.activation_scaler import ActivationScaler  # noqa: E402

from sae_hooks import adapt  # noqa: E402
from sae_hooks.data import TokenBatch, make_mask  # noqa: E402
from sae_hooks.evaluate import evaluate  # noqa: E402
from sae_hooks.sae import load_sae  # noqa: E402

IGNORE = [1, 2]  # ids treated as special (BOS, EOS) on both sides


@pytest.fixture
def hooked():
    torch.manual_seed(0)
    cfg = tl.HookedTransformerConfig(n_layers=3, d_model=64, n_ctx=32, d_head=16, n_heads=4, d_mlp=128,
                                     d_vocab=128, act_fn="gelu", normalization_type="LN")
    return tl.HookedTransformer(cfg).eval()


def _saelens_sae(arch: str, tmp_path, hook: str = "blocks.1.hook_resid_post"):
    from sae_lens.saes.sae import SAEMetadata

    classes = {"standard": (sae_lens.StandardSAE, sae_lens.StandardSAEConfig), "topk": (sae_lens.TopKSAE, sae_lens.TopKSAEConfig),
               "jumprelu": (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig)}
    extra = {"k": 8} if arch == "topk" else {}
    sae_cls, cfg_cls = classes[arch]
    sae = sae_cls(cfg_cls(d_in=64, d_sae=256, metadata=SAEMetadata(hook_name=hook, model_name="tiny"), **extra))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.02 if name.startswith("b_") else 0.2))
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(torch.rand(sae.threshold.shape, generator=g) * 0.1)
    path = tmp_path / arch
    sae.save_model(path)
    return sae, path


def _saelens_score(sae, model, ids: torch.Tensor) -> dict[str, float]:
    """SAELens's get_recons_loss, aggregated as its get_downstream_reconstruction_metrics does."""
    out = get_recons_loss(sae, model, ActivationScaler(), ids, compute_kl=True, compute_ce_loss=True, ignore_tokens=IGNORE)
    keep = ~torch.isin(ids, torch.tensor(IGNORE))
    m = {k: float(v[keep[:, : v.shape[1]]].mean()) for k, v in out.items()}
    m["score"] = (m["ce_loss_with_ablation"] - m["ce_loss_with_sae"]) / (m["ce_loss_with_ablation"] - m["ce_loss_without_sae"])
    return m


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_zero_ablation_score_matches_saelens(hooked, tmp_path, arch):
    theirs, path = _saelens_sae(arch, tmp_path)
    ids = torch.randint(3, 128, (12, 24), generator=torch.Generator().manual_seed(1))
    ids[:, 0] = 1  # BOS at position 0, ignored on both sides
    ids[3, 7] = 2
    ref = _saelens_score(theirs, hooked, ids)
    ours = evaluate(adapt(hooked), load_sae(path), TokenBatch(ids, make_mask(ids, IGNORE, exclude_first=0)),
                    ablation_scope="all", batch_size=5)
    assert ours.hook == "resid_post.1"  # from the SAELens metadata's TL name
    assert ours.recaptured_zero == pytest.approx(ref["score"], rel=0.01)
    assert ours.ce_clean == pytest.approx(ref["ce_loss_without_sae"], rel=1e-4)
    assert ours.ce_spliced == pytest.approx(ref["ce_loss_with_sae"], rel=1e-4)
    assert ours.ce_zero_ablated == pytest.approx(ref["ce_loss_with_ablation"], rel=1e-4)
    # SAELens averages KL over every kept position, the last one too (it has no next-token loss);
    # ours over the positions that carry a loss, so the two differ slightly.
    assert ours.kl == pytest.approx(ref["kl_div_with_sae"], rel=0.1)


def test_default_scope_differs_only_in_the_ablation(hooked, tmp_path):
    _, path = _saelens_sae("topk", tmp_path)
    ids = torch.randint(3, 128, (6, 24), generator=torch.Generator().manual_seed(2))
    ids[:, 0] = 1
    tokens = TokenBatch(ids, make_mask(ids, IGNORE, exclude_first=0))
    a = evaluate(adapt(hooked), load_sae(path), tokens, ablation_scope="all")
    b = evaluate(adapt(hooked), load_sae(path), tokens)
    assert a.ce_spliced == b.ce_spliced and a.ce_clean == b.ce_clean
    assert a.ce_zero_ablated != b.ce_zero_ablated
