"""Ordered, named schema migrations (``m001_initial``, ``m002_…``), applied once each.

Each migration declares its tables as frozen SQLAlchemy Core definitions, so the DDL is portable to
any SQLAlchemy dialect, and so an old database is upgraded by exactly the steps it lacks. The ORM
classes in ``tables.py`` describe the *current* shape; a test checks that they agree with the
result of running every migration here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    inspect,
)
from sqlalchemy.engine import Connection

log = logging.getLogger(__name__)

MIGRATIONS_TABLE = "armada_migrations"


def _m001_initial(conn: Connection) -> None:
    md = MetaData()
    Table(
        "arm",
        md,
        Column("name", String(48), primary_key=True),
        Column("agent", String(48), nullable=False),
        Column("config", JSON, nullable=False),
        Column("enabled", Boolean, nullable=False, default=True),
        Column("status", String(16), nullable=False, default="ok"),
        Column("reason", Text, nullable=False, default=""),
        Column("created_at", DateTime, nullable=False),
        Column("updated_at", DateTime, nullable=False),
    )
    Table(
        "interaction",
        md,
        Column("id", String(36), primary_key=True),
        Column("created_at", DateTime, nullable=False, index=True),
        Column("thread_id", String(64), nullable=True, index=True),
        Column("question", Text, nullable=False),
        Column("arm", String(48), nullable=False, index=True),
        Column("answer", Text, nullable=False),
        Column("passage_ids", JSON, nullable=False),
        Column("cited_ids", JSON, nullable=False),
        Column("latency_ms", JSON, nullable=False),
        Column("prompt_tokens", Integer, nullable=False, default=0),
        Column("completion_tokens", Integer, nullable=False, default=0),
        Column("status", String(16), nullable=False, default="ok"),
        Column("error", Text, nullable=False, default=""),
        Column("fallback_from", String(48), nullable=True),
    )
    Table(
        "route_decision",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("interaction_id", String(36), ForeignKey("interaction.id"), nullable=False),
        Column("created_at", DateTime, nullable=False),
        Column("policy", String(48), nullable=False),
        Column("arm", String(48), nullable=False),
        Column("propensity", Float, nullable=False),
        Column("context", JSON, nullable=False),
        Index("ix_route_decision_interaction", "interaction_id"),
    )
    Table(
        "feedback",
        md,
        Column("id", String(128), primary_key=True),
        Column("interaction_id", String(36), ForeignKey("interaction.id"), nullable=False),
        Column("score", Float, nullable=False),
        Column("voter", String(128), nullable=False, default=""),
        Column("comment", Text, nullable=False, default=""),
        Column("created_at", DateTime, nullable=False),
        Index("ix_feedback_interaction", "interaction_id"),
    )
    md.create_all(conn)


def _m002_adapters_evals(conn: Connection) -> None:
    md = MetaData()
    Table(
        "adapter",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("name", String(48), nullable=False),
        Column("version", Integer, nullable=False),
        Column("path", Text, nullable=False),
        Column("base_model", Text, nullable=False),
        Column("sha256", String(64), nullable=False, default=""),
        Column("metrics", JSON, nullable=False),
        Column("status", String(16), nullable=False, default="registered"),
        Column("created_at", DateTime, nullable=False),
        UniqueConstraint("name", "version", name="uq_adapter_name_version"),
    )
    Table(
        "eval_run",
        md,
        Column("id", String(36), primary_key=True),
        Column("created_at", DateTime, nullable=False),
        Column("name", String(128), nullable=False),
        Column("config", JSON, nullable=False),
        Column("metrics", JSON, nullable=False),
        Column("status", String(16), nullable=False, default="done"),
    )
    md.create_all(conn)


def _m003_interaction_details(conn: Connection) -> None:
    # Agent-specific details (expert gate, hops, fallback trace) and the routing context travel
    # with the interaction so a later reader needs no join to explain an answer.
    _add_column(conn, "interaction", Column("details", JSON, nullable=True))
    _add_column(conn, "feedback", Column("updated_at", DateTime, nullable=True))


def _add_column(conn: Connection, table: str, column: Column) -> None:
    if column.name in {c["name"] for c in inspect(conn).get_columns(table)}:
        return
    coltype = column.type.compile(dialect=conn.dialect)
    null = "" if column.nullable else " NOT NULL"
    conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column.name} {coltype}{null}")


def _m004_feedback_rewards(conn: Connection) -> None:
    # The bandit's state is a fold over feedback in ``seq`` order; ``arm_stat`` keeps the same fold
    # incrementally (changed in the vote's own transaction) so leaderboards need no full scan.
    _add_column(conn, "feedback", Column("reward", Float, nullable=True))
    _add_column(conn, "feedback", Column("seq", Integer, nullable=True))
    _add_column(conn, "feedback", Column("arm", String(48), nullable=True))
    _add_column(conn, "feedback", Column("category", String(48), nullable=True))
    conn.exec_driver_sql("UPDATE feedback SET reward = score WHERE reward IS NULL")
    md = MetaData()
    Table(
        "arm_stat",
        md,
        Column("arm", String(48), primary_key=True),
        Column("category", String(48), primary_key=True),
        Column("n", Integer, nullable=False, default=0),
        Column("reward_sum", Float, nullable=False, default=0.0),
        Column("reward_sq_sum", Float, nullable=False, default=0.0),
    )
    Table(
        "armada_meta",
        md,
        Column("key", String(64), primary_key=True),
        Column("value", Integer, nullable=False, default=0),
    )
    md.create_all(conn)


def _m005_arena(conn: Connection) -> None:
    md = MetaData()
    Table("interaction", md, Column("id", String(36), primary_key=True))  # FK target, exists
    arena = Table(
        "arena_battle",
        md,
        Column("id", String(128), primary_key=True),
        Column("created_at", DateTime, nullable=False),
        Column("question", Text, nullable=False),
        Column("arm_a", String(48), nullable=False),
        Column("arm_b", String(48), nullable=False),
        Column("interaction_a", String(36), ForeignKey("interaction.id"), nullable=False),
        Column("interaction_b", String(36), ForeignKey("interaction.id"), nullable=False),
        Column("winner", String(8), nullable=False),
        Column("voter", String(128), nullable=False, default=""),
    )
    md.create_all(conn, tables=[arena])


MIGRATIONS: list[tuple[str, Callable[[Connection], None]]] = [
    ("m001_initial", _m001_initial),
    ("m002_adapters_evals", _m002_adapters_evals),
    ("m003_interaction_details", _m003_interaction_details),
    ("m004_feedback_rewards", _m004_feedback_rewards),
    ("m005_arena", _m005_arena),
]


def _ensure_tracking_table(conn: Connection) -> Table:
    md = MetaData()
    t = Table(
        MIGRATIONS_TABLE,
        md,
        Column("name", String(64), primary_key=True),
        Column("applied_at", DateTime, nullable=False),
    )
    md.create_all(conn)
    return t


def applied(conn: Connection) -> list[str]:
    t = _ensure_tracking_table(conn)
    return [r[0] for r in conn.execute(t.select().order_by(t.c.name))]


def migrate(conn: Connection, upto: str | None = None) -> list[str]:
    """Apply every migration not yet applied, in order (up to and including ``upto``).

    Runs inside the caller's transaction; returns the names applied now.
    """
    t = _ensure_tracking_table(conn)
    done = set(applied(conn))
    now_applied: list[str] = []
    for name, fn in MIGRATIONS:
        if name not in done:
            log.info("applying migration %s", name)
            fn(conn)
            conn.execute(t.insert().values(name=name, applied_at=datetime.now(UTC)))
            now_applied.append(name)
        if name == upto:
            break
    return now_applied
