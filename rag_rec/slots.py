"""Compute slots: at most n threads run service code at once, the rest wait without contending for the GIL.

Every runnable Python thread takes turns on the GIL (5 ms each by default), so with 40 request threads busy the
event loop that parses and answers HTTP waits ~40 turns for each step: health checks took ~200 ms under load.
Threads blocked on a semaphore take no turns. A thread that blocks on something slow (the LLM engine) gives
its slot back while it waits (`waiting`), so LLM requests still reach the engine together and batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_held = threading.local()


class ComputeSlots:
    def __init__(self, n: int):
        if n < 1:
            raise ValueError(f"compute slots must be >= 1, got {n}")
        self.n = n
        self._free = threading.Semaphore(n)

    def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> tuple[T, float]:
        """fn(*args, **kwargs) in a slot; returns its result and the seconds spent waiting for the slot."""
        t0 = time.perf_counter()
        self._free.acquire()
        queued = time.perf_counter() - t0
        outer = getattr(_held, "slots", None)
        _held.slots = self
        try:
            return fn(*args, **kwargs), queued
        finally:
            _held.slots = outer
            self._free.release()


@contextmanager
def waiting() -> Iterator[None]:
    """Around a blocking wait: the calling thread's slot (if it holds one) is free meanwhile."""
    slots: ComputeSlots | None = getattr(_held, "slots", None)
    if slots is None:
        yield
        return
    slots._free.release()
    try:
        yield
    finally:
        slots._free.acquire()
