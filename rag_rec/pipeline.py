"""BundlePipeline: data -> signals -> index -> retrieve -> compose, behind the BundleService facade."""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from rich.console import Console

from rag_rec.compose.base import ComposeContext, ComposeResult
from rag_rec.compose.heuristic import HeuristicComposer
from rag_rec.data import load_dataset
from rag_rec.data.journal import IngestJournal, journal_file
from rag_rec.data.models import Dataset, Interactions, Product
from rag_rec.errors import DataError, IncompatibleIndexError
from rag_rec.index import PRODUCT_PAYLOAD_INDEXES, Filter, Record, VectorSpec, open_store
from rag_rec.retrieve.base import RetrievalRequest
from rag_rec.retrieve.hybrid import HybridRetriever
from rag_rec.rows import RowBuffer
from rag_rec.schemas import (
    BundleOut,
    BundleRequest,
    BundleResponse,
    CopyRequest,
    CopyResponse,
    EventIn,
    EventsIn,
    Filters,
    ItemOut,
    ProductIn,
    ProductsIn,
    UpsertResult,
)
from rag_rec.settings import Settings
from rag_rec.signals.lexical import lexical_text
from rag_rec.signals.suite import Signals, fit_signals
from rag_rec.signals.text import bfloat16_grid
from rag_rec.slots import waiting

EVENT_FIELDS = ("user_id", "item_id", "timestamp", "event", "session_id", "quantity")  # of an event log row


def to_index_filter(filters: Filters) -> Filter:
    must: dict[str, object] = {}
    if filters.in_stock_only:
        must["in_stock"] = True
    if filters.categories:
        must["category"] = list(filters.categories)
    ranges = {}
    if filters.min_price is not None or filters.max_price is not None:
        ranges["price"] = (filters.min_price, filters.max_price)
    return Filter(must, tuple(filters.exclude_ids), ranges)


def product_payload(p: Product) -> dict:
    return {"title": p.title, "category": list(p.category), "brand": p.brand, "price": p.price,
            "in_stock": p.in_stock}


def product_from(p: ProductIn, stored: dict[str, Product]) -> Product:
    """The catalogue product for an API product (the API has no attributes field: a product keeps those it was
    loaded with)."""
    return Product(p.id, p.title, tuple(p.category), p.brand, p.price, p.description,
                   dict(stored[p.id].attributes) if p.id in stored else {}, p.in_stock)


def journaled_events_in(interactions: Interactions, batches: list[list[EventIn]]) -> int:
    """How many journaled events the dataset also holds (same user, product and timestamp)."""
    journaled = {(e.user_id, e.item_id, e.timestamp) for batch in batches for e in batch}
    if not journaled:
        return 0
    frame = interactions.frame
    rows = frame.loc[frame["item_id"].isin({item for _, item, _ in journaled}), ["user_id", "item_id", "timestamp"]]
    held = {(str(u), str(i), int(t)) for u, i, t in rows.itertuples(index=False, name=None)}
    return sum(key in held for batch in batches for key in ((e.user_id, e.item_id, e.timestamp) for e in batch))


def load_start_dataset(settings: Settings, data: str | None, console: Console) -> Dataset:
    """The dataset a start serves (`data`, by default the settings' bundled domain), its cleaning report logged and
    its quarantined rows written where the settings say."""
    spec = data or f"amazon:{Path(settings.data.root) / 'amazon-bundles' / settings.data.domain}"
    dataset = load_dataset(spec, strict=settings.data.strict)
    console.log(f"catalogue {dataset.name}: {len(dataset.products)} products, {len(dataset.interactions)} events")
    report = dataset.report
    if report is not None and report.changed:
        for line in report.summary_lines():
            console.log(line)
        if settings.data.quarantine_dir is not None and report.quarantined:
            written = report.write(settings.data.quarantine_dir)
            console.log(f"{len(report.quarantined)} quarantined rows written to {written}")
    if not dataset.products:
        raise DataError(f"no products in {spec}: nothing to index or recommend")
    return dataset


