"""Panoptic inference post-processing.

Panoptic-DeepLab grouping (Cheng et al., CVPR 2020, arXiv 1911.10194; rules of detectron2 @ 02b5c4e
`post_processing.py`, as fixed by fixtures/heads/NOTES_PANOPTIC.md section 1): centres are heatmap
peaks (threshold, max-pool NMS, top-k), every thing pixel joins the centre nearest to where its
offset points, an instance takes the majority class of its pixels, and stuff classes smaller than
`stuff_area` pixels become void.

Panoptic SegFormer mask-wise merging (Li et al., CVPR 2022, arXiv 2109.03814; rules of
zhiqi-li/Panoptic-SegFormer @ cdb9b68 `PanformerHead.get_bboxes`, NOTES_PANOPTIC.md section 3):
things and stuff masks are ranked together by class score x mask quality^2 and pasted in that
order onto free pixels, skipping low scores and segments mostly hidden by earlier ones.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# Panoptic-DeepLab


def find_instance_center(center_heatmap: torch.Tensor, threshold: float = 0.1, nms_kernel: int = 3,
                         top_k: int | None = None) -> torch.Tensor:
    """(K, 2) int64 (y, x) centres of a (1, H, W) heatmap, in raster order (not by score).

    Values <= threshold are dropped; a pixel survives NMS where it equals the max-pool (kernel
    `nms_kernel`, stride 1, -inf padding) of the map, so plateaus survive whole. With `top_k`, only
    values strictly above the k-th largest value of the map (clamped at 0) are kept: at most k-1
    centres once more than k peaks survive, all of them otherwise (also on maps under k pixels).
    """
    heat = F.threshold(center_heatmap, threshold, -1.0)
    pad = (nms_kernel - 1) // 2  # the k x k max-pool as a k x 1 then a 1 x k one: equal, and cheaper
    pooled = F.max_pool2d(F.max_pool2d(heat, (nms_kernel, 1), stride=1, padding=(pad, 0)), (1, nms_kernel),
                          stride=1, padding=(0, pad))
    heat = torch.where(heat == pooled, heat, torch.full_like(heat, -1.0))[0]
    if top_k is None:
        return torch.nonzero(heat > 0)
    flat = heat.flatten()
    kth = flat.topk(top_k).values[-1].clamp(min=0) if flat.numel() >= top_k else flat.new_zeros(())
    return torch.nonzero(heat > kth)


def group_pixels(center_points: torch.Tensor, offsets: torch.Tensor, chunk: int = 1 << 20) -> torch.Tensor:
    """(1, H, W) int64 ids: 1 + index of the centre nearest (L2, first on ties) to (y + dy, x + dx).

    Distances are sqrt(dy^2 + dx^2) on (K, pixels) planes, in chunks of about `chunk` elements that
    reuse two buffers: the same float operations as a norm over a trailing (y, x) axis, without its
    slow size-2 reduction; `min(0).indices` (the first minimum, as argmin) is several times faster
    than `argmin(0)` on CPU.
    """
    height, width = offsets.shape[1:]
    ys = torch.arange(height, dtype=offsets.dtype, device=offsets.device).repeat_interleave(width)
    xs = torch.arange(width, dtype=offsets.dtype, device=offsets.device).repeat(height)
    loc_y, loc_x = ys + offsets[0].flatten(), xs + offsets[1].flatten()
    center_y, center_x = center_points.to(offsets.dtype).T[:, :, None]  # (K, 1) each
    step = min(len(loc_y), max(1, chunk // max(1, len(center_points))))
    dy, dx = offsets.new_empty(2, len(center_points), step)
    ids = []
    for i in range(0, len(loc_y), step):
        n = min(step, len(loc_y) - i)
        dist = torch.sub(center_y, loc_y[i:i + n], out=dy[:, :n]).square_()
        dist += torch.sub(center_x, loc_x[i:i + n], out=dx[:, :n]).square_()
        ids.append(dist.sqrt_().min(0).indices)
    return (torch.cat(ids) + 1).reshape(1, height, width)


def get_instance_segmentation(sem_seg: torch.Tensor, center_heatmap: torch.Tensor, offsets: torch.Tensor,
                              thing_seg: torch.Tensor, threshold: float = 0.1, nms_kernel: int = 3,
                              top_k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, H, W) class-agnostic instance ids (0 outside `thing_seg`, everywhere when no centre) and the
    (1, K, 2) centres."""
    centers = find_instance_center(center_heatmap, threshold, nms_kernel, top_k)
    if len(centers) == 0:
        return torch.zeros_like(sem_seg), centers[None]
    return thing_seg * group_pixels(centers, offsets), centers[None]


