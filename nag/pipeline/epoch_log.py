"""`log.jsonl` of a supernet run: one record per epoch, appended durably, never twice, and readable after a
crash that tore its last line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from nag.artifacts import atomic_write_bytes


def is_logged(log_path: Path, epoch: int) -> bool:
    """Whether `log_path` holds the record of `epoch`; a last line torn by a crash mid-write is dropped."""
    if not log_path.exists():
        return False
    text = log_path.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        atomic_write_bytes(log_path, text.encode())
    for line in text.splitlines():
        try:
            if json.loads(line).get("epoch") == epoch:
                return True
        except (json.JSONDecodeError, AttributeError):
            continue
    return False


def append_record(log_path: Path, record: dict[str, Any]) -> None:
    with log_path.open("a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
