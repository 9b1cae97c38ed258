"""Steering: exactness of edits, positions during generation, cleanup, clear errors — HF and TL."""

from __future__ import annotations

import pytest
import torch

from sae_hooks.sae import make_sae
from sae_hooks.steer import Edit, apply_edits, generate, side_effects, steer

HOOK = "resid_post.1"


@pytest.fixture
def adapter(every_backend):
    return every_backend


@pytest.fixture
def sae(tiny_topk):
    return tiny_topk


def _acts(adapter, ids):
    return adapter.capture(ids, [HOOK])[HOOK]


# ---- parsing and validation ------------------------------------------------------------------

def test_parse_forms():
    assert Edit.parse("123:add:8") == Edit(123, "add", 8.0)
    assert Edit.parse(" 4:CLAMP:-2.5 ") == Edit(4, "clamp", -2.5)
    assert Edit.parse("5:ablate") == Edit(5, "ablate", 0.0)
    assert Edit.parse("5:ablate:0") == Edit(5, "ablate", 0.0)
    assert str(Edit.parse("9:scale:0.5")) == "9:scale:0.5"


@pytest.mark.parametrize("text, words", [
    ("1:push:3", "unknown kind 'push'"),
    ("1:add:lots", "not a number"),
    ("1:add:nan", "finite"),
    ("x:add:1", "not an integer"),
    ("1:add", "needs a value"),
    ("1:ablate:3", "takes no value"),
    ("-1:add:1", ">= 0"),
    ("1", "LATENT:KIND:VALUE"),
])
def test_parse_errors_are_clear(text, words):
    with pytest.raises(ValueError, match=words):
        Edit.parse(text)


def test_latent_out_of_range_and_width_checked_before_hooks(tiny_hf, sae, tiny_ids):
    clean = tiny_hf.forward(tiny_ids)
    with pytest.raises(ValueError, match=r"latent 128 is out of range; this SAE has 128 latents \(0..127\)"):
        with steer(tiny_hf, {HOOK: (sae, ["128:add:1"])}):
            pass
    wide = make_sae("topk", d_in=32, d_sae=16, k=2, seed=0)
    with pytest.raises(ValueError, match="d_in=32"):
        with steer(tiny_hf, {HOOK: (wide, ["1:add:1"])}):
            pass
    with pytest.raises(ValueError, match="positions='middle'"):
        with steer(tiny_hf, {HOOK: (sae, [])}, positions="middle"):
            pass
    assert torch.equal(tiny_hf.forward(tiny_ids), clean)  # nothing was left attached


def test_hook_mismatch_is_refused_as_in_evaluate(tiny_hf, tiny_ids):
    """An SAE whose metadata names another hook point is refused by steer and side_effects unless
    allow_hook_mismatch; another model name only warns (strict refuses it)."""
    from sae_hooks.evaluate import MetadataMismatchWarning

    sae = make_sae("topk", d_in=64, d_sae=128, k=8, seed=0,
                   metadata={"hook_name": "blocks.2.hook_resid_post", "model_name": "tiny-llama"})
    for call in (lambda **kw: steer(tiny_hf, {HOOK: (sae, ["3:add:1"])}, **kw).__enter__(),
                 lambda **kw: side_effects(tiny_hf, {HOOK: (sae, ["3:add:1"])}, tiny_ids, **kw)):
        with pytest.raises(ValueError, match=r"trained at 'blocks.2.hook_resid_post'.*allow_hook_mismatch"):
            call()
    assert side_effects(tiny_hf, {HOOK: (sae, ["3:add:1"])}, tiny_ids, allow_hook_mismatch=True).tokens > 0
    with steer(tiny_hf, {HOOK: (sae, ["3:add:1"])}, allow_hook_mismatch=True):
        pass
    sae.metadata = {"hook_name": HOOK, "model_name": "gpt2"}
    with pytest.warns(MetadataMismatchWarning, match="gpt2"):
        with steer(tiny_hf, {HOOK: (sae, ["3:add:1"])}):
            pass
    with pytest.raises(ValueError, match="strict"):
        with steer(tiny_hf, {HOOK: (sae, ["3:add:1"])}, strict=True):
            pass
    assert torch.equal(tiny_hf.forward(tiny_ids), tiny_hf.forward(tiny_ids))  # nothing left attached
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in tiny_hf.model.modules())


