"""HuggingFace ``transformers`` causal LMs behind the hook-point vocabulary.

Every quirk of HF models lives here: where each family keeps its block list and sub-modules
(a small declarative table), tuple outputs of attention modules, the final norm that HF folds
into the last ``hidden_states`` entry (and Gemma's norm gain of 1 + weight), ``use_cache=False`` so
that a forward builds no KV cache, rerunning the blocks above a layer from their recorded inputs,
and generation under a fresh generation config.

    >>> adapter = HFAdapter(model, tokenizer)
    >>> acts = adapter.capture(ids, ["resid_post.6"])
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from ..hookpoints import HookName, parse_hook
from .base import Adapter, HookFn, Prefix, Readout, Site, _checked, _StopForward, norm_centers


@dataclass(frozen=True)
class Family:
    """Where one architecture family keeps its parts, as module paths."""

    layers: str
    """Path of the ModuleList of blocks, from the CausalLM root."""
    attn: str | None
    """Path inside a block whose output is the attention output added to the residual."""
    mlp: str | None
    """Path inside a block whose output is the MLP output added to the residual."""
    mid_norm: str | None
    """Path inside a block whose *input* is the residual between attention and MLP."""
    final_norm: str | None
    """Path of the final norm applied before the unembedding."""
    gain_offset: float = 0.0
    """Added to the final norm's weight to give the gain it multiplies by (Gemma's RMSNorm scales by 1 + weight)."""


_LLAMA = Family("model.layers", "self_attn", "mlp", "post_attention_layernorm", "model.norm")
_GEMMA = Family("model.layers", "self_attn", "mlp", "post_attention_layernorm", "model.norm", gain_offset=1.0)
# Gemma 2/3 normalise the attention and MLP outputs before adding them: the added term is the
# output of the post-norm, and the residual between them enters the pre-feedforward norm.
_GEMMA2 = Family("model.layers", "post_attention_layernorm", "post_feedforward_layernorm", "pre_feedforward_layernorm",
                 "model.norm", gain_offset=1.0)

FAMILIES: dict[str, Family] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "mixtral": Family("model.layers", "self_attn", "block_sparse_moe", "post_attention_layernorm", "model.norm"),
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "olmo": _LLAMA,
    "phi3": _LLAMA,
    "gemma": _GEMMA,
    "gemma2": _GEMMA2,
    "gemma3_text": _GEMMA2,
    "gpt2": Family("transformer.h", "attn", "mlp", "ln_2", "transformer.ln_f"),
    # Pythia uses parallel attention + MLP: there is no residual between them.
    "gpt_neox": Family("gpt_neox.layers", "attention", "mlp", None, "gpt_neox.final_layer_norm"),
}


def _get(root: nn.Module, path: str) -> nn.Module | None:
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def _find_layers(model: nn.Module, n_layers: int | None) -> str | None:
    """Fallback: the longest ModuleList whose length matches the config's layer count."""
    best = None
    for path, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and (n_layers is None or len(mod) == n_layers):
            if best is None or len(mod) > len(model.get_submodule(best)):
                best = path
    return best


