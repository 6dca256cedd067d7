"""Datasets: Fashion-MNIST (Debian IDX files), CIFAR-10 (python pickles), ImageFolder and a synthetic set.

Every source goes through one pipeline: a *pool* of uint8 images and labels, a seeded train/val split of the
training pool, optional class-balanced subsets, then preprocessing (fit to ``input_size``, normalise). The
small datasets are materialised once as float tensors, because CPU training speed matters more than memory
here, and :meth:`DataSplits.to` moves those tensors onto a GPU once, so batches never cross the bus; ImageFolder
stays lazy (files are decoded on access), and on a GPU its loader decodes in worker processes into pinned memory. The test set is loaded only when asked for and is
meant for final reporting only. Nothing is ever downloaded: a missing or malformed path is a
:class:`~automq.errors.DataError` that names the path, the expected files and the fix.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler, Subset, TensorDataset

from automq.errors import DataError

__all__ = [
    "DATASETS", "FASHION_MNIST_ROOT", "GPU_LOADER_WORKERS", "IMAGE_EXTENSIONS", "MAX_PAD", "ArrayPool", "DataSource", "DataSplits",
    "ImageFilePool", "ImageFiles", "Pool", "Preprocess", "balanced_subset", "dataset_names", "fit_size",
    "fixed_batches", "head", "load_dataset", "make_loader", "read_idx", "register_dataset", "split_indices",
]  # fmt: skip

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
MAX_PAD = 2
"""Pixels per side up to which a smaller image is zero-padded rather than resized (28x28 -> 32x32)."""

_DATA_FLAG = "--data PATH or set dataset.root in the space file"
GPU_LOADER_WORKERS = 4
"""Processes decoding image files for a GPU (a CPU run decodes in its own process, leaving cores to others)."""


# --- preprocessing -------------------------------------------------------------------------------------------------


def fit_size(images: Tensor, size: int) -> Tensor:
    """Bring float images ``[N, C, H, W]`` to ``[N, C, size, size]``.

    A square image at most ``2 * MAX_PAD`` pixels smaller (by an even margin) is zero-padded, which keeps
    every pixel exact (the LeNet convention for 28x28 digits in a 32x32 network); any other size is resized
    bilinearly, antialiased when shrinking (as PIL does).
    """
    height, width = images.shape[-2:]
    if height == width == size:
        return images
    margin = size - height
    if height == width and 0 < margin <= 2 * MAX_PAD and margin % 2 == 0:
        return F.pad(images, (margin // 2,) * 4)
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


@dataclass(frozen=True)
class Preprocess:
    """uint8 images ``[N, C, H, W]`` -> float32 ``[N, C, S, S]``: scale to [0, 1], fit to S, normalise.

    Kept with the splits so that images fed to an exported model can be prepared exactly as in training.
    """

    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, pixels: Tensor) -> Tensor:
        images = fit_size(pixels.float().div_(255.0), self.input_size)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return images.sub_(mean).div_(std)


# --- pools: the images of one source before splitting --------------------------------------------------------------


class Pool(Protocol):
    """Images of one source with their labels; ``select`` turns chosen indices into a dataset."""

    labels: np.ndarray

    def select(self, indices: np.ndarray, preprocess: Preprocess) -> Dataset: ...


@dataclass(frozen=True)
class ArrayPool:
    """In-memory uint8 images ``[N, C, H, W]`` and int64 labels ``[N]``."""

    images: np.ndarray
    labels: np.ndarray

    def select(self, indices: np.ndarray, preprocess: Preprocess) -> TensorDataset:
        """Materialise the chosen images once as normalised float tensors."""
        images = preprocess(torch.from_numpy(self.images[indices]))
        return TensorDataset(images, torch.from_numpy(self.labels[indices]))


@dataclass(frozen=True)
class ImageFilePool:
    """Image files and their int64 labels; nothing is decoded until an item is read."""

    paths: tuple[Path, ...]
    labels: np.ndarray

    def select(self, indices: np.ndarray, preprocess: Preprocess) -> ImageFiles:
        return ImageFiles([self.paths[i] for i in indices], self.labels[indices], preprocess)


class ImageFiles(Dataset):
    """Lazy dataset over image files: each item is decoded with PIL as RGB and preprocessed on access."""

    def __init__(self, paths: Sequence[Path], labels: np.ndarray, preprocess: Preprocess) -> None:
        self.paths = list(paths)
        self.labels = labels
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        path = self.paths[index]
        try:
            with Image.open(path) as image:
                pixels = np.array(image.convert("RGB"))
        except OSError as exc:
            raise DataError(f"{path}: cannot be read as an image ({exc}). Delete or replace the file.") from exc
        images = self.preprocess(torch.from_numpy(pixels).permute(2, 0, 1)[None])
        return images[0], torch.tensor(self.labels[index])


def _checked_pool(images: np.ndarray, labels: np.ndarray, num_classes: int, source: Path) -> ArrayPool:
    if len(images) != len(labels):
        raise DataError(
            f"{source}: {len(images)} images but {len(labels)} labels; the files do not belong together. "
            "Replace them with a complete copy of the dataset."
        )
    if not np.issubdtype(labels.dtype, np.integer) or (
        len(labels) and not 0 <= labels.min() <= labels.max() < num_classes
    ):
        found = f"{labels.min()}..{labels.max()}" if len(labels) else "none"
        raise DataError(
            f"{source}: labels must be integers in 0..{num_classes - 1}, found {labels.dtype} {found}. "
            "Replace the file with a good copy."
        )
    return ArrayPool(images, labels.astype(np.int64))


# --- registry ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSource:
    """What a registered loader returns: the training pool, the test pool if asked for, and metadata."""

    train: Pool
    test: Pool | None
    num_classes: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


SourceFn = Callable[..., DataSource]
"""``fn(root: Path | None, *, with_test: bool, **options) -> DataSource``."""

DATASETS: dict[str, SourceFn] = {}


def register_dataset(name: str) -> Callable[[SourceFn], SourceFn]:
    """Decorator adding a loader to :data:`DATASETS`, so that ``load_dataset(name)`` finds it."""

    def register(fn: SourceFn) -> SourceFn:
        DATASETS[name] = fn
        return fn

    return register


def dataset_names() -> list[str]:
    """Names accepted by :func:`load_dataset` (and by ``dataset.name`` in a space file)."""
    return list(DATASETS)


# --- Fashion-MNIST: IDX files as shipped by the Debian package dataset-fashion-mnist -------------------------------

_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_FASHION_FIX = (
    f"Install the Debian package (`apt-get install -y dataset-fashion-mnist`, files in {FASHION_MNIST_ROOT}), "
    f"or pass {_DATA_FLAG}"
)


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzip-compressed when named ``*.gz``) with ``ndim`` dimensions.

    The magic number, the dimensions and the payload size are checked; any mismatch is a DataError naming
    the file.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError, zlib.error) as exc:  # a gzip file cut short raises EOFError
        raise DataError(f"{path}: cannot be read ({type(exc).__name__}: {exc}). {_FASHION_FIX}.") from exc
    header = 4 + 4 * ndim
    magic = bytes([0, 0, 0x08, ndim])  # two zero bytes, dtype 0x08 = unsigned byte, number of dimensions
    if raw[:4] != magic or len(raw) < header:
        raise DataError(
            f"{path}: not an IDX file of {ndim}-D unsigned bytes (magic number {raw[:4].hex() or 'missing'}, "
            f"expected {magic.hex()}). {_FASHION_FIX}."
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: header declares dimensions {dims} ({expected} bytes) but the file holds "
            f"{len(raw) - header} bytes; it is truncated or corrupt. {_FASHION_FIX}."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _fashion_pool(root: Path, part: str) -> ArrayPool:
    images_path, labels_path = (_idx_file(root, stem) for stem in _FASHION_FILES[part])
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1)
    return _checked_pool(images[:, None], labels, 10, labels_path)


def _idx_file(root: Path, stem: str) -> Path:
    """The gzip file as Debian ships it, or the uncompressed one (as in a torchvision ``raw`` folder)."""
    for path in (root / f"{stem}.gz", root / stem):
        if path.is_file():
            return path
    expected = ", ".join(f"{name}.gz" for pair in _FASHION_FILES.values() for name in pair)
    problem = f"{root / stem}.gz: Fashion-MNIST file not found" if root.is_dir() else f"{root}: no such folder"
    raise DataError(f"{problem} (expected {expected} in {root}). {_FASHION_FIX}.")


@register_dataset("fashion_mnist")
def _fashion_mnist(root: Path | None, *, with_test: bool) -> DataSource:
    root = FASHION_MNIST_ROOT if root is None else root
    return DataSource(
        train=_fashion_pool(root, "train"),
        test=_fashion_pool(root, "test") if with_test else None,
        num_classes=10,
        in_chans=1,
        mean=(0.2860,),
        std=(0.3530,),
    )


# --- CIFAR-10: the python-pickle batches of cifar-10-python.tar.gz -------------------------------------------------

_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"
_CIFAR_FIX = (
    "Download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, extract it, and pass "
    f"{_DATA_FLAG} (the {_CIFAR_DIR} folder or its parent)"
)
# A pickle can run arbitrary code; a CIFAR batch needs only these globals (numpy arrays, and `_codecs.encode`
# for bytes pickled by Python 3 at protocol 2). `numpy.core` is numpy 1's name for `numpy._core`.
_PICKLE_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("numpy.core."):
            module = "numpy._core." + module.removeprefix("numpy.core.")
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> ArrayPool:
    try:
        batch = _CifarUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
        data = np.asarray(batch[b"data"])
        labels = np.asarray(batch[b"labels"])
    except Exception as exc:  # unpickling a foreign file can fail with almost any exception type
        raise DataError(f"{path}: not a CIFAR-10 python batch ({type(exc).__name__}: {exc}). {_CIFAR_FIX}.") from exc
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"{path}: b'data' must be uint8 of shape [N, 3072], got {data.dtype} {list(data.shape)}. {_CIFAR_FIX}."
        )
    # each row holds the R, G and B planes of a 32x32 image one after the other
    return _checked_pool(data.reshape(-1, 3, 32, 32), labels, 10, path)


@register_dataset("cifar10")
def _cifar10(root: Path | None, *, with_test: bool) -> DataSource:
    if root is None:
        raise DataError(f"cifar10 needs a local path; automq never downloads data. {_CIFAR_FIX}.")
    folder = root / _CIFAR_DIR if (root / _CIFAR_DIR).is_dir() else root
    needed = _CIFAR_TRAIN + ((_CIFAR_TEST,) if with_test else ())
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{folder}: CIFAR-10 batches missing: {', '.join(missing)}. {_CIFAR_FIX}.")
    parts = [_read_cifar_batch(folder / name) for name in _CIFAR_TRAIN]
    return DataSource(
        train=ArrayPool(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts])),
        test=_read_cifar_batch(folder / _CIFAR_TEST) if with_test else None,
        num_classes=10,
        in_chans=3,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
    )


# --- ImageFolder: root/<class>/<image> (or root/train/<class>/... with an optional root/test/<class>/...) ----------

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
_FOLDER_FIX = (
    "Lay images out as ROOT/<class>/<image> (or ROOT/train/<class>/<image> plus ROOT/test/<class>/<image> "
    f"for a test set) and pass {_DATA_FLAG}"
)


def _scan_image_folder(folder: Path) -> tuple[list[str], ImageFilePool]:
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder. {_FOLDER_FIX}.")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise DataError(
            f"{folder}: no images found in class subfolders (found classes {classes}, extensions "
            f"{sorted(IMAGE_EXTENSIONS)}). {_FOLDER_FIX}."
        )
    return classes, ImageFilePool(tuple(paths), np.asarray(labels, dtype=np.int64))


@register_dataset("imagefolder")
def _imagefolder(root: Path | None, *, with_test: bool) -> DataSource:
    if root is None:
        raise DataError(f"imagefolder needs a local path. {_FOLDER_FIX}.")
    nested = (root / "train").is_dir()
    classes, train = _scan_image_folder(root / "train" if nested else root)
    test = None
    if with_test:
        if not nested:
            raise DataError(f"{root / 'test'}: a test set needs ROOT/train and ROOT/test. {_FOLDER_FIX}.")
        test_classes, test = _scan_image_folder(root / "test")
        if test_classes != classes:
            raise DataError(
                f"{root / 'test'}: classes {test_classes} differ from {root / 'train'}: {classes}. "
                "Give both folders the same class subfolders."
            )
    # ImageNet statistics: the usual choice for natural RGB photos of unknown origin
    return DataSource(train, test, len(classes), 3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


# --- synthetic: seeded class prototypes plus noise, for unit tests -------------------------------------------------


@register_dataset("synthetic")
def _synthetic(
    root: Path | None,
    *,
    with_test: bool,
    num_images: int = 1200,
    num_test: int = 200,
    num_classes: int = 10,
    in_chans: int = 1,
    image_size: int = 32,
    noise: float = 0.15,
    data_seed: int = 0,
) -> DataSource:
    """Each class is a smooth random pattern (a 4x4 grid upsampled) and each image adds Gaussian noise of std
    ``noise`` (in [0, 1] units): learnable (a nearest-class-mean classifier is almost perfect), so a network
    that trains correctly must reach high accuracy."""
    if root is not None:
        raise DataError(f"{root}: the synthetic dataset is generated in memory; remove dataset.root / --data.")
    rng = np.random.default_rng(data_seed)
    grid = torch.from_numpy(rng.random((num_classes, in_chans, 4, 4), dtype=np.float32))
    prototypes = F.interpolate(grid, size=(image_size, image_size), mode="bilinear", align_corners=False).numpy()

    def draw(count: int) -> ArrayPool:
        labels = rng.permutation(np.arange(count) % num_classes)
        images = prototypes[labels] + noise * rng.standard_normal((count, *prototypes.shape[1:]), np.float32)
        return ArrayPool(np.clip(np.rint(images * 255), 0, 255).astype(np.uint8), labels.astype(np.int64))

    train = draw(num_images)  # drawn first, so the training pool does not depend on with_test
    test = draw(num_test) if with_test else None
    return DataSource(train, test, num_classes, in_chans, mean=(0.5,) * in_chans, std=(0.25,) * in_chans)


# --- splitting and subsets -----------------------------------------------------------------------------------------


def split_indices(n: int, val_size: int, rng: np.random.Generator | int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded permutation of ``range(n)`` cut into (train, val) index arrays, val holding ``val_size``."""
    order = np.random.default_rng(rng).permutation(n)
    return order[val_size:], order[:val_size]


