"""Splicing: exactness (identity, keep_error, zero SAE), excluded positions, several hooks at once,
dtype casting, width errors, and hooks removed even when the forward raises."""

from __future__ import annotations

import pytest
import torch

from sae_hooks.splice import position_mask, reconstruct, splice, splice_fn
from sae_hooks.sae.standard import StandardConfig, StandardSAE

D = 64


def identity_sae(d: int = D) -> StandardSAE:
    """ReLU SAE that reconstructs exactly: z = [relu(x), relu(-x)], x_hat = relu(x) - relu(-x)."""
    sae = StandardSAE(StandardConfig(d_in=d, d_sae=2 * d))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
    return sae


def zero_sae(d: int = D) -> StandardSAE:
    """x_hat = 0 for every input (all weights and biases zero)."""
    return StandardSAE(StandardConfig(d_in=d, d_sae=8))


def random_sae(d: int = D, d_sae: int = 256, seed: int = 0) -> StandardSAE:
    sae = StandardSAE(StandardConfig(d_in=d, d_sae=d_sae))
    sae.reset_parameters(torch.Generator().manual_seed(seed))
    return sae


def _hook_ids(model: torch.nn.Module) -> set:
    return {(id(m), kind, key) for m in model.modules()
            for kind, d in (("fwd", m._forward_hooks), ("pre", m._forward_pre_hooks)) for key in d}


def _no_hooks(model: torch.nn.Module, before: set) -> bool:
    """No hook beyond ``before`` (taken after a first forward: a bridge installs its own then)."""
    return _hook_ids(model) <= before


@pytest.fixture(params=["hf", "bridge"])
def adapter(request, tiny_hf):
    return tiny_hf if request.param == "hf" else request.getfixturevalue("tiny_bridge")


def test_identity_sae_is_bitwise_identity(adapter, tiny_ids):
    clean = adapter.forward(tiny_ids)
    with splice(adapter, {"resid_post.1": identity_sae()}):
        spliced = adapter.forward(tiny_ids)
    assert torch.equal(clean, spliced)


def test_keep_error_is_bitwise_identity_and_plain_splice_is_not(adapter, tiny_ids):
    sae = random_sae()
    clean = adapter.forward(tiny_ids)
    with splice(adapter, {"resid_post.1": sae}, keep_error=True):
        kept = adapter.forward(tiny_ids)
    with splice(adapter, {"resid_post.1": sae}):
        plain = adapter.forward(tiny_ids)
    assert torch.equal(clean, kept)
    assert not torch.allclose(clean, plain)


def test_keep_error_with_noop_edit_is_bitwise_identity(tiny_hf, tiny_ids):
    clean = tiny_hf.forward(tiny_ids)
    fn = splice_fn(random_sae(), edit=lambda z: z.clone(), keep_error=True)
    assert torch.equal(clean, tiny_hf.forward(tiny_ids, hooks={"resid_post.1": fn}))


def test_keep_error_edit_adds_exactly_the_decoded_difference(tiny_hf, tiny_ids):
    sae = random_sae()
    x = tiny_hf.capture(tiny_ids, ["resid_post.1"])["resid_post.1"]
    edit = lambda z: z.index_fill(-1, torch.tensor([3, 7]), 5.0)  # noqa: E731
    out = reconstruct(sae, x, edit=edit, keep_error=True, exclude_first=0).out
    z = sae.encode(x)
    assert torch.equal(out, x + (sae.decode(edit(z)) - sae.decode(z)))


def test_zero_sae_equals_zero_ablation(adapter, tiny_ids):
    mask = torch.ones(tiny_ids.shape, dtype=torch.bool)
    mask[:, 0] = False

    def zero_ablate(x):
        return torch.where(mask[..., None], torch.zeros_like(x), x)

    ablated = adapter.forward(tiny_ids, hooks={"resid_post.1": zero_ablate})
    with splice(adapter, {"resid_post.1": zero_sae()}, mask=mask):
        spliced = adapter.forward(tiny_ids)
    assert torch.equal(ablated, spliced)


def test_excluded_positions_keep_the_original_activation(tiny_hf, tiny_ids):
    clean = tiny_hf.forward(tiny_ids)
    with splice(tiny_hf, {"resid_post.0": random_sae()}):  # exclude_first=1 by default
        spliced = tiny_hf.forward(tiny_ids)
    # Causal attention: position 0's output depends on position 0 only.
    assert torch.equal(clean[:, 0], spliced[:, 0])
    assert not torch.allclose(clean[:, 1:], spliced[:, 1:])
    with splice(tiny_hf, {"resid_post.0": random_sae()}, exclude_first=0):
        all_pos = tiny_hf.forward(tiny_ids)
    assert not torch.allclose(clean[:, 0], all_pos[:, 0])


