"""Panoptic segmentation speed, as ratios measured in one run.

1. Frames/s at 512x512 and 1024x512 (batch 1, random weights) of Panoptic-DeepLab (detectron2's
   R-52 DC5 backbone with the depthwise-separable Cityscapes heads, 19 classes; global ASPP pooling)
   and Panoptic SegFormer (ResNet-50, COCO's 80 things + 53 stuff, 300 queries): eager vs deploy.
2. Post-processing share: the task's `postprocess` (DeepLab: semantic argmax, centre NMS, grouping,
   class vote, segments table; SegFormer: mask-wise merging, segments table) as % of the deploy
   forward, on the random-weight model's own outputs (DeepLab finds no centre in them, SegFormer no
   mask above 0.5) and on a synthetic busy scene of the same shapes: DeepLab 40 instances with
   their centre peaks and offsets over six stuff bands; SegFormer 100 thing and 53 stuff masks that
   all cross the 0.5 threshold (no mask can be skipped).
3. PQ evaluation: cvkit's `pq_compute` against `reference_pq_compute` below, a plain
   implementation of panopticapi's `pq_compute_single_core` written from its published rules
   (panopticapi is not on PyPI), on synthetic COCO-style files (`--images` pairs of 640x480 PNGs
   with a JSON: Voronoi stuff, 20-40 polygon things, void borders, some crowd regions; predictions
   jittered, with missed, relabelled and spurious segments). The reference is first checked
   against the `pq_coco` fixture (panopticapi's own results); then both evaluators must agree on
   every number, and the time of decoding the PNGs alone shows the floor for any evaluator.

The video pipeline against model-only fps is `benchmarks/pipeline.py`. Example:

    python benchmarks/panoptic_speed.py --repeats 3 --out benchmarks/results/panoptic_speed.md
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import torch
from backbones import best_of, write_report  # benchmarks/backbones.py: the same timing loop
from cvkit.tasks.panoptic.deeplab import CITYSCAPES_THING_IDS
from cvkit.tasks.panoptic.metrics import PanopticQuality, id2rgb, pq_compute, read_panoptic_png
from cvkit.tasks.panoptic.models import PANOPTIC_MODELS
from cvkit.tasks.panoptic.segformer import COCO_PANOPTIC_CAT_IDS
from cvkit.tasks.panoptic.task import PanopticTask
from PIL import Image

from cvkit.nn import deploy

SIZES = {"512x512": (512, 512), "1024x512": (512, 1024)}
SHARED = Path(os.environ.get("CVKIT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
VOID, OFFSET = 0, 256 ** 3


# ---------------------------------------------------------------------------------------------
# models and synthetic raw outputs


def build_tasks() -> dict[str, tuple[torch.nn.Module, PanopticTask]]:
    """name -> (eager model, task on its deploy graph)."""
    deeplab = PANOPTIC_MODELS.build("panoptic_deeplab", backbone=None).eval()
    segformer = PANOPTIC_MODELS.build("panoptic_segformer").eval()
    cityscapes = {"name": "bench", "model": "panoptic_deeplab",
                  "args": {"num_classes": 19, "thing_ids": list(CITYSCAPES_THING_IDS)}}
    return {"Panoptic-DeepLab R-52 (19 classes)": (deeplab, PanopticTask(deploy(deeplab), cityscapes)),
            "Panoptic SegFormer R-50 (133 classes)": (segformer, PanopticTask(deploy(segformer),
                                                                             {"model": "panoptic_segformer"}))}


def deeplab_scene(h: int, w: int, instances: int = 40, seed: int = 0) -> dict[str, torch.Tensor]:
    """Raw Panoptic-DeepLab outputs of a busy street-like scene: six stuff bands, `instances` thing
    ellipses with Gaussian centre peaks (sigma 8) and offsets to their centres, noisy logits."""
    g = torch.Generator().manual_seed(seed)
    ys = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    xs = torch.arange(w, dtype=torch.float32)[None].expand(h, w)
    stuff = torch.tensor([c for c in range(19) if c not in CITYSCAPES_THING_IDS])
    label = stuff[torch.randint(len(stuff), (6,), generator=g)][(ys * 6 / h).long()]
    center, offset = torch.zeros(h, w), torch.randn(2, h, w, generator=g)
    for _ in range(instances):
        cy, cx = (torch.rand(2, generator=g) * torch.tensor([h, w])).tolist()
        ry, rx = (8 + torch.rand(2, generator=g) * torch.tensor([h / 6, w / 10])).tolist()
        inside = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1
        label[inside] = CITYSCAPES_THING_IDS[int(torch.randint(len(CITYSCAPES_THING_IDS), (1,), generator=g))]
        offset[0][inside], offset[1][inside] = (cy - ys)[inside], (cx - xs)[inside]
        center = torch.maximum(center, torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * 8 ** 2)))
    logits = torch.randn(19, h, w, generator=g) + 4 * torch.nn.functional.one_hot(label, 19).permute(2, 0, 1)
    return {"sem_seg": logits[None], "center": center[None, None],
            "offset": (offset + 0.5 * torch.randn(2, h, w, generator=g))[None]}


def segformer_scene(raw: dict, seed: int = 0) -> dict:
    """`raw` with its masks and scores replaced: 100 thing blobs and 53 stuff regions (Voronoi
    cells), every mask above 0.5 somewhere; thing scores spread over 0..1, 8 confident stuff."""
    g = torch.Generator().manual_seed(seed)
    h8, w8 = raw["mask_shape"]
    ys = torch.arange(h8, dtype=torch.float32)[:, None, None]
    xs = torch.arange(w8, dtype=torch.float32)[None, :, None]
    centre = torch.rand(2, 100, generator=g) * torch.tensor([[h8], [w8]])
    radius = 1 + torch.rand(100, generator=g) * h8 / 5
    things = (1.5 * torch.exp(-((ys - centre[0]) ** 2 + (xs - centre[1]) ** 2) / (2 * radius ** 2))).permute(2, 0, 1)
    seeds = torch.rand(2, 53, generator=g) * torch.tensor([[h8], [w8]])
    dist = ((ys - seeds[0]) ** 2 + (xs - seeds[1]) ** 2).permute(2, 0, 1)
    stuff = torch.exp(-(dist - dist.min(0).values) / 20)  # 1 in its own cell, fading outside
    stuff_scores = torch.rand(53, generator=g) * 0.2
    stuff_scores[torch.randperm(53, generator=g)[:8]] = 0.6 + 0.3 * torch.rand(8, generator=g)
    return {**raw, "thing_masks": things.reshape(1, 100, -1), "stuff_masks": stuff.reshape(1, 53, -1),
            "scores": torch.rand(100, generator=g).sort(descending=True).values[None],
            "labels": torch.randint(80, (1, 100), generator=g), "stuff_scores": stuff_scores[None]}


# ---------------------------------------------------------------------------------------------
# PQ: the reference evaluator and synthetic COCO panoptic files


def reference_pq_compute(gt_json: Path, pred_json: Path, gt_folder: Path, pred_folder: Path) -> dict:
    """panopticapi's algorithm done plainly, image by image (its `pq_compute_single_core`): PIL reads
    both PNGs, ids = R + 256 G + 256^2 B; np.unique of the prediction gives its areas, np.unique of
    gt_id * OFFSET + pred_id the intersections; a pair of one category with a non-crowd gt matches
    when IoU > 0.5 (pred pixels on VOID out of the union; |gt| from the JSON); unmatched non-crowd gt
    are FN, unmatched predictions FP unless more than half lies on VOID plus the last crowd region of
    their category. Returns the `PanopticQuality.summary()` layout."""
    gt_data, pred_data = json.loads(gt_json.read_text()), json.loads(pred_json.read_text())
    categories = {c["id"]: c for c in gt_data["categories"]}
    preds = {a["image_id"]: a for a in pred_data["annotations"]}
    stat = defaultdict(lambda: {"tp": 0, "fp": 0, "fn": 0, "iou_sum": 0.0})

    def ids_of(path: Path) -> np.ndarray:
        rgb = np.array(Image.open(path), dtype=np.uint32)
        return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]

    for gt_ann in gt_data["annotations"]:
        pred_ann = preds[gt_ann["image_id"]]
        gt_ids, pred_ids = ids_of(gt_folder / gt_ann["file_name"]), ids_of(pred_folder / pred_ann["file_name"])
        gt_segs = {s["id"]: s for s in gt_ann["segments_info"]}
        pred_segs = {s["id"]: dict(s) for s in pred_ann["segments_info"]}
        for label, count in zip(*np.unique(pred_ids, return_counts=True)):
            if label != VOID or label in pred_segs:
                pred_segs[label]["area"] = count
        pairs = {}
        for label, count in zip(*np.unique(gt_ids.astype(np.uint64) * OFFSET + pred_ids, return_counts=True)):
            pairs[label // OFFSET, label % OFFSET] = count
        gt_matched, pred_matched = set(), set()
        for (g, p), inter in pairs.items():
            if g not in gt_segs or p not in pred_segs or gt_segs[g]["iscrowd"] == 1:
                continue
            if gt_segs[g]["category_id"] != pred_segs[p]["category_id"]:
                continue
            iou = inter / (pred_segs[p]["area"] + gt_segs[g]["area"] - inter - pairs.get((VOID, p), 0))
            if iou > 0.5:
                stat[gt_segs[g]["category_id"]]["tp"] += 1
                stat[gt_segs[g]["category_id"]]["iou_sum"] += iou
                gt_matched.add(g)
                pred_matched.add(p)
        crowd = {}
        for g, seg in gt_segs.items():
            if g in gt_matched:
                continue
            if seg["iscrowd"] == 1:
                crowd[seg["category_id"]] = g
                continue
            stat[seg["category_id"]]["fn"] += 1
        for p, seg in pred_segs.items():
            if p in pred_matched:
                continue
            ignored = pairs.get((VOID, p), 0) + pairs.get((crowd.get(seg["category_id"], -1), p), 0)
            if ignored / seg["area"] > 0.5:
                continue
            stat[seg["category_id"]]["fp"] += 1

    per_class, results = {}, {}
    for cat in categories:
        s = stat.get(cat, {"tp": 0, "fp": 0, "fn": 0, "iou_sum": 0.0})
        denom = s["tp"] + 0.5 * s["fp"] + 0.5 * s["fn"]
        per_class[cat] = ({"pq": s["iou_sum"] / denom, "sq": s["iou_sum"] / s["tp"] if s["tp"] else 0.0,
                           "rq": s["tp"] / denom} if denom else {"pq": 0.0, "sq": 0.0, "rq": 0.0})
    for group, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        cats = [c for c, info in categories.items() if (isthing is None or (info["isthing"] == 1) == isthing)
                and c in stat and stat[c]["tp"] + stat[c]["fp"] + stat[c]["fn"] > 0]
        results[group] = {k: sum(per_class[c][k] for c in cats) / len(cats) if cats else 0.0 for k in ("pq", "sq", "rq")}
        results[group]["n"] = len(cats)
    return {**results, "per_class": per_class,
            "counts": {c: {k: float(v) if k == "iou_sum" else int(v) for k, v in s.items()}
                       for c, s in stat.items() if s["tp"] + s["fp"] + s["fn"] > 0}}


def pq_compute_one_thread(gt_json: Path, pred_json: Path, gt_folder: Path, pred_folder: Path) -> dict:
    """cvkit's `pq_compute` with the PNGs decoded in the calling thread (no reading ahead)."""
    gt_data, pred_data = json.loads(gt_json.read_text()), json.loads(pred_json.read_text())
    preds = {a["image_id"]: a for a in pred_data["annotations"]}
    metric = PanopticQuality(gt_data["categories"])
    for gt_ann in gt_data["annotations"]:
        pred_ann = preds[gt_ann["image_id"]]
        metric.update(read_panoptic_png(gt_folder / gt_ann["file_name"]), gt_ann["segments_info"],
                      read_panoptic_png(pred_folder / pred_ann["file_name"]), pred_ann["segments_info"])
    return metric.summary()