def balanced_subset(labels: np.ndarray, n: int, rng: np.random.Generator | int) -> np.ndarray:
    """Positions of ``n`` labels chosen at random with class counts as equal as possible.

    The result is ordered round-robin over classes (a random class order, then a random member of each), so
    every prefix is itself balanced; a class that runs out leaves its share to the others.
    """
    rng = np.random.default_rng(rng)
    order = rng.permutation(len(labels))
    shuffled = labels[order]
    counts = np.bincount(shuffled)
    by_class = np.argsort(shuffled, kind="stable")
    rank = np.empty(len(labels), dtype=np.int64)  # rank of each shuffled item within its class
    rank[by_class] = np.arange(len(labels)) - np.repeat(np.cumsum(counts) - counts, counts)
    class_order = rng.permutation(len(counts))
    return order[np.lexsort((class_order[shuffled], rank))[:n]]


def _check_count(field: str, value: int, low: int, high: int, what: str) -> None:
    if not low <= value <= high:
        raise DataError(f"{field}={value} is out of range: expected {low}..{high} ({what}). Change {field}.")


# --- public entry points -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSplits:
    """Train / val / optional test datasets of one source, plus what a model needs to know about them."""

    train: Dataset
    val: Dataset
    test: Dataset | None
    num_classes: int
    in_chans: int
    input_size: int
    name: str
    preprocess: Preprocess

    def to(self, device: torch.device | str) -> DataSplits:
        """These splits with every in-memory split's tensors on ``device`` (the same object when they are there);
        lazy file datasets stay where they are and are moved batch by batch (:func:`make_loader` with ``device``)."""
        device = torch.device(device)
        if all(_tensor_device(split) in (None, device) for split in (self.train, self.val, self.test)):
            return self
        moved = {name: _to_device(getattr(self, name), device) for name in ("train", "val", "test")}
        return replace(self, **moved)


