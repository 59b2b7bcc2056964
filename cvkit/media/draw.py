"""Small drawing helpers shared by renderers and the preview window (RGB uint8 images)."""
from __future__ import annotations

import cv2
import numpy as np


def put_label(image: np.ndarray, text: str, origin: tuple[int, int] = (8, 8), *,
              color: tuple[int, int, int] = (255, 255, 255), background: tuple[int, int, int] = (0, 0, 0),
              scale: float | None = None) -> np.ndarray:
    """Draw `text` on a filled box with its top-left corner at `origin`, in place; the font
    scales with the image height unless `scale` is given. Returns `image`."""
    scale = scale or max(0.4, image.shape[0] / 900)
    thickness = max(1, round(scale * 1.5))
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    x, y = origin
    pad = max(2, round(4 * scale))
    cv2.rectangle(image, (x, y), (x + w + 2 * pad, y + h + base + 2 * pad), background, -1)
    cv2.putText(image, text, (x + pad, y + pad + h), cv2.FONT_HERSHEY_SIMPLEX, scale, color, thickness,
                cv2.LINE_AA)
    return image
