"""Shared fixtures of the serve tests: a small BundleService over real Amazon-bundle products, live servers.

To run every serve test against the real pipeline, change only the `bundle_service` fixture below.
This module holds no tests; the test_serve_* modules and test_browser import its fixtures.
"""

from __future__ import annotations

import csv
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from rag_rec.schemas import (
    BundleOut,
    BundleRequest,
    BundleResponse,
    CopyRequest,
    CopyResponse,
    EventsIn,
    ItemOut,
    ProductsIn,
    UpsertResult,
)
from rag_rec.settings import ServeSettings

DATA = Path(__file__).resolve().parents[1] / "data" / "amazon-bundles" / "electronic"
# Real bundles of the electronic domain (bundle ID -> its items), chosen to cover several needs.
BUNDLE_IDS = ("0", "3", "9", "11", "19", "26", "27")
API_KEY = "test-key-1"
OTHER_API_KEY = "test-key-2"
WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> set[str]:
    return {w for w in WORD.findall(text.lower()) if len(w) > 2 and w not in {"and", "for", "the", "with"}}


def category_path(text: str) -> list[str]:
    """'[[Electronics,Camera & Photo,...],[...]]' -> the first path."""
    first = text.strip().strip("[]").split("],[")[0]
    return [part.strip() for part in first.split(",") if part.strip()]


