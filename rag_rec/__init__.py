"""rag_rec: complementary product bundles with retrieval (Qdrant) and an LLM composer (vLLM)."""

__version__ = "0.1.0"
