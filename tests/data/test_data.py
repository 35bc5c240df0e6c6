"""IDX reading, Fashion-MNIST discovery and errors, digits, subsets."""

from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch

from padnet.data import (
    DataConfig,
    Digits,
    FashionMNIST,
    IDXError,
    build_datasets,
    check_image_files,
    find_fashion_mnist,
    preprocessing_words,
    read_idx,
    write_idx,
)
from padnet.data.fashion_mnist import load_arrays
from padnet.errors import UsageError
from tests.helpers import FASHION_MNIST

REAL = FASHION_MNIST


def make_fmnist(root: Path, n_train=40, n_test=20, gz=True, seed=0):
    """A tiny Fashion-MNIST-shaped directory of IDX files."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", (np.arange(n) % 10).astype(np.uint8))
    return root


@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_idx_roundtrip(tmp_path, name):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / name, array)
    out = read_idx(tmp_path / name)
    assert out.dtype == np.uint8 and np.array_equal(out, array)
    ints = np.array([1, -2, 300000], dtype=np.int32)
    write_idx(tmp_path / "i.idx", ints)
    assert np.array_equal(read_idx(tmp_path / "i.idx"), ints)


def test_truncated_idx_names_file_and_offset(tmp_path):
    write_idx(tmp_path / "x.idx", np.zeros((10, 28, 28), np.uint8))
    data = (tmp_path / "x.idx").read_bytes()
    (tmp_path / "x.idx").write_bytes(data[:1000])
    with pytest.raises(IDXError, match=r"x\.idx.*truncated at offset 1000.*7856 bytes"):
        read_idx(tmp_path / "x.idx")
    (tmp_path / "h.idx").write_bytes(data[:6])
    with pytest.raises(IDXError, match=r"h\.idx.*truncated at offset 6 inside the dimension list"):
        read_idx(tmp_path / "h.idx")


def test_truncated_gzip_and_bad_magic(tmp_path):
    write_idx(tmp_path / "x.idx.gz", np.zeros((50, 28, 28), np.uint8))
    data = (tmp_path / "x.idx.gz").read_bytes()
    (tmp_path / "x.idx.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(IDXError, match=r"x\.idx\.gz"):
        read_idx(tmp_path / "x.idx.gz")
    (tmp_path / "bad.idx").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(IDXError, match=r"bad\.idx: bad IDX magic number at offset 0"):
        read_idx(tmp_path / "bad.idx")


def test_fashion_mnist_from_any_directory(tmp_path):
    root = make_fmnist(tmp_path / "fm", gz=False)
    train, test = FashionMNIST(root, train=True), FashionMNIST(root, train=False)
    assert len(train) == 40 and len(test) == 20
    image, label = train[13]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and label == 3
    # torchvision's layout <root>/FashionMNIST/raw is found too
    make_fmnist(tmp_path / "tv" / "FashionMNIST" / "raw")
    assert find_fashion_mnist(tmp_path / "tv") == tmp_path / "tv" / "FashionMNIST" / "raw"


def test_missing_data_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        FashionMNIST(tmp_path / "nowhere")
    message = str(err.value)
    assert str(tmp_path / "nowhere") in message
    assert "apt-get install -y dataset-fashion-mnist" in message


def test_labels_out_of_range_and_count_mismatch_name_the_file(tmp_path):
    root = make_fmnist(tmp_path, gz=False)
    labels = (np.arange(40) % 10).astype(np.uint8)
    labels[7] = 12
    write_idx(root / "train-labels-idx1-ubyte", labels)
    with pytest.raises(IDXError, match=r"train-labels-idx1-ubyte: label 12 at index 7 \(byte offset 15\)"):
        load_arrays(root, train=True)
    write_idx(root / "train-labels-idx1-ubyte", labels[:30] % 10)
    with pytest.raises(IDXError, match=r"train-labels-idx1-ubyte: 30 labels for 40 images"):
        load_arrays(root, train=True)


def test_digits_split_is_fixed_and_disjoint():
    train, test = Digits(True), Digits(False)
    assert len(train) + len(test) == 1797 and len(test) == 359
    assert train[0][0].shape == (1, 8, 8)
    again = Digits(True)
    assert torch.equal(train.images, again.images)
    flat_train = {tuple(x.flatten().tolist()) for x in train.images}
    overlap = sum(tuple(x.flatten().tolist()) in flat_train for x in test.images)
    assert overlap < 10  # the few duplicates that exist in the raw data, not a shared split


def test_build_datasets_subsets_are_seeded(tmp_path):
    root = make_fmnist(tmp_path)
    config = DataConfig(name="fashion_mnist", root=str(root), train_subset=10, test_subset=5)
    train, test, info = build_datasets(config)
    assert (len(train), len(test), info.num_classes, info.in_channels, info.small_input) == (10, 5, 10, 1, True)
    train2, _, _ = build_datasets(config)
    assert train.indices == train2.indices
    other, _, _ = build_datasets(DataConfig(name="fashion_mnist", root=str(root), train_subset=10, subset_seed=1))
    assert other.indices != train.indices


@pytest.mark.skipif(not REAL.is_dir(), reason=f"real Fashion-MNIST not installed at {REAL} "
                    "(apt-get install -y dataset-fashion-mnist)")
def test_real_fashion_mnist():
    test = FashionMNIST(REAL, train=False)
    assert len(test) == 10_000
    assert torch.bincount(test.targets).tolist() == [1000] * 10
    assert test.images.shape == (10_000, 28, 28)


def test_imagefolder_any_directory(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (20, 24), (i * 100, 50, 0)).save(tmp_path / split / cls / f"{i}.png")
    train, test, info = build_datasets(DataConfig(name="imagefolder", root=str(tmp_path), image_size=16))
    assert (len(train), len(test), info.num_classes, info.in_channels) == (4, 4, 2, 3)
    image, label = test[3]
    assert image.shape == (3, 16, 16) and label == 1
    with pytest.raises(FileNotFoundError, match=r"nothing/train not found; expected"):
        build_datasets(DataConfig(name="imagefolder", root=str(tmp_path / "nothing")))


@pytest.mark.parametrize("bad", [{"image_size": 4}, {"train_subset": 0}, {"channels": 2}, {"name": "cifar"}])
def test_a_data_config_built_by_hand_is_held_to_the_bounds_a_config_is(bad):
    """``build_datasets`` is called with hand-built configs too; the bounds are those of the ``data:`` section."""
    with pytest.raises(pydantic.ValidationError, match=next(iter(bad))):
        DataConfig(**{"name": "imagefolder", "root": "x"} | bad)


@pytest.mark.parametrize("check", [check_image_files, preprocessing_words])
def test_image_file_checks_name_the_missing_key_of_a_hand_built_config(check):
    """The pre-flight checks are public; a config built by hand without its files names the key (was a
    TypeError on None from inside the file reader)."""
    with pytest.raises(UsageError, match=r"data.root=None: the imagefolder dataset needs data.root=DIR"):
        check(DataConfig(name="imagefolder"))
    with pytest.raises(UsageError, match=r"data.train_file=None: the image_csv dataset needs data.train_file"):
        check(DataConfig(name="image_csv"))
