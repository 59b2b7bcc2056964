"""SEPC (full and lite) against the official code: stage A (the PConv stack) and stage B
(cconv/lconv with padding 0 + integrated BN), in eval and in train mode (sepc_* fixtures)."""
import pytest
import torch
from parity import assert_close, load_fixture

from cvkit.errors import CvkitError, UsageError
from cvkit.necks import NECKS, create_neck
from cvkit.nn import FeatureSpec, count_params
from cvkit.weights import CONVERTERS, load_state_dict_strict

FPN_SPEC = FeatureSpec((256,) * 5, (8, 16, 32, 64, 128))


def _neck(name, sd):
    neck = create_neck(name, FPN_SPEC)
    load_state_dict_strict(neck, CONVERTERS.get(NECKS.meta(name)["converter"])(sd))
    return neck


def _check_stages(neck, meta, ref):
    with torch.no_grad():
        pconv = neck.forward_pconv([ref[f"input.{i}"] for i in range(5)])
        for i, out in enumerate(pconv):
            assert_close(out, ref[f"pconv.{i}"], meta["tolerance"], f"pconv.{i}")
        if "head_input.0" in ref:
            pairs = neck.forward_head_features([ref[f"head_input.{i}"] for i in range(5)])
            for i, (cls, loc) in enumerate(pairs):
                assert_close(cls, ref[f"out.{i}.cls"], meta["tolerance"], f"out.{i}.cls")
                assert_close(loc, ref[f"out.{i}.loc"], meta["tolerance"], f"out.{i}.loc")


@pytest.mark.parametrize("stem,name", [("sepc_full", "sepc"), ("sepc_lite", "sepc_lite")])
def test_sepc_pconv_and_head_features_match_official_in_eval(stem, name):
    meta, ref, sd = load_fixture("heads", stem)
    neck = _neck(name, sd).eval()
    assert count_params(neck) == meta["params_counted"]
    _check_stages(neck, meta, ref)


def test_sepc_lite_head_features_equal_full_sepc_stage_b():
    """Both official configs keep DCN in cconv/lconv, so lite's stage B is sepc_full's."""
    _, _, sd = load_fixture("heads", "sepc_lite")
    meta, ref, _ = load_fixture("heads", "sepc_full")
    neck = _neck("sepc_lite", sd).eval()
    with torch.no_grad():
        pairs = neck.forward_head_features([ref[f"head_input.{i}"] for i in range(5)])
    for i, (cls, loc) in enumerate(pairs):
        assert_close(cls, ref[f"out.{i}.cls"], meta["tolerance"], f"out.{i}.cls")
        assert_close(loc, ref[f"out.{i}.loc"], meta["tolerance"], f"out.{i}.loc")


def test_sepc_integrated_bn_in_train_mode_uses_joint_batch_statistics():
    meta, ref, sd = load_fixture("heads", "sepc_full_ibn_train")
    neck = _neck("sepc", sd).train()
    _check_stages(neck, meta, ref)


def test_sepc_loads_detector_list_neck_checkpoint():
    _, _, sd = load_fixture("heads", "sepc_full")
    detector = {f"neck.1.{k}": v for k, v in sd.items()}
    detector["neck.0.lateral_convs.0.conv.weight"] = torch.zeros(256, 512, 1, 1)
    detector["bbox_head.retina_cls.bias"] = torch.zeros(720)
    _neck("sepc", detector)


def test_sepc_full_forward_on_fpn_pyramid_shrinks_each_level_by_two():
    """An FPN pyramid of a 288x320 image at 32 channels: P7 is 3x3, the smallest SEPC takes."""
    spec = FeatureSpec((32,) * 5, (8, 16, 32, 64, 128))
    neck = create_neck("sepc", spec).eval()
    assert neck.feature_spec == spec
    for m in neck.modules():  # non-zero offsets so that the deformable path is exercised
        if hasattr(m, "conv_offset"):
            torch.nn.init.normal_(m.conv_offset.weight, std=0.05)
    feats = [torch.randn(1, 32, -(-288 // s), -(-320 // s)) for s in spec.strides]
    with torch.no_grad():
        pairs = neck(feats)
        stages = neck.forward_head_features(neck.forward_pconv(feats))
    assert [tuple(c.shape[-2:]) for c, _ in pairs] == [(34, 38), (16, 18), (7, 8), (3, 3), (1, 1)]
    for (c, r), (c2, r2) in zip(pairs, stages):
        assert c.shape == r.shape and torch.equal(c, c2) and torch.equal(r, r2)


def test_sepc_rejects_small_levels_and_unequal_channels():
    neck = create_neck("sepc_lite", FeatureSpec((16,) * 5, (8, 16, 32, 64, 128))).eval()
    feats = [torch.randn(1, 16, s, s) for s in (16, 8, 4, 2, 1)]
    with pytest.raises(CvkitError, match="at least 3x3"):
        neck(feats)
    with pytest.raises(UsageError, match="equal channels"):
        create_neck("sepc", FeatureSpec((256, 512, 256, 256, 256), (8, 16, 32, 64, 128)))
