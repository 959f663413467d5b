"""LLM stage: model provisioning and backends (in-process vLLM, or a `vllm serve` endpoint over HTTP)."""

from __future__ import annotations

from rag_rec.errors import RagRecError
from rag_rec.llm.base import Generation, GenerationRequest, LLMBackend, LLMUnavailable
from rag_rec.settings import LLMSettings

__all__ = ["Generation", "GenerationRequest", "LLMBackend", "LLMUnavailable", "make_llm"]


def make_llm(settings: LLMSettings) -> LLMBackend:
    """The backend settings.backend names: 'vllm' (in-process engine) or 'openai' (settings.base_url)."""
    if settings.backend == "vllm":
        from rag_rec.llm.vllm_engine import VLLMEngine

        return VLLMEngine(settings)
    if settings.backend == "openai":
        from rag_rec.llm.openai_http import OpenAIBackend

        return OpenAIBackend(settings)
    raise RagRecError(f"LLM backend is '{settings.backend}': no LLM is configured")
