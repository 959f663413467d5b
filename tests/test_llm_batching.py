"""ContinuousBatcher: one owner thread for an engine that must not be called from two threads at once, with
requests joining the running batch between steps."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from rag_rec.llm.base import LLMUnavailable
from rag_rec.llm.batching import ContinuousBatcher


class Engine:
    """A stepped engine: request "name:n" finishes after n steps (1 without ":n") with "answer to name". It records
    every call, notes calls from two threads at once, and when gated runs a step only when the test allows one."""

    def __init__(self, gated: bool = False, fail_step_on: str | None = None, fail_add_on: str | None = None,
                 drop: str | None = None):
        self.running: dict[int, list] = {}
        self.keys = itertools.count()
        self.log: list[tuple[str, list[str]]] = []
        self.threads: set[str] = set()
        self.inside = 0
        self.overlapped = False
        self.most_running = 0
        self.aborted: list[int] = []
        self.steps = 0
        self.gated, self.permits = gated, threading.Semaphore(0)
        self.waiting = False  # a step is waiting for the test to allow it
        self.fail_step_on, self.fail_add_on, self.drop = fail_step_on, fail_add_on, drop

    def _enter(self) -> None:
        self.inside += 1
        self.overlapped |= self.inside > 1
        self.threads.add(threading.current_thread().name)

    def allow(self, steps: int = 1) -> None:
        for _ in range(steps):
            self.permits.release()

    def add(self, requests: list[str]) -> list[int]:
        self._enter()
        try:
            if self.fail_add_on in requests:
                raise ValueError(f"engine refused {self.fail_add_on}")
            keys = []
            for r in requests:
                name, _, steps = r.partition(":")
                key = next(self.keys)
                self.running[key] = [name, int(steps or 1)]
                keys.append(key)
            self.log.append(("add", list(requests)))
            return keys
        finally:
            self.inside -= 1

    def step(self) -> list[tuple[int, str]]:
        self._enter()
        try:
            if self.gated:
                self.waiting = True
                assert self.permits.acquire(timeout=10), "the test allowed no step"
                self.waiting = False
            time.sleep(0.001)
            self.steps += 1
            self.most_running = max(self.most_running, len(self.running))
            self.log.append(("step", [name for name, _ in self.running.values()]))
            if any(name == self.fail_step_on for name, _ in self.running.values()):
                raise RuntimeError(f"engine failed on {self.fail_step_on}")
            finished = []
            for key, state in list(self.running.items()):
                state[1] -= 1
                if state[0] == self.drop:
                    del self.running[key]
                elif state[1] <= 0:
                    del self.running[key]
                    finished.append((key, f"answer to {state[0]}"))
            return finished
        finally:
            self.inside -= 1

    def has_unfinished(self) -> bool:
        return bool(self.running)

    def abort(self, keys: list[int]) -> None:
        self.aborted += keys
        for key in keys:
            self.running.pop(key, None)


def submit_all(batcher: ContinuousBatcher, jobs: dict[str, list[str]]) -> tuple[dict, list[threading.Thread]]:
    results: dict[str, object] = {}

    def call(name: str, requests: list[str]) -> None:
        try:
            results[name] = batcher.submit(requests)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            results[name] = exc

    threads = [threading.Thread(target=call, args=item) for item in jobs.items()]
    for t in threads:
        t.start()
    return results, threads


def join(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads), "a caller is still waiting"


def until(condition, what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.001)


def answers(requests: list[str]) -> list[str]:
    return [f"answer to {r.partition(':')[0]}" for r in requests]


def test_callers_on_many_threads_get_their_own_answers_from_one_engine_thread():
    engine = Engine()
    batcher = ContinuousBatcher(engine, name="test-batches")
    jobs = {f"caller{n}": [f"c{n}q{m}:{(n + m) % 4 + 1}" for m in range(n % 3 + 1)] for n in range(12)}
    results, threads = submit_all(batcher, jobs)
    join(threads)
    batcher.close()

    for name, requests in jobs.items():
        assert results[name] == answers(requests), name
    assert not engine.overlapped
    assert engine.threads == {"test-batches"}


def test_a_request_joins_the_running_batch_and_is_answered_before_a_longer_one_finishes():
    engine = Engine(gated=True)
    batcher = ContinuousBatcher(engine)
    long, long_threads = submit_all(batcher, {"long": ["long:30"]})
    engine.allow(3)
    until(lambda: engine.steps == 3 and engine.waiting, "the long request did not start")
    short, short_threads = submit_all(batcher, {"short": ["short:2"]})
    engine.allow()
    until(lambda: len(engine.running) == 2 and engine.waiting, "the short request did not join the running batch")
    engine.allow(2)
    join(short_threads)

    assert short["short"] == ["answer to short"]
    assert "long" not in long and long_threads[0].is_alive()
    assert engine.log[4:7] == [("step", ["long"]), ("add", ["short:2"]), ("step", ["long", "short"])]
    engine.allow(30)
    join(long_threads)
    assert long["long"] == ["answer to long"]
    batcher.close()


def test_at_most_max_batch_requests_decode_at_once_and_a_larger_list_runs_alone():
    engine = Engine(gated=True)
    batcher = ContinuousBatcher(engine, max_batch=3)
    first, first_threads = submit_all(batcher, {"first": ["f:2"]})
    until(lambda: len(engine.running) == 1, "the first request did not start")
    jobs = {"big": [f"b{n}:2" for n in range(5)], **{f"small{n}": [f"s{n}:3"] for n in range(4)}}
    results, threads = submit_all(batcher, jobs)
    time.sleep(0.05)
    engine.allow(200)
    join(first_threads + threads)
    batcher.close()

    for name, requests in jobs.items():
        assert results[name] == answers(requests), name
    for event, running in engine.log:
        if event == "step":
            assert len(running) <= 3 or set(running) == {f"b{n}" for n in range(5)}, running
    assert engine.most_running == 5  # the big list, alone


def test_a_callers_answers_keep_the_order_of_its_requests():
    batcher = ContinuousBatcher(Engine())
    assert batcher.submit(["slow:5", "fast:1", "mid:3"]) == ["answer to slow", "answer to fast", "answer to mid"]
    batcher.close()


def test_a_step_error_reaches_every_caller_in_flight_aborts_them_and_later_callers_are_served():
    engine = Engine(gated=True, fail_step_on="bad")
    batcher = ContinuousBatcher(engine)
    one, one_threads = submit_all(batcher, {"one": ["fine:5"]})
    until(lambda: engine.waiting, "the first caller was not admitted")
    results, threads = submit_all(batcher, {"two": ["bad:5"]})
    engine.allow()
    until(lambda: len(engine.running) == 2 and engine.waiting, "the second caller was not admitted")
    engine.allow()
    join(one_threads + threads)
    results.update(one)

    assert all(isinstance(results[n], RuntimeError) and "failed on bad" in str(results[n]) for n in ("one", "two"))
    assert len(engine.aborted) == 2 and not engine.running
    engine.gated = False
    assert batcher.submit(["later"]) == ["answer to later"]
    batcher.close()


def test_a_refused_request_list_reaches_only_its_caller():
    engine = Engine(fail_add_on="refused")
    batcher = ContinuousBatcher(engine)
    results, threads = submit_all(batcher, {"one": ["fine:3"], "two": ["refused", "other"]})
    join(threads)
    batcher.close()

    assert results["one"] == ["answer to fine"]
    assert isinstance(results["two"], ValueError) and "refused" in str(results["two"])


def test_requests_the_engine_drops_are_an_error_not_a_hang():
    batcher = ContinuousBatcher(Engine(drop="lost"))
    with pytest.raises(LLMUnavailable, match="dropped"):
        batcher.submit(["lost:2"])
    batcher.close()


def test_an_engine_that_cannot_say_whether_it_is_busy_fails_its_callers_instead_of_hanging_them():
    class Broken(Engine):
        def has_unfinished(self) -> bool:
            raise RuntimeError("engine closed under the batcher")

    batcher = ContinuousBatcher(Broken())
    with pytest.raises(RuntimeError, match="closed under"):
        batcher.submit(["slow:3"])
    assert batcher.submit(["fast"]) == ["answer to fast"]  # finished in its first step: nothing left to ask
    batcher.close()


def test_a_bug_in_the_engine_thread_is_logged_and_fails_every_waiting_caller_and_later_ones(caplog):
    engine = Engine(gated=True)
    batcher = ContinuousBatcher(engine, max_batch=1)
    running, running_threads = submit_all(batcher, {"running": ["r:3"]})
    until(lambda: engine.waiting, "the first request did not start")
    held, held_threads = submit_all(batcher, {"held": ["h"]})
    time.sleep(0.05)
    batcher._admit = None  # the thread's next admission raises TypeError outside any handler
    engine.allow(1)
    join(running_threads + held_threads)

    assert isinstance(running["running"], LLMUnavailable) and isinstance(held["held"], LLMUnavailable)
    assert "the LLM engine thread failed" in caplog.text and "TypeError" in caplog.text
    with pytest.raises(LLMUnavailable, match="closed"):
        batcher.submit(["after"])


def test_close_lets_requests_in_flight_finish_and_fails_the_callers_not_yet_admitted():
    engine = Engine(gated=True)
    batcher = ContinuousBatcher(engine, max_batch=1)
    running, running_threads = submit_all(batcher, {"running": ["r:3"]})
    until(lambda: len(engine.running) == 1, "the first request did not start")
    held, held_threads = submit_all(batcher, {"held": ["h"]})
    time.sleep(0.05)
    closer = threading.Thread(target=batcher.close)
    closer.start()
    time.sleep(0.05)
    engine.allow(3)
    join(running_threads + held_threads + [closer])

    assert running["running"] == ["answer to r"]
    assert isinstance(held["held"], LLMUnavailable) and "closed" in str(held["held"])
    assert [requests for event, requests in engine.log if event == "add"] == [["r:3"]]
    with pytest.raises(LLMUnavailable, match="closed"):
        batcher.submit(["after"])
    batcher.close()  # twice is fine


def test_nothing_to_generate_never_reaches_the_engine():
    engine = Engine()
    batcher = ContinuousBatcher(engine)
    assert batcher.submit([]) == []
    batcher.close()
    assert engine.log == []
    with pytest.raises(ValueError, match="max_batch"):
        ContinuousBatcher(engine, max_batch=0)


def test_a_wedged_engine_frees_its_callers_and_their_requests_are_aborted_when_it_moves():
    engine = Engine(gated=True)
    batcher = ContinuousBatcher(engine, max_batch=8)
    started = time.monotonic()
    with pytest.raises(LLMUnavailable, match="no progress"):
        batcher.submit(["stuck:3"], timeout_s=0.5)  # the engine's step waits for a permit that never comes
    assert time.monotonic() - started < 5
    engine.allow(10)  # the engine moves again: the abandoned request is aborted, later callers are served
    assert batcher.submit(["next"], timeout_s=5) == ["answer to next"]
    assert engine.aborted and "stuck" not in [name for name, _ in engine.running.values()]
    batcher.close(timeout_s=5)


def test_a_long_generation_that_keeps_stepping_is_not_timed_out():
    engine = Engine()
    batcher = ContinuousBatcher(engine, max_batch=8)
    assert batcher.submit(["long:400"], timeout_s=0.2) == ["answer to long"]  # ~0.4 s of steps, each in time
    batcher.close(timeout_s=5)
