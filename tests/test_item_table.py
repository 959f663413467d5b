"""The item table's bfloat16 text columns."""

import numpy as np

from rag_rec.retrieve.item_table import build_item_table, pack_bfloat16, unpack_bfloat16
from rag_rec.signals.text import bfloat16_grid


def test_bfloat16_pairs_hold_grid_vectors_exactly_at_any_dimension():
    rng = np.random.default_rng(1)
    for dim in (384, 7, 1):
        vectors = bfloat16_grid(rng.standard_normal((5, dim)).astype(np.float32))
        packed = pack_bfloat16(vectors)
        assert packed.shape == (5, (dim + 1) // 2) and packed.dtype == np.float32
        np.testing.assert_array_equal(unpack_bfloat16(packed, dim), vectors)


def test_off_grid_vectors_are_rounded_like_the_encoder_rounds_them():
    vectors = np.random.default_rng(2).standard_normal((4, 10)).astype(np.float32)
    np.testing.assert_array_equal(unpack_bfloat16(pack_bfloat16(vectors), 10), bfloat16_grid(vectors))


def test_table_rows_carry_half_the_text_columns_and_give_the_vectors_back():
    rng = np.random.default_rng(3)
    text = bfloat16_grid(rng.standard_normal((6, 384)).astype(np.float32))
    table = build_item_table(6, text, None, None, None, None)
    assert table.text_dim == 384 and table.text.stop - table.text.start == 192
    assert table.rows.shape == (6, 192 + 2)  # text pairs, category code, leaf code
    np.testing.assert_array_equal(table.text_vectors(table.rows[[4, 1]]), text[[4, 1]])
    np.testing.assert_allclose(table.text_norms, np.linalg.norm(text, axis=1), rtol=1e-6)
    assert table.layout[:2] == (0, 384)