def coco_categories() -> list[dict]:
    return [{"id": c, "name": f"category{c}", "isthing": int(i < 80)} for i, c in enumerate(COCO_PANOPTIC_CAT_IDS)]


def draw_scene(h: int, w: int, stuff: list, things: list, rng: np.random.Generator) -> tuple[np.ndarray, list]:
    """Segment id map (0 = void) and segments_info of Voronoi stuff cells and polygon things (later
    ones on top); ids are random 24-bit numbers."""
    seeds = np.array([s[0] for s in stuff], np.float32)
    ys, xs = np.mgrid[:h, :w].astype(np.float32)
    cell = ((ys[..., None] - seeds[:, 0]) ** 2 + (xs[..., None] - seeds[:, 1]) ** 2).argmin(-1)
    index = cell.astype(np.int32) + 1
    for k, (poly, _, _) in enumerate(things):
        cv2.fillPoly(index, [poly.astype(np.int32)], len(stuff) + k + 1)
    edges = np.zeros((h, w), bool)  # a one-pixel void line wherever the segment changes
    edges[:-1] |= index[:-1] != index[1:]
    edges[:, :-1] |= index[:, :-1] != index[:, 1:]
    index[edges] = 0
    ids = rng.choice(2 ** 24 - 1, len(stuff) + len(things) + 1, replace=False) + 1
    ids[0] = VOID
    kinds = [(cat, 0) for _, cat in stuff] + [(cat, crowd) for _, cat, crowd in things]
    areas = np.bincount(index.ravel(), minlength=len(kinds) + 1)
    segments = [{"id": int(ids[k + 1]), "category_id": int(cat), "iscrowd": crowd, "area": int(areas[k + 1])}
                for k, (cat, crowd) in enumerate(kinds) if areas[k + 1]]
    return ids[index], segments


