"""Panoptic-DeepLab heads and whole model: parity with detectron2, deploy, any backbone, bad sizes."""
from __future__ import annotations

import pytest
import torch
from cvkit.tasks.panoptic.deeplab import (
    PanopticDeepLab,
    PanopticDeepLabInsEmbedHead,
    PanopticDeepLabSemSegHead,
    convert_panoptic_deeplab,
    panoptic_deeplab_r52,
)
from parity import assert_close, load_fixture

from cvkit import create_backbone
from cvkit.errors import CvkitError, UsageError
from cvkit.nn import FeatureSpec, count_params, deploy
from cvkit.weights import load_state_dict_strict

R52_SPEC = FeatureSpec((256, 512, 2048), (4, 8, 16))


class Heads(torch.nn.Module):
    """The two heads under detectron2's full-model prefixes."""

    def __init__(self, depthwise_separable: bool):
        super().__init__()
        kw = {"depthwise_separable": depthwise_separable, "crop_size": (32, 48)}
        self.sem_seg_head = PanopticDeepLabSemSegHead(R52_SPEC, 19, **kw)
        self.ins_embed_head = PanopticDeepLabInsEmbedHead(R52_SPEC, **kw)

    def forward(self, features):
        out = {"sem_seg.aspp": self.sem_seg_head.decoder["res5"]["project_conv"](features[2]),
               "ins_embed.aspp": self.ins_embed_head.decoder["res5"]["project_conv"](features[2]),
               "sem_seg.logits_s4": self.sem_seg_head.layers(features),
               "sem_seg.logits": self.sem_seg_head(features),
               "ins_embed.decoder": self.ins_embed_head.decode(features)}
        out["ins_embed.center_s4"], out["ins_embed.offset_s4"] = self.ins_embed_head.layers(features)
        out["ins_embed.center"], out["ins_embed.offset"] = self.ins_embed_head(features)
        return out


def _check_heads(stem: str, depthwise_separable: bool, check_deploy: bool = False):
    meta, ref, sd = load_fixture("heads", stem)
    model = Heads(depthwise_separable)
    assert count_params(model) == meta["params"]
    load_state_dict_strict(model, convert_panoptic_deeplab(sd))
    model.eval()
    features = [ref[k].float() for k in ("res2", "res3", "res5")]
    with torch.no_grad():
        out = model(features)
        for name in meta["outputs"]:
            assert_close(out[name], ref[name], meta["tolerance"], name)
        if check_deploy:
            fused = deploy(model)
            assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
            out = fused(features)
            for name in meta["outputs"]:
                assert_close(out[name], ref[name], meta["tolerance"], f"deploy {name}")


def test_dsconv_heads_match_detectron2_and_deploy_folds_every_bn():
    _check_heads("panoptic_deeplab_heads", True, check_deploy=True)


def test_plain_conv_heads_match_detectron2():
    _check_heads("panoptic_deeplab_heads_conv", False)


@torch.no_grad()
def test_r52_dsconv_model_matches_detectron2_end_to_end():
    meta, ref, sd = load_fixture("heads", "panoptic_deeplab_r52_dsconv")
    md = meta["metadata"]
    model = panoptic_deeplab_r52(crop_size=(32, 32), stuff_area=md["stuff_area"], thing_ids=md["thing_ids"],
                                 label_divisor=md["label_divisor"], center_threshold=md["center_threshold"],
                                 nms_kernel=md["nms_kernel"], top_k=md["top_k"])
    assert count_params(model) == meta["params"] and len(model.state_dict()) == len(meta["layout"])
    load_state_dict_strict(model, convert_panoptic_deeplab(sd))
    model.eval()
    image = ref["image"].float()
    tol = meta["tolerance"]
    features = model.backbone((image[None] - model.pixel_mean) / model.pixel_std)
    assert_close(features[2], ref["res5"], tol, "res5")
    assert_close(model.sem_seg_head.layers(features), ref["sem_seg.logits_s4"], tol, "sem_seg.logits_s4")
    center, offset = model.ins_embed_head.layers(features)
    assert_close(center, ref["ins_embed.center_s4"], tol, "ins_embed.center_s4")
    assert_close(offset, ref["ins_embed.offset_s4"], tol, "ins_embed.offset_s4")

    out = model.predict(image, (48, 64))
    for name in ("sem_seg", "center", "offset"):
        assert_close(out[name], ref[name], tol, name)
    assert torch.equal(out["panoptic_seg"], ref["panoptic_seg"]), "panoptic_seg differs"
    ids, counts = out["panoptic_seg"].unique(return_counts=True)
    assert [[i, c] for i, c in zip(ids.tolist(), counts.tolist())] == meta["panoptic_ids"]
    inst = out["instances"]
    assert torch.equal(inst["pred_classes"], ref["instances.pred_classes"])
    assert torch.equal(inst["pred_masks"], ref["instances.pred_masks"])
    assert_close(inst["pred_boxes"], ref["instances.pred_boxes"], tol, "instances.pred_boxes")
    assert_close(inst["scores"], ref["instances.scores"], tol, "instances.scores")


@torch.no_grad()
def test_heads_run_on_any_backbone_through_its_feature_spec():
    backbone = create_backbone("resnet18", out_indices=(0, 1, 2))
    model = PanopticDeepLab(backbone, num_classes=5, thing_ids=(3, 4), crop_size=None, stuff_area=8).eval()
    out = model(torch.rand(2, 3, 64, 96) * 255)
    assert out["sem_seg"].shape == (2, 5, 64, 96)
    assert out["center"].shape == (2, 1, 64, 96) and out["offset"].shape == (2, 2, 64, 96)
    pred = model.predict(torch.rand(3, 64, 96) * 255, (50, 70))
    assert pred["panoptic_seg"].shape == (50, 70) and pred["panoptic_seg"].dtype == torch.int64


def test_bad_feature_count_and_unpoolable_size_raise_clear_errors():
    with pytest.raises(UsageError, match="three feature maps"):
        PanopticDeepLabSemSegHead(FeatureSpec((64, 128), (4, 8)))
    head = PanopticDeepLabInsEmbedHead(FeatureSpec((8, 8, 8), (4, 8, 16)), crop_size=(32, 48)).eval()
    features = [torch.rand(1, 8, 16, 20), torch.rand(1, 8, 8, 10), torch.rand(1, 8, 4, 5)]
    with pytest.raises(CvkitError, match=r"not a multiple of the pooling kernel \(2, 3\)"):
        head(features)
