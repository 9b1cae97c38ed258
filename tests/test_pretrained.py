"""The SAE shipped under pretrained/ and ``pretrained:NAME`` resolution (checkout folder, $SAE_HOOKS_PRETRAINED)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sae_hooks.cli.evaluate import PRETRAINED_ENV, pretrained_dirs, resolve_sae_path
from sae_hooks.hookpoints import parse_hook
from sae_hooks.sae import load_sae, make_sae

ROOT = Path(__file__).resolve().parents[1]
NAME = "smollm2-l6-topk"
SHIPPED = ROOT / "pretrained" / NAME


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(PRETRAINED_ENV, raising=False)


@pytest.fixture(scope="module")
def shipped():
    return load_sae(SHIPPED)


def test_shipped_sae_loads_as_float32_topk_at_resid_post_6(shipped):
    sae = shipped
    assert sae.architecture == "topk" and sae.cfg.k == 32
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (576, 4608)
    assert tuple(sae.W_enc.shape) == (576, 4608) and tuple(sae.W_dec.shape) == (4608, 576)
    # SAELens-style name in hook_name (blocks.6.hook_resid_post), ours in the training record.
    assert str(parse_hook(sae.metadata["hook_name"])) == "resid_post.6"
    assert sae.metadata["sae_hooks_train"]["hook"] == "resid_post.6"
    assert sae.metadata["model_name"] == "smollm2-135m-instruct"
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        t = getattr(sae, name)
        assert t.dtype == torch.float32, name  # cfg.json says float32: the float16 storage is upcast on load
        assert torch.isfinite(t).all(), name
    # Stored as float16 (README): the matrices hold exactly float16 values, and they are trained, not random.
    for name in ("W_enc", "W_dec"):
        t = getattr(sae, name)
        assert torch.equal(t.half().float(), t), name
    assert sae.W_dec.norm(dim=1).std() > 0


def test_shipped_sae_encodes_with_l0_k(shipped):
    x = shipped.b_dec + torch.randn(64, 576, generator=torch.Generator().manual_seed(0)) * 3
    with torch.no_grad():
        z = shipped.encode(x)
    assert ((z != 0).sum(-1) == 32).all()


def test_weights_are_tracked_by_git_and_within_budget():
    files = [p for p in (ROOT / "pretrained").rglob("*") if p.is_file()]
    # Budget for weights in git: 64 MB in all (the whole zoo, registry.json checks each file).
    assert sum(p.stat().st_size for p in files) <= 64_000_000
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    weights = SHIPPED / "sae_weights.safetensors"
    ignored = subprocess.run(["git", "check-ignore", "-q", str(weights)], cwd=ROOT)
    assert ignored.returncode == 1, ".gitignore hides the shipped weights; keep !pretrained/**/*.safetensors"


def test_resolve_finds_the_checkout_copy(no_env):
    assert pretrained_dirs() == [ROOT / "pretrained"]
    assert resolve_sae_path(f"pretrained:{NAME}") == SHIPPED


def test_unknown_name_lists_available_and_where(no_env):
    with pytest.raises(FileNotFoundError) as e:
        resolve_sae_path("pretrained:no-such-sae")
    msg = str(e.value)
    assert "'no-such-sae'" in msg and NAME in msg.split("Available: ")[1]
    assert str(ROOT / "pretrained") in msg and PRETRAINED_ENV in msg


@pytest.mark.parametrize("name", ["", "../pretrained/" + NAME, NAME + "/", "/etc", ".hidden"])
def test_names_outside_a_single_folder_are_refused(no_env, name):
    with pytest.raises(FileNotFoundError, match="No pretrained SAE"):
        resolve_sae_path("pretrained:" + name)


def test_env_folder_is_searched_first(monkeypatch, tmp_path):
    make_sae("topk", d_in=8, d_sae=16, k=2, seed=0).save(tmp_path / "mine")
    shutil.copytree(SHIPPED, tmp_path / NAME)  # same name as the checkout's: the env copy wins
    (tmp_path / "not-an-sae").mkdir()
    monkeypatch.setenv(PRETRAINED_ENV, str(tmp_path))
    assert pretrained_dirs() == [tmp_path, ROOT / "pretrained"]
    assert resolve_sae_path("pretrained:mine") == tmp_path / "mine"
    assert resolve_sae_path(f"pretrained:{NAME}") == tmp_path / NAME
    assert load_sae(resolve_sae_path("pretrained:mine")).cfg.d_sae == 16
    with pytest.raises(FileNotFoundError) as e:
        resolve_sae_path("pretrained:nope")
    msg = str(e.value)
    available = msg.split("Available: ")[1].split(". ")[0].split(", ")
    assert "mine" in available and NAME in available and "not-an-sae" not in available  # folders without cfg.json are not offered
    assert str(tmp_path) in msg and str(ROOT / "pretrained") in msg


def test_env_pointing_nowhere_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv(PRETRAINED_ENV, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=PRETRAINED_ENV):
        resolve_sae_path(f"pretrained:{NAME}")


def test_cli_reports_unknown_name(no_env, capsys):
    from sae_hooks.cli import main

    for cmd in (["eval"], ["steer", "--edit", "1:add:1", "--prompt", "Hi"]):
        assert main(cmd + ["--sae", "pretrained:nope", "--json"]) == 1
        err = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]
        assert NAME in err.split("Available: ")[1], cmd


@pytest.mark.slow
def test_cli_eval_of_the_shipped_sae_on_the_real_model(smollm2):
    # smollm2: the fixture makes sure the embedded model is converted before the subprocess loads it.
    env = {k: v for k, v in os.environ.items() if k != PRETRAINED_ENV}
    cmd = [sys.executable, "-m", "sae_hooks", "eval", "--sae", f"pretrained:{NAME}", "--model",
           "smollm2-135m-instruct", "--hook", "resid_post.6", "--tokens", "2048", "--ctx", "128", "--json"]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    for key in ("ce_clean", "ce_spliced", "ce_zero_ablated", "ce_mean_ablated", "recaptured_zero",
                "recaptured_mean", "delta_ce", "kl", "fvu", "l0", "dead_frac", "tokens", "sae", "hook", "definitions"):
        assert key in out, key
    assert out["hook"] == "resid_post.6" and Path(out["sae"]) == SHIPPED
    assert out["tokens"] >= 2000 and out["l0"] == pytest.approx(32)
    assert out["recaptured_zero"] > 0.5
    assert 0 < out["fvu"] < 0.5 and out["delta_ce"] > 0 and out["kl"] > 0


@pytest.mark.saelens
def test_shipped_sae_opens_in_saelens_with_our_outputs(shipped):
    sae_lens = pytest.importorskip("sae_lens")
    lens = sae_lens.SAE.load_from_disk(str(SHIPPED))
    assert lens.cfg.architecture() == "topk" and lens.cfg.k == 32
    assert lens.W_enc.dtype == torch.float32
    assert torch.equal(lens.W_enc, shipped.W_enc) and torch.equal(lens.W_dec, shipped.W_dec)
    x = shipped.b_dec + torch.randn(64, 576, generator=torch.Generator().manual_seed(1)) * 3
    with torch.no_grad():
        z_lens, z_ours = lens.encode(x), shipped.encode(x)
        assert torch.allclose(z_lens, z_ours, atol=1e-5, rtol=1e-5)
        assert torch.allclose(lens.decode(z_lens), shipped.decode(z_ours), atol=1e-4, rtol=1e-5)
