"""Hybrid retrieval: Qdrant finds candidates per signal (text, CF, behaviour) under payload filters, the
co-occurrence graph adds complements, and an explained weighted fusion scores the pool."""

from __future__ import annotations

import dataclasses
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Sequence

import numpy as np

from rag_rec.data.models import Product
from rag_rec.index.base import Filter, Prefetch, VectorStore
from rag_rec.retrieve.base import Candidate, RetrievalRequest, RetrievalResult
from rag_rec.retrieve import fusion_kernel
from rag_rec.retrieve.item_table import ItemTable, build_item_table, fill_rows, text_norms
from rag_rec.rows import RowBuffer, patched
from rag_rec.settings import RetrieveSettings
from rag_rec.signals.suite import Signals

FEATURES = ("text", "text_max", "lex", "category", "cooc", "cf", "behaviour", "need")


def product_matches(product: Product, flt: Filter | None) -> bool:
    """The payload filter evaluated in Python (for candidates that do not come from the engine)."""
    if flt is None:
        return True
    if product.id in flt.must_not_ids:
        return False
    values = {"in_stock": product.in_stock, "brand": product.brand, "price": product.price}
    for key, want in flt.must_match.items():
        if key == "category":  # a list in the payload: the engine matches when any level matches
            wanted = set(want) if isinstance(want, (list, tuple, set)) else {want}
            if not wanted & set(product.category):
                return False
            continue
        have = values.get(key, product.attributes.get(key))
        if isinstance(want, (list, tuple, set)):
            if have not in want:
                return False
        elif have != want:
            return False
    for key, (lo, hi) in flt.ranges.items():
        if lo is None and hi is None:  # no bound: no condition, as in the engine
            continue
        have = values.get(key)
        if have is None or (lo is not None and have < lo) or (hi is not None and have > hi):
            return False
    if flt.category_prefix and tuple(product.category[: len(flt.category_prefix)]) != tuple(flt.category_prefix):
        return False
    return True


@lru_cache(maxsize=4096)
def found_by_of(code: int, names: tuple[str, ...], base_source: str) -> tuple[str, ...]:
    """A candidate's provenance from its fusion_kernel code: the features that raised its score (and the
    co-occurrence graph when it was one of the partners), sorted; else the engine (or the popular fallback) or the
    co-occurrence graph that found it."""
    found = {name for f, name in enumerate(names) if code & (fusion_kernel.POSITIVE << f)}
    if code & fusion_kernel.FROM_COOC:
        found.add("cooc")
    if found:
        return tuple(sorted(found))
    return (base_source,) if code & fusion_kernel.FROM_ENGINE else ("cooc",)


def member(values: np.ndarray, of) -> np.ndarray:
    """np.isin for a short list `of` (anchors, excluded ids): one comparison per value, no sorting."""
    of = list(of)
    if len(of) > 16:
        return np.isin(values, of)
    mask = np.zeros(len(values), dtype=bool)
    for v in of:
        mask |= values == v
    return mask


def anchor_text_features(pool_vecs: np.ndarray, anchor_vecs: np.ndarray) -> dict[str, np.ndarray]:
    """The pool's `text` (dot with the anchors' normalised mean; one anchor: with it, normalised) and `text_max`
    (the best dot with any one anchor), in the order the compiled fusion sums them."""
    if len(anchor_vecs) == 1:
        anchor_vec = anchor_vecs[0]
        best = pool_vecs @ anchor_vec
        norm = float(np.sqrt(anchor_vec @ anchor_vec))
        return {"text_max": best, "text": best / norm if norm else best}
    q = anchor_vecs.mean(axis=0)
    q /= np.linalg.norm(q) or 1.0
    return {"text": pool_vecs @ q, "text_max": (pool_vecs @ anchor_vecs.T).max(axis=1)}