def test_special_tokens_from_input_ids_are_not_replaced(tiny_hf):
    ids = torch.tensor([[5, 6, 2, 7, 8, 2, 9]])  # 2 = </s>, a special token of the tiny tokenizer
    seen = {}
    fn_obs = splice_fn(random_sae(), observe=lambda r: seen.setdefault("out", r.out))
    with splice(tiny_hf, {"resid_post.1": random_sae()}, input_ids=ids):
        acts = tiny_hf.capture(ids, ["resid_post.1", "resid_pre.2"])
    clean = tiny_hf.capture(ids, ["resid_post.1"])["resid_post.1"]
    spliced_in = acts["resid_pre.2"]  # what block 2 received = the replaced resid_post.1
    keep = torch.tensor([True, False, True, False, False, True, False])
    assert torch.equal(spliced_in[0, keep], clean[0, keep])
    assert not torch.allclose(spliced_in[0, ~keep], clean[0, ~keep])
    tiny_hf.forward(ids, hooks={"resid_post.1": fn_obs})
    assert seen["out"].shape == (1, 7, D)


def test_several_hooks_at_once_equal_manual_composition(adapter, tiny_ids):
    s0, s2 = random_sae(seed=1), random_sae(seed=2)
    manual = adapter.forward(tiny_ids, hooks={"resid_post.0": splice_fn(s0), "resid_post.2": splice_fn(s2)})
    before = _hook_ids(adapter.model)
    with splice(adapter, {"resid_post.0": s0, "blocks.2.hook_resid_post": s2}):
        both = adapter.forward(tiny_ids)
    assert torch.equal(manual, both)
    with splice(adapter, {"resid_post.0": s0}):
        one = adapter.forward(tiny_ids)
    assert not torch.allclose(one, both)
    assert _no_hooks(adapter.model, before)


def test_fp32_sae_on_bf16_model_casts_and_stays_exact(tiny_tokenizer, tiny_ids):
    from sae_hooks import HFAdapter

    from .conftest import make_tiny

    adapter = HFAdapter(make_tiny("llama").to(torch.bfloat16), tiny_tokenizer, "tiny-llama")
    clean = adapter.forward(tiny_ids)
    seen = {}
    with splice(adapter, {"resid_post.1": identity_sae()}):
        same = adapter.forward(tiny_ids)
    assert torch.equal(clean, same)
    fn = splice_fn(random_sae(), observe=lambda r: seen.update(out=r.out.dtype, z=r.z.dtype))
    adapter.forward(tiny_ids, hooks={"resid_post.1": fn})
    assert seen == {"out": torch.bfloat16, "z": torch.float32}
    # A bf16 SAE on an fp32 model: encode in bf16, write back fp32.
    bf16_sae = random_sae().to(torch.bfloat16)
    x = torch.randn(2, 5, D)
    res = reconstruct(bf16_sae, x)
    assert res.out.dtype == torch.float32 and res.z.dtype == torch.bfloat16


def test_width_mismatch_names_both_widths(tiny_hf, tiny_ids):
    before = _hook_ids(tiny_hf.model)
    with pytest.raises(ValueError, match=r"d_in=32.*width 64"):
        with splice(tiny_hf, {"resid_post.1": random_sae(d=32)}):
            pass
    assert _no_hooks(tiny_hf.model, before)


def test_hooks_removed_when_forward_raises(adapter, tiny_ids):
    clean = adapter.forward(tiny_ids)
    before = _hook_ids(adapter.model)

    def broken_edit(z):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with splice(adapter, {"resid_post.1": random_sae()}, edits={"resid_post.1": broken_edit}):
            adapter.forward(tiny_ids)
    assert _no_hooks(adapter.model, before)
    with pytest.raises(KeyError):
        with splice(adapter, {"resid_post.1": random_sae(), "resid_post.2": random_sae()}):
            raise KeyError("inside the block")
    assert _no_hooks(adapter.model, before)
    assert torch.equal(clean, adapter.forward(tiny_ids))


def test_bad_mask_and_bad_edit_keys_are_clear_errors(tiny_hf, tiny_ids):
    before = _hook_ids(tiny_hf.model)
    with pytest.raises(ValueError, match="mask has shape"):
        with splice(tiny_hf, {"resid_post.1": random_sae()}, mask=torch.ones(3, 4, dtype=torch.bool)):
            tiny_hf.forward(tiny_ids)
    with pytest.raises(ValueError, match="no SAE"):
        with splice(tiny_hf, {"resid_post.1": random_sae()}, edits={"resid_post.2": lambda z: z}):
            pass
    with pytest.raises(ValueError, match="exclude_first"):
        splice_fn(random_sae(), exclude_first=-1)
    assert _no_hooks(tiny_hf.model, before)


def test_position_mask_defaults():
    x = torch.zeros(2, 4, 3)
    assert position_mask(x, None, 0) is None
    m = position_mask(x, None, 2)
    assert m.tolist() == [[False, False, True, True]] * 2
    assert position_mask(x, torch.tensor([True, False, True, True]), 1).shape == (2, 4)
