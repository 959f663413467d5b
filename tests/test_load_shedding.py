"""Short load tests of the API over the real pipeline: no errors under 30 clients, and shedding (503) without
crashing when max_concurrency is tiny. The full benchmark is bench/load_test.py."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

import httpx
import pytest
from test_serve_fixtures import API_KEY

from rag_rec.settings import ServeSettings

pytest_plugins = ("test_serve_fixtures",)
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

REPO = Path(__file__).resolve().parents[1]


def load_bench():
    sys.path.insert(0, str(REPO / "bench"))  # its sibling modules (provenance), as when run as a script
    spec = importlib.util.spec_from_file_location("rag_rec_load_test", REPO / "bench" / "load_test.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load_bench()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Its own real pipeline: the load writes events, which must not leak into the shared serve fixture."""
    from rag_rec.pipeline import BundlePipeline
    from rag_rec.settings import Settings

    p = BundlePipeline.from_settings(Settings(index={"path": tmp_path_factory.mktemp("index")},
                                              llm={"backend": "none"}))
    yield p
    p.close()


@pytest.fixture(scope="module")
def workload(bench, pipeline):
    users = sorted({str(u) for u in pipeline.dataset.interactions.frame["user_id"]})
    return bench.Workload.of(pipeline.dataset.products, users)


def settings(bench, max_concurrency: int) -> ServeSettings:
    return ServeSettings(api_keys=[API_KEY, bench.API_KEY], rate_limit_per_minute=1_000_000,
                         max_concurrency=max_concurrency, max_body_bytes=64 * 1024)


def test_thirty_clients_ten_seconds_without_errors(bench, workload, live_server, pipeline):
    base = live_server(pipeline, settings(bench, 64))
    result = asyncio.run(bench.run_load(base, workload, clients=30, duration_s=10, seed=3, progress=False))
    summary = bench.summarize(result)
    assert summary["requests"] >= 30, summary
    assert summary["errors"] == 0, {k: v["error_examples"] for k, v in summary["endpoints"].items() if v["errors"]}
    assert summary["shed"] == 0  # 30 clients never reach max_concurrency 64
    assert set(summary["endpoints"]) == set(bench.ENDPOINT_NAMES.values())  # every endpoint was exercised
    assert all(e["ok"] > 0 for e in summary["endpoints"].values())
    assert summary["api_overhead_bundles_ms"]["n"] > 0
    assert httpx.get(f"{base}/healthz", timeout=30).status_code == 200


def test_tiny_max_concurrency_sheds_with_503_and_stays_healthy(bench, workload, live_server, pipeline):
    base = live_server(pipeline, settings(bench, 2))
    result = asyncio.run(bench.run_load(base, workload, clients=30, duration_s=8, seed=4, progress=False,
                                        mix={"bundles": 3, "search": 1, "chat": 1}))
    summary = bench.summarize(result)
    statuses = {int(s) for e in summary["endpoints"].values() for s in e["statuses"]}
    assert summary["shed"] > 0, summary
    assert 503 in statuses
    assert summary["errors"] == 0 and summary["server_errors_5xx_other_than_503"] == 0, summary
    assert summary["ok"] > 0  # admitted requests are still answered
    assert httpx.get(f"{base}/healthz", timeout=30).status_code == 200
    after = httpx.post(f"{base}/v1/bundles", json={"need": "camera accessories"}, timeout=30)
    assert after.status_code == 200 and after.json()["bundles"]
    shed = [s for s in result.samples if s.outcome == "shed"]
    assert all(s.status in (429, 503) for s in shed)


@pytest.mark.parametrize(("status", "body", "outcome"), [
    (200, {"bundles": []}, "ok"),
    (503, {"error": "overloaded", "detail": "server busy"}, "shed"),
    (429, {"error": "rate_limited", "detail": "slow down"}, "shed"),
    (503, {"error": "service_unavailable", "detail": "the ingest journal refused the write"}, "error"),
    (503, None, "error"),
    (500, {"error": "internal_error"}, "error"),
])
def test_only_the_servers_own_refusals_count_as_shed(bench, status, body, outcome):
    response = httpx.Response(status, json=body) if body is not None else httpx.Response(status, text="<html>")
    assert bench._outcome(response) == outcome


def test_a_health_check_that_is_not_200_is_an_error(bench, workload):
    async def probe(status):
        transport = httpx.MockTransport(lambda request: httpx.Response(status, json={"error": "overloaded"}))
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
            return await bench._healthz(client, workload, None)

    assert asyncio.run(probe(503)).outcome == "error"
    assert asyncio.run(probe(200)).outcome == "ok"
