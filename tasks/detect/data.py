"""Detection datasets: COCO format (annotations JSON + images) and Pascal VOC (XML), validated on load.

`load_dataset(path)` reads either layout into a `DetectionSet`: class names, the valid samples
(boxes x1y1x2y2 in original pixels, contiguous labels) and the problems found. Nothing bad is
fatal: a missing image, a file name escaping the dataset root, a malformed XML file, an
annotation with an unknown category or image id, a degenerate (zero or negative size) box is
skipped and counted; a box reaching outside its image is clipped and counted. `check_report`
turns the problems into the report `cvkit data check` prints.

Layouts:
- COCO: `DIR/annotations.json` (or the only `*.json` in DIR or DIR/annotations/) and the images
  under `DIR/images/`, COCO's `DIR/<split>/` for `annotations/instances_<split>.json`, or DIR
  itself; `file_name` is relative to that image root.
- VOC: `DIR/Annotations/*.xml` and `DIR/JPEGImages/`; `DIR/ImageSets/Main/<split>.txt` selects a
  split. Class names are VOC's 20 when every name found in Annotations/ is one of them, else the
  sorted names found there (so every split of a folder has the same classes). `difficult` objects
  (and COCO `iscrowd` ones) are kept apart as ignored regions.
"""

from __future__ import annotations

import json
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from cvkit.errors import CvkitError, UsageError

VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

PROBLEMS = {
    "missing_image": "image file missing",
    "escapes_root": "file name escapes the dataset root",
    "bad_xml": "malformed annotation XML",
    "bad_record": "malformed image or annotation record",
    "unknown_image": "annotation for an unknown image id",
    "unknown_category": "annotation with an unknown category id",
    "degenerate_box": "degenerate box (zero or negative width or height)",
    "outside_image": "box outside the image (clipped)",
}
"""problem key -> description; every problem but `outside_image` drops the sample it names."""


@dataclass
class Sample:
    """One image: `file` (absolute), `image_id`, size, `boxes` (G, 4) float32 x1y1x2y2 in
    original pixels, `labels` (G,) int64 in [0, num_classes), `ignore` (I, 4) regions."""

    file: Path
    image_id: int
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    ignore: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))


@dataclass
class DetectionSet:
    """A dataset's class names, valid samples, `problems` ((key, where) pairs) and the category id
    of each class (COCO's own ids; 1..K for VOC)."""

    root: Path
    format: str
    classes: list[str]
    samples: list[Sample]
    problems: list[tuple[str, str]] = field(default_factory=list)
    category_ids: list[int] | None = None

    def __post_init__(self):
        if self.category_ids is None:
            self.category_ids = list(range(1, len(self.classes) + 1))

    @property
    def skipped(self) -> int:
        """Samples (images or annotations) dropped."""
        return sum(1 for key, _ in self.problems if key != "outside_image")

    def warn_problems(self) -> None:
        """One warning line summarising the problems (none when clean)."""
        if self.problems:
            counts = Counter(k for k, _ in self.problems)
            parts = ", ".join(f"{n} {PROBLEMS[k]}" for k, n in counts.items())
            warnings.warn(
                f"{self.root}: {self.skipped} bad samples skipped ({parts}); "
                f"`cvkit data check {self.root}` lists them",
                stacklevel=2,
            )


def _inside(root: Path, name: str) -> Path | None:
    """`root/name` resolved, or None when it escapes `root`."""
    path = (root / name).resolve()
    try:
        path.relative_to(root.resolve())
    except ValueError:
        return None
    return path


def _image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file header (PIL reads only the header), None if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError):
        return None


def _clip_box(box, w: int, h: int, where: str, problems: list) -> np.ndarray | None:
    """A box clipped to the image, None (with a problem) when it is degenerate before or after."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if not (x2 > x1 and y2 > y1):
        problems.append(("degenerate_box", where))
        return None
    tol = 1.0
    if x1 < -tol or y1 < -tol or x2 > w + tol or y2 > h + tol:
        problems.append(("outside_image", where))
    c = np.array([min(max(x1, 0), w), min(max(y1, 0), h), min(max(x2, 0), w), min(max(y2, 0), h)], np.float32)
    if not (c[2] > c[0] and c[3] > c[1]):
        problems.append(("degenerate_box", where))
        return None
    return c


def _find_coco_json(root: Path) -> Path | None:
    if (root / "annotations.json").is_file():
        return root / "annotations.json"
    for folder in (root, root / "annotations"):
        found = sorted(folder.glob("*.json")) if folder.is_dir() else []
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise UsageError(
                f"{folder} holds several JSON files ({', '.join(p.name for p in found[:3])}); "
                f"pass the annotations file itself"
            )
    return None


def _image_root(base: Path, ann_file: Path) -> Path:
    """`base/images`, else COCO's own `base/<split>` for `annotations/instances_<split>.json`, else `base`."""
    split = ann_file.stem.split("_", 1)[-1]
    for candidate in (base / "images", base / split):
        if candidate.is_dir():
            return candidate
    return base


