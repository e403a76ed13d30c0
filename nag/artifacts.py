"""Artifacts written atomically and verified on load.

A file is a header line `NAGART1 <sha256-of-payload>\n` followed by a `torch.save` payload. Loading
checks the hash before unpickling, and unpickles with `weights_only=True` only.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from nag.errors import CheckpointError

MAGIC = b"NAGART1"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_artifact(path: str | Path, payload: dict[str, Any]) -> str:
    """Atomically write `payload` (tensors, numbers, strings, lists, dicts); returns its sha256."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    atomic_write_bytes(Path(path), MAGIC + b" " + digest.encode() + b"\n" + data)
    return digest


def load_artifact(path: str | Path, what: str = "artifact") -> dict[str, Any]:
    """Load and verify an artifact written by `save_artifact`; refuse anything else clearly."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    raw = path.read_bytes()
    header, sep, data = raw.partition(b"\n")
    parts = header.split(b" ")
    if not sep or len(parts) != 2 or parts[0] != MAGIC:
        raise CheckpointError(f"{what} {path} is not a NAG artifact (bad header); it may be corrupt")
    if hashlib.sha256(data).hexdigest().encode() != parts[1]:
        raise CheckpointError(f"{what} {path} is corrupt or truncated (checksum mismatch); delete it or retrain")
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise CheckpointError(f"{what} {path} cannot be read: {exc}") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{what} {path} does not hold a dictionary")
    return payload
