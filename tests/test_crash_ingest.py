"""Crash safety of ingestion: kill -9 a process in the middle of add_products / add_events, restart on the same
data directory.

Every API write is committed to the ingest journal before it is applied, and a start replays the journal: after
a kill, every call that returned is in the catalogue, the index and the interactions; the call in flight is all
or nothing; no point or event is duplicated; and the restarted pipeline's index holds exactly its catalogue.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from rag_rec.retrieve.base import RetrievalRequest
from rag_rec.schemas import EventIn, EventsIn, ProductIn, ProductsIn
from rag_rec.settings import Settings

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BATCH = 20
CATEGORY = ["Electronics", "Camera & Photo", "Tripods & Monopods", "Tripod Heads"]

CHILD = textwrap.dedent(f"""
    import sys

    from rag_rec.pipeline import BundlePipeline
    from rag_rec.schemas import EventIn, EventsIn, ProductIn, ProductsIn
    from rag_rec.settings import Settings


    def batch(prefix, b):
        return ProductsIn(products=[ProductIn(id=f"{{prefix}}-{{b:05d}}-{{i}}", title=f"crash ingest tripod mount {{prefix}} {{b}} {{i}}",
                                              category={CATEGORY!r}, price=1.0 + i) for i in range({BATCH})])


    def events(prefix, b):
        return EventsIn(events=[EventIn(user_id=f"{{prefix}}-user", item_id=p.id, session_id=f"{{prefix}}-{{b}}", timestamp=b)
                                for p in batch(prefix, b - 1).products])


    if __name__ == "__main__":
        index, prefix = sys.argv[1], sys.argv[2]
        pipeline = BundlePipeline.from_settings(Settings(index={{"path": index}}, llm={{"backend": "none"}}))
        print("READY", len(pipeline.dataset.products), pipeline.store.count(), len(pipeline.interactions), flush=True)
        for b in range(100_000):
            print("BEGIN", b, flush=True)
            if b % 2:
                pipeline.add_events(events(prefix, b))
            else:
                pipeline.add_products(batch(prefix, b))
            print("DONE", b, flush=True)
