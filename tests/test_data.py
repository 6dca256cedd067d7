"""Tests for automq.data: tiny IDX / CIFAR / ImageFolder fixtures written to tmp_path, checked pixel by pixel."""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from automq.data import (
    FASHION_MNIST_ROOT,
    ImageFiles,
    balanced_subset,
    dataset_names,
    fit_size,
    fixed_batches,
    load_dataset,
    make_loader,
    read_idx,
    split_indices,
)
from automq.errors import DataError

FASHION_MEAN, FASHION_STD = 0.2860, 0.3530
CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465])
CIFAR_STD = np.array([0.2470, 0.2435, 0.2616])
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])
EPS32 = np.finfo(np.float32).eps
# float32 (pixel / 255 - mean) / std: three roundings of eps/2 on values below 1 / std, for every std here
PIXEL_ATOL = 2 * EPS32 / min(FASHION_STD, *CIFAR_STD, *IMAGENET_STD)


# ---------------------------------------------------------------------------------------------- fixtures


def idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_fashion(root: Path, n_train: int = 60, n_test: int = 20, *, compressed: bool = True) -> dict:
    """Images whose pixel [0, 0] is their index in the file, so a loaded image tells where it came from."""
    rng = np.random.default_rng(1)
    raw = {}
    for part, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        images[:, 0, 0] = np.arange(n)
        labels = (np.arange(n) % 10).astype(np.uint8)
        raw[part] = images, labels
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{part}-{kind}-ubyte"
            if compressed:
                (root / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
            else:
                (root / name).write_bytes(idx_bytes(array))
    return raw


def source_index(images: torch.Tensor, mean: float, std: float) -> np.ndarray:
    """Recover pixel [0, 0] (the file index) of normalised images."""
    return np.rint((images[:, 0, 0, 0].double().numpy() * std + mean) * 255).astype(int)


def write_cifar(folder: Path, per_batch: int = 3, n_test: int = 2, protocol: int = 2) -> dict:
    """Batches whose first byte (red pixel [0, 0]) is the image's global index."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    raw = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    start = 0
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        data[:, 0] = np.arange(start, start + n)
        labels = [int(i) % 10 for i in range(start, start + n)]
        raw[name] = data, labels
        blob = pickle.dumps({b"batch_label": b"x", b"data": data, b"labels": labels}, protocol=protocol)
        if protocol == 2:  # name the globals as numpy 1 did when the real CIFAR files were written
            blob = blob.replace(b"cnumpy._core.", b"cnumpy.core.")
        (folder / name).write_bytes(blob)
        start += n
    return raw


def write_image_folder(root: Path, classes: dict[str, int]) -> dict[Path, tuple[np.ndarray, int]]:
    """Uniform-coloured 8x8 PNGs; returns each file's RGB pixels and label."""
    rng = np.random.default_rng(3)
    made = {}
    for label, (name, count) in enumerate(sorted(classes.items())):
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            path = root / name / f"{i}.png"
            Image.fromarray(pixels).save(path)
            made[path] = pixels, label
    return made


# ---------------------------------------------------------------------------------------------- Fashion-MNIST


@pytest.mark.parametrize("compressed", [True, False])
def test_fashion_exact_pixels_labels_and_normalization(tmp_path, compressed):
    raw = write_fashion(tmp_path, compressed=compressed)
    splits = load_dataset("fashion_mnist", tmp_path, input_size=28, val_size=12, with_test=True, seed=3)
    assert (splits.num_classes, splits.in_chans, splits.input_size) == (10, 1, 28)
    parts = ((splits.train, raw["train"]), (splits.val, raw["train"]), (splits.test, raw["t10k"]))
    for dataset, (images, labels) in parts:
        x, y = dataset.tensors
        idx = source_index(x, FASHION_MEAN, FASHION_STD)
        expected = (images[idx].astype(np.float64) / 255 - FASHION_MEAN) / FASHION_STD
        assert x.dtype == torch.float32 and x.shape == (len(idx), 1, 28, 28)
        np.testing.assert_allclose(x[:, 0].numpy(), expected, rtol=0, atol=PIXEL_ATOL)
        np.testing.assert_array_equal(y.numpy(), labels[idx])
        assert y.dtype == torch.int64
    np.testing.assert_array_equal(source_index(splits.test.tensors[0], FASHION_MEAN, FASHION_STD), np.arange(20))


def test_split_is_deterministic_disjoint_and_covering(tmp_path):
    write_fashion(tmp_path)

    def split(seed):
        s = load_dataset("fashion_mnist", tmp_path, input_size=28, val_size=12, seed=seed)
        return [source_index(d.tensors[0], FASHION_MEAN, FASHION_STD) for d in (s.train, s.val)]

    train, val = split(0)
    assert len(val) == 12 and len(train) == 48
    assert sorted(np.concatenate([train, val])) == list(range(60))
    again = split(0)
    np.testing.assert_array_equal(again[0], train)
    np.testing.assert_array_equal(again[1], val)
    assert set(split(1)[1]) != set(val)

    tr, va = split_indices(100, 30, 7)
    assert sorted(np.concatenate([tr, va])) == list(range(100)) and len(va) == 30
    np.testing.assert_array_equal(split_indices(100, 30, 7)[1], va)


def test_test_set_is_read_only_when_asked(tmp_path):
    write_fashion(tmp_path)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / name).unlink()
    assert load_dataset("fashion_mnist", tmp_path, val_size=10).test is None
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        load_dataset("fashion_mnist", tmp_path, val_size=10, with_test=True)


