"""The question graph: retrieve → route → generate → record, with a fallback arm on failure.

```
START → retrieve → route → generate ─(ok)→ record → END
                              └─(failed)→ fallback → record
```

Nodes are plain functions returning partial state; the routing function returns a node name.
Tokens stream through LangGraph's custom stream (``stream_mode="custom"``) as ``{"token": str}``;
``{"reset": arm}`` tells a client to clear what a failed arm streamed before the fallback answers.
Run it: ``armada ask "…"``, or ``Armada(settings).ask("…")`` from Python.
"""

from __future__ import annotations

import contextvars
import logging
import resource
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.runnables import RunnableConfig
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph

from agents.base import AgentContext, Answer
from app.state import QAState, Turn
from core.store import Interaction, RouteDecision
from core.types import Hit, Message

if TYPE_CHECKING:
    from app.runtime import Armada

log = logging.getLogger(__name__)

HISTORY_TURNS = 3
"""Earlier turns of the thread an agent sees (a 135M model has little room for more)."""
FAILED_ANSWER = "Sorry, no arm could answer this question right now. The failure was recorded."


def _timed(name: str, fn: Callable[[QAState], dict[str, Any]]) -> Callable[[QAState], dict]:
    def node(state: QAState) -> dict[str, Any]:
        t0 = time.perf_counter()
        update = fn(state)
        latency = dict(update.pop("latency_ms", None) or state.get("latency_ms") or {})
        latency[name] = round((time.perf_counter() - t0) * 1000, 2)
        update["latency_ms"] = latency
        return update

    node.__name__ = name
    return node


def _writer() -> Callable[[Any], None]:
    try:
        return get_stream_writer()
    except RuntimeError:  # invoked outside a streaming run
        return lambda _chunk: None


