"""A counting semaphore that admits waiters in arrival order.

`threading.Semaphore` lets a thread that releases a slot take it straight back before the threads already
waiting wake up. A call that needs the compute slot many times in a row (`GetFrontier`, one acquisition
per budget) then starves everyone else: a GenerateForBudget sent 2 s after a 108 s frontier call waited
106 s. Here a released slot is handed to the longest waiter, so a waiting call runs after at most one
unit of someone else's work.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager


class SlotTimeout(Exception):
    """No slot became free within the timeout."""


class FifoSlots:
    def __init__(self, slots: int):
        if slots < 1:
            raise ValueError("at least one slot")
        self._free = slots
        self._lock = threading.Lock()
        self._waiters: deque[threading.Event] = deque()

    def acquire(self, timeout: float | None = None) -> bool:
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return True
            turn = threading.Event()
            self._waiters.append(turn)
        if turn.wait(timeout):
            return True
        with self._lock:
            if turn.is_set():  # handed over between the timeout and the lock
                return True
            self._waiters.remove(turn)
            return False

    def release(self) -> None:
        with self._lock:
            if self._waiters:
                self._waiters.popleft().set()  # the slot passes directly to the longest waiter
            else:
                self._free += 1

    @contextmanager
    def hold(self, timeout: float | None = None) -> Iterator[None]:
        """Hold a slot for the block; raises `SlotTimeout` if none is free within `timeout` seconds."""
        if not self.acquire(timeout):
            raise SlotTimeout
        try:
            yield
        finally:
            self.release()
