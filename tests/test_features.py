"""Feature finding: harvest bookkeeping, marked contexts, logit effects through the norm, word search."""

from __future__ import annotations

import pytest
import torch

from sae_hooks.features import MARK_CLOSE, MARK_OPEN, harvest, latents_for_text, logit_effects, top_contexts
from sae_hooks.sae import make_sae

HOOK = "resid_post.1"


def _batches():
    g = torch.Generator().manual_seed(2)
    return [torch.randint(3, 128, (3, 10), generator=g) for _ in range(3)]


def test_harvest_matches_brute_force(tiny_hf, tiny_topk):
    sae = tiny_topk
    batches = _batches()
    h = harvest(tiny_hf, sae, HOOK, batches, k=4)
    ids = torch.cat(batches)
    # Batch by batch, as harvest runs: a 9-sequence forward is a product of another shape, whose rows may
    # round differently on another CPU, and a near tie at the k-th code would change the counts below.
    z = torch.cat([sae.encode(tiny_hf.capture(b, [HOOK])[HOOK]) for b in batches])
    z[:, 0] = 0  # position 0 is excluded by the default mask
    flat = z.reshape(-1, z.shape[-1]).T
    torch.testing.assert_close(h.top_values, flat.topk(4, dim=1).values)
    f = int(h.fire_count.argmax())
    for j in range(4):
        assert float(z[h.top_seq[f, j], h.top_pos[f, j], f]) == pytest.approx(float(h.top_values[f, j]), rel=1e-5)
    assert torch.equal(h.fire_count, (z > 0).sum((0, 1)))
    assert h.n_tokens == ids.shape[0] * (ids.shape[1] - 1)
    assert torch.equal(h.input_ids, ids)
    assert bool((h.top_pos[h.top_values > 0] > 0).all())


def test_contexts_mark_the_peak(every_backend, tiny_topk, tiny_tokenizer):
    adapter, sae = every_backend, tiny_topk
    batches = _batches()
    h = harvest(adapter, sae, HOOK, batches, k=3)
    f = int(h.fire_count.argmax())
    ctxs = h.contexts(f, tiny_tokenizer, adapter=adapter, sae=sae)
    assert len(ctxs) == 3 and ctxs[0].activation >= ctxs[1].activation >= ctxs[2].activation
    assert f"{MARK_OPEN}{ctxs[0].token}{MARK_CLOSE}" in ctxs[0].text
    # Every token of the window where the latent fires is marked, and no other (brute force).
    ids = torch.cat(batches)
    # One sequence per forward, as contexts() recomputes its window: a 9-sequence product may round the
    # codes differently, and a latent at a near tie would then be marked on one side only.
    z = torch.cat([sae.encode(adapter.capture(row[None], [HOOK])[HOOK]) for row in ids])[..., f]  # [seq, pos]
    for c in ctxs:
        assert float(z[c.seq, c.pos]) == pytest.approx(c.activation, rel=1e-5)
        lo, hi = max(0, c.pos - 12), min(ids.shape[1], c.pos + 5)
        want = "".join(f"{MARK_OPEN}{t}{MARK_CLOSE}" if i > 0 and float(z[c.seq, i]) > 0 else t
                       for i, t in ((i, tiny_tokenizer.decode([int(ids[c.seq, i])])) for i in range(lo, hi)))
        assert c.text == want
    assert sum(c.text.count(MARK_OPEN) for c in ctxs) > len(ctxs)  # more than the peaks are marked
    same = top_contexts(adapter, sae, HOOK, f, batches, n=3)
    assert [c.text for c in same] == [c.text for c in ctxs]
    with pytest.raises(ValueError, match="out of range; this SAE has 128 latents"):
        h.contexts(128, tiny_tokenizer)