def make_pq_files(root: Path, n: int, h: int = 480, w: int = 640, seed: int = 0) -> tuple[Path, Path]:
    """`n` gt / prediction pairs (PNGs written by PIL, as panopticapi's converters do) and their JSONs."""
    rng = np.random.default_rng(seed)
    cats = coco_categories()
    thing_ids, stuff_ids = [c["id"] for c in cats if c["isthing"]], [c["id"] for c in cats if not c["isthing"]]
    gt_anns, pred_anns = [], []
    for side in ("gt", "pred"):
        (root / side).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        stuff = [(rng.uniform((0, 0), (h, w)), cat) for cat in rng.choice(stuff_ids, rng.integers(4, 9), replace=False)]
        things = []
        for _ in range(rng.integers(20, 41)):
            centre, size = rng.uniform((0, 0), (w, h)), rng.uniform(8, 90)
            angles = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(5, 12)))
            poly = centre + size * rng.uniform(0.5, 1.0, (len(angles), 1)) * np.stack((np.cos(angles), np.sin(angles)), 1)
            things.append((poly, int(rng.choice(thing_ids)), int(rng.random() < 0.03)))
        gt_ids, gt_segments = draw_scene(h, w, stuff, things, rng)
        # prediction: moved cells and vertices, 10% of things missed, 5% relabelled, 3 spurious blobs
        pred_stuff = [(pos + rng.normal(0, 15, 2), cat) for pos, cat in stuff]
        pred_things = [(poly + rng.normal(0, 3, poly.shape), cat if rng.random() > 0.05 else int(rng.choice(thing_ids)), 0)
                       for poly, cat, _ in things if rng.random() > 0.1]
        pred_things += [(rng.uniform((0, 0), (w, h)) + rng.uniform(-25, 25, (6, 2)), int(rng.choice(thing_ids)), 0)
                        for _ in range(3)]
        pred_ids, pred_segments = draw_scene(h, w, pred_stuff, pred_things, rng)
        name = f"{i:06d}.png"
        Image.fromarray(id2rgb(gt_ids)).save(root / "gt" / name)
        Image.fromarray(id2rgb(pred_ids)).save(root / "pred" / name)
        gt_anns.append({"image_id": i, "file_name": name, "segments_info": gt_segments})
        pred_anns.append({"image_id": i, "file_name": name,
                          "segments_info": [{"id": s["id"], "category_id": s["category_id"]} for s in pred_segments]})
    (root / "gt.json").write_text(json.dumps({"annotations": gt_anns, "categories": cats}))
    (root / "pred.json").write_text(json.dumps({"annotations": pred_anns}))
    return root / "gt.json", root / "pred.json"


