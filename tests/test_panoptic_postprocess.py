"""Panoptic-DeepLab grouping and Panoptic SegFormer mask-wise merging: exact against the official code."""
from __future__ import annotations

import json

import pytest
import torch
from cvkit.tasks.panoptic.postprocess import (
    find_instance_center,
    get_instance_segmentation,
    get_panoptic_segmentation,
    group_pixels,
    merge_semantic_and_instance,
    segformer_mask_merge,
    segformer_select_things,
)
from parity import assert_close, load_fixture


def _equal(out: torch.Tensor, ref: torch.Tensor, name: str) -> None:
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    diff = (out != ref).nonzero()
    assert len(diff) == 0, (f"{name}: {len(diff)} elements differ, first at {tuple(diff[0].tolist())}: "
                            f"cvkit {out[tuple(diff[0])].item()} vs official {ref[tuple(diff[0])].item()}")


@pytest.mark.parametrize("case", ["c1", "c2", "c3", "c4", "c5", "c6"])
def test_deeplab_grouping_matches_official_exactly(case):
    meta, ref, _ = load_fixture("heads", "panoptic_deeplab_postprocess")
    p = meta["cases"][case]
    sem, heat, offsets = ref[f"{case}.sem_seg"], ref[f"{case}.center_heatmap"], ref[f"{case}.offsets"]
    foreground = ref.get(f"{case}.foreground_mask")
    assert (foreground is not None) == p["foreground_mask_given"]
    pan, centers = get_panoptic_segmentation(
        sem, heat, offsets, p["thing_ids"], p["label_divisor"], p["stuff_area"], p["void_label"], p["threshold"],
        p["nms_kernel"], p["top_k"], foreground_mask=foreground)
    _equal(pan, ref[f"{case}.panoptic"], f"{case}.panoptic")
    _equal(centers, ref[f"{case}.center_points"], f"{case}.center_points")
    assert sorted(pan.unique().tolist()) == p["panoptic_ids"]
    thing_seg = foreground if foreground is not None else torch.isin(sem, torch.tensor(p["thing_ids"])).long()
    instance, _ = get_instance_segmentation(sem, heat, offsets, thing_seg, p["threshold"], p["nms_kernel"], p["top_k"])
    _equal(instance, ref[f"{case}.instance"], f"{case}.instance")


def test_top_k_keeps_values_strictly_above_the_kth():
    heat = torch.zeros(1, 9, 9)
    for i, (y, x) in enumerate([(0, 0), (0, 4), (0, 8), (4, 0), (8, 8)]):
        heat[0, y, x] = 0.5 + 0.1 * i
    assert len(find_instance_center(heat, 0.1, 3, top_k=5)) == 4
    assert len(find_instance_center(heat, 0.1, 3, top_k=6)) == 5
    assert len(find_instance_center(heat, 0.1, 3, top_k=200)) == 5  # map smaller than k: every peak
    assert find_instance_center(heat, 0.1, 3, top_k=3).tolist() == [[4, 0], [8, 8]]  # raster order


def test_grouping_in_chunks_equals_one_pass():
    g = torch.Generator().manual_seed(0)
    offsets = torch.randn(2, 20, 30, generator=g) * 5
    centers = torch.randint(0, 20, (7, 2), generator=g)
    assert torch.equal(group_pixels(centers, offsets, chunk=50), group_pixels(centers, offsets))


def test_grouping_breaks_distance_ties_towards_the_first_centre():
    centers = torch.tensor([[0, 0], [0, 4]])
    assert group_pixels(centers, torch.zeros(2, 1, 5)).tolist() == [[[1, 1, 1, 2, 2]]]  # x = 2 is a tie
    assert group_pixels(centers.flip(0), torch.zeros(2, 1, 5)).tolist() == [[[2, 2, 1, 1, 1]]]