def with_journal_products(dataset: Dataset, journal: IngestJournal | None, settings: Settings):
    """The journal's replay for `dataset` (None without a journal), its products added to the catalogue: a start
    fits the signals on them, so whatever trains ahead of a start must too."""
    if journal is None:
        return None
    replay = journal.replay(dataset.name, strict=settings.data.strict)
    for p in replay.products:
        dataset.products[p.id] = product_from(p, dataset.products)
    return replay


class BundlePipeline:
    """The product. Thread-safe for concurrent requests; writes (events/products) take a lock."""

    def __init__(self, settings: Settings, dataset: Dataset, signals: Signals, store, llm=None,
                 journal: IngestJournal | None = None):
        self.settings, self.dataset, self.signals, self.store = settings, dataset, signals, store
        self.journal = journal  # API writes are committed here before they are applied (replayed at start)
        self.retriever = HybridRetriever(store, signals, dataset.products, settings.retrieve)
        self.heuristic = HeuristicComposer()
        self._llm = llm
        self._llm_error: str | None = None
        self._llm_composer = None
        self._lock = threading.RLock()
        self._llm_start = threading.Lock()  # concurrent first LLM requests start one engine
        self._history = self._histories(dataset.interactions.frame)
        self._event_log: list[tuple] = []  # events added through add_events as EVENT_FIELDS tuples (`interactions`)
        self._text_rows: RowBuffer | None = None  # the text vectors' spare capacity for appended products
        self._marker_current = False  # the build marker describes the index (until an API write changes it)
        self._user_groups: dict[str, dict[str, None]] | None = None  # see _purchases

    # ---- construction ----

    @classmethod
    def from_settings(cls, settings: Settings, *, data: str | None = None, rebuild: bool = False,
                      llm=None, console: Console | None = None) -> "BundlePipeline":
        console = console or Console(stderr=True)
        dataset = load_start_dataset(settings, data, console)
        path = journal_file(settings)
        journal = IngestJournal(path) if path is not None else None
        try:
            replay = with_journal_products(dataset, journal, settings)
            signals = fit_signals(dataset, settings, behaviour=settings.behaviour.serve, console=console)
            if signals.encoder is not None:
                signals.encoder.encode(["warm up the text encoder"])
            store = open_store(settings.index)
        except BaseException:
            if journal is not None:
                journal.close()
            raise
        pipeline = cls(settings, dataset, signals, store, llm, journal)
        try:
            pipeline.sync_index(rebuild=rebuild, console=console)
            if replay is not None:
                pipeline._replay_events(replay.event_batches)
                if replay.products or replay.events or replay.skipped:
                    console.log(f"ingest journal {path}: {len(replay.products)} products and {replay.events} events "
                                "the API accepted before this start")
                twice = journaled_events_in(dataset.interactions, replay.event_batches)
                if twice:
                    console.log(f"warning: {twice} journaled events are also in the dataset (its export holds them "
                                f"now), so they count twice: run `rag-rec journal clear --dataset {dataset.name}` "
                                "once the export holds everything the journal does")
                for line in replay.skipped:
                    console.log(f"skipped (kept in the journal): {line}")
        except BaseException:
            pipeline.close()
            raise
        return pipeline

    def vector_specs(self) -> list[VectorSpec]:
        specs = [VectorSpec("text", int(self.signals.text_vectors.shape[1]), "cosine")]
        if self.signals.als is not None:
            specs.append(VectorSpec("cf", int(self.signals.als.item_vectors()[1].shape[1]), "dot"))
        return specs

    def _fingerprint(self) -> str:
        """A hash of everything the index holds: ids, every vector and every payload, so a catalogue edited in
        place (a price, a stock flag, a title past the first rows) is re-indexed on the next start."""
        h = hashlib.sha256()
        h.update(json.dumps([s.__dict__ for s in self.vector_specs()]).encode())
        h.update(self.dataset.name.encode())
        ids = self.signals.vocab.ids
        h.update("\x1f".join(ids).encode())
        h.update(np.ascontiguousarray(self.signals.text_vectors[:len(ids)]).tobytes())
        if self.signals.als is not None:
            als_ids, matrix = self.signals.als.item_vectors()
            h.update("\x1f".join(als_ids).encode())
            h.update(np.ascontiguousarray(matrix).tobytes())
        products = self.dataset.products
        h.update(json.dumps([product_payload(products[i]) for i in ids], default=str).encode())
        return h.hexdigest()[:16]

    def _marker(self) -> Path:
        """The embedded index's build marker: the fingerprint of what the last full sync indexed."""
        return Path(self.settings.index.path) / f"{self.settings.index.collection}.build.json"

    def _indexed_build(self, marker: Path) -> str | None:
        """The fingerprint the marker records, or None when the marker is missing or unreadable (then the index
        is synced again: upserts are idempotent)."""
        try:
            recorded = json.loads(marker.read_text()).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            return None
        return recorded if isinstance(recorded, str) else None

    def sync_index(self, *, rebuild: bool = False, console: Console | None = None) -> int:
        """Upsert every product (idempotent) unless the index already holds this exact build."""
        console = console or Console(stderr=True)
        marker = self._marker()
        try:
            self.store.ensure_collection(self.vector_specs(), PRODUCT_PAYLOAD_INDEXES)
        except IncompatibleIndexError as exc:
            if not rebuild:
                raise
            console.log(f"recreating the index: {exc}")
            marker.unlink(missing_ok=True)
            self.store.recreate_collection(self.vector_specs(), PRODUCT_PAYLOAD_INDEXES)
        fingerprint = self._fingerprint()
        if not rebuild and self.settings.index.backend == "edge" and marker.is_file():
            if self._indexed_build(marker) == fingerprint and self.store.count() == len(self.dataset.products):
                self._marker_current = True
                self.store.warm()  # the embedded store's point-id map, so the first request does not build it
                self.retriever.warm()
                return 0
        ids = self.signals.vocab.ids
        records = self.records(ids)
        t0 = time.perf_counter()
        for start in range(0, len(records), 1024):
            self.store.upsert(records[start:start + 1024])
        # a replica starting against a shared Qdrant must not delete what other replicas ingested: only the
        # embedded index (one process owns it) or an explicit rebuild reconciles the index to the catalogue
        reconcile = rebuild or self.settings.index.backend == "edge"
        stale = self._stale_points(len(records)) if reconcile else []
        if stale:  # e.g. products added through the API before a restart: they would crowd out real ones
            self.store.delete(stale)
            console.log(f"removed {len(stale)} indexed products that are not in the catalogue")
        optimize = getattr(self.store, "optimize", None)
        if optimize is not None:
            optimize()  # the embedded engine builds its HNSW graphs here
        console.log(f"indexed {len(records)} products in {time.perf_counter() - t0:.1f}s")
        if self.settings.index.backend == "edge":
            marker.parent.mkdir(parents=True, exist_ok=True)
            tmp = marker.with_suffix(".tmp")
            tmp.write_text(json.dumps({"fingerprint": fingerprint, "count": len(records)}))
            tmp.replace(marker)
        self._marker_current = True
        self.store.warm()
        self.retriever.warm()
        return len(records)

    def _stale_points(self, expected: int) -> list[str]:
        """Ids of index points whose product is not in the catalogue (which is rebuilt from the dataset)."""
        excess = self.store.count() - expected
        if excess <= 0:
            return []
        probe = np.zeros(self.signals.text_vectors.shape[1], dtype=np.float32)
        probe[0] = 1.0
        catalogue = Filter(must_not_ids=tuple(self.signals.vocab.ids))
        hits = self.store.search("text", probe, excess, catalogue, exact=True)
        return [h.id for h in hits]

    def records(self, ids: Sequence[str]) -> list[Record]:
        s = self.signals
        out = []
        for item in ids:
            vectors = {"text": s.text_vectors[s.vocab.index[item]]}
            cf = s.als.item_vector(item) if s.als is not None else None
            if cf is not None:
                vectors["cf"] = cf
            out.append(Record(item, vectors, product_payload(self.dataset.products[item])))
        return out

    # ---- LLM ----

    def composer(self, use_llm: bool):
        if not use_llm or self.settings.llm.backend == "none":
            return self.heuristic
        if self._llm_composer is None and self._llm_error is None:
            with waiting(), self._llm_start:  # the engine takes a minute to start on CPU: the slot serves others
                if self._llm_composer is None and self._llm_error is None:
                    self._start_llm()
        return self._llm_composer or self.heuristic

    def _start_llm(self) -> None:
        try:
            from rag_rec.compose.llm_composer import LLMComposer

            if self._llm is None:
                from rag_rec.llm import make_llm

                self._llm = make_llm(self.settings.llm)
            self._llm_composer = LLMComposer(self._llm, self.settings.llm, fallback=self.heuristic)
        except Exception as exc:  # noqa: BLE001 - missing extra or model: keep serving grounded heuristic bundles
            self._llm_error = f"{type(exc).__name__}: {exc}"

    # ---- BundleService ----

    def context_for(self, request: BundleRequest) -> tuple[ComposeContext, list[str], set[str]]:
        excluded = set(request.filters.exclude_ids)  # an excluded anchor guides retrieval but is not served
        known_anchors = tuple(a for a in request.anchor_items if a in self.dataset.products and a not in excluded)
        result = self.retriever.retrieve(RetrievalRequest(
            user_id=request.user_id, anchors=tuple(request.anchor_items), need=request.need,
            filter=to_index_filter(request.filters), k=max(self.settings.retrieve.k, request.k * request.bundle_size)))
        history = tuple(self._history.get(request.user_id, ())) if request.user_id else ()
        context = ComposeContext(result.candidates, self.dataset.products, known_anchors, request.need, history,
                                 request.k, request.bundle_size, request.budget)
        allowed = {c.id for c in result.candidates} | set(known_anchors)
        return context, result.notes, allowed

    def recommend(self, request: BundleRequest) -> BundleResponse:
        return self.recommend_many([request])[0]

    def recommend_many(self, requests: Sequence[BundleRequest]) -> list[BundleResponse]:
        groups: dict[int, list[int]] = {}
        composers = {}
        for n, r in enumerate(requests):
            comp = self.composer(r.use_llm)  # the first LLM request starts the engine: not part of its latency
            composers[id(comp)] = comp
            groups.setdefault(id(comp), []).append(n)
        t0 = time.perf_counter()
        prepared = [self.context_for(r) for r in requests]
        results: list[ComposeResult | None] = [None] * len(requests)
        for key, members in groups.items():
            outs = composers[key].compose_many([prepared[n][0] for n in members])
            for n, out in zip(members, outs):
                results[n] = out
        responses = []
        for (context, notes, allowed), request, result in zip(prepared, requests, results):
            responses.append(self._response(context, notes, allowed, request, result, t0))
        return responses

    def _response(self, context, notes, allowed, request, result: ComposeResult, t0) -> BundleResponse:
        by_id = {c.id: c for c in context.candidates}
        bundles = []
        for b in result.bundles:
            if not set(b.items) <= allowed:  # last line of defence: never serve an id that was not retrieved
                notes = notes + ["a bundle with an item that was not retrieved was dropped"]
                continue
            items = [self._item_out(i, by_id.get(i)) for i in b.items]
            prices = [it.price for it in items]
            total = round(sum(prices), 2) if all(p is not None for p in prices) else None
            bundles.append(BundleOut(title=b.title[:120], items=items, reason=b.reason[:600], total_price=total,
                                     score=round(float(b.score), 6)))
        unavailable = request.use_llm and self._llm_error and self.settings.llm.backend != "none"
        extra = [f"LLM unavailable, heuristic composer used: {self._llm_error}"] if unavailable else []
        produced_by = "fallback" if unavailable and result.produced_by == "heuristic" else result.produced_by
        return BundleResponse(bundles=bundles, produced_by=produced_by, model=result.model,
                              candidates_considered=len(context.candidates),
                              latency_ms=round(1000 * (time.perf_counter() - t0), 2),
                              notes=list(notes) + extra + list(result.notes))

    def _item_out(self, item: str, candidate=None, sources: Sequence[str] = ("anchor",)) -> ItemOut:
        p = self.dataset.products[item]
        found_by = sorted(candidate.payload.get("found_by", [])) if candidate is not None else list(sources)
        return ItemOut(id=p.id, title=p.title, category=list(p.category), price=p.price, sources=found_by)

    def product(self, item_id: str) -> ItemOut | None:
        return self._item_out(item_id, sources=()) if item_id in self.dataset.products else None

    def search_products(self, query: str, k: int = 10) -> list[ItemOut]:
        if not query.strip() or self.signals.encoder is None:
            return []
        vector = self.signals.encoder.encode([query])[0]
        return [self._item_out(h.id, sources=("text",)) for h in self.store.search("text", vector, k)
                if h.id in self.dataset.products]

    def copy(self, request: CopyRequest) -> CopyResponse:
        missing = [i for i in request.items if i not in self.dataset.products]
        if missing:
            raise KeyError(f"unknown product id(s): {', '.join(missing)}")
        from pydantic import ValidationError
        from pydantic_core import PydanticCustomError

        from rag_rec.compose.copywriter import write_copy
        from rag_rec.compose.grounding import GroundingReport

        products = [self.dataset.products[i] for i in request.items]
        untitled = [{"type": PydanticCustomError("untitled_product", "items[{n}]: product {id} has no title in the "
                                                 "catalogue, only a placeholder: there is nothing to write about",
                                                 {"n": n, "id": p.id}),
                     "loc": ("items", n), "input": p.id} for n, p in enumerate(products) if p.placeholder]
        if untitled:
            raise ValidationError.from_exception_data("CopyRequest", untitled)
        llm = None
        composer = self.composer(True)
        if composer is not self.heuristic:
            llm = self._llm
        report = GroundingReport()
        title, blurb, path = write_copy(llm, self.settings.llm, products, request.tone, request.length,
                                        request.language, report, unavailable=self._llm_error)
        return CopyResponse(title=title, blurb=blurb, items=[self._item_out(i, sources=()) for i in request.items],
                            produced_by=path, notes=report.repaired)

    def add_products(self, products: ProductsIn) -> UpsertResult:
        """Upsert products (idempotent): the index, the signals and the retriever's lookups change in the rows of
        these products only (appended for new ones), so a one-product upsert costs milliseconds, not a pass
        over the catalogue (bench/bench_upsert.py)."""
        with self._lock:
            s, stored = self.signals, self.dataset.products
            latest = list({p.id: p for p in products.products}.values())  # the last version of an id wins
            if self.journal is not None:  # durable before anything changes: a crash from here on is replayed
                self.journal.record_products(self.dataset.name, latest)
            new = [product_from(p, stored) for p in latest]
            known = [p.id in s.vocab.index for p in new]
            before = [stored.get(p.id) for p in new]
            # a stock or price change keeps its vector and its words: only new texts are encoded and tokenized
            encode = [n for n, p in enumerate(new) if not known[n] or before[n] is None or before[n].text() != p.text()]
            encoded = set(encode)
            reword = [p.id for n, p in enumerate(new) if n in encoded or lexical_text(before[n]) != lexical_text(p)]
            vectors = (bfloat16_grid(s.encoder.encode([new[n].text() for n in encode])) if s.encoder and encode
                       else None)
            vector_of = dict(zip(encode, vectors)) if vectors is not None else {}
            for p in new:
                stored[p.id] = p
            rewritten = [(s.vocab.index[p.id], vector_of[n]) for n, p in enumerate(new) if known[n] and n in vector_of]
            if rewritten:
                with self.retriever.scorer.writing_rows():  # a changed text: written in place
                    for row, vector in rewritten:
                        s.text_vectors[row] = vector
            added = [n for n in range(len(new)) if not known[n]]
            if added:
                self._extend_vocab([new[n].id for n in added],
                                   np.stack([vector_of[n] for n in added]) if vector_of else None)
            rows = np.array(sorted(s.vocab.index[p.id] for p in new), dtype=np.int64)
            changed = rows[rows < len(s.vocab) - len(added)]
            s.cooc.update_leaves(changed, self.dataset)
            if s.category is not None:
                s.category.extend(self.dataset, s.vocab, changed)
            if s.lexical is not None and reword:
                s.lexical.update(self.dataset, s.vocab, reword)
            if self._marker_current:  # the index no longer holds the marked build: the next start syncs it in full,
                self._marker().unlink(missing_ok=True)  # even when the journal is cleared or turned off by then
                self._marker_current = False
            try:
                self.store.upsert(self.records([p.id for p in new]))
            finally:  # the lookups follow the signals even when the engine refused the records (a retry is idempotent)
                self.retriever.refresh(rows)
            return UpsertResult(accepted=len(new), total=len(self.dataset.products))  # a repeated id is one product

    def _extend_vocab(self, ids: list[str], vectors: np.ndarray | None) -> None:
        """Append products to the vocabulary and every per-item signal (text vectors into spare capacity).
        Requests take no lock: the new vocabulary is published last, once every array has the new rows."""
        s = self.signals
        vocab = s.vocab.extended(ids)
        if self._text_rows is None or self._text_rows.array is not s.text_vectors:
            self._text_rows = RowBuffer(s.text_vectors)
        if vectors is None:
            vectors = np.zeros((len(ids), s.text_vectors.shape[1]), dtype=s.text_vectors.dtype)
        s.text_vectors = self._text_rows.append(vectors)
        s.popularity.counts = np.concatenate([s.popularity.counts, np.zeros(len(ids))])
        s.popularity.vocab = vocab
        s.cooc.extend_vocab(vocab, self.dataset)
        if s.category is not None:
            s.category.extend(self.dataset, vocab)
        s.vocab = vocab

    def add_events(self, events: EventsIn) -> UpsertResult:
        """Record events and update co-occurrence, popularity, ALS user factors and histories in place.
        Work is proportional to the batch, not to the event log (which is appended, not copied)."""
        with self._lock:
            products = self.dataset.products
            unknown = [(n, e.item_id) for n, e in enumerate(events.events) if e.item_id not in products]
            if unknown:
                rows = ", ".join(f"events[{n}].item_id={item!r}" for n, item in unknown[:5])
                raise KeyError(f"unknown product id(s) at {rows}; nothing from this batch was stored")
            now = int(time.time())
            stamped = [e if e.timestamp is not None else e.model_copy(update={"timestamp": now})
                       for e in events.events]
            if self.journal is not None:  # durable before anything changes: a crash from here on is replayed
                self.journal.record_events(self.dataset.name, stamped)
            self._apply_events([stamped])
            return UpsertResult(accepted=len(stamped), total=len(self.dataset.interactions) + len(self._event_log))

    def _replay_events(self, batches: list[list[EventIn]]) -> None:
        """Apply journaled event batches as they were applied when accepted, in one update (events of products
        the catalogue no longer has are left out here and stay in the journal)."""
        products = self.dataset.products
        with self._lock:
            self._apply_events([[e for e in batch if e.item_id in products] for batch in batches])

    def _apply_events(self, batches: list[list[EventIn]]) -> None:
        """Update co-occurrence, category affinity, popularity, ALS user factors and histories with batches of
        events of known products, counted as a refit on the same events would count them: a session's events
        form one co-purchase group per batch (as each batch was sent); without sessions in the data, a user's
        purchases are the group. Every event counts, repeated ones too (three views of a product in one batch, all
        stamped with the same second, are three views)."""
        events = [e for batch in batches for e in batch]
        if not events:
            return
        s = self.signals
        bought = [e for e in events if e.event != "return"]  # a return is no co-purchase and no vote
        groups: dict[tuple[int, str], list[str]] = {}
        for n, batch in enumerate(batches):
            for e in batch:
                if e.event != "return" and e.session_id is not None:
                    groups.setdefault((n, e.session_id), []).append(e.item_id)
        sessions = [tuple(items) for items in groups.values()]
        user_groups = getattr(s.cooc, "user_groups", False)  # the fit grouped each user's purchases
        purchases = self._purchases() if user_groups else {}
        with self.retriever.scorer.writing_rows():  # pair counts, their norms, category and popularity change
            if sessions:
                s.cooc.add_groups(sessions, self.dataset)
                if s.category is not None:
                    s.category.add_groups(sessions)
            if user_groups:  # extend those groups
                grown: dict[str, list[str]] = {}
                for e in bought:
                    grown.setdefault(e.user_id, []).append(e.item_id)
                s.cooc.extend_groups([(tuple(purchases.get(user, ())), items) for user, items in grown.items()],
                                     self.dataset)
                for user, items in grown.items():
                    purchases.setdefault(user, {}).update(dict.fromkeys(items))
            for idx in s.vocab.known(e.item_id for e in bought):
                s.popularity.counts[idx] += 1
            for items in sessions:  # the fit also counts each group an item is in
                for idx in s.vocab.known(set(items)):
                    s.popularity.counts[idx] += 1
        if s.als is not None:  # publishes a new user only once its factors exist: no lock needed
            s.als.fold_in_many([(str(e.user_id), e.item_id, str(e.event)) for e in events])
        ids, index = s.vocab.ids, s.vocab.index  # the catalogue's own id strings, not one copy per event
        self._event_log.extend((sys.intern(e.user_id), ids[index[e.item_id]], e.timestamp, sys.intern(e.event),
                                e.session_id, e.quantity) for e in events)
        for e in events:
            self._history.setdefault(str(e.user_id), []).append(e.item_id)
        if s.behaviour is not None:
            s.behaviour.extend_histories((str(e.user_id), e.item_id) for e in events)

    def _purchases(self) -> dict[str, dict[str, None]]:
        """Each user's products in the co-occurrence fit's user groups (every event but returns), kept current by
        _apply_events; built from the loaded interactions on first use."""
        if self._user_groups is None:
            frame = self.dataset.interactions.frame
            kept = frame.loc[frame["event"].fillna("") != "return", ["user_id", "item_id"]]
            self._user_groups = {str(u): dict.fromkeys(map(str, items)) for u, items in kept.groupby("user_id")["item_id"]}
        return self._user_groups

    @property
    def interactions(self) -> Interactions:
        """The loaded interactions plus every event added since (built on demand, e.g. for a refit)."""
        with self._lock:
            if not self._event_log:
                return self.dataset.interactions
            return self.dataset.interactions.concat(Interactions(pd.DataFrame(self._event_log, columns=EVENT_FIELDS)))

    def health(self) -> dict[str, object]:
        return {"status": "ok", "products": len(self.dataset.products), "indexed": self.store.count(),
                "index_backend": self.settings.index.backend, "llm_backend": self.settings.llm.backend,
                "llm_loaded": self._llm_composer is not None, "llm_error": self._llm_error,
                "journal": str(self.journal.path) if self.journal is not None else None}

    @staticmethod
    def _histories(frame: pd.DataFrame) -> dict[str, list[str]]:
        if not len(frame):
            return {}
        return {str(u): list(g) for u, g in frame.groupby("user_id")["item_id"]}

    def close(self) -> None:
        self.store.close()
        if self.journal is not None:
            self.journal.close()
        if self._llm is not None:
            self._llm.close()
