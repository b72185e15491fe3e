"""The HTTP API: OpenAI-compatible chat completions over Armada, plus votes, arms and a leaderboard.

Run ``armada serve --host H --port P [--api-key KEY …]`` (keys also from ``ARMADA_API_KEYS``,
comma-separated) and point any OpenAI client at ``http://H:P/v1``; the answer carries
``interaction_id``, ``arm``, ``thread_id`` and ``sources`` beside the standard fields.

  POST /v1/chat/completions  model ``armada`` is routed, ``armada:<arm>`` pins an arm; ``stream``
  GET  /v1/models            ``armada`` and ``armada:<arm>`` for each enabled arm
  POST /v1/feedback          ``{interaction_id, score (0–1; thumbs 1 or 0), feedback_id, voter?,
                             comment?}`` → ``{feedback_id, created, replaced, seq, …}``
  GET  /v1/arms, /v1/leaderboard; open to all: /healthz, /openapi.json, /docs

With keys set, ``/v1`` needs ``Authorization: Bearer KEY``. The question is the last user message
(a string or text parts); earlier ones are ignored: ``thread_id`` (a body field or the
``X-Armada-Thread`` header) continues a conversation.

Streaming sends ``chat.completion.chunk`` events. If the chosen arm fails mid-answer, a chunk with
an empty delta and ``"reset": "<failed arm>"`` says to discard the text so far: the fallback arm's
answer follows. The last chunk has ``finish_reason``, ``usage`` and the fields above, then
``data: [DONE]``; a failure once streaming has begun is an ``{"error": …}`` event.

Errors are ``{"error": {"message", "type", "code"}}``, never a traceback: 400 bad input (invalid
or malformed JSON, empty or long question, disabled arm, long comment), 401 missing or wrong key,
404 unknown model/arm or interaction, 409 a feedback id reused for another vote, 413 body over
``max_body_bytes``, 503 no arm enabled, 500 anything else (logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, FastAPI, Header
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import ArmadaError, InputError
from core.store import Feedback
from core.text import clean_question
from routers import NoArmAvailable

if TYPE_CHECKING:
    from app.runtime import Armada, AskResult

log = logging.getLogger(__name__)

MODEL = "armada"
MAX_BODY_BYTES = 1 << 20
SNIPPET_CHARS = 240


# -- errors and guards -----------------------------------------------------------------------------
class APIError(Exception):
    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", code: str = ""
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code or None

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "code": self.code}}
        auth = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(body, status_code=self.status, headers=auth)


def _classify(e: Exception) -> APIError:
    """Map any exception to the error a client sees."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, RequestValidationError):
        if any(x.get("type") == "json_invalid" for x in e.errors()):
            return APIError(400, "the request body is not valid JSON", code="invalid_json")
        msg = "; ".join(
            f"{'.'.join(map(str, x['loc'][1:])) or 'body'}: {x['msg']}" for x in e.errors()
        )
        return APIError(400, msg or "invalid request", code="invalid_request")
    if isinstance(e, HTTPException):  # no such route, wrong method…
        return APIError(e.status_code, str(e.detail), code=f"http_{e.status_code}")
    if isinstance(e, InputError):
        return APIError(400, str(e), code="invalid_input")
    if isinstance(e, NoArmAvailable):
        return APIError(503, str(e), "server_error", "no_arm_available")
    if isinstance(e, ArmadaError):  # configuration, model or store trouble: the server's side
        return APIError(500, str(e), "server_error", type(e).__name__)
    log.error("unhandled error in the API", exc_info=e)
    return APIError(500, "internal server error (details are in the server log)", "server_error")


class Guard:
    """Checks a request before anything parses it: the API key (``/v1`` only), then the size.

    A declared Content-Length over ``max_bytes`` is refused at once; otherwise the body is read
    and counted (it is small by then), so a chunked upload cannot slip past the header check.
    """

    def __init__(self, app: ASGIApp, keys: Sequence[bytes], max_bytes: int) -> None:
        self.app, self.keys, self.max_bytes = app, keys, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.keys and scope["path"].startswith("/v1"):
            scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not given.strip():
                msg = "missing API key: send 'Authorization: Bearer <key>'"
                err = APIError(401, msg, "authentication_error", "missing_api_key")
                return await err.response()(scope, receive, send)
            if not any(hmac.compare_digest(given.strip(), k) for k in self.keys):
                err = APIError(401, "invalid API key", "authentication_error", "invalid_api_key")
                return await err.response()(scope, receive, send)
        too_big = APIError(413, f"the request body is larger than {self.max_bytes:,} bytes",
                           code="body_too_large")  # fmt: skip
        if int(headers.get(b"content-length", b"0")) > self.max_bytes:
            return await too_big.response()(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":
                return await self.app(scope, receive, send)  # disconnected: nothing to serve
            chunks.append(msg.get("body", b""))
            size, more = size + len(chunks[-1]), msg.get("more_body", False)
            if size > self.max_bytes:
                return await too_big.response()(scope, receive, send)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:  # later calls wait for the disconnect, as streaming responses expect
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)