def test_merge_votes_classes_numbers_instances_per_class_and_drops_small_stuff():
    sem = torch.tensor([[[0, 0, 2, 3, 3], [1, 2, 3, 3, 3]]])
    ins = torch.tensor([[[0, 0, 2, 2, 4], [3, 1, 1, 1, 4]]])
    thing = (ins > 0).long()
    thing[0, 1, 0] = 0  # instance 3 has no thing pixel: skipped, and it takes no number
    pan = merge_semantic_and_instance(sem, ins, thing, 1000, (2, 3), stuff_area=2, void_label=-1)
    # instance 1: classes 2, 3, 3 -> 3001; 2: a 2 / 3 tie -> the smaller class, 2001; 4: -> 3002
    assert pan.tolist() == [[[0, 0, 2001, 2001, 3002], [-1, 3001, 3001, 3001, 3002]]]
    pan = merge_semantic_and_instance(sem, ins, thing, 1000, (2, 3), stuff_area=3, void_label=-1)
    assert pan[0, 0, :2].tolist() == [-1, -1]  # 2 pixels of class 0 are under the stuff area


def test_segformer_masks_never_above_the_threshold_score_zero_and_are_not_pasted():
    never = torch.full((2, 4), 0.5)  # not above mask_thr anywhere, however it is resized
    left = torch.zeros(2, 4)
    left[:, :2] = 1.0  # x2 bilinear: output columns 0-2 are 1.0, column 3 is 0.75, the rest below 0.5
    out = segformer_mask_merge(torch.tensor([0.9, 0.8]), torch.tensor([0, 1]), torch.stack((never, left)),
                               torch.zeros(0), torch.zeros(0, 2, 4), (4, 8), cat_ids=[7, 8])
    assert out["scores"][0] == 0
    assert out["scores"][1].item() == pytest.approx(0.8 * (15 / 17) ** 2)  # (12 x 1 + 4 x 0.75) / (16 + 1)
    expected = torch.zeros(4, 8, 2, dtype=torch.int64)
    expected[:, :4] = torch.tensor([8, 1])
    _equal(out["panoptic"], expected, "panoptic")
    empty = segformer_mask_merge(torch.tensor([0.9]), torch.tensor([0]), never[None], torch.zeros(0),
                                 torch.zeros(0, 2, 4), (4, 8), cat_ids=[7])
    assert not empty["panoptic"].any() and empty["scores"].tolist() == [0.0]


def test_segformer_merge_matches_official():
    meta, ref, _ = load_fixture("heads", "panoptic_segformer_merge")
    tol, img = meta["tolerance"], meta["img_meta"]
    cat_ids = json.loads(meta["cat_ids"]) if isinstance(meta["cat_ids"], str) else meta["cat_ids"]
    index, bboxes, labels = segformer_select_things(ref["cls_logits"], ref["boxes"], img["img_shape"],
                                                    img["scale_factor"])
    _equal(index, ref["thing.index"], "thing.index")
    _equal(labels, ref["thing.labels"], "thing.labels")
    assert_close(bboxes, ref["thing.bboxes"], tol, "thing.bboxes")

    out = segformer_mask_merge(bboxes[:, 4], labels, ref["thing_masks"][index], ref["stuff_logits"].sigmoid(),
                               ref["stuff_masks"], img["ori_shape"][:2], cat_ids)
    _equal(out["panoptic"], ref["panoptic"], "panoptic")
    seg_ids, counts = out["panoptic"].flatten(0, 1).unique(dim=0, return_counts=True)
    assert [[*s, c] for s, c in zip(seg_ids.tolist(), counts.tolist())] == meta["segments"]

    order = out["order"][out["order"] < len(index)]
    result = torch.cat((bboxes[order, :4], out["scores"][order, None]), 1)
    scored = ref["result.bboxes"][:, 4] > 0  # entries with score 0 come in unspecified order
    assert int(scored.sum()) == int((result[:, 4] > 0).sum()) == 10
    assert_close(result[scored], ref["result.bboxes"][scored], tol, "result.bboxes")
    _equal(labels[order][scored], ref["result.labels"][scored], "result.labels")
    rest = sorted(map(tuple, torch.cat((result[~scored], labels[order][~scored, None]), 1).tolist()))
    ref_rest = sorted(map(tuple, torch.cat((ref["result.bboxes"][~scored], ref["result.labels"][~scored, None]),
                                           1).tolist()))
    assert_close(torch.tensor(rest), torch.tensor(ref_rest), tol, "result (zero-score entries, as a set)")