# ---- exactness ---------------------------------------------------------------------------------

def test_no_edit_is_bitwise_identical(adapter, sae, tiny_ids):
    clean = adapter.forward(tiny_ids)
    for edits in ([], ["3:scale:1"], ["3:add:0"]):
        with steer(adapter, {HOOK: (sae, edits), "resid_post.0": (sae, edits)}):
            assert torch.equal(adapter.forward(tiny_ids), clean), edits


def test_add_equals_adding_decoder_direction(adapter, sae, tiny_ids):
    f, v = 17, 6.0
    d = sae.W_dec[f].detach()

    def manual(x):
        out = x.clone()
        out[:, 1:] += v * d  # position 0 (the sink) is left alone by default
        return out

    expected = adapter.forward(tiny_ids, hooks={HOOK: manual})
    with steer(adapter, {HOOK: (sae, [f"{f}:add:{v}"])}):
        got = adapter.forward(tiny_ids)
    assert not torch.allclose(expected, adapter.forward(tiny_ids), atol=1e-3)  # the edit does something
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_clamp_zero_with_error_removes_latent_contribution(adapter, sae, tiny_ids):
    x = _acts(adapter, tiny_ids)
    z = sae.encode(x)
    f = int((z[:, 1:] != 0).sum((0, 1)).argmax())  # a latent that fires somewhere
    assert bool((z[:, 1:, f] != 0).any())

    def manual(a):
        out = a.clone()
        out[:, 1:] -= z[:, 1:, f, None] * sae.W_dec[f]
        return out

    expected = adapter.forward(tiny_ids, hooks={HOOK: manual})
    with steer(adapter, {HOOK: (sae, [f"{f}:clamp:0"])}):
        got = adapter.forward(tiny_ids)
    with steer(adapter, {HOOK: (sae, [f"{f}:ablate"])}):
        ablated = adapter.forward(tiny_ids)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert torch.equal(got, ablated)


def test_apply_edits_kinds_in_order():
    z = torch.tensor([[1.0, 2.0, 3.0]])
    out = apply_edits(z, [Edit(0, "add", 1), Edit(1, "scale", 3), Edit(2, "clamp", -1), Edit(0, "scale", 2)])
    assert out.tolist() == [[4.0, 6.0, -1.0]]
    assert apply_edits(z, [Edit(1, "ablate")]).tolist() == [[1.0, 0.0, 3.0]]
    assert z.tolist() == [[1.0, 2.0, 3.0]]


def test_keep_error_false_replaces_by_reconstruction(tiny_hf, sae, tiny_ids):
    x = _acts(tiny_hf, tiny_ids)
    x_hat = sae.decode(sae.encode(x))

    def manual(a):
        out = a.clone()
        out[:, 1:] = x_hat[:, 1:]
        return out

    expected = tiny_hf.forward(tiny_ids, hooks={HOOK: manual})
    with steer(tiny_hf, {HOOK: (sae, [])}, keep_error=False):
        got = tiny_hf.forward(tiny_ids)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# ---- generation and positions ----------------------------------------------------------------

def _assert_greedy(adapter, prompt, new_ids, hook_fn):
    """``new_ids`` is a greedy continuation of ``prompt`` under reference hooks that know the absolute
    positions: at every step the chosen token's logit, from a full uncached forward, is the largest.

    Up to rounding: KV-cached decoding (or another backend) computes the same logits with products of
    other shapes, whose rounding depends on the CPU's kernels, so a near tie may go either way; any real
    difference in what was edited moves logits by far more. ``hook_fn(t)`` returns the hook for a
    sequence of ``t`` tokens, or a ``{hook: fn}`` dict."""
    ids = prompt.clone()
    for step, token in enumerate(new_ids[0].tolist()):
        fns = hook_fn(ids.shape[1])
        logits = adapter.forward(ids, hooks=fns if isinstance(fns, dict) else {HOOK: fns})[0, -1].cpu()
        top = float(logits.max())
        assert float(logits[token]) >= top - 1e-4 * (1 + abs(top)), (step, token, int(logits.argmax()))
        ids = torch.cat([ids, torch.tensor([[token]])], 1)


