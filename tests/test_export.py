"""`cvkit export` and running exported files: ONNX / TorchScript parity with eager PyTorch for the
tasks, a sample of backbones (one per family) and the export-unfriendly operators, and one clear
line for each kind of bad input.

Tolerances: every output within 1e-4 * max|PyTorch output| + 1e-6 of PyTorch (backbones, tasks'
raw outputs); upscaled images within 1 grey level.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_foundation import assert_one_line_error, cli

import cvkit
from cvkit.errors import CvkitError, UsageError
from cvkit.export import export, export_module, load_exported
from cvkit.media import Frame

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
RTOL, ATOL = 1e-4, 1e-6
# Registers `cvkit export` when cvkit/cli.py does not yet (register() is idempotent).
_EXPORT_MAIN = "import cvkit.cli as c; from cvkit.export_cli import register; register(c.app); c.main()"


def cvkit_export(*args):
    return subprocess.run([sys.executable, "-c", _EXPORT_MAIN, "export", *args], check=False,
                          capture_output=True, text=True, timeout=300)


def assert_tree_close(out, ref, name):
    outs, refs = torch.utils._pytree.tree_leaves(out), torch.utils._pytree.tree_leaves(ref)
    assert len(outs) == len(refs), name
    for i, (o, r) in enumerate(zip(outs, refs)):
        assert o.shape == r.shape, (name, i, o.shape, r.shape)
        err, bound = float((o.float() - r.float()).abs().max()), ATOL + RTOL * float(r.float().abs().max())
        assert err <= bound, f"{name} output {i}: max error {err:.3g} > {bound:.3g}"


def frame(h, w, seed=0):
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Frame(image=img, source="t.png", index=0, timestamp=None, meta={"kind": "image", "rel": "t.png"})


def run_task(task, f):
    batch, metas = task.preprocess([f])
    with torch.no_grad():
        raw = task.forward(batch)
    return raw, task.postprocess(raw, metas)[0]


# -- upscale ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", ["espcn_x3", "scnet_x4", "cfsr_x4"])
def test_upscale_onnx_with_dynamic_size_matches_pytorch_within_one_grey_level(tmp_path, preset):
    torch.manual_seed(0)
    task = cvkit.load_task(preset, weights="none")
    report = export(task, "onnx", tmp_path / "sr.onnx", imgsz=(24, 32), dynamic=True)
    assert report.dynamic_error is not None and report.metadata["task"] == "upscale"
    onnx_task = cvkit.load_task("ignored", weights=str(report.path))
    assert type(onnx_task.model).__name__ == "OnnxModule" and onnx_task.scale == task.scale
    f = frame(29, 41)  # neither the traced nor the verified size
    a, b = run_task(task, f)[1], run_task(onnx_task, f)[1]
    assert a.shape == b.shape == (29 * task.scale, 41 * task.scale, 3)
    assert np.abs(a.astype(int) - b).max() <= 1


def test_torchscript_round_trip_keeps_outputs_and_metadata(tmp_path):
    torch.manual_seed(0)
    task = cvkit.load_task("espcn_x3", weights="none")
    report = export(task, "torchscript", tmp_path / "espcn.pt", imgsz=(16, 20), dynamic=True)
    assert cvkit.export.is_exported(report.path)  # .pt recognised by its cvkit metadata
    ts_task = cvkit.load_task("scnet_x4", weights=str(report.path))  # the file's own preset wins
    assert type(ts_task.model).__name__ == "TorchScriptModule"
    assert ts_task.model.metadata["preset"]["name"] == "espcn_x3" and ts_task.scale == 3
    x = torch.rand(2, 1, 18, 22)
    with torch.no_grad():
        assert_tree_close(ts_task.model(x), task.model(x), "espcn torchscript")


def test_static_export_runs_larger_batches_in_chunks_and_refuses_other_sizes(tmp_path):
    torch.manual_seed(0)
    task = cvkit.load_task("espcn_x3", weights="none")
    export(task, "onnx", tmp_path / "s.onnx", imgsz=(16, 16))
    model = load_exported(tmp_path / "s.onnx")
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        assert_tree_close(model(x), task.model(x), "espcn batch 3")
    with pytest.raises(CvkitError, match=r"exported for input 1x1x16x16 .*--dynamic"):
        model(torch.rand(1, 1, 16, 24))


def test_cli_upscale_with_onnx_weights_writes_the_pytorch_pngs(tmp_path):
    from cvkit.tasks.upscale.models import SR_MODELS
    from safetensors.torch import save_file

    torch.manual_seed(0)
    save_file(SR_MODELS.build("espcn", scale=3, mode="y").state_dict(), str(tmp_path / "espcn.safetensors"))
    (tmp_path / "espcn.yaml").write_text("name: espcn_test\ntask: upscale\nmodel: espcn\nargs: {scale: 3, mode: y}\n")
    res = cvkit_export("--preset", str(tmp_path / "espcn.yaml"), "--weights", str(tmp_path / "espcn.safetensors"),
                       "--format", "onnx", "--imgsz", "32", "32", "--dynamic", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "espcn_test.onnx").is_file() and "verified against PyTorch" in res.stdout
    ref = cli("upscale", str(EXAMPLES), "--preset", str(tmp_path / "espcn.yaml"), "--weights",
              str(tmp_path / "espcn.safetensors"), "--out", str(tmp_path / "torch"))
    out = cli("upscale", str(EXAMPLES), "--weights", str(tmp_path / "espcn_test.onnx"), "--out", str(tmp_path / "ort"))
    assert ref.returncode == 0 and out.returncode == 0, (ref.stderr, out.stderr)
    assert "warning" not in out.stderr  # no random-weights warning for an exported file
    for src in EXAMPLES.glob("*.png"):
        a = np.asarray(Image.open(tmp_path / "torch" / src.name)).astype(int)
        b = np.asarray(Image.open(tmp_path / "ort" / src.name)).astype(int)
        assert a.shape == b.shape and np.abs(a - b).max() <= 1, src.name


# -- the other tasks: whichever have a Task class and a preset ------------------------------------

def _first_preset(task_name):
    from cvkit.presets import load_preset, preset_names

    names = [n for n in preset_names() if load_preset(n)["task"] == task_name]
    return (sorted(names, key=lambda n: ("synthetic" not in n, n)) or [None])[0]


@pytest.mark.parametrize("task_name", ["detect", "segment", "panoptic", "depth", "lanes"])
def test_task_export_runs_through_the_task_and_matches_pytorch(tmp_path, task_name):
    from cvkit.engine.task import get_task

    try:
        get_task(task_name)
    except UsageError:
        pytest.skip(f"no {task_name} Task class in this tree yet")
    preset = _first_preset(task_name)
    if preset is None:
        pytest.skip(f"no {task_name} preset yet")
    torch.manual_seed(0)
    task = cvkit.load_task(preset, weights="none")
    report = export(task, "onnx", tmp_path / f"{task_name}.onnx")
    size = report.metadata["imgsz"]
    onnx_task = cvkit.load_task("ignored", weights=str(report.path), task=task_name)
    f = frame(*size)
    raw, _ = run_task(task, f)
    onnx_raw, result = run_task(onnx_task, f)
    assert_tree_close(onnx_raw, raw, f"{task_name} ({preset})")
    assert isinstance(onnx_task.serialise(result), dict)


# -- backbones: one per family ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v1", "mobilenet_v2", "vgg16_bn_scnn", "convnext_atto",
                                  "fasternet_t0", "hornet_t_7x7", "inceptionnext_atto", "lsnet_t",
                                  "caformer_s18", "unireplknet_a"])
def test_deployed_backbone_features_in_onnxruntime_match_pytorch(tmp_path, name):
    from cvkit.nn import deploy

    torch.manual_seed(0)
    model = deploy(cvkit.create_backbone(name))
    x = torch.randn(1, 3, 64, 64)
    export_module(model, (x,), tmp_path / f"{name}.onnx")
    with torch.no_grad():
        assert_tree_close(load_exported(tmp_path / f"{name}.onnx")(x), model(x), name)


# -- export-unfriendly operators -------------------------------------------------------------------

def test_pure_pytorch_deformable_conv_exports_with_dynamic_size(tmp_path):
    from cvkit.nn.deform_conv import ModulatedDeformConv2d

    torch.manual_seed(0)
    m = ModulatedDeformConv2d(8, 8, 3, padding=1, deform_groups=2).eval()
    torch.nn.init.normal_(m.conv_offset.weight, std=0.3)
    export_module(m, (torch.randn(1, 8, 12, 16),), tmp_path / "dcn.onnx", dynamic=True)
    x = torch.randn(2, 8, 20, 9)
    with torch.no_grad():
        assert_tree_close(load_exported(tmp_path / "dcn.onnx")(x), m(x), "dcnv2")


def test_scnn_message_passing_exports_static_and_refuses_dynamic(tmp_path):
    from cvkit.tasks.lanes.scnn import MessagePassing

    torch.manual_seed(0)
    m = MessagePassing(4, 3).eval()
    x = torch.randn(1, 4, 6, 8)
    export_module(m, (x,), tmp_path / "mp.onnx")
    with torch.no_grad():
        assert_tree_close(load_exported(tmp_path / "mp.onnx")(x), m(x), "scnn")
    with pytest.raises(CvkitError, match="--dynamic: .*baked into the traced graph"):
        export_module(MessagePassing(2, 3).eval(), (torch.randn(1, 2, 3, 4),), tmp_path / "mp_dyn.onnx",
                      dynamic=True)
    assert not (tmp_path / "mp_dyn.onnx").exists()


def test_fft_names_the_operator_and_torchscript_exports_it(tmp_path):
    """HorNet's global filter (hornet_t_gf) uses rfft2/irfft2, which torch's ONNX exporter lacks."""
    class GlobalFilter(torch.nn.Module):
        def forward(self, x):
            return torch.fft.irfft2(torch.fft.rfft2(x, norm="ortho") * 0.5, s=x.shape[-2:], norm="ortho")

    x = torch.randn(1, 4, 8, 10)
    with pytest.raises(CvkitError, match=r"aten::fft_rfft2 has no ONNX form at opset 17.*--format torchscript"):
        export_module(GlobalFilter(), (x,), tmp_path / "gf.onnx")
    assert not (tmp_path / "gf.onnx").exists()
    export_module(GlobalFilter(), (x,), tmp_path / "gf.torchscript", "torchscript")
    assert_tree_close(load_exported(tmp_path / "gf.torchscript")(x), GlobalFilter()(x), "global filter")


def test_grid_sample_names_the_opset_it_needs(tmp_path):
    class Warp(torch.nn.Module):
        def forward(self, x, grid):
            return F.grid_sample(x, grid, align_corners=False)

    args = (torch.randn(1, 4, 8, 8), torch.rand(1, 5, 7, 2) * 2 - 1)
    with pytest.raises(CvkitError, match=r"aten::grid_sampler has no ONNX form at opset 15; it needs opset 16"):
        export_module(Warp(), args, tmp_path / "g.onnx", opset=15)
    export_module(Warp(), args, tmp_path / "g.onnx", opset=16)
    assert_tree_close(load_exported(tmp_path / "g.onnx")(*args), Warp()(*args), "grid_sample")


# -- bad input -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scnet_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "scnet.onnx"
    torch.manual_seed(0)
    export("scnet_x4", "onnx", path, weights="none", imgsz=(16, 16))
    return path


def test_onnx_file_for_another_task_is_a_usage_error(scnet_onnx):
    with pytest.raises(UsageError, match="exported for the upscale task, not depth"):
        cvkit.load_task("ignored", weights=str(scnet_onnx), task="depth")


def test_onnx_file_for_another_input_size_exits_1_with_one_line(scnet_onnx):
    res = cli("upscale", str(EXAMPLES), "--weights", str(scnet_onnx), "--no-save", "--no-json")
    assert_one_line_error(res, 1)
    assert "exported for input 1x3x16x16" in res.stderr


def test_truncated_onnx_exits_1_with_one_line(scnet_onnx, tmp_path):
    (tmp_path / "cut.onnx").write_bytes(scnet_onnx.read_bytes()[:5000])
    res = cli("upscale", str(EXAMPLES), "--weights", str(tmp_path / "cut.onnx"), "--no-save")
    assert_one_line_error(res, 1)
    assert "not a readable ONNX model" in res.stderr


def test_half_on_cpu_and_unknown_format_are_usage_errors():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert_one_line_error(cvkit_export("--preset", "scnet_x4", "--weights", "none", "--half"), 2)
    assert_one_line_error(cvkit_export("--preset", "scnet_x4", "--format", "tflite"), 2)


def test_without_onnxruntime_export_and_onnx_weights_say_what_to_install(scnet_onnx, tmp_path):
    blocker = tmp_path / "block"
    for name in ("onnx", "onnxruntime"):
        (blocker / name).mkdir(parents=True)
        (blocker / name / "__init__.py").write_text(f"raise ImportError('{name} blocked for this test')\n")
    env = {**os.environ, "PYTHONPATH": str(blocker)}
    res = cli("upscale", str(EXAMPLES), "--weights", str(scnet_onnx), env=env)
    assert_one_line_error(res, 1)
    assert "pip install 'cvkit[onnx]'" in res.stderr
    res = subprocess.run([sys.executable, "-c", _EXPORT_MAIN, "export", "--preset", "scnet_x4", "-w", "none"],
                         check=False, capture_output=True, text=True, env=env, timeout=300)
    assert_one_line_error(res, 1)
    assert "pip install 'cvkit[onnx]'" in res.stderr
