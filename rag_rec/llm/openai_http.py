"""OpenAI-compatible HTTP backend for a `vllm serve` deployment (structured outputs through the request body)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Self

from rag_rec.errors import require
from rag_rec.llm.base import Generation, GenerationRequest, LLMUnavailable
from rag_rec.settings import LLMSettings
from rag_rec.slots import waiting

RETRY_STATUS = {429, 500, 502, 503, 504}  # a router or gateway may send 429 / 500 that another replica answers
MAX_RETRY_AFTER_S = 30.0


def _retry_after(value: str | None) -> float:
    """Seconds a Retry-After header asks for (delta seconds only; capped), else 0."""
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER_S) if value else 0.0
    except ValueError:
        return 0.0


class OpenAIBackend:
    """Sends each request of a batch concurrently to /v1/chat/completions; the server batches them."""

    def __init__(self, settings: LLMSettings, *, retries: int = 3, backoff_s: float = 0.5, max_parallel: int = 16):
        httpx = require("httpx", "llm")
        if not settings.base_url:
            raise LLMUnavailable("the openai backend needs settings.llm.base_url (RAG_REC_LLM__BASE_URL), "
                                 "e.g. http://127.0.0.1:8001/v1")
        if not settings.base_url.strip().lower().startswith(("http://", "https://")):
            raise LLMUnavailable(f"settings.llm.base_url must start with http:// or https://, got "
                                 f"{settings.base_url!r}")
        self.settings = settings
        self.name = settings.model
        self.base_url = settings.base_url.strip().rstrip("/")
        self.retries, self.backoff_s, self.max_parallel = retries, backoff_s, max_parallel
        key = (settings.api_key or "").strip()  # a key read from a file or a Secret often ends in a newline
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._httpx = httpx
        self._client = httpx.Client(
            base_url=self.base_url, headers=headers,
            timeout=httpx.Timeout(settings.timeout_s, connect=min(10.0, settings.timeout_s)),
            limits=httpx.Limits(max_connections=max_parallel, max_keepalive_connections=max_parallel))
        self._served_model: str | None = None

    def body(self, request: GenerationRequest, model: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": list(request.messages),
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        if request.stop:
            body["stop"] = list(request.stop)
        if request.repetition_penalty != 1.0:
            body["repetition_penalty"] = request.repetition_penalty  # vLLM's extra sampling parameter
        if request.json_schema is not None:
            body["structured_outputs"] = {"json": request.json_schema, "disable_any_whitespace": True}
        return body

    def served_model(self) -> str:
        """settings.model when the server serves it, else the server's only model."""
        if self._served_model is None:
            listing = self._request("GET", "/models")
            data = listing.get("data") if isinstance(listing, dict) else None
            if not isinstance(data, list) or not all(isinstance(m, dict) for m in data):
                raise LLMUnavailable(f"{self.base_url}/models: not an OpenAI model list: {str(listing)[:300]}")
            ids = [m.get("id") for m in data]
            if self.settings.model in ids:
                self._served_model = self.settings.model
            elif len(ids) == 1:
                self._served_model = ids[0]
            else:
                raise LLMUnavailable(f"{self.base_url} does not serve '{self.settings.model}' (serves: {ids}); "
                                     f"set RAG_REC_LLM__MODEL or start vllm serve with --served-model-name")
        return self._served_model

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        if not requests:
            return []
        with waiting():  # a request thread's compute slot is free while the server works
            model = self.served_model()
            with ThreadPoolExecutor(max_workers=min(self.max_parallel, len(requests))) as pool:
                return list(pool.map(lambda r: self._complete(r, model), requests))

    def _complete(self, request: GenerationRequest, model: str) -> Generation:
        reply = self._request("POST", "/chat/completions", json=self.body(request, model))
        try:
            choice = reply["choices"][0]
            usage = reply.get("usage") or {}
            return Generation(
                text=choice["message"].get("content") or "",
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)),
                finish_reason=choice.get("finish_reason") or "stop",
                extra={"model": reply.get("model", model), "id": reply.get("id")},
            )
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
            raise LLMUnavailable(f"{self.base_url}: malformed chat completion: {str(reply)[:300]}") from exc

    def _request(self, method: str, path: str, **kwargs) -> dict[str, Any]:
        httpx = self._httpx
        last: str = ""
        wait_s = 0.0
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(max(self.backoff_s * 2 ** (attempt - 1), wait_s))
            try:
                response = self._client.request(method, path, **kwargs)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError,
                    httpx.WriteError, httpx.PoolTimeout) as exc:
                last, wait_s = f"{type(exc).__name__}: {exc}", 0.0
                continue
            except httpx.TimeoutException as exc:
                raise LLMUnavailable(f"{self.base_url}{path} did not answer within {self.settings.timeout_s}s "
                                     f"({type(exc).__name__})") from exc
            except (httpx.HTTPError, RuntimeError) as exc:  # a bad header or URL, a closed client
                raise LLMUnavailable(f"{self.base_url}{path}: {type(exc).__name__}: {exc}") from exc
            if response.status_code in RETRY_STATUS:
                last = f"HTTP {response.status_code}: {response.text[:300]}"
                wait_s = _retry_after(response.headers.get("retry-after"))
                continue
            if response.status_code >= 400:
                raise LLMUnavailable(f"{self.base_url}{path} refused the request: HTTP {response.status_code}: "
                                     f"{response.text[:500]}")
            try:
                return response.json()
            except ValueError as exc:
                raise LLMUnavailable(f"{self.base_url}{path} answered non-JSON: {response.text[:300]}") from exc
        raise LLMUnavailable(f"{self.base_url}{path} unreachable after {self.retries + 1} attempts: {last}")

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
