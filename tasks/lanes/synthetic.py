"""Synthetic road scenes for lane detection: a learning proof and a demo without a real dataset.

A pinhole camera 1.5 m above a flat road looks ahead; lane lines are curves x(z) = offset +
heading * z + curvature * z^2 on the ground, projected to the image. Up to four lines per scene in
CULane's slots (the ego lane's left and right lines in slots 2 and 3, their outer neighbours in 1
and 4), each solid or dashed, white or yellow, with perspective width. Cars stand on the road in
front of the markings (occluders); shadows, texture, brightness changes, blur and noise vary the
look. The labels are CULane's: a segmentation PNG with each lane's centre line drawn in value
slot + 1 (16 px at CULane's 590-px height, scaled), four existence flags and `.lines.txt` points,
and optionally TuSimple JSON lines (x at `h_samples`, -2 where the lane is absent).

`write_dataset(root, ...)` writes a folder that `cvkit train lanes --data root` reads:

    root/train/00000.jpg, root/train/00000.lines.txt, ...      images and CULane point files
    root/laneseg_label/train/00000.png, ...                     segmentation labels (0 = background)
    root/list/train_gt.txt, list/val_gt.txt                     `/train/00000.jpg /laneseg_label/... 1 1 1 0`
    root/list/val.txt                                           image paths of the validation split
    root/label_data_train.json, root/test_label.json            TuSimple lines (with tusimple=True)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .postprocess import TUSIMPLE_ROWS, Lane, to_culane_text

CAMERA_HEIGHT = 1.5
"""metres above the road."""
FAR = 70.0
"""metres: where the lanes (and labels) end."""


@dataclass
class Scene:
    """One rendered scene: `image` (H, W, 3) RGB uint8, `label` (H, W) uint8 (0 = background,
    k = lane slot k - 1), `exist` (4,) flags, `lanes` the visible lanes as `Lane`s (points bottom
    first, image pixels)."""

    image: np.ndarray
    label: np.ndarray
    exist: np.ndarray
    lanes: list[Lane]


class _Camera:
    def __init__(self, rng: np.random.Generator, height: int, width: int):
        self.h, self.w = height, width
        self.horizon = height * rng.uniform(0.36, 0.44)
        self.f = width * rng.uniform(0.8, 1.0)
        self.cx = width / 2 + rng.uniform(-0.05, 0.05) * width
        self.x = rng.uniform(-0.6, 0.6)  # lateral camera position in the ego lane

    def near(self) -> float:
        """Depth of the ground seen at the bottom image row."""
        return self.f * CAMERA_HEIGHT / (self.h - self.horizon)

    def project(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        return np.stack([self.cx + self.f * (x - self.x) / z, self.horizon + self.f * CAMERA_HEIGHT / z], -1)


def _depths(cam: _Camera, n: int = 160) -> np.ndarray:
    """Depths from the bottom row to FAR, denser near the camera (even in image rows)."""
    return 1.0 / np.linspace(1.0 / cam.near(), 1.0 / FAR, n)


def _background(rng: np.random.Generator, h: int, w: int, horizon: float) -> np.ndarray:
    img = np.empty((h, w, 3), np.float32)
    top = np.array([rng.uniform(120, 200), rng.uniform(150, 210), rng.uniform(190, 250)])
    bottom = top * rng.uniform(0.8, 1.1)
    hz = int(horizon)
    t = np.linspace(0, 1, max(hz, 1))[:, None, None]
    img[:hz] = (1 - t) * top + t * bottom
    ground = np.array([rng.uniform(60, 110), rng.uniform(80, 130), rng.uniform(40, 80)])
    img[hz:] = ground
    return img


def _blotches(rng: np.random.Generator, h: int, w: int, cells: int, amp: float) -> np.ndarray:
    """Low-frequency texture: coarse noise upsampled."""
    small = rng.normal(0, amp, (max(2, h * cells // w), cells)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)[..., None]


def _poly(points: np.ndarray) -> np.ndarray:
    return np.round(points * 4).astype(np.int32)  # 2 fractional bits for cv2 drawing (shift=2)


def render_scene(rng: np.random.Generator, size: tuple[int, int] = (288, 512), num_lanes: int = 4) -> Scene:
    """One random scene of `size` = (H, W) with up to `num_lanes` (4) lane lines."""
    h, w = size
    cam = _Camera(rng, h, w)
    z = _depths(cam)
    lane_w = rng.uniform(3.2, 3.9)
    heading = rng.uniform(-0.04, 0.04)
    curve = rng.uniform(-0.0025, 0.0025) * (rng.random() < 0.7)
    offsets = (np.arange(num_lanes) - (num_lanes - 1) / 2) * lane_w

    def ground_x(offset: float, zz: np.ndarray) -> np.ndarray:
        return offset + heading * zz + curve * zz ** 2

    img = _background(rng, h, w, cam.horizon)
    # Road: from half a lane beyond the outer lines; asphalt with texture.
    margin = rng.uniform(0.3, 1.5)
    left = cam.project(ground_x(offsets[0] - margin, z), z)
    right = cam.project(ground_x(offsets[-1] + margin, z), z)
    road = np.zeros((h, w), np.uint8)
    cv2.fillPoly(road, [_poly(np.concatenate([left, right[::-1]]))], 1, cv2.LINE_AA, shift=2)
    grey = rng.uniform(70, 140)
    asphalt = np.array([grey, grey, grey * rng.uniform(0.95, 1.08)], np.float32)
    img[road > 0] = asphalt
    img += _blotches(rng, h, w, 24, rng.uniform(3, 12))

    # Lane markings: solid or dashed quads of perspective width.
    exist = np.zeros(num_lanes, np.float32)
    present = [i for i in range(num_lanes)
               if rng.random() < (0.95 if i in (num_lanes // 2 - 1, num_lanes // 2) else 0.7)]
    paint = np.zeros((h, w), np.float32)
    colours = {}
    for i in present:
        exist[i] = 1
        dashed = rng.random() < (0.65 if i in (num_lanes // 2 - 1, num_lanes // 2) else 0.3)
        half = rng.uniform(0.06, 0.09)
        period, duty, phase = rng.uniform(9, 15), rng.uniform(0.3, 0.5), rng.uniform(0, 15)
        zz = 1.0 / np.linspace(1.0 / cam.near(), 1.0 / FAR, 600)
        on = np.ones_like(zz, bool) if not dashed else ((zz + phase) % period) < duty * period
        pl = cam.project(ground_x(offsets[i] - half, zz), zz)
        pr = cam.project(ground_x(offsets[i] + half, zz), zz)
        for a in range(len(zz) - 1):
            if on[a] and on[a + 1]:
                quad = np.array([pl[a], pr[a], pr[a + 1], pl[a + 1]])
                cv2.fillConvexPoly(paint, _poly(quad), 1.0, cv2.LINE_AA, shift=2)
        colours[i] = (np.array([245, 245, 240]) if rng.random() < 0.8 else np.array([235, 190, 60])) \
            * rng.uniform(0.75, 1.0)
        mask = paint[..., None]
        img = img * (1 - mask) + mask * colours[i]
        paint[:] = 0

    # Shadows across the road, then cars standing on it (far to near, so near ones cover far ones).
    for _ in range(rng.integers(0, 3)):
        y0 = rng.uniform(cam.horizon + 10, h)
        pts = np.array([[rng.uniform(-w, w), y0], [rng.uniform(0, 2 * w), y0 + rng.uniform(-20, 20)],
                        [rng.uniform(0, 2 * w), y0 + rng.uniform(10, 60)], [rng.uniform(-w, w), y0 + rng.uniform(10, 60)]])
        shadow = np.zeros((h, w), np.float32)
        cv2.fillPoly(shadow, [_poly(pts)], 1.0, cv2.LINE_AA, shift=2)
        img *= 1 - rng.uniform(0.2, 0.5) * shadow[..., None]
    cars = sorted(rng.uniform(cam.near() + 2, 45, rng.integers(0, 4)), reverse=True)
    for zc in cars:
        lane = rng.integers(0, max(num_lanes - 1, 1))
        xc = ground_x(offsets[lane] + lane_w / 2 + rng.uniform(-0.8, 0.8), np.array([zc]))
        (u, v), = cam.project(xc, np.array([zc]))
        cw, ch = cam.f * 1.8 / zc, cam.f * rng.uniform(1.3, 1.8) / zc
        body = rng.uniform(20, 230, 3)
        x0, x1, y0, y1 = int(u - cw / 2), int(u + cw / 2), int(v - ch), int(v)
        cv2.rectangle(img, (x0, y0), (x1, y1), body.tolist(), -1)
        cv2.rectangle(img, (x0 + int(cw * 0.1), y0 + int(ch * 0.1)), (x1 - int(cw * 0.1), y0 + int(ch * 0.4)),
                      (body * 0.3).tolist(), -1)
        cv2.rectangle(img, (x0, y1 - max(1, int(ch * 0.12))), (x1, y1), (20, 20, 20), -1)

    # Photometric changes and sensor noise.
    img = img * rng.uniform(0.6, 1.25) + rng.uniform(-25, 25)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.2))
    img += rng.normal(0, rng.uniform(2, 9), img.shape).astype(np.float32)
    image = np.clip(img, 0, 255).astype(np.uint8)

    # Labels: each present lane's centre line, from the bottom row to FAR.
    label = np.zeros((h, w), np.uint8)
    thickness = max(2, round(16 * h / 590))
    lanes = []
    ys = np.arange(h - 1, cam.horizon, -h / 59.0)  # CULane's points are ~10 px apart at 590 px
    for i in present:
        curve_px = cam.project(ground_x(offsets[i], z), z)
        cv2.polylines(label, [np.round(curve_px).astype(np.int32)], False, i + 1, thickness)
        xs = np.interp(ys, curve_px[::-1, 1], curve_px[::-1, 0], left=np.nan, right=np.nan)
        keep = (xs >= 0) & (xs <= w - 1) & (ys >= curve_px[-1, 1])
        pts = np.stack([xs[keep], ys[keep]], 1).astype(np.float32)
        if len(pts) >= 2:
            lanes.append(Lane(np.round(pts, 2), 1.0, i))
    return Scene(image, label, exist, lanes)


def tusimple_record(scene: Scene, raw_file: str) -> dict:
    """The scene's TuSimple json line: `lanes` (x per h_sample, -2 where absent, left to right by
    slot) and `h_samples` (TuSimple's rows scaled to the image height, ascending)."""
    h = scene.image.shape[0]
    h_samples = [round(y, 3) for y in TUSIMPLE_ROWS.ys(h)[::-1]]
    lanes = []
    for lane in scene.lanes:
        p = lane.points[::-1]  # ascending y
        xs = np.interp(h_samples, p[:, 1], p[:, 0], left=-2, right=-2)
        lanes.append([round(float(x), 2) if x >= 0 else -2 for x in xs])
    return {"raw_file": raw_file, "lanes": lanes, "h_samples": h_samples}


def write_dataset(root: str | Path, train: int = 200, val: int = 50, size: tuple[int, int] = (288, 512),
                  seed: int = 0, tusimple: bool = False) -> Path:
    """Write `train` + `val` scenes of `size` = (H, W) under `root` in CULane's layout (module
    docstring), plus TuSimple json lines when `tusimple`. Deterministic for a `seed`."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / "list").mkdir(parents=True, exist_ok=True)
    for split, count, list_name, ts_name in (("train", train, "train_gt", "label_data_train"),
                                             ("val", val, "val_gt", "test_label")):
        gt_lines, image_lines, ts_lines = [], [], []
        (root / split).mkdir(exist_ok=True)
        (root / "laneseg_label" / split).mkdir(parents=True, exist_ok=True)
        for k in range(count):
            scene = render_scene(rng, size)
            image_rel, label_rel = f"{split}/{k:05d}.jpg", f"laneseg_label/{split}/{k:05d}.png"
            cv2.imwrite(str(root / image_rel), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_JPEG_QUALITY, 92])
            cv2.imwrite(str(root / label_rel), scene.label)
            (root / image_rel).with_suffix(".lines.txt").write_text(to_culane_text(scene.lanes))
            gt_lines.append(f"/{image_rel} /{label_rel} " + " ".join(str(int(e)) for e in scene.exist))
            image_lines.append(f"/{image_rel}")
            ts_lines.append(json.dumps(tusimple_record(scene, image_rel)))
        (root / "list" / f"{list_name}.txt").write_text("\n".join(gt_lines) + "\n")
        (root / "list" / f"{split}.txt").write_text("\n".join(image_lines) + "\n")
        if tusimple:
            (root / f"{ts_name}.json").write_text("\n".join(ts_lines) + "\n")
    return root


def main(argv: list[str] | None = None) -> None:
    """`python -m cvkit.tasks.lanes.synthetic ROOT [--train N --val N --size H W --seed S --tusimple]`."""
    import argparse

    ap = argparse.ArgumentParser(description="Write a synthetic lane dataset (CULane layout).")
    ap.add_argument("root")
    ap.add_argument("--train", type=int, default=200)
    ap.add_argument("--val", type=int, default=50)
    ap.add_argument("--size", type=int, nargs=2, default=(288, 512), metavar=("H", "W"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tusimple", action="store_true", help="also write TuSimple json lines")
    a = ap.parse_args(argv)
    root = write_dataset(a.root, a.train, a.val, tuple(a.size), a.seed, a.tusimple)
    print(f"{a.train} train + {a.val} val scenes in {root}")


__all__ = ["Scene", "main", "render_scene", "tusimple_record", "write_dataset"]

if __name__ == "__main__":
    main()
