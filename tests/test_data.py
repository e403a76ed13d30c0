from __future__ import annotations

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nag.data import (
    FASHION_MNIST_CLASSES,
    DataSource,
    load_fashion_mnist,
    load_idx_pair,
    load_image_folder,
    load_splits,
    random_crop_flip,
    read_idx,
    split_validation,
)
from nag.errors import DataNotFoundError


def _write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    data = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def test_fashion_mnist_from_debian_package(splits) -> None:
    assert splits.train.images.shape == (55_000, 1, 28, 28)
    assert splits.val.images.shape == (5_000, 1, 28, 28)
    assert splits.test.images.shape == (10_000, 1, 28, 28)
    assert splits.classes == FASHION_MNIST_CLASSES
    assert set(splits.test.labels.tolist()) == set(range(10))
    assert splits.train.images.dtype == torch.uint8


def test_validation_split_is_fixed_seeded_and_disjoint() -> None:
    train, _ = load_fashion_mnist()
    a_train, a_val = split_validation(train, 1000, seed=3)
    _b_train, b_val = split_validation(train, 1000, seed=3)
    _, c_val = split_validation(train, 1000, seed=4)
    assert torch.equal(a_val.images, b_val.images)
    assert not torch.equal(a_val.images, c_val.images)
    assert len(a_train) + len(a_val) == len(train)
    # Disjoint: no training image row equals a validation row by index.
    flat_train = {bytes(x) for x in a_train.images[:5000].reshape(5000, -1).numpy()}
    assert sum(bytes(x) in flat_train for x in a_val.images.reshape(1000, -1).numpy()) < 5


@pytest.mark.parametrize("compress", [False, True])
def test_any_idx_pair(tmp_path: Path, compress: bool) -> None:
    images = np.random.randint(0, 256, (7, 5, 5), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2, 1], dtype=np.uint8)
    _write_idx(tmp_path / "i.idx", images, compress)
    _write_idx(tmp_path / "l.idx", labels, compress)
    s = load_idx_pair(tmp_path / "i.idx", tmp_path / "l.idx")
    assert s.images.shape == (7, 1, 5, 5) and np.array_equal(s.images[:, 0].numpy(), images)
    assert s.classes == ("0", "1", "2")


def test_truncated_and_mismatched_idx_are_refused(tmp_path: Path) -> None:
    _write_idx(tmp_path / "i.idx", np.zeros((4, 3, 3), np.uint8))
    data = (tmp_path / "i.idx").read_bytes()
    (tmp_path / "cut.idx").write_bytes(data[:-5])
    with pytest.raises(DataNotFoundError, match="header promises"):
        read_idx(tmp_path / "cut.idx")
    (tmp_path / "junk.idx").write_bytes(b"\x01\x02\x03")
    with pytest.raises(DataNotFoundError, match="magic"):
        read_idx(tmp_path / "junk.idx")
    _write_idx(tmp_path / "l.idx", np.zeros(3, np.uint8))
    with pytest.raises(DataNotFoundError, match="labels"):
        load_idx_pair(tmp_path / "i.idx", tmp_path / "l.idx")


def test_image_folder(tmp_path: Path) -> None:
    for split in ("train", "test"):
        for label, name in enumerate(["cat", "dog"]):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i in range(6):
                Image.fromarray(np.full((40, 30), 40 * label + i, np.uint8)).save(folder / f"{i}.png")
    s = load_image_folder(tmp_path / "train", size=28, channels=1)
    assert s.images.shape == (12, 1, 28, 28) and s.classes == ("cat", "dog")
    assert s.labels.tolist() == [0] * 6 + [1] * 6
    splits = load_splits(DataSource("folder", str(tmp_path)), val_size=2, seed=0, image_size=28, channels=1)
    assert len(splits.train) == 10 and len(splits.val) == 2 and len(splits.test) == 12


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "nope", 28, 1)
    (tmp_path / "a").mkdir()
    with pytest.raises(DataNotFoundError, match=r"no \.png"):
        load_image_folder(tmp_path, 28, 1)
    (tmp_path / "a" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataNotFoundError, match="cannot read image"):
        load_image_folder(tmp_path, 28, 1)
    with pytest.raises(DataNotFoundError, match="train/ and test/"):
        load_splits(DataSource("folder", str(tmp_path)), 1, 0, 28, 1)


def test_missing_fashion_mnist_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)


def test_cli_reports_missing_data_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "nag.cli", "train-supernet", "--profile", "tiny", "--data-root", str(tmp_path),
         "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "apt-get install dataset-fashion-mnist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_augmentation_is_seeded_and_keeps_range() -> None:
    images = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    a = random_crop_flip(images, 2, True, torch.Generator().manual_seed(1))
    b = random_crop_flip(images, 2, True, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (16, 1, 28, 28)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    plain = random_crop_flip(images, 0, False, torch.Generator())
    assert torch.equal(plain, images.float() / 255)
