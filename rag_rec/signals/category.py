"""Category-level complement affinity: which category paths are bought/bundled together.

Item co-occurrence is sparse (most items are rare); category pairs are dense. affinity(b | anchors) =
P(category(b) co-occurs | anchors' categories) + a same-category bonus, at a fixed path depth.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.sparse as sp

from rag_rec.data.models import Dataset
from rag_rec.rows import patched
from rag_rec.signals.cooc import ItemVocab


class CategoryAffinity:
    name = "category"
    dense_codes = 5000  # up to this many category codes the pair counts are one dense matrix

    def __init__(self, depth: int = 4, same_bonus: float = 0.5):
        self.depth, self.same_bonus = depth, same_bonus

    def fit(self, dataset: Dataset, vocab: ItemVocab | None = None) -> "CategoryAffinity":
        self.vocab = vocab or ItemVocab.of(dataset.products)
        keys = [tuple(dataset.products[i].category[: self.depth]) if i in dataset.products else () for i in self.vocab.ids]
        self.codes = {k: n for n, k in enumerate(sorted({k for k in keys if k}))}
        self.item_code = np.array([self.codes[k] if k else -1 for k in keys])
        n = len(self.codes)
        x = self._group_matrix(dataset.item_sets())
        # symmetric; C order so an anchor's row is one contiguous read (toarray of the CSC product is F order,
        # which made each row 3,903 cache lines on Dunnhumby)
        pair = self._pairs(x)
        self.pair = np.ascontiguousarray(pair.toarray()) if n <= self.dense_codes else pair
        self.count = np.asarray(x.sum(axis=0)).ravel()
        return self

    def extend(self, dataset: Dataset, vocab: ItemVocab, rows: np.ndarray | None = None) -> None:
        """Adopt `vocab` (new items appended) and re-code `rows` (default: the new items) from their current
        category, the other items' codes kept; the pair counts are unchanged (a category the fit never saw
        has no code)."""
        if rows is None:
            rows = np.arange(len(self.item_code), len(vocab))
        ids, products = vocab.ids, dataset.products
        keys = [tuple(products[ids[r]].category[: self.depth]) if ids[r] in products else () for r in rows.tolist()]
        codes = [self.codes.get(k, -1) if k else -1 for k in keys]
        self.item_code = patched(self.item_code, len(vocab), rows, codes, -1)
        self.vocab = vocab

    def _group_matrix(self, groups) -> sp.csr_matrix:
        """Binary group x category-code matrix: the categories of each group's known, categorised items."""
        rows, cols = [], []
        for g, group in enumerate(groups):
            cats = {int(self.item_code[j]) for j in self.vocab.known(group) if self.item_code[j] >= 0}
            rows.extend([g] * len(cats))
            cols.extend(cats)
        return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(max(rows, default=-1) + 1, len(self.codes)))

    @staticmethod
    def _pairs(x: sp.csr_matrix) -> sp.csr_matrix:
        """Category-pair counts of a group x category matrix; a category's own count is `count`, never a pair."""
        pair = (x.T @ x).tocsr()
        pair.setdiag(0)
        pair.eliminate_zeros()
        return pair

    def add_groups(self, groups: Sequence[Sequence[str]]) -> None:
        """Incremental update: the category pairs and counts of new sessions, counted as the fit counts them
        (dense pairs are added in place; a sparse pair matrix is replaced whole)."""
        x = self._group_matrix(groups)
        if not x.nnz:
            return
        delta = self._pairs(x)
        if isinstance(self.pair, np.ndarray):
            coo = delta.tocoo()
            np.add.at(self.pair, (coo.row, coo.col), coo.data)
        else:
            self.pair = (self.pair + delta).tocsr()
        self.count = self.count + np.asarray(x.sum(axis=0)).ravel()

    def score_pool(self, anchor_idx: Sequence[int], pool: np.ndarray) -> np.ndarray:
        return self.score_codes(anchor_idx, self.item_code[pool])

    def score_codes(self, anchor_idx: Sequence[int], pool_codes: np.ndarray) -> np.ndarray:
        """score_pool for candidates given by their category codes (-1: no category)."""
        out = np.zeros(len(pool_codes))
        row = self.anchor_row(anchor_idx)
        if row is None:
            return out
        valid = pool_codes >= 0
        out[valid] = row[pool_codes[valid]]
        return out

    def anchor_row(self, anchor_idx: Sequence[int]) -> np.ndarray | None:
        """Affinity of every category code to the anchors' categories (None: no anchor has one)."""
        codes = [self.item_code[j] for j in anchor_idx if self.item_code[j] >= 0]
        if not codes:
            return None
        if len(codes) == 1 and isinstance(self.pair, np.ndarray):
            row = self.pair[codes[0]] / (self.count[codes[0]] + 1.0)
        else:
            row = np.asarray(self.pair[codes].sum(axis=0)).ravel() / (self.count[codes].sum() + 1.0)
        row[codes] += self.same_bonus
        return row

    def anchor_parts(self, anchor_idx: Sequence[int]) -> tuple[np.ndarray, np.ndarray, float, np.ndarray, float] | None:
        """anchor_row as (pairs, codes, divisor, bonus codes, bonus): affinity to code c is
        sum(pairs[codes, c]) / divisor, plus the bonus when c is a bonus code. Nothing is copied for a dense
        pair matrix, so the compiled fusion reads only the cells its candidates need."""
        if len(anchor_idx) == 1:
            code = int(self.item_code[anchor_idx[0]])
            codes = [code] if code >= 0 else []
        else:
            codes = [code for code in self.item_code[list(anchor_idx)].tolist() if code >= 0]
        if not codes:
            return None
        if not isinstance(self.pair, np.ndarray):
            row = self.anchor_row(anchor_idx)
            return row[None, :], np.zeros(1, dtype=np.int64), 1.0, np.zeros(0, dtype=np.int64), 0.0
        if len(codes) == 1:
            one = np.array(codes, dtype=np.int64)
            return self.pair, one, float(self.count[codes[0]]) + 1.0, one, float(self.same_bonus)
        return (self.pair, np.array(codes, dtype=np.int64), float(self.count[codes].sum()) + 1.0,
                np.array(sorted(set(codes)), dtype=np.int64), float(self.same_bonus))

    def score_vector(self, anchors: Sequence[str]) -> np.ndarray:
        codes = [self.item_code[j] for j in self.vocab.known(anchors) if self.item_code[j] >= 0]
        out = np.zeros(len(self.vocab))
        if not codes:
            return out
        rows = self.pair[codes]
        row = np.asarray(rows.sum(axis=0)).ravel() / (self.count[codes].sum() + 1.0)
        row[codes] += self.same_bonus
        valid = self.item_code >= 0
        out[valid] = row[self.item_code[valid]]
        return out
