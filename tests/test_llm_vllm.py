"""VLLMEngine on the real smollm2 conversion: batched structured outputs, plain chat, clean shutdown."""

from __future__ import annotations

import json
import threading
import time

import jsonschema
import psutil
import pytest

from rag_rec.llm.base import GenerationRequest, LLMBackend, LLMUnavailable
from rag_rec.settings import Settings

pytestmark = [pytest.mark.llm, pytest.mark.slow]

CATALOGUES = [
    {"P101": "DSLR camera", "P102": "camera bag", "P103": "SD card 64GB", "P104": "tripod"},
    {"L201": "laptop 14 inch", "L202": "laptop sleeve", "L203": "wireless mouse", "L204": "USB-C hub"},
    {"T301": "tennis racket", "T302": "tennis balls", "T303": "sweatband", "T304": "racket grip tape"},
    {"K401": "chef knife", "K402": "cutting board", "K403": "knife sharpener", "K404": "apron"},
]


def bundle_schema(ids: list[str]) -> dict:
    return {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": {"type": "string", "enum": ids}, "minItems": 2, "maxItems": 3},
            "reason": {"type": "string", "maxLength": 120},
        },
        "required": ["items", "reason"],
        "additionalProperties": False,
    }


def bundle_request(catalogue: dict[str, str]) -> GenerationRequest:
    listing = "\n".join(f"- {pid}: {title}" for pid, title in catalogue.items())
    return GenerationRequest(
        messages=[{"role": "system", "content": "You build product bundles. Answer with JSON only."},
                  {"role": "user", "content": f"Products:\n{listing}\nPick 2 or 3 product ids that are bought "
                                              f"together and give a short reason."}],
        json_schema=bundle_schema(list(catalogue)), max_tokens=160)


@pytest.fixture(scope="module")
def engine():
    from rag_rec.llm.vllm_engine import VLLMEngine

    settings = Settings().llm.model_copy(update={"max_model_len": 2048, "kv_cache_gb": 1})
    with VLLMEngine(settings) as eng:
        yield eng


def test_engine_implements_the_backend_protocol(engine):
    assert isinstance(engine, LLMBackend)
    assert engine.name == "smollm2-135m"
    assert engine.generate([]) == []


def test_batch_of_four_is_valid_json_restricted_to_each_requests_ids(engine):
    requests = [bundle_request(c) for c in CATALOGUES]
    generations = engine.generate(requests)
    assert len(generations) == 4
    for catalogue, request, gen in zip(CATALOGUES, requests, generations):
        assert gen.finish_reason == "stop", gen
        data = json.loads(gen.text)
        jsonschema.validate(data, request.json_schema)
        assert set(data["items"]) <= set(catalogue)          # ids of this request, in this order
        assert gen.prompt_tokens > 40 and 0 < gen.completion_tokens <= request.max_tokens


def test_plain_chat_and_token_limit(engine, plain_questions):
    *answers, truncated = engine.generate([
        *plain_questions.requests(),
        GenerationRequest([{"role": "user", "content": "Write a long story about a dragon."}], max_tokens=8),
    ])
    plain_questions.check(answers)
    assert truncated.finish_reason == "length" and truncated.completion_tokens == 8


def test_no_emoji_rules_out_four_byte_characters_and_keeps_other_scripts(engine):
    """Small models' runaway bundle reasons are emoji that fill the token budget before the JSON closes."""
    ask = [{"role": "user", "content": "Copy this line: \U0001f43c\U0001f43c\U0001f43c\U0001f43c\U0001f43c\U0001f43c"}]
    free, plain = engine.generate([GenerationRequest(ask, max_tokens=24), GenerationRequest(ask, max_tokens=24,
                                                                                           no_emoji=True)])
    assert any(ord(c) >= 0x10000 for c in free.text), free.text  # the model does answer with emoji
    assert plain.text and not any(ord(c) >= 0x10000 for c in plain.text), plain.text
    tokenizer = engine.llm.get_tokenizer()
    banned = engine.no_emoji_bias()
    assert banned and all(v == -100.0 for v in banned.values())
    for text in ("Zelt für kalte Nächte", "Палатка", "テントと寝袋", "帐篷和睡袋"):
        assert not set(tokenizer.encode(text, add_special_tokens=False)) & set(banned), text