def _selected(t: int, prompt_len: int, positions: str) -> torch.Tensor:
    """Which of t positions a steer(..., positions=...) edit touches (position 0 never)."""
    pos = torch.arange(t)
    sel = pos >= 1
    if positions == "prompt":
        sel &= pos < prompt_len
    elif positions == "generated":
        sel &= pos >= prompt_len
    return sel


@pytest.mark.parametrize("positions", ["all", "prompt", "generated"])
def test_generation_positions_match_uncached_reference(adapter, sae, positions):
    prompt = torch.tensor([[5, 9, 13, 40, 41, 77]])
    P, n, f, v = prompt.shape[1], 6, 3, 25.0
    d = sae.W_dec[f].detach()

    def hook_fn(t):
        sel = _selected(t, P, positions)
        return lambda x: x + v * d * sel[None, :, None]

    base = generate(adapter, prompt, n, stop_at_eos=False).new_ids
    with steer(adapter, {HOOK: (sae, [f"{f}:add:{v}"])}, positions=positions) as s:
        got = generate(adapter, prompt, n, stop_at_eos=False)
    _assert_greedy(adapter, prompt, got.new_ids, hook_fn)
    if positions != "generated":
        assert not torch.equal(got.new_ids, base)  # the edit changed what was generated
    seen = s.edited_positions[HOOK]
    # HF decodes with a KV cache (one new position per forward); the TransformerLens bridge reruns
    # the whole sequence at every step (see steer.generate), so its later forwards re-edit the prompt.
    rerun = type(adapter.model).__name__ == "TransformerBridge"
    assert len(seen) == n
    for i, p in enumerate(seen):
        new = range(P + i - 1, P + i) if i else range(0)  # the position this forward adds
        if positions == "prompt":
            assert p == (list(range(1, P)) if i == 0 or rerun else [])
        elif positions == "generated":
            assert p == (list(range(P, P + i)) if rerun else list(new))
        else:
            assert p == (list(range(1, P + i)) if i == 0 or rerun else list(new))


def test_uncached_generation_with_prompt_len(tiny_hf, sae):
    prompt = torch.tensor([[5, 9, 13, 40, 41, 77]])
    d = sae.W_dec[3].detach()

    def hook_fn(t):
        return lambda x: x + 25.0 * d * _selected(t, prompt.shape[1], "generated")[None, :, None]

    with steer(tiny_hf, {HOOK: (sae, ["3:add:25"])}, positions="generated") as s:
        cached = generate(tiny_hf, prompt, 5, stop_at_eos=False).new_ids
    with steer(tiny_hf, {HOOK: (sae, ["3:add:25"])}, positions="generated", prompt_len=prompt.shape[1]):
        uncached = generate(tiny_hf, prompt, 5, stop_at_eos=False, use_cache=False).new_ids
    _assert_greedy(tiny_hf, prompt, cached, hook_fn)
    _assert_greedy(tiny_hf, prompt, uncached, hook_fn)
    assert not torch.equal(cached, generate(tiny_hf, prompt, 5, stop_at_eos=False).new_ids)  # the edit acted
    assert s.edited_positions[HOOK][1] == [6]


def _edit_change(sae, edits, x):
    """What ``edits`` add to ``x`` written by hand from the decoder rows: v·d_f for add v,
    −z_f·d_f for clamp 0, (s − 1)·z_f·d_f for scale s (z encoded from this ``x``)."""
    z = sae.encode(x)
    out = torch.zeros_like(x)
    for e in map(Edit.parse, edits):
        d, zf = sae.W_dec[e.latent], z[..., e.latent, None]
        if e.kind == "add":
            out = out + e.value * d
        elif e.kind == "clamp":
            assert e.value == 0
            out = out - zf * d
        else:
            assert e.kind == "scale"
            out = out + (e.value - 1) * zf * d
    return out