def load_coco(ann_file: str | Path, image_root: str | Path | None = None) -> DetectionSet:
    """A COCO-format dataset (see the module docstring for the layout)."""
    ann_file = Path(ann_file)
    try:
        data = json.loads(ann_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CvkitError(f"cannot read COCO annotations {ann_file}: {e}") from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("images"), list)
        or not isinstance(data.get("categories"), list)
    ):
        raise CvkitError(f"{ann_file} is not a COCO annotations file (needs 'images' and 'categories' lists)")
    base = ann_file.parent.parent if ann_file.parent.name == "annotations" else ann_file.parent
    root = Path(image_root) if image_root else _image_root(base, ann_file)
    problems: list[tuple[str, str]] = []
    try:
        cats = sorted(data["categories"], key=lambda c: c["id"])
        cat_index = {c["id"]: i for i, c in enumerate(cats)}
        classes = [str(c["name"]) for c in cats]
    except (KeyError, TypeError):
        raise CvkitError(f"{ann_file}: every category needs an 'id' and a 'name'") from None
    images: dict[int, dict] = {}
    for rec in data["images"]:
        try:
            image_id, name, w, h = rec["id"], str(rec["file_name"]), rec.get("width"), rec.get("height")
        except (KeyError, TypeError):
            problems.append(("bad_record", f"image record {str(rec)[:60]}"))
            continue
        path = _inside(root, name)
        if path is None:
            problems.append(("escapes_root", name))
            continue
        if not path.is_file():
            problems.append(("missing_image", name))
            continue
        if not w or not h:
            size = _image_size(path)
            if size is None:
                problems.append(("missing_image", f"{name} (unreadable)"))
                continue
            w, h = size
        images[image_id] = {
            "file": path,
            "name": name,
            "width": int(w),
            "height": int(h),
            "boxes": [],
            "labels": [],
            "ignore": [],
        }
    known_ids = {rec.get("id") for rec in data["images"] if isinstance(rec, dict)}
    for ann in data.get("annotations") or []:
        try:
            image_id, cat, (x, y, bw, bh) = ann["image_id"], ann["category_id"], ann["bbox"]
        except (KeyError, TypeError, ValueError):
            problems.append(("bad_record", f"annotation {str(ann)[:60]}"))
            continue
        where = f"annotation {ann.get('id', '?')} (image {image_id})"
        if image_id not in images:
            if image_id not in known_ids:
                problems.append(("unknown_image", where))
            continue  # its image was already counted as missing
        if cat not in cat_index:
            problems.append(("unknown_category", f"{where}: category_id {cat}"))
            continue
        img = images[image_id]
        box = _clip_box((x, y, x + bw, y + bh), img["width"], img["height"], where, problems)
        if box is None:
            continue
        if ann.get("iscrowd"):
            img["ignore"].append(box)
        else:
            img["boxes"].append(box)
            img["labels"].append(cat_index[cat])
    samples = [_sample(image_id, img) for image_id, img in images.items()]
    return DetectionSet(base, "coco", classes, samples, problems, [c["id"] for c in cats])


def _sample(image_id: int, img: dict) -> Sample:
    return Sample(
        img["file"],
        image_id,
        img["width"],
        img["height"],
        np.array(img["boxes"], np.float32).reshape(-1, 4),
        np.array(img["labels"], np.int64),
        np.array(img["ignore"], np.float32).reshape(-1, 4),
    )


def _object_names(xmls: list[Path]) -> set[str]:
    """The object names in VOC annotation files; unreadable files are passed over."""
    names = set()
    for xml in xmls:
        try:
            names.update(obj.findtext("name", "").strip() for obj in ET.parse(xml).getroot().iter("object"))
        except (OSError, ET.ParseError):
            continue
    return names


