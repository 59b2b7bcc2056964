"""Registry, presets, weights loading and the CLI's error contract."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
from torch import nn

import cvkit
from cvkit.errors import CvkitError, UsageError
from cvkit.presets import apply_override, load_preset
from cvkit.registry import Registry
from cvkit.weights import load_weights


def cli(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "cvkit", *args], check=False, capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def assert_one_line_error(res, code):
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr


# -- registry ------------------------------------------------------------------------------------

def test_registry_rejects_duplicate_names_and_aliases():
    reg = Registry("thing")
    reg.register("alpha", aliases=("a",))(lambda: 1)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("alpha")(lambda: 2)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("beta", aliases=("a",))(lambda: 2)


def test_registry_unknown_name_lists_valid_names_and_closest_match():
    reg = Registry("thing")
    for n in ("resnet50", "resnet18", "vgg16"):
        reg.register(n)(lambda: None)
    with pytest.raises(UsageError) as e:
        reg.get("resnet05")
    assert "did you mean 'resnet50'" in str(e.value)
    assert "vgg16" in str(e.value)
    assert reg.build("vgg16") is None


def test_create_backbone_unknown_name_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown backbone 'convnext_tyny'.*did you mean"):
        cvkit.create_backbone("convnext_tyny")


# -- presets -------------------------------------------------------------------------------------

def write(tmp_path, text, name="p.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_preset_unknown_key_names_the_key_and_closest_valid(tmp_path):
    p = write(tmp_path, "name: x\ntask: upscale\nmodel: bicubic\nbackbon: resnet50\n")
    with pytest.raises(UsageError, match=r"unknown key 'backbon' \(did you mean 'backbone'\?\)"):
        load_preset(p)


def test_preset_nested_unknown_key_and_wrong_type(tmp_path):
    p = write(tmp_path, "name: x\ntask: upscale\nmodel: bicubic\nweights: {sha: abc}\n")
    with pytest.raises(UsageError, match="unknown key 'weights.sha'.*'weights.sha256'"):
        load_preset(p)
    p = write(tmp_path, "name: x\ntask: upscale\nmodel: bicubic\nimgsz: big\n")
    with pytest.raises(UsageError, match="'imgsz' must be int or list or null, not str"):
        load_preset(p)


def test_preset_malformed_yaml_is_one_clear_error(tmp_path):
    p = write(tmp_path, "name: x\ntask: [upscale\n")
    with pytest.raises(UsageError, match="not valid YAML.*line"):
        load_preset(p)


def test_preset_missing_required_key(tmp_path):
    p = write(tmp_path, "name: x\ntask: upscale\n")
    with pytest.raises(UsageError, match="missing required key 'model'"):
        load_preset(p)


def test_preset_overrides_parse_yaml_values_and_are_validated(tmp_path):
    p = write(tmp_path, "name: x\ntask: upscale\nmodel: espcn\nargs: {scale: 3}\n")
    preset = load_preset(p, ["args.scale=4", "imgsz=[64, 48]", "args.mode=rgb"])
    assert preset["args"] == {"scale": 4, "mode": "rgb"} and preset["imgsz"] == [64, 48]
    with pytest.raises(UsageError, match="unknown key 'imgsize'"):
        load_preset(p, ["imgsize=3"])
    with pytest.raises(UsageError, match="key=value"):
        apply_override({}, "args.scale")


def test_unknown_preset_name_suggests_closest():
    with pytest.raises(UsageError, match="unknown preset"):
        load_preset("no_such_preset_anywhere")


def test_every_shipped_preset_validates():
    from cvkit.presets import preset_names
    for name in preset_names():
        preset = load_preset(name)
        assert preset["name"] == name


# -- weights -------------------------------------------------------------------------------------

class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)


def test_load_weights_roundtrip_safetensors_and_torch(tmp_path):
    from safetensors.torch import save_file
    src = Tiny()
    save_file(src.state_dict(), tmp_path / "w.safetensors")
    torch.save({"state_dict": src.state_dict(), "meta": {"epoch": 3}}, tmp_path / "w.pth")
    for f in ("w.safetensors", "w.pth"):
        dst = load_weights(Tiny(), tmp_path / f)
        assert torch.equal(dst.conv.weight, src.conv.weight)


def test_load_weights_reports_missing_unexpected_and_misshaped_keys(tmp_path):
    sd = Tiny().state_dict()
    sd.pop("bn.weight")
    sd["extra.weight"] = torch.zeros(1)
    sd["conv.bias"] = torch.zeros(5)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CvkitError) as e:
        load_weights(Tiny(), tmp_path / "bad.pth")
    msg = str(e.value)
    assert "1 missing: bn.weight" in msg and "1 unexpected: extra.weight" in msg
    assert "conv.bias (5,) vs (4,)" in msg


def test_load_weights_rejects_missing_truncated_and_non_checkpoint_files(tmp_path):
    with pytest.raises(CvkitError, match="weights file not found"):
        load_weights(Tiny(), tmp_path / "nope.pth")
    torch.save(Tiny().state_dict(), tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "trunc.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CvkitError, match="not a readable checkpoint"):
        load_weights(Tiny(), tmp_path / "trunc.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(CvkitError, match="not a readable checkpoint"):
        load_weights(Tiny(), tmp_path / "text.pth")


def test_pickled_whole_model_loads_its_tensors_without_running_code(tmp_path):
    src = Tiny()
    torch.save({"model": src}, tmp_path / "whole.pth")  # a pickled module, as FastDepth released
    dst = load_weights(Tiny(), tmp_path / "whole.pth")
    assert torch.equal(dst.conv.weight, src.conv.weight)


class Evil:
    def __reduce__(self):
        import os
        return (os.system, ("touch pwned_by_checkpoint",))


def test_checkpoint_that_calls_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"model": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CvkitError, match="refuses to call os.system"):
        load_weights(Tiny(), tmp_path / "evil.pth")
    assert not (tmp_path / "pwned_by_checkpoint").exists()


def test_load_weights_none_warns_loudly():
    with pytest.warns(UserWarning, match="meaningless"):
        load_weights(Tiny(), "none")


def test_checksum_mismatch_leaves_no_file_in_cache(tmp_path, monkeypatch):
    from cvkit.weights import download
    monkeypatch.setenv("CVKIT_HOME", str(tmp_path / "home"))
    src = tmp_path / "w.pth"
    torch.save(Tiny().state_dict(), src)
    with pytest.raises(CvkitError, match="checksum mismatch"):
        download(src.as_uri().replace("file:", "file:"), sha256="0" * 64, dest=tmp_path / "home" / "w.pth")
    assert not any((tmp_path / "home").iterdir())


def test_unreachable_url_says_where_to_put_the_file(tmp_path, monkeypatch):
    from cvkit.weights import resolve
    monkeypatch.setenv("CVKIT_HOME", str(tmp_path))
    with pytest.raises(CvkitError, match=r"cannot download .* put it at .*w-0123abcd\.pth"):
        resolve("http://127.0.0.1:9/w-0123abcd.pth")
    assert not list((tmp_path / "weights").glob("*"))


# -- CLI -----------------------------------------------------------------------------------------

def test_cli_version_and_help():
    res = cli("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"cvkit {cvkit.__version__}"
    res = cli("--help")
    assert res.returncode == 0
    for word in ("backbones", "presets", "doctor", "Examples"):
        assert word in res.stdout


def test_cli_unknown_command_and_option_exit_2():
    assert_one_line_error(cli("bogus"), 2)
    assert_one_line_error(cli("presets", "--bogus"), 2)


def test_cli_unknown_preset_and_task_exit_2():
    res = cli("presets", "show", "bicubic_x44")
    assert_one_line_error(res, 2)
    assert "did you mean" in res.stderr
    assert_one_line_error(cli("presets", "--task", "detekt"), 2)
    assert_one_line_error(cli("backbones", "--task", "detekt"), 2)


def test_cli_malformed_preset_file_exit_2(tmp_path):
    p = write(tmp_path, "name: x\ntask: [\n")
    assert_one_line_error(cli("presets", "show", str(p)), 2)


def test_cli_verbose_shows_traceback(tmp_path):
    p = write(tmp_path, "name: x\ntask: [\n")
    res = cli("--verbose", "presets", "show", str(p))
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_cli_doctor_reports_codecs_and_cpu():
    res = cli("doctor")
    assert res.returncode == 0, res.stderr
    for key in ("torch", "cpu", "bf16", "opencv", "pyav", "H.264 encode", "mmengine", "cache dir", "webcams"):
        assert key in res.stdout


def test_cli_threads_option_sets_torch_threads():
    res = cli("--threads", "1", "doctor")
    assert res.returncode == 0, res.stderr
    assert re.search(r"threads\s+1 intra-op", res.stdout)
    res = cli("--threads", "0", "doctor")
    assert res.returncode == 2 and "--threads" in res.stderr
