"""Every architecture trains from the command line (``sae-hooks train --arch ARCH``) on a tiny local
model, and the SAE it saves loads with ``load_sae`` and encodes the model's activations."""

import json
import random

import pytest
import torch

from sae_hooks.cli import main
from sae_hooks.sae import ARCHITECTURES, load_sae

K = 4
D_SAE = 128


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_tokenizer):
    """A 3-layer d=64 llama saved as a local model folder, and a small text corpus of its words."""
    from tests.conftest import make_tiny

    root = tmp_path_factory.mktemp("train_archs")
    model_dir = root / "model"
    make_tiny("llama").save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    rng = random.Random(1)
    words = [f"w{i}" for i in range(29, 128)]
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(rng.randrange(20, 60)))
                                  for _ in range(300)))
    return {"model": str(model_dir), "corpus": str(corpus)}


@pytest.fixture(scope="module")
def held_out(tiny_run):
    """resid_post.1 activations of the tiny model on fresh word sequences (position 0 dropped)."""
    from sae_hooks import load_model

    adapter = load_model(tiny_run["model"], dtype="fp32")
    ids = torch.randint(29, 128, (4, 32), generator=torch.Generator().manual_seed(7))
    acts = adapter.capture(ids, ["resid_post.1"])["resid_post.1"]
    return acts[:, 1:].reshape(-1, acts.shape[-1]).float()


def _train(tiny_run, out, arch, capsys):
    argv = ["train", "--model", tiny_run["model"], "--corpus", tiny_run["corpus"], "--hook", "resid_post.1",
            "--arch", arch, "--ctx", "32", "--batch-tokens", "256", "--tokens", "2048", "--d-sae", str(D_SAE),
            "--k", str(K), "--dtype", "fp32", "--eval-tokens", "256", "--eval-ce-tokens", "0", "--eval-every", "0",
            "--checkpoint-every", "0", "--progress", "off", "--out", str(out), "--json"]
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, f"sae-hooks train --arch {arch} failed: {captured.err.strip()}"
    return json.loads(captured.out.strip().splitlines()[-1])


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_trains_from_the_cli_and_its_sae_loads_and_encodes(arch, tiny_run, held_out, tmp_path,
                                                                             capsys):
    result = _train(tiny_run, tmp_path / "run", arch, capsys)
    (entry,) = result["saes"]
    assert entry["arch"] == arch and entry["d_sae"] == D_SAE
    sae = load_sae(entry["path"])
    assert type(sae) is ARCHITECTURES[arch] and sae.cfg.d_sae == D_SAE
    assert sae.metadata["hook_name"] == "blocks.1.hook_resid_post"
    with torch.no_grad():
        z = sae.encode(held_out)
        x_hat = sae.decode(z)
    assert z.shape == (held_out.shape[0], D_SAE) and bool(torch.isfinite(z).all())
    assert bool(torch.isfinite(x_hat).all()) and bool((z != 0).any())
    # The saved SAE takes raw activations: it reconstructs them better than their mean does. (A run of
    # 8 steps on a random tiny model; the threshold is loose on purpose.)
    fvu = float((x_hat - held_out).pow(2).sum() / (held_out - held_out.mean(0)).pow(2).sum())
    l0 = (z != 0).sum(-1).float()
    assert fvu < 1.0, f"{arch}: held-out FVU {fvu:.3f}"
    if arch in ("topk", "matching_pursuit"):  # exactly k latents chosen per token (MP: at most k distinct)
        assert float(l0.max()) <= K
    if arch == "matryoshka":  # nested prefixes from the run's defaults
        assert sae.cfg.widths == (D_SAE // 9, D_SAE // 4, D_SAE // 2, D_SAE)