# -- request and response bodies --------------------------------------------------------------------
class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # temperature, max_tokens…: accepted, not used
    model: str = Field(MODEL, description="`armada` is routed; `armada:<arm>` pins an arm")
    messages: list[ChatMessage] = Field(min_length=1, description="The last user one is asked")
    stream: bool = False
    thread_id: str | None = Field(None, min_length=1, max_length=64)
    """Continues a conversation thread (also the ``X-Armada-Thread`` header)."""


class FeedbackRequest(BaseModel):
    interaction_id: str = Field(min_length=1, max_length=64)
    score: float = Field(ge=0.0, le=1.0, description="0–1; thumbs up is 1, thumbs down 0")
    feedback_id: str = Field(min_length=1, max_length=128, description="Client idempotency key")
    voter: str = Field("", max_length=128, description="A new vote replaces the voter's old one")
    comment: str = ""


def _question(messages: Sequence[ChatMessage]) -> str:
    users = [m for m in messages if m.role == "user"]
    if not users:
        raise APIError(400, "no message with role 'user': the last one is the question")
    content = users[-1].content
    if isinstance(content, list):
        if any(p.get("type") != "text" or not isinstance(p.get("text"), str) for p in content):
            raise APIError(400, "only text content parts are supported", code="unsupported_content")
        content = "\n".join(p["text"] for p in content)
    return content or ""


def _extras(res: AskResult) -> dict[str, Any]:
    """Armada's fields beside the standard ones, the same in both response shapes."""
    p, c = (int(res.usage.get(k, 0)) for k in ("prompt_tokens", "completion_tokens"))
    sources = [
        {"id": h.passage.id, "title": h.passage.title, "snippet": h.passage.text[:SNIPPET_CHARS]}
        for h in res.sources
    ]
    ids = {"interaction_id": res.interaction_id, "arm": res.arm, "thread_id": res.thread_id}
    return ids | {
        "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
        "status": res.status,
        "fallback_from": res.fallback_from,
        "sources": sources,
    }


# -- the app --------------------------------------------------------------------------------------
def create_app(
    rt: Armada, api_keys: Sequence[str] | None = None, max_body_bytes: int = MAX_BODY_BYTES
) -> FastAPI:
    """The API over one runtime; ``api_keys`` (if any) guard every ``/v1`` endpoint."""
    keys = [k.encode() for k in api_keys or [] if k]
    # The Guard middleware checks keys before the body is read; this only documents the scheme.
    bearer = HTTPBearer(auto_error=False, description="A key given to `armada serve --api-key`")

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(lambda: rt.graph)  # compile once, not in two racing requests
        yield

    app = FastAPI(title="Armada", version="1", lifespan=lifespan, description=__doc__)
    app.add_middleware(Guard, keys=keys, max_bytes=max_body_bytes)

    async def on_error(_request: Request, e: Exception) -> JSONResponse:
        return _classify(e).response()

    # Expected errors get their own handlers; Starlette re-raises (and logs) only the rest.
    for kind in (RequestValidationError, HTTPException, APIError, ArmadaError, Exception):
        app.add_exception_handler(kind, on_error)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(bearer)])

    def pin(model: str) -> str | None:
        if model == MODEL:
            return None
        prefix, _, arm = model.partition(":")
        if prefix != MODEL or arm not in {a.name for a in rt.settings.arms}:
            known = [MODEL] + [f"{MODEL}:{a}" for a in rt.enabled_arms()]
            raise APIError(404, f"unknown model {model!r}; available: {known}",
                           code="model_not_found")  # fmt: skip
        return rt.check_arm(arm)  # a disabled arm: InputError, 400

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, Any]:
        """Liveness: answers while answers are being generated."""
        return {"status": "ok", "arms": len(rt.enabled_arms())}

    @v1.get("/models")
    def models() -> dict[str, Any]:
        ids = [MODEL] + [f"{MODEL}:{a}" for a in rt.enabled_arms()]
        data = [{"id": i, "object": "model", "created": 0, "owned_by": "armada"} for i in ids]
        return {"object": "list", "data": data}

    @v1.post("/chat/completions")
    async def chat(
        body: ChatRequest, x_armada_thread: str | None = Header(None, max_length=64)
    ) -> Any:
        """OpenAI chat completion; the answer also carries ``interaction_id``, ``arm``, ``sources``."""
        limit = rt.settings.limits.max_question_chars
        question = clean_question(_question(body.messages), limit)
        arm = await run_in_threadpool(pin, body.model)
        thread_id = body.thread_id or x_armada_thread
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            events = _stream(rt, question, arm, thread_id, cid, created)
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        res = await run_in_threadpool(rt.ask, question, arm, thread_id)
        message = {"role": "assistant", "content": res.answer}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        data = {"id": cid, "object": "chat.completion", "created": created}
        return data | {"model": f"{MODEL}:{res.arm}", "choices": [choice], **_extras(res)}

    @v1.post("/feedback")
    def feedback(body: FeedbackRequest) -> dict[str, Any]:
        """Store a vote; the same ``feedback_id`` with the same content is a no-op."""
        if rt.store.interaction(body.interaction_id) is None:
            msg = f"unknown interaction {body.interaction_id!r}"
            raise APIError(404, msg, code="interaction_not_found")
        try:
            res = rt.feedback(
                body.interaction_id, body.score, body.feedback_id, body.voter, body.comment
            )
        except InputError as e:
            with rt.store.session() as s:
                if s.get(Feedback, body.feedback_id) is not None:
                    raise APIError(409, str(e), code="feedback_id_conflict") from None
            raise
        f, replaced = res.feedback, res.replaced.id if res.replaced else None
        vote = {"feedback_id": f.id, "interaction_id": f.interaction_id, "arm": f.arm}
        return vote | {
            "reward": f.reward,
            "created": res.created,
            "replaced": replaced,
            "seq": res.seq,
        }

    @v1.get("/arms")
    def arms() -> dict[str, Any]:
        """Configured arms with their agent, model, adapter, status and vote statistics."""
        rows, enabled = {a.name: a for a in rt.store.arms()}, set(rt.enabled_arms())
        stats, data = rt.store.arm_stats(), []
        for a in rt.settings.arms:
            row = rows.get(a.name)
            cells = [v for (arm, _), v in stats.items() if arm == a.name]
            n, total = sum(c[0] for c in cells), sum(c[1] for c in cells)
            data.append(
                a.model_dump(include={"name", "agent", "model", "adapter"})
                | {"model_id": f"{MODEL}:{a.name}", "enabled": a.name in enabled}
                | {"status": row.status if row else "new", "reason": row.reason if row else ""}
                | {"votes": n, "mean_reward": total / n if n else None}
            )
        return {"object": "list", "data": data}

    @v1.get("/leaderboard")
    def leaderboard() -> dict[str, Any]:
        """Per arm: pulls, votes, mean reward with a 95% interval, traffic share, regret."""
        from routers.leaderboard import leaderboard

        return leaderboard(rt.store)

    app.include_router(v1)
    return app


