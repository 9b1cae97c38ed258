"""What the hardware multiplies natively, and the defaults that follow from it.

bf16 pays off only where the hardware multiplies bf16 natively. Measured on SmolLM2-135M to block 6
(32 x 128 tokens, 2 threads, AMD EPYC with AVX512-BF16): a bf16 forward ran at 1.89x the tokens/s
of fp32 with every instruction set enabled, but at 0.27x with oneDNN capped at AVX2 and 0.50x
capped at AVX-512 without bf16 (``ONEDNN_MAX_CPU_ISA=AVX2`` / ``AVX512_CORE``, emulating CPUs
without it): there bf16 is converted in software, and fp32 is 2-4x faster. Hence ``"auto"``.

    resolve_model_dtype("auto", "cpu")   # "bf16" on an AVX512-BF16 or AMX CPU, else "fp32"
"""

from __future__ import annotations

import os

import torch

MODEL_DTYPES = ("auto", "bf16", "fp32", "fp16")
"""The LM dtypes `sae-hooks train --dtype` and `sae-hooks cache --model-dtype` take (``resolve_model_dtype``)."""
ONEDNN_ISA_ENV = "ONEDNN_MAX_CPU_ISA"
# oneDNN instruction-set caps (its documented names) below which it has no native bf16 product.
_ONEDNN_NO_BF16 = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI"})


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def cpu_native_bf16() -> bool:
    """Whether this CPU has AVX512-BF16 or AMX: torch's own CPU detection (``torch.cpu``, any OS) where this torch
    has it, else the flags in /proc/cpuinfo (Linux; elsewhere False)."""
    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if avx512_bf16 is not None and amx is not None:
        try:
            return bool(avx512_bf16() or amx())
        except RuntimeError:
            pass
    flags = _cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` multiplies bf16 matrices natively (where bf16 pays off).

    CUDA: ``torch.cuda.is_bf16_supported()``. CPU: AVX512-BF16 or AMX (``cpu_native_bf16``), unless
    ``ONEDNN_MAX_CPU_ISA`` caps oneDNN (torch's CPU bf16 products) below AVX512_CORE_BF16. Measured: bf16
    products ~2.2x fp32 on an AVX512-BF16 AMD EPYC, ~4x on an AMX Xeon.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    if os.environ.get(ONEDNN_ISA_ENV, "").strip().upper() in _ONEDNN_NO_BF16:
        return False
    return cpu_native_bf16()


def resolve_model_dtype(dtype: str, device: torch.device | str) -> str:
    """``"auto"`` → ``"bf16"`` where ``device`` multiplies bf16 natively, else ``"fp32"``; any other
    name is returned as given.

        resolve_model_dtype("auto", "cuda")   # "bf16" on an Ampere or later GPU
    """
    if dtype != "auto":
        return dtype
    return "bf16" if native_bf16(device) else "fp32"
