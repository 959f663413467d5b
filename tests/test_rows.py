"""Row-level updates of per-item arrays: appends into spare capacity, patched copies, CSR row replacement."""

import numpy as np
import scipy.sparse as sp

from rag_rec.rows import RowBuffer, patched, replace_rows


def test_appends_fill_spare_capacity_and_never_touch_a_readers_view():
    buffer = RowBuffer(np.arange(6, dtype=np.float32).reshape(3, 2))
    first = buffer.array
    grown = buffer.append(np.full((2, 2), 7, dtype=np.float32))
    assert grown.shape == (5, 2) and grown.base is not None and len(grown.base) >= 3 + 64
    again = buffer.append(np.full((1, 2), 8, dtype=np.float32))
    assert np.shares_memory(again, grown)  # no copy while there is room
    np.testing.assert_array_equal(first, np.arange(6).reshape(3, 2))
    np.testing.assert_array_equal(grown[3:], 7)
    np.testing.assert_array_equal(again[5], 8)
    assert len(grown) == 5  # a reader's view keeps its length after later appends
    big = buffer.append(np.zeros((200, 2), dtype=np.float32))
    assert len(big) == 206 and not np.shares_memory(big, again)
    np.testing.assert_array_equal(big[:6], again)


def test_patched_grows_fills_and_keeps_the_dtype():
    codes = np.array([3, 1, 2])
    out = patched(codes, 5, np.array([0, 4]), [9, 8], -1)
    assert out.dtype == codes.dtype and out.tolist() == [9, 1, 2, -1, 8] and codes.tolist() == [3, 1, 2]
    assert patched(np.array([True]), 2, np.array([], dtype=int), [], False).tolist() == [True, False]


def test_replace_rows_equals_a_rebuild():
    old = sp.random(12, 30, density=0.3, format="csr", random_state=1, dtype=np.float32)
    old.sort_indices()
    rows = np.array([0, 5, 11, 12, 13])  # three changed rows and two appended
    new = sp.random(len(rows), 30, density=0.2, format="csr", random_state=2, dtype=np.float32)
    new.sort_indices()
    got = replace_rows(old, rows, new, 14)
    want = sp.vstack([old, sp.csr_matrix((2, 30), dtype=np.float32)]).tolil()
    for j, r in enumerate(rows):
        want[r] = new[j]
    assert got.shape == (14, 30) and (got != want.tocsr()).nnz == 0
    assert got.has_sorted_indices and got.dtype == np.float32
    assert np.array_equal(got.indptr, want.tocsr().indptr)
    unchanged = [r for r in range(12) if r not in rows]
    assert (got[unchanged] != old[unchanged]).nnz == 0
    assert (replace_rows(old, np.array([], dtype=int), new[:0], 12) != old).nnz == 0
