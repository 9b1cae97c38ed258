"""``--dtype auto``: bf16 only where the device multiplies bf16 natively, and what a run records of it."""

from __future__ import annotations

import json

import pytest

from sae_hooks import hardware
from sae_hooks.cache import CacheConfig, write_cache
from sae_hooks.hardware import native_bf16, resolve_model_dtype
from sae_hooks.run import RunConfig, train
from tests.test_train import tiny_config, tiny_env  # noqa: F401  (tiny_env is a fixture)

EPYC = "flags : fpu sse2 avx avx2 avx512f avx512bw avx512_bf16 avx512_vnni"
XEON_AMX = "flags : fpu sse2 avx avx2 avx512f avx512bw avx512_vnni amx_bf16 amx_tile amx_int8"
SKYLAKE = "flags : fpu sse2 avx avx2 avx512f avx512bw avx512dq"
LAPTOP = "flags : fpu sse2 avx avx2 fma"


@pytest.fixture
def cpu(monkeypatch):
    """Pretend the CPU has the given /proc/cpuinfo flags line (and no oneDNN cap unless a test sets one)."""
    monkeypatch.delenv(hardware.ONEDNN_ISA_ENV, raising=False)

    def set_flags(line: str) -> None:
        monkeypatch.setattr(hardware, "_cpu_flags", lambda: line)
        monkeypatch.setattr(hardware.torch.cpu, "_is_avx512_bf16_supported", lambda: "avx512_bf16" in line)
        monkeypatch.setattr(hardware.torch.cpu, "_is_amx_tile_supported", lambda: "amx_tile" in line)
    return set_flags


def test_torch_and_the_kernel_agree_on_this_cpu():
    """Where both are available, torch's CPU detection and /proc/cpuinfo say the same of this machine's CPU."""
    flags = hardware._cpu_flags()
    if not flags or not hasattr(hardware.torch.cpu, "_is_avx512_bf16_supported"):
        pytest.skip("needs Linux /proc/cpuinfo and a torch with torch.cpu._is_avx512_bf16_supported")
    assert hardware.cpu_native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_without_torch_detection_the_flags_decide(cpu, monkeypatch):
    monkeypatch.delattr(hardware.torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.setattr(hardware, "_cpu_flags", lambda: EPYC)
    assert hardware.cpu_native_bf16()
    monkeypatch.setattr(hardware, "_cpu_flags", lambda: LAPTOP)
    assert not hardware.cpu_native_bf16()


@pytest.mark.parametrize(("flags", "native"), [(EPYC, True), (XEON_AMX, True), (SKYLAKE, False), (LAPTOP, False),
                                               ("", False)])
def test_native_bf16_reads_the_cpu_flags(cpu, flags, native):
    cpu(flags)
    assert native_bf16("cpu") is native
    assert resolve_model_dtype("auto", "cpu") == ("bf16" if native else "fp32")
    for explicit in ("bf16", "fp32", "fp16"):
        assert resolve_model_dtype(explicit, "cpu") == explicit  # an explicit dtype is never second-guessed
    assert not native_bf16("meta") and resolve_model_dtype("auto", "meta") == "fp32"


@pytest.mark.parametrize(("cap", "native"), [("AVX2", False), ("avx512_core", False), (" AVX512_CORE_VNNI ", False),
                                             ("AVX512_CORE_BF16", True), ("AVX512_CORE_AMX", True), ("", True)])
def test_a_onednn_cap_below_bf16_turns_native_bf16_off(cpu, monkeypatch, cap, native):
    """torch's CPU bf16 products run in oneDNN: capped below AVX512_CORE_BF16 they convert in software, slower than
    fp32 (bench/dtype.py), whatever the CPU's flags say."""
    cpu(EPYC)
    monkeypatch.setenv(hardware.ONEDNN_ISA_ENV, cap)
    assert native_bf16("cpu") is native


def test_train_and_cache_default_to_auto_and_record_what_ran(cpu):
    assert RunConfig().dtype == "auto" and CacheConfig().model_dtype == "auto"
    cpu(LAPTOP)
    assert RunConfig().resolved_dtype() == "fp32" and RunConfig().fingerprint()["dtype"] == "fp32"
    assert CacheConfig().fingerprint()["model_dtype"] == "fp32"
    cpu(EPYC)
    assert RunConfig().resolved_dtype() == "bf16" and RunConfig().fingerprint()["dtype"] == "bf16"
    # A run recorded before auto existed (dtype bf16 spelled out) is the same run as auto on a bf16 machine.
    assert RunConfig(dtype="bf16").fingerprint() == RunConfig().fingerprint()
    assert RunConfig(dtype="fp32").fingerprint() != RunConfig().fingerprint()


def test_a_run_under_auto_loads_the_model_in_the_resolved_dtype(cpu, tiny_env, tmp_path):
    """On a CPU without native bf16 the default run loads the model in fp32, records fp32, and a resume on a machine
    that resolves auto to bf16 is refused (it would train on other activations), naming the flag that fixes it."""
    cpu(LAPTOP)
    out = tmp_path / "run"
    kw = dict(dtype="auto", tokens=2048, eval_every=0, checkpoint_every=0, eval_ce_tokens=0)
    r = train(tiny_config(tiny_env, out, **kw))
    assert json.loads((out / "run.json").read_text())["settings"]["dtype"] == "fp32"
    fp32 = train(tiny_config(tiny_env, tmp_path / "fp32", **{**kw, "dtype": "fp32"}))
    assert r.saes[0].fvu == fp32.saes[0].fvu  # the same run, bitwise: same code path, same dtype
    cpu(EPYC)
    with pytest.raises(ValueError, match=r"other settings") as err:
        train(tiny_config(tiny_env, out, **kw, resume=True))
    assert "dtype: was 'fp32', now 'bf16'" in str(err.value) and "tokens" not in str(err.value)
    assert "pass --dtype fp32 to resume it here" in str(err.value)


def test_a_cache_under_auto_records_the_resolved_dtype(cpu, tiny_env, tmp_path):
    cpu(LAPTOP)
    out = tmp_path / "acts"
    write_cache(CacheConfig(model=tiny_env["model"], corpus=tiny_env["corpus"], hooks=("resid_post.1",), tokens=1024,
                            ctx=32, batch_tokens=256, shard_mb=1, progress="off", out=str(out)))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model_dtype"] == "fp32" and manifest["settings"]["model_dtype"] == "fp32"
