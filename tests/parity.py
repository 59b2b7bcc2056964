"""Helpers for parity-fixture tests (format: ../shared/fixtures/FORMAT.md)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

SHARED = Path(os.environ.get("CVKIT_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
FIXTURES = SHARED / "fixtures"
DATA = SHARED / "data"


def load_fixture(group: str, stem: str):
    """(meta, ref tensors, synthetic official state_dict) of fixture `group/stem`; skips the
    test when ../shared is absent."""
    js = FIXTURES / group / f"{stem}.json"
    if not js.is_file():
        pytest.skip(f"fixture {js} not present")
    meta = json.loads(js.read_text())
    st = js.with_suffix(".safetensors")
    ref = {}
    if st.is_file():
        from safetensors.torch import load_file
        ref = load_file(str(st))
    if str(FIXTURES) not in sys.path:
        sys.path.insert(0, str(FIXTURES))
    from synth import synth_state_dict

    layout = meta.get("layout")
    sd = synth_state_dict(layout, seed=meta["seed"]) if layout and meta.get("seed") is not None else {}
    return meta, ref, sd


def synth(layout, seed):
    if str(FIXTURES) not in sys.path:
        sys.path.insert(0, str(FIXTURES))
    from synth import synth_state_dict
    return synth_state_dict(layout, seed=seed)


def assert_close(out: torch.Tensor, ref: torch.Tensor, tol: dict, name: str) -> None:
    """|out - ref| <= atol + rtol * max|ref| everywhere; on failure name the output, the worst
    index and both values."""
    out = out.detach().float()
    ref = ref.float()
    assert tuple(out.shape) == tuple(ref.shape), f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    bound = tol["atol"] + tol["rtol"] * ref.abs().max().item()
    err = (out - ref).abs()
    worst = err.max().item()
    if not worst <= bound:
        idx = tuple(int(i) for i in torch.unravel_index(err.argmax(), err.shape))
        pytest.fail(f"{name}: max error {worst:.3g} > {bound:.3g} at {idx}: "
                    f"cvkit {out[idx].item():.6g} vs official {ref[idx].item():.6g}")


ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}
"""Environment for CLI subprocesses of tests that pin one thread (see conftest.one_thread)."""
