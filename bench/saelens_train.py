"""SAELens's online trainer on our main job; run by ``bench/train.py`` inside ``.venv-saelens``.

SAELens 6.x pins TransformerLens 3.x, whose ``HookedTransformer.from_pretrained`` refuses the
embedded SmolLM2 (its config says quantized, and SmolLM2 is not on TL's model list), so the model
is built from a ``HookedTransformerConfig`` plus TL's own llama weight conversion of our converted
HF folder (it reproduces the HF model's loss exactly). Tokens come pre-tokenized from the
caller, so both trainers see exactly the same 400k training tokens. Everything else is SAELens's
default (lr 3e-4, no warm-up, constant schedule, 1,000-step dead window, its mixing buffer).

    .venv-saelens/bin/python bench/saelens_train.py --job job.pt --out out_dir

Writes ``out_dir/result.json``: training seconds (model load excluded), tokens/s, and the
held-out FVU / L0 / never-fired fraction of each trained SAE, computed with SAELens's own
``encode``/``decode`` on the held-out activation rows the caller provides.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch


def build_model(model_dir: str):
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(model_dir)
    c = hf.config
    cfg = HookedTransformerConfig(
        d_model=c.hidden_size, d_head=c.hidden_size // c.num_attention_heads, n_heads=c.num_attention_heads,
        d_mlp=c.intermediate_size, n_layers=c.num_hidden_layers, n_ctx=2048, eps=c.rms_norm_eps,
        d_vocab=c.vocab_size, act_fn=c.hidden_act, n_key_value_heads=c.num_key_value_heads,
        normalization_type="RMS", positional_embedding_type="rotary", rotary_adjacent_pairs=False,
        rotary_dim=c.hidden_size // c.num_attention_heads, rotary_base=c.rope_parameters["rope_theta"],
        final_rms=True, gated_mlp=True, original_architecture="LlamaForCausalLM", tokenizer_prepends_bos=False,
        default_prepend_bos=False, dtype=torch.float32, device="cpu",
    )
    model = HookedTransformer(cfg, tokenizer=tok, move_to_device=False)
    model.load_and_process_state_dict(convert_llama_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
                                      center_unembed=False, fold_value_biases=False, refactor_factored_attn_matrices=False)
    model.eval()
    return model


def sae_config(arch: str, d_in: int, d_sae: int, k: int):
    import sae_lens as sl

    if arch == "topk":
        return sl.TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k)
    if arch == "batchtopk":
        return sl.BatchTopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k)
    if arch == "matryoshka":
        widths = [d_sae // 9, d_sae // 4, d_sae // 2, d_sae]
        return sl.MatryoshkaBatchTopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k, matryoshka_widths=widths)
    if arch == "matching_pursuit":
        return sl.MatchingPursuitTrainingSAEConfig(d_in=d_in, d_sae=d_sae, max_iterations=k)
    raise ValueError(f"unknown arch {arch!r}")


@torch.no_grad()
def held_out_metrics(sae, acts: torch.Tensor) -> dict:
    """FVU (pooled), L0 and never-fired fraction of an SAELens SAE on activation rows [N, d]."""
    sq_err = 0.0
    fired = None
    nnz = 0
    for chunk in acts.split(2048):
        z = sae.encode(chunk)
        x_hat = sae.decode(z)
        sq_err += float((x_hat - chunk).pow(2).sum())
        f = (z != 0)
        nnz += int(f.sum())
        fired = f.any(0) if fired is None else fired | f.any(0)
    total = float((acts - acts.mean(0)).pow(2).sum())
    return {"fvu": sq_err / total, "l0": nnz / acts.shape[0], "dead_frac": float((~fired).float().mean())}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--job", required=True, help="torch file from bench/train.py: train_ids, eval_acts, settings")
    p.add_argument("--out", required=True)
    p.add_argument("--arch", action="append", default=None)
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    job = torch.load(args.job)
    s = job["settings"]
    archs = args.arch or ["topk"]
    t0 = time.perf_counter()
    model = build_model(s["model_dir"])
    load_s = time.perf_counter() - t0

    from datasets import Dataset
    import sae_lens as sl

    dataset = Dataset.from_dict({"input_ids": job["train_ids"].tolist()})
    common = dict(
        model_name="smollm2-135m-instruct", hook_name=f"blocks.{s['layer']}.hook_resid_post", dataset_path="pretokenized",
        is_dataset_tokenized=True, streaming=False, context_size=s["ctx"], training_tokens=s["tokens"],
        train_batch_size_tokens=s["batch_tokens"], prepend_bos=False, seqpos_slice=(1, None),
        exclude_special_tokens=True, device="cpu", seed=s["seed"], checkpoint_path=None, output_path=None,
        logger=sl.LoggingConfig(log_to_wandb=False), verbose=False,
        # SAELens sizes its mixing buffer as n_batches_in_buffer * context tokens (20 * 127 = 2,540),
        # smaller than one 4,096-token batch, and refuses to start with its default. 64
        # is the smallest power of two that holds two batches (8,128 tokens; it keeps half for mixing).
        n_batches_in_buffer=64,
    )
    results: dict = {"load_s": load_s, "saes": []}
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    if len(archs) == 1:
        cfg = sl.LanguageModelSAERunnerConfig(sae=sae_config(archs[0], s["d_in"], s["d_sae"], s["k"]), **common)
        runner = sl.LanguageModelSAETrainingRunner(cfg, override_model=model, override_dataset=dataset)
        saes = {archs[0]: runner.run()}
    else:
        raise SystemExit("multi-SAE SAELens runs are not part of this bench; pass one --arch")
    train_s = time.perf_counter() - t0
    results.update(train_s=train_s, tokens=s["tokens"], tokens_per_s=s["tokens"] / train_s)
    eval_acts = job["eval_acts"].float()
    for arch, sae in saes.items():
        sae.eval()
        m = held_out_metrics(sae, eval_acts)
        m["arch"] = arch
        results["saes"].append(m)
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