class HFAdapter(Adapter):
    """Adapter for ``transformers`` causal LMs (``AutoModelForCausalLM``)."""

    backend = "hf"

    def __init__(self, model: nn.Module, tokenizer: Any = None, name: str | None = None):
        super().__init__(model, tokenizer, name or getattr(model.config, "_name_or_path", None))
        cfg = model.config
        self.model_type: str = getattr(cfg, "model_type", "?")
        n = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
        family = FAMILIES.get(self.model_type)
        self._no_blocks: str | None = None
        """Why the standard hook kinds are unavailable (no block list found), or None."""
        if family is None or _get(model, family.layers) is None:
            found = _find_layers(model, n)
            if found is None:
                # The adapter still works through the escape hatch: module:PATH hooks capture, replace
                # and stop like any other; only the per-layer kinds need a block list.
                paths = [p for p, _ in model.named_modules() if p][:4]
                self._no_blocks = (
                    f"Unknown architecture {self.model_type!r} ({type(model).__name__}) and no block list of "
                    f"{n} layers was found, so resid_pre/resid_post/attn_out/mlp_out/resid_mid.L cannot be placed. "
                    f"Known families: {', '.join(sorted(FAMILIES))}. Use module:PATH hook points to hook any "
                    f"submodule's output (here e.g. {', '.join('module:' + p for p in paths) or 'module:PATH'}; "
                    "list them with adapter.module_paths())."
                )
                family = Family("", None, None, None, None)
            else:
                family = Family(found, None, None, None, None)
        self.family = family
        self.layers: nn.ModuleList = nn.ModuleList() if self._no_blocks else model.get_submodule(family.layers)
        self._n_layers = len(self.layers)
        self._d_model = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None)

    @property
    def n_layers(self) -> int:
        return self._n_layers

    @property
    def d_model(self) -> int:
        return self._d_model

    @property
    def max_positions(self) -> int | None:
        cfg = self.model.config
        return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)

    def _supports(self, kind: str) -> bool:
        part = {"attn_out": self.family.attn, "mlp_out": self.family.mlp, "resid_mid": self.family.mid_norm}
        return part.get(kind, "always") is not None

    def module_paths(self) -> list[str]:
        return [p for p, _ in self.model.named_modules() if p]

    def resolve(self, name: str) -> Site:
        if self._no_blocks is not None and parse_hook(name).kind != "module":
            raise ValueError(f"No hook point {name!r}: {self._no_blocks}")
        return super().resolve(name)

    def _resolve(self, hook: HookName) -> Site:
        if hook.kind == "module":
            mod = _get(self.model, hook.path)
            if mod is None:
                near = [p for p in self.module_paths() if p.endswith(hook.path.split(".")[-1])][:5]
                raise ValueError(
                    f"No module {hook.path!r} in {self.name}. Module paths look like "
                    f"{', '.join(near or self.module_paths()[:5])}; list them with adapter.module_paths()."
                )
            for i, layer in enumerate(self.layers):  # a block's output is resid_post of that block
                if mod is layer:
                    return self._resolve(HookName("resid_post", i))
            return Site(f"module:{hook.path}", None, mod, pre=False)
        layer = self.layers[hook.layer]
        if hook.kind == "resid_pre":
            return Site(str(hook), hook.layer, layer, pre=True)
        if hook.kind == "resid_post":
            return Site(str(hook), hook.layer, layer, pre=False)
        part = {"attn_out": self.family.attn, "mlp_out": self.family.mlp, "resid_mid": self.family.mid_norm}[hook.kind]
        if part is None:
            why = (
                "it uses parallel attention and MLP" if self.model_type == "gpt_neox" and hook.kind == "resid_mid"
                else "its family is not in the table (auto-detected layers only)"
            )
            raise ValueError(
                f"Hook point {hook} is not available on {self.model_type} models: {why}. "
                f"Available kinds here: {', '.join(k for k in ('resid_pre', 'resid_post', 'attn_out', 'mlp_out', 'resid_mid') if self._supports(k))}; "
                "or hook any submodule with module:PATH."
            )
        # resid_mid is read as the input of the norm before the MLP; the block keeps the residual
        # itself in a local variable, so it can be read there but not replaced.
        return Site(str(hook), hook.layer, layer.get_submodule(part), pre=hook.kind == "resid_mid",
                    replaceable=hook.kind != "resid_mid")

    def _attach(self, site: Site, fn: HookFn):
        if site.pre:
            def pre_hook(module, args, kwargs):
                if args:
                    out = fn(args[0])
                    return None if out is None else ((out, *args[1:]), kwargs)
                out = fn(kwargs["hidden_states"])
                return None if out is None else (args, {**kwargs, "hidden_states": out})

            return site.module.register_forward_pre_hook(pre_hook, with_kwargs=True)

        def post_hook(module, args, output):
            # transformers 5.x: blocks return a Tensor, attention modules a tuple (out, weights).
            if isinstance(output, tuple):
                out = fn(output[0])
                return None if out is None else (out, *output[1:])
            return fn(output)

        return site.module.register_forward_hook(post_hook)

    def _call(self, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    # ---- the head ------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        head = self.model.get_output_embeddings()
        return int(getattr(head, "out_features", None) or self.model.config.vocab_size)

    @property
    def has_unembed(self) -> bool:
        return self.model.get_output_embeddings() is not None

    def unembed(self, hidden: Float[Tensor, "... d"], cols: slice | None = None) -> Float[Tensor, "... vocab"]:
        """Logits from the final normed hidden state (the head's input), with the config's
        ``final_logit_softcapping`` (gemma2) applied as the model applies it; ``cols`` computes only
        those vocabulary columns.

        >>> h, prefix = adapter.forward_recording(ids, 6, unembed=False)
        >>> adapter.unembed(h[:, :64], slice(0, 1024))   # some positions, the first 1,024 tokens
        """
        head = self.model.get_output_embeddings()
        if cols is None:
            logits = head(hidden)
        elif type(head) is nn.Linear:
            logits = F.linear(hidden, head.weight[cols], None if head.bias is None else head.bias[cols])
        else:
            logits = head(hidden)[..., cols]
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def readout(self) -> Readout:
        W = self.model.get_output_embeddings().weight
        if self.family.final_norm is None:
            return Readout(W, None, False)
        norm = self.model.get_submodule(self.family.final_norm)
        w = getattr(norm, "weight", None)
        gain = None if w is None else (w + self.family.gain_offset if self.family.gain_offset else w)
        return Readout(W, gain, norm_centers(norm))

    def _final_hidden(self, input_ids: Tensor, hooks: Mapping[str, HookFn] | None) -> Tensor:
        return self._stopped_at_head(lambda: self.forward(input_ids, hooks=hooks))

    def _stopped_at_head(self, run) -> Tensor:
        """What enters the head during ``run()``, which is stopped there (the head never runs)."""
        seen: list[Tensor] = []

        def stop_at_head(module, args):
            seen.append(args[0])
            raise _StopForward

        handle = self.model.get_output_embeddings().register_forward_pre_hook(stop_at_head)
        try:
            run()
        except _StopForward:
            pass
        finally:
            handle.remove()
        return seen[0]

    # ---- sharing the blocks below a layer between several forwards --------------------------
    def _entry_layer(self, name: str) -> int | None:
        """The first block ``resume`` must run for a hook, None if it lies outside the block list:
        ``resid_post.L`` is the input of block L + 1 (``n_layers`` for the last block: only the final
        norm and head follow), ``resid_pre.L`` the input of block L, and the others sit inside block L."""
        site = self.resolve(name)
        if site.layer is None:
            return None
        return site.layer + 1 if self._boundary(name) == 0 else site.layer

    def _boundary(self, name: str) -> int | None:
        """0 for a block's output (resid_post), 1 for a block's input (resid_pre), None inside a block."""
        site = self.resolve(name)
        if site.layer is None or site.module is not self.layers[site.layer]:
            return None
        return 1 if site.pre else 0

    @torch.no_grad()
    def forward_recording(self, input_ids: Tensor, layer: int | None = None, hooks: Mapping[str, HookFn] | None = None,
                          *, resume_at: Collection[str] | None = None, unembed: bool = True) -> tuple[Tensor, Prefix]:
        """The output of a forward under ``hooks`` and the block calls ``resume`` needs to rerun only
        the blocks from a hook point's block on (see ``Adapter.forward_recording``).

        ``layer`` records the calls of every block from ``layer`` on; ``resume_at`` only what resumes
        hooking those hook points restart from (the hidden state entering their first block; the
        masks and rotary tables of the blocks above). Neither: every block's call.

        >>> logits, prefix = adapter.forward_recording(ids, 6)
        >>> spliced = adapter.resume(prefix, {"resid_post.6": splice_fn})
        """
        self._check_unembed(unembed)
        input_ids = self.check_ids(input_ids)
        if self.family.final_norm is None:  # nowhere to rerun up to: resumes are full forwards
            return self._output(input_ids, hooks, unembed), Prefix(input_ids)
        if resume_at is not None:
            entries = {self._entry_layer(n) for n in resume_at} - {None}
            if not entries:
                return self._output(input_ids, hooks, unembed), Prefix(input_ids)
            layer = min(entries)
        else:
            layer = 0 if layer is None else layer
            entries = set(range(layer, self.n_layers + 1))
        calls: list = [None] * self.n_layers
        seen: dict[str, Tensor] = {}

        def record(i: int):
            def pre(module, args, kwargs):
                if i in entries:
                    calls[i] = (args, dict(kwargs))
                else:  # only what the blocks need besides the hidden state (it can be large)
                    calls[i] = ((None, *args[1:]) if args else args,
                                {k: v for k, v in kwargs.items() if k != "hidden_states"})

            return pre

        def record_final(module, args):  # the last block's output: resume point after block n-1
            if self.n_layers in entries:
                seen["final"] = args[0] if args else None

        norm = self.model.get_submodule(self.family.final_norm)
        handles = [self.layers[i].register_forward_pre_hook(record(i), with_kwargs=True) for i in range(layer, self.n_layers)]
        handles.append(norm.register_forward_pre_hook(record_final))
        try:
            out = self._output(input_ids, hooks, unembed)
        finally:
            for h in handles:
                h.remove()
        return out, Prefix(input_ids, layer, calls, seen.get("final"))

    @torch.no_grad()
    def resume(self, prefix: Prefix, hooks: Mapping[str, HookFn] | None = None, *, unembed: bool = True) -> Tensor:
        """Rerun the blocks from the earliest hook's block on, from the recorded input, with ``hooks``
        active; return logits (``unembed=False``: the final normed hidden state). Where the prefix
        holds no recorded input for that block (a hook below the recorded layer or outside the block
        list), the whole forward reruns instead.

        A hook at ``resid_post.L`` (or ``resid_pre.L+1``) is applied to the recorded input of block
        L + 1 directly: block L is the same in every condition and is not rerun.
        """
        self._check_unembed(unembed)
        hooks = dict(hooks or {})
        entry = {name: self._entry_layer(name) for name in hooks}
        if prefix.layer is None or None in entry.values():
            return self._output(prefix.input_ids, hooks, unembed)
        start = min(entry.values(), default=self.n_layers)
        if start < prefix.layer:
            return self._output(prefix.input_ids, hooks, unembed)
        if start == self.n_layers:
            h = prefix.final
        else:
            args, kwargs = prefix.calls[start]
            h = args[0] if args else kwargs.get("hidden_states")
        if h is None:  # not recorded for this block
            return self._output(prefix.input_ids, hooks, unembed)
        # Hooks whose value is the input of block `start` act on it here, resid_post of the block
        # below before resid_pre (the forward's order); the others are installed as usual.
        direct = sorted((n for n in hooks if entry[n] == start and self._boundary(n) is not None), key=self._boundary)
        for name in direct:
            out = _checked(self.resolve(name), hooks.pop(name))(h)
            h = h if out is None else out
        norm = self.model.get_submodule(self.family.final_norm)
        with self.hooks(hooks):
            for i in range(start, self.n_layers):
                a, kw = prefix.calls[i]
                kw = {k: v for k, v in kw.items() if k != "hidden_states"}
                h = self.layers[i](h, *a[1:], **kw)
                if isinstance(h, tuple):
                    h = h[0]
            h = norm(h)
        return self.unembed(h) if unembed else h

    # ---- generation ------------------------------------------------------------------------
    def _generate(self, input_ids: Tensor, max_new_tokens: int, sample: bool, temperature: float,
                  eos_token_id: int | None, use_cache: bool) -> Tensor:
        from transformers import GenerationConfig

        # A fresh config: the checkpoint's own generation_config (SmolLM2: temperature 0.2, top_p 0.9)
        # would otherwise change what "greedy" and "sampled" mean.
        kw: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=sample, use_cache=use_cache,
                                  eos_token_id=eos_token_id, pad_token_id=eos_token_id if eos_token_id is not None else 0)
        if sample:
            kw.update(temperature=temperature, top_k=0, top_p=1.0)
        if eos_token_id is None:
            kw["min_new_tokens"] = max_new_tokens
        return self.model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                                   generation_config=GenerationConfig(**kw))
