"""Loading SAEs published on the HF hub (SAELens releases, sparsify repositories) from a local cache.

No network: every test builds a Hugging Face cache folder laid out as huggingface_hub lays it out
(models--ORG--NAME/{refs/main, snapshots/<rev>/..., blobs/<sha>} with the snapshot files linked to
their blobs) and switches the hub off (HF_HUB_OFFLINE), so only the cache can answer.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

from sae_hooks import hub
from sae_hooks.pretrained import load_sae_spec, resolve_sae_path
from sae_hooks.sae import load_sae, make_sae, save_sparsify

REV = "0123456789abcdef0123456789abcdef01234567"


def put_in_cache(cache: Path, repo_id: str, files: dict[str, bytes], rev: str = REV) -> Path:
    """Lay ``files`` (path in repo -> bytes) out as huggingface_hub's cache does; returns the snapshot folder."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(rev)
    snap = repo / "snapshots" / rev
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        target = snap / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(os.path.relpath(blob, target.parent))
    return snap


def folder_files(folder: Path, prefix: str) -> dict[str, bytes]:
    return {f"{prefix}/{p.name}" if prefix else p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty HF cache that every hub call uses, with the hub switched off."""
    root = tmp_path / "hf_cache"
    root.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return root


@pytest.fixture
def table(tmp_path, monkeypatch):
    """A small SAELens-format release table, used where the sae-lens package's own would be."""
    path = tmp_path / "pretrained_saes.yaml"
    path.write_text(
        "tiny-res:\n"
        "  repo_id: someone/tiny-saes\n"
        "  model: tiny-llama\n"
        "  conversion_func: null\n"
        "  saes:\n"
        "  - id: blocks.1.hook_resid_post\n"
        "    path: l1/topk\n"
        "  - id: blocks.2.hook_resid_post\n"
        "    path: l2\n"
        "    norm_scaling_factor: 2.5\n"
        "tiny-scope:\n"
        "  repo_id: someone/scope\n"
        "  model: tiny-llama\n"
        "  conversion_func: gemma_3\n"
        "  saes:\n"
        "  - id: layer_1\n"
        "    path: layer_1\n"
    )
    monkeypatch.setattr(hub, "saelens_table_path", lambda: path)
    return path


@pytest.fixture
def topk(tmp_path):
    sae = make_sae("topk", d_in=16, d_sae=48, k=4, seed=0)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    sae.save(tmp_path / "src_topk", metadata={"hook_name": "blocks.1.hook_resid_post", "model_name": "tiny-llama"})
    return load_sae(tmp_path / "src_topk"), tmp_path / "src_topk"


def _same(a, b):
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_release_table_maps_release_and_id_to_the_repository_folder(cache, table, topk):
    sae, src = topk
    snap = put_in_cache(cache, "someone/tiny-saes", folder_files(src, "l1/topk"))
    got = hub.load_saelens("tiny-res", "blocks.1.hook_resid_post")
    _same(got, sae)
    assert got.architecture == "topk" and got.cfg.k == 4
    # The same through every --sae flag's resolver.
    assert resolve_sae_path("saelens:tiny-res:blocks.1.hook_resid_post") == snap / "l1" / "topk"
    _same(load_sae_spec("saelens:tiny-res:blocks.1.hook_resid_post"), sae)
    x = torch.randn(5, 16)
    assert torch.equal(got.encode(x), sae.encode(x))


def test_repository_and_folder_without_a_table(cache, monkeypatch, topk):
    monkeypatch.setattr(hub, "saelens_table_path", lambda: None)  # as without the sae-lens package
    sae, src = topk
    put_in_cache(cache, "org/my-saes", folder_files(src, "layer1"))
    _same(load_sae_spec("saelens:org/my-saes:layer1"), sae)
    with pytest.raises(ValueError, match=r"pip install sae-lens.*saelens:ORG/REPO:FOLDER"):
        hub.load_saelens("gpt2-small-res-jb", "blocks.8.hook_resid_pre")


def test_norm_scaling_factor_is_folded_as_saelens_does(cache, table, tmp_path):
    sae = make_sae("standard", d_in=16, d_sae=32, seed=1)
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.3)
        sae.b_enc.normal_(0, 0.3)
    sae.save(tmp_path / "std")
    cfg = json.loads((tmp_path / "std" / "cfg.json").read_text())
    cfg["normalize_activations"] = "expected_average_only_in"
    (tmp_path / "std" / "cfg.json").write_text(json.dumps(cfg))
    put_in_cache(cache, "someone/tiny-saes", folder_files(tmp_path / "std", "l2"))
    folded = hub.load_saelens("tiny-res", "blocks.2.hook_resid_post")
    s = 2.5
    x = torch.randn(7, 16)
    # Folded weights on raw x = the stored SAE on x scaled by s, its reconstruction scaled back by 1/s.
    torch.testing.assert_close(folded.encode(x), sae.encode(s * x), rtol=1e-5, atol=1e-5)
    z = folded.encode(x)
    torch.testing.assert_close(folded.decode(z), sae.decode(z) / s, rtol=1e-5, atol=1e-6)


