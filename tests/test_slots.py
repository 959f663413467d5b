"""ComputeSlots: at most n threads run service code; a thread blocked on the LLM frees its slot meanwhile."""

from __future__ import annotations

import threading
import time

import pytest

from rag_rec.slots import ComputeSlots, waiting


def test_one_slot_runs_one_call_at_a_time_and_reports_the_wait():
    slots = ComputeSlots(1)
    inside, most, lock = 0, 0, threading.Lock()
    waits: list[float] = []

    def work():
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        time.sleep(0.05)
        with lock:
            inside -= 1
        return "done"

    def call():
        value, queued = slots.run(work)
        assert value == "done"
        waits.append(queued)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert most == 1
    assert max(waits) >= 0.1 and min(waits) < 0.04


def test_a_thread_waiting_on_the_llm_frees_its_slot_and_takes_it_back():
    slots = ComputeSlots(1)
    llm_answered, other_ran = threading.Event(), threading.Event()
    order: list[str] = []

    def llm_request():
        with waiting():
            order.append("llm waits")
            assert llm_answered.wait(10)
        order.append("llm resumes")

    holder = threading.Thread(target=slots.run, args=(llm_request,))
    holder.start()
    while not order:
        time.sleep(0.001)
    _, queued = slots.run(lambda: (order.append("other runs"), other_ran.set()))
    assert queued < 1.0 and other_ran.is_set()
    llm_answered.set()
    holder.join(10)
    assert order == ["llm waits", "other runs", "llm resumes"]
    assert slots._free.acquire(blocking=False), "the slot was given back"


def test_waiting_without_a_slot_changes_nothing_and_slots_are_checked():
    slots = ComputeSlots(2)
    with waiting():
        pass
    assert slots._free.acquire(blocking=False) and slots._free.acquire(blocking=False)
    assert not slots._free.acquire(blocking=False)
    with pytest.raises(ValueError, match=">= 1"):
        ComputeSlots(0)
