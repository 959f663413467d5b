"""Item-item co-occurrence from sessions, baskets and bundles, with a complement score and popularity."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import scipy.sparse as sp

from rag_rec.data.models import Dataset
from rag_rec.rows import patched


@dataclass
class ItemVocab:
    ids: list[str]
    index: dict[str, int]

    @classmethod
    def of(cls, ids: Iterable[str]) -> "ItemVocab":
        ids = list(dict.fromkeys(ids))
        return cls(ids, {i: n for n, i in enumerate(ids)})

    def __len__(self) -> int:
        return len(self.ids)

    def extended(self, ids: Iterable[str]) -> "ItemVocab":
        """A new vocabulary with `ids` not yet in this one appended (this one is left as it is for its readers):
        a copy of the index, not a rebuild from the id list."""
        new = [i for i in dict.fromkeys(ids) if i not in self.index]
        index = dict(self.index)
        index.update((i, len(self.ids) + n) for n, i in enumerate(new))
        return ItemVocab(self.ids + new, index)

    def known(self, ids: Iterable[str]) -> list[int]:
        return [self.index[i] for i in ids if i in self.index]


def item_set_matrix(groups: Iterable[Sequence[str]], vocab: ItemVocab, weights: Sequence[float] | None = None
                    ) -> sp.csr_matrix:
    """Binary group x item matrix (one row per session/basket/bundle with >= 1 known item)."""
    rows, cols, vals = [], [], []
    r = 0
    for g, group in enumerate(groups):
        idx = sorted(set(vocab.known(group)))
        if not idx:
            continue
        w = 1.0 if weights is None else float(weights[g])
        rows.extend([r] * len(idx))
        cols.extend(idx)
        vals.extend([w] * len(idx))
        r += 1
    return sp.csr_matrix((np.asarray(vals, dtype=np.float32), (rows, cols)), shape=(r, len(vocab)))


def group_windows(items: Sequence[str], size: int | None) -> list[tuple[str, ...]]:
    """A group's distinct items in order, cut into consecutive windows of `size` items; pairs are counted within a
    window, so a 10,000-item session or a heavy buyer's history costs size x G pairs, not G^2."""
    distinct = tuple(dict.fromkeys(items))
    if not size or len(distinct) <= size:
        return [distinct]
    return [distinct[i:i + size] for i in range(0, len(distinct), size)]


def windowed(groups: Iterable[Sequence[str]], weights: Sequence[float], size: int | None
             ) -> tuple[list[tuple[str, ...]], list[float]]:
    """Every group cut by group_windows, each window with its group's weight."""
    out, out_weights = [], []
    for group, weight in zip(groups, weights):
        windows = group_windows(group, size)
        out.extend(windows)
        out_weights.extend([weight] * len(windows))
    return out, out_weights


def prune_rows(matrix: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep each row's k largest entries (an item's k strongest partners): bounded work per query."""
    matrix = matrix.tocsr()
    lengths = np.diff(matrix.indptr)
    if lengths.max(initial=0) <= k:
        return matrix
    keep = np.ones(matrix.nnz, dtype=bool)
    for row in np.flatnonzero(lengths > k):
        start, end = matrix.indptr[row], matrix.indptr[row + 1]
        drop = np.argpartition(-matrix.data[start:end], k)[k:]
        keep[start + drop] = False
    rows = np.repeat(np.arange(matrix.shape[0]), lengths)[keep]
    return sp.csr_matrix((matrix.data[keep], (rows, matrix.indices[keep])), shape=matrix.shape)


def _sum_rows(rows: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Sum of sparse rows given as (sorted column indices, values): the union of columns, values added."""
    cols, inverse = np.unique(np.concatenate([c for c, _ in rows]), return_inverse=True)
    return cols, np.bincount(inverse, weights=np.concatenate([v for _, v in rows]), minlength=len(cols))


