"""Detection data in ultralytics' YOLO format: the embedded ``shapes`` set, or any dataset yaml from a local path.

``shapes`` is generated, deterministic and small: 3 classes (square, circle, triangle) of random colour and size on a
noisy background, 1-3 objects per image, 64x64 images (240 train, 60 val), written once as PNG images and YOLO label
files with a dataset yaml.  A user's yaml (e.g. a COCO layout) is read from a local path only: its ``path``,
``train`` and ``val`` entries must exist on disk (nothing is downloaded); a normalised copy with absolute paths and
no ``download`` entry is what ultralytics is given.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

from ..errors import PruneBenchError, first_line

SHAPES = ("square", "circle", "triangle")
SHAPES_VERSION = 1
DETECTION_DATASETS = ("shapes", "<path to an ultralytics dataset .yaml>")


@dataclass(frozen=True)
class DetectionData:
    name: str
    yaml: Path          # the yaml ultralytics reads (absolute paths, no download entry)
    names: tuple        # class names
    imgsz: int          # training / evaluation image size (a multiple of 32)

    @property
    def num_classes(self) -> int:
        return len(self.names)


def is_detection_dataset(name: str) -> bool:
    return name == "shapes" or str(name).endswith((".yaml", ".yml"))


def detection_imgsz(name: str, imgsz: Optional[int] = None) -> int:
    """The image size a detection dataset trains and validates at: ``imgsz``, else shapes' 64 or ultralytics' 640."""
    return imgsz or (64 if name == "shapes" else 640)


def load_detection_data(name: str, root: str | os.PathLike = "data", imgsz: Optional[int] = None) -> DetectionData:
    """``shapes`` (generated under ``root/shapes`` on first use) or a local ultralytics dataset yaml."""
    if name == "shapes":
        folder = make_shapes(Path(root) / "shapes")
        return DetectionData("shapes", folder / "shapes.yaml", SHAPES, detection_imgsz(name, imgsz))
    if str(name).endswith((".yaml", ".yml")):
        return _from_yaml(Path(name), Path(root), detection_imgsz(name, imgsz))
    raise PruneBenchError(f"unknown detection dataset {name!r}; choose one of: {', '.join(DETECTION_DATASETS)}")


# --------------------------------------------------------------------------- shapes
def make_shapes(out: Path, n_train: int = 240, n_val: int = 60, size: int = 64, seed: int = 0) -> Path:
    """Write the shapes dataset to ``out`` (atomically; reused when already complete)."""
    out = Path(out)
    marker = out / f".complete-v{SHAPES_VERSION}"
    if marker.is_file():
        return out
    from PIL import Image
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    rng = np.random.RandomState(seed)
    for split, count in (("train", n_train), ("val", n_val)):
        (tmp / "images" / split).mkdir(parents=True)
        (tmp / "labels" / split).mkdir(parents=True)
        for i in range(count):
            image, labels = _shapes_image(rng, size)
            Image.fromarray(image).save(tmp / "images" / split / f"{i:04d}.png")
            lines = [f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}" for c, x, y, w, h in labels]
            (tmp / "labels" / split / f"{i:04d}.txt").write_text("\n".join(lines) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    spec = {"path": str(out.resolve()), "train": "images/train", "val": "images/val",
            "names": {i: n for i, n in enumerate(SHAPES)}}
    (out / "shapes.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    marker.write_text("ok\n")
    return out


def _shapes_image(rng: np.random.RandomState, size: int):
    """One image (uint8 HxWx3) with 1-3 non-overlapping shapes, and its YOLO labels (class, cx, cy, w, h)."""
    image = (rng.rand(size, size, 3) * 60 + 20).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    labels, boxes = [], []
    for _ in range(rng.randint(1, 4)):
        for _attempt in range(20):
            s = rng.randint(size // 6, size // 3)
            x0, y0 = rng.randint(0, size - s), rng.randint(0, size - s)
            if all(x0 + s <= a or a + w <= x0 or y0 + s <= b or b + h <= y0 for a, b, w, h in boxes):
                break
        else:
            continue
        cls = rng.randint(len(SHAPES))
        cx, cy, r = x0 + s / 2, y0 + s / 2, s / 2
        if cls == 0:
            mask = (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
        elif cls == 1:
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r ** 2
        else:  # apex at the top, base at the bottom
            mask = (yy >= y0) & (yy <= y0 + s) & (np.abs(xx - cx) <= (yy - y0) / 2)
        image[mask] = rng.randint(100, 256, 3)
        boxes.append((x0, y0, s, s))
        labels.append((cls, cx / size, cy / size, s / size, s / size))
    return image.clip(0, 255).astype(np.uint8), labels


# --------------------------------------------------------------------------- dataset yaml
def _from_yaml(path: Path, root: Path, imgsz: int) -> DetectionData:
    if not path.is_file():
        raise PruneBenchError(f"dataset yaml {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise PruneBenchError(f"dataset yaml {path} is not valid YAML: {first_line(e)}")
    if not isinstance(data, dict):
        raise PruneBenchError(f"dataset yaml {path} must be a mapping with train, val and names")
    missing_keys = [k for k in ("train", "val", "names") if not data.get(k)]
    if missing_keys:
        raise PruneBenchError(f"dataset yaml {path} lacks {', '.join(missing_keys)}")
    base = Path(data.get("path") or path.parent)
    if not base.is_absolute():  # relative to the yaml (ultralytics would look in its global datasets dir)
        base = (path.parent / base).resolve()
    missing = []
    if not base.is_dir():
        missing.append(f"path {base}")
    resolved = {}
    for split in ("train", "val", "test"):
        entries = data.get(split)
        if not entries:
            continue
        items = entries if isinstance(entries, list) else [entries]
        full = [str(p if Path(p).is_absolute() else base / p) for p in items]
        missing += [f"{split} {p}" for p in full if not Path(p).exists()]
        resolved[split] = full if isinstance(entries, list) else full[0]
    if missing:
        raise PruneBenchError(f"dataset yaml {path}: missing on disk: {'; '.join(missing)} (nothing is downloaded)")
    names = data["names"]
    names = tuple(names[k] for k in sorted(names)) if isinstance(names, dict) else tuple(names)
    spec = {k: v for k, v in data.items() if k != "download"}
    spec.update(path=str(base), names={i: n for i, n in enumerate(names)}, **resolved)
    out = Path(root) / "yaml" / (path.stem + ".yaml")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(spec, sort_keys=False))
    return DetectionData(path.stem, out.resolve(), names, imgsz)