@dataclass
class FusionScorer:
    """score(b) = sum_f w_f * feature_f(b) over a candidate pool; each feature is reported per candidate."""

    signals: Signals
    weights: dict[str, float]

    def __post_init__(self):
        self._cf: tuple[np.ndarray, np.ndarray] | None = None
        self._table: tuple[tuple, ItemTable] | None = None
        self._table_rows: RowBuffer | None = None
        self._version = 0
        self.seq = 0  # odd while rows that readers may be reading are written in place (a sequence lock)
        self._writer = threading.Lock()

    @contextmanager
    def writing_rows(self):
        """Around in-place writes of rows readers may hold (item-table rows, text vectors): a request whose
        reads overlapped one sees `seq` change and is redone (HybridRetriever.retrieve)."""
        with self._writer:
            self.seq += 1
            try:
                yield
            finally:
                self.seq += 1

    @contextmanager
    def rows_stable(self):
        """Hold writers of rows off (for a request that kept overlapping them)."""
        with self._writer:
            yield

    def _cf_table(self) -> tuple[np.ndarray, np.ndarray]:
        """ALS factor row for every vocab index (-1: no factors), extended when the vocabulary grows (the new
        items looked up only). Built locally and published as one tuple, so concurrent requests never see half
        of it."""
        s = self.signals
        table = self._cf
        if table is None or len(table[0]) != len(s.vocab):
            if table is not None and len(table[0]) < len(s.vocab):
                table = (np.concatenate([table[0], s.als.item_rows(s.vocab.ids[len(table[0]):])]), table[1])
            else:
                ids, matrix = s.als.item_vectors()
                table = (s.als.item_rows(s.vocab.ids), np.vstack([matrix, np.zeros((1, matrix.shape[1]),
                                                                                    dtype=matrix.dtype)]))
            self._cf = table
        return table

    def cf_query(self, anchor_idx: Sequence[int], user_id: str | None) -> np.ndarray | None:
        s = self.signals
        if s.als is None:
            return None
        if user_id is not None:
            v = s.als.user_vector(user_id)
            if v is not None:
                return np.asarray(v, dtype=np.float32)
        rows, matrix = self._cf_table()
        known = [rows[i] for i in anchor_idx if rows[i] >= 0]
        if len(known) == 1:
            return matrix[known[0]]
        return matrix[known].mean(axis=0) if known else None

    def invalidate(self) -> None:
        """Call after product rows change in place (text vectors, lexical rows): the item table is rebuilt."""
        self._version += 1

    def _inputs(self) -> tuple:
        """What the item table is built from: ((vocabulary size, version), text vectors, cf table, lexical term
        table, category codes, leaf codes)."""
        s = self.signals
        return ((len(s.vocab), self._version), s.text_vectors, self._cf_table() if s.als is not None else None,
                s.lexical._table() if s.lexical is not None else None,
                s.category.item_code if s.category is not None else None, s.cooc.leaf)

    def _serves(self, key: tuple) -> bool:
        """Whether a table built from `key` (an _inputs() tuple) serves the signals now: the same identities, read
        without building the tuple (every request asks). Without a lexical signal, features skip the lexical
        columns: any table will do."""
        s = self.signals
        return (key[0][0] == len(s.vocab) and key[0][1] == self._version and key[1] is s.text_vectors
                and key[2] is (self._cf_table() if s.als is not None else None)
                and (s.lexical is None or key[3] is s.lexical._table())
                and key[4] is (s.category.item_code if s.category is not None else None) and key[5] is s.cooc.leaf)

    def table(self) -> ItemTable:
        """The item table (item_table.py), rebuilt when the vocabulary, a signal's arrays or the version change
        (update_rows keeps it current through product upserts); published as one tuple, so concurrent requests
        see a whole table."""
        built = self._table
        if built is None or not self._serves(built[0]):
            s = self.signals
            inputs, n = self._inputs(), len(s.vocab)
            lexical_rows = s.lexical.table_rows(np.arange(n)) if inputs[3] is not None else None
            built = (inputs, build_item_table(n, s.text_vectors, inputs[2], lexical_rows, inputs[4], inputs[5]))
            self._table = built
        return built[1]

    def update_rows(self, rows: np.ndarray) -> None:
        """Keep the item table current after product upserts changed vocabulary `rows` (sorted; every row past
        the table's end among them) and nothing else: those rows are rebuilt from the signals; rows that differ
        are written in place under `writing_rows` (a request that read them meanwhile is redone), appended rows
        go into spare capacity (no earlier reader sees them); rows that did not change cost nothing. A new
        layout (a wider lexical row) or an invalidate() rebuilds the whole table."""
        built = self._table
        if built is None:
            return
        inputs, old, s = self._inputs(), built[1], self.signals
        lexical_rows = s.lexical.table_rows(rows) if inputs[3] is not None else None
        n, n_old = len(s.vocab), len(old.rows)
        same_version = built[0][0][1] == self._version
        same_layout = lexical_rows is None or lexical_rows[0].shape[1] == old.terms.stop - old.terms.start
        appends_given = n >= n_old and np.array_equal(rows[rows >= n_old], np.arange(n_old, n))
        if not (same_version and same_layout and appends_given):
            self._table = None
            self.table()
            return
        fresh = np.zeros((len(rows), old.rows.shape[1]), dtype=np.float32)
        fill_rows(old, fresh, rows, s.text_vectors, inputs[2], lexical_rows, inputs[4], inputs[5])
        inside = rows < n_old
        differs = np.zeros(len(rows), dtype=bool)
        differs[inside] = (old.row_ints[rows[inside]] != fresh[inside].view(np.int32)).any(axis=1)
        has_norms = "text_norms" in old.__dict__
        if differs.any():
            changed = rows[differs]
            with self.writing_rows():
                old.rows[changed] = fresh[differs]
                if has_norms:
                    old.text_norms[changed] = text_norms(old.text_vectors(fresh[differs]))
        table = old
        if n > n_old:
            buffer = self._table_rows
            if buffer is None or buffer.array is not old.rows:
                buffer = RowBuffer(old.rows)
            table = dataclasses.replace(old, rows=buffer.append(fresh[~inside]))
            if has_norms:
                appended = text_norms(old.text_vectors(fresh[~inside]))
                table.__dict__["text_norms"] = np.concatenate([old.text_norms, appended])
            self._table_rows = buffer
        self._table = (inputs, table)

    def features(self, pool: np.ndarray, anchors: Sequence[str], user_id: str | None,
                 need_vector: np.ndarray | None, cf_query: np.ndarray | None = None) -> dict[str, np.ndarray]:
        s = self.signals
        idx = s.vocab.known(anchors)
        table = self.table()
        block = table.block(pool)
        feats: dict[str, np.ndarray] = {}
        pool_vecs = None
        if s.text_vectors is not None:  # the whole catalogue: the float32 master holds the same (bfloat16-grid) values
            whole = block is table.rows and len(s.text_vectors) >= len(block)
            pool_vecs = s.text_vectors[:len(block)] if whole else table.text_vectors(block)
        if pool_vecs is not None and idx:
            feats.update(anchor_text_features(pool_vecs, s.text_vectors[idx]))
        if s.lexical is not None and idx:
            feats["lex"] = s.lexical.score_rows(idx, table.ints(block, table.terms), block[:, table.weights])
        if need_vector is not None and pool_vecs is not None:
            feats["need"] = pool_vecs @ need_vector
        if s.category is not None and idx:
            feats["category"] = s.category.score_codes(idx, table.ints(block, table.code))
        if idx:
            feats["cooc"] = np.clip(s.cooc.score_pool(idx, pool, table.ints(block, table.leaf)), 0.0, 1.0)
        if s.als is not None:
            q = cf_query if cf_query is not None else self.cf_query(idx, user_id)
            if q is not None:
                values = block[:, table.cf] @ q
                top = max(float(np.abs(values).max()) if len(values) else 0.0, 1e-9)
                feats["cf"] = values / top
        if s.behaviour is not None:
            behaviour = self.behaviour_feature(pool, anchors, user_id)
            if behaviour is not None:
                feats["behaviour"] = behaviour
        return feats

    def behaviour_feature(self, rows: np.ndarray, anchors: Sequence[str], user_id: str | None) -> np.ndarray | None:
        """The sequence model's logits of the pool `rows`, scaled over its best of the whole catalogue (an item it
        ranks low stays near 0 whatever the pool holds); None when it knows neither the user nor the anchors."""
        ids = self.signals.vocab.ids
        return self.signals.behaviour.scaled_scores(anchors, user_id, [ids[j] for j in rows.tolist()])

    def weighted(self, feats: dict[str, np.ndarray], n: int) -> tuple[list[str], np.ndarray]:
        """(feature names, weight x feature matrix of shape names x n): each row is that feature's contribution."""
        names = list(feats)
        if not names:
            return names, np.zeros((0, n))
        weights = np.array([self.weights.get(f, 0.0) for f in names])
        return names, weights[:, None] * np.vstack([feats[f] for f in names])

    def score(self, feats: dict[str, np.ndarray], n: int) -> np.ndarray:
        return self.weighted(feats, n)[1].sum(axis=0)


