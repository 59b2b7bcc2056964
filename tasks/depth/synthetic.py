"""Synthetic depth data with exact ground truth: rooms of planes and boxes, ray-cast through a
pinhole camera, written in cvkit's folder format (RGB PNG + same-named 16-bit PNG depth in
millimetres, 0 = invalid).

A scene is a box-shaped room (floor, ceiling, back and side walls) with a few boxes standing on
the floor, seen by a camera at 1-1.8 m height pitched down by 0-20 degrees. Surfaces carry flat
colours, a checkerboard floor and Lambertian shading, so perspective, occlusion and texture
gradients give the depth cues. Depth is the z distance along the optical axis (as in NYU and
TUM), not the ray length. A few rectangular holes are set to 0 to mimic sensor dropout.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .task import depth_to_mm

LIGHT = np.array([0.4, -0.8, -0.45]) / np.linalg.norm([0.4, -0.8, -0.45])


def _rotation_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def render_scene(rng: np.random.Generator, height: int = 120, width: int = 160,
                 holes: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One random scene: (HxWx3 uint8 RGB, HxW float32 depth in metres, 0 = invalid)."""
    f = 0.81 * width  # about 63 degrees of horizontal field of view, like a Kinect
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    rays_cam = np.stack([(u + 0.5 - width / 2) / f, (v + 0.5 - height / 2) / f, np.ones_like(u)], -1)
    rays = rays_cam @ _rotation_x(-np.radians(rng.uniform(0, 20))).T  # world: x right, y down, z forward

    cam_h = rng.uniform(1.0, 1.8)
    room_h, back, half_w = rng.uniform(2.4, 3.2), rng.uniform(4.0, 9.0), rng.uniform(2.0, 4.0)
    x_shift = rng.uniform(-1.0, 1.0)
    # planes: (axis, coordinate, normal, colour)
    planes = [(1, cam_h, (0, -1, 0), None),  # floor (checkerboard)
              (1, cam_h - room_h, (0, 1, 0), rng.uniform(0.6, 0.95, 3)),
              (2, back, (0, 0, -1), rng.uniform(0.2, 0.9, 3)),
              (0, x_shift - half_w, (1, 0, 0), rng.uniform(0.2, 0.9, 3)),
              (0, x_shift + half_w, (-1, 0, 0), rng.uniform(0.2, 0.9, 3))]
    t_best = np.full((height, width), np.inf)
    normal = np.zeros((height, width, 3))
    colour = np.zeros((height, width, 3))
    floor = np.zeros((height, width), bool)
    for axis, coord, n, c in planes:
        with np.errstate(divide="ignore", invalid="ignore"):
            t = coord / rays[..., axis]
        hit = (t > 0) & (t < t_best)
        t_best[hit] = t[hit]
        normal[hit] = n
        if c is None:
            floor = hit | (floor & ~hit)
        else:
            floor &= ~hit
            colour[hit] = c
    for _ in range(rng.integers(1, 6)):
        size = rng.uniform([0.3, 0.3, 0.3], [1.2, 1.6, 1.2])
        centre = np.array([x_shift + rng.uniform(-half_w + 0.6, half_w - 0.6), cam_h - size[1] / 2,
                           rng.uniform(1.5, back - 0.6)])
        lo, hi = centre - size / 2, centre + size / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            t0, t1 = lo / rays, hi / rays
        t_near = np.minimum(t0, t1)
        enter, leave = t_near.max(-1), np.maximum(t0, t1).min(-1)
        hit = (enter > 0) & (enter < leave) & (enter < t_best)
        face = t_near.argmax(-1)[..., None]  # the slab entered last is the face hit
        n = np.zeros((height, width, 3))
        np.put_along_axis(n, face, -np.sign(np.take_along_axis(rays, face, -1)), -1)
        t_best[hit] = enter[hit]
        normal[hit] = n[hit]
        colour[hit] = rng.uniform(0.15, 0.95, 3)
        floor &= ~hit
    points = rays * t_best[..., None]
    tile = (np.floor(points[..., 0] / 0.5) + np.floor(points[..., 2] / 0.5)) % 2
    floor_a, floor_b = rng.uniform(0.1, 0.5, 3), rng.uniform(0.5, 0.95, 3)
    colour[floor] = np.where(tile[floor][:, None] > 0, floor_a, floor_b)
    shade = 0.45 + 0.55 * np.clip(-(normal @ LIGHT), 0, 1)
    rgb = colour * shade[..., None] + rng.normal(0, 0.015, (height, width, 3))
    depth = t_best.astype(np.float32)  # rays_cam have z = 1, so the ray parameter is the z depth
    if holes:
        for _ in range(rng.integers(0, 3)):
            h0, w0 = rng.integers(2, max(3, height // 6)), rng.integers(2, max(3, width // 6))
            y0, x0 = rng.integers(0, height - h0), rng.integers(0, width - w0)
            depth[y0:y0 + h0, x0:x0 + w0] = 0
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8), depth


def write_synthetic(folder: str | Path, count: int, size: tuple[int, int] = (120, 160), seed: int = 0,
                    holes: bool = True) -> list[Path]:
    """Write `count` scenes of `size` (height, width) to `folder` as rgb/NNNNN.png and
    depth/NNNNN.png (16-bit mm); returns the RGB paths."""
    folder = Path(folder)
    for sub in ("rgb", "depth"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        rgb, depth = render_scene(rng, *size, holes=holes)
        path = folder / "rgb" / f"{i:05d}.png"
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(folder / "depth" / path.name), depth_to_mm(depth))
        paths.append(path)
    return paths


__all__ = ["render_scene", "write_synthetic"]