def max_difference(a: dict, b: dict) -> float:
    """Largest |a - b| over PQ / SQ / RQ of the groups and classes and the IoU sums; inf when n or
    a count differs or a category is missing."""
    worst = 0.0
    for group in ("All", "Things", "Stuff"):
        if a[group]["n"] != b[group]["n"]:
            return float("inf")
        worst = max(worst, *(abs(a[group][k] - b[group][k]) for k in ("pq", "sq", "rq")))
    for key in ("per_class", "counts"):
        x, y = ({str(c): v for c, v in r[key].items()} for r in (a, b))
        if x.keys() != y.keys():
            return float("inf")
        for cat, values in x.items():
            for k, v in values.items():
                if k in ("tp", "fp", "fn") and v != y[cat][k]:
                    return float("inf")
                worst = max(worst, abs(v - y[cat][k]))
    return worst


def check_reference_on_fixture(tmp: Path) -> float:
    """Largest difference of `reference_pq_compute` from panopticapi's results in the `pq_coco`
    fixture (each case, then all images in one call)."""
    from safetensors.numpy import load_file

    fixture = SHARED / "fixtures" / "metrics" / "pq_coco.json"
    meta, arrays = json.loads(fixture.read_text()), load_file(str(fixture.with_suffix(".safetensors")))
    cases = {c["name"]: c for c in meta["cases"]}
    runs = [([name], case["results"]) for name, case in cases.items()]
    runs.append((meta["all_images"]["images"], meta["all_images"]["results"]))
    worst = 0.0
    for k, (names, expected) in enumerate(runs):
        root = tmp / f"fixture{k}"
        anns = {"gt": [], "pred": []}
        for name in names:
            for side in ("gt", "pred"):
                (root / side).mkdir(parents=True, exist_ok=True)
                ann = cases[name][f"{side}_annotation"]
                Image.fromarray(arrays[cases[name][f"{side}_rgb"]], "RGB").save(root / side / ann["file_name"])
                anns[side].append(ann)
        (root / "gt.json").write_text(json.dumps({"annotations": anns["gt"], "categories": meta["categories"]}))
        (root / "pred.json").write_text(json.dumps({"annotations": anns["pred"]}))
        worst = max(worst, max_difference(reference_pq_compute(root / "gt.json", root / "pred.json", root / "gt",
                                                               root / "pred"), expected))
    return worst


