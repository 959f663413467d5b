"""Lexical similarity: TF-IDF cosine over product titles and brands.

A small sentence encoder blurs exact tokens — brands, model numbers, sizes, series names — that bundle
partners often share ("Canon EOS" body and lens, "Disney Frozen" dress and shoes). Rows are sublinear-tf x
smoothed-idf, L2-normalised; similarity to several anchors is the mean of the cosines (one dot product with
the anchors' mean row).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np
import scipy.sparse as sp

from rag_rec.data.models import Dataset, Product
from rag_rec.signals.cooc import ItemVocab

_TOKEN = re.compile(r"\w+", re.UNICODE)


def lexical_text(product: Product | None) -> str:
    if product is None:
        return ""
    brand = product.brand or ""
    return product.title if brand.lower() in product.title.lower() else f"{product.title} {brand}"


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


class LexicalSimilarity:
    """Item x term TF-IDF rows in vocabulary order; scores are cosines with the anchors' mean row."""

    name = "lexical"

    def fit(self, dataset: Dataset, vocab: ItemVocab | None = None) -> LexicalSimilarity:
        self.vocab = vocab or ItemVocab.of(dataset.products)
        docs = [tokens(lexical_text(dataset.products.get(i))) for i in self.vocab.ids]
        self.terms: dict[str, int] = {}
        for doc in docs:
            for t in doc:
                self.terms.setdefault(t, len(self.terms))
        df = np.zeros(len(self.terms))
        for doc in docs:
            df[[self.terms[t] for t in set(doc)]] += 1
        self.idf = np.log((1.0 + len(docs)) / (1.0 + df)) + 1.0
        self.matrix = self._rows(docs)
        return self

    def update(self, dataset: Dataset, vocab: ItemVocab, ids: Sequence[str]) -> None:
        """Rows for new items (appended to the vocabulary) and for changed `ids`, from the fitted terms and idf
        (words the fit never saw are dropped; refit to learn them). One pass over the stored rows; the new
        matrix is published in one assignment, so concurrent readers see the old rows or the new ones."""
        old = self.matrix.tocoo()
        changed = np.array(sorted({vocab.index[i] for i in ids if i in vocab.index}
                                  | set(range(old.shape[0], len(vocab)))), dtype=np.int64)
        rows = self._rows(tokens(lexical_text(dataset.products.get(vocab.ids[j]))) for j in changed.tolist()).tocoo()
        keep = ~np.isin(old.row, changed)
        self.matrix = sp.csr_matrix(
            (np.concatenate([old.data[keep], rows.data]),
             (np.concatenate([old.row[keep], changed[rows.row]]), np.concatenate([old.col[keep], rows.col]))),
            shape=(len(vocab), len(self.terms)))
        self.vocab = vocab

    def _rows(self, docs: Iterable[list[str]]) -> sp.csr_matrix:
        indptr, indices, data = [0], [], []
        for doc in docs:
            counts: dict[int, int] = {}
            for t in doc:
                j = self.terms.get(t)
                if j is not None:
                    counts[j] = counts.get(j, 0) + 1
            cols = np.fromiter(sorted(counts), dtype=np.int64, count=len(counts))
            weights = (1.0 + np.log([counts[c] for c in cols.tolist()])) * self.idf[cols] if len(cols) else np.zeros(0)
            norm = np.linalg.norm(weights)
            indices.extend(cols.tolist())
            data.extend((weights / norm if norm else weights).tolist())
            indptr.append(len(indices))
        return sp.csr_matrix((np.asarray(data, dtype=np.float32), np.asarray(indices, dtype=np.int32),
                              np.asarray(indptr, dtype=np.int64)), shape=(len(indptr) - 1, len(self.terms)))

    @staticmethod
    def _query(m: sp.csr_matrix, anchor_idx: Sequence[int]) -> tuple[np.ndarray, np.ndarray] | None:
        """The anchors' mean row as (sorted term ids, weights); None when no anchor has a known word. Sparse, so
        a request costs the anchors' and the pool's words, not the number of terms."""
        rows = [(m.indptr[i], m.indptr[i + 1]) for i in anchor_idx if i < m.shape[0]]
        if not any(end > start for start, end in rows):
            return None
        if len(rows) == 1:
            start, end = rows[0]
            order = np.argsort(m.indices[start:end])
            return m.indices[start:end][order], m.data[start:end][order].astype(np.float64)
        terms, inverse = np.unique(np.concatenate([m.indices[s:e] for s, e in rows]), return_inverse=True)
        weights = np.bincount(inverse, weights=np.concatenate([m.data[s:e] for s, e in rows]), minlength=len(terms))
        return terms, weights / len(rows)

    def score_pool(self, anchor_idx: Sequence[int], pool: np.ndarray) -> np.ndarray:
        """Mean cosine of each pool item with the anchors (0 for items without words)."""
        m = self.matrix
        query = self._query(m, anchor_idx)
        if query is None or not len(pool):
            return np.zeros(len(pool))
        terms, weights = query
        pool = np.asarray(pool)
        inside = pool < m.shape[0]
        rows = np.where(inside, pool, 0)
        starts, lengths = m.indptr[rows], np.where(inside, m.indptr[rows + 1] - m.indptr[rows], 0)
        positions = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        words = m.indices[positions]
        at = np.minimum(np.searchsorted(terms, words), len(terms) - 1)
        values = np.where(terms[at] == words, weights[at] * m.data[positions], 0.0)
        return np.bincount(np.repeat(np.arange(len(pool)), lengths), weights=values, minlength=len(pool))

    def score_vector(self, anchors: Sequence[str]) -> np.ndarray:
        m = self.matrix
        query = self._query(m, self.vocab.known(anchors))
        out = np.zeros(len(self.vocab))
        if query is not None:
            q = np.zeros(m.shape[1])
            q[query[0]] = query[1]
            scores = m @ q
            n = min(len(out), len(scores))  # a concurrent update may have grown one of them
            out[:n] = scores[:n]
        return out
