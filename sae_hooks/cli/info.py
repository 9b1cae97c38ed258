"""``sae-hooks info``: the model's hook points and the status of the embedded model and corpus."""

from __future__ import annotations

import argparse

HELP = "list a model's hook points and the status of the default model and corpus"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model to inspect (default: the embedded smollm2-135m-instruct)")
    p.add_argument("--backend", default="hf", choices=["hf", "tl"], help="hf = transformers, tl = TransformerLens bridge")
    p.add_argument("--corpus", default="stdlib", help="corpus to describe")


def run(args: argparse.Namespace) -> dict:
    from .. import models

    result: dict = {"default_model": models.DEFAULT_MODEL, "cache": str(models.cache_root())}
    try:
        result["default_model_gguf"] = str(models.gguf_path())
        result["default_model_converted"] = (models.cache_root() / "models" / models.DEFAULT_MODEL / "model.safetensors").is_file()
    except FileNotFoundError as e:
        result["default_model_gguf"] = None
        result["default_model_problem"] = str(e)
    try:
        from ..data import describe_corpus

        result["corpus"] = describe_corpus(args.corpus)
    except (ValueError, FileNotFoundError) as e:
        result["corpus"] = {"source": args.corpus, "problem": str(e)}
    name = args.model or models.DEFAULT_MODEL
    if args.model is not None or result.get("default_model_gguf"):
        adapter = models.load_model(name, backend=args.backend)
        points = adapter.hook_points()
        result["model"] = {
            "name": name, "backend": adapter.backend, "class": type(adapter.model).__name__,
            "n_layers": adapter.n_layers, "d_model": adapter.d_model, "max_positions": adapter.max_positions,
            "hook_points": points,
        }
    if not args.json:
        for k, v in result.items():
            if k == "model":
                print(f"model: {v['name']} ({v['class']}, backend {v['backend']}): {v['n_layers']} layers, d_model {v['d_model']}")
                print(f"  hook points ({len(v['hook_points'])}): {', '.join(v['hook_points'][:10])}, ... and module:PATH")
            else:
                print(f"{k}: {v}")
    return result
