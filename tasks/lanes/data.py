"""Lane datasets: CULane list files and TuSimple json lines, as training and evaluation samples.

CULane (`list/train_gt.txt`, `list/val_gt.txt`): each line is `/image.jpg /label.png e1 e2 e3 e4`,
paths relative to the dataset root; the label PNG holds 0 for background and k for lane slot k;
the flags say which slots hold a lane. Ground-truth points for evaluation are the `.lines.txt`
file next to each image (a missing file means no lanes, as in the official evaluator).

TuSimple (`label_data_*.json` for training, `test_label.json` for evaluation): one json object a
line with `raw_file`, `lanes` (x per row, -2 where absent) and `h_samples`. The segmentation label
is drawn as the SCNN tools draw it: lane i (in file order) in value i + 1, segment by segment with
`cv2.line` 15 px thick at TuSimple's 720-px height (SEG_WIDTH 30 // 2; scaled for other heights);
a lane with fewer than four points is left out and its existence flag is 0.

Bad samples (missing image or label, a label of another size than its image, `lanes` and
`h_samples` of different lengths, malformed JSON, more lanes than the model has slots, a path
leaving the dataset root) are skipped with one warning line each and counted in `skipped`.

Samples are dicts: `image` (3, H, W) float, ImageNet-normalised, at the model's input size;
`label` (H, W) int64; `exist` (num_lanes,) float; `size` (2,) the original (H, W); `index`; and
with `with_gt` the ground-truth lanes `gt` (MAX_LANES, MAX_POINTS, 2), NaN-padded.
"""
from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from cvkit.errors import UsageError

from .metrics import parse_culane_lines

log = logging.getLogger(__name__)

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
TUSIMPLE_SEG_WIDTH = 30
"""The SCNN tools' SEG_WIDTH; lanes are drawn SEG_WIDTH // 2 = 15 px thick on 1280x720 images."""
MAX_LANES, MAX_POINTS = 8, 128
CULANE_LISTS = {"train": ("list/train_gt.txt",), "val": ("list/val_gt.txt", "list/val.txt", "list/test.txt")}
TUSIMPLE_FILES = {"train": ("label_data_*.json", "train_set.json"), "val": ("test_label.json",)}


@dataclass
class LaneSample:
    """One annotated image: `image` path, `rel` its path in the dataset; CULane: `label` path and
    `exist` flags; TuSimple: `lanes` (x lists) and `h_samples`."""

    image: Path
    rel: str
    label: Path | None = None
    exist: list[float] | None = None
    lanes: list[list[float]] | None = None
    h_samples: list[float] | None = None
    extra: dict = field(default_factory=dict)

    def gt_lanes(self) -> list[np.ndarray]:
        """Ground-truth lanes as (n, 2) (x, y) arrays: the TuSimple points, or the CULane
        `.lines.txt` next to the image (none if the file is missing)."""
        if self.lanes is not None:
            out = []
            for xs in self.lanes:
                pts = [(x, y) for x, y in zip(xs, self.h_samples) if x >= 0]
                out.append(np.asarray(pts, np.float64).reshape(-1, 2))
            return out
        txt = self.image.with_suffix(".lines.txt")
        return parse_culane_lines(txt.read_text() if txt.is_file() else None)