def load_catalogue() -> tuple[dict[str, ItemOut], list[tuple[str, list[str]]]]:
    """Products (keyed by ASIN, as the real loader keys them) and the real bundles over them."""
    with open(DATA / "bundle_intent.csv", newline="", encoding="utf-8") as fh:
        intents = {r["bundle ID"]: r["intent"].strip() for r in csv.DictReader(fh) if r["bundle ID"] in BUNDLE_IDS}
    members: dict[str, list[str]] = {}
    with open(DATA / "bundle_item.csv", newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            if r["bundle ID"] in BUNDLE_IDS:
                members.setdefault(r["bundle ID"], []).append(r["item ID"])
    wanted = {i for items in members.values() for i in items}
    with open(DATA / "item_titles.csv", newline="", encoding="utf-8") as fh:
        titles = {r["item ID"]: r["titles"] for r in csv.DictReader(fh) if r["item ID"] in wanted}
    with open(DATA / "item_categories.csv", newline="", encoding="utf-8") as fh:
        categories = {r["item ID"]: category_path(r["categories"]) for r in csv.DictReader(fh)
                      if r["item ID"] in wanted}
    with open(DATA / "item_idx_mapping.csv", newline="", encoding="utf-8") as fh:
        asin = {r["item ID"]: r["source ID"] for r in csv.DictReader(fh) if r["item ID"] in wanted}
    products = {asin[i]: ItemOut(id=asin[i], title=titles[i], category=list(categories.get(i, ())))
                for i in wanted}
    bundles = [(intents[b], [asin[i] for i in members[b]]) for b in BUNDLE_IDS]
    return products, bundles


class CatalogueService:
    """A small, honest BundleService: ranks the real co-purchase bundles by word overlap with the request."""

    def __init__(self) -> None:
        self.products, self.bundles = load_catalogue()
        self.events: list = []

    def recommend(self, request: BundleRequest) -> BundleResponse:
        started = time.perf_counter()
        notes: list[str] = []
        anchors = [a for a in request.anchor_items if a in self.products]
        notes += [f"unknown product id {a!r} ignored" for a in request.anchor_items if a not in self.products]
        query = words(request.need or "")
        for a in anchors:
            query |= words(self.products[a].title)
        history = [e.item_id for e in self.events if e.user_id == request.user_id]
        if request.user_id and not history and not query:
            notes.append(f"no history for user {request.user_id!r}")
        if not query:
            for item_id in history:
                query |= words(self.products[item_id].title) if item_id in self.products else set()
        if request.budget is not None:
            notes.append("prices are unknown in this catalogue, so the budget could not be applied")
        scored = []
        for intent, items in self.bundles:
            items = [i for i in items if i not in request.filters.exclude_ids]
            text = words(intent + " " + " ".join(self.products[i].title + " " + " ".join(self.products[i].category)
                                                 for i in items))
            matched = sorted(query & text)
            score = len(matched) + 2 * len(set(anchors) & set(items))
            if score and len(items) >= 2:
                scored.append((score, intent, items, matched))
        scored.sort(key=lambda s: -s[0])
        bundles = [
            BundleOut(
                title=intent[:1].upper() + intent[1:],
                items=[self.products[i].model_copy(update={"sources": ["cooc"]}) for i in items[: request.bundle_size]],
                reason=f"Shoppers bought these together for “{intent}”; they match {', '.join(matched[:4])}.",
                score=float(score),
            )
            for score, intent, items, matched in scored[: request.k]
        ]
        if not bundles:
            notes.append("no bundle matches the request")
        return BundleResponse(bundles=bundles, produced_by="heuristic", candidates_considered=len(self.products),
                              latency_ms=(time.perf_counter() - started) * 1000, notes=notes)

    def copy(self, request: CopyRequest) -> CopyResponse:
        for item_id in request.items:
            if item_id not in self.products:
                raise KeyError(f"unknown product id {item_id!r}")
        items = [self.products[i] for i in request.items]
        leaves = [item.category[-1] for item in items if item.category]
        title = f"The {leaves[0]} kit" if leaves else "The complete kit"
        blurb = "Everything in one go: " + "; ".join(item.title.split(",")[0] for item in items) + "."
        return CopyResponse(title=title, blurb=blurb, items=items, produced_by="heuristic")

    def add_events(self, events: EventsIn) -> UpsertResult:
        self.events.extend(events.events)
        return UpsertResult(accepted=len(events.events), total=len(self.events))

    def add_products(self, products: ProductsIn) -> UpsertResult:
        for p in products.products:
            self.products[p.id] = ItemOut(id=p.id, title=p.title, category=p.category, price=p.price)
        return UpsertResult(accepted=len(products.products), total=len(self.products))

    def search_products(self, query: str, k: int = 10) -> list[ItemOut]:
        q = words(query)
        ranked = sorted(((len(q & words(p.title + " " + " ".join(p.category))), p.id) for p in self.products.values()),
                        key=lambda s: (-s[0], s[1]))
        return [self.products[i] for score, i in ranked[:k] if score]

    def product(self, item_id: str) -> ItemOut | None:
        return self.products.get(item_id)

    def health(self) -> dict[str, object]:
        return {"catalogue": "amazon-bundles/electronic (test subset)", "products": len(self.products)}


class RecordingService:
    """Delegates to a service, records each BundleRequest, and can hold `recommend` until released."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.requests: list[BundleRequest] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Semaphore(0)
        self.fail_with: Exception | None = None

    def recommend(self, request: BundleRequest) -> BundleResponse:
        self.requests.append(request)
        self.entered.release()
        if self.gate is not None:
            self.gate.wait(timeout=30)
        if self.fail_with is not None:
            raise self.fail_with
        return self.inner.recommend(request)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


@pytest.fixture(scope="session")
def bundle_service(tmp_path_factory):
    """THE service under test: the real pipeline (embedded Qdrant engine, real signals) with the heuristic
    composer; the LLM path is covered by the llm-marked tests."""
    from rag_rec.pipeline import BundlePipeline
    from rag_rec.settings import Settings

    pipeline = BundlePipeline.from_settings(
        Settings(index={"path": tmp_path_factory.mktemp("index")}, llm={"backend": "none"}))
    yield pipeline
    pipeline.close()


@pytest.fixture
def recording_service(bundle_service) -> RecordingService:
    return RecordingService(bundle_service)


@pytest.fixture
def serve_settings() -> ServeSettings:
    return ServeSettings(api_keys=[API_KEY, OTHER_API_KEY], max_body_bytes=16 * 1024, rate_limit_per_minute=10_000,
                         max_concurrency=16)


@contextmanager
def running_server(app, settings: ServeSettings) -> Iterator[str]:
    """Serve `app` with the product's uvicorn configuration (keep-alive included) on a free loopback port in a
    thread; yields the base URL."""
    import uvicorn

    from rag_rec.serve.app import uvicorn_config

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, settings, log_level="warning", lifespan="off",
                                           timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


@pytest.fixture
def live_server() -> Iterator[Callable]:
    """Factory: live_server(service, settings) -> base URL of a running app (stopped after the test)."""
    from rag_rec.serve.app import create_app

    stack: list = []

    def start(service, settings: ServeSettings) -> str:
        ctx = running_server(create_app(service, settings), settings)
        stack.append(ctx)
        return ctx.__enter__()

    yield start
    for ctx in reversed(stack):
        ctx.__exit__(None, None, None)


@pytest.fixture
def api(live_server, recording_service, serve_settings) -> str:
    """Base URL of the API over the recording wrapper of `bundle_service`, with the default test settings."""
    return live_server(recording_service, serve_settings)
