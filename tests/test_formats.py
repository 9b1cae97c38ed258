"""On-disk formats: bad inputs give clear errors and write nothing; sparsify folders."""

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from sae_hooks.sae import load_sae, make_sae, save_sparsify


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_k_larger_than_d_sae():
    with pytest.raises(ValueError, match=r"k must be an int in \[1, d_sae=16\]; got 17"):
        make_sae("topk", 8, 16, k=17)
    with pytest.raises(ValueError, match="d_sae=16"):
        make_sae("matching_pursuit", 8, 16, k=17)


def test_matryoshka_widths_must_end_at_d_sae():
    with pytest.raises(ValueError, match=r"widths must end at d_sae=64; got \[16, 32\]"):
        make_sae("matryoshka", 8, 64, k=4, widths=(16, 32))
    with pytest.raises(ValueError, match="strictly increasing"):
        make_sae("matryoshka", 8, 64, k=4, widths=(32, 16, 64))


def test_unknown_architecture_and_option():
    with pytest.raises(ValueError, match=r"unknown SAE architecture 'gatedd'; valid: \["):
        make_sae("gatedd", 8, 16)
    with pytest.raises(ValueError, match=r"have no option\(s\) \['kk'\]"):
        make_sae("topk", 8, 16, kk=3)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_batch(bad):
    sae = make_sae("topk", 8, 16, k=2)
    x = torch.randn(5, 8)
    x[3, 1] = bad
    with pytest.raises(ValueError, match=r"1 non-finite values .* in 1 of 5 rows .*\[3\]"):
        sae.encode(x)
    with pytest.raises(ValueError, match="non-finite"):
        sae.training_loss(x)
    with pytest.raises(ValueError, match=r"shape \[\.\.\., 8\]"):
        sae.encode(torch.randn(5, 9))


def test_wrong_shape_tensor_in_checkpoint(tmp_path):
    sae = make_sae("topk", 8, 16, k=2)
    sae.save(tmp_path / "a")
    save_file({"W_enc": torch.zeros(8, 16), "b_enc": torch.zeros(16),
               "W_dec": torch.zeros(16, 9), "b_dec": torch.zeros(8)},
              str(tmp_path / "a" / "sae_weights.safetensors"))
    with pytest.raises(ValueError, match=r"'W_dec' has shape \(16, 9\), expected \(16, 8\)"):
        load_sae(tmp_path / "a")


def test_missing_tensor_and_unknown_saved_architecture(tmp_path):
    sae = make_sae("standard", 8, 16)
    sae.save(tmp_path / "a")
    cfg_path = tmp_path / "a" / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["metadata"]["sae_hooks"]["architecture"] = "nope"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unknown architecture 'nope'"):
        load_sae(tmp_path / "a")
    del cfg["metadata"]["sae_hooks"]
    cfg["architecture"] = "gated"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="SAELens architecture 'gated' is not supported"):
        load_sae(tmp_path / "a")


def test_truncated_safetensors(tmp_path):
    sae = make_sae("topk", 8, 16, k=2)
    sae.save(tmp_path / "a")
    w = tmp_path / "a" / "sae_weights.safetensors"
    w.write_bytes(w.read_bytes()[:-40])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_sae(tmp_path / "a")


def test_bad_metadata_writes_nothing(tmp_path):
    sae = make_sae("topk", 8, 16, k=2)
    with pytest.raises(ValueError, match="JSON-serialisable"):
        sae.save(tmp_path / "a", metadata={"x": object()})
    assert not (tmp_path / "a").exists() or os.listdir(tmp_path / "a") == []
    # An existing good save survives a failed overwrite untouched.
    sae.save(tmp_path / "b")
    before = {p: (tmp_path / "b" / p).read_bytes() for p in os.listdir(tmp_path / "b")}
    with pytest.raises(ValueError):
        make_sae("topk", 8, 16, k=3).save(tmp_path / "b", metadata={"bad": float("nan")})
    after = {p: (tmp_path / "b" / p).read_bytes() for p in os.listdir(tmp_path / "b")}
    assert before == after