def test_pad_28_to_32_keeps_pixels_and_fills_background(tmp_path):
    write_fashion(tmp_path)
    small = load_dataset("fashion_mnist", tmp_path, input_size=28, val_size=10).train.tensors[0]
    padded = load_dataset("fashion_mnist", tmp_path, input_size=32, val_size=10).train.tensors[0]
    assert padded.shape[-2:] == (32, 32)
    torch.testing.assert_close(padded[..., 2:30, 2:30], small)
    border = padded.clone()
    border[..., 2:30, 2:30] = float("nan")
    background = (0 - FASHION_MEAN) / FASHION_STD
    np.testing.assert_allclose(border[~border.isnan()].numpy(), background, rtol=0, atol=PIXEL_ATOL)


@pytest.mark.parametrize("size", [56, 19, 12])
def test_resize_matches_pil_bilinear(size):
    pixels = np.random.default_rng(4).random((28, 28), dtype=np.float32)
    reference = np.asarray(Image.fromarray(pixels, mode="F").resize((size, size), Image.Resampling.BILINEAR))
    ours = fit_size(torch.from_numpy(pixels)[None, None], size)[0, 0].numpy()
    # Each of the two separable passes sums 2 ceil(scale) + 1 terms, pixel in [0, 1) times weight (weights sum to
    # 1; the support grows with the shrink factor); each term carries three float32 roundings of eps/2 (its
    # weight, the product, the running sum)
    taps = 2 * math.ceil(max(28 / size, 1)) + 1
    np.testing.assert_allclose(ours, reference, rtol=0, atol=2 * taps * 3 * EPS32 / 2)


def idx_path(root: Path, stem: str) -> Path:
    return root / f"{stem}.gz"


def corrupt_magic(root):
    path = idx_path(root, "train-images-idx3-ubyte")
    data = bytearray(gzip.decompress(path.read_bytes()))
    data[3] = 1  # claims 1-D
    path.write_bytes(gzip.compress(bytes(data)))
    return path


def truncate_payload(root):
    path = idx_path(root, "train-images-idx3-ubyte")
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-5]))
    return path


def truncate_gzip(root):
    path = idx_path(root, "train-labels-idx1-ubyte")
    path.write_bytes(path.read_bytes()[:-12])
    return path


def not_gzip(root):
    path = idx_path(root, "train-labels-idx1-ubyte")
    path.write_bytes(b"<html>404</html>")
    return path


def label_count_mismatch(root):
    path = idx_path(root, "train-labels-idx1-ubyte")
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(59, np.uint8))))
    return path


def label_out_of_range(root):
    path = idx_path(root, "train-labels-idx1-ubyte")
    path.write_bytes(gzip.compress(idx_bytes(np.full(60, 10, np.uint8))))
    return path


@pytest.mark.parametrize(
    "corrupt", [corrupt_magic, truncate_payload, truncate_gzip, not_gzip, label_count_mismatch, label_out_of_range]
)
def test_malformed_idx_raises_data_error_naming_the_file(tmp_path, corrupt):
    write_fashion(tmp_path)
    path = corrupt(tmp_path)
    with pytest.raises(DataError, match=str(path)):
        load_dataset("fashion_mnist", tmp_path, val_size=10)


def test_read_idx_reports_magic_and_size(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((2, 3), np.uint8))))
    assert read_idx(path, 2).shape == (2, 3)
    with pytest.raises(DataError, match="00000802.*expected 00000803"):
        read_idx(path, 3)


