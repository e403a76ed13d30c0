"""Image classification data: Fashion-MNIST (Debian's IDX files), any IDX pair, or an image folder.

Everything is held in memory as uint8 tensors `[N, C, H, W]`; batches become float in [0, 1].
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nag.config.data import FASHION_MNIST_DIR
from nag.errors import DataNotFoundError

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
INSTALL_HINT = "install it with `sudo apt-get install dataset-fashion-mnist` (or run `make setup`)"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_IDX_DTYPES = {0x08: np.uint8}


@dataclass(frozen=True)
class ImageSet:
    """Images `[N, C, H, W]` (uint8) with integer labels `[N]` and the class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError("images must be a uint8 tensor [N, C, H, W]")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index], self.classes)

    def as_float(self, index: torch.Tensor | slice | None = None) -> torch.Tensor:
        images = self.images if index is None else self.images[index]
        return images.float().div_(255.0)


@dataclass(frozen=True)
class DataSplits:
    """Train and validation are disjoint parts of the training files; test is only for final reports."""

    train: ImageSet
    val: ImageSet
    test: ImageSet

    @property
    def classes(self) -> tuple[str, ...]:
        return self.train.classes


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array."""
    if not path.is_file():
        raise DataNotFoundError(f"IDX file {path} does not exist")
    try:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":  # gzip, whatever the file is called
            data = gzip.decompress(data)
    except (OSError, EOFError) as exc:
        raise DataNotFoundError(f"cannot read IDX file {path}: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataNotFoundError(f"{path} is not an IDX file (bad magic number)")
    dtype_code, ndim = data[2], data[3]
    if dtype_code not in _IDX_DTYPES:
        raise DataNotFoundError(f"{path}: IDX element type 0x{dtype_code:02x} is not supported (only unsigned bytes)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataNotFoundError(f"{path} is truncated (incomplete header)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    count = int(np.prod(shape))
    if len(data) - header != count:
        raise DataNotFoundError(f"{path} holds {len(data) - header} bytes of data, its header promises {count}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def load_idx_pair(images_path: Path, labels_path: Path, classes: tuple[str, ...] | None = None) -> ImageSet:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or labels.ndim != 1:
        raise DataNotFoundError(f"{images_path} must hold [N, H, W] images and {labels_path} [N] labels")
    if len(images) != len(labels):
        raise DataNotFoundError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    n_classes = int(labels.max()) + 1 if len(labels) else 0
    names = classes if classes is not None else tuple(str(i) for i in range(n_classes))
    return ImageSet(torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)), names)


def load_fashion_mnist(root: Path = FASHION_MNIST_DIR) -> tuple[ImageSet, ImageSet]:
    """The Fashion-MNIST training and test sets from Debian's `dataset-fashion-mnist` files."""
    names = {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }
    sets = []
    for split, (img, lab) in names.items():
        paths = [_first_existing(root, name) for name in (img, lab)]
        if None in paths:
            raise DataNotFoundError(f"Fashion-MNIST {split} files are missing under {root}: {INSTALL_HINT}")
        sets.append(load_idx_pair(paths[0], paths[1], FASHION_MNIST_CLASSES))  # type: ignore[arg-type]
    return sets[0], sets[1]


def _first_existing(root: Path, stem: str) -> Path | None:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    return None


def load_image_folder(root: Path, size: int, channels: int) -> ImageSet:
    """`root/<class>/*.png|jpg` -> images resized to `size` x `size` with `channels` channels."""
    from PIL import Image, UnidentifiedImageError

    if not root.is_dir():
        raise DataNotFoundError(f"image folder {root} does not exist")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not class_dirs:
        raise DataNotFoundError(f"image folder {root} has no class sub-folders (expected root/<class>/*.png)")
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise DataNotFoundError(f"image folders support 1 or 3 channels, not {channels}")
    images, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        for path in sorted(class_dir.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(path) as im:
                    arr = np.asarray(im.convert(mode).resize((size, size), Image.BILINEAR), dtype=np.uint8)
            except (OSError, UnidentifiedImageError) as exc:
                raise DataNotFoundError(f"cannot read image {path}: {exc}") from None
            images.append(arr.reshape(size, size, channels).transpose(2, 0, 1))
            labels.append(label)
    if not images:
        raise DataNotFoundError(f"image folder {root} holds no {'/'.join(IMAGE_SUFFIXES)} files")
    return ImageSet(
        torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64), tuple(d.name for d in class_dirs)
    )


def split_validation(train: ImageSet, val_size: int, seed: int) -> tuple[ImageSet, ImageSet]:
    """A fixed, seeded validation split carved out of the training set."""
    if not 0 < val_size < len(train):
        raise ValueError(f"val_size={val_size} must lie in (0, {len(train)})")
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    return train.subset(perm[val_size:].sort().values), train.subset(perm[:val_size].sort().values)
