"""SQLModel classes for the current schema (the migrations in ``migrations.py`` create it)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class Arm(SQLModel, table=True):
    name: str = Field(primary_key=True, max_length=48)
    agent: str = Field(max_length=48)
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    enabled: bool = True
    status: str = "ok"
    """"ok" or "disabled"/"broken" with a reason a person can act on."""
    reason: str = ""
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class Interaction(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    created_at: datetime = Field(default_factory=utcnow, index=True)
    thread_id: str | None = Field(default=None, index=True, max_length=64)
    question: str
    arm: str = Field(index=True, max_length=48)
    answer: str
    passage_ids: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    cited_ids: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    latency_ms: dict[str, float] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False)
    )
    """Per graph node, plus "total"."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    status: str = "ok"
    """"ok", or "fallback" when the chosen arm failed and ``fallback_from`` names it."""
    error: str = ""
    fallback_from: str | None = None
    details: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))


class RouteDecision(SQLModel, table=True):
    __tablename__ = "route_decision"

    id: int | None = Field(default=None, primary_key=True)
    interaction_id: str = Field(foreign_key="interaction.id", max_length=36)
    created_at: datetime = Field(default_factory=utcnow)
    policy: str
    arm: str
    propensity: float
    """Probability the policy gave this arm; what off-policy evaluation needs."""
    context: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class Feedback(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=128)
    """Client-supplied; the same id with the same content is a no-op."""
    interaction_id: str = Field(foreign_key="interaction.id", max_length=36)
    score: float
    voter: str = ""
    comment: str = ""
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime | None = None
    reward: float | None = None
    """The bandit's reward for this vote (the score, or cost-aware: see RewardConfig)."""
    seq: int | None = None
    """Position in the fold over feedback (policy state = replay in seq order)."""
    arm: str | None = None
    """The arm that answered (denormalised from the interaction for the fold)."""
    category: str | None = None


class ArmStat(SQLModel, table=True):
    __tablename__ = "arm_stat"

    arm: str = Field(primary_key=True, max_length=48)
    category: str = Field(primary_key=True, max_length=48)
    n: int = 0
    reward_sum: float = 0.0
    reward_sq_sum: float = 0.0


class Meta(SQLModel, table=True):
    __tablename__ = "armada_meta"

    key: str = Field(primary_key=True, max_length=64)
    value: int = 0


class Adapter(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str
    version: int
    path: str
    base_model: str
    sha256: str = ""
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: str = "registered"
    created_at: datetime = Field(default_factory=utcnow)


class EvalRun(SQLModel, table=True):
    __tablename__ = "eval_run"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    created_at: datetime = Field(default_factory=utcnow)
    name: str
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: str = "done"


class ArenaBattle(SQLModel, table=True):
    """One arena comparison: the same question to two arms, names hidden until the vote."""

    __tablename__ = "arena_battle"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=128)
    created_at: datetime = Field(default_factory=utcnow)
    question: str
    arm_a: str
    arm_b: str
    interaction_a: str = Field(foreign_key="interaction.id", max_length=36)
    interaction_b: str = Field(foreign_key="interaction.id", max_length=36)
    winner: str
    """"a", "b", "tie" or "bad" (both bad)."""
    voter: str = ""
