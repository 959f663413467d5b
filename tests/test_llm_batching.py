"""BatchQueue: one owner thread for a generate function that must not run on two threads at once."""

from __future__ import annotations

import threading
import time

import pytest

from rag_rec.llm.base import LLMUnavailable
from rag_rec.llm.batching import BatchQueue


class Engine:
    """A generate function that records its calls, fails if entered by two threads at once, and can hold its
    first call until the test lets it go."""

    def __init__(self, hold_first: bool = False, fail_on: str | None = None, short_by: int = 0):
        self.calls: list[list[str]] = []
        self.threads: set[str] = set()
        self.inside = 0
        self.overlapped = False
        self.entered, self.release = threading.Event(), threading.Event()
        self.hold_first, self.fail_on, self.short_by = hold_first, fail_on, short_by
        if not hold_first:
            self.release.set()

    def __call__(self, requests: list[str]) -> list[str]:
        self.inside += 1
        self.overlapped |= self.inside > 1
        try:
            self.calls.append(list(requests))
            self.threads.add(threading.current_thread().name)
            self.entered.set()
            self.release.wait(10)
            time.sleep(0.005)
            if self.fail_on is not None and self.fail_on in requests:
                raise RuntimeError(f"engine refused {self.fail_on}")
            out = [f"answer to {r}" for r in requests]
            return out[: len(out) - self.short_by]
        finally:
            self.inside -= 1


def wait_queued(queue: BatchQueue, n: int) -> None:
    deadline = time.monotonic() + 10
    while queue._queue.qsize() < n:
        assert time.monotonic() < deadline, "callers did not queue"
        time.sleep(0.001)


def submit_all(queue: BatchQueue, jobs: dict[str, list[str]]) -> tuple[dict, list[threading.Thread]]:
    results: dict[str, object] = {}

    def call(name: str, requests: list[str]) -> None:
        try:
            results[name] = queue.submit(requests)
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


def test_concurrent_callers_each_get_their_own_answers_from_one_thread_in_few_batches():
    engine = Engine(hold_first=True)
    queue = BatchQueue(engine, name="test-batches")
    first, first_threads = submit_all(queue, {"first": ["a1"]})
    assert engine.entered.wait(10)
    jobs = {f"caller{n}": [f"c{n}-q{m}" for m in range(n % 3 + 1)] for n in range(7)}
    results, threads = submit_all(queue, jobs)
    wait_queued(queue, len(jobs))
    engine.release.set()
    join(first_threads + threads)
    queue.close()

    assert first["first"] == ["answer to a1"]
    for name, requests in jobs.items():
        assert results[name] == [f"answer to {r}" for r in requests], name
    assert not engine.overlapped
    assert engine.threads == {"test-batches"}
    assert len(engine.calls) == 2 and sorted(engine.calls[1]) == sorted(r for rs in jobs.values() for r in rs)


def test_a_round_holds_at_most_max_batch_requests_but_never_splits_a_callers_list():
    engine = Engine(hold_first=True)
    queue = BatchQueue(engine, max_batch=4)
    _, first_threads = submit_all(queue, {"first": ["x"]})
    assert engine.entered.wait(10)
    jobs = {"big": [f"b{n}" for n in range(6)], **{f"small{n}": [f"s{n}"] for n in range(5)}}
    results, threads = submit_all(queue, jobs)
    wait_queued(queue, len(jobs))
    engine.release.set()
    join(first_threads + threads)
    queue.close()

    for name, requests in jobs.items():
        assert results[name] == [f"answer to {r}" for r in requests]
    for call in engine.calls[1:]:
        assert len(call) <= 4 or call == jobs["big"], call
    assert any(call == jobs["big"] for call in engine.calls)


def test_an_engine_error_reaches_every_caller_of_its_round_and_the_next_round_works():
    engine = Engine(hold_first=True, fail_on="bad")
    queue = BatchQueue(engine)
    _, first_threads = submit_all(queue, {"first": ["fine"]})
    assert engine.entered.wait(10)
    results, threads = submit_all(queue, {"one": ["bad"], "two": ["ok"]})
    wait_queued(queue, 2)
    engine.release.set()
    join(first_threads + threads)

    assert all(isinstance(results[n], RuntimeError) and "refused bad" in str(results[n]) for n in ("one", "two"))
    assert queue.submit(["later"]) == ["answer to later"]
    queue.close()


def test_a_short_answer_is_an_error_not_a_misaligned_result():
    queue = BatchQueue(Engine(short_by=1))
    with pytest.raises(LLMUnavailable, match="1 outputs for 2 requests"):
        queue.submit(["p", "q"])
    queue.close()


def test_close_finishes_the_round_in_progress_and_fails_the_queued_callers():
    engine = Engine(hold_first=True)
    queue = BatchQueue(engine)
    running, running_threads = submit_all(queue, {"running": ["r"]})
    assert engine.entered.wait(10)
    queued, queued_threads = submit_all(queue, {"queued": ["q"]})
    wait_queued(queue, 1)
    closer = threading.Thread(target=queue.close)
    closer.start()
    time.sleep(0.05)
    engine.release.set()
    join(running_threads + queued_threads + [closer])

    assert running["running"] == ["answer to r"]
    assert isinstance(queued["queued"], LLMUnavailable) and "closed" in str(queued["queued"])
    assert engine.calls == [["r"]]
    with pytest.raises(LLMUnavailable, match="closed"):
        queue.submit(["after"])
    queue.close()  # twice is fine


def test_nothing_to_generate_never_reaches_the_engine():
    engine = Engine()
    queue = BatchQueue(engine)
    assert queue.submit([]) == []
    queue.close()
    assert engine.calls == []
    with pytest.raises(ValueError, match="max_batch"):
        BatchQueue(engine, max_batch=0)
