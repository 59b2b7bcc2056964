"""What the CPU can do: feature flags and whether bf16 is native (and so worth using)."""
from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where it does not exist)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); without it, bf16 autocast
    runs far slower than fp32 (DESIGN.md: 0.1 against 34 GFLOP/s on an AVX2-only machine)."""
    if {"avx512_bf16", "amx_bf16"} & cpu_flags():
        return True
    capability = torch.backends.cpu.get_cpu_capability()
    return "AVX512_BF16" in capability or "AMX" in capability
