"""Shared fixtures: tiny models built offline from configs, and the real embedded model (slow).

Tiny models have random weights from a fixed seed: tests on them check properties (equalities,
hooks removed, shapes), never golden numbers.
"""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

TINY_VOCAB = 128


def _tiny_tokenizer(tmp_dir):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({chr(97 + i): 3 + i for i in range(26)})
    vocab.update({f"w{i}": i for i in range(29, TINY_VOCAB)})
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="</s>", unk_token="<unk>")
    # Saved and reloaded so that it has a name_or_path (TransformerLens's bridge needs one).
    tok.save_pretrained(tmp_dir)
    return AutoTokenizer.from_pretrained(tmp_dir)


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    return _tiny_tokenizer(tmp_path_factory.mktemp("tiny_tok"))


def make_tiny(family: str = "llama", n_layers: int = 3, d: int = 64, seed: int = 0):
    """A tiny random causal LM of ``family`` (llama, gpt2, gpt_neox, qwen2, gemma2, mistral)."""
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(vocab_size=TINY_VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    if family == "gpt2":
        cfg = tf.GPT2Config(n_embd=d, n_layer=n_layers, n_head=4, n_positions=64, **common)
        model = tf.GPT2LMHeadModel(cfg)
    elif family == "gpt_neox":
        cfg = tf.GPTNeoXConfig(hidden_size=d, num_hidden_layers=n_layers, num_attention_heads=4, intermediate_size=2 * d,
                               max_position_embeddings=64, **common)
        model = tf.GPTNeoXForCausalLM(cfg)
    else:
        cls = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM), "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
               "mistral": (tf.MistralConfig, tf.MistralForCausalLM), "gemma2": (tf.Gemma2Config, tf.Gemma2ForCausalLM)}[family]
        extra = {"head_dim": d // 4} if family == "gemma2" else {}
        cfg = cls[0](hidden_size=d, intermediate_size=2 * d, num_hidden_layers=n_layers, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=64, **extra, **common)
        model = cls[1](cfg)
    return model.eval().requires_grad_(False)


@pytest.fixture
def tiny_llama():
    return make_tiny("llama")


@pytest.fixture
def tiny_hf(tiny_tokenizer):
    """HFAdapter over a 3-layer d=64 llama."""
    from sae_hooks import HFAdapter

    return HFAdapter(make_tiny("llama"), tiny_tokenizer, "tiny-llama")


@pytest.fixture
def tiny_bridge(tiny_tokenizer):
    """TLAdapter over a TransformerBridge booted (offline) around a 3-layer d=64 llama."""
    tl = pytest.importorskip("transformer_lens")
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        pytest.skip(f"TransformerLens {tl.__version__} has no TransformerBridge")
    from sae_hooks import TLAdapter

    bridge = TransformerBridge.boot_transformers("tiny-llama", hf_model=make_tiny("llama"), tokenizer=tiny_tokenizer, device="cpu")
    return TLAdapter(bridge, tiny_tokenizer, "tiny-llama")


@pytest.fixture(params=["hf", "tl", pytest.param("tl3", marks=pytest.mark.tl3)])
def every_backend(request, tiny_hf):
    """The tiny llama on HF, the TL 4.x bridge and (second venv) a TL 3.x HookedTransformer: the same
    checks on every backend."""
    if request.param == "hf":
        return tiny_hf
    return request.getfixturevalue("tiny_bridge" if request.param == "tl" else "tiny_hooked")


@pytest.fixture
def tiny_topk():
    """A TopK SAE (d_in 64, 128 latents, k 8) for the tiny models, in inference mode."""
    from sae_hooks.sae import make_sae

    return make_sae("topk", d_in=64, d_sae=128, k=8, seed=0).eval().requires_grad_(False)


@pytest.fixture
def tiny_ids():
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, TINY_VOCAB, (2, 12), generator=g)


@pytest.fixture(scope="session")
def smollm2():
    """The real embedded model (HF backend, fp32). Converts on first use (~20 s), then ~0.2 s."""
    from sae_hooks import load_model

    return load_model()


@pytest.fixture
def tiny_hooked(tiny_tokenizer):
    """TLAdapter over a 3-layer d=64 TransformerLens 3.x ``HookedTransformer`` (second venv only).

    RMS norm like llama/SmolLM2; ``HookedTransformer.generate`` keeps its own KV cache, so unlike
    the bridge its decoding steps are one-token forwards.
    """
    tl = pytest.importorskip("transformer_lens")
    try:  # TL 4.x raises ImportError (not AttributeError) for the removed class
        hooked_cls = tl.HookedTransformer
    except (ImportError, AttributeError):
        from importlib.metadata import version

        pytest.skip(f"TransformerLens {version('transformer-lens')} has no HookedTransformer (TL 3.x only)")
    from sae_hooks import adapt

    torch.manual_seed(0)
    cfg = tl.HookedTransformerConfig(n_layers=3, d_model=64, n_ctx=64, d_head=16, n_heads=4, d_mlp=128, d_vocab=128,
                                     act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary")
    return adapt(hooked_cls(cfg).eval().requires_grad_(False), tiny_tokenizer)
