"""TransformerLens 3.x ``HookedTransformer`` (what SAELens users have) through the same adapter.

TL 3.x and 4.x cannot share one environment: these tests run in the second venv (with sae-lens)
and skip where ``HookedTransformer`` is absent.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.tl3

tl = pytest.importorskip("transformer_lens")
try:  # TL 4.x raises ImportError (not AttributeError) for the removed class
    HookedTransformer = tl.HookedTransformer
except (ImportError, AttributeError):
    HookedTransformer = None
if HookedTransformer is None:
    from importlib.metadata import version

    pytest.skip(f"TransformerLens {version('transformer-lens')} has no HookedTransformer (TL 3.x only)",
                allow_module_level=True)

from sae_hooks import TLAdapter, adapt  # noqa: E402


@pytest.fixture
def hooked():
    torch.manual_seed(0)
    cfg = tl.HookedTransformerConfig(n_layers=3, d_model=64, n_ctx=32, d_head=16, n_heads=4, d_mlp=128,
                                     d_vocab=128, act_fn="gelu", normalization_type="LN")
    return HookedTransformer(cfg).eval()


def test_capture_matches_run_with_cache(hooked, tiny_ids):
    adapter = adapt(hooked)
    assert isinstance(adapter, TLAdapter)
    _, cache = hooked.run_with_cache(tiny_ids)
    names = ["resid_pre.0", "attn_out.1", "resid_mid.1", "mlp_out.1", "resid_post.2"]
    acts = adapter.capture(tiny_ids, names)
    for n in names:
        kind, layer = n.rsplit(".", 1)
        assert torch.equal(acts[n], cache[f"blocks.{layer}.hook_{kind}"])


def test_replace_stop_and_cleanup(hooked, tiny_ids):
    adapter = adapt(hooked)
    clean = adapter.forward(tiny_ids)
    assert torch.equal(adapter.forward(tiny_ids, hooks={"blocks.1.hook_resid_mid": lambda x: x.clone()}), clean)
    zeroed = adapter.forward(tiny_ids, hooks={"resid_post.0": torch.zeros_like})
    _, cache = hooked.run_with_cache(tiny_ids)
    assert not torch.allclose(zeroed, clean)
    early = adapter.capture(tiny_ids, ["resid_post.0"], stop=True)["resid_post.0"]
    assert torch.equal(early, cache["blocks.0.hook_resid_post"])
    with pytest.raises(ValueError, match=r"3 layers \(0\.\.2\)"):
        adapter.resolve("resid_post.3")


def _hooks(model) -> set:
    return {(name, kind, key) for name, m in model.named_modules()
            for kind, d in (("fwd", m._forward_hooks), ("pre", m._forward_pre_hooks)) for key in d}


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_exception_inside_hooked_forward_leaves_no_hooks(hooked, tiny_ids, exc):
    torch.manual_seed(0)  # the same weights as the fixture's model
    untouched = HookedTransformer(hooked.cfg).eval()
    adapter = adapt(hooked)
    before = _hooks(hooked)

    def boom(x):
        raise exc("inside the forward")

    with pytest.raises(exc):
        adapter.forward(tiny_ids, hooks={"resid_post.0": lambda x: x * 2, "blocks.1.hook_mlp_out": boom})
    assert _hooks(hooked) == before
    assert torch.equal(hooked(tiny_ids), untouched(tiny_ids))
