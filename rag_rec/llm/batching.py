"""One engine thread for a generate function that must not run on several threads at once.

vLLM's in-process `LLM` is not thread-safe: two request threads calling it together corrupt the messages to its
engine process, which then stops answering (every caller hangs). `BatchQueue` gives the function one owner
thread. Callers on any thread submit their requests and wait; each round the thread takes everything queued and
makes one call, so concurrent users are decoded as one batch (vLLM on CPU: ~60 tok/s at batch 8 against ~11
for one stream).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from rag_rec.llm.base import LLMUnavailable
from rag_rec.slots import waiting

Request = TypeVar("Request")
Output = TypeVar("Output")


@dataclass(eq=False)
class _Job(Generic[Request, Output]):
    requests: list[Request]
    done: threading.Event = field(default_factory=threading.Event)
    outputs: list[Output] | None = None
    error: BaseException | None = None

    def finish(self, outputs: list[Output] | None = None, error: BaseException | None = None) -> None:
        self.outputs, self.error = outputs, error
        self.done.set()


_STOP = object()


class BatchQueue(Generic[Request, Output]):
    """Runs `generate(requests) -> outputs` (one output per request, in order) on its own thread only.

    `submit` blocks until its requests are answered; requests queued by other callers meanwhile go into the same
    call, up to `max_batch` requests a round (one caller's list is never split). An exception from `generate`
    reaches every caller of that round. After `close`, queued and new callers get LLMUnavailable.
    """

    def __init__(self, generate: Callable[[list[Request]], list[Output]], *, max_batch: int = 64,
                 name: str = "llm-batches"):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._generate, self.max_batch = generate, max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._close_lock = threading.Lock()
        self.rounds = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, requests: Sequence[Request]) -> list[Output]:
        if not requests:
            return []
        job: _Job[Request, Output] = _Job(list(requests))
        with self._close_lock:
            if self._closed:
                raise LLMUnavailable("the LLM engine is closed")
            self._queue.put(job)
        with waiting():  # a request thread's compute slot is free while the engine works
            job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.outputs is not None
        return job.outputs

    def close(self, timeout_s: float | None = None) -> None:
        """Answer the round in progress, fail the callers still queued, stop the thread."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)

    def _take_round(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs, size, stop = [first], len(first.requests), False
        while size < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                stop = True
                break
            jobs.append(job)
            size += len(job.requests)
        return jobs, stop

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP or self._closed:  # no round starts after close
                self._fail(first)
                break
            jobs, stop = self._take_round(first)
            self._answer(jobs)
            if stop:
                break
        while True:
            try:
                self._fail(self._queue.get_nowait())
            except queue.Empty:
                return

    @staticmethod
    def _fail(job) -> None:
        if job is not _STOP:
            job.finish(error=LLMUnavailable("the LLM engine is closed"))

    def _answer(self, jobs: list[_Job]) -> None:
        self.rounds += 1
        requests = [r for job in jobs for r in job.requests]
        try:
            outputs = self._generate(requests)
            if len(outputs) != len(requests):
                raise LLMUnavailable(f"the LLM returned {len(outputs)} outputs for {len(requests)} requests")
        except BaseException as exc:  # noqa: BLE001 - every caller of the round gets it
            for job in jobs:
                job.finish(error=exc)
            return
        start = 0
        for job in jobs:
            job.finish(outputs=list(outputs[start:start + len(job.requests)]))
            start += len(job.requests)
