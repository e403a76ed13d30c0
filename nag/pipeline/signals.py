"""SIGTERM and SIGINT stop a training run cleanly: the loop finishes its step, checkpoints and exits."""

from __future__ import annotations

import signal
from typing import Any


class StopRequested:
    """Set by SIGTERM/SIGINT; the loop finishes its step, checkpoints and exits."""

    def __init__(self) -> None:
        self.flag = False
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.flag = True