class HybridRetriever:
    """Online retrieval over a VectorStore; the fused scores equal HybridRanker's on the same pool."""

    def __init__(self, store: VectorStore, signals: Signals, products: dict[str, Product],
                 settings: RetrieveSettings):
        self.store, self.signals, self.products, self.settings = store, signals, products, settings
        self.scorer = FusionScorer(signals, settings.weights)
        self._kind_codes: np.ndarray | None = None
        self._kind_index: dict[str, int] = {}
        self._stock_price: tuple[np.ndarray, np.ndarray] | None = None
        self._key_rows: tuple[int, np.ndarray] | None = None
        self._identity_keys: tuple[np.ndarray, bool] | None = None
        self._ids: np.ndarray | None = None
        self._dirty = True
        self.compiled = settings.fusion_backend != "numpy" and (
            fusion_kernel.available() if settings.fusion_backend == "auto" else bool(fusion_kernel.compiled()))

    def _id_array(self) -> np.ndarray:
        """Vocabulary ids as one fixed-width string array (extended when the vocabulary grows): the served ids
        are one gather, where indexing the id list chases a pointer to a cold string object per candidate."""
        ids_now = self.signals.vocab.ids
        ids = self._ids
        if ids is None or len(ids) != len(ids_now):
            tail = ids_now[len(ids):] if ids is not None and len(ids) < len(ids_now) else None
            if tail is not None and ids.dtype != object and max(map(len, tail)) <= 64:
                ids = np.concatenate([ids, np.array(tail, dtype=str)])
            else:
                longest = max(map(len, ids_now), default=1)
                ids = np.array(ids_now, dtype=str if longest <= 64 else object)  # fixed width only for short ids
            self._ids = ids
        return ids

    def _kinds(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Kind code of every vocab item (products of one kind are substitutes; -1 - row for items without a
        product), built once per vocabulary; `rows` (changed or appended products) are re-coded alone."""
        vocab, products = self.signals.vocab, self.products
        codes_now = self._kind_codes
        if codes_now is not None and rows is not None:
            index, ids = self._kind_index, vocab.ids
            codes = [index.setdefault(products[ids[r]].kind, len(index)) if ids[r] in products else -1 - r
                     for r in rows.tolist()]
            codes_now = patched(codes_now, len(vocab), rows, codes, -1)
            self._kind_codes = codes_now
        elif codes_now is None or len(codes_now) != len(vocab):
            index: dict[str, int] = {}
            codes_now = np.array([index.setdefault(products[i].kind, len(index)) if i in products
                                  else -1 - n for n, i in enumerate(vocab.ids)])
            self._kind_index, self._kind_codes = index, codes_now
        return codes_now

    def _arrays(self, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(in_stock, price) per vocab item, published as one tuple (safe under concurrent requests); `rows`
        (changed or appended products) are rewritten alone."""
        vocab = self.signals.vocab
        arrays = self._stock_price
        if arrays is not None and rows is not None and not self._dirty:
            products = [self.products.get(vocab.ids[r], _NO_PRODUCT) for r in rows.tolist()]
            arrays = (patched(arrays[0], len(vocab), rows, [p.in_stock for p in products], False),
                      patched(arrays[1], len(vocab), rows, [np.nan if p.price is None else p.price for p in products],
                              np.nan))
            self._stock_price = arrays
        elif arrays is None or len(arrays[0]) != len(vocab) or self._dirty:
            self._dirty = False
            products = [self.products.get(i, _NO_PRODUCT) for i in vocab.ids]
            arrays = (np.array([p.in_stock for p in products], dtype=bool),
                      np.array([np.nan if p.price is None else p.price for p in products], dtype=float))
            self._stock_price = arrays
        return arrays

    def _key_table(self, top: int = -1) -> np.ndarray:
        """Vocabulary row per store key (-1: not in the vocabulary), extended when the vocabulary grows (the new
        items' keys looked up only) and rebuilt when a key up to `top` is new to it."""
        vocab = self.signals.vocab
        table = self._key_rows
        if table is not None and table[0] < len(vocab) and top < len(table[1]):
            new_rows = np.arange(table[0], len(vocab))
            keys = self.store.point_keys(vocab.ids[table[0]:])
            known = keys >= 0
            table = (len(vocab), patched(table[1], max(len(table[1]), int(keys.max(initial=-1)) + 1), keys[known],
                                         new_rows[known], -1))
            self._key_rows = table
        elif table is None or table[0] != len(vocab) or top >= len(table[1]):
            ids = list(vocab.ids)
            of_vocab = self.store.point_keys(ids)
            rows = np.full(max(int(of_vocab.max(initial=-1)), top) + 1, -1, dtype=np.int64)
            known = of_vocab >= 0
            rows[of_vocab[known]] = np.flatnonzero(known)
            table = (len(ids), rows)
            self._key_rows = table
        return table[1]

    def _kernel_key_rows(self) -> np.ndarray:
        """The key table for the compiled fusion, or no table when every store key is its vocabulary row (the
        catalogue indexed in vocabulary order, as sync_index does): the kernel then takes keys as rows and skips a
        dependent read per hit; a key beyond the snapshot sends the request to the reference path, which rebuilds
        the table."""
        rows = self._key_table()
        identity = self._identity_keys
        if identity is None or identity[0] is not rows:
            identity = (rows, len(rows) == self._key_rows[0] and bool((rows == np.arange(len(rows))).all()))
            self._identity_keys = identity
        return _NO_KEY_ROWS if identity[1] else rows

    def _rows_of_keys(self, keys: np.ndarray) -> np.ndarray:
        """Vocabulary rows of store keys (one gather); keys of points outside the vocabulary are dropped."""
        rows = self._key_table(int(keys.max()) if len(keys) else -1)[keys]
        return rows if rows.min(initial=0) >= 0 else rows[rows >= 0]

    def _build_lookups(self) -> tuple[ItemTable, np.ndarray | None]:
        """Build whatever per-vocabulary lookup is missing or stale: key rows, ids, stock and price, the item table
        and its norms, kinds when the substitute discount is on."""
        self._kernel_key_rows()  # the key table, and whether its keys are the rows (an O(vocabulary) check)
        self._id_array()
        kinds = self._kinds() if self.settings.substitute_discount < 1.0 else None
        self._arrays()
        if self.signals.als is not None:
            self.scorer._cf_table()
        table = self.scorer.table()
        table.text_norms  # built now rather than by the first one-anchor request
        return table, kinds

    def warm(self) -> None:
        """Build the per-vocabulary lookups and the compiled fusion now, so the first request does not pay for
        them."""
        table, kinds = self._build_lookups()
        if self.compiled and len(self.signals.vocab):  # compiles (or loads from numba's disk cache) the kernels
            query = fusion_kernel.anchor_query(self.scorer, [0], None, None, kinds,
                                               self.settings.substitute_discount)
            fusion_kernel.fuse(table, np.zeros(1, dtype=np.int64), query)
            fusion_kernel.top_partners(query, 1, fusion_kernel.PartnerFilter())
            if fusion_kernel.anchors_in_kernel(self.scorer, [0]):  # the argument types of an anchor request
                flt = self._partner_filter(Filter({"in_stock": True}, (), {"price": (0.0, 1.0)}), [0])
                fusion_kernel.fuse_anchor_request(
                    self.scorer, table, self._key_table(), np.zeros(0, dtype=np.int64), [0], None, 1.0, None,
                    self.scorer.cf_query([0], None), kinds, self.settings.substitute_discount, 1, flt, 1)

    def invalidate(self) -> None:
        """Call after products change (stock, price, text, category): the next build of each lookup redoes it."""
        self._dirty = True
        self._kind_codes = None
        self.scorer.invalidate()

    def refresh(self, rows: Sequence[int] | None = None) -> None:
        """Bring the lookups up to date in the writer's call, so no request rebuilds them. With `rows` (the
        vocabulary rows product upserts changed or appended, nothing else changed) only those rows are redone:
        a one-product upsert at 92k products costs milliseconds here (bench/bench_upsert.py); without, all of
        it is rebuilt (invalidate() and build: 100-150 ms at 92k)."""
        if rows is None or self._dirty:
            self.invalidate()
            self._build_lookups()
            return
        grown = np.arange(self._key_rows[0] if self._key_rows is not None else 0, len(self.signals.vocab))
        rows = np.union1d(np.asarray(rows, dtype=np.int64), grown)
        if self._kind_codes is not None:
            self._kinds(rows)
        self._arrays(rows)
        self.scorer.update_rows(rows)
        self._build_lookups()  # the key table and ids extend themselves to the grown vocabulary

    def _partner_filter(self, flt: Filter, excluded: Sequence[int]) -> fusion_kernel.PartnerFilter:
        """The stock, price and excluded-id part of `flt` as arrays over vocabulary rows (a price range with
        neither bound is no condition, as in the engine)."""
        stock, price = self._arrays()
        want = flt.must_match.get("in_stock")
        low, high = flt.ranges.get("price", (None, None))
        return fusion_kernel.PartnerFilter(
            np.array(sorted(excluded), dtype=np.int64), stock if isinstance(want, bool) else None, want is not False,
            price if low is not None or high is not None else None, -np.inf if low is None else low,
            np.inf if high is None else high)

    @staticmethod
    def _rest_of(flt: Filter) -> Filter | None:
        """The conditions of `flt` that _partner_filter leaves out (other payload fields, category); None if none."""
        if not flt.category_prefix and flt.ranges.keys() <= _VECTORISED_RANGES and (
                not flt.must_match or (len(flt.must_match) == 1 and type(flt.must_match.get("in_stock")) is bool)):
            return None
        match = {k: v for k, v in flt.must_match.items() if not (k == "in_stock" and isinstance(v, bool))}
        ranges = {k: v for k, v in flt.ranges.items() if k not in _VECTORISED_RANGES}
        return Filter(match, (), ranges, flt.category_prefix) if match or ranges or flt.category_prefix else None

    def _per_product(self, idx: np.ndarray, flt: Filter) -> np.ndarray:
        """The rows among `idx` passing what _partner_filter leaves out (other payload fields, category)."""
        rest = self._rest_of(flt)
        if len(idx) and rest is not None:
            ids = self.signals.vocab.ids
            idx = idx[[product_matches(self.products.get(ids[j], _NO_PRODUCT), rest) for j in idx.tolist()]]
        return idx

    def _passing(self, idx: np.ndarray, flt: Filter, excluded: Sequence[int]) -> np.ndarray:
        """The vocab indices among `idx` whose product passes the filter (vectorised for stock, price and
        excluded ids; other payload conditions are checked per product). The numpy reference of top_partners'
        filter in the compiled path."""
        if not len(idx):
            return idx
        keep = ~member(idx, excluded)
        part = self._partner_filter(flt, ())
        if part.stock is not None:
            keep &= part.stock[idx] == part.want_stock
        if part.price is not None:
            p = part.price[idx]
            keep &= ~np.isnan(p) & (np.nan_to_num(p, nan=-np.inf) >= part.low) & (np.nan_to_num(p, nan=np.inf) <= part.high)
        return self._per_product(idx[keep], flt)

    def _popular_passing(self, flt: Filter, n: int) -> np.ndarray:
        """The n most popular products passing `flt`, read down the popularity order in growing windows (stock,
        price and excluded ids in arrays, other conditions per product), so a narrow filter still finds its
        products anywhere in the catalogue."""
        counts = self.signals.popularity.counts[: len(self.signals.vocab)]  # an upsert grows counts before vocab
        order = np.argsort(-counts, kind="stable")
        excluded = [self.signals.vocab.index[i] for i in flt.must_not_ids if i in self.signals.vocab.index]
        found: list[np.ndarray] = []
        start, window, have = 0, 4 * n, 0
        while start < len(order) and have < n:
            passing = self._passing(order[start:start + window], flt, excluded)
            found.append(passing)
            have += len(passing)
            start, window = start + window, window * 8
        return np.concatenate(found)[:n] if found else np.zeros(0, dtype=np.int64)

    def _reference_partners(self, anchor_idx: Sequence[int], flt: Filter, excluded: Sequence[int],
                            n: int) -> np.ndarray:
        """The anchors' n strongest co-occurrence partners passing `flt`, in numpy (top_partners' reference)."""
        partners, _ = self.signals.cooc.top_partners(anchor_idx, 2 * n)
        return self._passing(partners, flt, excluded)[:n]

    def retrieve(self, request: RetrievalRequest) -> RetrievalResult:
        """One fused engine query (prefetch per vector signal + RRF, under the payload filter) plus the
        co-occurrence graph's partners; the pool is scored with the explained weighted fusion. Takes no lock: a
        request that overlapped a product upsert's in-place row writes is redone (after three tries, with the
        writers held off)."""
        scorer = self.scorer
        for _ in range(3):
            seq = scorer.seq
            result = self._retrieve(request)
            if not seq & 1 and scorer.seq == seq:
                return result
        with scorer.rows_stable():
            return self._retrieve(request)

    def _retrieve(self, request: RetrievalRequest) -> RetrievalResult:
        t0 = time.perf_counter()
        s, cfg = self.signals, self.settings
        vocab_index = s.vocab.index
        notes: list[str] = []
        anchors, anchor_idx, unknown = [], [], []
        for a in dict.fromkeys(request.anchors):  # a repeated anchor is one anchor
            i = vocab_index.get(a)
            if i is None:
                unknown.append(a)
            else:
                anchors.append(a)
                anchor_idx.append(i)
        if unknown:
            notes.append(f"unknown item id(s) ignored: {', '.join(unknown[:5])}")
        user = request.user_id
        user_known = user is not None and s.als is not None and s.als.user_vector(user) is not None
        if user is not None and not user_known:
            notes.append(f"unknown user {user!r}: content-based cold start")
        flt = request.filter or Filter()
        flt = Filter(flt.must_match, tuple(dict.fromkeys((*flt.must_not_ids, *anchors))), flt.ranges,
                     flt.category_prefix)
        n = max(cfg.prefetch_k, request.k)
        n_partners = min(cfg.partners_k, n)

        prefetches: list[Prefetch] = []
        paths: list[str] = []
        need_vector = None
        if request.need and s.encoder is not None:
            need_vector = s.encoder.encode([request.need])[0]
            prefetches.append(Prefetch("text", need_vector, n))
            paths.append("need")
        compiled = self.compiled
        table = self.scorer.table()  # either backend: the same query norms, so the same engine query
        norm = text_q = None
        if anchor_idx and s.text_vectors is not None:
            if len(anchor_idx) > 1:
                q = s.text_vectors[anchor_idx].mean(axis=0)
                norm = float(np.sqrt(q @ q))
            else:
                q = s.text_vectors[anchor_idx[0]]
                norm = (table.text_norms.item(anchor_idx[0]) if anchor_idx[0] < len(table.rows)
                        else float(np.sqrt(q @ q)))
            text_q = q / norm if norm else q
            prefetches.append(Prefetch("text", text_q, n, finite=True))
            paths.append("text")
        cf_query = self.scorer.cf_query(anchor_idx, user if user_known else None)
        if cf_query is not None:
            prefetches.append(Prefetch("cf", cf_query, n, finite=True))
            paths.append("cf")
        query = kinds = in_kernel = None
        if compiled and (anchor_idx or need_vector is not None or cf_query is not None):
            kinds = self._kinds() if cfg.substitute_discount < 1.0 and anchor_idx else None
            in_kernel = (bool(anchor_idx) and self._rest_of(flt) is None
                         and fusion_kernel.anchors_in_kernel(self.scorer, anchor_idx))
            if not in_kernel:
                query = fusion_kernel.anchor_query(self.scorer, anchor_idx, need_vector, cf_query, kinds,
                                                   cfg.substitute_discount, norm if len(anchor_idx) == 1 else None)
        passing = np.zeros(0, dtype=np.int64)
        if anchor_idx:
            paths.append("cooc")
            excluded = [vocab_index[i] for i in flt.must_not_ids if i in vocab_index]
            if in_kernel:  # the kernel prepares the anchors and their partners after the engine call
                partner_filter = self._partner_filter(flt, excluded)
            elif query is not None:  # anchor-only work goes before the engine call, which leaves memory cold
                passing = fusion_kernel.top_partners(query, 2 * n_partners, self._partner_filter(flt, excluded))
                passing = self._per_product(passing, flt)[:n_partners]
            else:
                passing = self._reference_partners(anchor_idx, flt, excluded, n_partners)
        keys = (self.store.fused_keys(prefetches, n, flt, rrf_k=cfg.rrf_k) if prefetches
                else np.zeros(0, dtype=np.int64))
        pool = None
        behaviour = s.behaviour is not None
        fused_k = len(keys) + max(n_partners, len(passing)) if behaviour else request.k  # behaviour: rank them all
        if in_kernel:
            def fuse(key_rows):
                return fusion_kernel.fuse_anchor_request(
                    self.scorer, table, key_rows, keys, anchor_idx, text_q, norm, need_vector, cf_query, kinds,
                    cfg.substitute_discount, n_partners, partner_filter, fused_k)

            fused = fuse(self._kernel_key_rows())
            if fused.status == fusion_kernel.NEW_KEY:
                fused = fuse(self._key_table(int(keys.max())))
            if fused.status == fusion_kernel.OK and len(fused.pool):
                if behaviour:
                    fused = self._with_behaviour(fused, anchors, anchor_idx, user if user_known else None, kinds,
                                                 request.k)
                candidates = self._candidates(fused.names, fused.chosen, fused.ranked, anchor_idx, "engine")
                notes.append(f"retrieval {1000 * (time.perf_counter() - t0):.1f} ms")
                return RetrievalResult(candidates, notes, paths)
            passing = self._reference_partners(anchor_idx, flt, excluded, n_partners)  # stale snapshot: reference path
        elif query is not None:
            fused = fusion_kernel.fuse_hits(table, self._key_table(), keys, passing, query, fused_k)
            if fused.status == fusion_kernel.NEW_KEY:
                fused = fusion_kernel.fuse_hits(table, self._key_table(int(keys.max())), keys, passing, query,
                                                fused_k)
            if fused.status == fusion_kernel.OK and len(fused.pool):
                if behaviour:
                    fused = self._with_behaviour(fused, anchors, anchor_idx, user if user_known else None, kinds,
                                                 request.k)
                candidates = self._candidates(fused.names, fused.chosen, fused.ranked, anchor_idx, "engine")
                notes.append(f"retrieval {1000 * (time.perf_counter() - t0):.1f} ms")
                return RetrievalResult(candidates, notes, paths)
            # a pool beyond the snapshot taken before the engine call (the vocabulary grew during it): the
            # reference path reads fresh arrays
            pool, engine_found = fused.pool, fused.engine_found
        if pool is None:
            pool = self._rows_of_keys(keys)
            engine_found = len(pool)
            if len(passing):  # sets: np.isin costs ~0.1 ms here, where every numpy call is cold
                in_pool = set(pool.tolist())
                extra = [j for j in passing.tolist() if j not in in_pool]
                pool = np.concatenate([pool, np.array(extra, dtype=np.int64)]) if extra else pool
        popular = not len(pool)
        if popular:
            guided = bool(anchor_idx) or need_vector is not None or cf_query is not None
            notes.append("no retrieved product passes the filters: most popular items that do" if guided
                         else "no anchors, need or known user: most popular items")
            paths.append("popular")
            pool = self._popular_passing(flt, n)
            if not len(pool):
                notes[-1] = "no product in the catalogue passes the filters"
        feats = self.scorer.features(pool, anchors, user if user_known else None, need_vector, cf_query)
        names, weighted = self.scorer.weighted(feats, len(pool))
        scores = weighted.sum(axis=0)
        if popular:
            scores = scores + s.popularity.counts[pool] / max(s.popularity.counts.max(), 1.0)
        if cfg.substitute_discount < 1.0 and anchor_idx:
            kinds = self._kinds()
            scores = np.where(member(kinds[pool], kinds[anchor_idx]), scores * cfg.substitute_discount, scores)
        order = np.argsort(-scores, kind="stable")[: request.k]
        chosen = pool[order]
        from_cooc = set(passing.tolist())
        contributions = weighted[:, order].T
        codes = (np.fromiter((j in from_cooc for j in chosen.tolist()), dtype=bool, count=len(chosen))
                 * fusion_kernel.FROM_COOC + ((order < engine_found) | popular) * fusion_kernel.FROM_ENGINE
                 + (contributions > 0) @ (fusion_kernel.POSITIVE << np.arange(len(names))))
        counts = s.cooc.counts_with(anchor_idx, chosen) if anchor_idx else np.zeros(len(chosen))
        ranked = np.column_stack([scores[order], counts, codes, contributions])
        candidates = self._candidates(names, chosen, ranked, anchor_idx, "popular" if popular else "engine")
        notes.append(f"retrieval {1000 * (time.perf_counter() - t0):.1f} ms")
        return RetrievalResult(candidates, notes, paths)

    def _with_behaviour(self, fused: fusion_kernel.Fused, anchors: list[str], anchor_idx: list[int],
                        user_id: str | None, kinds: np.ndarray | None, k: int) -> fusion_kernel.Fused:
        """The kernel's fusion of the whole pool plus the behaviour feature (FusionScorer.features' last), the k
        best re-taken: what the reference path serves."""
        feature = self.scorer.behaviour_feature(fused.chosen, anchors, user_id)
        if feature is None:
            return dataclasses.replace(fused, order=fused.order[:k], chosen=fused.chosen[:k], ranked=fused.ranked[:k])
        contribution = self.scorer.weights.get("behaviour", 0.0) * feature
        added = contribution
        if kinds is not None and anchor_idx:
            added = np.where(member(kinds[fused.chosen], kinds[anchor_idx]),
                             contribution * self.settings.substitute_discount, contribution)
        scores = fused.ranked[:, 0] + added
        top = np.lexsort((fused.order, -scores))[:k]  # the reference's stable order: ties in pool order
        contributions = np.column_stack([fused.ranked[top, fusion_kernel.RANKED_COLUMNS:], contribution[top]])
        names = [*fused.names, "behaviour"]
        codes = ((fused.ranked[top, 2].astype(np.int64) & (fusion_kernel.POSITIVE - 1))
                 + (contributions > 0) @ (fusion_kernel.POSITIVE << np.arange(len(names))))
        ranked = np.column_stack([scores[top], fused.ranked[top, 1], codes, contributions])
        return dataclasses.replace(fused, names=names, order=fused.order[top], chosen=fused.chosen[top],
                                   ranked=ranked)

    def _candidates(self, names: list[str], chosen: np.ndarray, ranked: np.ndarray, anchor_idx: list[int],
                    base_source: str) -> list[Candidate]:
        """Candidates in rank order from fusion_kernel's ranked layout (score, co-occurrence count, provenance code,
        one contribution per name); with anchors, their evidence counts each shared session or bundle once."""
        names = tuple(names)
        cooc = self.signals.cooc
        surplus = (partial(cooc.bundle_surplus, tuple(anchor_idx), chosen)
                   if anchor_idx and getattr(cooc, "bundle_pairs", None) is not None else None)
        return Candidate.from_ranked(self._id_array()[chosen].tolist(), ranked, names, fusion_kernel.RANKED_COLUMNS,
                                     partial(found_by_of, names=names, base_source=base_source), bool(anchor_idx),
                                     surplus)


_NO_PRODUCT = Product(id="", title="", in_stock=False)
_NO_KEY_ROWS = np.zeros(0, dtype=np.int64)
_VECTORISED_RANGES = frozenset({"price"})  # the range _partner_filter checks in arrays