def test_logit_effects_is_direction_through_norm_and_unembedding(every_backend, tiny_topk):
    adapter, sae = every_backend, tiny_topk
    f = 5
    fx = logit_effects(adapter, sae, f, k=5)
    if adapter.backend == "hf":
        W, g = adapter.model.get_output_embeddings().weight, adapter.model.model.norm.weight
    elif type(adapter.model).__name__ == "TransformerBridge":  # it wraps the HF norm
        W, g = adapter.model.W_U.T, adapter.model.original_model.model.norm.weight
    else:  # HookedTransformer: W_U [d_model, vocab], RMSNorm gain ln_final.w
        W, g = adapter.model.W_U.T, adapter.model.ln_final.w
    scores = W @ (g * sae.W_dec[f])
    assert fx.through_norm
    assert [t.token_id for t in fx.promoted] == scores.topk(5).indices.tolist()
    assert [t.token_id for t in fx.suppressed] == (-scores).topk(5).indices.tolist()
    assert fx.promoted[0].score == pytest.approx(float(scores.max()), rel=1e-5)
    # Adding the direction at the last layer moves the promoted token's logit up.
    ids = torch.tensor([[5, 6, 7, 8]])
    last = f"resid_post.{adapter.n_layers - 1}"
    clean = adapter.forward(ids)[0, -1]
    pushed = adapter.forward(ids, hooks={last: lambda x: x + 20 * sae.W_dec[f]})[0, -1]
    delta = pushed - clean
    assert float(delta[fx.promoted[0].token_id]) > float(delta[fx.suppressed[0].token_id])
    with pytest.raises(ValueError, match="out of range"):
        logit_effects(adapter, sae, -1)


def test_logit_effects_centers_the_direction_for_layernorm(tiny_tokenizer):
    """GPT-2's final LayerNorm removes the mean over d_model: shifting a decoder row by a constant
    changes no logit, so it must not change the promoted tokens either."""
    from sae_hooks import HFAdapter
    from tests.conftest import make_tiny

    gpt2 = HFAdapter(make_tiny("gpt2"), tiny_tokenizer, "tiny-gpt2")
    f = 5
    sae = make_sae("topk", d_in=64, d_sae=128, k=8, seed=0).eval().requires_grad_(False)
    shifted = make_sae("topk", d_in=64, d_sae=128, k=8, seed=0).eval().requires_grad_(False)
    with torch.no_grad():
        shifted.W_dec[f] += 0.5
    d0 = sae.W_dec[f] - sae.W_dec[f].mean()
    ids = torch.tensor([[5, 6, 7, 8]])
    last = f"resid_post.{gpt2.n_layers - 1}"
    a = gpt2.forward(ids, hooks={last: lambda x: x + 3 * sae.W_dec[f]})
    b = gpt2.forward(ids, hooks={last: lambda x: x + 3 * shifted.W_dec[f]})
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)  # the model cannot tell the two apart
    fx, fx_shifted = logit_effects(gpt2, sae, f, k=8), logit_effects(gpt2, shifted, f, k=8)
    # The shifted row, centered, equals the plain one up to rounding only: the same order needs the top
    # and bottom 9 scores apart by far more than that (true of this seed; checked so it cannot pass by luck).
    ranked = (gpt2.model.get_output_embeddings().weight @ (gpt2.model.transformer.ln_f.weight * d0)).sort().values
    assert float(torch.cat([ranked[:9].diff(), ranked[-9:].diff()]).min()) > 1e-5
    for got in (fx, fx_shifted):
        assert [t.token_id for t in got.promoted] == [t.token_id for t in fx.promoted]
        assert [t.token_id for t in got.suppressed] == [t.token_id for t in fx.suppressed]
    d = sae.W_dec[f] - sae.W_dec[f].mean()
    scores = gpt2.model.get_output_embeddings().weight @ (gpt2.model.transformer.ln_f.weight * d)
    assert [t.token_id for t in fx.promoted] == scores.topk(8).indices.tolist()
    assert fx.promoted[0].score == pytest.approx(float(scores.max()), rel=1e-5)
    plain = logit_effects(gpt2, shifted, f, k=8, through_norm=False)  # the raw logit lens sees the shift
    raw = gpt2.model.get_output_embeddings().weight @ shifted.W_dec[f]
    assert [t.token_id for t in plain.promoted] == raw.topk(8).indices.tolist()


def test_latents_for_text_ranks_the_word(tiny_hf, tiny_topk):
    sae = tiny_topk
    text = "a b c d e f g"
    res = latents_for_text(tiny_hf, sae, HOOK, text, top=5)
    assert res and all(a.mean >= b.mean for a, b in zip(res, res[1:]))
    on_d = latents_for_text(tiny_hf, sae, HOOK, text, word="d", top=8)
    z = sae.encode(tiny_hf.capture(tiny_hf.tokenizer(text, return_tensors="pt").input_ids, [HOOK])[HOOK])[0, 3]
    assert {r.latent for r in on_d} == set(z.nonzero().flatten().tolist())
    assert on_d[0].mean == pytest.approx(float(z.max()), rel=1e-5)
    with pytest.raises(ValueError, match="does not occur"):
        latents_for_text(tiny_hf, sae, HOOK, text, word="zebra")
    with pytest.raises(ValueError, match="non-empty"):
        latents_for_text(tiny_hf, sae, HOOK, "  ")