# ---------------------------------------------------------------------------------------------


def speed_row(name: str, model: torch.nn.Module, task: PanopticTask, size: str, args) -> str:
    """One table row: eager and deploy fps, post-processing time and share, at `size`."""
    h, w = SIZES[size]
    x = torch.rand(1, 3, h, w) * 255
    metas = [{"size": (h, w), "rel": "bench.png", "kind": "image", "index": 0}]
    with torch.inference_mode():
        raw = task.forward(x)
    scene = deeplab_scene(h, w) if "DeepLab" in name else segformer_scene(raw)

    def post(r):
        return task.postprocess(r, metas)

    t = best_of({"eager": model, "deploy": task.forward, "own": post, "scene": post},
                {"eager": x, "deploy": x, "own": raw, "scene": scene}, args.repeats, args.min_time)
    segments = len(post(scene)[0]["segments_info"])
    return (f"| {name} | {size} | {1 / t['eager']:.2f} | {1 / t['deploy']:.2f} | {t['eager'] / t['deploy']:.2f} | "
            f"{1e3 * t['own']:.1f} / {1e3 * t['scene']:.1f} ({segments} segments) | "
            f"{100 * t['own'] / t['deploy']:.1f}% / {100 * t['scene'] / t['deploy']:.1f}% |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="*", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the best is reported")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=100, help="synthetic image pairs for the PQ timing")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "panoptic_speed.md")
    args = ap.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    lines = [(f"# Panoptic segmentation speed (torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"{torch.backends.cpu.get_cpu_capability()}; random weights, batch 1)"), "",
             f"Load average at the start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}.", "",
             ("| model | size | eager fps | deploy fps | deploy/eager | post-processing ms (own outputs / busy scene) "
              "| post / forward |"), "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, (model, task) in build_tasks().items():
        for size in args.sizes:
            lines.append(speed_row(name, model, task, size, args))
            print(lines[-1], flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fixture_diff = check_reference_on_fixture(tmp)
        start = time.perf_counter()
        gt_json, pred_json = make_pq_files(tmp / "synthetic", args.images)
        made = time.perf_counter() - start
        folders = (tmp / "synthetic" / "gt", tmp / "synthetic" / "pred")
        ours = pq_compute(gt_json, pred_json, *folders)
        theirs = reference_pq_compute(gt_json, pred_json, *folders)
        diff = max(max_difference(ours, theirs), max_difference(pq_compute_one_thread(gt_json, pred_json, *folders), theirs))
        pngs = sorted(folders[0].iterdir()) + sorted(folders[1].iterdir())
        files = (gt_json, pred_json, *folders)
        reference, one_thread = "reference (panopticapi's algorithm, PIL)", "cvkit `pq_compute`, all in the calling thread"
        read_ahead = "cvkit `pq_compute` (4 threads read PNGs and count pairs ahead)"
        pil, ours_png = "decoding the PNGs only, PIL", "decoding the PNGs only, `read_panoptic_png`"
        seconds = best_of(
            {reference: lambda f: reference_pq_compute(*f), one_thread: lambda f: pq_compute_one_thread(*f),
             read_ahead: lambda f: pq_compute(*f), pil: lambda paths: [np.asarray(Image.open(p)) for p in paths],
             ours_png: lambda paths: [read_panoptic_png(p) for p in paths]},
            {reference: files, one_thread: files, read_ahead: files, pil: pngs, ours_png: pngs},
            args.repeats, args.min_time)
        segments = sum(len(a["segments_info"]) for a in json.loads(gt_json.read_text())["annotations"])
    t_ref = seconds["reference (panopticapi's algorithm, PIL)"]
    lines += ["", (f"PQ evaluation on {args.images} synthetic COCO-style 640x480 pairs ({segments / args.images:.0f} "
                   f"gt segments per image; made in {made:.1f} s). The reference gives panopticapi's numbers "
                   f"on the pq_coco fixture (largest difference {fixture_diff:.1e}); cvkit against it: "
                   f"largest difference {diff:.1e} (counts {'identical' if diff < float('inf') else 'DIFFER'}), "
                   f"PQ {100 * ours['All']['pq']:.2f} / SQ {100 * ours['All']['sq']:.2f} / "
                   f"RQ {100 * ours['All']['rq']:.2f}."), "",
              "| evaluator | s per run | ms per image | speed-up |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {k} | {t:.3f} | {1e3 * t / args.images:.2f} | {t_ref / t:.2f} |" for k, t in seconds.items()]
    print("\n".join(lines[-9:]))
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