def merge_semantic_and_instance(sem_seg: torch.Tensor, ins_seg: torch.Tensor, thing_seg: torch.Tensor,
                                label_divisor: int, thing_ids, stuff_area: int, void_label: int) -> torch.Tensor:
    """Panoptic ids (1, H, W): instances (ascending id) take the most frequent class of their pixels
    (the smallest class on a tie) and a per-class number from 1; each stuff class keeps its pixels
    outside instances when they number at least `stuff_area` over the image; the rest is void.

    One class histogram per instance (a bincount over instance * classes + class) and one of the
    pixels outside instances give lookup tables from instance id and from class to panoptic id.
    """
    num_classes, num_ins = int(sem_seg.max()) + 1, int(ins_seg.max()) + 1
    is_thing = (ins_seg > 0) & (thing_seg > 0)
    ins, sem = ins_seg[is_thing], sem_seg[is_thing]
    votes = torch.bincount(ins * num_classes + sem, minlength=num_ins * num_classes).view(num_ins, num_classes)
    present = votes.sum(1).nonzero()[:, 0]  # instance ids with pixels, ascending
    cls = votes[present].argmax(1)  # the first maximum: the smallest class on a tie
    number = F.one_hot(cls, num_classes).cumsum(0).gather(1, cls[:, None])[:, 0]  # rank within its class
    instance_id = torch.full((num_ins,), void_label, dtype=sem_seg.dtype, device=sem_seg.device)
    instance_id[present] = cls * label_divisor + number

    outside = ins_seg == 0
    area = torch.bincount(sem_seg[outside], minlength=num_classes)
    classes = torch.arange(num_classes, dtype=sem_seg.dtype, device=sem_seg.device)
    stuff = (area >= stuff_area) & ~torch.isin(classes, classes.new_tensor(list(thing_ids)))
    stuff_id = torch.where(stuff, classes * label_divisor, void_label)
    pan = torch.where(is_thing, instance_id[ins_seg], void_label)
    return torch.where(outside, stuff_id[sem_seg], pan)