def test_missing_fashion_root_names_path_files_and_fix(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        load_dataset("fashion_mnist", missing)
    message = str(info.value)
    for part in (str(missing), "train-images-idx3-ubyte.gz", "apt-get install -y dataset-fashion-mnist", "--data"):
        assert part in message


# ---------------------------------------------------------------------------------------------- subsets


def assert_balanced(chosen: np.ndarray, available: np.ndarray) -> None:
    """Balanced: a class not used up is at most one short of the largest class count."""
    counts = np.bincount(chosen, minlength=10)
    room = np.bincount(available, minlength=10)
    assert (counts <= room).all()
    assert (counts[counts < room] >= counts.max() - 1).all()


def test_balanced_subset_is_seeded_balanced_and_prefix_balanced():
    labels = np.repeat(np.arange(4), [50, 30, 5, 40])
    pick = balanced_subset(labels, 41, 0)
    assert len(set(pick)) == 41
    assert np.bincount(labels[pick]).tolist() == [12, 12, 5, 12]  # class 2 is used up, the rest share evenly
    assert_balanced(labels[balanced_subset(labels, 30, 0)], labels)
    assert sorted(labels[pick[:4]]) == [0, 1, 2, 3]  # round-robin order: every prefix is balanced
    np.testing.assert_array_equal(balanced_subset(labels, 41, 0), pick)
    assert set(balanced_subset(labels, 41, 1)) != set(pick)


def test_load_subsets_are_balanced_and_inside_their_split(tmp_path):
    write_fashion(tmp_path, n_train=200)
    kwargs = dict(input_size=28, val_size=100, seed=5)
    full = load_dataset("fashion_mnist", tmp_path, **kwargs)
    sub = load_dataset("fashion_mnist", tmp_path, train_subset=20, val_subset=15, **kwargs)
    for part, size in (("train", 20), ("val", 15)):
        chosen = source_index(getattr(sub, part).tensors[0], FASHION_MEAN, FASHION_STD)
        pool = source_index(getattr(full, part).tensors[0], FASHION_MEAN, FASHION_STD)
        assert len(chosen) == size and set(chosen) <= set(pool)
        assert_balanced(getattr(sub, part).tensors[1].numpy(), getattr(full, part).tensors[1].numpy())
    again = load_dataset("fashion_mnist", tmp_path, train_subset=20, val_subset=15, **kwargs)
    assert torch.equal(again.train.tensors[0], sub.train.tensors[0])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(val_size=60), "val_size"),
        (dict(val_size=0), "val_size"),
        (dict(val_size=10, train_subset=51), "train_subset"),
        (dict(val_size=10, val_subset=11), "val_subset"),
        (dict(input_size=0), "input_size"),
    ],
)
def test_bad_sizes_name_the_field(tmp_path, kwargs, field):
    write_fashion(tmp_path)
    with pytest.raises(DataError, match=f"{field}="):
        load_dataset("fashion_mnist", tmp_path, **kwargs)


def test_unknown_dataset_lists_the_names():
    assert {"fashion_mnist", "cifar10", "imagefolder", "synthetic"} <= set(dataset_names())
    with pytest.raises(DataError, match="cifar10"):
        load_dataset("mnist")


