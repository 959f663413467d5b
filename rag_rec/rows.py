"""Per-item arrays that change a few rows at a time (product upserts) without a pass over the catalogue.

Readers hold published arrays and never lock; the one writer (under the pipeline's lock) publishes new ones.
`RowBuffer` appends into spare capacity: a reader's earlier array is a view of the first rows and never sees
the rows written after it. `patched` copies a small array and changes some rows, so its readers keep a whole
snapshot. (Large tables change existing rows in place under a sequence lock: FusionScorer.writing_rows.)
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


class RowBuffer:
    """An array's rows with room to append: `array` is the published view of the first n rows of a larger
    buffer, which grows by an eighth (and at least 64 rows) when full, so n appends cost O(n) copies in all."""

    def __init__(self, array: np.ndarray):
        self._buffer = array
        self.array = array

    def append(self, rows: np.ndarray) -> np.ndarray:
        """Write `rows` after the current ones and publish (return) the longer view."""
        n = len(self.array)
        m = n + len(rows)
        if m > len(self._buffer):
            buffer = np.empty((max(m, n + n // 8 + 64), *self.array.shape[1:]), dtype=self.array.dtype)
            buffer[:n] = self.array
            self._buffer = buffer
        self._buffer[n:m] = rows
        self.array = self._buffer[:m]
        return self.array


def patched(array: np.ndarray, n: int, rows: np.ndarray, values, fill) -> np.ndarray:
    """A copy of the 1-d `array` grown to n entries (new ones `fill`) with `array[rows] = values`; same dtype."""
    out = np.empty(n, dtype=array.dtype)
    m = min(n, len(array))
    out[:m] = array[:m]
    out[m:] = fill
    if len(rows):
        out[rows] = values
    return out


def replace_rows(matrix: sp.csr_matrix, rows: np.ndarray, new: sp.csr_matrix, n: int) -> sp.csr_matrix:
    """`matrix` grown to n rows (the added ones empty) with its `rows` (sorted, unique) replaced by the rows of
    `new`, in order: memory copies of the stored entries and one Python step per replaced row, where a rebuild
    through COO would sort every entry. Dtypes are kept."""
    old_n = matrix.shape[0]
    lengths = np.zeros(n, dtype=matrix.indptr.dtype)
    lengths[:old_n] = np.diff(matrix.indptr)
    lengths[rows] = np.diff(new.indptr)
    indptr = np.zeros(n + 1, dtype=matrix.indptr.dtype)
    np.cumsum(lengths, out=indptr[1:])
    indices, data = [], []
    pos = 0
    for j, r in enumerate(rows.tolist()):
        start = int(matrix.indptr[min(r, old_n)])
        indices += [matrix.indices[pos:start], new.indices[new.indptr[j]:new.indptr[j + 1]]]
        data += [matrix.data[pos:start], new.data[new.indptr[j]:new.indptr[j + 1]]]
        pos = int(matrix.indptr[r + 1]) if r < old_n else start
    indices.append(matrix.indices[pos:])
    data.append(matrix.data[pos:])
    out = sp.csr_matrix((np.concatenate(data).astype(matrix.data.dtype, copy=False),
                         np.concatenate(indices).astype(matrix.indices.dtype, copy=False), indptr),
                        shape=(n, matrix.shape[1]))
    out.has_sorted_indices = bool(matrix.has_sorted_indices and new.has_sorted_indices)
    return out
