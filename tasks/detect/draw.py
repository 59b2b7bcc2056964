"""Drawing detections: a box per object in its class colour with a `name score` label."""

from __future__ import annotations

import colorsys

import cv2
import numpy as np

from cvkit.media.draw import put_label


def class_color(label: int) -> tuple[int, int, int]:
    """A stable, saturated RGB colour per class index (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((label * 0.618033988749895) % 1.0, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(
    image: np.ndarray, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, names: list[str]
) -> np.ndarray:
    """A copy of the RGB uint8 `image` with the boxes (x1y1x2y2 pixels), lowest score drawn first."""
    out = image.copy()
    thickness = max(1, round(min(image.shape[:2]) / 300))
    scale = max(0.35, min(image.shape[:2]) / 1000)
    for i in np.argsort(scores, kind="stable"):
        x1, y1, x2, y2 = (round(float(v)) for v in boxes[i])
        color = class_color(int(labels[i]))
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thickness)
        text = f"{names[int(labels[i])]} {float(scores[i]):.2f}"
        (_, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, round(scale * 1.5)))
        label_h = th + base + 2 * max(2, round(4 * scale))
        top = y1 - label_h if y1 - label_h >= 0 else y1
        luma = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        text_color = (0, 0, 0) if luma > 150 else (255, 255, 255)
        put_label(out, text, (max(x1, 0), max(top, 0)), color=text_color, background=color, scale=scale)
    return out