class CooccurrenceScorer:
    """ItemKNN over co-membership counts.

    score(b | anchors) = sum_a  C[a,b] / (n_a * n_b) ** alpha   (alpha=0.5: cosine)
    With `complement=True`, items in the same leaf category as an anchor (likely substitutes) are multiplied
    by `substitute_discount`. Ties are broken by popularity (a 1e-6 backfill), so every item has a rank.
    Groups longer than `max_group_items` are counted in consecutive windows of that many items (group_windows).
    """

    def __init__(self, *, alpha: float = 0.5, complement: bool = False, substitute_discount: float = 0.5,
                 bundle_weight: float = 2.0, min_count: int = 1, name: str | None = None,
                 max_partners: int | None = None, max_group_items: int | None = None):
        self.alpha, self.complement, self.substitute_discount = alpha, complement, substitute_discount
        self._norm_cache: tuple[np.ndarray, np.ndarray] | None = None
        self.bundle_weight, self.min_count = bundle_weight, min_count
        self.max_partners, self.max_group_items = max_partners, max_group_items
        self.name = name or ("cooc" if complement else "itemknn")
        self._lock = threading.Lock()  # serialises overlay writes and compaction

    def fit(self, dataset: Dataset) -> "CooccurrenceScorer":
        self.vocab = ItemVocab.of(dataset.products)
        groups = [s.items for s in dataset.sessions.values()] + [b.items for b in dataset.bundles]
        weights = [1.0] * len(dataset.sessions) + [self.bundle_weight] * len(dataset.bundles)
        users = dataset.interactions.frame
        self.user_groups = bool(len(users)) and not dataset.sessions  # no sessions: a user's purchases are a group
        if self.user_groups:
            kept = users.loc[users["event"].fillna("") != "return"]  # a returned product was not bought with the rest
            for _, items in kept.groupby("user_id")["item_id"]:
                groups.append(tuple(items))
                weights.append(1.0)
        groups, weights = windowed(groups, weights, self.max_group_items)
        x = item_set_matrix(groups, self.vocab, weights)
        self._fit_matrix(x, dataset)
        self.bundle_pairs = None  # bundles shared per pair: evidence counts a bundle once, the scores bundle_weight times
        if dataset.bundles and self.bundle_weight != 1.0:
            bundles, _ = windowed([b.items for b in dataset.bundles], [1.0] * len(dataset.bundles),
                                  self.max_group_items)
            xb = item_set_matrix(bundles, self.vocab)
            pairs = (xb.T @ xb).tocsr()
            pairs.setdiag(0)
            pairs.eliminate_zeros()
            self.bundle_pairs = pairs
        return self

    def bundle_surplus(self, anchor_idx: Sequence[int], items: np.ndarray, r: int) -> float:
        """What the bundle weight adds to the co-occurrence count of items[r] with the anchors, beyond one per
        bundle: the count minus this is how many sessions and bundles hold both."""
        pairs = self.bundle_pairs
        if pairs is None:
            return 0.0
        j = int(items[r])
        shared = sum(float(pairs[a, j]) for a in anchor_idx if a < pairs.shape[0] and j < pairs.shape[1])
        return (self.bundle_weight - 1.0) * shared

    def _fit_matrix(self, x: sp.csr_matrix, dataset: Dataset) -> None:
        binary = x.copy()
        binary.data[:] = 1.0
        self._publish_counts(np.asarray(binary.sum(axis=0)).ravel() + 1e-9)
        c = (x.T @ binary).tocsr()
        c.setdiag(0)
        c.eliminate_zeros()
        if self.min_count > 1:
            c.data[c.data < self.min_count] = 0
            c.eliminate_zeros()
        self._publish(prune_rows(c, self.max_partners) if self.max_partners else c)
        self.leaf = self._leaf_codes(dataset)

    def _leaf_codes(self, dataset: Dataset) -> np.ndarray:
        """Leaf-category code per vocab item (-1: none): items sharing one are likely substitutes."""
        leaf = [dataset.products[i].leaf_category if i in dataset.products else "" for i in self.vocab.ids]
        self._leaf_index = {c: n for n, c in enumerate(sorted(set(leaf)))}
        return np.array([self._leaf_index[c] if c else -1 for c in leaf])

    def update_leaves(self, rows: np.ndarray, dataset: Dataset, vocab: ItemVocab | None = None) -> None:
        """Leaf codes of vocabulary `rows` (new or changed products) from their current category, the others
        kept: a leaf new to the scorer takes the next code (codes are only compared with each other)."""
        vocab = vocab or self.vocab
        ids, products, index = vocab.ids, dataset.products, self._leaf_index
        leaves = [products[ids[r]].leaf_category if ids[r] in products else "" for r in rows.tolist()]
        codes = [index.setdefault(c, len(index)) if c else -1 for c in leaves]
        self.leaf = patched(self.leaf, len(vocab), rows, codes, -1)

    def extend_vocab(self, vocab: ItemVocab, dataset: Dataset) -> None:
        """Adopt a larger vocabulary (new items appended): new rows/columns start empty. The stored rows, their
        overlay and the other items' leaf codes are shared, not copied: O(new items), not O(matrix)."""
        old, n = len(self.leaf), len(vocab)
        matrix = self._matrix
        indptr = np.concatenate([matrix.indptr, np.full(n - matrix.shape[0], matrix.indptr[-1],
                                                        dtype=matrix.indptr.dtype)])
        grown = sp.csr_matrix((matrix.data, matrix.indices, indptr), shape=(n, n), copy=False)
        grown.has_sorted_indices = True
        with self._lock:
            self._matrix = grown
        # the counts keep their dtype through updates: the compiled fusion is specialised on it (a new dtype
        # would compile a new kernel inside a request)
        grown_counts = np.full(n - len(self.counts), 1e-9, dtype=self.counts.dtype)
        self._publish_counts(np.concatenate([self.counts, grown_counts]))
        self.update_leaves(np.arange(old, n), dataset, vocab)
        self.vocab = vocab  # last: a reader that finds a new item finds its rows

    def score_vector(self, anchors: Sequence[str], user_id: str | None = None) -> np.ndarray:
        idx = self.vocab.known(anchors)
        scores = 1e-6 * self.popularity.astype(np.float64)
        if not idx:
            return scores
        rows = self.cooc[idx]
        norm = (self.counts[idx][:, None] * self.counts[None, :]) ** self.alpha
        contrib = np.asarray(rows.multiply(1.0 / norm).sum(axis=0)).ravel() if rows.nnz else 0.0
        scores = scores + contrib
        if self.complement:
            anchor_leaves = {self.leaf[i] for i in idx if self.leaf[i] >= 0}
            if anchor_leaves:
                same = np.isin(self.leaf, list(anchor_leaves))
                scores[same] *= self.substitute_discount
        scores[idx] = -np.inf
        return scores

    # Storage: an immutable CSR (sorted column indices) plus an overlay of rows changed since (add_groups):
    # a batch of events rewrites only its items' rows instead of copying the whole matrix. Readers take a
    # row from the overlay if present; `cooc` folds the overlay in (for whole-matrix work).
    OVERLAY_ROWS = 4096

    def _publish(self, matrix: sp.spmatrix) -> None:
        """Adopt a new co-occurrence matrix: CSR with sorted column indices (rows are binary-searched)."""
        matrix = matrix.tocsr()
        matrix.sort_indices()
        self._matrix = matrix
        self._overlay: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def cooc(self) -> sp.csr_matrix:
        """The whole matrix (the overlay folded in first)."""
        if self._overlay:
            with self._lock:
                self._compact()
        return self._matrix

    def _compact(self) -> None:
        overlay, base = self._overlay, self._matrix
        if not overlay:
            return
        keep = np.ones(base.nnz, dtype=bool)
        lengths = np.diff(base.indptr)
        for i in overlay:
            keep[base.indptr[i]:base.indptr[i + 1]] = False
        rows = np.repeat(np.arange(base.shape[0]), lengths)[keep]
        extra_rows = np.concatenate([np.full(len(c), i) for i, (c, _) in overlay.items()])
        cols = np.concatenate([base.indices[keep]] + [c for c, _ in overlay.values()])
        vals = np.concatenate([base.data[keep]] + [v for _, v in overlay.values()])
        self._publish(sp.csr_matrix((vals, (np.concatenate([rows, extra_rows]), cols)), shape=base.shape))

    def _row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        row = self._overlay.get(i)
        if row is not None:
            return row
        matrix = self._matrix
        start, end = matrix.indptr[i], matrix.indptr[i + 1]
        return matrix.indices[start:end], matrix.data[start:end]

    def _lookup(self, i: int, items: np.ndarray) -> np.ndarray:
        """Row i's raw co-occurrence counts at `items` (0 where absent): a binary search in the sorted row."""
        cols, vals = self._row(i)
        if not len(cols):
            return np.zeros(len(items))
        pos = np.minimum(np.searchsorted(cols, items), len(cols) - 1)
        return np.where(cols[pos] == items, vals[pos], 0.0)

    def _publish_counts(self, counts: np.ndarray) -> None:
        """Replace the counts with their norms and popularity computed here, by the writer: at 92k items
        counts ** alpha takes ~2 ms, which the first request after a product or event update paid before."""
        self._norm_cache = (counts, counts ** self.alpha)
        self.counts = counts
        self.popularity = counts / counts.max()

    def _norms(self) -> np.ndarray:
        """counts ** alpha, recomputed when the counts array is replaced (fit, new items, new events)."""
        cached = self._norm_cache
        if cached is None or cached[0] is not self.counts:
            cached = (self.counts, self.counts ** self.alpha)
            self._norm_cache = cached
        return cached[1]

    def counts_with(self, anchor_idx: Sequence[int], items: np.ndarray) -> np.ndarray:
        """Raw co-occurrence counts of each item with the anchors, summed (the provenance evidence)."""
        out = np.zeros(len(items))
        for i in anchor_idx:
            out += self._lookup(i, items)
        return out

    def score_pool(self, anchor_idx: Sequence[int], pool: np.ndarray,
                   pool_leaves: np.ndarray | None = None) -> np.ndarray:
        """score_vector restricted to `pool` (vocab indices): a binary search in each anchor's row. `pool_leaves`
        (the pool's leaf codes) saves a gather when the caller already has them."""
        out = np.zeros(len(pool))
        if not len(anchor_idx) or not len(pool):
            return out
        norms = self._norms()
        pool_norm = norms[pool]
        for i in anchor_idx:
            out += self._lookup(i, pool) / (norms[i] * pool_norm)
        if self.complement:
            leaves = {self.leaf[i] for i in anchor_idx if self.leaf[i] >= 0}
            if leaves:
                if pool_leaves is None:
                    pool_leaves = self.leaf[pool]
                same = np.zeros(len(pool), dtype=bool)
                for leaf in leaves:
                    same |= pool_leaves == leaf
                out = np.where(same, out * self.substitute_discount, out)
        return out

    def top_partners(self, anchor_idx: Sequence[int], n: int) -> tuple[np.ndarray, np.ndarray]:
        """(vocab indices, raw co-occurrence counts) of the items most often seen with the anchors."""
        if not len(anchor_idx):
            return np.zeros(0, dtype=int), np.zeros(0)
        rows = [self._row(i) for i in anchor_idx]
        if len(rows) == 1:
            cols, vals = rows[0]
        else:
            cols, vals = _sum_rows(rows)
        keep = np.ones(len(cols), dtype=bool)
        for i in anchor_idx:
            keep &= cols != i
        cols, vals = cols[keep], vals[keep]
        if len(vals) > 4 * n and n > 0:  # the n-th largest value bounds the answer; ties at it are all kept
            top = vals >= np.partition(vals, len(vals) - n)[len(vals) - n]
            cols, vals = cols[top], vals[top]
        order = np.lexsort((cols, -vals))[:n]
        return cols[order].astype(int), vals[order]

    def evidence(self, anchors: Sequence[str], item: str) -> int:
        """How many sessions and bundles hold `item` with the anchors (for provenance)."""
        if item not in self.vocab.index:
            return 0
        idx, items = self.vocab.known(anchors), np.array([self.vocab.index[item]])
        return max(0, round(float(self.counts_with(idx, items)[0]) - self.bundle_surplus(idx, items, 0)))

    def score(self, anchors: Sequence[str], user_id: str | None = None) -> dict[str, float]:
        vec = self.score_vector(anchors, user_id)
        nz = np.flatnonzero(vec > 1e-5)
        return {self.vocab.ids[i]: float(vec[i]) for i in nz}

    def add_groups(self, groups: Sequence[Sequence[str]], dataset: Dataset) -> None:
        """Incremental update: add new sessions/baskets (new items extend the vocabulary). Only the rows of
        the groups' items are rewritten (into the overlay); strongest max_partners kept per row."""
        new_ids = [i for g in groups for i in g if i not in self.vocab.index]
        if new_ids:
            self.extend_vocab(self.vocab.extended(new_ids), dataset)
        x = item_set_matrix(windowed(groups, [1.0] * len(groups), self.max_group_items)[0], self.vocab)
        binary = x.copy()
        binary.data[:] = 1.0
        self._add_delta((x.T @ binary).tocoo(), np.asarray(binary.sum(axis=0)).ravel())

    def extend_groups(self, extensions: Sequence[tuple[Sequence[str], Sequence[str]]], dataset: Dataset) -> None:
        """Incremental update of groups the fit already counted (a user's purchases, when the data has no
        sessions): each (old items, new items) adds exactly the pairs the group gains, as a refit would. Only the
        group's last window changes or new windows follow it: O(new x window), not O(history^2)."""
        distinct = [(dict.fromkeys(old), dict.fromkeys(new)) for old, new in extensions]
        extensions = [(tuple(old), tuple(i for i in new if i not in old)) for old, new in distinct]
        extensions = [(old, new) for old, new in extensions if new]
        if not extensions:
            return
        new_ids = [i for old, new in extensions for i in (*old, *new) if i not in self.vocab.index]
        if new_ids:
            self.extend_vocab(self.vocab.extended(new_ids), dataset)
        grown_rows, fresh_rows, whole_rows = [], [], []
        size = self.max_group_items
        for old, new in extensions:
            kept = len(old) // size * size if size else 0  # the complete windows before it stay as they are
            tail = old[kept:]
            first, *rest = group_windows(tail + new, size)
            grown_rows.append(first)
            fresh_rows.append(first[len(tail):])
            whole_rows.extend(rest)
        grown, fresh, whole = (item_set_matrix(rows, self.vocab) for rows in (grown_rows, fresh_rows, whole_rows))
        for m in (grown, fresh, whole):
            m.data[:] = 1.0
        # grown'grown - tail'tail = grown'fresh + fresh'grown - fresh'fresh: O(new x window), not O(window^2)
        delta = ((grown.T @ fresh) + (fresh.T @ grown) - (fresh.T @ fresh) + (whole.T @ whole)).tocoo()
        self._add_delta(delta, np.asarray(fresh.sum(axis=0)).ravel() + np.asarray(whole.sum(axis=0)).ravel())

    def _add_delta(self, delta: sp.coo_matrix, added_counts: np.ndarray) -> None:
        """Add pair counts (only the rows they touch are rewritten, into the overlay; the strongest max_partners
        kept per row) and per-item group counts."""
        off_diagonal = (delta.row != delta.col) & (delta.data != 0)
        by_row = sp.csr_matrix((delta.data[off_diagonal], (delta.row[off_diagonal], delta.col[off_diagonal])),
                               shape=delta.shape)  # each touched row one slice: linear in the pairs
        indptr, cols, vals = by_row.indptr, by_row.indices, by_row.data
        with self._lock:
            for i in np.flatnonzero(np.diff(indptr)).tolist():
                mine = slice(indptr[i], indptr[i + 1])
                merged, summed = _sum_rows([self._row(i), (cols[mine], vals[mine])])
                summed = summed.astype(self._matrix.dtype)
                if self.max_partners and len(merged) > self.max_partners:
                    top = np.sort(np.argpartition(-summed, self.max_partners - 1)[: self.max_partners])
                    merged, summed = merged[top], summed[top]
                self._overlay[i] = (merged.astype(self._matrix.indices.dtype), summed)
            if len(self._overlay) > self.OVERLAY_ROWS:
                self._compact()
        self._publish_counts(self.counts + added_counts.astype(self.counts.dtype))


class PopularityScorer:
    """Most-interacted items first (interactions + session/bundle membership)."""

    name = "pop"

    def fit(self, dataset: Dataset) -> "PopularityScorer":
        self.vocab = ItemVocab.of(dataset.products)
        counts = np.zeros(len(self.vocab))
        frame = dataset.interactions.frame  # a returned product is no vote
        freq = frame.loc[frame["event"].fillna("") != "return", "item_id"].value_counts()
        for item, n in freq.items():
            if item in self.vocab.index:
                counts[self.vocab.index[item]] += n
        for group in dataset.item_sets():
            for i in self.vocab.known(set(group)):
                counts[i] += 1
        self.counts = counts
        return self

    def score_vector(self, anchors: Sequence[str], user_id: str | None = None) -> np.ndarray:
        scores = self.counts.astype(np.float64).copy()
        scores[self.vocab.known(anchors)] = -np.inf
        return scores

    def score(self, anchors: Sequence[str], user_id: str | None = None) -> dict[str, float]:
        vec = self.score_vector(anchors)
        return {self.vocab.ids[i]: float(vec[i]) for i in np.argsort(-vec)[:1000] if np.isfinite(vec[i])}