async def _stream(
    rt: Armada, question: str, arm: str | None, thread_id: str | None, cid: str, created: int
) -> AsyncIterator[str]:
    """SSE chunks from ``rt.ask_stream``, which runs whole in one worker thread.

    One thread for the whole generator, not a pool thread per ``next()``: LangGraph's stream sets
    context variables that must be reset in the context that set them.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def put(item: dict[str, Any] | None) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop is gone: the server stopped
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def produce() -> None:
        # Runs to the end even when the client has gone, so the answer is recorded (as without
        # streaming); the arm's own timeout bounds it.
        try:
            for event in rt.ask_stream(question, arm, thread_id):
                put(event)
        except Exception as e:
            put({"error": e})
        finally:
            put(None)

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        data = {"id": cid, "object": "chat.completion.chunk", "created": created}
        data |= {"model": f"{MODEL}:{arm}" if arm else MODEL, "choices": [choice], **extra}
        return f"data: {json.dumps(data)}\n\n"

    threading.Thread(target=produce, name="armada-stream", daemon=True).start()
    yield chunk({"role": "assistant", "content": ""})
    while (event := await queue.get()) is not None:
        if "token" in event:
            yield chunk({"content": event["token"]})
        elif "reset" in event:
            yield chunk({}, reset=event["reset"])
        elif "result" in event:
            yield chunk({}, "stop", **_extras(event["result"]))
        elif "error" in event:
            yield f"data: {_classify(event['error']).response().body.decode()}\n\n"
    yield "data: [DONE]\n\n"


# -- serving --------------------------------------------------------------------------------------
def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    api_keys: Sequence[str] | None = None,
    rt: Armada | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> None:
    """Serve the API with uvicorn until interrupted (a runtime made here is closed after)."""
    import uvicorn

    from app.runtime import Armada

    own = rt is None
    runtime = rt or Armada()
    try:
        uvicorn.run(create_app(runtime, api_keys, max_body_bytes), host=host, port=port)
    finally:
        if own:
            runtime.close()


def serve_command(host: str, port: int, api_keys: Sequence[str] | None = None) -> None:
    """``armada serve``: keys from ``--api-key`` plus ``ARMADA_API_KEYS`` (comma-separated)."""
    env = [k.strip() for k in os.environ.get("ARMADA_API_KEYS", "").split(",") if k.strip()]
    keys = [*(api_keys or []), *env]
    if not keys and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without API keys: anyone who can reach it can vote", host)
    serve(host, port, keys)
