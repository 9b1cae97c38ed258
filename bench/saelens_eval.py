"""SAELens's own downstream evaluation of an SAE on given tokens (run in .venv-saelens).

Called by ``bench/eval.py`` as a subprocess: loads the SAE folder with ``sae_lens.SAE.load_from_disk``,
builds SmolLM2 as a TransformerLens 3.x ``HookedTransformer`` (config + TL's llama weight
conversion; ``from_pretrained`` refuses this model, whose config says quantized), runs ``sae_lens.evals.get_recons_loss``
over the tokens in batches and aggregates exactly as ``get_downstream_reconstruction_metrics`` does.

    .venv-saelens/bin/python bench/saelens_eval.py --sae DIR --tokens ids.pt --model-dir DIR --out res.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sae", required=True, help="SAE folder (SAELens layout)")
    p.add_argument("--tokens", required=True, help="torch file with {'input_ids': [N, ctx], 'ignore': [ids]}")
    p.add_argument("--model-dir", required=True, help="converted HF folder of the model")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from saelens_train import build_model  # the trainer bench's HookedTransformer builder
    from sae_lens import SAE
    from sae_lens.evals import get_recons_loss
    from sae_lens.training.activation_scaler import ActivationScaler

    data = torch.load(args.tokens)
    ids, ignore = data["input_ids"], list(data["ignore"])
    model = build_model(args.model_dir)
    sae = SAE.load_from_disk(args.sae, device="cpu")
    sums: dict[str, list[torch.Tensor]] = {}
    t0 = time.perf_counter()
    with torch.no_grad():
        for lo in range(0, ids.shape[0], args.batch_size):
            batch = ids[lo: lo + args.batch_size]
            keep = ~torch.isin(batch, torch.tensor(ignore))
            out = get_recons_loss(sae, model, ActivationScaler(), batch, compute_kl=True, compute_ce_loss=True,
                                  ignore_tokens=ignore)
            for k, v in out.items():
                sums.setdefault(k, []).append(v[keep[:, : v.shape[1]]])
    m = {k: float(torch.cat(v).mean()) for k, v in sums.items()}
    m["ce_loss_score"] = (m["ce_loss_with_ablation"] - m["ce_loss_with_sae"]) / (
        m["ce_loss_with_ablation"] - m["ce_loss_without_sae"])
    m["seconds"] = time.perf_counter() - t0
    with open(args.out, "w") as f:
        json.dump(m, f)


if __name__ == "__main__":
    main()