def test_prompt_tokens_counts_what_the_engine_reads(engine):
    messages = [{"role": "system", "content": "You help shoppers."},
                {"role": "user", "content": "Kamera und Objektiv, カメラとレンズ"}]
    generation = engine.generate([GenerationRequest(messages, max_tokens=2)])[0]
    assert engine.prompt_tokens(messages) == generation.prompt_tokens > 10


def test_engine_dtype_follows_the_cpu(engine):
    import torch

    from rag_rec.llm.vllm_engine import engine_dtype

    assert engine.dtype == engine_dtype("auto", engine.is_cpu)
    assert engine.llm.llm_engine.model_config.dtype == getattr(torch, engine.dtype)


def test_callers_on_several_threads_each_get_their_own_answer(engine):
    """vllm.LLM called from two threads at once corrupts its engine messages and every caller hangs; the engine
    thread batches concurrent callers instead."""
    answers: dict[int, object] = {}

    def call(n: int) -> None:
        try:
            answers[n] = engine.generate([bundle_request(CATALOGUES[n])])[0]
        except Exception as exc:  # noqa: BLE001 - asserted below
            answers[n] = exc

    threads = [threading.Thread(target=call, args=(n,)) for n in range(len(CATALOGUES))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)  # ~20 s when batched; without the engine thread the callers never return
    assert not any(t.is_alive() for t in threads), "a caller hung"
    for n, catalogue in enumerate(CATALOGUES):
        gen = answers[n]
        assert not isinstance(gen, Exception), gen
        assert set(json.loads(gen.text)["items"]) <= set(catalogue), (n, gen.text)
    assert engine._batches.most_in_flight > 1  # callers that waited together decoded together


def test_a_short_request_joins_a_long_generation_and_is_answered_first(engine):
    """Continuous batching: a request that arrives while another decodes joins it at the next step instead of
    waiting for it to finish."""
    long = GenerationRequest(
        [{"role": "user", "content": "Describe a camping tent in detail."}],
        json_schema={"type": "object", "properties": {"text": {"type": "string", "minLength": 1000}},
                     "required": ["text"], "additionalProperties": False},
        max_tokens=120)  # the schema keeps it writing until the token limit
    short = GenerationRequest([{"role": "user", "content": "What is the capital of France?"}], max_tokens=3)
    finished: dict[str, tuple[object, float]] = {}

    def call(name: str, request: GenerationRequest) -> None:
        finished[name] = (engine.generate([request])[0], time.monotonic())

    batches = engine._batches
    steps = batches.steps
    long_thread = threading.Thread(target=call, args=("long", long))
    long_thread.start()
    deadline = time.monotonic() + 60
    while batches.steps < steps + 5:
        assert time.monotonic() < deadline, "the long request did not start decoding"
        time.sleep(0.01)
    short_thread = threading.Thread(target=call, args=("short", short))
    short_thread.start()
    short_thread.join(60)
    assert "short" in finished and long_thread.is_alive(), "the short request waited for the long one"
    long_thread.join(120)
    assert finished["long"][0].finish_reason == "length" and finished["long"][0].completion_tokens == 120
    assert finished["short"][1] < finished["long"][1]


def test_close_stops_the_engine_process(engine):
    children = [p for p in psutil.Process().children(recursive=True) if p.cmdline()[:1] == ["VLLM::EngineCore"]
                or p.cmdline()[:1] == ["VLLM::Worker"]]
    assert children, "vLLM's engine core should run in a child process"
    engine.close()
    _gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [p.pid for p in alive]
    with pytest.raises(LLMUnavailable, match="closed"):
        engine.generate([GenerationRequest([{"role": "user", "content": "hi"}])])
