"""Where the data comes from: a typed description that the config, the data loaders and the CLI share.

It lives with the config, not in `nag.data`, so that importing the config loads no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nag.errors import DataNotFoundError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
KINDS = ("fashion-mnist", "idx", "folder")


@dataclass(frozen=True)
class DataSource:
    """`fashion-mnist` (root: the IDX folder), `idx` (root holding train-/t10k- images and labels,
    gzip or not, as Fashion-MNIST names them) or `folder` (root/train/<class>/*.png and root/test/...)."""

    kind: str = "fashion-mnist"
    root: str = str(FASHION_MNIST_DIR)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DataNotFoundError(f"unknown data kind {self.kind!r}; choose one of {list(KINDS)}")
