"""Load test of the served API: `rag-rec serve` on loopback with the real pipeline, hit by concurrent clients.

Phases (each against its own `rag-rec serve` subprocess on a free 127.0.0.1 port, same index directory):
  calibrate  1 client, sequential POST /v1/bundles: the API's own overhead with no queueing
  load       50 clients for 60 s, mixed endpoints, max_concurrency 64 (nothing should be shed or fail)
  shed       50 clients for 20 s with max_concurrency 4: the server must answer 503/429, never crash

The composer is the heuristic one (llm.backend=none): the CPU vLLM engine decodes a few requests a second and
cannot serve 50 clients; the LLM path's robustness is covered by eval/redteam. The server runs with
OMP_NUM_THREADS=1 (torch intra-op threads): requests already run in parallel in the threadpool, and on a
busy 2-core machine torch's default 2 threads made one query encoding ~40x slower (spinning OpenMP workers).

A client counts a response as `shed` only when the server refused it on purpose (429 `rate_limited`, 503
`overloaded`), as an `error` for any other non-2xx status (a 503 from a failing index or journal, a /healthz that
is not 200), a transport error, a timeout, or a chat stream that carries an `error` event or does not end with
`done`. The load phase fails the run if it sheds anything.
"API overhead" of /v1/bundles = HTTP latency measured by the client - the time it queued for a compute slot
(`Server-Timing: slot;dur=`) - `latency_ms` reported by the service. The slot wait is reported beside it; the two
together are `http_minus_service_bundles_ms` (the overhead as sessions 1-15 reported it).

    .venv/bin/python bench/load_test.py                   # all phases, writes bench/results/load.json
    .venv/bin/python bench/load_test.py --duration 10 --clients 20 --out /tmp/load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

from rag_rec.settings import Settings

import provenance

REPO = Path(__file__).resolve().parents[1]
API_KEY = "load-test-key"
SHED_STATUSES = {429: "rate_limited", 503: "overloaded"}  # status: the body's error code
MIX = {"bundles": 35, "chat": 12, "copy": 10, "search": 18, "events": 10, "healthz": 15}
NEEDS = ["accessories for my new DSLR camera", "a home office desk setup", "gaming on the go",
         "travel kit for a laptop", "better sound for my TV", "protect and charge my tablet",
         "a camcorder with spare batteries", "networking for a small office", "run and listen to music",
         "a beginner photography kit under $300"]
QUERIES = ["camera bag", "hdmi cable", "memory card", "usb hub", "wireless mouse", "tripod", "headphones",
           "laptop sleeve", "battery charger", "router"]
CHATS = ["I need accessories for my new camera", "something for working from home, under $200",
         "a gift for a gamer", "I'm looking for a travel kit for my laptop", "speakers and cables for my TV"]
console = Console(stderr=True)


@dataclass(frozen=True)
class Workload:
    """Real ids the clients send: catalogue products and users with history."""

    product_ids: list[str]
    user_ids: list[str]
    copy_ids: list[str]  # products with a real title: copy for a placeholder-titled one is refused (422)

    @classmethod
    def of(cls, products: dict, user_ids: list[str]) -> Workload:
        return cls(sorted(products), user_ids, sorted(i for i, p in products.items() if not p.placeholder))

    @classmethod
    def from_data(cls, data_dir: Path = REPO / "data" / "amazon-bundles" / "electronic") -> Workload:
        from rag_rec.data import load_dataset

        dataset = load_dataset(f"amazon:{data_dir}")
        return cls.of(dataset.products, sorted({str(u) for u in dataset.interactions.frame["user_id"]}))


@dataclass
class Sample:
    endpoint: str
    status: int            # 0 for a transport error or timeout
    latency_ms: float
    outcome: str           # ok | shed | error
    overhead_ms: float | None = None
    detail: str | None = None
    slot_ms: float | None = None  # queued for a compute slot (the response's Server-Timing `slot`)


@dataclass
class PhaseResult:
    samples: list[Sample] = field(default_factory=list)
    wall_s: float = 0.0


def _outcome(r: httpx.Response) -> str:
    """ok; shed only for the server's own refusals (429 rate_limited, 503 overloaded); anything else is an error,
    a 503 from a failing backend (index, journal) included."""
    if 200 <= r.status_code < 300:
        return "ok"
    if r.status_code in SHED_STATUSES:
        try:
            code = r.json().get("error")
        except ValueError:
            code = None
        if SHED_STATUSES[r.status_code] == code:
            return "shed"
    return "error"


async def _bundles(client: httpx.AsyncClient, wl: Workload, rng: random.Random) -> Sample:
    body: dict = {"k": 3, "bundle_size": 3}
    shape = rng.random()
    if shape < 0.4:
        body["anchor_items"] = rng.sample(wl.product_ids, rng.choice((1, 2)))
    elif shape < 0.7:
        body["need"] = rng.choice(NEEDS)
    elif shape < 0.85:
        body["user_id"] = rng.choice(wl.user_ids)
    else:
        body |= {"anchor_items": [rng.choice(wl.product_ids)], "need": rng.choice(NEEDS),
                 "user_id": rng.choice(wl.user_ids)}
    t0 = time.perf_counter()
    r = await client.post("/v1/bundles", json=body)
    ms = 1000 * (time.perf_counter() - t0)
    overhead = slot = None
    if r.status_code == 200:
        slot = server_timing(r.headers.get("server-timing", "")).get("slot", 0.0)
        overhead = ms - float(r.json()["latency_ms"]) - slot
    return Sample("POST /v1/bundles", r.status_code, ms, _outcome(r), overhead,
                  None if r.status_code < 400 else r.text[:200], slot)


def server_timing(header: str) -> dict[str, float]:
    """`name;dur=ms, ...` -> {name: ms}."""
    out = {}
    for metric in header.split(","):
        name, *params = (part.strip() for part in metric.split(";"))
        for param in params:
            if param.startswith("dur="):
                out[name] = float(param[4:])
    return out


async def _chat(client: httpx.AsyncClient, wl: Workload, rng: random.Random) -> Sample:
    body = {"messages": [{"role": "user", "content": rng.choice(CHATS)}]}
    if rng.random() < 0.3:
        body["user_id"] = rng.choice(wl.user_ids)
    t0 = time.perf_counter()
    events: list[str] = []
    async with client.stream("POST", "/v1/chat", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            ms = 1000 * (time.perf_counter() - t0)
            return Sample("POST /v1/chat", r.status_code, ms, _outcome(r), detail=r.text[:200])
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                events.append(line[7:].strip())
    ms = 1000 * (time.perf_counter() - t0)
    if "error" in events or not events or events[-1] != "done":
        return Sample("POST /v1/chat", 200, ms, "error", detail=f"stream events {events}")
    return Sample("POST /v1/chat", 200, ms, "ok")


async def _copy(client: httpx.AsyncClient, wl: Workload, rng: random.Random) -> Sample:
    body = {"items": rng.sample(wl.copy_ids, rng.choice((2, 3))), "tone": rng.choice(("friendly", "premium"))}
    t0 = time.perf_counter()
    r = await client.post("/v1/copy", json=body)
    return Sample("POST /v1/copy", r.status_code, 1000 * (time.perf_counter() - t0), _outcome(r),
                  detail=None if r.status_code < 400 else r.text[:200])


async def _search(client: httpx.AsyncClient, wl: Workload, rng: random.Random) -> Sample:
    t0 = time.perf_counter()
    r = await client.get("/v1/products/search", params={"q": rng.choice(QUERIES), "k": 10})
    return Sample("GET /v1/products/search", r.status_code, 1000 * (time.perf_counter() - t0),
                  _outcome(r), detail=None if r.status_code < 400 else r.text[:200])


async def _events(client: httpx.AsyncClient, wl: Workload, rng: random.Random) -> Sample:
    user = f"load-user-{rng.randrange(200)}"
    session = f"load-session-{rng.randrange(10_000)}"
    events = [{"user_id": user, "item_id": i, "event": rng.choice(("view", "cart", "purchase")),
               "session_id": session} for i in rng.sample(wl.product_ids, rng.randint(1, 4))]
    t0 = time.perf_counter()
    r = await client.post("/v1/events", json={"events": events}, headers={"X-API-Key": API_KEY})
    return Sample("POST /v1/events", r.status_code, 1000 * (time.perf_counter() - t0), _outcome(r),
                  detail=None if r.status_code < 400 else r.text[:200])


async def _healthz(client: httpx.AsyncClient, wl: Workload, rng: random.Random) -> Sample:
    t0 = time.perf_counter()
    r = await client.get("/healthz")  # never shed: a 503 here is the service reporting an error
    return Sample("GET /healthz", r.status_code, 1000 * (time.perf_counter() - t0),
                  "ok" if r.status_code == 200 else "error",
                  detail=None if r.status_code < 400 else r.text[:200])


CALLS = {"bundles": _bundles, "chat": _chat, "copy": _copy, "search": _search, "events": _events,
         "healthz": _healthz}
ENDPOINT_NAMES = {"bundles": "POST /v1/bundles", "chat": "POST /v1/chat", "copy": "POST /v1/copy",
                  "search": "GET /v1/products/search", "events": "POST /v1/events", "healthz": "GET /healthz"}


async def run_load(base_url: str, workload: Workload, *, clients: int, duration_s: float,
                   mix: dict[str, int] | None = None, seed: int = 0, max_requests_per_client: int = 100_000,
                   timeout_s: float = 60.0, progress: bool = True) -> PhaseResult:
    """`clients` concurrent loops, each sending one request at a time until `duration_s` has passed."""
    mix = mix or MIX
    kinds, weights = list(mix), list(mix.values())
    deadline = time.monotonic() + duration_s
    result = PhaseResult()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client_loop(n: int, client: httpx.AsyncClient) -> None:
        rng = random.Random(seed * 1000 + n)
        for _ in range(max_requests_per_client):
            if time.monotonic() >= deadline:
                return
            kind = rng.choices(kinds, weights)[0]
            t0 = time.perf_counter()
            try:
                sample = await CALLS[kind](client, workload, rng)
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                sample = Sample(ENDPOINT_NAMES[kind], 0, 1000 * (time.perf_counter() - t0), "error",
                                detail=f"{type(exc).__name__}: {exc}"[:200])
            result.samples.append(sample)
            if sample.outcome == "shed":  # a polite client backs off a little before trying again
                await asyncio.sleep(rng.uniform(0.05, 0.2))

    async def ticker() -> None:
        while time.monotonic() < deadline:
            await asyncio.sleep(10)
            ok = sum(s.outcome == "ok" for s in result.samples)
            console.log(f"  {len(result.samples)} requests, {ok} ok, "
                        f"{sum(s.outcome == 'shed' for s in result.samples)} shed, "
                        f"{sum(s.outcome == 'error' for s in result.samples)} errors")

    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s, limits=limits) as client:
        tick = asyncio.create_task(ticker()) if progress else None
        await asyncio.wait_for(asyncio.gather(*(client_loop(n, client) for n in range(clients))),
                               timeout=duration_s + timeout_s + 30)
        if tick is not None:
            tick.cancel()
    result.wall_s = time.perf_counter() - t0
    return result


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def _tail(values: list[float]) -> dict[str, float | None]:
    return {"p50": _pct(values, 50), "p95": _pct(values, 95), "p99": _pct(values, 99)}


def summarize(result: PhaseResult) -> dict:
    """Per endpoint: count, ok, shed, errors, p50/p95/p99 latency of answered requests; API overhead."""
    by_endpoint: dict[str, list[Sample]] = {}
    for s in result.samples:
        by_endpoint.setdefault(s.endpoint, []).append(s)
    endpoints = {}
    for name in sorted(by_endpoint):
        samples = by_endpoint[name]
        answered = [s.latency_ms for s in samples if s.outcome == "ok"]
        shed = [s.latency_ms for s in samples if s.outcome == "shed"]
        errors = [s for s in samples if s.outcome == "error"]
        endpoints[name] = {
            "count": len(samples), "ok": len(answered), "shed": len(shed), "errors": len(errors),
            "statuses": {str(k): v for k, v in sorted(_counts(s.status for s in samples).items())},
            "p50_ms": _pct(answered, 50), "p95_ms": _pct(answered, 95), "p99_ms": _pct(answered, 99),
            "shed_p50_ms": _pct(shed, 50),
            "error_examples": sorted({s.detail or str(s.status) for s in errors})[:3],
        }
    overhead = [s.overhead_ms for s in result.samples if s.overhead_ms is not None]
    slot = [s.slot_ms for s in result.samples if s.slot_ms is not None]
    queue_and_overhead = [s.overhead_ms + s.slot_ms for s in result.samples if s.overhead_ms is not None]
    total = len(result.samples)
    return {
        "requests": total, "wall_s": round(result.wall_s, 1), "requests_per_s": round(total / result.wall_s, 1),
        "ok": sum(e["ok"] for e in endpoints.values()), "shed": sum(e["shed"] for e in endpoints.values()),
        "errors": sum(e["errors"] for e in endpoints.values()),
        "server_errors_5xx_other_than_503": sum(1 for s in result.samples if s.status >= 500 and s.status != 503),
        "endpoints": endpoints,
        "api_overhead_bundles_ms": {**_tail(overhead), "n": len(overhead)},
        "compute_slot_wait_bundles_ms": _tail(slot),
        "http_minus_service_bundles_ms": _tail(queue_and_overhead),
    }


def _counts(values) -> dict:
    out: dict = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve_subprocess(index_dir: Path, *, max_concurrency: int, rate_limit_per_minute: int = 1_000_000,
                     log_path: Path | None = None, startup_timeout_s: float = 300) -> Iterator[str]:
    """`rag-rec serve` (real pipeline, heuristic composer) on a free loopback port; yields its base URL."""
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", OPENBLAS_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS=os.environ.get("LOAD_TEST_OMP_THREADS", "1"),
               RAG_REC_INDEX__PATH=str(index_dir), RAG_REC_LLM__BACKEND="none",
               RAG_REC_SERVE__HOST="127.0.0.1", RAG_REC_SERVE__MAX_CONCURRENCY=str(max_concurrency),
               RAG_REC_SERVE__RATE_LIMIT_PER_MINUTE=str(rate_limit_per_minute),
               RAG_REC_SERVE__API_KEYS=json.dumps([API_KEY]))
    env.pop("RAG_REC_CONFIG", None)
    log = open(log_path or os.devnull, "ab")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, "-m", "rag_rec.cli", "serve", "--port", str(port)], cwd=REPO,
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"`rag-rec serve` exited with {proc.returncode} during startup (log: {log_path})")
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"`rag-rec serve` not ready after {startup_timeout_s:.0f} s (log: {log_path})")
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def calibrate(base_url: str, workload: Workload, *, requests: int = 60, seed: int = 7) -> PhaseResult:
    """One client, one request at a time: the API overhead without queueing."""
    rng = random.Random(seed)
    result = PhaseResult()
    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        for _ in range(requests):
            result.samples.append(await _bundles(client, workload, rng))
    result.wall_s = time.perf_counter() - t0
    return result


def print_table(title: str, summary: dict) -> None:
    table = Table(title=f"{title}: {summary['requests']} requests in {summary['wall_s']} s "
                        f"({summary['requests_per_s']}/s)")
    for col in ("endpoint", "count", "ok", "shed", "errors", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(col, justify="left" if col == "endpoint" else "right", no_wrap=True)
    for name, e in summary["endpoints"].items():
        table.add_row(name, str(e["count"]), str(e["ok"]), str(e["shed"]), str(e["errors"]),
                      *(str(e[k]) if e[k] is not None else "-" for k in ("p50_ms", "p95_ms", "p99_ms")))
    Console().print(table)
    o, q = summary["api_overhead_bundles_ms"], summary["compute_slot_wait_bundles_ms"]
    Console().print(f"API overhead of /v1/bundles (HTTP - slot wait - service latency_ms): p50 {o['p50']} ms, "
                    f"p95 {o['p95']} ms, p99 {o['p99']} ms (n={o['n']}); queued for a compute slot: "
                    f"p50 {q['p50']} ms, p95 {q['p95']} ms, p99 {q['p99']} ms")


def main(argv: list[str] | None = None) -> int:
    run_header = provenance.header()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of the load phase")
    parser.add_argument("--max-concurrency", type=int, default=64, help="server limit in the load phase")
    parser.add_argument("--shed-duration", type=float, default=20.0)
    parser.add_argument("--shed-max-concurrency", type=int, default=4)
    parser.add_argument("--index", type=Path, default=None, help="index dir (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "load.json")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    workload = Workload.from_data()
    load1 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="rag-rec-load-") as tmp:
        index_dir = args.index or Path(tmp) / "index"
        log_path = Path(tmp) / "serve.log"
        console.log(f"starting rag-rec serve (max_concurrency {args.max_concurrency}) on {index_dir}")
        with serve_subprocess(index_dir, max_concurrency=args.max_concurrency, log_path=log_path) as base:
            console.log(f"ready at {base} after {time.perf_counter() - started:.0f} s; calibrating (1 client)")
            calib = summarize(asyncio.run(calibrate(base, workload)))
            console.log(f"load: {args.clients} clients for {args.duration:.0f} s")
            load = summarize(asyncio.run(run_load(base, workload, clients=args.clients, duration_s=args.duration)))
            health_after_load = httpx.get(f"{base}/healthz", timeout=10).status_code
        console.log(f"restarting with max_concurrency {args.shed_max_concurrency}")
        with serve_subprocess(index_dir, max_concurrency=args.shed_max_concurrency, log_path=log_path) as base:
            console.log(f"shed: {args.clients} clients for {args.shed_duration:.0f} s")
            shed = summarize(asyncio.run(run_load(base, workload, clients=args.clients,
                                                  duration_s=args.shed_duration, seed=1)))
            health_after_shed = httpx.get(f"{base}/healthz", timeout=10).status_code
            probe = httpx.post(f"{base}/v1/bundles", json={"need": "camera accessories"}, timeout=30).status_code
        server_log_tail = log_path.read_text(errors="replace").splitlines()[-5:]

    report = {
        "setup": {
            "server": "rag-rec serve (uvicorn, 1 worker) in a subprocess, real pipeline: embedded Qdrant engine "
                      "(qdrant-edge), real signals, heuristic composer (llm.backend=none)",
            "why_no_llm": "vLLM on these 2 CPU cores decodes ~2 bundle requests/s; it cannot serve 50 clients",
            "clients": args.clients, "load_duration_s": args.duration, "shed_duration_s": args.shed_duration,
            "mix_percent": MIX, "max_concurrency_load": args.max_concurrency,
            "max_concurrency_shed": args.shed_max_concurrency, "omp_num_threads": 1,
            "compute_threads": Settings().serve.compute_threads,
            "client": "one asyncio process, httpx.AsyncClient, one request at a time per client; shed clients "
                      "back off 50-200 ms",
        },
        "calibration_1_client": calib,
        "load": load | {"healthz_after": health_after_load},
        "shed": shed | {"healthz_after": health_after_shed, "bundles_probe_after": probe},
        "server_log_tail": server_log_tail,
        "environment": {"cpus": os.cpu_count(), "loadavg_1m_before": round(load1, 2),
                        "python": platform.python_version(), "platform": platform.platform()},
        "total_runtime_s": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report["provenance"] = provenance.finish(run_header)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table("calibration (1 client)", calib)
    print_table(f"load ({args.clients} clients, max_concurrency {args.max_concurrency})", load)
    print_table(f"shed ({args.clients} clients, max_concurrency {args.shed_max_concurrency})", shed)
    Console().print(f"healthz after load {health_after_load}, after shed {health_after_shed}; "
                    f"bundles probe after shed {probe}; wrote {args.out}")
    failed = load["errors"] or load["shed"] or shed["errors"] or shed["server_errors_5xx_other_than_503"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
