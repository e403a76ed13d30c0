"""Artifacts written atomically and verified on load.

A torch artifact is a header line `NAGART1 <sha256-of-payload>\n` followed by a `torch.save` payload.
Loading checks the hash before unpickling, and unpickles with `weights_only=True` only. JSON and JSONL
files (device profiles, predictors, measurements, triplets) are read here too, so that a missing, cut or
malformed one is always the same one-line `NagError` naming the file (and the line).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch

from nag.errors import CheckpointError, NagError

MAGIC = b"NAGART1"
T = TypeVar("T")


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


def read_json(path: str | Path, what: str, error: type[NagError] = CheckpointError, missing_hint: str = "") -> Any:
    """The parsed JSON file `path`; a missing file or one that is not JSON is one `error` naming `what`."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist{missing_hint}") from None
    except json.JSONDecodeError as exc:
        raise error(f"{what} {path} is corrupt or truncated (not valid JSON: {exc})") from None


def read_jsonl(path: str | Path, what: str, parse: Callable[[Any], T], missing_hint: str = "",
               malformed_hint: str = "") -> list[T]:
    """Every non-blank line of the JSONL file `path`, parsed by `parse`. A missing file, or a line that is not
    JSON or that `parse` refuses (KeyError, TypeError, ValueError, AttributeError), is a `CheckpointError`
    naming `what`, the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist{missing_hint}")
    out = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(parse(json.loads(line)))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"{what} {path} line {number} is truncated or malformed "
                                  f"({type(exc).__name__}: {exc}){malformed_hint}") from None
    return out


def write_jsonl(path: str | Path, records: Iterable[Mapping[str, Any]]) -> None:
    """Atomically write one JSON object per line, keys sorted."""
    text = "".join(json.dumps(record, sort_keys=True) + "\n" for record in records)
    atomic_write_bytes(Path(path), text.encode())


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """The sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
