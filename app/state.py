"""The question graph's state: what each node reads and the partial updates it returns."""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict


class Turn(TypedDict):
    question: str
    answer: str
    interaction_id: str
    arm: str


class QAState(TypedDict, total=False):
    # Input
    question: str
    arm_override: str | None
    tags: dict[str, str]
    """The caller's hints for the arm, e.g. ``{"dataset": "popqa"}`` (see ``AgentContext.tags``)."""
    # retrieve
    hits: list[dict[str, Any]]
    """Serialised ``Hit``s (plain dicts, so the checkpointer can store them)."""
    retrieval_error: str
    # route
    arm: str
    policy: str
    propensity: float
    route_context: dict[str, Any]
    # generate / fallback
    answer: str
    cited_ids: list[str]
    usage: dict[str, int]
    details: dict[str, Any]
    status: str
    """"ok", "failed" (the chosen arm raised or timed out), "fallback" or "error"."""
    error: str
    fallback_from: str | None
    # record
    interaction_id: str
    latency_ms: dict[str, float]
    # Across turns of one thread (kept by the checkpointer).
    history: Annotated[list[Turn], operator.add]


def fresh_turn(
    question: str, arm_override: str | None, tags: dict[str, str] | None = None
) -> QAState:
    """Input for a new turn: resets every per-turn field a previous turn left in the thread."""
    return QAState(
        question=question,
        arm_override=arm_override,
        tags=dict(tags or {}),
        hits=[],
        retrieval_error="",
        answer="",
        cited_ids=[],
        usage={},
        details={},
        status="ok",
        error="",
        fallback_from=None,
        interaction_id="",
        latency_ms={},
    )