def load_voc(root: str | Path, split: str | None = None) -> DetectionSet:
    """A Pascal VOC folder (Annotations/, JPEGImages/, optional ImageSets/Main/<split>.txt)."""
    root = Path(root)
    ann_dir, img_dir = root / "Annotations", root / "JPEGImages"
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if split:
        if not split_file.is_file():
            raise UsageError(f"no split file {split_file}")
        xmls = [
            ann_dir / f"{line.strip()}.xml" for line in split_file.read_text().splitlines() if line.strip()
        ]
    else:
        xmls = sorted(ann_dir.glob("*.xml"))
    problems: list[tuple[str, str]] = []
    parsed = []
    for xml in xmls:
        try:
            tree = ET.parse(xml).getroot()
            name = tree.findtext("filename") or f"{xml.stem}.jpg"
            size = tree.find("size")
            w, h = int(float(size.findtext("width"))), int(float(size.findtext("height")))
            objects = []
            for obj in tree.iter("object"):
                bb = obj.find("bndbox")
                coords = [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
                objects.append(
                    (obj.findtext("name", "").strip(), coords, obj.findtext("difficult", "0").strip())
                )
        except (OSError, ET.ParseError, AttributeError, TypeError, ValueError):
            problems.append(("bad_xml", xml.name))
            continue
        parsed.append((xml, name, w, h, objects))
    names = {o[0] for _, _, _, _, objs in parsed for o in objs}
    if split:  # every split of a folder gets the same classes (and labels): those of all its files
        names |= _object_names(sorted(ann_dir.glob("*.xml")))
    classes = list(VOC_CLASSES) if names <= set(VOC_CLASSES) else sorted(names)
    samples = []
    for i, (xml, name, w, h, objects) in enumerate(parsed):
        path = _inside(img_dir, name)
        if path is None:
            problems.append(("escapes_root", f"{xml.name}: {name}"))
            continue
        if not path.is_file():
            problems.append(("missing_image", f"{xml.name}: {name}"))
            continue
        img = {"file": path, "width": w, "height": h, "boxes": [], "labels": [], "ignore": []}
        for j, (cls, (x1, y1, x2, y2), difficult) in enumerate(objects):
            box = _clip_box((x1 - 1, y1 - 1, x2, y2), w, h, f"{xml.name} object {j}", problems)
            if box is None:
                continue
            if difficult == "1":
                img["ignore"].append(box)
            else:
                img["boxes"].append(box)
                img["labels"].append(classes.index(cls))
        samples.append(_sample(i + 1, img))
    return DetectionSet(root, "voc", classes, samples, problems)


def load_dataset(path: str | Path, split: str | None = None) -> DetectionSet:
    """A COCO or VOC dataset from a folder (or a COCO JSON file); UsageError when neither."""
    path = Path(path)
    if path.is_file() and path.suffix == ".json":
        return load_coco(path)
    if not path.is_dir():
        raise UsageError(f"dataset not found: {path}")
    if (path / "Annotations").is_dir():
        return load_voc(path, split)
    ann = _find_coco_json(path)
    if ann is None:
        raise UsageError(
            f"{path} is neither a COCO dataset (annotations.json + images/) nor a VOC one "
            f"(Annotations/ + JPEGImages/)"
        )
    return load_coco(ann)


def read_rgb(path: Path) -> np.ndarray | None:
    """HxWx3 uint8 RGB, None when the file cannot be decoded."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def check_report(ds: DetectionSet, limit: int = 20) -> list[str]:
    """Report lines: format, sizes, class counts, then each kind of problem with up to `limit` examples."""
    counts = Counter(int(label) for s in ds.samples for label in s.labels)
    lines = [
        (
            f"{ds.root}: {ds.format} dataset, {len(ds.samples)} images, "
            f"{sum(counts.values())} boxes, {len(ds.classes)} classes"
        ),
        "classes: " + ", ".join(f"{name} ({counts.get(i, 0)})" for i, name in enumerate(ds.classes)),
    ]
    empty = sum(1 for s in ds.samples if len(s.labels) == 0)
    if empty:
        lines.append(f"{empty} images without boxes")
    by_kind = Counter(k for k, _ in ds.problems)
    if not by_kind:
        lines.append("no problems found")
        return lines
    lines.append(f"{ds.skipped} bad samples skipped, {by_kind.get('outside_image', 0)} boxes clipped:")
    for key, n in by_kind.items():
        lines.append(f"  {PROBLEMS[key]}: {n}")
        examples = [w for k, w in ds.problems if k == key]
        lines.extend(f"    {w}" for w in examples[:limit])
        if n > limit:
            lines.append(f"    ... {n - limit} more")
    return lines
