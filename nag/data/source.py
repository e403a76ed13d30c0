"""Loading the splits a `DataSource` describes (the description itself is `nag.config.data`'s)."""

from __future__ import annotations

from pathlib import Path

from nag.config.data import DataSource
from nag.data.datasets import (
    DataSplits,
    ImageSet,
    load_fashion_mnist,
    load_idx_pair,
    load_image_folder,
    split_validation,
)
from nag.errors import DataNotFoundError


def _load_train_test(source: DataSource, image_size: int, channels: int) -> tuple[ImageSet, ImageSet]:
    root = Path(source.root)
    train: ImageSet
    test: ImageSet
    if source.kind in ("fashion-mnist", "idx"):
        train, test = load_fashion_mnist(root)
    else:
        for part in ("train", "test"):
            if not (root / part).is_dir():
                raise DataNotFoundError(f"image folder {root} needs the sub-folders train/ and test/")
        train = load_image_folder(root / "train", image_size, channels)
        test = load_image_folder(root / "test", image_size, channels)
        if train.classes != test.classes:
            raise DataNotFoundError(f"{root}/train and {root}/test have different class folders")
    shape = tuple(train.images.shape[1:])
    if shape != (channels, image_size, image_size):
        raise DataNotFoundError(
            f"images are {list(shape)} but the search space expects {[channels, image_size, image_size]}"
        )
    return train, test


def load_splits(source: DataSource, val_size: int, seed: int, image_size: int, channels: int) -> DataSplits:
    """Train / validation / test splits; validation is a fixed, seeded part of the training files."""
    train, test = _load_train_test(source, image_size, channels)
    train, val = split_validation(train, val_size, seed)
    return DataSplits(train=train, val=val, test=test)


def load_test_set(source: DataSource, image_size: int, channels: int) -> ImageSet:
    """The test set alone, for final reports."""
    return _load_train_test(source, image_size, channels)[1]


__all__ = ["DataSource", "load_idx_pair", "load_splits", "load_test_set"]
