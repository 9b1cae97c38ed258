"""The pretrained zoo: registry against files, loading by name, bad entries, the CLI, the installed
wheel, and (slow) every registry figure re-measured with its own recorded command."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import sae_hooks
from sae_hooks import pretrained as pt
from sae_hooks.hookpoints import parse_hook
from sae_hooks.sae import make_sae

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "pretrained"
BUDGET = 64_000_000
# The registry's figures come from EVAL on TOKENS held-out tokens (pretrained/pack.py measure), few enough that
# the slow test below can re-run the command of every SAE (~40 s each on a 2-core CPU, ~8 minutes for all).
EVAL = "sae-hooks eval --sae pretrained:{name} --tokens {tokens} --ctx 128 --json"
TOKENS = 3_072
# One test per shipped SAE, named by it (read at collection time, so a new entry gets its own tests).
NAMES = [e.name for e in pt.load_registry(ZOO).entries]


@pytest.fixture(scope="module")
def reg():
    return pt.load_registry(ZOO)


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(pt.ENV, raising=False)


def test_the_package_finds_the_checkout_zoo(no_env, reg):
    assert pt.shipped_dir() == ZOO  # through the sae_hooks/zoo link (what the wheel ships as real files)
    assert (ROOT / "sae_hooks" / "zoo").resolve() == ZOO
    assert pt.load_registry().names == reg.names


def test_registry_and_folders_agree(reg):
    for e in reg.entries:
        folder = pt.verify_entry(e, ZOO, shapes=True)  # sizes, sha256, tensor shapes
        assert set(e.files) == {"cfg.json", "sae_weights.safetensors"}
        cfg = json.loads((folder / "cfg.json").read_text())
        assert (cfg["d_in"], cfg["d_sae"]) == (e.d_in, e.d_sae)
        assert str(parse_hook(cfg["metadata"]["hook_name"])) == e.hook
        assert cfg["metadata"]["sae_hooks"]["architecture"] == e.architecture
        assert cfg["metadata"]["sae_hooks"]["config"].get("k") == e.k
        assert cfg["metadata"]["model_name"] == e.model
        want = {"W_dec": (e.d_sae, e.d_in), "b_dec": (e.d_in,)}
        if e.architecture != "matching_pursuit":  # MP is tied: it stores only the dictionary
            want |= {"W_enc": (e.d_in, e.d_sae), "b_enc": (e.d_sae,)}
        if e.architecture in ("matryoshka", "batchtopk", "jumprelu"):  # SAELens reads these as JumpReLU
            want |= {"threshold": (e.d_sae,)}
        assert e.tensors == want, e.name
    stray = sorted(p.name for p in ZOO.iterdir() if p.is_dir() and (p / "cfg.json").is_file() and reg.get(p.name) is None)
    assert stray == []


def test_the_zoo_covers_three_depths_and_three_architectures_within_budget(reg):
    total = sum(p.stat().st_size for e in reg.entries for p in (ZOO / e.name).iterdir())
    assert total == sum(e.size for e in reg.entries) <= BUDGET
    assert len(reg.entries) >= 9
    have = {(e.hook, e.architecture) for e in reg.entries}
    layers = sorted({parse_hook(h).layer for h, _ in have})
    assert len(layers) >= 3 and layers[-1] >= 24  # an early, a middle and a late layer (of 30)
    for layer in layers[:1] + layers[len(layers) // 2:len(layers) // 2 + 1] + layers[-1:]:
        for arch in ("topk", "matryoshka", "matching_pursuit"):
            assert (f"resid_post.{layer}", arch) in have, (layer, arch)
    for e in reg.entries:
        t = e.training
        assert t["command"].startswith("sae-hooks train ") and "/tmp" not in t["command"], e.name
        assert t["tokens"] >= 1_000_000, (e.name, t["tokens"])
        assert len(t["commit"]) >= 40
        assert e.metrics is not None, f"{e.name} was never measured: python pretrained/pack.py measure {e.name}"
        assert e.metrics["command"] == EVAL.format(name=e.name, tokens=TOKENS)
        for key in pt.METRIC_KEYS:
            assert isinstance(e.metrics[key], (int, float)), (e.name, key)


@pytest.mark.parametrize("name", NAMES)
def test_every_entry_loads_by_name_as_float32(no_env, reg, name):
    e = reg.get(name)
    sae = sae_hooks.load_pretrained(e.name)
    assert sae.architecture == e.architecture and (sae.cfg.d_in, sae.cfg.d_sae) == (e.d_in, e.d_sae)
    assert sae.W_dec.dtype == torch.float32
    assert torch.equal(sae.W_dec.half().float(), sae.W_dec)  # stored as float16, handed back as float32
    assert torch.isfinite(sae.W_dec).all()
    x = sae.b_dec + torch.randn(16, e.d_in, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = sae.encode(x)
    if e.architecture in ("topk", "matching_pursuit"):
        assert ((z != 0).sum(-1) <= e.k).all()
    assert pt.resolve_sae_path(f"pretrained:{e.name}") == ZOO / e.name


# ---------------------------------------------------------------------------------------------
# Bad names and damaged entries


@pytest.fixture
def tiny_zoo(tmp_path, monkeypatch, no_env):
    """A zoo of two tiny SAEs with their registry, standing in for the shipped one."""
    root = tmp_path / "zoo"
    root.mkdir()
    entries = []
    for name, arch in (("tiny-topk", "topk"), ("tiny-mp", "matching_pursuit")):
        sae = make_sae(arch, d_in=8, d_sae=16, k=2, seed=0, metadata={"hook_name": "blocks.1.hook_resid_post"})
        sae.save(root / name)
        files = {p.name: pt.FileRecord(p.stat().st_size, pt.sha256_file(p)) for p in (root / name).iterdir()}
        from safetensors import safe_open

        with safe_open(str(root / name / "sae_weights.safetensors"), framework="pt") as f:
            tensors = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
        entries.append(pt.Entry(name, "tiny", "resid_post.1", arch, 8, 16, 2, files, tensors,
                                {"command": "sae-hooks train ...", "commit": "0" * 40, "tokens": 1}))
    pt.write_registry(pt.Registry(root / pt.REGISTRY, entries, {}))
    monkeypatch.setattr(pt, "shipped_dir", lambda: root)
    return root


def test_unknown_name_lists_close_matches(tiny_zoo):
    with pytest.raises(FileNotFoundError) as e:
        sae_hooks.load_pretrained("tiny-topkk")
    msg = str(e.value)
    assert "No pretrained SAE 'tiny-topkk'. Did you mean tiny-topk" in msg
    assert "Available: tiny-mp, tiny-topk." in msg and str(tiny_zoo) in msg and "sae-hooks pretrained list" in msg
    for bad in ["", "../zoo/tiny-topk", "tiny-topk/", "/etc", ".hidden"]:
        with pytest.raises(FileNotFoundError, match="No pretrained SAE"):
            pt.resolve_pretrained(bad)


def test_missing_corrupt_or_extra_files_name_the_file(tiny_zoo):
    assert sae_hooks.load_pretrained("tiny-mp").architecture == "matching_pursuit"
    weights = tiny_zoo / "tiny-topk" / "sae_weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF  # same size, one weight altered
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"file {weights} is corrupt or altered \(sha256"):
        sae_hooks.load_pretrained("tiny-topk")
    weights.write_bytes(bytes(data[:-10]))
    with pytest.raises(ValueError, match=rf"file {weights} has \d+ bytes, the registry says \d+ \(truncated"):
        sae_hooks.load_pretrained("tiny-topk")
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=rf"file {weights} is missing"):
        pt.resolve_sae_path("pretrained:tiny-topk")
    (tiny_zoo / "tiny-mp" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"holds files the registry does not list: \['notes.txt'\]"):
        pt.resolve_pretrained("tiny-mp")
    shutil.rmtree(tiny_zoo / "tiny-mp")
    with pytest.raises(FileNotFoundError, match="its folder .* is missing"):
        pt.resolve_pretrained("tiny-mp")


def test_damaged_registry_is_reported(tiny_zoo):
    (tiny_zoo / pt.REGISTRY).write_text("{not json")
    with pytest.raises(ValueError, match="registry.json: not valid JSON.*reinstall sae-hooks"):
        pt.load_registry(tiny_zoo)
    (tiny_zoo / pt.REGISTRY).write_text(json.dumps({"format": 1, "saes": {"x": {"model": "m"}}}))
    with pytest.raises(ValueError, match="entry 'x' lacks"):
        pt.load_registry(tiny_zoo)


def test_env_folder_is_searched_first(tiny_zoo, tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    make_sae("topk", d_in=8, d_sae=32, k=2, seed=1).save(mine / "tiny-topk")  # same name as a shipped one
    monkeypatch.setenv(pt.ENV, str(mine))
    assert pt.pretrained_dirs() == [mine, tiny_zoo]
    assert sae_hooks.load_pretrained("tiny-topk").cfg.d_sae == 32
    monkeypatch.setenv(pt.ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=f"{pt.ENV}=.* is not a folder"):
        pt.resolve_pretrained("tiny-topk")


def test_cli_pretrained(capsys, no_env, reg):
    from sae_hooks.cli import main

    assert main(["pretrained", "list", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [s["name"] for s in out["saes"]] == reg.names and out["bytes"] == sum(e.size for e in reg.entries)
    assert main(["pretrained", "list"]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in reg.names) and "FVU" in text and "rec.mean" in text
    name = reg.names[0]
    assert main(["pretrained", "show", name, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert shown["name"] == name and shown["training"]["command"].startswith("sae-hooks train")
    assert main(["pretrained", "path", name, "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["path"] == str(ZOO / name)
    assert main(["pretrained", "verify", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["verified"] == reg.names
    assert main(["pretrained", "show", name[:-1] + "x", "--json"]) == 1
    assert "Did you mean" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]
    assert main(["pretrained", "show", "--json"]) == 1
    assert "takes one NAME" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]


# ---------------------------------------------------------------------------------------------
# The installed wheel


@pytest.mark.slow
def test_installed_wheel_loads_a_pretrained_sae_by_name(tmp_path, reg):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc")
    shutil.copytree(ROOT / "sae_hooks", src / "sae_hooks", symlinks=True, ignore=ignore)  # keeps zoo -> ../pretrained
    shutil.copytree(ZOO, src / "pretrained", ignore=ignore)
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist)], check=True, capture_output=True, timeout=600)
    wheel = next(dist.glob("sae_hooks-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for e in reg.entries:
        for f in e.files:
            assert f"sae_hooks/zoo/{e.name}/{f}" in names
    assert "sae_hooks/zoo/registry.json" in names and "sae_hooks/dashboard/assets/index.js" in names
    # The wheel's size is the zoo's plus ~0.3 MB of code (README states it).
    assert wheel.stat().st_size < sum(e.size for e in reg.entries) + 2_000_000

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=600)
    # The dependencies (torch, safetensors, ...) come from this environment's site-packages, appended after the
    # fresh venv's own; this environment's editable sae_hooks is not (its finder is set up by a .pth file there,
    # which a path line does not run).
    deps = next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
    (site / "zz_deps.pth").write_text(deps + "\n")
    name = reg.names[-1]
    code = (f"import json, sae_hooks, sae_hooks.pretrained as pt; sae = sae_hooks.load_pretrained({name!r}); "
            "print(json.dumps({'module': sae_hooks.__file__, 'zoo': str(pt.shipped_dir()), 'd_sae': sae.cfg.d_sae}))")
    env = {k: v for k, v in os.environ.items() if k not in (pt.ENV, "PYTHONPATH")}
    run = subprocess.run([str(py), "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                         check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["module"].startswith(str(site)) and got["zoo"] == str(site / "sae_hooks" / "zoo")
    assert got["d_sae"] == reg.get(name).d_sae
    cli = subprocess.run([str(venv / "bin" / "sae-hooks"), "pretrained", "verify", "--json"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300, check=False)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert json.loads(cli.stdout.strip().splitlines()[-1])["verified"] == reg.names


# ---------------------------------------------------------------------------------------------
# Every registry figure, re-measured with the command the registry records


# Same command on the same tokens: what differs is float rounding between CPUs (MKL or not, AMX or AVX-512),
# so continuous figures agree to 1 % (relative) or 0.002 (absolute, for figures near 0); a dead latent is a
# count, allowed to move by 2 latents.
REL, ABS = 0.01, 0.002
@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_registry_metrics_remeasured(smollm2, capsys, no_env, reg, name):
    from sae_hooks.cli import main

    e = reg.get(name)
    argv = shlex.split(e.metrics["command"])
    assert argv[0] == "sae-hooks"
    assert main(argv[1:]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in pt.METRIC_KEYS:
        want = e.metrics[key]
        if key == "dead_frac":
            assert abs(got[key] - want) <= 2 / e.d_sae + 1e-9, (e.name, key, got[key], want)
        elif key == "tokens":
            assert got[key] == want
        else:
            assert got[key] == pytest.approx(want, rel=REL, abs=ABS), (e.name, key)
