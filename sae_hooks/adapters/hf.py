"""HuggingFace ``transformers`` causal LMs behind the hook-point vocabulary.

Every quirk of HF models lives here: where each family keeps its block list and sub-modules
(a small declarative table), tuple outputs of attention modules, the final norm that HF folds
into the last ``hidden_states`` entry, and ``use_cache=False`` so that a forward builds no KV cache.

    >>> adapter = HFAdapter(model, tokenizer)
    >>> acts = adapter.capture(ids, ["resid_post.6"])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from ..hookpoints import HookName, parse_hook
from .base import Adapter, HookFn, Site, _checked, _StopForward


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


_LLAMA = Family("model.layers", "self_attn", "mlp", "post_attention_layernorm", "model.norm")
# Gemma 2/3 normalise the attention and MLP outputs before adding them: the added term is the
# output of the post-norm, and the residual between them enters the pre-feedforward norm.
_GEMMA2 = Family("model.layers", "post_attention_layernorm", "post_feedforward_layernorm", "pre_feedforward_layernorm", "model.norm")

FAMILIES: dict[str, Family] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "mixtral": Family("model.layers", "self_attn", "block_sparse_moe", "post_attention_layernorm", "model.norm"),
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "olmo": _LLAMA,
    "phi3": _LLAMA,
    "gemma": _LLAMA,
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

    # ---- sharing the prefix below a layer between several forwards ----------------------
    @property
    def vocab_size(self) -> int:
        """Number of logits the head produces."""
        head = self.model.get_output_embeddings()
        return int(getattr(head, "out_features", None) or self.model.config.vocab_size)

    def unembed(self, hidden: Float[Tensor, "... d"], cols: slice | None = None) -> Float[Tensor, "... vocab"]:
        """Logits from the final normed hidden state (the head's input), with the config's
        ``final_logit_softcapping`` (gemma2) applied as the model applies it; ``cols`` computes only
        those vocabulary columns.

        >>> h, prefix = adapter.forward_recording(ids, layer=6, unembed=False)
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

    def entry_layer(self, name: str) -> int:
        """The first block ``resume`` must run for a hook: ``resid_post.L`` is the input of block
        L + 1 (``n_layers`` for the last block: only the final norm and head follow), ``resid_pre.L``
        the input of block L, and the other hook points sit inside block L."""
        site = self.resolve(name)
        if site.layer is None:
            raise ValueError(f"Hook {name} lies outside the block list; resume cannot apply it.")
        return site.layer + 1 if self._boundary(name) == 0 else site.layer

    def _boundary(self, name: str) -> int | None:
        """0 for a block's output (resid_post), 1 for a block's input (resid_pre), None inside a block."""
        site = self.resolve(name)
        if site.layer is None or site.module is not self.layers[site.layer]:
            return None
        return 1 if site.pre else 0

    @torch.no_grad()
    def forward_recording(self, input_ids: Tensor, layer: int, hooks: dict[str, HookFn] | None = None, *,
                          unembed: bool = True) -> tuple[Tensor, "Prefix"]:
        """Clean logits plus what is needed to rerun blocks ``layer..`` under other hooks.

        Evaluation runs several conditions (clean, spliced, ablated) that agree below ``layer``;
        ``resume`` reruns only the blocks from there on. With ``unembed=False`` the forward stops
        before the head and returns the final normed hidden state instead of logits (the caller
        applies ``unembed`` to the positions it needs).

        >>> logits, prefix = adapter.forward_recording(ids, layer=6)
        >>> spliced = adapter.resume(prefix, {"resid_post.6": splice_fn})
        """
        input_ids = self._check_ids(input_ids)
        if self.family.final_norm is None:
            raise ValueError(f"forward_recording needs the final-norm path of {self.model_type}; add its family to FAMILIES.")
        calls: list[tuple[tuple, dict]] = [None] * self.n_layers  # type: ignore[list-item]
        seen: dict[str, Tensor] = {}

        def record(i: int):
            def pre(module, args, kwargs):
                calls[i] = (args, dict(kwargs))

            return pre

        def record_final(module, args):  # the last block's output: resume point after block n-1
            seen["final"] = args[0] if args else None

        def stop_at_head(module, args):
            seen["hidden"] = args[0]
            raise _StopForward

        norm = self.model.get_submodule(self.family.final_norm)
        handles = [self.layers[i].register_forward_pre_hook(record(i), with_kwargs=True) for i in range(layer, self.n_layers)]
        handles.append(norm.register_forward_pre_hook(record_final))
        if not unembed:
            handles.append(self.model.get_output_embeddings().register_forward_pre_hook(stop_at_head))
        try:
            out = self.forward(input_ids, hooks=hooks)
        except _StopForward:
            out = seen["hidden"]
        finally:
            for h in handles:
                h.remove()
        return out, Prefix(layer, calls, seen.get("final"))

    @torch.no_grad()
    def resume(self, prefix: "Prefix", hooks: dict[str, HookFn] | None = None, *, unembed: bool = True) -> Tensor:
        """Rerun the blocks from the earliest hook's ``entry_layer`` on, from the recorded input,
        with ``hooks`` active; return logits (``unembed=False``: the final normed hidden state).

        A hook at ``resid_post.L`` (or ``resid_pre.L+1``) is applied to the recorded input of block
        L + 1 directly: block L is the same in every condition and is not rerun.
        """
        hooks = dict(hooks or {})
        entry = {}
        for name in hooks:
            site = self.resolve(name)
            if site.layer is None or site.layer < prefix.layer:
                raise ValueError(f"Hook {name} lies below the recorded layer {prefix.layer}; resume cannot apply it.")
            entry[name] = self.entry_layer(name)
        start = min(entry.values(), default=self.n_layers)
        if start == self.n_layers:
            if prefix.final is None:
                raise ValueError("The prefix holds no output of the last block (final-norm input); record it again.")
            h = prefix.final
        else:
            args, kwargs = prefix.calls[start]
            h = args[0] if args else kwargs["hidden_states"]
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


@dataclass
class Prefix:
    """Recorded block inputs from ``forward_recording`` (references, no copies)."""

    layer: int
    """The first block whose input was recorded."""
    calls: list
    """(args, kwargs) of every block call from ``layer`` on (None below it)."""
    final: Tensor | None = None
    """The last block's output (the final norm's input): where a hook at the last ``resid_post`` resumes."""