def build_graph(rt: Armada, checkpointer: Any = None) -> Any:
    """Compile the question graph over the services of ``rt``."""

    def retrieve(state: QAState) -> dict[str, Any]:
        try:
            hits = rt.retrieve(state["question"])
            return {"hits": [h.to_dict() for h in hits], "retrieval_error": "", "latency_ms": {}}
        except Exception as e:  # no index yet, or a broken one: answer without passages
            log.warning("retrieval failed: %s", e)
            return {"hits": [], "retrieval_error": str(e), "latency_ms": {}}

    def route(state: QAState) -> dict[str, Any]:
        context = rt.route_context(state["question"])
        override = state.get("arm_override")
        if override:
            return {
                "arm": override,
                "policy": "override",
                "propensity": 1.0,
                "route_context": context,
            }
        policy = rt.policy()
        arm, propensity = policy.select(context)
        return {
            "arm": arm,
            "policy": policy.name,
            "propensity": propensity,
            "route_context": context,
        }

    def run(arm: str, state: QAState) -> Answer:
        writer = _writer()
        history = [
            m
            for t in state.get("history", [])[-HISTORY_TURNS:]
            for m in (Message("user", t["question"]), Message("assistant", t["answer"]))
        ]
        hits = [Hit.from_dict(h) for h in state.get("hits", [])]
        return run_arm(
            rt,
            arm,
            state["question"],
            hits,
            history,
            lambda t: writer({"token": t}),
            tags=state.get("tags") or {},
        )

    def generate(state: QAState) -> dict[str, Any]:
        arm = state["arm"]
        try:
            ans = run(arm, state)
        except Exception as e:
            log.warning("arm %s failed: %s: %s", arm, type(e).__name__, e)
            return {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        return _answer_update(ans, "ok", state.get("hits", []))

    def after_generate(state: QAState) -> Literal["record", "fallback"]:
        return "fallback" if state.get("status") == "failed" else "record"

    def fallback(state: QAState) -> dict[str, Any]:
        failed = state["arm"]
        _writer()({"reset": failed})
        fb = rt.fallback_arm(exclude=failed)
        base = {"fallback_from": failed, "error": state.get("error", "")}
        if fb is None:
            return {**base, "status": "error", "answer": FAILED_ANSWER, "cited_ids": []}
        try:
            ans = run(fb, state)
        except Exception as e:
            log.error("fallback arm %s failed too: %s", fb, e)
            err = f"{base['error']}; fallback {fb}: {type(e).__name__}: {e}"
            return {**base, "status": "error", "error": err, "answer": FAILED_ANSWER}
        return {**base, **_answer_update(ans, "fallback", state.get("hits", [])), "arm": fb}

    def record(state: QAState, config: RunnableConfig) -> dict[str, Any]:
        latency = dict(state.get("latency_ms", {}))
        latency["total"] = round(sum(latency.values()), 2)
        usage = state.get("usage") or {}
        details = dict(state.get("details") or {})
        details["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        if state.get("retrieval_error"):
            details["retrieval_error"] = state["retrieval_error"]
        interaction = Interaction(
            thread_id=(config.get("configurable") or {}).get("thread_id"),
            question=state["question"],
            arm=state["arm"],
            answer=state.get("answer", ""),
            passage_ids=[h["id"] for h in state.get("hits", [])],
            cited_ids=list(state.get("cited_ids", [])),
            latency_ms=latency,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            status=state.get("status", "ok"),
            error=state.get("error", ""),
            fallback_from=state.get("fallback_from"),
            details=details,
        )
        decision = RouteDecision(
            interaction_id=interaction.id,
            policy=state.get("policy", ""),
            arm=state.get("fallback_from") or state["arm"],
            propensity=float(state.get("propensity", 1.0)),
            context=state.get("route_context", {}),
        )
        rt.store.record_interaction(interaction, decision)
        turn = Turn(
            question=state["question"],
            answer=interaction.answer,
            interaction_id=interaction.id,
            arm=interaction.arm,
        )
        return {"interaction_id": interaction.id, "history": [turn], "latency_ms": latency}

    g = StateGraph(QAState)
    g.add_node("retrieve", _timed("retrieve", retrieve))
    g.add_node("route", _timed("route", route))
    g.add_node("generate", _timed("generate", generate))
    g.add_node("fallback", _timed("fallback", fallback))
    g.add_node("record", record)
    g.add_edge(START, "retrieve")
    g.add_edge("retrieve", "route")
    g.add_edge("route", "generate")
    g.add_conditional_edges("generate", after_generate, ["record", "fallback"])
    g.add_edge("fallback", "record")
    g.add_edge("record", END)
    return g.compile(checkpointer=checkpointer, name="armada")


def _answer_update(ans: Answer, status: str, hits: list[dict[str, Any]]) -> dict[str, Any]:
    seen = {h["id"] for h in hits}
    extra = [h.to_dict() for h in ans.passages if h.passage.id not in seen]
    return {
        "hits": [*hits, *extra],
        "answer": ans.text,
        "cited_ids": list(ans.cited_ids),
        "usage": ans.usage.to_dict(),
        "details": dict(ans.details),
        "status": status,
    }


def run_arm(
    rt: Armada,
    arm: str,
    question: str,
    hits: list[Hit],
    history: list[Message],
    on_token: Callable[[str], None] | None,
    tags: dict[str, str] | None = None,
) -> Answer:
    """Run one arm with the configured timeout; a timeout cancels its generation."""
    agent = rt.agent(arm)
    model = rt.model(agent.arm.model) if agent.needs_model else None
    load = getattr(model, "load", None)
    if callable(load):  # load (or convert) outside the timeout: it is not the arm's fault
        load()
    # Verified and loaded outside the timeout too; a bad adapter disables the arm and raises.
    adapters, metas = rt.prepare_adapters(arm)
    cancel = threading.Event()
    ctx = AgentContext(
        model=model,
        retriever=_retriever_or_none(rt) if agent.needs_retrieval else None,
        history=history,
        on_token=on_token,
        cancel=cancel,
        adapters=adapters,
        metas=metas,
        embed=rt.embed,
        tags=dict(tags or {}),
    )
    passages = hits if agent.needs_retrieval else []
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"arm-{arm}")
    try:
        # The stream writer reads LangGraph's run context from contextvars: carry them over.
        fut = pool.submit(contextvars.copy_context().run, agent.answer, question, passages, ctx)
        try:
            return fut.result(timeout=rt.settings.router.arm_timeout_s)
        except FuturesTimeout:
            cancel.set()
            raise TimeoutError(
                f"arm {arm!r} took longer than {rt.settings.router.arm_timeout_s:g} s"
            ) from None
    finally:
        pool.shutdown(wait=False)


def _retriever_or_none(rt: Armada) -> Any:
    try:
        return rt.retriever
    except Exception as e:  # an arm that only reads the given passages can still answer
        log.warning("retriever unavailable: %s", e)
        return None