def test_pre_6_config_is_converted(cache, topk):
    sae, src = topk
    old = {"d_in": 16, "d_sae": 48, "dtype": "torch.float32", "hook_point": "blocks.1.hook_resid_post",
           "model_name": "tiny-llama", "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 4},
           "normalize_activations": False, "apply_b_dec_to_input": True, "context_size": 128, "sae_lens_version": "3.5.0"}
    files = {"old/cfg.json": json.dumps(old).encode(), "old/sae_weights.safetensors": (src / "sae_weights.safetensors").read_bytes()}
    put_in_cache(cache, "org/legacy", files)
    got = load_sae_spec("saelens:org/legacy:old")
    assert got.architecture == "topk" and got.cfg.k == 4
    assert got.metadata["hook_name"] == "blocks.1.hook_resid_post" and got.metadata["model_name"] == "tiny-llama"
    _same(got, sae)


def test_sparsify_repository_one_folder_per_hook_point(cache, tmp_path):
    sae = make_sae("topk", d_in=16, d_sae=64, k=8, seed=3)
    save_sparsify(sae, tmp_path / "sp" / "layers.2")
    files = folder_files(tmp_path / "sp" / "layers.2", "layers.2")
    files["config.json"] = json.dumps({"model": "org/base-model", "ctx_len": 256}).encode()
    snap = put_in_cache(cache, "EleutherAI/sae-tiny", files)
    got = hub.load_sparsify("EleutherAI/sae-tiny", "layers.2")
    _same(got, sae)
    assert got.metadata["hook_name"] == "layers.2" and got.metadata["model_name"] == "org/base-model"
    assert resolve_sae_path("sparsify:EleutherAI/sae-tiny:layers.2") == snap / "layers.2"
    assert load_sae_spec("sparsify:EleutherAI/sae-tiny:layers.2").cfg.k == 8


def test_missing_from_the_cache_offline_says_what_to_download_and_where(cache, table):
    with pytest.raises(FileNotFoundError) as e:
        load_sae_spec("saelens:tiny-res:blocks.1.hook_resid_post")
    msg = str(e.value)
    assert "not in the local Hugging Face cache" in msg and str(cache) in msg
    assert "hf download someone/tiny-saes --include 'l1/topk/*'" in msg
    assert "models--someone--tiny-saes" in msg and "HF_HUB_OFFLINE" in msg
    with pytest.raises(FileNotFoundError, match=r"hf download EleutherAI/sae-tiny --include 'layers\.5/\*'"):
        resolve_sae_path("sparsify:EleutherAI/sae-tiny:layers.5")


def test_a_partial_download_is_reported_not_loaded(cache, topk):
    _, src = topk
    put_in_cache(cache, "org/half", {"f/cfg.json": (src / "cfg.json").read_bytes()})  # weights never arrived
    with pytest.raises(FileNotFoundError, match="f/sae_weights.safetensors of org/half is not in the local"):
        load_sae_spec("saelens:org/half:f")


def test_unknown_release_and_id_list_close_matches(cache, table):
    with pytest.raises(ValueError, match="Unknown SAELens release 'tiny-rez'; close matches: tiny-res"):
        load_sae_spec("saelens:tiny-rez:blocks.1.hook_resid_post")
    with pytest.raises(ValueError, match=r"has no SAE 'blocks\.1\.hook_resid_pre'; close matches: blocks\.1\.hook_resid_post"):
        load_sae_spec("saelens:tiny-res:blocks.1.hook_resid_pre")
    with pytest.raises(ValueError, match=r"'gemma_3' layout.*SAE\.from_pretrained"):
        load_sae_spec("saelens:tiny-scope:layer_1")


@pytest.mark.parametrize("spec", ["saelens:", "saelens:tiny-res", "saelens:tiny-res:", "sparsify:noslash:layers.1",
                                  "sparsify:org/repo", "sparsify:org/repo:"])
def test_malformed_specs_are_refused(cache, table, spec):
    with pytest.raises(ValueError, match="expected (saelens|sparsify):"):
        load_sae_spec(spec)


def test_folders_outside_the_repository_are_refused(cache, table):
    with pytest.raises(ValueError, match=r"may not contain '\.\.'"):
        resolve_sae_path("saelens:org/repo:../../etc")


@pytest.mark.saelens
def test_table_of_the_installed_saelens_maps_a_native_release():
    # Second venv only: the real table that ships inside sae-lens.
    pytest.importorskip("sae_lens")
    from sae_lens.loading.pretrained_saes_directory import get_repo_id_and_folder_name

    tab = hub.release_table()
    assert len(tab) > 50
    native = [r for r, v in tab.items() if v.conversion is None and v.folders]
    release = native[0]
    sae_id = min(tab[release].folders)
    loc, _ = hub.saelens_location(release, sae_id)
    assert (loc.repo_id, loc.folder) == get_repo_id_and_folder_name(release, sae_id)
