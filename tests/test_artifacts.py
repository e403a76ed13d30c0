from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nag.artifacts import load_artifact, save_artifact
from nag.errors import CheckpointError


def test_round_trip_and_atomic(tmp_path: Path) -> None:
    path = tmp_path / "a.pt"
    save_artifact(path, {"x": torch.arange(5), "name": "n"})
    assert torch.equal(load_artifact(path)["x"], torch.arange(5))
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]  # no temporary files left behind


def test_corrupt_truncated_and_foreign_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.pt"
    save_artifact(path, {"x": torch.randn(100)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_artifact(path, "checkpoint")
    flipped = bytearray(data)
    flipped[-10] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="checksum"):
        load_artifact(path)
    torch.save({"x": 1}, path)
    with pytest.raises(CheckpointError, match="not a NAG artifact"):
        load_artifact(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_artifact(tmp_path / "missing.pt")
