"""cvkit.safe_pickle: state dicts out of pickled whole-model checkpoints, nothing from the file run."""
from __future__ import annotations

import argparse
import collections
import io
import os
import pickle
import struct
import subprocess
import zipfile

import pytest
import torch
from torch import nn

from cvkit.errors import CvkitError
from cvkit.safe_pickle import Placeholder, load_pickled, load_pickled_state_dict

SETSTATE_CALLS = []


class PickledNet(nn.Module):
    """A model class the loader must never import or run (its __setstate__ would leave a trace)."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU6())
        self.head = nn.Linear(4, 2)
        self.register_buffer("scale", torch.arange(3.0))
        self.register_buffer("cache", torch.ones(2), persistent=False)
        self.head.bias = None

    def __setstate__(self, state):
        SETSTATE_CALLS.append(type(self).__name__)
        super().__setstate__(state)


class Config(dict):
    """A dict subclass kept beside the model, as training scripts do."""


class Milestones(list):
    pass


class Evil:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class EvilInTensorRebuild:
    """Hides the call in the argument of torch's `_rebuild_from_type_v2`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return torch._tensor._rebuild_from_type_v2, (os.system, torch.Tensor, (f"touch {self.marker}",), {})


def _model() -> PickledNet:
    torch.manual_seed(0)
    model = PickledNet()
    model.conv0[1].running_mean.normal_()
    return model


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pickled_model_state_dict_matches_without_running_its_class(tmp_path, zip_format):
    model = _model()
    path = tmp_path / "ckpt.pth.tar"
    torch.save({"args": argparse.Namespace(lr=0.01), "epoch": 3, "model": model,
                "cfg": Config(depth=5), "milestones": Milestones([10, 20]),
                "optimizer": torch.optim.SGD(model.parameters(), lr=0.1)}, path,
               _use_new_zipfile_serialization=zip_format)
    SETSTATE_CALLS.clear()
    sd = load_pickled_state_dict(path)
    ref = model.state_dict()
    assert list(sd) == list(ref)  # same order; `cache` (non-persistent) and the None bias left out
    for k, v in ref.items():
        assert sd[k].dtype == v.dtype and torch.equal(sd[k], v), k
    assert not SETSTATE_CALLS
    ckpt = load_pickled(path)
    assert ckpt["epoch"] == 3 and isinstance(ckpt["args"], Placeholder) and ckpt["args"].lr == 0.01
    assert ckpt["cfg"]._cvkit_items == {"depth": 5} and ckpt["milestones"]._cvkit_list == [10, 20]


class FakeCudaFloatStorage:
    pass


class FakeConv2d:
    pass


class FakeStorage:
    pass


def fake_thnn_backend():
    pass


def fake_rebuild_tensor_v2():
    pass


TORCH04_NAMES = {"FakeCudaFloatStorage": "torch.cuda\nFloatStorage", "FakeConv2d": "torch.nn.modules.conv\nConv2d",
                 "fake_thnn_backend": "torch.nn.backends.thnn\n_get_thnn_function_backend",
                 "fake_rebuild_tensor_v2": "torch._utils\n_rebuild_tensor_v2"}


def _torch04_checkpoint(path, weight: torch.Tensor) -> None:
    """A legacy-format file as torch 0.4 wrote one on a GPU: `torch.cuda.FloatStorage` storages and
    each module's `_backend` pickled as a call of `torch.nn.backends.thnn._get_thnn_function_backend`.
    Written with the stand-ins above, then renamed (protocol 2 names globals in plain text lines)."""
    conv = FakeConv2d()
    tensor = Evil(fake_rebuild_tensor_v2, (FakeStorage(), 0, tuple(weight.shape), weight.stride(), False,
                                           collections.OrderedDict()))
    conv.__dict__.update(_backend=Evil(fake_thnn_backend, ()), training=False, _buffers=collections.OrderedDict(),
                         _parameters=collections.OrderedDict(weight=tensor, bias=None),
                         _modules=collections.OrderedDict())

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", FakeCudaFloatStorage, "94", "cuda:0", weight.numel(), None) \
                if isinstance(obj, FakeStorage) else None

    body = io.BytesIO()
    Pickler(body, protocol=2).dump({"epoch": 1, "model": conv})
    body = body.getvalue()
    for stand_in, real in TORCH04_NAMES.items():
        body = body.replace(f"c{__name__}\n{stand_in}\n".encode(), f"c{real}\n".encode())
    assert __name__.encode() not in body
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(header, f, protocol=2)
        f.write(body)
        pickle.dump(["94"], f, protocol=2)
        f.write(struct.pack("<q", weight.numel()) + weight.numpy().tobytes())


def test_torch04_gpu_checkpoint_loads(tmp_path):
    weight = torch.randn(4, 3, 3, 3)
    _torch04_checkpoint(tmp_path / "old.pth.tar", weight)
    sd = load_pickled_state_dict(tmp_path / "old.pth.tar")
    assert list(sd) == ["weight"] and torch.equal(sd["weight"], weight)


def test_dataparallel_model_and_top_level_module_and_plain_state_dict(tmp_path):
    model = _model()
    torch.save(nn.DataParallel(model), tmp_path / "dp.pth")
    assert list(load_pickled_state_dict(tmp_path / "dp.pth")) == [f"module.{k}" for k in model.state_dict()]
    torch.save({"state_dict": model.state_dict(), "args": argparse.Namespace(a=1)}, tmp_path / "sd.pth")
    assert list(load_pickled_state_dict(tmp_path / "sd.pth")) == list(model.state_dict())


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("name, make", [
    ("os.system", lambda m: Evil(os.system, (f"touch {m}",))),
    ("builtins.eval", lambda m: Evil(eval, (f"__import__('os').system('touch {m}')",))),
    ("subprocess.call", lambda m: Evil(subprocess.call, (["touch", str(m)],))),
    ("os.system", EvilInTensorRebuild),
])
def test_pickle_calling_anything_but_tensor_rebuilding_is_refused_and_not_run(tmp_path, zip_format, name, make):
    marker = tmp_path / "pwned_x"
    path = tmp_path / "evil.pth"
    torch.save({"model": _model(), "extra": make(marker)}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(CvkitError, match=f"refuses to call {name}"):
        load_pickled_state_dict(path)
    assert not marker.exists()


def test_files_that_are_not_torch_checkpoints_give_one_clear_error(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CvkitError, match="junk.pth is not a readable torch checkpoint"):
        load_pickled_state_dict(junk)
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(CvkitError, match="without \\*/data.pkl"):
        load_pickled_state_dict(other)
    torch.save({"epoch": 1}, tmp_path / "empty.pth")
    with pytest.raises(CvkitError, match="holds no pickled nn.Module or state_dict"):
        load_pickled_state_dict(tmp_path / "empty.pth")
