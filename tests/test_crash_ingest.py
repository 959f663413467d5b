"""Crash safety of ingestion: kill -9 a process in the middle of add_products, reopen the same index.

The pipeline keeps its catalogue in memory (rebuilt from the dataset on start), so what survives a crash is
the index: every add_products call that returned is durable there, the call in flight is all or nothing and
no point is duplicated. On restart the pipeline's sync drops index points its catalogue does not know (they
would crowd real products out of retrieval); replaying the ingest calls makes catalogue and index agree.
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

from rag_rec.schemas import BundleRequest, ProductIn, ProductsIn
from rag_rec.settings import Settings

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BATCH = 20
CATEGORY = ["Electronics", "Camera & Photo", "Tripods & Monopods", "Tripod Heads"]

CHILD = textwrap.dedent(f"""
    import sys

    from rag_rec.pipeline import BundlePipeline
    from rag_rec.schemas import ProductIn, ProductsIn
    from rag_rec.settings import Settings


    def batch(prefix, b):
        return ProductsIn(products=[ProductIn(id=f"{{prefix}}-{{b:05d}}-{{i}}", title=f"crash ingest tripod mount {{prefix}} {{b}} {{i}}",
                                              category={CATEGORY!r}, price=1.0 + i) for i in range({BATCH})])


    if __name__ == "__main__":
        index, prefix = sys.argv[1], sys.argv[2]
        pipeline = BundlePipeline.from_settings(Settings(index={{"path": index}}, llm={{"backend": "none"}}))
        print("READY", len(pipeline.dataset.products), pipeline.store.count(), flush=True)
        for b in range(100_000):
            print("BEGIN", b, flush=True)
            pipeline.add_products(batch(prefix, b))
            print("DONE", b, flush=True)
""")


def batch(prefix: str, b: int) -> ProductsIn:
    return ProductsIn(products=[ProductIn(id=f"{prefix}-{b:05d}-{i}", title=f"crash ingest tripod mount {prefix} {b} {i}",
                                          category=CATEGORY, price=1.0 + i) for i in range(BATCH)])


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
    return {"catalogue": int(ready[1]), "indexed_at_start": int(ready[2]), "done": done, "in_flight": in_flight}


def test_kill_9_during_add_products_leaves_a_consistent_index(tmp_path):
    from rag_rec.index import open_store
    from rag_rec.pipeline import BundlePipeline

    index = tmp_path / "index"
    settings = Settings(index={"path": index}, llm={"backend": "none"})
    script = tmp_path / "ingest_child.py"
    script.write_text(CHILD)
    rng = random.Random(20240611)
    persisted: set[str] = set()
    replay: list[ProductsIn] = []
    base = None
    for prefix in ("CRASHA", "CRASHB"):  # the second child opens the index the first one crashed on
        run = ingest_and_kill(index, prefix, script, rng)
        base = run["catalogue"] if base is None else base
        assert run["indexed_at_start"] == base, "a restarted pipeline's index holds exactly its catalogue"
        # What survives a crash is the index: every returned call, the call in flight all or nothing, no
        # duplicate points.
        acknowledged = {p.id for b in run["done"] for p in batch(prefix, b).products}
        in_flight = {p.id for p in batch(prefix, run["in_flight"]).products} if run["in_flight"] is not None \
            else set()
        store = open_store(settings.index)
        try:
            found = {r.id for r in store.retrieve(sorted(acknowledged | in_flight))}
            assert acknowledged <= found, f"{len(acknowledged - found)} products of returned calls were lost"
            assert found - acknowledged in (set(), in_flight), "the call in flight was half applied"
            assert store.count() == base + len(found), "duplicate or stray points in the index"
        finally:
            store.close()
        persisted |= found
        replay += [batch(prefix, b) for b in run["done"]]
        if run["in_flight"] is not None:
            replay.append(batch(prefix, run["in_flight"]))

    # The catalogue is rebuilt from the dataset on start; the sync drops index points it does not know, so
    # they cannot crowd real products out of retrieval.
    pipeline = BundlePipeline.from_settings(settings)
    try:
        assert pipeline.health()["status"] == "ok"
        assert len(pipeline.dataset.products) == base and pipeline.store.count() == base
        assert pipeline.store.retrieve(sorted(persisted)) == []
        response = pipeline.recommend(BundleRequest(need="crash ingest tripod mount", use_llm=False))
        assert response.bundles, response.notes
        assert not any(it.id.startswith("CRASH") for b in response.bundles for it in b.items)

        # Re-sync: the client replays the calls of its ingest job (idempotent by id) and both sides agree.
        for products in replay:
            pipeline.add_products(products)
            pipeline.add_products(products)
        replayed = {p.id for products in replay for p in products.products}
        assert persisted <= replayed
        assert pipeline.store.count() == len(pipeline.dataset.products) == base + len(replayed)
        records = {r.id: r for r in pipeline.store.retrieve(sorted(replayed))}
        assert all(records[i].payload["title"] == pipeline.dataset.products[i].title for i in replayed)
        hits = pipeline.search_products("crash ingest tripod mount CRASHA 0 0", k=10)
        assert any(h.id.startswith("CRASH") for h in hits)
    finally:
        pipeline.close()
