"""The OpenAI-compatible backend against a real HTTP server on 127.0.0.1 that records each request.

The server speaks just enough of the API: ``/v1/chat/completions`` (JSON, or SSE with
``stream=true``), ``/v1/models`` and vLLM's ``/v1/load_lora_adapter``.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from core.config import ModelConfig
from core.errors import ModelError
from core.models import OpenAIChatModel
from core.types import Message

REPLY = "Paris is the capital of France."
MESSAGES = [Message("system", "Be brief."), Message("user", "What is the capital of France?")]


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] = field(default_factory=dict)


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: list[Recorded] = []
        self.reject_stream_options = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that stops reading (a cancelled stream) is expected; anything else is a bug.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def completions(self) -> list[dict[str, Any]]:
        return [r.body for r in self.requests if r.path == "/v1/chat/completions"]


class Handler(BaseHTTPRequestHandler):
    server: FakeServer

    def log_message(self, *args: Any) -> None:  # keep the test output quiet
        pass

    def do_GET(self) -> None:
        self._record({})
        if self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": "served-base", "object": "model"}]})
        else:
            self._json(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        self._record(body)
        if self.path == "/v1/load_lora_adapter":
            self._send(200, b"Success: LoRA adapter added successfully.", "text/plain")
        elif self.path != "/v1/chat/completions":
            self._json(404, {"error": {"message": f"no route {self.path}"}})
        elif body["model"] == "broken":
            self._json(404, {"error": {"message": "The model `broken` does not exist."}})
        elif "stream_options" in body and self.server.reject_stream_options:
            self._json(400, {"error": {"message": "unknown field: stream_options"}})
        elif body.get("stream"):
            self._stream(body)
        else:
            self._json(200, _completion(body["model"]))

    def _stream(self, body: dict[str, Any]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        model = body["model"]
        words = REPLY.split(" ")
        chunks = [_chunk(model, {"role": "assistant", "content": ""})]
        chunks += [
            _chunk(model, {"content": w if i == 0 else " " + w}) for i, w in enumerate(words)
        ]
        chunks.append(_chunk(model, {}, finish_reason="stop"))
        if body.get("stream_options", {}).get("include_usage"):
            chunks.append({**_chunk(model, {}), "choices": [], "usage": _usage()})
        for chunk in chunks:
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")

    def _record(self, body: dict[str, Any]) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.server.requests.append(Recorded(self.command, self.path, headers, body))

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _send(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _usage() -> dict[str, int]:
    return {"prompt_tokens": 21, "completion_tokens": 7, "total_tokens": 28}


def _completion(model: str) -> dict[str, Any]:
    return {
        "id": "cmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": REPLY},
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(),
    }


def _chunk(model: str, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "cmpl-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


@pytest.fixture
def server() -> Iterator[FakeServer]:
    srv = FakeServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _model(server: FakeServer, **overrides: Any) -> OpenAIChatModel:
    config = {
        "backend": "openai",
        "model": "served-base",
        "base_url": server.base_url,
        "api_key": "sk-test",
        "adapter_models": {"hotpotqa": "hotpotqa-lora"},
        "request_timeout_s": 5,
    }
    return OpenAIChatModel(ModelConfig(**(config | overrides)))


def test_plain_request_carries_model_messages_limits_and_key(server: FakeServer) -> None:
    model = _model(server)
    assert model._client is None  # built on first use, not at construction
    gen = model.generate(MESSAGES, max_new_tokens=17)
    assert (gen.text, gen.finish_reason, gen.model, gen.adapter) == (
        REPLY,
        "stop",
        "served-base",
        None,
    )
    assert (gen.usage.prompt_tokens, gen.usage.completion_tokens) == (21, 7)
    (request,) = server.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.body["model"] == "served-base"
    assert request.body["messages"] == [m.to_dict() for m in MESSAGES]
    assert request.body["max_tokens"] == 17
    assert request.body["temperature"] == 0.0
    assert not request.body.get("stream")


def test_adapter_maps_to_its_served_model(server: FakeServer) -> None:
    model = _model(server)
    gen = model.generate(MESSAGES, adapter="hotpotqa")
    assert server.completions()[-1]["model"] == "hotpotqa-lora"
    assert (gen.adapter, gen.model) == ("hotpotqa", "hotpotqa-lora")
    assert model.adapters() == ["hotpotqa"]
    with pytest.raises(ModelError, match="no served model"):
        model.generate(MESSAGES, adapter="pubmedqa")
    assert len(server.requests) == 1  # the unknown adapter never reached the server


def test_streaming_deltas_and_usage(server: FakeServer) -> None:
    model = _model(server, max_new_tokens=33)
    deltas: list[str] = []
    gen = model.generate(MESSAGES, adapter="hotpotqa", on_token=deltas.append)
    assert "".join(deltas) == gen.text == REPLY
    assert len(deltas) == len(REPLY.split(" "))
    assert (gen.usage.prompt_tokens, gen.usage.completion_tokens, gen.finish_reason) == (
        21,
        7,
        "stop",
    )
    body = server.completions()[-1]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert (body["model"], body["max_tokens"]) == ("hotpotqa-lora", 33)
    assert "".join(model.stream(MESSAGES)) == REPLY


def test_streaming_without_stream_options_support(server: FakeServer) -> None:
    server.reject_stream_options = True
    model = _model(server)
    deltas: list[str] = []
    gen = model.generate(MESSAGES, on_token=deltas.append)
    assert gen.text == REPLY and gen.usage.completion_tokens == len(deltas)
    assert "stream_options" not in server.completions()[-1]


def test_cancel_stops_the_stream(server: FakeServer) -> None:
    cancel = threading.Event()
    gen = _model(server).generate(MESSAGES, on_token=lambda _: cancel.set(), cancel=cancel)
    assert (gen.text, gen.finish_reason) == ("Paris", "cancelled")


def test_server_errors_become_model_errors(server: FakeServer) -> None:
    with pytest.raises(ModelError, match="The model `broken` does not exist"):
        _model(server, model="broken").generate(MESSAGES)
    with pytest.raises(ModelError, match="does not exist"):
        _model(server, model="broken").generate(MESSAGES, on_token=print)


def test_unreachable_server_is_a_model_error(server: FakeServer) -> None:
    url = server.base_url
    server.shutdown()
    server.server_close()
    with pytest.raises(ModelError, match="failed"):
        _model(server, base_url=url, request_timeout_s=2).generate(MESSAGES)


def test_defaults_key_and_first_served_model(server: FakeServer) -> None:
    model = _model(server, model=None, api_key=None)
    assert model.generate(MESSAGES).model == "served-base"
    assert [r.path for r in server.requests] == ["/v1/models", "/v1/chat/completions"]
    assert all(r.headers["authorization"] == "Bearer EMPTY" for r in server.requests)


def test_batch_runs_each_row_with_its_adapter(server: FakeServer) -> None:
    gens = _model(server).generate_batch(
        [MESSAGES] * 3, adapter_names=["hotpotqa", None, "hotpotqa"]
    )
    assert [g.text for g in gens] == [REPLY] * 3
    assert [b["model"] for b in server.completions()] == [
        "hotpotqa-lora",
        "served-base",
        "hotpotqa-lora",
    ]


def test_runtime_lora_loading_uses_the_vllm_endpoint(server: FakeServer) -> None:
    model = _model(server)
    model.load_adapter("pubmedqa", "/srv/adapters/pubmedqa/v3")
    assert server.requests[-1].path == "/v1/load_lora_adapter"
    assert server.requests[-1].body == {
        "lora_name": "pubmedqa",
        "lora_path": "/srv/adapters/pubmedqa/v3",
    }
    model.generate(MESSAGES, adapter="pubmedqa")
    assert server.completions()[-1]["model"] == "pubmedqa"
    model.unload_adapter("hotpotqa")
    assert model.adapters() == ["pubmedqa"]
    assert model.info()["adapters"] == {"pubmedqa": "pubmedqa"}
    assert model.count_tokens("abcdefgh") == 2
