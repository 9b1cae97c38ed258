"""The README's Python examples run as written on the embedded model (slow; still run in CI).

Each ```python block is executed in one shared namespace, in order. Names the prose leaves to the
reader (an SAE, held-out tokens, activation batches) are provided here with small real objects so
that every call in the README really runs.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _is_run_example(block: str) -> bool:
    """The training-run example (``RunConfig`` + ``train``): run by tests/test_run_api.py, on a tiny model
    and (slow) as written, not here, where it would train 100k tokens and write runs/api in the cwd."""
    return "RunConfig(" in block


def test_readme_has_examples():
    blocks = python_blocks()
    assert len(blocks) >= 4, "the README lost its Python examples"
    assert any("splice(" in b for b in blocks) and any("steer(" in b for b in blocks)


def test_readme_run_example_is_the_one_tests_run():
    from tests.test_run_api import SNIPPET

    runs = [b for b in python_blocks() if _is_run_example(b)]
    assert all(b == SNIPPET for b in runs), "the README's run example differs from tests/test_run_api.py SNIPPET"


def test_readme_python_examples_run(smollm2):
    from sae_hooks.data import TokenBatch, make_mask
    from sae_hooks.sae import make_sae

    adapter = smollm2
    d = adapter.d_model
    ids = adapter.tokenizer(["The file was missing, so the program stopped with an error."],
                            return_tensors="pt").input_ids
    held = adapter.tokenizer(["import os\nimport sys\n\ndef main():\n    print(os.getcwd())\n"] * 2,
                             return_tensors="pt").input_ids
    held_out = TokenBatch(held, make_mask(held, adapter.tokenizer))
    g = torch.Generator().manual_seed(0)
    sae = make_sae("topk", d, 4608, k=32, seed=0, metadata={"hook_name": "resid_post.6"})
    ns = {
        "adapter": adapter, "ids": ids, "held_out": held_out, "sae": sae,
        "sae3": make_sae("topk", d, 256, k=8, seed=1), "sae6": sae,
        "rows": adapter.capture(held, ["resid_post.6"])["resid_post.6"].reshape(-1, d),
        "batches": [{"resid_post.6": torch.randn(4096, d, generator=g)} for _ in range(2)],
        "matryoshka_sae": make_sae("matryoshka", d, 4608, k=32, widths=(512, 1152, 2304, 4608), seed=0),
    }
    for i, block in enumerate(python_blocks()):
        if _is_run_example(block):
            continue
        # The first example loads the model itself; reuse the session's copy for the TL one too.
        code = block.replace('sae_hooks.load_model(backend="tl")', "adapter")
        t0 = time.perf_counter()
        try:
            exec(compile(code, f"README.md python block {i}", "exec"), ns)
        except Exception as e:  # noqa: BLE001 - report which block failed
            raise AssertionError(f"README python block {i} failed: {e!r}\n{block}") from e
        print(f"block {i}: {time.perf_counter() - t0:.1f} s")
    # The blocks produced what they claim.
    assert set(ns["acts"]) == {"resid_post.6", "mlp_out.3"}
    assert ns["logits"].shape[:2] == ns["ids"].shape
    assert "topk_resid_post.6" in ns["stats"]
    assert 0 < ns["fit"].r2 <= 1.0 or ns["fit"].r2 != ns["fit"].r2  # a number (NaN only if degenerate)
    assert [w for w, _ in ns["nested"]] == list(ns["matryoshka_sae"].cfg.widths)
    assert [g for g, _ in ns["pruned"]] == [512, 1152, 2304, 4608]
