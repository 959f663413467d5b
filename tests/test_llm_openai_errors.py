"""OpenAIBackend against a scripted HTTP server: retries, Retry-After, and every malformed answer an error of
the backend's own kind (LLMUnavailable), never an AttributeError or an httpx exception."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rag_rec.llm.base import GenerationRequest, LLMUnavailable
from rag_rec.llm.openai_http import OpenAIBackend
from rag_rec.settings import LLMSettings

MODELS = {"data": [{"id": "m"}]}
OK = {"choices": [{"message": {"content": "{}"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 3}}


class Scripted(BaseHTTPRequestHandler):
    script: list = []  # (status, body, headers) for each POST, in order
    models: object = MODELS
    posts = 0

    def log_message(self, *args):
        pass

    def _send(self, status, body, headers=None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send(200, type(self).models)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        cls = type(self)
        cls.posts += 1
        self._send(*cls.script.pop(0)) if cls.script else self._send(200, OK)


@pytest.fixture
def server():
    Scripted.script, Scripted.models, Scripted.posts = [], MODELS, 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


def backend(url, **kwargs):
    return OpenAIBackend(LLMSettings(backend="openai", base_url=url, model="m", timeout_s=5, **kwargs),
                         retries=2, backoff_s=0.01)


def ask(b):
    return b.generate([GenerationRequest([{"role": "user", "content": "hi"}])])


def test_429_and_500_are_retried_and_retry_after_is_honoured(server):
    Scripted.script = [(429, {"error": "slow down"}, {"Retry-After": "0.3"}), (500, {"error": "replica"}, {})]
    started = time.perf_counter()
    with backend(server) as b:
        assert ask(b)[0].text == "{}"
    assert Scripted.posts == 3 and time.perf_counter() - started >= 0.3


@pytest.mark.parametrize("models", [[{"id": "m"}], {"data": None}, ["m"]])
def test_a_malformed_model_list_is_unavailable(server, models):
    Scripted.models = models
    with backend(server) as b, pytest.raises(LLMUnavailable, match="model list"):
        ask(b)


@pytest.mark.parametrize("reply", [
    {"choices": [{"message": "just text"}]},
    {"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": "n/a"}},
])
def test_a_malformed_completion_is_unavailable(server, reply):
    Scripted.script = [(200, reply, {})]
    with backend(server) as b, pytest.raises(LLMUnavailable, match="malformed"):
        ask(b)


def test_a_key_from_a_secret_file_and_a_closed_client(server):
    b = backend(server, api_key="s3cret\n")  # trailing newline: an invalid header without the strip
    assert ask(b)[0].text == "{}"
    b.close()
    with pytest.raises(LLMUnavailable):
        ask(b)


def test_a_base_url_without_a_scheme_is_refused():
    with pytest.raises(LLMUnavailable, match="http"):
        backend("127.0.0.1:8000/v1")
