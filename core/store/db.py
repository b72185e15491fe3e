"""The database: engines, sessions and the few writes every layer needs.

SQLite gets WAL mode, a busy timeout and ``BEGIN IMMEDIATE`` for writes, so concurrent writers
queue for the lock instead of failing half-way with "database is locked" on commit. Reads use a
second engine with deferred transactions, so they never wait for the write lock. Any other
SQLAlchemy URL works with the dialect's defaults.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, select

from core.errors import InputError, StoreError
from core.store import migrations
from core.store.feedback import FeedbackMixin
from core.store.tables import ArenaBattle, Arm, Interaction, RouteDecision, utcnow

log = logging.getLogger(__name__)


def _sqlite_engine(url: str, busy_timeout_ms: int, immediate: bool) -> Engine:
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, emit BEGIN, so we choose its kind below.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class Store(FeedbackMixin):
    """Open (and migrate) the database at ``url``."""

    def __init__(self, url: str, busy_timeout_ms: int = 10_000, migrate: bool = True) -> None:
        self.url = url
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        in_memory = self.is_sqlite and parsed.database in (None, "", ":memory:")
        if in_memory:  # one connection, or each engine would see its own empty database
            self.write_engine = self.read_engine = create_engine(
                url, connect_args={"check_same_thread": False}, poolclass=StaticPool
            )
        elif self.is_sqlite:
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self.write_engine = _sqlite_engine(url, busy_timeout_ms, immediate=True)
            self.read_engine = _sqlite_engine(url, busy_timeout_ms, immediate=False)
        else:
            self.write_engine = self.read_engine = create_engine(url, pool_pre_ping=True)
        if migrate:
            self.migrate()

    # -- lifecycle -------------------------------------------------------------------------------
    def migrate(self, upto: str | None = None) -> list[str]:
        try:
            with self.write_engine.begin() as conn:
                return migrations.migrate(conn, upto=upto)
        except Exception as e:  # a corrupt file or a foreign schema: say which database
            raise StoreError(f"cannot open or migrate the database at {self.url}: {e}") from e

    def applied_migrations(self) -> list[str]:
        with self.read_engine.begin() as conn:
            return migrations.applied(conn)

    def integrity_check(self) -> str:
        if not self.is_sqlite:
            return "ok"
        with self.read_engine.connect() as conn:
            return str(conn.execute(text("PRAGMA integrity_check")).scalar())

    def close(self) -> None:
        self.write_engine.dispose()
        self.read_engine.dispose()

    # -- sessions --------------------------------------------------------------------------------
    def session(self) -> Session:
        """A read session (deferred transaction)."""
        return Session(self.read_engine, expire_on_commit=False)

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction: ``BEGIN IMMEDIATE`` on SQLite; commits on success, else rolls back."""
        with Session(self.write_engine, expire_on_commit=False) as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    # -- arms -------------------------------------------------------------------------------------
    def sync_arms(self, arms: list[dict[str, Any]]) -> None:
        """Insert configured arms that are new; refresh the config of known ones.

        ``enabled``/``status`` set at run time (e.g. a broken adapter) are kept.
        """
        with self.write() as s:
            for a in arms:
                row = s.get(Arm, a["name"])
                if row is None:
                    s.add(Arm(name=a["name"], agent=a["agent"], config=a, enabled=a["enabled"]))
                else:
                    row.agent, row.config, row.updated_at = a["agent"], a, utcnow()
                    s.add(row)

    def set_arm_status(self, name: str, status: str, reason: str = "") -> None:
        with self.write() as s:
            row = s.get(Arm, name)
            if row is None:
                raise InputError(f"unknown arm {name!r}")
            row.status, row.reason, row.updated_at = status, reason, utcnow()
            row.enabled = status == "ok"
            s.add(row)

    def arms(self) -> list[Arm]:
        with self.session() as s:
            return list(s.exec(select(Arm).order_by(Arm.name)))

    # -- interactions -----------------------------------------------------------------------------
    def record_interaction(self, interaction: Interaction, decision: RouteDecision | None) -> str:
        """Store an interaction and its routing decision in one transaction."""
        with self.write() as s:
            s.add(interaction)
            s.flush()
            if decision is not None:
                decision.interaction_id = interaction.id
                s.add(decision)
        return interaction.id

    def interaction(self, interaction_id: str) -> Interaction | None:
        with self.session() as s:
            return s.get(Interaction, interaction_id)

    def decision_for(self, interaction_id: str) -> RouteDecision | None:
        with self.session() as s:
            q = select(RouteDecision).where(RouteDecision.interaction_id == interaction_id)
            return s.exec(q).first()

    def decision_context(self, interaction_id: str) -> dict[str, Any]:
        d = self.decision_for(interaction_id)
        return dict(d.context) if d else {}

    def recent_interactions(self, limit: int = 50) -> list[Interaction]:
        with self.session() as s:
            q = select(Interaction).order_by(Interaction.created_at.desc()).limit(limit)
            return list(s.exec(q))

    # -- arena -----------------------------------------------------------------------------------
    def add_arena_battle(self, battle: ArenaBattle) -> ArenaBattle:
        """Store an arena vote; the same id twice is a no-op (a double-clicked vote)."""
        if battle.winner not in ("a", "b", "tie", "bad"):
            raise InputError(f"winner must be a, b, tie or bad, got {battle.winner!r}")
        if battle.arm_a == battle.arm_b:
            raise InputError("an arena battle needs two different arms")
        with self.write() as s:
            old = s.get(ArenaBattle, battle.id)
            if old is not None:
                return old
            for iid in (battle.interaction_a, battle.interaction_b):
                if s.get(Interaction, iid) is None:
                    raise InputError(f"unknown interaction {iid!r}")
            s.add(battle)
        return battle

    def arena_battles(self) -> list[ArenaBattle]:
        with self.session() as s:
            return list(s.exec(select(ArenaBattle).order_by(ArenaBattle.created_at)))
