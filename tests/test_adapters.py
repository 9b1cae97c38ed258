"""Adapters: the hook vocabulary resolves, captures and replaces the same way on every backend."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sae_hooks import HFAdapter, adapt, parse_hook
from sae_hooks.hookpoints import HookName
from tests.conftest import make_tiny

FAMILIES = ["llama", "gpt2", "gpt_neox", "qwen2", "gemma2", "mistral"]


def _hooks(model: nn.Module) -> set:
    return {(name, kind, key) for name, m in model.named_modules()
            for kind, d in (("fwd", m._forward_hooks), ("pre", m._forward_pre_hooks)) for key in d}


def _no_hooks_left(model: nn.Module, before: set | None = None) -> bool:
    """No hook beyond those present before (HF installs its own hidden-state hooks on first use)."""
    return _hooks(model) == (before or set())


# ---- vocabulary ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, expected",
    [
        ("resid_post.6", HookName("resid_post", 6)),
        ("blocks.6.hook_resid_post", HookName("resid_post", 6)),
        ("blocks.2.hook_attn_out", HookName("attn_out", 2)),
        ("layers.10", HookName("resid_post", 10)),
        ("mlp_out.-1", HookName("mlp_out", -1)),
        ("module:model.layers.3.mlp", HookName("module", None, "model.layers.3.mlp")),
        ("model.layers.3", HookName("module", None, "model.layers.3")),
    ],
)
def test_parse_hook_accepts_our_tl_and_sparsify_names(name, expected):
    assert parse_hook(name) == expected


@pytest.mark.parametrize("bad, fragment", [("resid_psot.3", "Unknown hook kind"), ("resid_post.x", "integer"),
                                           ("", "non-empty"), ("module:", "names no module")])
def test_parse_hook_rejects_bad_names_with_the_valid_forms(bad, fragment):
    with pytest.raises(ValueError, match=fragment) as e:
        parse_hook(bad)
    if fragment != "names no module":
        assert "resid_post.L" in str(e.value) or "Valid kinds" in str(e.value)


# ---- capture equals HF's own hidden states ---------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_resid_capture_matches_hidden_states(family, tiny_ids):
    model = make_tiny(family)
    adapter = HFAdapter(model)
    out = model(input_ids=tiny_ids, output_hidden_states=True, use_cache=False)
    hf_own = _hooks(model)
    n = adapter.n_layers
    acts = adapter.capture(tiny_ids, [f"resid_post.{i}" for i in range(n)] + [f"resid_pre.{i}" for i in range(n)], stop=False)
    for i in range(n - 1):  # HF applies the final norm before storing the last hidden state
        assert torch.equal(acts[f"resid_post.{i}"], out.hidden_states[i + 1])
    for i in range(n):
        assert torch.equal(acts[f"resid_pre.{i}"], out.hidden_states[i])
    assert not torch.equal(acts[f"resid_post.{n - 1}"], out.hidden_states[n])
    assert _no_hooks_left(model, hf_own)


@pytest.mark.parametrize("family", FAMILIES)
def test_attn_and_mlp_outputs_add_up_to_the_residual(family, tiny_ids):
    adapter = HFAdapter(make_tiny(family))
    names = ["resid_pre.1", "attn_out.1", "mlp_out.1", "resid_post.1"]
    if family != "gpt_neox":
        names.append("resid_mid.1")
    a = adapter.capture(tiny_ids, names)
    if family == "gpt_neox":  # parallel attention and MLP
        torch.testing.assert_close(a["resid_pre.1"] + a["attn_out.1"] + a["mlp_out.1"], a["resid_post.1"])
    else:
        torch.testing.assert_close(a["resid_pre.1"] + a["attn_out.1"], a["resid_mid.1"])
        torch.testing.assert_close(a["resid_mid.1"] + a["mlp_out.1"], a["resid_post.1"])


def test_stop_early_is_bitwise_equal_and_skips_later_blocks(tiny_hf, tiny_ids):
    later_calls = []
    handle = tiny_hf.layers[2].register_forward_hook(lambda *a: later_calls.append(1))
    try:
        full = tiny_hf.capture(tiny_ids, ["resid_post.0", "mlp_out.1"], stop=False)
        assert len(later_calls) == 1
        early = tiny_hf.capture(tiny_ids, ["resid_post.0", "mlp_out.1"], stop=True)
        assert len(later_calls) == 1  # block 2 never ran
    finally:
        handle.remove()
    for k in full:
        assert torch.equal(full[k], early[k])


def test_module_escape_hatch_and_hf_module_names(tiny_hf, tiny_ids):
    a = tiny_hf.capture(tiny_ids, ["module:model.layers.1.mlp", "mlp_out.1", "model.layers.1"])
    assert set(a) == {"module:model.layers.1.mlp", "mlp_out.1", "resid_post.1"}
    assert torch.equal(a["module:model.layers.1.mlp"], a["mlp_out.1"])
    assert tiny_hf.canonical("model.layers.1") == "resid_post.1"
    assert tiny_hf.width("module:model.layers.1.mlp.up_proj") == 128


# ---- replacement -----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["resid_pre.1", "resid_post.1", "attn_out.0", "mlp_out.2"])
def test_identity_replacement_keeps_logits_and_zeroing_changes_them(tiny_hf, tiny_ids, name):
    clean = tiny_hf.forward(tiny_ids)
    same = tiny_hf.forward(tiny_ids, hooks={name: lambda x: x.clone()})
    assert torch.equal(clean, same)
    changed = tiny_hf.forward(tiny_ids, hooks={name: torch.zeros_like})
    assert not torch.allclose(clean, changed)


def test_replacement_propagates_downstream(tiny_hf, tiny_ids):
    def zero_last_pos(x):
        x = x.clone()
        x[:, -1] = 0
        return x

    with tiny_hf.hooks({"resid_post.1": zero_last_pos}):
        acts = tiny_hf.capture(tiny_ids, ["resid_pre.2"])
    assert torch.equal(acts["resid_pre.2"][:, -1], torch.zeros_like(acts["resid_pre.2"][:, -1]))


def test_forward_recording_and_resume_share_the_prefix(tiny_hf, tiny_ids):
    clean = tiny_hf.forward(tiny_ids)
    logits, prefix = tiny_hf.forward_recording(tiny_ids, layer=1)
    assert torch.equal(clean, logits)
    assert torch.equal(tiny_hf.resume(prefix), clean)
    zero = {"resid_post.1": torch.zeros_like}
    assert torch.equal(tiny_hf.resume(prefix, zero), tiny_hf.forward(tiny_ids, hooks=zero))
    # resid_post.0 is the recorded input of block 1: applied there, block 0 is not rerun. Inside block 0
    # the prefix cannot help: the whole forward reruns (same ops, same result).
    calls = []
    handle = tiny_hf.layers[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        at_input = {"resid_post.0": torch.zeros_like}
        assert torch.equal(tiny_hf.resume(prefix, at_input), tiny_hf.forward(tiny_ids, hooks=at_input))
        assert len(calls) == 1  # only the reference forward ran block 0
        below = {"mlp_out.0": torch.zeros_like}
        assert torch.equal(tiny_hf.resume(prefix, below), tiny_hf.forward(tiny_ids, hooks=below))
        assert len(calls) == 3  # block 0 ran in the resume too
    finally:
        handle.remove()


@pytest.mark.parametrize("hook", ["resid_post.0", "resid_pre.1", "mlp_out.1", "resid_post.2", "module:model.norm"])
def test_resume_at_records_only_what_resumes_need(tiny_hf, tiny_ids, hook):
    """resume_at keeps the hidden state only where a resume restarts; every resume (any hook point, the
    final norm's input, a module outside the block list, one the prefix does not cover) equals a
    full forward, and unembed=False gives the head's input (unembed of it = the logits)."""
    ran = []
    handles = [layer.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, layer in enumerate(tiny_hf.layers)]
    try:
        hidden, prefix = tiny_hf.forward_recording(tiny_ids, resume_at=[hook], unembed=False)
        ran.clear()
        fn = {hook: lambda x: x * 0.5}
        got = tiny_hf.resume(prefix, fn, unembed=False)
        resumed = list(ran)
        ref = tiny_hf.forward(tiny_ids, hooks=fn)
        assert torch.equal(tiny_hf.unembed(got), ref) and torch.equal(tiny_hf.unembed(hidden), tiny_hf.forward(tiny_ids))
        ran.clear()
        other = {"mlp_out.0": lambda x: x * 0.5}  # restarts lower than recorded: a full forward
        assert torch.equal(tiny_hf.resume(prefix, other), tiny_hf.forward(tiny_ids, hooks=other))
    finally:
        for h in handles:
            h.remove()
    first = {"resid_post.0": 1, "resid_pre.1": 1, "mlp_out.1": 1, "resid_post.2": 3, "module:model.norm": 0}[hook]
    assert resumed == list(range(first, 3))
    if hook in ("resid_post.0", "resid_pre.1"):  # only block 1's input is kept whole
        assert prefix.layer == 1 and prefix.final is None
        assert prefix.calls[1][0][0] is not None and all(prefix.calls[i][0][:1] in ((), (None,)) for i in (2,))


def test_base_adapter_resume_is_a_full_forward(tiny_bridge, tiny_ids):
    """A backend without a block-rerun path (TransformerLens) records nothing; resume reruns the forward."""
    clean, prefix = tiny_bridge.forward_recording(tiny_ids, resume_at=["resid_post.1"])
    assert prefix.layer is None and torch.equal(clean, tiny_bridge.forward(tiny_ids))
    zero = {"resid_post.1": torch.zeros_like}
    assert torch.equal(tiny_bridge.resume(prefix, zero), tiny_bridge.forward(tiny_ids, hooks=zero))
    assert not tiny_bridge.has_unembed
    with pytest.raises(ValueError, match="has_unembed"):
        tiny_bridge.resume(prefix, zero, unembed=False)


@pytest.mark.parametrize("backend", ["hf", "bridge"])
def test_readout_is_the_head_and_final_norm_gain(request, backend):
    adapter = request.getfixturevalue("tiny_hf" if backend == "hf" else "tiny_bridge")
    W, gain, centers = adapter.readout()
    hf = adapter.model if backend == "hf" else adapter.model.original_model
    assert torch.equal(W, hf.get_output_embeddings().weight) and torch.equal(gain, hf.model.norm.weight)
    assert not centers and W.shape == (adapter.vocab_size, adapter.d_model)


def test_readout_of_gemma_and_gpt2(tiny_tokenizer):
    gemma = HFAdapter(make_tiny("gemma2"), tiny_tokenizer)
    _, gain, centers = gemma.readout()  # Gemma's RMSNorm scales by 1 + weight
    assert torch.equal(gain, gemma.model.model.norm.weight + 1) and not centers
    gpt2 = HFAdapter(make_tiny("gpt2"), tiny_tokenizer)
    _, gain, centers = gpt2.readout()
    assert torch.equal(gain, gpt2.model.transformer.ln_f.weight) and centers


def test_generate_states_the_prompt_length_while_it_runs(tiny_hf, tiny_ids):
    prompt = tiny_ids[:1, :5]
    seen = []
    with tiny_hf.hooks({"resid_post.0": lambda x: seen.append((x.shape[1], tiny_hf.generating))}):
        out = tiny_hf.generate(prompt, 3)
    assert out.shape == (1, 8) and torch.equal(out[:, :5], prompt)
    assert [t for t, _ in seen] == [5, 1, 1] and {g.prompt_len for _, g in seen} == {5}
    assert tiny_hf.generating is None
    with pytest.raises(ValueError, match="max_new_tokens"):
        tiny_hf.generate(prompt, 0)
    assert tiny_hf.generating is None


# ---- hooks are always removed ------------------------------------------------------------
@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_exception_inside_hooked_forward_leaves_no_hooks(tiny_ids, exc):
    model = make_tiny("llama")
    untouched = make_tiny("llama")  # same seed, same weights
    adapter = HFAdapter(model)

    def boom(x):
        raise exc("inside the forward")

    with pytest.raises(exc):
        adapter.forward(tiny_ids, hooks={"resid_post.0": lambda x: x * 2, "mlp_out.1": boom})
    assert _no_hooks_left(model)
    assert torch.equal(model(input_ids=tiny_ids).logits, untouched(input_ids=tiny_ids).logits)


def test_exception_in_with_block_removes_hooks(tiny_hf, tiny_ids):
    with pytest.raises(ZeroDivisionError):
        with tiny_hf.hooks({"resid_post.0": torch.zeros_like, "attn_out.1": lambda x: None}):
            1 / 0
    assert _no_hooks_left(tiny_hf.model)


def test_bad_hook_in_a_set_attaches_nothing(tiny_hf, tiny_ids):
    with pytest.raises(ValueError, match="3 layers"):
        with tiny_hf.hooks({"resid_post.0": torch.zeros_like, "resid_post.3": torch.zeros_like}):
            pass
    assert _no_hooks_left(tiny_hf.model)


# ---- bad inputs get one clear message ----------------------------------------------------
def test_layer_out_of_range_names_the_valid_range(tiny_hf):
    with pytest.raises(ValueError, match=r"No hook point 'resid_post.40'.*3 layers \(0\.\.2\)"):
        tiny_hf.resolve("resid_post.40")


def test_unknown_module_path_suggests_paths(tiny_hf):
    with pytest.raises(ValueError, match="No module 'model.layers.1.mlpx'"):
        tiny_hf.resolve("module:model.layers.1.mlpx")


class _Weird(nn.Module):
    """A causal LM of no known family whose blocks are not in a ModuleList."""

    def __init__(self):
        super().__init__()
        self.config = type("Cfg", (), {"model_type": "weird", "num_hidden_layers": 2, "hidden_size": 8})()
        self.embed = nn.Embedding(128, 8)
        self.body = nn.Linear(8, 8)
        self.head = nn.Linear(8, 128)

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        return type("Out", (), {"logits": self.head(torch.relu(self.body(self.embed(input_ids))))})()


def test_unknown_architecture_points_to_the_escape_hatch_which_works(tiny_ids):
    torch.manual_seed(0)
    model = _Weird().eval()
    adapter = adapt(model)
    with pytest.raises(ValueError, match=r"No hook point 'resid_post.0': Unknown architecture 'weird'.*"
                                         r"Known families: .*llama.*module:PATH.*module:embed"):
        adapter.resolve("resid_post.0")
    with pytest.raises(ValueError, match="Unknown architecture 'weird'"):
        adapter.capture(tiny_ids, ["mlp_out.1"])
    assert adapter.hook_points() == [] and "body" in adapter.module_paths()
    # the escape hatch it points to: capture, replace and stop at a module path
    acts = adapter.capture(tiny_ids, ["module:body"])
    assert torch.equal(acts["module:body"], model.body(model.embed(tiny_ids)))
    clean = adapter.forward(tiny_ids)
    assert not torch.equal(adapter.forward(tiny_ids, hooks={"module:body": torch.zeros_like}), clean)
    assert torch.equal(adapter.forward(tiny_ids), clean) and _no_hooks_left(model)


def test_unknown_family_falls_back_to_the_block_list(tiny_ids):
    model = make_tiny("llama")
    model.config.model_type = "my_llama_variant"
    adapter = HFAdapter(model)
    assert adapter.family.layers == "model.layers"
    out = model(input_ids=tiny_ids, output_hidden_states=True)
    assert torch.equal(adapter.capture(tiny_ids, ["resid_post.0"])["resid_post.0"], out.hidden_states[1])
    with pytest.raises(ValueError, match="not available"):
        adapter.resolve("attn_out.0")


def test_resid_mid_cannot_be_replaced_on_hf(tiny_hf, tiny_ids):
    with pytest.raises(ValueError, match="captured but not replaced"):
        tiny_hf.forward(tiny_ids, hooks={"resid_mid.1": torch.zeros_like})
    assert _no_hooks_left(tiny_hf.model)


def test_resid_mid_on_parallel_residual_model_is_refused():
    adapter = HFAdapter(make_tiny("gpt_neox"))
    with pytest.raises(ValueError, match="parallel attention"):
        adapter.resolve("resid_mid.0")


def test_context_longer_than_model_allows(tiny_hf):
    with pytest.raises(ValueError, match="longer than .* allows \\(64 positions\\)"):
        tiny_hf.forward(torch.zeros(1, 65, dtype=torch.long))


def test_wrong_replacement_shape_and_non_integer_ids(tiny_hf, tiny_ids):
    with pytest.raises(ValueError, match="must keep the activation's shape"):
        tiny_hf.forward(tiny_ids, hooks={"resid_post.0": lambda x: x[:, :-1]})
    with pytest.raises(TypeError, match="Tokenize first"):
        tiny_hf.forward("some text")
    assert _no_hooks_left(tiny_hf.model)


# ---- TransformerLens bridge -------------------------------------------------------------
def test_bridge_matches_hf_and_accepts_tl_names(tiny_bridge, tiny_hf, tiny_ids):
    names = ["resid_pre.0", "attn_out.1", "resid_mid.1", "mlp_out.1", "resid_post.2"]
    ours = tiny_hf.capture(tiny_ids, names)
    theirs = tiny_bridge.capture(tiny_ids, names)
    for n in names:  # eager (bridge) vs sdpa (HF) attention differ in the last bits
        torch.testing.assert_close(theirs[n], ours[n], atol=1e-5, rtol=1e-4)
    assert tiny_bridge.canonical("blocks.2.hook_resid_post") == "resid_post.2"
    assert tiny_bridge.hook_points()[:2] == ["resid_pre.0", "attn_out.0"]


def test_bridge_replacement_and_cleanup(tiny_bridge, tiny_ids):
    clean = tiny_bridge.forward(tiny_ids)
    assert torch.equal(tiny_bridge.forward(tiny_ids, hooks={"resid_mid.1": lambda x: x.clone()}), clean)
    assert not torch.allclose(tiny_bridge.forward(tiny_ids, hooks={"resid_mid.1": torch.zeros_like}), clean)
    with pytest.raises(ValueError, match="No HookPoint"):
        tiny_bridge.resolve("module:blocks.0.hook_nothing")


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_exception_inside_bridge_forward_leaves_no_hooks(tiny_tokenizer, tiny_ids, exc):
    pytest.importorskip("transformer_lens.model_bridge")
    from transformer_lens.model_bridge import TransformerBridge

    from sae_hooks import TLAdapter

    bridge = TransformerBridge.boot_transformers("tiny-llama", hf_model=make_tiny("llama"), tokenizer=tiny_tokenizer,
                                                 device="cpu")
    untouched = TransformerBridge.boot_transformers("tiny-llama", hf_model=make_tiny("llama"),
                                                    tokenizer=tiny_tokenizer, device="cpu")
    adapter = TLAdapter(bridge, tiny_tokenizer, "tiny-llama")
    bridge(tiny_ids, return_type="logits")  # the bridge adds its own norm pre-hooks on its first forward
    before = _hooks(bridge)

    def boom(x):
        raise exc("inside the forward")

    with pytest.raises(exc):
        adapter.forward(tiny_ids, hooks={"resid_post.0": lambda x: x * 2, "mlp_out.1": boom})
    assert _no_hooks_left(bridge, before)
    assert torch.equal(bridge(tiny_ids, return_type="logits"), untouched(tiny_ids, return_type="logits"))
