"""Continuous batching on one engine thread, for an engine that must not be called from several threads at once.

vLLM's in-process `LLM` is not thread-safe: two request threads calling it together corrupt the messages to its
engine process, which then stops answering (every caller hangs). `ContinuousBatcher` gives the engine one owner
thread. Callers on any thread submit their requests and wait. Between two decoding steps the thread admits
everything queued, so a request joins the running batch at the next step instead of waiting for the whole batch
to finish (vLLM on CPU: ~60 tok/s at batch 8 against ~11 for one stream), and each caller is answered as soon
as its own requests finish.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from rag_rec.llm.base import LLMUnavailable
from rag_rec.slots import waiting

log = logging.getLogger(__name__)
Request = TypeVar("Request")
Output = TypeVar("Output")


class SteppedEngine(Protocol[Request, Output]):
    """An engine that decodes the requests added between its steps together."""

    def add(self, requests: list[Request]) -> list[Hashable]:
        """Start decoding `requests`; one key per request (all or none are added)."""

    def step(self) -> list[tuple[Hashable, Output]]:
        """One decoding step; (key, output) for each request that finished in it."""

    def has_unfinished(self) -> bool: ...

    def abort(self, keys: list[Hashable]) -> None:
        """Stop decoding these requests (their callers were answered with an error)."""


@dataclass(eq=False)
class _Job(Generic[Request, Output]):
    requests: list[Request]
    done: threading.Event = field(default_factory=threading.Event)
    outputs: list[Output | None] = field(default_factory=list)
    remaining: int = 0
    error: BaseException | None = None

    def finish(self, error: BaseException | None = None) -> None:
        self.error = error
        self.done.set()


_STOP = object()


@dataclass(frozen=True, eq=False)
class _Abandon:
    """A caller stopped waiting for `job` (no progress within its timeout): drop it and abort its requests."""

    job: _Job


class ContinuousBatcher(Generic[Request, Output]):
    """Runs a SteppedEngine on its own thread only.

    `submit` blocks until its requests are answered, or until the engine has made no progress (no finished step)
    for `timeout_s`: a wedged engine then answers its callers with LLMUnavailable instead of holding them forever,
    and their requests are aborted if the engine ever moves again. Requests are admitted between steps while fewer
    than `max_batch` are decoding (a caller's list is admitted whole, alone if it is larger). An exception from a
    step reaches every caller with requests in flight; one from `add` reaches that caller only. `close` lets the
    requests in flight finish; queued and later callers get LLMUnavailable.
    """

    def __init__(self, engine: SteppedEngine[Request, Output], *, max_batch: int = 64, name: str = "llm-batches"):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._engine, self.max_batch = engine, max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._close_lock = threading.Lock()
        self.steps = 0
        self.most_in_flight = 0  # the most requests decoding together so far
        self._progress = time.monotonic()  # when the engine thread last finished a step or woke up
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, requests: Sequence[Request], timeout_s: float | None = None) -> list[Output]:
        if not requests:
            return []
        job: _Job[Request, Output] = _Job(list(requests))
        with self._close_lock:
            if self._closed:
                raise LLMUnavailable("the LLM engine is closed")
            self._queue.put(job)
        with waiting():  # a request thread's compute slot is free while the engine works
            while not job.done.wait(None if timeout_s is None else min(timeout_s, 1.0)):
                if time.monotonic() - self._progress > timeout_s:
                    self._queue.put(_Abandon(job))
                    raise LLMUnavailable(f"the LLM engine made no progress for {timeout_s:.0f} s")
        if job.error is not None:
            raise job.error
        return job.outputs  # type: ignore[return-value]

    def close(self, timeout_s: float | None = None) -> None:
        """Finish the requests in flight, fail the callers still queued, stop the thread."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        held: deque[_Job] = deque()  # queued callers that did not fit under max_batch yet
        owners: dict[Hashable, tuple[_Job, int]] = {}
        try:
            self._serve(held, owners)
        except BaseException:  # a bug: logged, and every waiting caller is answered below
            log.exception("the LLM engine thread failed")
        finally:  # nobody waits forever
            with self._close_lock:
                self._closed = True
            gone = LLMUnavailable("the LLM engine thread stopped")
            for job in [*held, *{job for job, _ in owners.values()}]:
                if not job.done.is_set():
                    job.finish(gone)
            self._drain()

    def _serve(self, held: deque, owners: dict) -> None:
        stopping = False
        while True:
            idle = not owners and not held
            if idle and stopping:
                break
            stopping |= self._collect(held, owners, block=idle and not stopping)
            if stopping:
                for job in held:
                    job.finish(LLMUnavailable("the LLM engine is closed"))
                held.clear()
            self._admit(held, owners)
            if owners:
                self._step(owners)

    def _collect(self, held: deque, owners: dict, block: bool) -> bool:
        """Move queued callers to `held`, drop abandoned ones; True once close was asked."""
        while True:
            try:
                job = self._queue.get() if block else self._queue.get_nowait()
            except queue.Empty:
                return False
            if block:
                self._progress = time.monotonic()  # idle until now: the wait was not the engine's
            block = False
            if job is _STOP:
                return True
            if isinstance(job, _Abandon):
                self._abandon(job.job, held, owners)
                continue
            held.append(job)

    def _abandon(self, job: _Job, held: deque, owners: dict) -> None:
        if job in held:
            held.remove(job)
        keys = [key for key, (owner, _) in owners.items() if owner is job]
        for key in keys:
            del owners[key]
        if keys:
            try:
                self._engine.abort(keys)
            except Exception as exc:  # noqa: BLE001 - nobody waits for these any more
                log.warning("abort of abandoned requests failed: %s", exc)

    def _admit(self, held: deque, owners: dict) -> None:
        in_flight = len(owners)
        while held and (not in_flight or in_flight + len(held[0].requests) <= self.max_batch):
            job = held.popleft()
            try:
                keys = self._engine.add(job.requests)
                if len(keys) != len(job.requests):
                    raise LLMUnavailable(f"the LLM engine took {len(keys)} of {len(job.requests)} requests")
            except BaseException as exc:  # noqa: BLE001 - this caller's requests were refused
                job.finish(exc)
                continue
            job.outputs, job.remaining = [None] * len(keys), len(keys)
            for i, key in enumerate(keys):
                owners[key] = (job, i)
            in_flight += len(keys)
        self.most_in_flight = max(self.most_in_flight, in_flight)

    def _step(self, owners: dict) -> None:
        self.steps += 1
        try:
            finished = self._engine.step()
            self._progress = time.monotonic()
            for key, output in finished:
                owner = owners.pop(key, None)
                if owner is None:
                    continue
                job, i = owner
                job.outputs[i] = output
                job.remaining -= 1
                if not job.remaining:
                    job.finish()
            if owners and not self._engine.has_unfinished():
                raise LLMUnavailable("the LLM engine dropped requests without an answer")
        except BaseException as exc:  # noqa: BLE001 - every caller in flight gets it
            self._fail_in_flight(owners, exc)

    def _fail_in_flight(self, owners: dict, error: BaseException) -> None:
        try:
            self._engine.abort(list(owners))
        except Exception as exc:  # noqa: BLE001 - a dead engine has nothing left to abort
            log.debug("abort after an engine failure failed too: %s", exc)
        for job in {job for job, _ in owners.values()}:
            job.finish(error)
        owners.clear()

    def _drain(self) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not _STOP:
                job.finish(LLMUnavailable("the LLM engine is closed"))
