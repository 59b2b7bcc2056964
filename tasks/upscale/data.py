"""Super-resolution datasets: random HR/LR training patches and whole-image validation pairs.

Low-resolution images are made on the fly with the MATLAB-compatible bicubic (`imresize`,
antialiased), the degradation behind every published SR number. Samples are plain dicts of
float tensors in [0, 1]: `lr` (C x h x w) and `hr` (C x sh x sw), C = 1 for the luma channel
("y", BT.601 studio swing as in BasicSR and the SRCNN/ESPCN papers) or 3 for "rgb".

Two evaluation protocols, one per channel mode (see `shared/fixtures/metrics/set5_bicubic.json`):

- "y" (SRCNN / ESPCN, variant C): Y = BT.601 luma of the uint8 RGB image rounded to uint8;
  LR = imresize(Y / 255, 1 / s) in float, not rounded.
- "rgb" (BasicSR / EDSR benchmark, variant A): LR = imresize(RGB / 255, 1 / s) rounded to uint8.

HR images are always modcropped to a multiple of the scale. A training patch is cut with a margin
of LR pixels around it before downscaling, so its LR equals the crop of the whole image's LR.
"""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from cvkit.errors import UsageError

from .imresize import imresize
from .metrics import modcrop, rgb_to_y

log = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
CHANNELS = ("y", "rgb")
# LR pixels kept around a patch before downscaling: the antialiased kernel reaches 2 LR pixels.
_MARGIN = 3


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside `folder`, sorted; UsageError if the folder is missing or has none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not files:
        raise UsageError(f"no images ({', '.join(IMAGE_EXTS)}) in {folder}")
    return files


def read_images(folder: str | Path, channels: str) -> tuple[list[np.ndarray], list[str], int]:
    """Decode every image of `folder` once: uint8 HxWx3 RGB, or HxW rounded BT.601 luma for "y".

    Corrupt files are skipped with a warning; returns (images, names, number skipped). UsageError
    when no image decodes."""
    if channels not in CHANNELS:
        raise UsageError(f"channels must be one of {', '.join(CHANNELS)}; got '{channels}'")
    images, names, skipped = [], [], 0
    for path in list_images(folder):
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            skipped += 1
            log.warning("skipping unreadable image %s", path)
            continue
        rgb = np.ascontiguousarray(bgr[..., ::-1])
        images.append(rgb_to_y(rgb, round_uint8=True) if channels == "y" else rgb)
        names.append(path.stem)
    if skipped:
        log.warning("%d of %d images in %s could not be read and were skipped", skipped,
                    skipped + len(images), folder)
    if not images:
        raise UsageError(f"none of the images in {folder} could be read")
    return images, names, skipped


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 HxW or HxWxC -> float32 CxHxW in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(img)).float().div_(255)
    return t[None] if t.ndim == 2 else t.permute(2, 0, 1).contiguous()


def downscale(hr: torch.Tensor, scale: int, channels: str) -> torch.Tensor:
    """The LR image of an HR tensor in [0, 1] under the protocol of `channels` (module docstring)."""
    lr = imresize(hr, 1 / scale)
    return lr if channels == "y" else lr.mul(255).round_().clamp_(0, 255).div_(255)


class SRTrainDataset(Dataset):
    """Random HR patches of `patch_size` LR pixels times `scale`, with their bicubic LR.

    Each item picks image `index % n_images`, a random crop whose corner is a multiple of the scale,
    and (with `augment`) a random horizontal flip and a random multiple of 90 degrees rotation
    applied to LR and HR together. `repeat` sets how many patches per image make one epoch.
    Images smaller than one patch are skipped with a warning; `skipped` counts unreadable files.
    """

    def __init__(self, hr_folder: str | Path, scale: int, patch_size: int, channels: str = "y",
                 repeat: int = 1, augment: bool = True):
        images, names, self.skipped = read_images(hr_folder, channels)
        need = patch_size * scale
        keep = [i for i, im in enumerate(images) if min(im.shape[:2]) >= need]
        for i in set(range(len(images))) - set(keep):
            log.warning("skipping %s: smaller than one %dx%d HR patch", names[i], need, need)
        if not keep:
            raise UsageError(f"no image in {hr_folder} is at least {need}x{need} pixels "
                             f"(patch {patch_size} x scale {scale})")
        self.images = [_to_tensor(modcrop(images[i], scale)) for i in keep]
        self.names = [names[i] for i in keep]
        self.scale, self.patch_size, self.channels = scale, patch_size, channels
        self.repeat, self.augment = repeat, augment

    def __len__(self) -> int:
        return len(self.images) * self.repeat

    def _axis(self, length: int) -> tuple[int, int, int]:
        """Random patch start (HR pixels) and the margin window [lo, hi) around it."""
        s, p = self.scale, self.patch_size
        start = s * int(torch.randint(0, (length - p * s) // s + 1, ()))
        lo, hi = max(0, start - _MARGIN * s), min(length, start + (p + _MARGIN) * s)
        return start, lo, hi

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        img = self.images[index % len(self.images)]
        s, p = self.scale, self.patch_size
        y, y0, y1 = self._axis(img.shape[1])
        x, x0, x1 = self._axis(img.shape[2])
        window = img[:, y0:y1, x0:x1]
        ly, lx = (y - y0) // s, (x - x0) // s
        lr = downscale(window, s, self.channels)[:, ly:ly + p, lx:lx + p]
        hr = img[:, y:y + p * s, x:x + p * s]
        if self.augment:
            if torch.rand(()) < 0.5:
                lr, hr = lr.flip(-1), hr.flip(-1)
            k = int(torch.randint(0, 4, ()))
            lr, hr = lr.rot90(k, (1, 2)), hr.rot90(k, (1, 2))
        return {"lr": lr.contiguous(), "hr": hr.contiguous()}


class SRValDataset(Dataset):
    """Whole images: HR modcropped to `scale`, LR by MATLAB bicubic under the `channels` protocol.

    Items are dicts with `lr`, `hr` (float tensors in [0, 1]; HR values are exact multiples of
    1/255) and `index`; `names[index]` is the file stem. LR images are computed once."""

    def __init__(self, folder: str | Path, scale: int, channels: str = "y"):
        images, self.names, self.skipped = read_images(folder, channels)
        self.scale, self.channels = scale, channels
        self.hr = [_to_tensor(modcrop(im, scale)) for im in images]
        too_small = [n for n, t in zip(self.names, self.hr) if min(t.shape[1:]) < scale]
        if too_small:
            raise UsageError(f"images smaller than the scale {scale}: {', '.join(too_small)}")
        self.lr = [downscale(t, scale, channels) for t in self.hr]

    def __len__(self) -> int:
        return len(self.hr)

    def __getitem__(self, index: int) -> dict:
        return {"lr": self.lr[index], "hr": self.hr[index], "index": index}

