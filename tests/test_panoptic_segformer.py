"""Panoptic SegFormer R-50 against the official model (fixture heads/panoptic_segformer_r50)."""
from __future__ import annotations

import torch
from cvkit.tasks.panoptic.segformer import COCO_PANOPTIC_CAT_IDS, panoptic_segformer_r50
from parity import assert_close, load_fixture

from cvkit.nn import count_params
from cvkit.weights import CONVERTERS, load_state_dict_strict


def _model_and_outputs():
    meta, ref, sd = load_fixture("heads", "panoptic_segformer_r50")
    torch.manual_seed(0)
    model = panoptic_segformer_r50().eval()
    load_state_dict_strict(model, CONVERTERS.get("panoptic_segformer")(sd))
    with torch.no_grad():
        out = model.infer(ref["input"].float())
    return meta, ref, model, out


def test_panoptic_segformer_r50_matches_official_every_output():
    meta, ref, model, out = _model_and_outputs()
    tol, img = meta["tolerance"], meta["img_meta"]
    assert count_params(model) == meta["params"]
    assert tuple(meta["cat_ids"]) == COCO_PANOPTIC_CAT_IDS
    assert_close(out["neck"][3], ref["neck.3"], tol, "neck.3")
    assert_close(out["memory"], ref["encoder.memory"], tol, "encoder.memory")
    assert_close(out["cls"][0], ref["loc.cls.0"], tol, "loc.cls.0")
    assert_close(out["cls"][5], ref["loc.cls.5"], tol, "loc.cls.5")
    assert_close(out["boxes"], ref["loc.boxes"], tol, "loc.boxes")

    # top-100 as (query, label) pairs: near-tied scores may come in another order
    pairs = list(zip(out["index"][0].tolist(), out["labels"][0].tolist()))
    ref_pairs = list(zip(ref["thing.index"].tolist(), ref["thing.labels"].tolist()))
    assert sorted(pairs) == sorted(ref_pairs)
    row = [pairs.index(p) for p in ref_pairs]
    bboxes = torch.cat((out["bboxes"][0] / torch.tensor(img["scale_factor"]), out["scores"][0, :, None]), 1)
    assert_close(bboxes[row], ref["thing.bboxes"], tol, "thing.bboxes")
    assert_close(out["thing_masks"][:, row], ref["mask.things"], tol, "mask.things")
    assert_close(out["stuff_masks"], ref["mask.stuff"], tol, "mask.stuff")
    assert_close(out["stuff_scores"][0], ref["stuff.scores"], tol, "stuff.scores")

    pan = model.merge(out, 0, tuple(img["ori_shape"][:2]))
    assert torch.equal(pan, ref["panoptic"]), f"panoptic: {(pan != ref['panoptic']).sum()} values differ"
    seg, counts = pan.flatten(0, 1).unique(dim=0, return_counts=True)
    assert [[*s, c] for s, c in zip(seg.tolist(), counts.tolist())] == meta["segments"]