def normalise(image: np.ndarray, input_size: tuple[int, int]) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> (3, h, w) float tensor at `input_size` = (w, h), ImageNet-normalised."""
    w, h = input_size
    if image.shape[:2] != (h, w):
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    x = (image.astype(np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(x.transpose(2, 0, 1).copy())


def tusimple_label(lanes: list[list[float]], h_samples: list[float], size: tuple[int, int]) -> tuple[np.ndarray, list[float]]:
    """(label map of `size` = (H, W), existence flags) for TuSimple lanes, drawn as the SCNN tools do."""
    h, w = size
    label = np.zeros((h, w), np.uint8)
    thickness = max(1, round(TUSIMPLE_SEG_WIDTH // 2 * h / 720))
    exist = []
    for i, xs in enumerate(lanes):
        coords = [(int(x), int(y)) for x, y in zip(xs, h_samples) if x >= 0]
        if len(coords) < 4:
            exist.append(0.0)
            continue
        for a, b in itertools.pairwise(coords):
            cv2.line(label, a, b, i + 1, thickness)
        exist.append(1.0)
    return label, exist


class _Skips:
    """Bad samples: one warning line each, counted."""

    def __init__(self, name: str):
        self.name, self.items = name, []

    def __call__(self, where: str, reason: str) -> None:
        self.items.append((where, reason))
        log.warning("%s: skipped %s: %s", self.name, where, reason)


def _inside(root: Path, rel: str) -> Path | None:
    path = (root / rel.lstrip("/")).resolve()
    return path if path.is_relative_to(root.resolve()) else None


def _image_size(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except (OSError, ValueError):
        return None


def read_culane_list(list_file: Path, root: Path, num_lanes: int, skip: _Skips,
                     need_labels: bool = True) -> list[LaneSample]:
    """Samples of a CULane list file (`image [label e1 .. eL]` per line; image-only lines are
    taken when `need_labels` is False)."""
    samples = []
    for n, line in enumerate(list_file.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        where = f"{list_file.name}:{n}"
        image = _inside(root, parts[0])
        if image is None:
            skip(where, f"{parts[0]} is outside the dataset folder {root}")
            continue
        if not image.is_file():
            skip(where, f"image not found: {image}")
            continue
        sample = LaneSample(image, parts[0].lstrip("/"))
        if len(parts) > 1:
            if len(parts) != 2 + num_lanes:
                skip(where, f"expected an image, a label and {num_lanes} existence flags, got {len(parts)} fields"
                     + (f" (more lanes than the model's {num_lanes})" if len(parts) > 2 + num_lanes else ""))
                continue
            label = _inside(root, parts[1])
            if label is None or not label.is_file():
                skip(where, f"label not found: {parts[1] if label is None else label}")
                continue
            try:
                sample.exist = [float(int(e)) for e in parts[2:]]
            except ValueError:
                skip(where, f"existence flags must be 0 or 1, got {' '.join(parts[2:])}")
                continue
            isize, lsize = _image_size(image), _image_size(label)
            if isize is None or lsize is None:
                skip(where, f"cannot read {'image' if isize is None else 'label'} header")
                continue
            if isize != lsize:
                skip(where, f"label {lsize[1]}x{lsize[0]} differs from image {isize[1]}x{isize[0]}")
                continue
            sample.label = label
        elif need_labels:
            skip(where, "no label PNG and existence flags on this line")
            continue
        samples.append(sample)
    return samples


def read_tusimple(json_files: list[Path], root: Path, num_lanes: int, skip: _Skips) -> list[LaneSample]:
    """Samples of TuSimple json-lines files (`raw_file`, `lanes`, `h_samples`)."""
    samples = []
    for jf in json_files:
        for n, line in enumerate(jf.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            where = f"{jf.name}:{n}"
            try:
                rec = json.loads(line)
                raw, lanes, h_samples = rec["raw_file"], rec["lanes"], rec["h_samples"]
                lanes = [[float(x) for x in xs] for xs in lanes]
                h_samples = [float(y) for y in h_samples]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                skip(where, f"malformed TuSimple line ({type(e).__name__}: {e})")
                continue
            bad = [i for i, xs in enumerate(lanes) if len(xs) != len(h_samples)]
            if bad:
                skip(where, f"lane {bad[0]} has {len(lanes[bad[0]])} values for {len(h_samples)} h_samples")
                continue
            lanes = [xs for xs in lanes if any(x >= 0 for x in xs)]
            if len(lanes) > num_lanes:
                skip(where, f"{len(lanes)} lanes, more than the model's {num_lanes} lane classes")
                continue
            image = _inside(root, raw)
            if image is None or not image.is_file():
                skip(where, f"image not found: {raw}")
                continue
            samples.append(LaneSample(image, raw, lanes=lanes, h_samples=h_samples))
    return samples


def find_annotations(data: str | Path, split: str, protocol: str | None = None) -> tuple[str, Path, list[Path]]:
    """(protocol, root, files) for `data`: a CULane list file (.txt), TuSimple json file(s)
    (.json), or a dataset folder (CULane's `list/` files or TuSimple's json files, module
    docstring). `protocol` ("culane" / "tusimple") picks one where a folder has both."""
    data = Path(data).expanduser()
    if data.is_file():
        if data.suffix == ".json":
            return "tusimple", data.parent, [data]
        root = data.parent.parent if data.parent.name == "list" else data.parent
        return "culane", root, [data]
    if not data.is_dir():
        raise UsageError(f"dataset not found: {data}")
    found = {}
    lists = [data / f for f in CULANE_LISTS[split] if (data / f).is_file()]
    if lists:
        found["culane"] = lists[:1]
    jsons = sorted({p for pattern in TUSIMPLE_FILES[split] for p in data.glob(pattern)})
    if jsons:
        found["tusimple"] = jsons
    if protocol is not None:
        if protocol not in ("culane", "tusimple"):
            raise UsageError(f"protocol must be culane or tusimple, not '{protocol}'")
        if protocol not in found:
            raise UsageError(f"{data} has no {protocol} {split} annotations")
        return protocol, data, found[protocol]
    if not found:
        raise UsageError(f"{data} has no {split} annotations: expected CULane "
                         f"{' or '.join(CULANE_LISTS[split])}, or TuSimple {' or '.join(TUSIMPLE_FILES[split])}")
    protocol = next(iter(found))
    return protocol, data, found[protocol]


class LaneDataset(Dataset):
    """Lane samples of `data` (see `find_annotations`) at the model's `input_size` = (W, H).

    `with_gt` adds the ground-truth lanes (`gt`) for the lane metrics; `need_labels=False` also
    takes CULane list lines without labels (evaluation)."""

    def __init__(self, data: str | Path, split: str = "train", *, input_size: tuple[int, int],
                 num_lanes: int = 4, with_gt: bool = False, need_labels: bool = True,
                 protocol: str | None = None):
        self.protocol, self.root, files = find_annotations(data, split, protocol)
        self.input_size, self.num_lanes, self.with_gt = tuple(input_size), num_lanes, with_gt
        skip = _Skips(f"lanes {split}")
        if self.protocol == "culane":
            self.samples = read_culane_list(files[0], self.root, num_lanes, skip, need_labels)
        else:
            self.samples = read_tusimple(files, self.root, num_lanes, skip)
        self.skipped = skip.items
        if self.skipped:
            log.warning("lanes %s: %d bad samples skipped, %d kept", split, len(self.skipped), len(self.samples))
        if not self.samples:
            raise UsageError(f"no usable {split} samples in {data}")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        for k in range(len(self.samples)):  # a corrupt image: warn, count, serve the next sample
            s = self.samples[(i + k) % len(self.samples)]
            bgr = cv2.imread(str(s.image), cv2.IMREAD_COLOR)
            if bgr is not None:
                break
            self.skipped.append((str(s.image), "cannot decode image"))
            log.warning("lanes: cannot decode %s; serving the next sample instead", s.image)
        else:
            raise UsageError(f"no decodable images in {self.root}")
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        h, w = image.shape[:2]
        if s.lanes is not None:
            label, exist = tusimple_label(s.lanes, s.h_samples, (h, w))
            exist += [0.0] * (self.num_lanes - len(exist))
        elif s.label is not None:
            label = cv2.imread(str(s.label), cv2.IMREAD_GRAYSCALE)
            exist = s.exist
        else:
            label, exist = np.zeros((h, w), np.uint8), [0.0] * self.num_lanes
        label[label > self.num_lanes] = 0  # values beyond the slots (e.g. 255) count as background
        iw, ih = self.input_size
        out = {"image": normalise(image, self.input_size),
               "label": torch.from_numpy(cv2.resize(label, (iw, ih), interpolation=cv2.INTER_NEAREST)).long(),
               "exist": torch.tensor(exist, dtype=torch.float32),
               "size": torch.tensor([h, w]), "index": i}
        if self.with_gt:
            gt = torch.full((MAX_LANES, MAX_POINTS, 2), float("nan"))
            for k, lane in enumerate(s.gt_lanes()[:MAX_LANES]):
                pts = torch.from_numpy(lane[:MAX_POINTS]).float()
                gt[k, :len(pts)] = pts
            out["gt"] = gt
        return out


def unpad(gt: torch.Tensor) -> list[np.ndarray]:
    """The lanes of one padded `gt` tensor, as (n, 2) float64 arrays."""
    lanes = []
    for lane in gt.numpy().astype(np.float64):
        keep = ~np.isnan(lane[:, 0])
        if keep.any():
            lanes.append(lane[keep])
    return lanes


__all__ = ["LaneDataset", "LaneSample", "find_annotations", "normalise", "read_culane_list", "read_tusimple",
           "tusimple_label", "unpad"]
