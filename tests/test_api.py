"""The HTTP API end to end: the official openai client against uvicorn on a free local port.

One server for the module (a real Armada runtime: SQLite, LangGraph, the echo/boom/slow test
agents registered through the plugin hook), guarded by an API key. Bad requests must each get a
clear 4xx and store nothing.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from sqlmodel import func, select

from app.api import create_app
from app.runtime import Armada
from core.config import ArmConfig, RouterConfig, Settings
from core.store import Feedback, Interaction, RouteDecision
from tests.conftest import SHARED_MODELS_DIR
from tests.plugins_fixture import TestAgents

KEY = "sk-test-armada"


@dataclass
class Served:
    rt: Armada
    base: str
    http: httpx.Client
    client: openai.OpenAI


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ARMADA_HOME", str(home))
        mp.delenv("ARMADA_CONFIG", raising=False)
        settings = Settings(
            home=home,
            models_dir=SHARED_MODELS_DIR,
            arms=[ArmConfig(name=n, agent=n) for n in ("echo", "boom", "slow")],
            router=RouterConfig(policy="fixed", arm="echo", fallback_arm="echo"),
        )
        rt = Armada(settings, extra_plugins=[TestAgents()])
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        server = uvicorn.Server(uvicorn.Config(create_app(rt, [KEY]), log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        auth = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(base_url=base, headers=auth, timeout=60) as http:
            client = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0)
            yield Served(rt, base, http, client)
        server.should_exit = True
        thread.join(10)
        rt.close()


def _ask(client: openai.OpenAI, question: str, model: str = "armada", **kw: Any) -> Any:
    msgs = [{"role": "user", "content": question}]
    return client.chat.completions.create(model=model, messages=msgs, **kw)


def _rows(rt: Armada) -> dict[str, Any]:
    with rt.store.session() as s:
        counts = {
            t.__name__: s.exec(select(func.count()).select_from(t)).one()
            for t in (Interaction, RouteDecision, Feedback)
        }
    return counts | {"stats": rt.store.arm_stats(), "seq": rt.store.feedback_seq()}


def _sse(resp: httpx.Response) -> list[Any]:
    return [
        line[6:] if line[6:] == "[DONE]" else json.loads(line[6:])
        for line in resp.iter_lines()
        if line.startswith("data: ")
    ]


def test_models_list_arms_and_the_router(served: Served) -> None:
    ids = [m.id for m in served.client.models.list()]
    assert ids == ["armada", "armada:echo", "armada:boom", "armada:slow"]


def test_a_disabled_arm_is_refused_and_unlisted(served: Served) -> None:
    served.rt.store.set_arm_status("slow", "disabled", "broken adapter")
    try:
        r = served.http.post("/v1/chat/completions", json=_chat("Hi", "armada:slow"))
        assert r.status_code == 400 and "broken adapter" in r.json()["error"]["message"]
        assert "armada:slow" not in [m.id for m in served.client.models.list()]
    finally:
        served.rt.store.set_arm_status("slow", "ok")


def test_routed_answer_carries_interaction_and_sources(served: Served) -> None:
    msgs = [
        {"role": "system", "content": "ignored"},
        {"role": "user", "content": "an earlier question, ignored"},
        {"role": "assistant", "content": "an earlier answer"},
        {"role": "user", "content": "What is up?"},
    ]
    r = served.client.chat.completions.create(model="armada", messages=msgs)
    assert r.object == "chat.completion" and r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == "echo: What is up?"
    assert (r.arm, r.model) == ("echo", "armada:echo")
    assert r.usage.completion_tokens == 4 and r.usage.total_tokens == 7
    assert isinstance(r.model_extra["sources"], list)
    row = served.rt.store.interaction(r.interaction_id)
    assert (row.question, row.answer, row.thread_id) == (
        "What is up?",
        r.choices[0].message.content,
        r.thread_id,
    )
    assert served.rt.store.decision_for(r.interaction_id).policy == "fixed"


def test_pinned_arm_and_text_parts(served: Served) -> None:
    parts = [{"type": "text", "text": "Pinned"}, {"type": "text", "text": "question"}]
    r = served.client.chat.completions.create(
        model="armada:echo", messages=[{"role": "user", "content": parts}]
    )
    assert r.choices[0].message.content == "echo: Pinned\nquestion"
    assert served.rt.store.decision_for(r.interaction_id).policy == "override"
    r = _ask(served.client, "Who?", model="armada:boom")  # fails, the fallback answers
    assert (r.arm, r.status, r.fallback_from) == ("echo", "fallback", "boom")


def test_streamed_answer_equals_the_stored_one(served: Served) -> None:
    stream = _ask(served.client, "Stream this please", stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    last = chunks[-1]
    assert last.object == "chat.completion.chunk" and last.choices[0].finish_reason == "stop"
    assert last.usage.total_tokens == 3 + 4
    row = served.rt.store.interaction(last.interaction_id)  # an extra field, by attribute
    assert text.strip() == row.answer == "echo: Stream this please"
    assert last.model_extra["arm"] == row.arm == "echo"


def test_stream_shows_a_fallback_as_a_reset(served: Served) -> None:
    body = {
        "model": "armada:boom",
        "stream": True,
        "messages": [{"role": "user", "content": "Hm?"}],
    }
    with served.http.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        events = _sse(resp)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    reset = next(i for i, c in enumerate(chunks) if c.get("reset"))
    assert (
        chunks[reset]["reset"] == "boom"
        and "partial" in chunks[reset - 1]["choices"][0]["delta"]["content"]
    )
    after = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[reset:])
    final = chunks[-1]
    assert (final["fallback_from"], final["arm"], final["status"]) == ("boom", "echo", "fallback")
    assert after.strip() == served.rt.store.interaction(final["interaction_id"]).answer


def test_threads_continue_by_body_field_or_header(served: Served) -> None:
    tid = f"t-{uuid.uuid4().hex[:8]}"
    _ask(served.client, "First turn", extra_body={"thread_id": tid})
    _ask(served.client, "Second turn", extra_headers={"X-Armada-Thread": tid})
    turns = served.rt.thread_history(tid)
    assert [t["question"] for t in turns] == ["First turn", "Second turn"]


def test_feedback_moves_the_arm_stats_and_leaderboard(served: Served) -> None:
    rt, http = served.rt, served.http
    iid = _ask(served.client, "Vote on me").interaction_id
    before = rt.store.arm_stats()
    vote = {"interaction_id": iid, "score": 1, "feedback_id": f"f-{iid}", "voter": "ann"}
    r = http.post("/v1/feedback", json=vote)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["created"], body["replaced"], body["arm"]) == (True, None, "echo")
    after = rt.store.arm_stats()
    assert after != before and after == rt.store.recompute_arm_stats()
    assert sum(v[0] for (a, _), v in after.items() if a == "echo") == (
        sum(v[0] for (a, _), v in before.items() if a == "echo") + 1
    )
    again = http.post("/v1/feedback", json=vote).json()  # idempotent replay
    assert (again["created"], again["seq"]) == (False, body["seq"])
    change = vote | {"feedback_id": f"g-{iid}", "score": 0}  # the voter changes their mind
    assert http.post("/v1/feedback", json=change).json()["replaced"] == vote["feedback_id"]
    assert rt.store.arm_stats() == rt.store.recompute_arm_stats()
    arms = {a["name"]: a for a in http.get("/v1/arms").json()["data"]}
    assert arms["echo"]["votes"] >= 1 and arms["echo"]["agent"] == "echo"
    assert arms["boom"]["enabled"] and arms["boom"]["status"] == "ok"
    board = http.get("/v1/leaderboard")
    assert board.status_code == 200
    echo = next(a for a in board.json()["arms"] if a["arm"] == "echo")
    assert echo["votes"] == arms["echo"]["votes"] and echo["pulls"] >= 1


def test_health_answers_while_an_answer_is_generated(served: Served) -> None:
    slow = threading.Thread(target=_ask, args=(served.client, "Slowly", "armada:slow"))
    slow.start()
    time.sleep(0.3)  # the slow arm sleeps up to 2 s in a worker thread
    t0 = time.monotonic()
    r = httpx.get(f"{served.base}/healthz", timeout=5)  # no key needed
    assert r.status_code == 200 and r.json() == {"status": "ok", "arms": 3}
    assert time.monotonic() - t0 < 1.0 and slow.is_alive()
    slow.join()
    schema = httpx.get(f"{served.base}/openapi.json").json()
    assert {"/v1/chat/completions", "/v1/feedback", "/v1/leaderboard"} <= set(schema["paths"])


def _chat(question: Any, model: str = "armada") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": question}]}


def _vote(iid: str, **kw: Any) -> dict[str, Any]:
    return {"interaction_id": iid, "score": 1, "feedback_id": f"bad-{uuid.uuid4()}"} | kw


def _big_chunks() -> Iterator[bytes]:
    for _ in range(40):  # 2.5 MB with no Content-Length (chunked): counted while read
        yield b" " * 65536


# name → (method, path, request kwargs given the stored interaction id, status, error code)
BAD: dict[str, tuple[str, str, Callable[[str], dict[str, Any]], int, str | None]] = {
    "unknown interaction": ("POST", "/v1/feedback", lambda i: {"json": _vote("nope")}, 404, "interaction_not_found"),
    "score above 1": ("POST", "/v1/feedback", lambda i: {"json": _vote(i, score=1.5)}, 400, "invalid_request"),
    "score below 0": ("POST", "/v1/feedback", lambda i: {"json": _vote(i, score=-0.1)}, 400, "invalid_request"),
    "reused feedback id": ("POST", "/v1/feedback", lambda i: {"json": _vote(i, feedback_id=f"dup-{i}", score=0)}, 409, "feedback_id_conflict"),
    "1 MB comment": ("POST", "/v1/feedback", lambda i: {"json": _vote(i, comment="x" * 1_000_000)}, 400, "invalid_input"),
    "missing key": ("POST", "/v1/chat/completions", lambda i: {"json": _chat("Hi"), "headers": {"Authorization": ""}}, 401, "missing_api_key"),
    "wrong key": ("POST", "/v1/chat/completions", lambda i: {"json": _chat("Hi"), "headers": {"Authorization": "Bearer sk-wrong"}}, 401, "invalid_api_key"),
    "no key, malformed body": ("POST", "/v1/feedback", lambda i: {"content": b"{", "headers": {"Authorization": ""}}, 401, "missing_api_key"),
    "wrong key on a GET": ("GET", "/v1/arms", lambda i: {"headers": {"Authorization": "Bearer x"}}, 401, "invalid_api_key"),
    "empty question": ("POST", "/v1/chat/completions", lambda i: {"json": _chat("   ")}, 400, "invalid_input"),
    "question too long": ("POST", "/v1/chat/completions", lambda i: {"json": _chat("why " * 2000)}, 400, "invalid_input"),
    "no user message": ("POST", "/v1/chat/completions", lambda i: {"json": {"model": "armada", "messages": [{"role": "system", "content": "x"}]}}, 400, None),
    "image content": ("POST", "/v1/chat/completions", lambda i: {"json": _chat([{"type": "image_url", "image_url": {"url": "x"}}])}, 400, "unsupported_content"),
    "oversized body": ("POST", "/v1/chat/completions", lambda i: {"json": _chat("x" * (2 << 20))}, 413, "body_too_large"),
    "oversized chunked body": ("POST", "/v1/feedback", lambda i: {"content": _big_chunks()}, 413, "body_too_large"),
    "malformed JSON": ("POST", "/v1/chat/completions", lambda i: {"content": b'{"model": "armada", "messages": [', "headers": {"Content-Type": "application/json"}}, 400, "invalid_json"),
    "unknown arm": ("POST", "/v1/chat/completions", lambda i: {"json": _chat("Hi", "armada:nosuch")}, 404, "model_not_found"),
    "not an armada model": ("POST", "/v1/chat/completions", lambda i: {"json": _chat("Hi", "gpt-4o")}, 404, "model_not_found"),
    "stream with empty question": ("POST", "/v1/chat/completions", lambda i: {"json": _chat("") | {"stream": True}}, 400, "invalid_input"),
}  # fmt: skip


@pytest.fixture(scope="module")
def voted(served: Served) -> str:
    """An answered interaction with one vote under ``dup-<id>``."""
    iid = _ask(served.client, "A question to vote on").interaction_id
    r = served.http.post("/v1/feedback", json=_vote(iid, feedback_id=f"dup-{iid}"))
    assert r.status_code == 200
    return iid


@pytest.mark.parametrize("case", list(BAD))
def test_bad_requests_get_a_clear_4xx_and_store_nothing(
    served: Served, voted: str, case: str
) -> None:
    method, path, kwargs, status, code = BAD[case]
    before = _rows(served.rt)
    r = served.http.request(method, path, **kwargs(voted))
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"] and "Traceback" not in r.text
    if code:
        assert err["code"] == code
    assert _rows(served.rt) == before


def test_the_openai_client_raises_typed_errors(served: Served) -> None:
    with pytest.raises(openai.NotFoundError, match="nosuch"):
        _ask(served.client, "Hi", model="armada:nosuch")
    with pytest.raises(openai.AuthenticationError):
        _ask(openai.OpenAI(base_url=f"{served.base}/v1", api_key="sk-no", max_retries=0), "Hi")
    with pytest.raises(openai.BadRequestError, match="empty"):
        _ask(served.client, "", stream=True)


def test_server_side_failures_are_clean_5xx(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(served.rt, "enabled_arms", lambda: [])  # every arm switched off
    r = served.http.post("/v1/chat/completions", json=_chat("Anyone?"))
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_arm_available"
    with pytest.raises(openai.APIError, match="no enabled arm"):  # mid-stream: an error event
        list(_ask(served.client, "Anyone?", stream=True))
    monkeypatch.setattr(served.rt.store, "arm_stats", lambda: 1 / 0)
    r = served.http.get("/v1/arms")
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    assert "ZeroDivisionError" not in r.text and "Traceback" not in r.text
