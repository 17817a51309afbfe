"""Datasets: the embedded ``digits`` default, CIFAR-10/100 from a local root, and ``imagefolder:<path>``.

Every dataset comes as a :class:`DataBundle` of train/val/test splits of (image, label) tensors, already at the
model's input size.  ``materialize`` writes a bundle as ``.npz`` files (uint8 images), the form the DVC ``prepare``
stage versions; ``load_data`` reads that form back when given the folder.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .errors import PruneBenchError, unknown_choice

DATASETS = ("digits", "cifar10", "cifar100", "imagefolder:<path>", "shapes", "<ultralytics dataset>.yaml")
SPLITS = ("train", "val", "test")
_MEAN, _STD = 0.5, 0.25  # one normalisation for uint8 data of every source: keeps prepared data source-agnostic


@dataclass(frozen=True)
class DataSpec:
    name: str
    num_classes: int
    in_chans: int
    input_size: int

    def example_inputs(self, batch: int = 1) -> torch.Tensor:
        return torch.randn(batch, self.in_chans, self.input_size, self.input_size)


@dataclass
class DataBundle:
    spec: DataSpec
    splits: dict  # split name -> (uint8 images N x C x H x W, int64 labels N)

    def dataset(self, split: str, augment: bool = False, seed: int = 0) -> Dataset:
        images, labels = self.splits[split]
        return ArrayDataset(images, labels, augment=augment, seed=seed)

    def loader(self, split: str, batch_size: int = 64, shuffle: bool = False, augment: bool = False,
               seed: int = 0) -> DataLoader:
        """Batches of ``split``; the shuffle order and the augmentation are fixed by ``seed`` alone (own generators,
        never torch's global one, so loaders on other threads cannot change them)."""
        generator = torch.Generator().manual_seed(seed)  # drives the sampler only
        return DataLoader(self.dataset(split, augment, seed), batch_size=batch_size, shuffle=shuffle,
                          generator=generator, num_workers=0)


class ArrayDataset(Dataset):
    """uint8 images normalised on the fly; ``augment`` adds the CIFAR recipe (pad-4 random crop, h-flip).

    The augmentation draws from the dataset's own generator, seeded by ``seed``: each pass over the data gets new
    crops, and the sequence depends on ``seed`` alone.  Read it in one process (``num_workers=0``): workers would
    each get a copy of the generator and repeat each other's crops.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, augment: bool = False, seed: int = 0):
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.augment = augment
        self.generator = torch.Generator().manual_seed(_augment_seed(seed)) if augment else None

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        x = (self.images[i].float() / 255.0 - _MEAN) / _STD
        if self.augment:
            x = _random_crop_flip(x, self.generator)
        return x, self.labels[i]


def _augment_seed(seed: int) -> int:
    """A seed for the augmentation stream derived from the loader's seed, so that it is not the sampler's stream."""
    return int(np.random.SeedSequence([seed, 1]).generate_state(1, np.uint64)[0] >> 1)


def _random_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    h, w = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad))
    top, left = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
    x = padded[:, top:top + h, left:left + w]
    return x.flip(-1) if torch.rand((), generator=generator) < 0.5 else x


# --------------------------------------------------------------------------- public entry points
def load_data(name: str, root: str | os.PathLike = "data", download: bool = False,
              input_size: Optional[int] = None) -> DataBundle:
    """Load a dataset by name, or a prepared folder (written by :func:`materialize`) by path.

    ``root`` is where CIFAR lives (torchvision layout); it is read only, unless ``download`` is set.
    """
    prepared = Path(name)
    if (prepared / "meta.json").is_file():
        return _load_prepared(prepared)
    if name == "digits":
        return _digits(input_size or 32)
    if name in ("cifar10", "cifar100"):
        return _cifar(name, Path(root), download, input_size or 32)
    if name.startswith("imagefolder:"):
        return _imagefolder(Path(name.split(":", 1)[1]), input_size or 32)
    raise unknown_choice("dataset", name, DATASETS)


def materialize(bundle: DataBundle, out_dir: str | os.PathLike) -> Path:
    """Write a bundle as ``<split>.npz`` + ``meta.json`` into ``out_dir``, atomically (a crash leaves no half folder)."""
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        _rmtree(tmp)
    tmp.mkdir(parents=True)
    for split, (images, labels) in bundle.splits.items():
        np.savez(tmp / f"{split}.npz", images=images, labels=labels)
    (tmp / "meta.json").write_text(json.dumps(asdict(bundle.spec), indent=2) + "\n")
    if out.exists():
        _rmtree(out)
    os.replace(tmp, out)
    return out


def _load_prepared(folder: Path) -> DataBundle:
    try:
        spec = DataSpec(**json.loads((folder / "meta.json").read_text()))
        splits = {}
        for split in SPLITS:
            with np.load(folder / f"{split}.npz") as f:
                splits[split] = (f["images"], f["labels"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PruneBenchError(f"prepared dataset {folder} is incomplete or corrupt ({e}); run `prunebench prepare` again")
    return DataBundle(spec, splits)


def _rmtree(path: Path):
    import shutil
    shutil.rmtree(path)


# --------------------------------------------------------------------------- sources
def _to_uint8_chw(images: torch.Tensor, size: int, channels: int = 3) -> np.ndarray:
    """float images N x C x h x w in [0, 1] -> uint8 N x channels x size x size (grey is repeated)."""
    if images.shape[-1] != size or images.shape[-2] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    if images.shape[1] == 1 and channels == 3:
        images = images.repeat(1, 3, 1, 1)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def _stratified_split(labels: np.ndarray, fractions=(0.7, 0.15, 0.15), seed: int = 0):
    """Index arrays for train/val/test, stratified by label, fixed by ``seed``."""
    from sklearn.model_selection import train_test_split
    idx = np.arange(len(labels))
    train, rest = train_test_split(idx, train_size=fractions[0], stratify=labels, random_state=seed)
    val, test = train_test_split(rest, train_size=fractions[1] / (fractions[1] + fractions[2]),
                                 stratify=labels[rest], random_state=seed)
    return np.sort(train), np.sort(val), np.sort(test)


def _digits(size: int) -> DataBundle:
    """scikit-learn's bundled handwritten digits (1797 real 8x8 scans), resized, with a fixed stratified split."""
    from sklearn.datasets import load_digits
    raw = load_digits()
    images = torch.tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = raw.target.astype(np.int64)
    images = _to_uint8_chw(images, size)
    parts = _stratified_split(labels)
    splits = {s: (images[i], labels[i]) for s, i in zip(SPLITS, parts)}
    return DataBundle(DataSpec("digits", 10, 3, size), splits)


_CIFAR = {"cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", b"labels"),
          "cifar100": ("cifar-100-python", ["train"], "test", b"fine_labels")}


