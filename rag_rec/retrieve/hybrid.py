"""Hybrid retrieval: Qdrant finds candidates per signal (text, CF, behaviour) under payload filters, the
co-occurrence graph adds complements, and an explained weighted fusion scores the pool."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from rag_rec.data.models import Product
from rag_rec.index.base import Filter, VectorStore
from rag_rec.retrieve.base import Candidate, RetrievalRequest, RetrievalResult
from rag_rec.settings import RetrieveSettings
from rag_rec.signals.suite import Signals

FEATURES = ("text", "text_max", "category", "cooc", "cf", "behaviour", "need")


def product_matches(product: Product, flt: Filter | None) -> bool:
    """The payload filter evaluated in Python (for candidates that do not come from the engine)."""
    if flt is None:
        return True
    if product.id in flt.must_not_ids:
        return False
    values = {"in_stock": product.in_stock, "brand": product.brand, "price": product.price}
    for key, want in flt.must_match.items():
        have = values.get(key, product.attributes.get(key))
        if isinstance(want, (list, tuple, set)):
            if have not in want:
                return False
        elif have != want:
            return False
    for key, (lo, hi) in flt.ranges.items():
        have = values.get(key)
        if have is None or (lo is not None and have < lo) or (hi is not None and have > hi):
            return False
    if flt.category_prefix and tuple(product.category[: len(flt.category_prefix)]) != tuple(flt.category_prefix):
        return False
    return True


@dataclass
class FusionScorer:
    """score(b) = sum_f w_f * feature_f(b); every feature is in [0, 1]-ish and reported per candidate."""

    signals: Signals
    weights: dict[str, float]

    def features(self, pool: np.ndarray, anchors: Sequence[str], user_id: str | None,
                 need_vector: np.ndarray | None) -> dict[str, np.ndarray]:
        s = self.signals
        idx = s.vocab.known(anchors)
        feats: dict[str, np.ndarray] = {}
        if s.text_vectors is not None and idx:
            anchor_vecs = s.text_vectors[idx]
            q = anchor_vecs.mean(axis=0)
            q /= np.linalg.norm(q) or 1.0
            pool_vecs = s.text_vectors[pool]
            feats["text"] = pool_vecs @ q
            feats["text_max"] = (pool_vecs @ anchor_vecs.T).max(axis=1)
        if need_vector is not None and s.text_vectors is not None:
            feats["need"] = s.text_vectors[pool] @ need_vector
        if s.category is not None and idx:
            feats["category"] = s.category.score_vector(anchors)[pool]
        if idx:
            co = s.cooc.score_vector(anchors)[pool]
            feats["cooc"] = np.clip(np.where(np.isfinite(co), co, 0.0), 0.0, 1.0)
        for name, model in (("cf", s.als), ("behaviour", s.behaviour)):
            if model is None:
                continue
            scores = model.score(anchors, user_id)
            if scores:
                vec = np.array([scores.get(s.vocab.ids[j], 0.0) for j in pool])
                top = max(float(np.max(np.abs(vec))), 1e-9)
                feats[name] = np.clip(vec / top, -1.0, 1.0)
        return feats

    def score(self, feats: dict[str, np.ndarray], n: int) -> np.ndarray:
        total = np.zeros(n)
        for name, values in feats.items():
            total += self.weights.get(name, 0.0) * values
        return total


class HybridRetriever:
    """Online retrieval over a VectorStore; the fused scores equal HybridRanker's on the same pool."""

    def __init__(self, store: VectorStore, signals: Signals, products: dict[str, Product],
                 settings: RetrieveSettings):
        self.store, self.signals, self.products, self.settings = store, signals, products, settings
        self.scorer = FusionScorer(signals, settings.weights)

    def retrieve(self, request: RetrievalRequest) -> RetrievalResult:
        t0 = time.perf_counter()
        s, cfg = self.signals, self.settings
        notes, paths = [], []
        anchors = [a for a in request.anchors if a in s.vocab.index]
        unknown = [a for a in request.anchors if a not in s.vocab.index]
        if unknown:
            notes.append(f"unknown item id(s) ignored: {', '.join(unknown[:5])}")
        user = request.user_id
        user_known = user is not None and s.als is not None and _knows_user(s.als, user)
        if user is not None and not user_known:
            notes.append(f"unknown user {user!r}: content-based cold start")
        flt = request.filter or Filter()
        flt = Filter(flt.must_match, tuple(set(flt.must_not_ids) | set(anchors)), flt.ranges, flt.category_prefix)
        n = max(cfg.prefetch_k, request.k)
        found: dict[str, set[str]] = {}

        def add(source: str, ids: Sequence[str]) -> None:
            paths.append(source)
            for i in ids:
                found.setdefault(i, set()).add(source)

        need_vector = None
        if request.need and s.encoder is not None:
            need_vector = s.encoder.encode([request.need])[0]
            add("need", [h.id for h in self.store.search("text", need_vector, n, flt)])
        if anchors and s.text_vectors is not None:
            q = s.text_vectors[s.vocab.known(anchors)].mean(axis=0)
            add("text", [h.id for h in self.store.search("text", q / (np.linalg.norm(q) or 1.0), n, flt)])
        if s.als is not None:
            vector = _cf_query(s.als, anchors, user if user_known else None)
            if vector is not None:
                add("cf", [h.id for h in self.store.search("cf", vector, n, flt)])
        if anchors:
            co = s.cooc.score_vector(anchors)
            top = np.argsort(-np.where(np.isfinite(co), co, -np.inf))[: n * 2]
            add("cooc", [s.vocab.ids[j] for j in top if co[j] > 1e-5 and
                         product_matches(self.products.get(s.vocab.ids[j], _NO_PRODUCT), flt)][:n])
        if not found:
            notes.append("no anchors, need or known user: most popular items")
            pop = np.argsort(-s.popularity.counts)
            add("popular", [s.vocab.ids[j] for j in pop[: n * 4]
                            if product_matches(self.products.get(s.vocab.ids[j], _NO_PRODUCT), flt)][:n])
        pool_ids = [i for i in found if i in s.vocab.index]
        pool = np.array([s.vocab.index[i] for i in pool_ids], dtype=int)
        feats = self.scorer.features(pool, anchors, user if user_known else None, need_vector)
        scores = self.scorer.score(feats, len(pool))
        if "popular" in paths:
            scores += s.popularity.counts[pool] / max(s.popularity.counts.max(), 1.0)
        if cfg.substitute_discount < 1.0 and anchors:
            anchor_kinds = {self.products[a].kind for a in anchors if a in self.products}
            same = np.array([self.products[i].kind in anchor_kinds if i in self.products else False for i in pool_ids])
            if same.any():
                scores = np.where(same, scores * cfg.substitute_discount, scores)
        order = np.lexsort((np.array(pool_ids, dtype=object).astype(str), -scores))[: request.k]
        candidates = []
        for o in order:
            item = pool_ids[o]
            contributions = {f: float(self.scorer.weights.get(f, 0.0) * v[o]) for f, v in feats.items()}
            evidence = {"co_purchases": s.cooc.evidence(anchors, item)} if anchors else {}
            product = self.products.get(item)
            candidates.append(Candidate(item, float(scores[o]), contributions, {}, evidence,
                                        {"found_by": sorted(found[item]), "title": product.title if product else ""}))
        notes_out = notes + [f"retrieval {1000 * (time.perf_counter() - t0):.1f} ms"]
        return RetrievalResult(candidates, notes_out, paths)


_NO_PRODUCT = Product(id="", title="", in_stock=False)


def _knows_user(model, user: str) -> bool:
    try:
        return model.user_vector(user) is not None
    except (KeyError, ValueError, TypeError):
        return False


def _cf_query(als, anchors: Sequence[str], user: str | None) -> np.ndarray | None:
    if user is not None:
        v = als.user_vector(user)
        if v is not None:
            return np.asarray(v, dtype=np.float32)
    ids, matrix = als.item_vectors()
    index = {i: n for n, i in enumerate(ids)}
    rows = [index[a] for a in anchors if a in index]
    if not rows:
        return None
    return matrix[rows].mean(axis=0).astype(np.float32)
