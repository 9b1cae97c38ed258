"""``sae-hooks interp`` on a tiny model folder: the JSON report, and one-line errors for bad input."""

from __future__ import annotations

import json

import pytest

from sae_hooks.sae import make_sae
from tests.conftest import make_tiny


@pytest.fixture
def inputs(tmp_path, tiny_tokenizer):
    model = tmp_path / "tiny"
    make_tiny("llama").save_pretrained(model)
    tiny_tokenizer.save_pretrained(model)
    corpus = tmp_path / "py.jsonl"
    src = ["def f(a, b):\n    # add\n    return a + b\n", "class K:\n    \"\"\"Doc.\"\"\"\n    x = 1\n",
           "import os\nfor i in range(3):\n    if i:\n        print(i)\n"]
    corpus.write_text("".join(json.dumps({"text": src[i % 3] * (1 + i % 4)}) + "\n" for i in range(120)))
    sae = tmp_path / "sae"
    make_sae("topk", 64, 96, k=4, seed=0, metadata={"hook_name": "resid_post.1", "model_name": "tiny"}).save(str(sae))
    return {"model": str(model), "corpus": str(corpus), "sae": str(sae)}


def argv(inputs, *extra):
    return ["interp", "--sae", inputs["sae"], "--model", inputs["model"], "--corpus", inputs["corpus"], "--split", "all",
            "--ctx", "32", "--tokens", "1024", "--ks", "1,5", "--min-label-tokens", "5", *extra]


def test_cli_prints_the_report_as_json_last(inputs, tmp_path, capsys):
    from sae_hooks.cli import main

    table = tmp_path / "latents.json"
    assert main(argv(inputs, "--latent-table", str(table), "--json")) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out["saes"]) == {"sae"} and set(out["baselines"]["random"]) == {"sae"}
    assert set(out["baselines"]["residual"]) == {"resid_post.1"} and out["hooks"] == {"sae": "resid_post.1"}
    summary = out["saes"]["sae"]
    assert set(summary["probe_f1"]) == {"1", "5"} and summary["detectors"] == 96
    assert {"coverage", "best_latent_f1", "precise_fraction", "absorption", "labels"} <= set(summary)
    assert set(out["margins"]["sae"]) == {"random", "residual"}
    assert out["tokens"]["scored"] == out["tokens"]["train"] + out["tokens"]["test"]
    assert {"labelling", "model_pass", "total"} <= set(out["seconds"])
    assert set(json.loads(table.read_text())) == {"sae", "random(sae)", "residual(resid_post.1)"}


def test_cli_readable_report(inputs, capsys):
    from sae_hooks.cli import main

    assert main(argv(inputs, "--baselines", "none")) == 0
    out = capsys.readouterr().out
    assert "probe k=1" in out and "best single latent" in out and "random(" not in out


@pytest.mark.parametrize("extra, message", [
    (["--ks", "1,x"], r"--ks='1,x': give comma-separated integers"),
    (["--baselines", "random,shuffled"], r"InterpConfig.baselines=\('random', 'shuffled'\); valid"),
    (["--tokens", "100000000"], r"holds [\d,]+ tokens of Python source .* Ask for at most"),
    (["--hook", "resid_post.9"], r"No hook point 'resid_post.9'"),
])
def test_cli_bad_input_is_one_line(inputs, capsys, extra, message):
    import re

    from sae_hooks.cli import main

    assert main(argv(inputs, *extra, "--json")) == 1
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if "error" in line]   # (the model's loading bar also says things)
    assert len(errors) == 1 and errors[0].startswith("sae-hooks interp: error: ")
    assert re.search(message, json.loads(out.strip().splitlines()[-1])["error"])


def test_cli_refuses_a_corpus_without_python(inputs, tmp_path, capsys):
    from sae_hooks.cli import main

    english = tmp_path / "en.jsonl"
    english.write_text("".join(json.dumps({"text": f"Sentence number {i}, in plain English."}) + "\n" for i in range(50)))
    args = argv(inputs, "--json")
    args[args.index("--corpus") + 1] = str(english)
    assert main(args) == 1
    error = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]
    assert "holds no Python source: 50 document(s), 50 rejected by Python's parser" in error