def get_panoptic_segmentation(sem_seg: torch.Tensor, center_heatmap: torch.Tensor, offsets: torch.Tensor,
                              thing_ids, label_divisor: int = 1000, stuff_area: int = 2048, void_label: int = -1,
                              threshold: float = 0.1, nms_kernel: int = 7, top_k: int | None = 200,
                              foreground_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Panoptic-DeepLab grouping of one image.

    sem_seg (1, H, W) int64 class map (argmax of the logits); center_heatmap (1, H, W) raw; offsets
    (2, H, W) = (dy, dx) in pixels; foreground_mask (1, H, W), if given, replaces "class in
    thing_ids" as the set of pixels that join instances. Returns the panoptic map (1, H, W) int64 =
    class * label_divisor + instance number (stuff: class * label_divisor, void: `void_label`) and the
    centres (1, K, 2) (y, x).
    """
    if foreground_mask is not None:
        thing_seg = foreground_mask
    else:
        thing_seg = torch.isin(sem_seg, sem_seg.new_tensor(list(thing_ids))).to(sem_seg.dtype)
    ins_seg, centers = get_instance_segmentation(sem_seg, center_heatmap, offsets, thing_seg, threshold,
                                                 nms_kernel, top_k)
    pan = merge_semantic_and_instance(sem_seg, ins_seg, thing_seg, label_divisor, thing_ids, stuff_area, void_label)
    return pan, centers


def panoptic_deeplab_instances(panoptic: torch.Tensor, sem_prob: torch.Tensor, center_heatmap: torch.Tensor,
                               thing_ids, label_divisor: int) -> dict[str, torch.Tensor]:
    """One instance per thing segment of an (H, W) panoptic map, in ascending panoptic id: class,
    score = mean probability of the class over the segment x heatmap at its (floored) mean pixel,
    box xyxy (max + 1) and uint8 mask. sem_prob (C, H, W) softmax; center_heatmap (1, H, W)."""
    thing_ids = set(thing_ids)
    classes, scores, boxes, masks = [], [], [], []
    for label in torch.unique(panoptic).tolist():
        cls = label // label_divisor
        if label < 0 or cls not in thing_ids:
            continue
        mask = panoptic == label
        yx = torch.nonzero(mask)
        cy, cx = yx.float().mean(0).tolist()
        classes.append(cls)
        scores.append(sem_prob[cls][mask].mean() * center_heatmap[0, int(cy), int(cx)])
        y0, x0 = yx.min(0).values.tolist()
        y1, x1 = yx.max(0).values.tolist()
        boxes.append([x0, y0, x1 + 1, y1 + 1])
        masks.append(mask)
    height, width = panoptic.shape
    device = panoptic.device
    return {"pred_classes": torch.tensor(classes, dtype=torch.int64, device=device),
            "scores": torch.stack(scores) if scores else sem_prob.new_zeros(0),
            "pred_boxes": torch.tensor(boxes, dtype=torch.float32, device=device).reshape(-1, 4),
            "pred_masks": (torch.stack(masks) if masks else panoptic.new_zeros(0, height, width)).to(torch.uint8)}


# ---------------------------------------------------------------------------------------------
# Panoptic SegFormer


def segformer_select_things(cls_logits: torch.Tensor, boxes: torch.Tensor, img_shape: tuple[int, int],
                            scale_factor=None, max_per_img: int = 100):
    """Top-`max_per_img` (query, class) pairs of the sigmoid scores (Q, C) over all queries and classes
    (a query may be selected with two labels). boxes (Q, 4) = sigmoid (cx, cy, w, h). Returns the
    query index (K,), boxes (K, 5) = xyxy in `img_shape` pixels (clamped; divided by `scale_factor`
    (4,) when given) plus the score, and the labels (K,)."""
    num_classes = cls_logits.shape[-1]
    scores, flat = cls_logits.sigmoid().flatten().topk(max_per_img)
    index, labels = flat // num_classes, flat % num_classes
    cx, cy, w, h = boxes[index].unbind(-1)
    xyxy = torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), -1)
    height, width = img_shape[:2]
    xyxy[:, 0::2] = (xyxy[:, 0::2] * width).clamp(0, width)
    xyxy[:, 1::2] = (xyxy[:, 1::2] * height).clamp(0, height)
    if scale_factor is not None:
        xyxy = xyxy / xyxy.new_tensor(scale_factor)
    return index, torch.cat((xyxy, scores[:, None]), -1), labels


def segformer_mask_merge(thing_scores: torch.Tensor, thing_labels: torch.Tensor, thing_masks: torch.Tensor,
                         stuff_scores: torch.Tensor, stuff_masks: torch.Tensor, out_size: tuple[int, int],
                         cat_ids, score_thr=(0.25, 0.25), overlap_thr=(0.4, 0.2), mask_thr: float = 0.5) -> dict:
    """Mask-wise merging of N thing and S stuff masks (non-negative mask-decoder outputs, any size).

    Masks are resized bilinearly to `out_size` (the original image) and binarised at > `mask_thr`;
    score = class score x (sum(mask over binary) / (binary area + 1))^2; all N + S are visited in
    descending score and pasted onto free pixels, skipping a score < score_thr (things, stuff), an
    empty mask, or one whose already-filled share exceeds overlap_thr (things, stuff). Stuff j has
    label N_classes_things + j, i.e. `cat_ids[num_thing_classes + j]`; `thing_labels` index
    `cat_ids` directly. Returns `panoptic` (H, W, 2) int64 [category id, instance number (things
    1, 2, ... in paste order; 0 for stuff and unfilled)], `scores` (N + S,) final scores and `order`
    (N + S,) the visiting order (indices < N are things).
    """
    num_things = len(thing_scores)
    num_thing_classes = len(cat_ids) - len(stuff_scores)
    masks = torch.cat((thing_masks, stuff_masks)).float()
    # bilinear values are convex combinations of the input's, so a mask never above mask_thr has an
    # empty binary mask (area 0, score 0): only the others are resized, a few at a time so that the
    # full-size maps stay in cache while they are binarised and summed
    live = (masks.flatten(1).amax(1) > mask_thr).nonzero()[:, 0]
    binary = torch.empty(len(live), *out_size, dtype=torch.bool, device=masks.device)
    area = masks.new_zeros(len(masks), dtype=torch.int64)
    quality = masks.new_zeros(len(masks))
    for start in range(0, len(live), 4):
        rows = live[start:start + 4]
        resized = F.interpolate(masks[None, rows], size=tuple(out_size), mode="bilinear", align_corners=False)[0]
        chunk = torch.gt(resized, mask_thr, out=binary[start:start + 4])
        area[rows] = torch.stack([m.count_nonzero() for m in chunk])
        # sum(mask * binary), accumulated in float64: the same value however the masks are chunked
        quality[rows] = F.threshold_(resized, mask_thr, 0.0).flatten(1).sum(1, dtype=torch.float64).float()
    quality = quality / (area + 1)
    labels = torch.cat((thing_labels, torch.arange(len(stuff_scores), device=masks.device) + num_thing_classes))
    scores = torch.cat((thing_scores, stuff_scores)) * quality ** 2
    order = scores.argsort(descending=True)

    threshold = torch.where(order < num_things, score_thr[0], score_thr[1])
    visit = order[~(scores[order] < threshold) & (area[order] > 0)].tolist()
    slot = {i: k for k, i in enumerate(live.tolist())}  # mask index -> row of `binary`
    segment = torch.zeros(tuple(out_size), dtype=torch.int32, device=masks.device)  # 1 + index in `pasted`
    filled = torch.zeros(tuple(out_size), dtype=torch.bool, device=masks.device)
    pasted, things = [(0, 0)], 0  # [category id, instance number] of each pasted segment
    for i in visit:
        thing = i < num_things
        mask = binary[slot[i]]
        if (filled & mask).count_nonzero() / area[i] > overlap_thr[0 if thing else 1]:
            continue
        paste = mask & ~filled
        things += thing
        pasted.append((int(cat_ids[int(labels[i])]), things if thing else 0))
        segment.masked_fill_(paste, len(pasted) - 1)
        filled |= paste
    panoptic = torch.tensor(pasted, dtype=torch.int64, device=masks.device)[segment]
    return {"panoptic": panoptic, "scores": scores, "order": order}