# ---------------------------------------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize(("give_parent", "protocol"), [(False, 2), (True, 5)])
def test_cifar_exact_pixels_labels_and_normalization(tmp_path, give_parent, protocol):
    raw = write_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    root = tmp_path if give_parent else tmp_path / "cifar-10-batches-py"
    splits = load_dataset("cifar10", root, val_size=5, with_test=True)
    assert (splits.num_classes, splits.in_chans, len(splits.train), len(splits.val)) == (10, 3, 10, 5)
    train_data = np.concatenate([raw[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_labels = sum((raw[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    for dataset, data, labels in (
        (splits.train, train_data, train_labels),
        (splits.val, train_data, train_labels),
        (splits.test, *raw["test_batch"]),
    ):
        x, y = dataset.tensors
        idx = source_index(x, CIFAR_MEAN[0], CIFAR_STD[0]) - (15 if dataset is splits.test else 0)
        rows = data[idx].astype(np.float64) / 255
        for c in range(3):  # row layout: 1024 red, then 1024 green, then 1024 blue values, row-major
            expected = (rows[:, c * 1024 : (c + 1) * 1024].reshape(-1, 32, 32) - CIFAR_MEAN[c]) / CIFAR_STD[c]
            np.testing.assert_allclose(x[:, c].numpy(), expected, rtol=0, atol=PIXEL_ATOL)
        np.testing.assert_array_equal(y.numpy(), np.asarray(labels)[idx])


def test_cifar_missing_and_malformed_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"data_batch_3.*cs\.toronto\.edu"):
        load_dataset("cifar10", folder, val_size=2)
    (folder / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DataError, match=str(folder / "data_batch_3")):
        load_dataset("cifar10", folder, val_size=2)
    with open(folder / "data_batch_3", "wb") as handle:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, handle)
    with pytest.raises(DataError, match=r"data_batch_3.*\[N, 3072\]"):
        load_dataset("cifar10", folder, val_size=2)
    with pytest.raises(DataError, match="cifar10 needs a local path"):
        load_dataset("cifar10")


def test_cifar_pickle_cannot_run_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    target = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.mkdir, (str(target),)

    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Exploit(), b"labels": []}))
    with pytest.raises(DataError, match="posix.mkdir is not allowed"):
        load_dataset("cifar10", folder, val_size=2)
    assert not target.exists()


# ---------------------------------------------------------------------------------------------- ImageFolder


def expected_rgb(pixels: np.ndarray) -> np.ndarray:
    return ((pixels / 255 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


def test_image_folder_is_lazy_and_exact(tmp_path):
    made = write_image_folder(tmp_path, {"cat": 4, "dog": 3, "emu": 5})
    gray = tmp_path / "dog" / "gray.png"
    Image.fromarray(np.full((8, 8), 77, np.uint8), mode="L").save(gray)
    made[gray] = np.full((8, 8, 3), 77, np.uint8), 1
    splits = load_dataset("imagefolder", tmp_path, input_size=8, val_size=3, seed=1)
    assert (splits.num_classes, splits.in_chans) == (3, 3)
    assert isinstance(splits.train, ImageFiles) and (len(splits.train), len(splits.val)) == (10, 3)
    assert sorted(splits.train.paths + splits.val.paths) == sorted(made)
    for dataset in (splits.train, splits.val):
        for i, path in enumerate(dataset.paths):
            x, y = dataset[i]
            pixels, label = made[path]
            np.testing.assert_allclose(x.numpy(), expected_rgb(pixels), rtol=0, atol=PIXEL_ATOL)
            assert int(y) == label


def test_image_folder_train_test_layout_and_errors(tmp_path):
    write_image_folder(tmp_path / "train", {"a": 3, "b": 3})
    write_image_folder(tmp_path / "test", {"a": 1, "b": 2})
    splits = load_dataset("imagefolder", tmp_path, input_size=16, val_size=2, with_test=True)
    assert len(splits.test) == 3 and splits.test[0][0].shape == (3, 16, 16)
    assert [int(splits.test[i][1]) for i in range(3)] == [0, 1, 1]

    (tmp_path / "test" / "b").rename(tmp_path / "test" / "c")
    with pytest.raises(DataError, match="differ"):
        load_dataset("imagefolder", tmp_path, val_size=2, with_test=True)
    flat = tmp_path / "train"
    with pytest.raises(DataError, match="ROOT/train and ROOT/test"):
        load_dataset("imagefolder", flat, val_size=2, with_test=True)
    with pytest.raises(DataError, match=str(tmp_path / "nowhere")):
        load_dataset("imagefolder", tmp_path / "nowhere")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        load_dataset("imagefolder", tmp_path / "empty")


def test_image_folder_corrupt_file_raises_on_access(tmp_path):
    write_image_folder(tmp_path, {"a": 2, "b": 2})
    bad = tmp_path / "a" / "0.png"
    bad.write_bytes(b"not a png")
    splits = load_dataset("imagefolder", tmp_path, input_size=8, val_size=1)
    dataset = splits.train if bad in splits.train.paths else splits.val
    with pytest.raises(DataError, match=str(bad)):
        dataset[dataset.paths.index(bad)]


# ---------------------------------------------------------------------------------------------- synthetic


def test_synthetic_is_seeded_shaped_and_learnable():
    kwargs = dict(input_size=16, val_size=100, num_images=500, num_classes=4, in_chans=3, image_size=16)
    splits = load_dataset("synthetic", **kwargs)
    x, y = splits.train.tensors
    assert x.shape == (400, 3, 16, 16) and (splits.num_classes, splits.in_chans) == (4, 3)
    assert np.bincount(np.concatenate([y.numpy(), splits.val.tensors[1].numpy()])).tolist() == [125] * 4
    assert torch.equal(load_dataset("synthetic", **kwargs).train.tensors[0], x)
    assert not torch.equal(load_dataset("synthetic", data_seed=1, **kwargs).train.tensors[0], x)
    # nearest class mean (fit on train) must classify the validation images almost perfectly
    means = torch.stack([x[y == c].mean(0) for c in range(4)]).flatten(1)
    vx, vy = splits.val.tensors
    predicted = torch.cdist(vx.flatten(1), means).argmin(1)
    assert (predicted == vy).float().mean() >= 0.95
    with pytest.raises(DataError, match="generated in memory"):
        load_dataset("synthetic", "/tmp", **kwargs)


# ---------------------------------------------------------------------------------------------- loaders


def test_make_loader_order_is_seeded_and_complete():
    dataset = torch.utils.data.TensorDataset(torch.arange(10).float()[:, None], torch.arange(10))

    def order(**kw):
        return [b[1].tolist() for b in make_loader(dataset, 4, **kw)]

    shuffled = order(shuffle=True, seed=3)
    assert [len(b) for b in shuffled] == [4, 4, 2] and sorted(sum(shuffled, [])) == list(range(10))
    assert order(shuffle=True, seed=3) == shuffled and order(shuffle=True, seed=4) != shuffled
    assert order(shuffle=False) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert order(shuffle=True, seed=3, drop_last=True) == shuffled[:2]
    images, labels = next(iter(make_loader(dataset, 4, shuffle=False)))
    assert images.shape == (4, 1) and torch.equal(images[:, 0], labels.float())


def test_make_loader_on_lazy_dataset(tmp_path):
    write_image_folder(tmp_path, {"a": 3, "b": 3})
    splits = load_dataset("imagefolder", tmp_path, input_size=8, val_size=1)
    batches = list(make_loader(splits.train, 2, shuffle=True, seed=0))
    assert [b[0].shape for b in batches] == [(2, 3, 8, 8)] * 2 + [(1, 3, 8, 8)]
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == sorted(splits.train.labels.tolist())


def test_fixed_batches_are_the_first_images():
    dataset = torch.utils.data.TensorDataset(torch.randn(10, 2), torch.arange(10))
    batches = fixed_batches(dataset, 7, 3)
    assert [len(b[1]) for b in batches] == [3, 3, 1] and all(isinstance(b, tuple) for b in batches)
    assert torch.equal(torch.cat([b[0] for b in batches]), dataset.tensors[0][:7])
    assert torch.cat([b[1] for b in fixed_batches(dataset, 100, 4)]).tolist() == list(range(10))
    lazy = torch.utils.data.Subset(dataset, range(10))  # not a TensorDataset: the generic path
    assert torch.equal(torch.cat([b[0] for b in fixed_batches(lazy, 7, 3)]), dataset.tensors[0][:7])


def test_fixed_batches_from_a_later_start_continue_where_the_first_images_stop():
    dataset = torch.utils.data.TensorDataset(torch.randn(10, 2), torch.arange(10))
    lazy = torch.utils.data.Subset(dataset, range(10))
    for source in (dataset, lazy):
        rest = fixed_batches(source, 9, 3, start=4)
        assert [b[1].tolist() for b in rest] == [[4, 5, 6], [7, 8]]
        assert torch.equal(torch.cat([b[0] for b in rest]), dataset.tensors[0][4:9])
        assert [b[1].tolist() for b in fixed_batches(source, 100, 4, start=8)] == [[8, 9]]


# ---------------------------------------------------------------------------------------------- real data

FASHION_FILES = [f"{part}-{kind}-ubyte.gz" for part in ("train", "t10k") for kind in ("images-idx3", "labels-idx1")]


def test_real_fashion_mnist():
    # `make test` installs the data first (`make data`), so missing files are a broken setup, not a skip
    if missing := [name for name in FASHION_FILES if not (FASHION_MNIST_ROOT / name).is_file()]:
        pytest.fail(f"Fashion-MNIST files {missing} are missing from {FASHION_MNIST_ROOT}: run `make data` as root "
                    "or `apt-get install -y dataset-fashion-mnist`", pytrace=False)
    images = read_idx(FASHION_MNIST_ROOT / "train-images-idx3-ubyte.gz", 3)
    labels = read_idx(FASHION_MNIST_ROOT / "train-labels-idx1-ubyte.gz", 1)
    assert images.shape == (60000, 28, 28)
    assert np.bincount(labels).tolist() == [6000] * 10
    assert abs(images.mean() / 255 - 0.2860) < 1e-4 and abs(images.std() / 255 - 0.3530) < 1e-4
    splits = load_dataset("fashion_mnist", input_size=28, train_subset=100, with_test=True)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (100, 5000, 10000)
    assert set(splits.test.tensors[1].tolist()) == set(range(10))
    val = splits.val.tensors[0]  # normalised with the dataset constants: about zero mean, unit std
    assert abs(val.mean().item()) < 0.02 and abs(val.std().item() - 1) < 0.02
