"""End to end on the real embedded model (SmolLM2-135M-Instruct). Marked slow; still run in CI."""

from __future__ import annotations

import time

import pytest
import torch

from sae_hooks import load_model

pytestmark = pytest.mark.slow

TEXT = ("The history of the city begins in the twelfth century, when a small market grew up beside the river. "
        "Over the following centuries the town expanded, and by the eighteenth century it had become an important "
        "centre of trade, with merchants arriving from across the region to sell wool, grain and timber.")


@pytest.fixture(scope="module")
def ids(smollm2):
    return smollm2.tokenizer([TEXT], return_tensors="pt").input_ids


def test_reload_is_fast_and_identical(smollm2, ids):
    t = time.perf_counter()
    again = load_model()
    assert time.perf_counter() - t < 5.0  # converted once, then a plain safetensors load
    assert torch.equal(again.forward(ids), smollm2.forward(ids))


def test_resid_post_equals_hidden_states_and_ce_is_english_like(smollm2, ids):
    out = smollm2.model(input_ids=ids, output_hidden_states=True, use_cache=False)
    acts = smollm2.capture(ids, [f"resid_post.{i}" for i in range(smollm2.n_layers)], stop=False)
    assert smollm2.n_layers == 30 and smollm2.d_model == 576
    for i in range(smollm2.n_layers - 1):
        assert torch.equal(acts[f"resid_post.{i}"], out.hidden_states[i + 1])
    ce = torch.nn.functional.cross_entropy(out.logits[0, :-1], ids[0, 1:])
    assert 1.5 < ce.item() < 3.5
    # Position 0 is an attention sink: from layer 12 on its residual norm dwarfs every other position's.
    norms = acts["resid_post.15"][0].norm(dim=-1)
    assert norms[0] > 20 * norms[1:].median()


def test_hf_and_bridge_agree(smollm2, ids):
    bridge = load_model(backend="tl")
    names = ["resid_post.6", "attn_out.3", "mlp_out.10", "resid_mid.6"]
    a, b = smollm2.capture(ids, names), bridge.capture(ids, names)
    for n in names:
        # Bridge runs eager attention, HF sdpa: they differ by ~3e-4 at most (measured on SmolLM2).
        err = (a[n] - b[n]).abs().max().item()
        assert err < 1e-3, (n, err)
    logits_err = (smollm2.forward(ids) - bridge.forward(ids)).abs().max().item()
    assert logits_err < 1e-3