@pytest.mark.parametrize("positions", ["all", "prompt", "generated"])
def test_several_edits_at_several_hooks(adapter, positions):
    """Two hook points with two edits each, in one forward and in generation (KV-cached on HF and
    HookedTransformer): equal to writing every edit's change by hand at the selected positions, each
    hook's codes taken from what reaches it (the upstream edit included)."""
    sae0 = make_sae("topk", d_in=64, d_sae=96, k=8, seed=1).eval().requires_grad_(False)
    sae1 = make_sae("topk", d_in=64, d_sae=128, k=8, seed=0).eval().requires_grad_(False)
    prompt = torch.tensor([[5, 9, 13, 40, 41, 77]])
    P, n = prompt.shape[1], 6
    acts = adapter.capture(prompt, ["resid_post.0", HOOK])
    fire0 = int((sae0.encode(acts["resid_post.0"])[:, 1:] != 0).sum((0, 1)).argmax())
    fire1 = int((sae1.encode(acts[HOOK])[:, 1:] != 0).sum((0, 1)).argmax())
    plan = {"resid_post.0": (sae0, [f"{(fire0 + 1) % 96}:add:12", f"{fire0}:clamp:0"]),
            HOOK: (sae1, [f"{fire1}:scale:3", "17:add:-9"])}

    def hook_fn(t):
        sel = _selected(t, P, positions)
        return {h: (lambda x, s=s, e=e: x + _edit_change(s, e, x) * sel[None, :, None]) for h, (s, e) in plan.items()}

    # A plain forward: every position is a prompt position.
    expected = adapter.forward(prompt, hooks=hook_fn(P) if positions != "generated" else {})
    with steer(adapter, plan, positions=positions):
        got = adapter.forward(prompt)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    if positions == "generated":
        assert torch.equal(got, adapter.forward(prompt))

    base = generate(adapter, prompt, n, stop_at_eos=False).new_ids
    with steer(adapter, plan, positions=positions):
        got = generate(adapter, prompt, n, stop_at_eos=False).new_ids
    _assert_greedy(adapter, prompt, got, hook_fn)
    assert not torch.equal(got, base)  # the edits changed what was generated


def test_sampling_is_seeded_and_leaves_global_rng(adapter, tiny_ids):
    prompt = tiny_ids[:1, :4]
    state = torch.random.get_rng_state()
    a = generate(adapter, prompt, 8, sample=True, seed=3, stop_at_eos=False).new_ids
    b = generate(adapter, prompt, 8, sample=True, seed=3, stop_at_eos=False).new_ids
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a, b)
    others = [generate(adapter, prompt, 8, sample=True, seed=s, stop_at_eos=False).new_ids for s in (4, 5, 6)]
    assert any(not torch.equal(a, o) for o in others)


def test_hooks_removed_when_generation_raises(adapter, sae, tiny_ids):
    prompt = tiny_ids[:1, :5]
    clean = adapter.forward(tiny_ids)
    clean_gen = generate(adapter, prompt, 4, stop_at_eos=False).new_ids

    class Boom(RuntimeError):
        pass

    calls = {"n": 0}
    real_encode = sae.encode

    def exploding(x, **kw):
        calls["n"] += 1
        if calls["n"] == 3:  # in the middle of generation, after the prompt and one step
            raise Boom
        return real_encode(x, **kw)

    sae.encode = exploding
    with pytest.raises(Boom):
        with steer(adapter, {HOOK: (sae, ["3:add:25"])}):
            generate(adapter, prompt, 4, stop_at_eos=False)
    assert calls["n"] == 3
    assert torch.equal(adapter.forward(tiny_ids), clean)
    assert torch.equal(generate(adapter, prompt, 4, stop_at_eos=False).new_ids, clean_gen)
    hooked = [m for m in adapter.model.modules() if m._forward_hooks or m._forward_pre_hooks]
    assert hooked == [] or adapter.backend == "tl" and all(
        not any("steer" in getattr(h, "__qualname__", "") for h in m._forward_hooks.values()) for m in hooked)