""")


def batch(prefix: str, b: int) -> ProductsIn:
    return ProductsIn(products=[ProductIn(id=f"{prefix}-{b:05d}-{i}", title=f"crash ingest tripod mount {prefix} {b} {i}",
                                          category=CATEGORY, price=1.0 + i) for i in range(BATCH)])


def events(prefix: str, b: int) -> EventsIn:
    return EventsIn(events=[EventIn(user_id=f"{prefix}-user", item_id=p.id, session_id=f"{prefix}-{b}", timestamp=b)
                            for p in batch(prefix, b - 1).products])


def ingest_and_kill(index: Path, prefix: str, script: Path, rng: random.Random, min_done: int = 4,
                    startup_timeout_s: float = 300) -> dict:
    """Run the child until it has returned from `min_done`+ calls, SIGKILL it mid-call; its protocol lines."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen([sys.executable, str(script), str(index), prefix], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    seen = threading.Condition()

    def reader() -> None:
        for line in proc.stdout:
            if not line.split():
                continue
            with seen:
                lines.append(line.split())
                seen.notify_all()
        with seen:
            seen.notify_all()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    target = min_done + rng.randrange(4)
    deadline = time.monotonic() + startup_timeout_s
    try:
        with seen:
            while not any(parts[:2] == ["BEGIN", str(target)] for parts in lines):
                assert proc.poll() is None, f"ingest child exited early with {proc.returncode}: {lines[-3:]}"
                assert time.monotonic() < deadline, f"ingest child too slow: {lines[-3:]}"
                seen.wait(timeout=1)
        time.sleep(rng.uniform(0.0, 0.25))  # somewhere inside call `target` or a later one
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        thread.join(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    ready = next(parts for parts in lines if parts[0] == "READY")
    done = [int(parts[1]) for parts in lines if parts[0] == "DONE"]
    begun = [int(parts[1]) for parts in lines if parts[0] == "BEGIN"]
    assert done == list(range(len(done))) and len(done) >= min_done
    in_flight = begun[-1] if begun and begun[-1] not in done else None
    return {"catalogue": int(ready[1]), "indexed_at_start": int(ready[2]), "events_at_start": int(ready[3]),
            "done": done, "in_flight": in_flight}


def test_kill_9_during_ingestion_loses_no_acknowledged_write(tmp_path):
    from rag_rec.index import open_store
    from rag_rec.pipeline import BundlePipeline

    index = tmp_path / "index"
    settings = Settings(index={"path": index}, llm={"backend": "none"})
    script = tmp_path / "ingest_child.py"
    script.write_text(CHILD)
    rng = random.Random(20240611)
    products: set[str] = set()  # every product the journal holds after the kills
    n_events = 0
    base = base_events = None
    for prefix in ("CRASHA", "CRASHB"):  # the second child starts on the directory the first one crashed on
        run = ingest_and_kill(index, prefix, script, rng)
        if base is None:
            base, base_events = run["catalogue"], run["events_at_start"]
        # a start replays every write the crashed process acknowledged (and the call in flight, all or nothing)
        assert run["catalogue"] == base + len(products) and run["indexed_at_start"] == run["catalogue"]
        assert run["events_at_start"] == base_events + n_events
        acknowledged = {p.id for b in run["done"] if b % 2 == 0 for p in batch(prefix, b).products}
        in_flight = run["in_flight"]
        flying = {p.id for p in batch(prefix, in_flight).products} if in_flight is not None and in_flight % 2 == 0 \
            else set()
        store = open_store(settings.index)  # what the crash left in the index itself
        try:
            found = {r.id for r in store.retrieve(sorted(acknowledged | flying))}
            assert acknowledged <= found, f"{len(acknowledged - found)} products of returned calls were lost"
            assert found - acknowledged in (set(), flying), "the call in flight was half applied"
            assert store.count() == run["catalogue"] + len(found), "duplicate or stray points in the index"
        finally:
            store.close()

        restarted = BundlePipeline.from_settings(settings)
        try:
            held = {i for i in restarted.dataset.products if i.startswith(prefix)}
            assert acknowledged <= held and held - acknowledged in (set(), flying), "a product call was lost or split"
            assert restarted.store.count() == len(restarted.dataset.products) == run["catalogue"] + len(held)
            sessions = restarted.interactions.frame["session_id"]
            got = sessions[sessions.fillna("").str.startswith(f"{prefix}-")].value_counts().to_dict()
            wanted = {f"{prefix}-{b}": BATCH for b in run["done"] if b % 2}
            assert {k: v for k, v in got.items() if k in wanted} == wanted, "an event call was lost or duplicated"
            assert set(got) - set(wanted) <= {f"{prefix}-{in_flight}"} and all(v == BATCH for v in got.values())
            n_events = len(restarted.interactions) - base_events
            products |= {i for i in restarted.dataset.products if i.startswith("CRASH")}
            records = {r.id: r for r in restarted.store.retrieve(sorted(held))}
            assert all(records[i].payload["title"] == restarted.dataset.products[i].title for i in held)
        finally:
            restarted.close()

    pipeline = BundlePipeline.from_settings(settings)
    try:
        assert pipeline.health()["status"] == "ok"
        assert pipeline.store.count() == len(pipeline.dataset.products) == base + len(products)
        hits = pipeline.search_products("crash ingest tripod mount CRASHA 0 0", k=10)
        assert hits[0].id == "CRASHA-00000-0"
        anchor = "CRASHB-00000-0"
        result = pipeline.retriever.retrieve(RetrievalRequest(anchors=(anchor,), k=40))
        # the replayed session events made the batch's products co-purchase partners of each other
        bought_with = {c.id: c.evidence.get("co_purchases") for c in result.candidates if "cooc" in c.payload["found_by"]}
        assert {f"CRASHB-00000-{i}" for i in range(1, BATCH)} <= set(bought_with), result.candidates[:5]
        assert all(bought_with[f"CRASHB-00000-{i}"] == 1 for i in range(1, BATCH))  # one session, replayed once
    finally:
        pipeline.close()
