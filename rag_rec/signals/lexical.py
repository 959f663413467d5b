"""Lexical similarity: TF-IDF cosine over product titles and brands.

A small sentence encoder blurs exact tokens — brands, model numbers, sizes, series names — that bundle
partners often share ("Canon EOS" body and lens, "Disney Frozen" dress and shoes). Rows are sublinear-tf x
smoothed-idf, L2-normalised; similarity to several anchors is the mean of the cosines (one dot product with
the anchors' mean row).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np
import scipy.sparse as sp

from rag_rec.data.models import Dataset, Product
from rag_rec.rows import patched, replace_rows
from rag_rec.signals.cooc import ItemVocab

_MARKS = "".join(chr(c) for c in range(0x10000) if unicodedata.category(chr(c)).startswith("M"))
_TOKEN = re.compile(f"[\\w{re.escape(_MARKS)}]+")  # words with their combining marks (vowel signs, accents)


def lexical_text(product: Product | None) -> str:
    """The title, and the brand when the title does not name it as words of its own."""
    if product is None:
        return ""
    brand = product.brand or ""
    named = set(tokens(brand)) <= set(tokens(product.title))
    return product.title if named else f"{product.title} {brand}"


def tokens(text: str) -> list[str]:
    """Lower-case words of any script: Unicode-normalised (NFKC), so composed and decomposed forms of a title
    are the same words, and combining marks (Devanagari vowel signs, accents) stay inside their word."""
    return [t for t in _TOKEN.findall(unicodedata.normalize("NFKC", text).lower()) if not unicodedata.combining(t[0])]


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
        self._term_table = _TermTable.of(self.matrix)
        return self

    def update(self, dataset: Dataset, vocab: ItemVocab, ids: Sequence[str]) -> None:
        """Rows for new items (appended to the vocabulary) and for changed `ids`, from the fitted terms and idf
        (words the fit never saw are dropped; refit to learn them). The stored rows are copied around the
        changed ones and the term table is patched row by row (a full rebuild only when a row is wider than
        the table); the new matrix is published in one assignment, so concurrent readers see the old rows or
        the new ones (a reader that sees a table of other rows rebuilds it)."""
        old = self.matrix
        changed = np.array(sorted({vocab.index[i] for i in ids if i in vocab.index}
                                  | set(range(old.shape[0], len(vocab)))), dtype=np.int64)
        rows = self._rows(tokens(lexical_text(dataset.products.get(vocab.ids[j]))) for j in changed.tolist())
        matrix = replace_rows(old, changed, rows, len(vocab))
        self._term_table = self._table().patched(matrix, changed, rows)  # here, not in the next request
        self.matrix = matrix
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

    def _table(self) -> _TermTable:
        """The matrix as fixed-width rows (built by fit and update): a pool's words are one row gather."""
        table = getattr(self, "_term_table", None)
        if table is None or table.matrix is not self.matrix:
            table = _TermTable.of(self.matrix)
            self._term_table = table
        return table

    def _query(self, table: _TermTable, anchor_idx: Sequence[int]) -> tuple[np.ndarray, np.ndarray] | None:
        """The anchors' mean row as (sorted term ids, weights); None when no anchor has a known word. Sparse, so
        a request costs the anchors' and the pool's words, not the number of terms."""
        rows = [i for i in anchor_idx if i < table.rows and table.lengths[i]]
        if not rows:
            return None
        if len(rows) == 1:
            i = rows[0]
            n = table.lengths[i]
            return table.terms[i, :n], table.weights[i, :n].astype(np.float64)
        terms, inverse = np.unique(np.concatenate([table.terms[i, :table.lengths[i]] for i in rows]),
                                   return_inverse=True)
        weights = np.bincount(inverse, weights=np.concatenate([table.weights[i, :table.lengths[i]] for i in rows]),
                              minlength=len(terms))
        return terms, weights / len(rows)

    def score_pool(self, anchor_idx: Sequence[int], pool: np.ndarray) -> np.ndarray:
        """Mean cosine of each pool item with the anchors (0 for items without words)."""
        table = self._table()
        pool = np.asarray(pool)
        rows = np.where(pool < table.rows, pool, table.rows)  # the last table row is empty
        return self.score_rows(anchor_idx, table.terms[rows], table.weights[rows])

    def score_rows(self, anchor_idx: Sequence[int], words: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """score_pool for candidates given as term-table rows (term ids and weights, padded as `table_rows`)."""
        query = self._query(self._table(), anchor_idx)
        if query is None or not len(words):
            return np.zeros(len(words))
        terms, term_weights = query
        at = np.searchsorted(terms, words)
        np.minimum(at, len(terms) - 1, out=at)
        return (np.where(terms[at] == words, term_weights[at], 0.0) * weights).sum(axis=1)

    def table_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(term ids, weights) of vocabulary `rows` in the fixed-width layout score_rows reads; rows the table
        does not have yet are empty."""
        table = self._table()
        rows = np.minimum(rows, table.rows)
        return table.terms[rows], table.weights[rows]

    def score_vector(self, anchors: Sequence[str]) -> np.ndarray:
        m = self.matrix
        query = self._query(self._table(), self.vocab.known(anchors))
        out = np.zeros(len(self.vocab))
        if query is not None:
            q = np.zeros(m.shape[1])
            q[query[0]] = query[1]
            scores = m @ q
            n = min(len(out), len(scores))  # a concurrent update may have grown one of them
            out[:n] = scores[:n]
        return out


MAX_TERMS_PER_ROW = 64


class _TermTable:
    """A CSR matrix as fixed-width rows: term ids sorted per row (padded with a term id no row has), weights
    (padded with 0), row lengths, and one extra empty row at the end. A row with more than MAX_TERMS_PER_ROW
    words (a description pasted into a title) keeps its heaviest ones, so one such row cannot blow up the table."""

    def __init__(self, matrix: sp.csr_matrix, terms: np.ndarray, weights: np.ndarray, lengths: np.ndarray):
        self.matrix, self.terms, self.weights, self.lengths = matrix, terms, weights, lengths
        self.rows = matrix.shape[0]

    def patched(self, matrix: sp.csr_matrix, rows: np.ndarray, new: sp.csr_matrix) -> _TermTable:
        """The table of `matrix`, which is this table's matrix with `rows` replaced by (or grown to) the rows of
        `new`: this table's rows copied and those rows written, unless one is wider than the table (then
        rebuilt)."""
        fresh = _TermTable.of(new)
        width = self.terms.shape[1]
        if fresh.terms.shape[1] > width:
            return _TermTable.of(matrix)
        n, m = matrix.shape[0], min(self.rows, matrix.shape[0])
        terms = np.full((n + 1, width), np.iinfo(np.int32).max, dtype=np.int32)
        weights = np.zeros((n + 1, width), dtype=np.float32)
        terms[:m], weights[:m] = self.terms[:m], self.weights[:m]
        terms[rows] = np.iinfo(np.int32).max
        weights[rows] = 0.0
        terms[rows, : fresh.terms.shape[1]] = fresh.terms[:-1]
        weights[rows, : fresh.terms.shape[1]] = fresh.weights[:-1]
        return _TermTable(matrix, terms, weights, patched(self.lengths, n, rows, fresh.lengths, 0))

    @classmethod
    def of(cls, matrix: sp.csr_matrix) -> _TermTable:
        m = matrix.tocsr(copy=True)
        m.sort_indices()
        long_rows = np.flatnonzero(np.diff(m.indptr) > MAX_TERMS_PER_ROW)
        if len(long_rows):
            m = m.tolil()
            for i in long_rows.tolist():
                cols, vals = np.asarray(m.rows[i]), np.asarray(m.data[i])
                keep = np.sort(np.argsort(-vals, kind="stable")[:MAX_TERMS_PER_ROW])
                m.rows[i], m.data[i] = cols[keep].tolist(), vals[keep].tolist()
            m = m.tocsr()
            m.sort_indices()
        lengths = np.diff(m.indptr)
        width = max(int(lengths.max()) if len(lengths) else 0, 1)
        pad = np.iinfo(np.int32).max
        terms = np.full((m.shape[0] + 1, width), pad, dtype=np.int32)
        weights = np.zeros((m.shape[0] + 1, width), dtype=np.float32)
        row = np.repeat(np.arange(m.shape[0]), lengths)
        slot = np.arange(len(m.indices)) - m.indptr[row]
        terms[row, slot] = m.indices
        weights[row, slot] = m.data
        return cls(matrix, terms, weights, lengths)