def test_generate_rejects_bad_input(tiny_hf):
    with pytest.raises(ValueError, match="empty"):
        generate(tiny_hf, torch.zeros(1, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(tiny_hf, torch.tensor([[4, 5]]), 0)
    with pytest.raises(ValueError, match="exceeds"):
        generate(tiny_hf, torch.tensor([[4, 5]]), 100)


# ---- side effects ------------------------------------------------------------------------------

def test_side_effects_zero_without_edit_and_positive_with(adapter, sae, tiny_ids):
    none = side_effects(adapter, {HOOK: (sae, [])}, tiny_ids)
    assert none.delta_ce == 0.0 and none.kl == 0.0 and none.tokens > 0
    fx = side_effects(adapter, {HOOK: (sae, ["3:add:20", "5:clamp:7"])}, tiny_ids)
    assert fx.kl > 0 and fx.delta_ce != 0
    add, clamp = fx.latent_change
    assert add.edit == "3:add:20" and abs(add.target - (add.clean + 20)) < 1e-4
    assert abs(clamp.target - 7) < 1e-5
    assert add.moved and add.reencoded > add.clean + 5


# ---- command line --------------------------------------------------------------------------------

@pytest.fixture
def tiny_dirs(tmp_path, tiny_tokenizer):
    """A tiny model folder and an SAE folder for it, as the CLI takes them."""
    from tests.conftest import make_tiny

    model_dir = tmp_path / "model"
    make_tiny("llama").save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    sae_dir = tmp_path / "sae"
    make_sae("topk", d_in=64, d_sae=128, k=8, seed=0, metadata={"hook_name": "blocks.1.hook_resid_post"}).save(str(sae_dir))
    corpus = tmp_path / "corpus.txt"  # words the tiny tokenizer knows (stdlib text would be all <unk>)
    corpus.write_text("\n\n".join(" ".join(f"w{30 + (7 * i + j) % 90}" for j in range(40)) for i in range(300)))
    return model_dir, sae_dir, corpus


def _cli(argv, capsys):
    import json

    from sae_hooks.cli import main

    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err, json.loads(out.strip().splitlines()[-1]) if out.strip() else None


def test_cli_steer_end_to_end_json(tiny_dirs, capsys):
    model_dir, sae_dir, corpus = tiny_dirs
    rc, out, err, res = _cli(["steer", "--sae", str(sae_dir), "--model", str(model_dir), "--edit", "3:add:25",
                              "--corpus", str(corpus),
                              "--edit", "5:ablate", "--prompt", "a b c d e", "--max-new-tokens", "5",
                              "--eval-tokens", "256", "--ctx", "32", "--split", "all", "--json"], capsys)
    assert rc == 0, err
    assert res["hook"] == "resid_post.1" and res["edits"] == ["3:add:25", "5:ablate"]
    for key in ("baseline", "steered", "sampled_baseline", "sampled_steered"):
        assert isinstance(res[key], str)
    assert res["baseline"] != res["steered"]
    assert res["kl"] > 0 and res["eval_tokens"] > 0 and isinstance(res["delta_ce"], float)
    assert [lc["edit"] for lc in res["latent_change"]] == ["3:add:25", "5:ablate"]
    assert res["latent_change"][0]["moved"] is True
    assert "[all]" in res["side_effects_scope"]


@pytest.mark.parametrize("extra, words", [
    (["--edit", "128:add:1"], "latent 128 is out of range; the SAE in .* has 128 latents"),
    (["--edit", "3:boost:1"], "unknown kind 'boost'"),
    (["--edit", "3:add:much"], "value 'much' is not a number"),
    (["--edit", "3:add:1", "--prompt", "  "], "--prompt is empty"),
])
def test_cli_steer_bad_input_fails_cleanly(tiny_dirs, capsys, extra, words):
    import re

    model_dir, sae_dir, _ = tiny_dirs
    argv = ["steer", "--sae", str(sae_dir), "--model", str(model_dir), "--prompt", "a b c", "--json", *extra]
    rc, out, err, res = _cli(argv, capsys)
    assert rc == 1
    assert re.search(words, err), err
    assert list(res) == ["error", "command"]  # nothing but the error: no partial result
    assert len(out.strip().splitlines()) == 1


# ---- the real embedded model ---------------------------------------------------------------------

PROMPTS = ["The weather today is", "My favourite food is", "She opened the door and", "The best way to learn is",
           "Yesterday we went to", "The old man said that", "In the garden there were", "Our teacher told us",
           "The city at night is", "He picked up the phone and", "The story begins with", "After dinner we usually",
           "The most important thing is", "When the rain stopped,", "The children played with",
           "A good friend always", "The train arrived at", "On the table there was", "The letter said that",
           "At the end of the day,"]


@pytest.mark.slow
def test_steering_on_smollm2_is_exact_and_measured(smollm2):
    """Real model: no edit changes nothing (forward and generation); an add edit moves its latent and costs CE."""
    from sae_hooks.data import CorpusConfig, load_token_tensor

    hook = "resid_post.6"
    sae = make_sae("topk", d_in=576, d_sae=256, k=16, seed=0).eval().requires_grad_(False)
    tok = smollm2.tokenizer
    ids = tok(PROMPTS[0], return_tensors="pt").input_ids
    clean_logits, clean_gen = smollm2.forward(ids), generate(smollm2, ids, 8).new_ids
    with steer(smollm2, {hook: (sae, ["7:scale:1"])}):
        assert torch.equal(smollm2.forward(ids), clean_logits)
        assert torch.equal(generate(smollm2, ids, 8).new_ids, clean_gen)
    with steer(smollm2, {hook: (sae, ["7:add:60"])}):
        steered = generate(smollm2, ids, 8).new_ids
    assert not torch.equal(steered, clean_gen)
    block = load_token_tensor(tok, CorpusConfig(split="eval"), 512)
    fx = side_effects(smollm2, {hook: (sae, ["7:add:60"])}, block)
    assert 0.5 < fx.ce_clean < 5.0 and fx.delta_ce > 0 and fx.kl > 0
    assert fx.latent_change[0].moved
    none = side_effects(smollm2, {hook: (sae, [])}, block)
    assert none.delta_ce == 0.0 and none.kl == 0.0


@pytest.mark.slow
def test_add_edit_at_a_late_layer_brings_out_the_promoted_tokens(smollm2):
    """Real model, resid_post.24 of 30: adding a latent's direction puts its logit_effects tokens into the text.

    Ties ``logit_effects`` (W_U · (g ⊙ W_dec[f])) to ``steer``: a wrong gain, transpose or sign, or
    an edit written to the wrong place, leaves the promoted tokens as rare as at baseline. The
    direction is an untrained SAE's (random) row; its top-20 list still holds frequent tokens (at
    baseline 12 of 20 continuations contain one), so the test asks for a clear rise, not for zero at
    baseline. The trained-feature version of this claim is measured in tutorials/steering.md.
    """
    from sae_hooks.features import logit_effects

    # Unit-norm row; 440 = the median residual norm at resid_post.24 (position 0 excluded).
    hook, latent, value = "resid_post.24", 3, 440.0
    sae = make_sae("topk", d_in=576, d_sae=64, k=8, seed=0).eval().requires_grad_(False)
    fx = logit_effects(smollm2, sae, latent, k=20)
    promoted, suppressed = {t.token_id for t in fx.promoted}, {t.token_id for t in fx.suppressed}
    tok = smollm2.tokenizer
    counts = {"base": [0, 0, 0], "steered": [0, 0, 0]}  # prompts with a promoted token, promoted, suppressed tokens
    for prompt in PROMPTS:
        ids = tok(prompt, return_tensors="pt").input_ids
        for name, plan in (("base", {hook: (sae, [])}), ("steered", {hook: (sae, [f"{latent}:add:{value}"])})):
            with steer(smollm2, plan):
                new = generate(smollm2, ids, 8).new_ids[0].tolist()
            hits = sum(t in promoted for t in new)
            counts[name][0] += hits > 0
            counts[name][1] += hits
            counts[name][2] += sum(t in suppressed for t in new)
    assert counts["steered"][0] > counts["base"][0], counts
    assert counts["steered"][1] >= 2 * counts["base"][1] + 10, counts
    assert counts["steered"][2] <= counts["base"][2], counts


def test_bridge_generates_what_hf_generates(tiny_hf, tiny_bridge):
    """Same weights (make_tiny seeds them alike) ⇒ same greedy tokens on HF and the TL bridge.

    Guards the bridge path of ``generate``: with transformers 5.24, the bridge's own KV-cached decoding
    ignores the cache and drifts from the first decoded step on.
    """
    prompt = torch.tensor([[5, 9, 13, 40, 41, 77]])
    # Eager (bridge) and sdpa (HF) attention round differently: greedy on HF up to a near tie.
    _assert_greedy(tiny_hf, prompt, generate(tiny_bridge, prompt, 8, stop_at_eos=False).new_ids, lambda t: {})
