"""Datasets: the embedded ``digits`` default, CIFAR-10/100 from a local root, and ``imagefolder:<path>``.

Every dataset comes as a :class:`DataBundle` of train/val/test splits of (image, label) tensors, already at the
model's input size.  ``materialize`` writes a bundle as ``.npz`` files (uint8 images), the form the DVC ``prepare``
stage versions; ``load_data`` reads that form back when given the folder.
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .errors import PruneBenchError, first_line, unknown_choice
from .safeload import PlainDataUnpickler, RefusedGlobal

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

    def dataset(self, split: str, augment: bool = False, seed: int = 0, flip: bool = True) -> Dataset:
        images, labels = self.splits[split]
        return ArrayDataset(images, labels, augment=augment, seed=seed, flip=flip)

    def loader(self, split: str, batch_size: int = 64, shuffle: bool = False, augment: bool = False,
               seed: int = 0, flip: bool = True, device: torch.device | str | None = None) -> DataLoader:
        """Batches of ``split``; the shuffle order and the augmentation are fixed by ``seed`` alone (own generators,
        never torch's global one, so loaders on other threads cannot change them).  ``flip=False`` keeps the random
        crops of the augmentation and drops its horizontal flips.

        Batches are gathered, normalised and augmented whole (tensor indexing, no per-image Python), which leaves
        DataLoader workers nothing to hide.  With a GPU ``device``, a split of at most ``ON_DEVICE_BYTES`` lives
        on it and its batches are made there; a larger one comes in pinned memory, copied without blocking.
        """
        images, labels = self.splits[split]
        device = torch.device(device) if device is not None else torch.device("cpu")
        resident = device.type != "cpu" and images.nbytes <= ON_DEVICE_BYTES
        dataset = ArrayDataset(images, labels, augment=augment, seed=seed, flip=flip,
                               device=device if resident else None)
        generator = torch.Generator().manual_seed(seed)  # drives the sampler only
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=0,
                          collate_fn=_as_batch, pin_memory=not resident and torch.cuda.is_available())


ON_DEVICE_BYTES = 2 << 30  # CIFAR's 50,000 training images are 150 MB as uint8


def _as_batch(batch):
    """The dataset's ``__getitems__`` already made the batch."""
    return batch


class ArrayDataset(Dataset):
    """uint8 images normalised on the fly; ``augment`` adds the CIFAR recipe (pad-4 random crop, h-flip).

    The augmentation draws from the dataset's own generator, seeded by ``seed``: each pass over the data gets new
    crops, and the sequence depends on ``seed`` alone (one draw per image, in the sampler's order).  Read it in
    one process (``num_workers=0``): workers would each get a copy of the generator and repeat each other's crops.
    ``device`` holds the images there (a GPU) and makes the batches there.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, augment: bool = False, seed: int = 0,
                 flip: bool = True, device: torch.device | None = None):
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        if device is not None:
            self.images, self.labels = self.images.to(device), self.labels.to(device)
        self.augment, self.flip = augment, flip
        self.generator = torch.Generator().manual_seed(_augment_seed(seed)) if augment else None

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        x, y = self.__getitems__([i])
        return x[0], y[0]

    def __getitems__(self, indices):
        """The batch of ``indices``: normalised images (augmented when asked) and their labels."""
        index = torch.as_tensor(indices, dtype=torch.long, device=self.images.device)
        x = (self.images[index].float() / 255.0 - _MEAN) / _STD
        if self.augment:
            x = _random_crops_flips(x, self.generator, flip=self.flip)
        return x, self.labels[index]


def _augment_seed(seed: int) -> int:
    """A seed for the augmentation stream derived from the loader's seed, so that it is not the sampler's stream."""
    return int(np.random.SeedSequence([seed, 1]).generate_state(1, np.uint64)[0] >> 1)


def _random_crops_flips(x: torch.Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True) \
        -> torch.Tensor:
    """Each image of the batch at a random offset in its zero-padded copy, mirrored half of the time.

    One draw per image, in the batch's order, codes its two offsets and its mirroring: the k-th image of an epoch
    gets the k-th draw whatever the batch size, and the crops do not depend on ``flip``.
    """
    n, channels, h, w = x.shape
    side = 2 * pad + 1
    draws = torch.randint(0, side * side * 2, (n,), generator=generator).to(x.device)
    top, left, mirror = draws % side, draws // side % side, (draws // (side * side) == 1) & flip
    rows = top[:, None] + torch.arange(h, device=x.device)  # n x h
    cols = torch.arange(w, device=x.device).expand(n, w)
    cols = left[:, None] + torch.where(mirror[:, None], w - 1 - cols, cols)  # n x w
    # one gather over each padded image's flattened pixels (4x faster than indexing rows and columns on a CPU)
    pixels = (rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]).view(n, 1, h * w).expand(n, channels, h * w)
    padded = F.pad(x, (pad, pad, pad, pad)).flatten(2)
    return torch.gather(padded, 2, pixels).view(n, channels, h, w)


# --------------------------------------------------------------------------- public entry points
def is_known_dataset(name: str) -> bool:
    """Whether ``name`` names a dataset prunebench can load (checked without loading it; an ``imagefolder:`` path
    and a detection ``.yaml`` are checked when loaded)."""
    return (name in ("digits", "cifar10", "cifar100", "shapes") or name.startswith("imagefolder:")
            or name.endswith((".yaml", ".yml")))


def input_size_of(name: str, input_size: Optional[int] = None) -> int:
    """The side of the square images ``load_data(name, input_size=...)`` gives: ``input_size``, else the dataset's
    own (digits' native 8, CIFAR's 32; ImageFolder images are resized to 32)."""
    return input_size or (DIGITS_NATIVE_SIZE if name == "digits" else 32)


def load_data(name: str, root: str | os.PathLike = "data", download: bool = False,
              input_size: Optional[int] = None) -> DataBundle:
    """Load a dataset by name, or a prepared folder (written by :func:`materialize`) by path.

    ``root`` is where CIFAR lives (torchvision layout); it is read only, unless ``download`` is set.
    ``input_size`` resizes the images (see :func:`input_size_of` for each dataset's default).
    """
    prepared = Path(name)
    if (prepared / "meta.json").is_file():
        return _load_prepared(prepared)
    size = input_size_of(name, input_size)
    if name == "digits":
        return _digits(size)
    if name in ("cifar10", "cifar100"):
        return _cifar(name, Path(root), download, size)
    if name.startswith("imagefolder:"):
        return _imagefolder(Path(name.split(":", 1)[1]), size)
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
        splits = {split: _read_prepared_split(folder / f"{split}.npz") for split in SPLITS}
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
        reason = first_line(e)
        raise PruneBenchError(f"prepared dataset {folder} is incomplete or corrupt ({reason}); "
                              f"run `prunebench prepare` again") from None
    return DataBundle(spec, splits)


def _read_prepared_split(file: Path):
    # allow_pickle=False: an object array (pickled Python objects, which could run code) is refused, never unpickled
    with np.load(file, allow_pickle=False) as f:
        try:
            return f["images"], f["labels"]
        except ValueError as e:
            raise ValueError(f"{file.name}: {e}") from None


def _rmtree(path: Path):
    import shutil
    shutil.rmtree(path)


# --------------------------------------------------------------------------- sources
DIGITS_NATIVE_SIZE = 8
# train / val / test: a 30% test split (539 digits images) keeps one image at 0.19 points of accuracy, so a 95%
# interval on a ~98% accuracy is about +-1.2 points rather than +-2 with 15%
SPLIT_FRACTIONS = (0.55, 0.15, 0.30)

def _to_uint8_chw(images: torch.Tensor, size: int, channels: int = 3) -> np.ndarray:
    """float images N x C x h x w in [0, 1] -> uint8 N x channels x size x size (grey is repeated)."""
    if images.shape[-1] != size or images.shape[-2] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    if images.shape[1] == 1 and channels == 3:
        images = images.repeat(1, 3, 1, 1)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def _stratified_split(labels: np.ndarray, fractions=SPLIT_FRACTIONS, seed: int = 0):
    """Index arrays for train/val/test, stratified by label, fixed by ``seed``."""
    from sklearn.model_selection import train_test_split
    idx = np.arange(len(labels))
    train, rest = train_test_split(idx, train_size=fractions[0], stratify=labels, random_state=seed)
    val, test = train_test_split(rest, train_size=fractions[1] / (fractions[1] + fractions[2]),
                                 stratify=labels[rest], random_state=seed)
    return np.sort(train), np.sort(val), np.sort(test)


def _digits(size: int) -> DataBundle:
    """scikit-learn's bundled handwritten digits (1797 real 8x8 scans) at ``size`` (native 8: nothing interpolated),
    with a fixed stratified split."""
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
    if download and _missing_cifar_files(folder, name):
        _download_cifar(name, root)
    missing = _missing_cifar_files(folder, name)
    if missing:
        state = f"is incomplete: {folder} lacks {', '.join(missing)}" if folder.is_dir() else \
            f"not found: expected {folder}"
        raise PruneBenchError(f"{name} {state} (torchvision's layout: {', '.join([*train_files, test_file])}); "
                              f"put the files there or pass --download")
    x_train, y_train = _read_cifar(folder, train_files, label_key)
    x_test, y_test = _read_cifar(folder, [test_file], label_key)
    x_train, x_test = (_to_uint8_chw(torch.from_numpy(x).float() / 255.0, size) for x in (x_train, x_test))
    try:
        tr, va = _holdout(y_train, 0.1)
    except ValueError as e:  # only a hand-made folder has classes too small to stratify
        raise PruneBenchError(f"{name} in {folder}: no stratified 10% validation split of the training files "
                              f"({first_line(e)})") from None
    splits = {"train": (x_train[tr], y_train[tr]), "val": (x_train[va], y_train[va]), "test": (x_test, y_test)}
    return DataBundle(DataSpec(name, 100 if name == "cifar100" else 10, 3, size), splits)


def _missing_cifar_files(folder: Path, name: str) -> list:
    _, train_files, test_file, _ = _CIFAR[name]
    return [f for f in [*train_files, test_file] if not (folder / f).is_file()]


def _download_cifar(name: str, root: Path) -> None:
    from torchvision import datasets
    try:  # torchvision checks the archive's checksum and re-downloads an incomplete folder
        (datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100)(str(root), download=True)
    except (OSError, RuntimeError) as e:
        raise PruneBenchError(f"cannot download {name} into {root}: {first_line(e)}") from None


def _read_cifar(folder: Path, files: list, label_key: bytes):
    images, labels = [], []
    for file in files:
        batch = _read_cifar_batch(folder / file)
        try:
            images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch[label_key], dtype=np.int64).reshape(-1))
            if len(labels[-1]) != len(images[-1]):
                raise ValueError(f"{len(images[-1])} images but {len(labels[-1])} labels")
        except (KeyError, TypeError, ValueError) as e:
            raise PruneBenchError(f"CIFAR file {folder / file} is not a CIFAR batch "
                                  f"({type(e).__name__}: {e})") from None
    return np.concatenate(images), np.concatenate(labels)


def _read_cifar_batch(path: Path) -> dict:
    """One CIFAR batch file: a pickled dict of numpy arrays, read with an unpickler that cannot call anything else."""
    try:
        with open(path, "rb") as f:
            return PlainDataUnpickler(f, encoding="bytes").load()  # bytes: the files were pickled by Python 2
    except RefusedGlobal as e:
        raise PruneBenchError(f"refused to load CIFAR file {path}: {e}") from None
    except Exception as e:  # pickle raises many types (EOFError, UnpicklingError, ValueError, ...) for damaged files
        raise PruneBenchError(f"CIFAR file {path} is corrupt ({type(e).__name__}: "
                              f"{first_line(e)})") from None


def _holdout(labels: np.ndarray, fraction: float, seed: int = 0):
    from sklearn.model_selection import train_test_split
    idx = np.arange(len(labels))
    train, val = train_test_split(idx, test_size=fraction, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(val)


MIN_IMAGES_PER_CLASS = 7  # the stratified 70/15/15 split needs >= 2 images of each class in its 30% (0.3 * 7 > 2)


def _imagefolder(path: Path, size: int) -> DataBundle:
    """``path/<class>/<image>`` (split 70/15/15), or ``path/{train,val,test}/<class>/<image>``."""
    if not path.is_dir():
        raise PruneBenchError(f"imagefolder path {path} does not exist or is not a folder")
    if (path / "train").is_dir():
        parts = {s: _image_arrays(path / s, size) for s in SPLITS if (path / s).is_dir()}
        if "val" not in parts:
            raise PruneBenchError(f"imagefolder {path} has train/ but no val/ folder")
        parts.setdefault("test", parts["val"])
        classes = parts["train"][2]
        _check_classes(path / "train", classes)
        for split, (_, _, split_classes) in parts.items():
            _check_same_classes(path, split, split_classes, classes)
        splits = {s: (x, y) for s, (x, y, _) in parts.items()}
    else:
        images, labels, classes = _image_arrays(path, size)
        _check_classes(path, classes)
        _check_split_sizes(path, labels, classes)
        idx = _stratified_split(labels)
        splits = {s: (images[i], labels[i]) for s, i in zip(SPLITS, idx)}
    channels = splits["train"][0].shape[1]
    return DataBundle(DataSpec(f"imagefolder:{path}", len(classes), channels, size), splits)


def _image_arrays(folder: Path, size: int):
    """uint8 images, labels and class names of one ``<class>/<image>`` folder; an unreadable image is one line."""
    from torchvision import datasets, transforms
    tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor()])
    try:
        ds = datasets.ImageFolder(str(folder), transform=tf)
    except (FileNotFoundError, RuntimeError) as e:
        raise PruneBenchError(f"imagefolder {folder}: {e}") from None
    xs = torch.stack([_read_image(ds, i) for i in range(len(ds))])
    channels = 3 if xs.shape[1] in (1, 3) else xs.shape[1]
    return _to_uint8_chw(xs, size, channels), np.asarray(ds.targets, dtype=np.int64), ds.classes


def _read_image(ds, i: int) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError
    try:
        return ds[i][0]
    # PIL's ways of saying "damaged"; ImportError: once ultralytics is imported, its Image.open retries an unknown
    # format through the optional pi_heif package and raises ModuleNotFoundError without it
    except (OSError, SyntaxError, ValueError, ImportError, Image.DecompressionBombError) as e:
        reason = "unknown or damaged image format" if isinstance(e, (UnidentifiedImageError, ImportError)) else \
            (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PruneBenchError(f"imagefolder: {ds.samples[i][0]} is not a readable image ({reason})") from None


def _check_classes(folder: Path, classes: list) -> None:
    if len(classes) < 2:
        raise PruneBenchError(f"imagefolder {folder} has {len(classes)} class folder ({', '.join(classes)}): a "
                              f"classification dataset needs at least 2 classes, one folder each")


def _check_same_classes(path: Path, split: str, split_classes: list, classes: list) -> None:
    """Labels are class folder positions: a split with other class folders would silently mislabel its images."""
    if split_classes != classes:
        lacks, extra = sorted(set(classes) - set(split_classes)), sorted(set(split_classes) - set(classes))
        detail = "; ".join(([f"lacks {_some(lacks)}"] if lacks else []) + ([f"adds {_some(extra)}"] if extra else []))
        raise PruneBenchError(f"imagefolder {path}: {split}/ must have the same class folders as train/ ({detail})")


def _check_split_sizes(folder: Path, labels: np.ndarray, classes: list) -> None:
    counts = np.bincount(labels, minlength=len(classes))
    fewest_first = np.argsort(counts, kind="stable")
    small = [f"{classes[c]} ({counts[c]})" for c in fewest_first if counts[c] < MIN_IMAGES_PER_CLASS]
    if small:
        raise PruneBenchError(f"imagefolder {folder}: the 70/15/15 train/val/test split needs at least "
                              f"{MIN_IMAGES_PER_CLASS} images per class; too few in {_some(small)} (add images, or "
                              f"give train/ and val/ folders)")


def _some(names: list, limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
