"""``sae-hooks interp`` on a tiny model folder: the JSON report, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_cli_scores_several_saes_from_one_pass(inputs, tmp_path, capsys):
    from sae_hooks.cli import main

    other = tmp_path / "other" / "sae"          # the same folder name: the report keeps both apart
    make_sae("topk", 64, 128, k=8, seed=1, metadata={"hook_name": "resid_post.1", "model_name": "tiny"}).save(str(other))
    assert main(argv(inputs, "--sae", str(other), "--baselines", "residual", "--json")) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out["saes"]) == {"sae", str(other)} and set(out["baselines"]["residual"]) == {"resid_post.1"}
    assert out["saes"]["sae"]["detectors"] == 96 and out["saes"][str(other)]["detectors"] == 128
    assert out["saes"]["sae"]["labels"] and out["saes"][str(other)]["labels"]


def registry_of(tmp_path, names):
    """A registry.json in the pretrained layout (json indent=2) with one minimal entry per name."""
    entry = {"model": "tiny", "hook": "resid_post.1", "architecture": "topk", "d_in": 64, "d_sae": 96, "files": {},
             "tensors": {}, "training": {"command": "sae-hooks train ..."}, "metrics": {"fvu": 0.5},
             "interpretability": None}
    data = {"description": "test", "format": 1, "saes": {n: dict(entry) for n in names}}
    path = tmp_path / "registry.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def test_record_writes_only_the_interpretability_fields(inputs, tmp_path, capsys, monkeypatch):
    from sae_hooks.cli import main
    from sae_hooks.interp.record import main as record_main

    shelf = tmp_path / "shelf"
    shelf.mkdir()
    (Path(inputs["sae"])).rename(shelf / "tiny-topk")
    monkeypatch.setenv("SAE_HOOKS_PRETRAINED", str(shelf))
    args = argv({**inputs, "sae": "pretrained:tiny-topk"}, "--json")
    assert main(args) == 0
    report = tmp_path / "report.txt"
    report.write_text(capsys.readouterr().out)
    registry = registry_of(tmp_path, ["tiny-topk", "untouched"])
    before = json.loads(registry.read_text())
    command = "sae-hooks " + " ".join(args)
    assert record_main([str(report), "--registry", str(tmp_path), "--command", command]) == 0
    after = json.loads(registry.read_text())
    got = after["saes"]["tiny-topk"].pop("interpretability")
    after["saes"]["tiny-topk"]["interpretability"] = None
    assert after == before                                   # nothing else changed
    scored = json.loads(report.read_text().strip().splitlines()[-1])
    assert got["probe_f1"] == scored["saes"]["pretrained:tiny-topk"]["probe_f1"] and got["command"] == command
    assert got["random_sae"]["coverage"] == scored["baselines"]["random"]["pretrained:tiny-topk"]["coverage"]
    assert got["residual"]["best_latent_f1"] == scored["baselines"]["residual"]["resid_post.1"]["best_latent_f1"]
    assert got["margins"] == scored["margins"]["pretrained:tiny-topk"] and got["hook"] == "resid_post.1"
    assert "tiny-topk: probe F1 k=1" in capsys.readouterr().out


def test_record_refuses_what_it_cannot_record(tmp_path):
    from sae_hooks.interp.record import record, summaries

    with pytest.raises(ValueError, match="Not a `sae-hooks interp --json` report: it has no 'saes'"):
        summaries({"fvu": 0.1}, "cmd")
    report = {"saes": {"runs/x/sae": {}}, "baselines": {"random": {}, "residual": {}}, "margins": {}, "hooks": {},
              "tokens": {}}
    with pytest.raises(ValueError, match=r"names no pretrained SAE \(its SAEs: \['runs/x/sae'\]\)"):
        summaries(report, "cmd")
    registry = registry_of(tmp_path, ["a"])
    with pytest.raises(ValueError, match=r"has no entry \['b'\]; it has \['a'\]"):
        record(registry, {"b": {}})
    registry.write_text(json.dumps(json.loads(registry.read_text())))    # one line: another layout
    text = registry.read_text()
    with pytest.raises(ValueError, match="not in the registry's own layout"):
        record(registry, {"a": {}})
    assert registry.read_text() == text