def test_not_a_folder_and_empty_folder(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        load_sae(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no cfg.json"):
        load_sae(tmp_path / "empty")


def test_sparsify_round_trip_and_foreign_folder(tmp_path):
    sae = make_sae("topk", 8, 32, k=3, seed=0)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_()
    save_sparsify(sae, tmp_path / "layers.4")
    back = load_sae(tmp_path / "layers.4")
    x = torch.randn(10, 8)
    assert back.metadata["hook_name"] == "layers.4"
    assert torch.equal(back.encode(x), sae.encode(x))
    # A folder laid out the way sparsify writes it (encoder.weight is [n, d_in]).
    enc = torch.randn(32, 8)
    d = tmp_path / "layers.7"
    d.mkdir()
    save_file({"encoder.weight": enc, "encoder.bias": torch.zeros(32),
               "W_dec": torch.randn(32, 8), "b_dec": torch.zeros(8)}, str(d / "sae.safetensors"))
    (d / "cfg.json").write_text(json.dumps({"expansion_factor": 4, "normalize_decoder": True,
                                            "num_latents": 0, "k": 5, "multi_topk": False,
                                            "skip_connection": False, "d_in": 8}))
    s = load_sae(d)
    z = s.encode(x)
    ref = torch.relu(x @ enc.T)  # sparsify: ReLU(encoder(x - b_dec)), keep top k
    v, i = ref.topk(5, dim=-1)
    assert torch.allclose(z, torch.zeros_like(ref).scatter(-1, i, v))
    with pytest.raises(ValueError, match="TopK SAEs only"):
        save_sparsify(make_sae("standard", 8, 16), tmp_path / "x")


@pytest.mark.parametrize("arch", ["topk", "jumprelu", "matching_pursuit"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_at_load_naming_tensor_and_file(tmp_path, arch, bad):
    sae = make_sae(arch, 8, 16, **({"k": 2} if arch != "jumprelu" else {}), seed=0)
    sae.save(tmp_path / "a")
    path = tmp_path / "a" / "sae_weights.safetensors"
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    tensors["W_dec"][3, 1] = bad
    save_file(tensors, str(path))
    with pytest.raises(ValueError, match=r"sae_weights\.safetensors'.*tensor 'W_dec' holds .*non-finite"):
        load_sae(tmp_path / "a")
    # The same check guards sparsify folders.
    sp = make_sae("topk", 8, 16, k=2, seed=0)
    save_sparsify(sp, tmp_path / "layers.1")
    tensors = load_file(str(tmp_path / "layers.1" / "sae.safetensors"))
    tensors["encoder.bias"][0] = bad
    save_file(tensors, str(tmp_path / "layers.1" / "sae.safetensors"))
    with pytest.raises(ValueError, match=r"sae\.safetensors'.*tensor 'encoder\.bias'"):
        load_sae(tmp_path / "layers.1")


def test_non_finite_number_in_cfg_json_is_refused(tmp_path):
    sae = make_sae("batchtopk", 8, 16, k=2, seed=0)
    sae.save(tmp_path / "a")
    cfg_path = tmp_path / "a" / "cfg.json"
    cfg_path.write_text(cfg_path.read_text().replace('"threshold_sum": 0.0', '"threshold_sum": NaN'))
    with pytest.raises(ValueError, match="non-finite number NaN"):
        load_sae(tmp_path / "a")


def test_atomic_writers_replace_whole_files_and_leave_nothing_on_error(tmp_path, monkeypatch):
    from sae_hooks import _io

    target = tmp_path / "f.json"
    _io.atomic_write_text(target, "old")
    _io.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(_io.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        _io.atomic_write_text(target, "half")
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["f.json"]