def _cifar(name: str, root: Path, download: bool, size: int) -> DataBundle:
    """CIFAR in the python-pickle layout torchvision downloads (``<root>/cifar-10-batches-py/...``)."""
    folder_name, train_files, test_file, label_key = _CIFAR[name]
    folder = root / folder_name
    if download and not folder.is_dir():
        from torchvision import datasets
        (datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100)(str(root), download=True)
    if not folder.is_dir():
        raise PruneBenchError(f"{name} not found: expected {folder} (torchvision's layout); put the files there "
                              f"or pass --download")
    x_train, y_train = _read_cifar(folder, train_files, label_key)
    x_test, y_test = _read_cifar(folder, [test_file], label_key)
    x_train, x_test = (_to_uint8_chw(torch.from_numpy(x).float() / 255.0, size) for x in (x_train, x_test))
    tr, va = _holdout(y_train, 0.1)
    splits = {"train": (x_train[tr], y_train[tr]), "val": (x_train[va], y_train[va]), "test": (x_test, y_test)}
    return DataBundle(DataSpec(name, 100 if name == "cifar100" else 10, 3, size), splits)


def _read_cifar(folder: Path, files: list, label_key: bytes):
    import pickle
    images, labels = [], []
    for file in files:
        try:
            with open(folder / file, "rb") as f:
                batch = pickle.load(f, encoding="bytes")  # the CIFAR distribution format is pickled numpy
            images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(batch[label_key])
        except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError) as e:
            raise PruneBenchError(f"CIFAR file {folder / file} is missing or corrupt ({type(e).__name__}: {e})")
    return np.concatenate(images), np.asarray(labels, dtype=np.int64)


def _holdout(labels: np.ndarray, fraction: float, seed: int = 0):
    from sklearn.model_selection import train_test_split
    idx = np.arange(len(labels))
    train, val = train_test_split(idx, test_size=fraction, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(val)


def _imagefolder(path: Path, size: int) -> DataBundle:
    """``path/<class>/<image>`` (split 70/15/15), or ``path/{train,val,test}/<class>/<image>``."""
    from torchvision import datasets, transforms
    if not path.is_dir():
        raise PruneBenchError(f"imagefolder path {path} does not exist or is not a folder")
    tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor()])
    def arrays(folder: Path):
        try:
            ds = datasets.ImageFolder(str(folder), transform=tf)
        except (FileNotFoundError, RuntimeError) as e:
            raise PruneBenchError(f"imagefolder {folder}: {e}")
        xs = torch.stack([ds[i][0] for i in range(len(ds))])
        channels = 3 if xs.shape[1] in (1, 3) else xs.shape[1]
        return _to_uint8_chw(xs, size, channels), np.asarray(ds.targets, dtype=np.int64), ds.classes
    if (path / "train").is_dir():
        parts = {s: arrays(path / s) for s in SPLITS if (path / s).is_dir()}
        if "val" not in parts:
            raise PruneBenchError(f"imagefolder {path} has train/ but no val/ folder")
        parts.setdefault("test", parts["val"])
        classes = parts["train"][2]
        splits = {s: (x, y) for s, (x, y, _) in parts.items()}
    else:
        images, labels, classes = arrays(path)
        idx = _stratified_split(labels)
        splits = {s: (images[i], labels[i]) for s, i in zip(SPLITS, idx)}
    channels = splits["train"][0].shape[1]
    return DataBundle(DataSpec(f"imagefolder:{path}", len(classes), channels, size), splits)
