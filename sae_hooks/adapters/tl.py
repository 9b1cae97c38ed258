"""TransformerLens models behind the hook-point vocabulary.

Serves both ``TransformerBridge`` (TransformerLens 4.x) and ``HookedTransformer`` (3.x, what
SAELens users have): both expose named ``HookPoint`` modules in ``model.hook_dict``, and a
``HookPoint`` is an identity module, so a plain PyTorch forward hook on it can read or replace
the activation. Forwards give logits only (``resume`` reruns the whole forward).

    >>> adapter = TLAdapter(bridge, tokenizer)
    >>> adapter.capture(ids, ["blocks.6.hook_resid_post"])  # TL names work as well as ours
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..hookpoints import HookName
from .base import Adapter, HookFn, Readout, Site, norm_centers
from .hf import FAMILIES


class TLAdapter(Adapter):
    """Adapter for ``transformer_lens`` models (``TransformerBridge`` or ``HookedTransformer``)."""

    backend = "tl"

    def __init__(self, model: nn.Module, tokenizer: Any = None, name: str | None = None):
        if not hasattr(model, "hook_dict") or not hasattr(model, "cfg"):
            raise TypeError(f"{type(model).__name__} is not a TransformerLens model (it has no hook_dict/cfg).")
        super().__init__(model, tokenizer or getattr(model, "tokenizer", None), name or getattr(model.cfg, "model_name", None))

    @property
    def n_layers(self) -> int:
        return int(self.model.cfg.n_layers)

    @property
    def d_model(self) -> int:
        return int(self.model.cfg.d_model)

    @property
    def max_positions(self) -> int | None:
        return getattr(self.model.cfg, "n_ctx", None)

    def _supports(self, kind: str) -> bool:
        return f"blocks.0.hook_{kind}" in self.model.hook_dict

    def module_paths(self) -> list[str]:
        return sorted(self.model.hook_dict)

    def _resolve(self, hook: HookName) -> Site:
        if hook.kind == "module":
            hp = self.model.hook_dict.get(hook.path)
            if hp is None:
                tail = hook.path.rsplit(".", 1)[-1]
                near = [n for n in self.model.hook_dict if n.endswith(tail)][:5]
                raise ValueError(
                    f"No HookPoint {hook.path!r} in {self.name}. Names look like "
                    f"{', '.join(near or sorted(self.model.hook_dict)[:5])}; list them with adapter.module_paths()."
                )
            return Site(f"module:{hook.path}", None, hp, pre=False)
        tl_name = f"blocks.{hook.layer}.hook_{hook.kind}"
        hp = self.model.hook_dict.get(tl_name)
        if hp is None:
            kinds = [k for k in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out") if self._supports(k)]
            raise ValueError(
                f"Hook point {hook} ({tl_name}) does not exist on this {type(self.model).__name__}. "
                f"Available kinds: {', '.join(kinds)}; or use module:NAME with any of adapter.module_paths()."
            )
        return Site(str(hook), hook.layer, hp, pre=False)

    def _attach(self, site: Site, fn: HookFn):
        def post_hook(module, args, output):
            return fn(output)

        return site.module.register_forward_hook(post_hook)

    def _call(self, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
        kwargs = {} if attention_mask is None else {"attention_mask": attention_mask}
        return self.model(input_ids, return_type="logits", **kwargs)

    @property
    def vocab_size(self) -> int:
        cfg = self.model.cfg
        return int(getattr(cfg, "d_vocab_out", None) or cfg.d_vocab)

    def readout(self) -> Readout:
        W = self.model.W_U.T  # TransformerLens keeps W_U as [d_model, vocab]
        ln = getattr(self.model, "ln_final", None)
        if ln is None:
            return Readout(W, None, False)
        # HookedTransformer: ln_final.w (absent when folded into W_U); the bridge wraps the HF norm.
        gain = next((p for name, p in ln.named_parameters() if name.split(".")[-1] in ("w", "weight")), None)
        hf = getattr(self.model, "original_model", None)  # the bridge's HF model: its norm, its gain rule
        family = FAMILIES.get(getattr(getattr(hf, "config", None), "model_type", None))
        if gain is not None and family is not None and family.gain_offset:
            gain = gain + family.gain_offset
        return Readout(W, gain, norm_centers(ln))

    def _generate(self, input_ids: Tensor, max_new_tokens: int, sample: bool, temperature: float,
                  eos_token_id: int | None, use_cache: bool) -> Tensor:
        # TransformerLens 4.3's bridge reads the KV cache from a `past_key_values` kwarg that
        # transformers >= 5.2x passes as `cache=`: its cached decoding then attends to the new token
        # alone (measured: greedy tokens differ from full reruns even with no hook). Rerun the
        # whole sequence at each step instead; HookedTransformer (TL 3.x) keeps its own cache.
        cached = use_cache and type(self.model).__name__ != "TransformerBridge"
        return self.model.generate(
            input_ids, max_new_tokens=max_new_tokens, do_sample=sample, temperature=temperature, top_k=None,
            top_p=None, stop_at_eos=eos_token_id is not None, eos_token_id=eos_token_id, use_past_kv_cache=cached,
            verbose=False, return_type="tokens")