def _tensor_device(dataset: Dataset | None) -> torch.device | None:
    """Where an in-memory dataset's tensors live; ``None`` for anything else."""
    return dataset.tensors[0].device if isinstance(dataset, TensorDataset) else None


def _to_device(dataset: Dataset | None, device: torch.device) -> Dataset | None:
    if isinstance(dataset, TensorDataset):
        return TensorDataset(*(tensor.to(device) for tensor in dataset.tensors))
    return dataset


DEFAULT_VAL_SIZE = 5000  # validation images held out of the training pool when a space does not say


def load_dataset(
    name: str,
    root: str | Path | None = None,
    *,
    input_size: int = 32,
    val_size: int = DEFAULT_VAL_SIZE,
    train_subset: int | None = None,
    val_subset: int | None = None,
    with_test: bool = False,
    seed: int = 0,
    **options: Any,
) -> DataSplits:
    """Load dataset ``name`` from ``root`` and split its training pool into train and val.

    The split is a permutation seeded by ``seed``; ``train_subset`` / ``val_subset`` then keep a seeded,
    class-balanced subset of each part (independent streams: the split does not depend on the subsets).
    The test set is read only when ``with_test`` is true. ``options`` go to the loader (synthetic:
    ``num_images, num_test, num_classes, in_chans, image_size, noise, data_seed``).
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}: expected one of {dataset_names()}. Fix dataset.name.")
    _check_count("input_size", input_size, 1, 4096, "pixels per side of the network input")
    source = DATASETS[name](None if root is None else Path(root), with_test=with_test, **options)
    pool_size = len(source.train.labels)
    _check_count("val_size", val_size, 1, pool_size - 1, f"the {name} training pool holds {pool_size} images")
    split_rng, train_rng, val_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    train_idx, val_idx = split_indices(pool_size, val_size, split_rng)
    if train_subset is not None:
        _check_count("train_subset", train_subset, 1, len(train_idx), "images in the training split")
        train_idx = train_idx[balanced_subset(source.train.labels[train_idx], train_subset, train_rng)]
    if val_subset is not None:
        _check_count("val_subset", val_subset, 1, len(val_idx), "images in the validation split")
        val_idx = val_idx[balanced_subset(source.train.labels[val_idx], val_subset, val_rng)]
    preprocess = Preprocess(input_size, source.mean, source.std)
    test = source.test.select(np.arange(len(source.test.labels)), preprocess) if source.test is not None else None
    return DataSplits(
        train=source.train.select(train_idx, preprocess),
        val=source.train.select(val_idx, preprocess),
        test=test,
        num_classes=source.num_classes,
        in_chans=source.in_chans,
        input_size=input_size,
        name=name,
        preprocess=preprocess,
    )


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    drop_last: bool = False,
    device: torch.device | str | None = None,
) -> Iterable[tuple[Tensor, Tensor]]:
    """A DataLoader whose order is fixed by ``seed`` (and advances epoch by epoch).

    In-memory datasets are gathered where their tensors live (on a GPU after :meth:`DataSplits.to`). Lazy file
    datasets are read in the loading process, except for a CUDA ``device``: then :data:`GPU_LOADER_WORKERS`
    processes decode into pinned memory and each batch is copied to ``device`` asynchronously, so the GPU does not
    wait on PIL. The order is the sampler's either way.
    """
    generator = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    if isinstance(dataset, TensorDataset):
        # one gather per tensor instead of batch_size __getitem__ calls and a stack (1.5-3x faster on CPU)
        return DataLoader(dataset, sampler=BatchSampler(sampler, batch_size, drop_last), batch_size=None)
    device = None if device is None else torch.device(device)
    if device is None or device.type != "cuda":
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, num_workers=0)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                        num_workers=GPU_LOADER_WORKERS, pin_memory=True)
    return _OnDevice(loader, device)


class _OnDevice:
    """A loader's batches copied to ``device`` (non-blocking from pinned memory); ``len`` is the loader's."""

    def __init__(self, loader: DataLoader, device: torch.device) -> None:
        self.loader, self.device = loader, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for images, labels in self.loader:
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


def head(dataset: Dataset, n_images: int) -> Dataset:
    """The first ``min(n_images, len(dataset))`` images of ``dataset`` (a tensor slice where it can be one)."""
    return _window(dataset, 0, n_images)


def _window(dataset: Dataset, start: int, stop: int) -> Dataset:
    """Images ``start`` up to ``min(stop, len(dataset))`` of ``dataset`` (a tensor slice where it can be one)."""
    stop = min(stop, len(dataset))
    if isinstance(dataset, TensorDataset):
        return TensorDataset(*(t[start:stop] for t in dataset.tensors))
    return Subset(dataset, range(start, stop))


def fixed_batches(
    dataset: Dataset, n_images: int, batch_size: int, *, start: int = 0, device: torch.device | str | None = None
) -> list[tuple[Tensor, Tensor]]:
    """Images ``start`` up to ``min(n_images, len(dataset))`` (the first ones by default) as a fixed list of
    (images, labels) batches, on ``device`` when given (else where the dataset produces them).

    Used for BN recalibration and fast validation, where the same images must be seen every time; a later
    ``start`` continues a scoring on more images where an earlier one stopped.
    """
    window = _window(dataset, start, n_images)
    batches = make_loader(window, batch_size, shuffle=False, device=device)
    if device is None:
        return [(images, labels) for images, labels in batches]
    return [(images.to(device), labels.to(device)) for images, labels in batches]
