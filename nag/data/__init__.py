"""Data sets: Fashion-MNIST from Debian's package, any IDX pair, or an image folder."""

from nag.data.augment import random_crop_flip
from nag.data.datasets import (
    FASHION_MNIST_CLASSES,
    DataSplits,
    ImageSet,
    load_fashion_mnist,
    load_idx_pair,
    load_image_folder,
    read_idx,
    split_validation,
)
from nag.data.source import DataSource, load_splits, load_test_set

__all__ = [
    "FASHION_MNIST_CLASSES",
    "DataSource",
    "DataSplits",
    "ImageSet",
    "load_fashion_mnist",
    "load_idx_pair",
    "load_image_folder",
    "load_splits",
    "load_test_set",
    "random_crop_flip",
    "read_idx",
    "split_validation",
]
