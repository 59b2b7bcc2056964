"""Depth maps as pictures: the Turbo colormap (near = warm), a legend in metres, and the
side-by-side and error-map panels. No matplotlib: the 256-entry table is computed here.

Turbo ("Turbo, An Improved Rainbow Colormap for Visualization", Mikhailov, Google AI blog 2019) is
perceptually smoother than jet; its table is evaluated from the published degree-5 polynomial
fit (Ruofei Du's GLSL approximation), close to the original table.
"""
from __future__ import annotations

import cv2
import numpy as np

_TURBO_POLY = np.array([
    [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
    [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
    [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
])


def _turbo_table() -> np.ndarray:
    x = np.linspace(0.0, 1.0, 256)
    powers = np.stack([x ** k for k in range(6)])  # 6 x 256
    return (np.clip(_TURBO_POLY @ powers, 0, 1).T * 255).round().astype(np.uint8)


TURBO = _turbo_table()
"""256 x 3 uint8 RGB: index 0 dark blue (far), 255 dark red (near)."""
DEPTH_COLORS = TURBO[np.linspace(24, 250, 256).round().astype(int)]
"""Turbo without its near-black far end, so that far never looks like 'no depth' (black)."""


def depth_range(depth: np.ndarray) -> tuple[float, float]:
    """A robust display range (2nd and 98th percentiles of the valid pixels), in metres."""
    valid = depth[np.isfinite(depth) & (depth > 0)]
    if valid.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(valid, (2, 98))
    return float(lo), float(max(hi, lo + 1e-3))


def colorize(depth: np.ndarray, lo: float, hi: float, table: np.ndarray = DEPTH_COLORS) -> np.ndarray:
    """HxW depth in metres -> HxWx3 RGB uint8, `lo` (near) warm and `hi` (far) cold; 0 (no
    depth) is drawn black."""
    t = np.clip((hi - depth) / max(hi - lo, 1e-6), 0, 1)
    rgb = table[np.nan_to_num(t * 255).round().astype(np.uint8)]
    rgb[~(depth > 0)] = 0
    return rgb


def draw_legend(image: np.ndarray, lo: float, hi: float, unit: str = "m", table: np.ndarray = DEPTH_COLORS) -> np.ndarray:
    """A small colour bar with its end values in the bottom-left corner, drawn in place."""
    h, w = image.shape[:2]
    scale = max(0.3, min(h, w) / 700)
    thick = max(1, round(scale * 1.5))
    pad = max(2, round(5 * scale))
    left, right = f"{lo:.2f} {unit}", f"{hi:.2f} {unit}"
    (lw, _), _ = cv2.getTextSize(left, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    (tw, th), base = cv2.getTextSize(right, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    bar_w, bar_h = max(lw + tw + 3 * pad, min(w // 4, 220)), max(4, round(10 * scale))
    box_w, box_h = bar_w + 2 * pad, bar_h + th + base + 3 * pad
    if box_h > h or box_w > w:
        return image  # too small for a legend
    y0 = h - box_h
    image[y0:, :box_w] = (image[y0:, :box_w] * 0.35).astype(np.uint8)
    bar = table[np.linspace(255, 0, bar_w).round().astype(np.uint8)]
    y_bar = y0 + pad
    image[y_bar:y_bar + bar_h, pad:pad + bar_w] = bar[None]
    y_text = y_bar + bar_h + pad + th
    font, white = cv2.FONT_HERSHEY_SIMPLEX, (255, 255, 255)
    cv2.putText(image, left, (pad, y_text), font, scale, white, thick, cv2.LINE_AA)
    cv2.putText(image, right, (max(pad, pad + bar_w - tw), y_text), font, scale, white, thick, cv2.LINE_AA)
    return image


def render_depth(depth: np.ndarray, value_range: tuple[float, float] | None = None, legend: bool = True) -> np.ndarray:
    """The colour-mapped view of a depth map, with its legend; `value_range` fixes (near, far)."""
    lo, hi = value_range or depth_range(depth)
    rgb = colorize(depth, lo, hi)
    return draw_legend(rgb, lo, hi) if legend else rgb


def error_panel(image: np.ndarray, target: np.ndarray, pred: np.ndarray, title: str) -> np.ndarray:
    """One row: input | ground truth | prediction (both on the ground truth's range) | absolute
    error (black = 0, red = the frame's largest error; pixels without ground truth are black)."""
    lo, hi = depth_range(target)
    err = np.where(target > 0, np.abs(pred - target), 0.0)
    emax = float(err.max()) or 1.0
    err_rgb = TURBO[(128 + 127 * np.clip(err / emax, 0, 1)).round().astype(np.uint8)]
    err_rgb[err == 0] = 0
    row = np.concatenate([image, draw_legend(colorize(target, lo, hi), lo, hi),
                          draw_legend(colorize(pred, lo, hi), lo, hi),
                          draw_legend(err_rgb, 0.0, emax, table=TURBO[128:].repeat(2, axis=0)[::-1])], axis=1)
    scale = max(0.35, row.shape[0] / 500)
    cv2.putText(row, title, (4, 4 + round(14 * scale)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                max(1, round(scale * 1.5)), cv2.LINE_AA)
    return row
