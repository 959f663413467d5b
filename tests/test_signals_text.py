"""Text signal: the packaged MiniLM encoder on real product titles, and the on-disk embedding cache."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from rag_rec.errors import ModelError
from rag_rec.settings import EmbeddingSettings
from rag_rec.signals.base import TextEncoder
from rag_rec.signals.text import (EmbeddingCache, SentenceTransformerEncoder, bfloat16_grid, encode_cached,
                                  encode_products)


class HashingEncoder:
    """A deterministic bag-of-words encoder that counts what it is asked to encode."""

    def __init__(self, name: str = "hashing-64", dim: int = 64):
        self.name, self.dim = name, dim
        self.encoded: list[str] = []

    def encode(self, texts, *, batch_size=None, progress=False) -> np.ndarray:
        self.encoded.extend(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


class RefusingEncoder:
    """Stands in for the real encoder once everything should come from the cache."""

    def __init__(self, name: str, dim: int):
        self.name, self.dim = name, dim

    def encode(self, texts, *, batch_size=None, progress=False):
        raise AssertionError(f"encoder called for {len(texts)} text(s) that should have been cached")


@pytest.fixture(scope="module")
def encoder() -> SentenceTransformerEncoder:
    return SentenceTransformerEncoder(EmbeddingSettings())


@pytest.fixture(scope="module")
def titles(electronic) -> list[str]:
    return [p.title for p in electronic.products.values()]


@pytest.mark.slow
def test_packaged_encoder_gives_384_dim_unit_vectors(encoder, titles):
    assert isinstance(encoder, TextEncoder)
    vectors = encoder.encode(titles[:50], batch_size=16)
    assert encoder.dim == 384
    assert vectors.shape == (50, 384) and vectors.dtype == np.float32
    assert not (vectors.view(np.uint32) & 0xFFFF).any()  # on the bfloat16 grid (the item table packs it exactly)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    assert encoder.encode([]).shape == (0, 384)


def test_bfloat16_grid_rounds_to_nearest_even_and_keeps_grid_values():
    ulp = 2.0 ** -7  # bfloat16 keeps 8 significant bits: the step above 1.0 (2 ** -6 above 2.0)
    x = np.array([1.0, 1 + ulp / 2, 1 + 1.5 * ulp, 1 + 0.49 * ulp, 1 + 0.51 * ulp, -3 - 0.6 * 2 * ulp],
                 dtype=np.float32)
    got = bfloat16_grid(x)
    # ties go to the even neighbour (1.0, then 1 + 2 ulp); otherwise the nearest
    np.testing.assert_array_equal(got, np.array([1.0, 1.0, 1 + 2 * ulp, 1.0, 1 + ulp, -3 - 2 * ulp], dtype=np.float32))
    np.testing.assert_array_equal(bfloat16_grid(got), got)
    rng = np.random.default_rng(0)
    v = rng.standard_normal((20, 384)).astype(np.float32)
    cos = (v / np.linalg.norm(v, axis=1, keepdims=True)) @ (v / np.linalg.norm(v, axis=1, keepdims=True)).T
    g = bfloat16_grid(v)
    cos_g = (g / np.linalg.norm(g, axis=1, keepdims=True)) @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T
    assert np.abs(cos - cos_g).max() < 2e-3


@pytest.mark.slow
def test_similar_titles_are_closer_than_unrelated(encoder, electronic):
    products = list(electronic.products.values())
    chargers = [p.title for p in products if "battery charger" in p.title.lower()][:2]
    cards = [p.title for p in products if "graphics card" in p.title.lower() or "geforce" in p.title.lower()][:1]
    assert len(chargers) == 2 and cards, "expected battery chargers and a graphics card in the electronic data"
    a, b, c = encoder.encode([chargers[0], chargers[1], cards[0]])
    assert float(a @ b) > float(a @ c) + 0.1

    # Same leaf category is closer than random pairs, over many real products.
    by_leaf: dict[str, list[int]] = {}
    sample = [p for p in products if p.leaf_category][:600]
    for i, p in enumerate(sample):
        by_leaf.setdefault(p.leaf_category, []).append(i)
    vectors = encoder.encode([p.title for p in sample], batch_size=64)
    same = [float(vectors[g[0]] @ vectors[g[1]]) for g in by_leaf.values() if len(g) >= 2]
    rng = np.random.default_rng(0)
    pairs = rng.integers(0, len(sample), size=(len(same), 2))
    random_pairs = [float(vectors[i] @ vectors[j]) for i, j in pairs if i != j]
    assert len(same) >= 30
    assert np.mean(same) > np.mean(random_pairs) + 0.1


def test_unknown_packaged_model_is_a_clear_error():
    with pytest.raises(ModelError, match="unknown packaged model"):
        SentenceTransformerEncoder(EmbeddingSettings(model="packaged:no-such-model")).encode(["a title"])


def test_cache_reuses_vectors_and_encodes_only_misses(tmp_path, titles):
    path = tmp_path / "emb.sqlite"
    first = HashingEncoder()
    with EmbeddingCache(path) as cache:
        warm = encode_cached(first, titles[:40], cache)
        assert len(cache) == len(set(titles[:40]))
    assert len(first.encoded) == len(set(titles[:40]))

    second = HashingEncoder()
    with EmbeddingCache(path) as cache:
        mixed = encode_cached(second, titles[:60], cache)
        assert cache.hits == 40 and cache.misses == 20
    assert second.encoded == list(dict.fromkeys(titles[40:60]))
    np.testing.assert_array_equal(mixed[:40], warm)
    np.testing.assert_array_equal(mixed[40:], bfloat16_grid(HashingEncoder().encode(titles[40:60])))  # the grid: see text.py

    other_model = HashingEncoder(name="another-model")
    with EmbeddingCache(path) as cache:
        encode_cached(other_model, titles[:5], cache)
    assert len(other_model.encoded) == 5, "entries of another model must not be reused"


@pytest.mark.slow
def test_cached_products_skip_the_real_encoder(tmp_path, encoder, electronic):
    products = list(electronic.products.values())[:120]
    path = tmp_path / "emb.sqlite"
    with EmbeddingCache(path) as cache:
        ids, matrix = encode_products(encoder, products, cache)
    assert ids == [p.id for p in products] and matrix.shape == (120, 384)
    with EmbeddingCache(path) as cache:
        ids2, matrix2 = encode_products(RefusingEncoder(encoder.name, encoder.dim), products, cache)
        assert cache.misses == 0
    assert ids2 == ids
    np.testing.assert_array_equal(matrix2, matrix)


def test_a_damaged_embedding_cache_is_moved_aside_and_started_empty(tmp_path):
    from rag_rec.signals.text import EmbeddingCache

    path = tmp_path / "embeddings.sqlite"
    path.write_bytes(b"not a database at all" * 100)
    with EmbeddingCache(path) as cache:
        assert len(cache) == 0
        cache.put_many("m", ["a"], np.ones((1, 4), dtype=np.float32))
    assert [p.name.startswith("embeddings.sqlite.corrupt-") for p in tmp_path.iterdir()].count(True) == 1
    with EmbeddingCache(path) as cache:
        assert cache.get_many("m", ["a"])[0].tolist() == [1.0] * 4


def test_an_unusable_cache_path_names_itself(tmp_path):
    from rag_rec.errors import RagRecError
    from rag_rec.signals.text import EmbeddingCache

    (tmp_path / "dir.sqlite").mkdir()
    with pytest.raises(RagRecError, match="dir.sqlite"):
        EmbeddingCache(tmp_path / "dir.sqlite")


def test_cached_entries_of_another_dimension_or_damaged_are_misses(tmp_path):
    import sqlite3

    from rag_rec.signals.text import EmbeddingCache, text_key

    path = tmp_path / "e.sqlite"
    with EmbeddingCache(path) as cache:
        cache.put_many("m", ["wide", "ok"], np.ones((2, 8), dtype=np.float32))
    with sqlite3.connect(path) as db:
        db.execute("UPDATE embeddings SET vector = ? WHERE key = ?", (b"\x00" * 5, text_key("ok")))
    with EmbeddingCache(path) as cache:
        assert cache.get_many("m", ["wide"], dim=4) == [None]
        assert cache.get_many("m", ["ok"], dim=8) == [None]
        assert cache.get_many("m", ["wide"], dim=8)[0].shape == (8,)
