"""Everything the fusion reads about a candidate, in one contiguous row per catalogue item.

Scoring a pool of ~200 candidates right after an engine query is dominated by memory latency, not arithmetic:
the query leaves the caller's data cold, and every separate per-item array (text vectors, ALS factors, lexical
terms and weights, category and leaf codes) costs one cold random access per candidate. With the fields side by
side, a candidate is one row the hardware prefetcher streams, and the pool is a single gather
(bench/results/item_table_probe.json: 200 candidates after a 32 MB sweep, 8 arrays vs one table).

The text vector, most of a row, is stored as bfloat16, two dimensions to a column (dimension 2x in the low half of
column x, 2x + 1 in the high half: the memory layout of a bfloat16 array), so the table takes ~40% less memory
(105 vs 176 MB at 92k products). Text vectors are kept on the bfloat16 grid from the encoder on (signals/text.py
`bfloat16_grid`), so the packing loses nothing and every reader sees the same values.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class ItemTable:
    """Rows in vocabulary order, float32 columns: text vector (bfloat16 pairs, `text_dim` dimensions), ALS factors
    (zeros: none), lexical term ids (int32 bits) and weights, category code and leaf code (int32 bits, -1: none)."""

    rows: np.ndarray
    text: slice
    cf: slice
    terms: slice
    weights: slice
    code: int
    leaf: int
    text_dim: int

    @cached_property
    def row_ints(self) -> np.ndarray:
        """The whole table's bits as int32 (for the integer columns)."""
        return self.rows.view(np.int32)

    @cached_property
    def text_norms(self) -> np.ndarray:
        """|text vector| per row: a one-anchor request's query norm without a reduction over its cold row."""
        rows, step = self.rows, 8192  # unpacked a slice at a time: no whole float32 copy of the text block
        return np.concatenate([text_norms(self.text_vectors(rows[i:i + step])) for i in range(0, len(rows), step)]
                              or [np.zeros(0)])

    @cached_property
    def layout(self) -> tuple[int, ...]:
        """(text start, text dimensions, cf start, cf width, terms start, terms width, weights start, code, leaf)."""
        return (self.text.start, self.text_dim, self.cf.start, self.cf.stop - self.cf.start,
                self.terms.start, self.terms.stop - self.terms.start, self.weights.start, self.code, self.leaf)

    def text_vectors(self, block: np.ndarray) -> np.ndarray:
        """The text vectors of a block of rows, float32 (n, text_dim)."""
        return unpack_bfloat16(block[:, self.text], self.text_dim)

    def block(self, pool: np.ndarray) -> np.ndarray:
        """The pool's rows: a view of the whole table when the pool is the whole catalogue in order, else a gather."""
        n = len(self.rows)
        if len(pool) == n and n and pool[0] == 0 and pool[-1] == n - 1 and bool((np.diff(pool) == 1).all()):
            return self.rows
        return self.rows[pool]

    @staticmethod
    def ints(block: np.ndarray, column: int | slice) -> np.ndarray:
        """Integer columns of a block (stored as int32 bits in the float32 table)."""
        if isinstance(column, int):
            column = slice(column, column + 1)
            return block[:, column].view(np.int32)[:, 0]
        return block[:, column].view(np.int32)


def pack_bfloat16(vectors: np.ndarray) -> np.ndarray:
    """float32 (n, dim) -> float32-typed (n, ceil(dim / 2)) columns of bfloat16 pairs (dimension 2x in the low 16
    bits of column x, 2x + 1 in the high 16), rounded to nearest even; vectors already on the grid are only
    reshuffled (92k x 384: ~45 ms, the grid check included)."""
    n, dim = vectors.shape
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if np.count_nonzero(vectors.view(np.uint16)[:, 0::2]):  # the halves bfloat16 drops (little-endian hosts)
        from rag_rec.signals.text import bfloat16_grid

        vectors = bfloat16_grid(vectors)
    out = np.zeros((n, dim + dim % 2), dtype=np.uint16)
    out[:, :dim] = vectors.view(np.uint16)[:, 1::2]
    return out.view(np.float32)


def unpack_bfloat16(packed: np.ndarray, dim: int) -> np.ndarray:
    """pack_bfloat16's inverse: float32 (n, dim)."""
    halves = np.ascontiguousarray(packed).view(np.uint16)[:, :dim]
    return (halves.astype(np.uint32) << np.uint32(16)).view(np.float32)


def text_norms(text: np.ndarray) -> np.ndarray:
    """|row| of each text vector, float64."""
    return np.sqrt(np.einsum("ij,ij->i", text, text)).astype(np.float64)


def build_item_table(n: int, text_vectors: np.ndarray | None, cf: tuple[np.ndarray, np.ndarray] | None,
                     lexical: tuple[np.ndarray, np.ndarray] | None, category_codes: np.ndarray | None,
                     leaf_codes: np.ndarray | None) -> ItemTable:
    """The table for vocabulary rows 0..n-1. `cf` is (factor row per item or -1, factor matrix with a zero row
    last); `lexical` the fixed-width (term ids, weights) of LexicalSimilarity.table_rows."""
    dim_text = text_vectors.shape[1] if text_vectors is not None else 0
    dim_cf = cf[1].shape[1] if cf is not None else 0
    width_lex = lexical[0].shape[1] if lexical is not None else 0
    bounds = np.cumsum([0, (dim_text + 1) // 2, dim_cf, width_lex, width_lex, 1, 1])
    text, cf_cols, terms, weights = (slice(int(a), int(b)) for a, b in zip(bounds[:4], bounds[1:5]))
    table = ItemTable(np.zeros((n, int(bounds[-1])), dtype=np.float32), text, cf_cols, terms, weights,
                      int(bounds[4]), int(bounds[5]), dim_text)
    fill_rows(table, table.rows, np.arange(n), text_vectors, cf, lexical, category_codes, leaf_codes)
    return table


def fill_rows(table: ItemTable, out: np.ndarray, rows: np.ndarray, text_vectors: np.ndarray | None,
              cf: tuple[np.ndarray, np.ndarray] | None, lexical: tuple[np.ndarray, np.ndarray] | None,
              category_codes: np.ndarray | None, leaf_codes: np.ndarray | None) -> None:
    """Write the table rows of vocabulary `rows` into `out` (one row each, in `table`'s layout; `lexical` holds
    the rows' own term ids and weights). Sources shorter than a row leave it zero (codes: -1)."""
    if text_vectors is not None:
        known = rows < len(text_vectors)
        if len(rows) == len(out) and known.all() and _is_range(rows):  # a whole build: no gather
            out[:, table.text] = pack_bfloat16(text_vectors[rows[0]:rows[0] + len(rows)])
        else:
            out[known, table.text] = pack_bfloat16(text_vectors[rows[known]])
    if cf is not None:
        item_rows, matrix = cf
        known = rows < len(item_rows)
        out[known, table.cf] = matrix[item_rows[rows[known]]]
    if lexical is not None:
        ItemTable.ints(out, table.terms)[:] = lexical[0]
        out[:, table.weights] = lexical[1]
    for column, codes in ((table.code, category_codes), (table.leaf, leaf_codes)):
        column_out = ItemTable.ints(out, column)
        column_out[:] = -1
        if codes is not None:
            known = rows < len(codes)
            column_out[known] = codes[rows[known]]


def _is_range(rows: np.ndarray) -> bool:
    return len(rows) > 0 and int(rows[-1]) - int(rows[0]) == len(rows) - 1 and bool((np.diff(rows) == 1).all())
