"""The store: migrations on empty and older databases, WAL, idempotent feedback, consistency."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import inspect
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel

from core.errors import InputError, StoreError
from core.store import Interaction, RouteDecision, Store
from core.store.migrations import MIGRATIONS


def _url(tmp_path):
    return f"sqlite:///{tmp_path / 'a.db'}"


def test_migrations_apply_on_empty_db_and_match_the_models(tmp_path):
    st = Store(_url(tmp_path))
    assert st.applied_migrations() == sorted(n for n, _ in MIGRATIONS)
    insp = inspect(st.read_engine)
    for table in SQLModel.metadata.sorted_tables:
        db_cols = {c["name"] for c in insp.get_columns(table.name)}
        assert db_cols == {c.name for c in table.columns}, table.name
    assert st.integrity_check() == "ok"
    assert st.migrate() == []  # idempotent


def test_migrations_upgrade_an_older_database_keeping_its_rows(tmp_path):
    old = Store(_url(tmp_path), migrate=False)
    old.migrate(upto="m001_initial")
    with old.write_engine.begin() as c:
        c.exec_driver_sql(
            "INSERT INTO interaction (id, created_at, question, arm, answer, passage_ids,"
            " cited_ids, latency_ms, prompt_tokens, completion_tokens, status, error)"
            " VALUES ('i1', '2025-01-01 00:00:00', 'q?', 'rag', 'a', '[]', '[]', '{}', 1, 2, 'ok', '')"
        )
    old.close()
    st = Store(_url(tmp_path))
    assert st.applied_migrations()[-1] == MIGRATIONS[-1][0]
    row = st.interaction("i1")
    assert row is not None and row.question == "q?" and row.details is None
    cols = {c["name"] for c in inspect(st.read_engine).get_columns("interaction")}
    assert "details" in cols


def test_sqlite_runs_in_wal_mode_with_busy_timeout(tmp_path):
    st = Store(_url(tmp_path), busy_timeout_ms=1234)
    with st.write_engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA busy_timeout").scalar() == 1234


def test_writes_take_the_lock_at_begin(tmp_path):
    """BEGIN IMMEDIATE: a second writer waits for the lock at BEGIN, not at COMMIT."""
    st = Store(_url(tmp_path), busy_timeout_ms=100)
    other = sqlite3.connect(tmp_path / "a.db", timeout=0.1, isolation_level=None)
    with st.write() as s:
        assert s.get(Interaction, "none") is None  # a read inside a write transaction…
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")


def test_interaction_and_decision_are_one_transaction(tmp_path):
    st = Store(_url(tmp_path))
    i = Interaction(question="q", arm="rag", answer="a")
    bad = RouteDecision(interaction_id="", policy="p", arm="rag", propensity=None)  # NOT NULL
    with pytest.raises(IntegrityError):
        st.record_interaction(i, bad)
    assert st.interaction(i.id) is None  # nothing half-written
    i2 = Interaction(question="q", arm="rag", answer="a")
    st.record_interaction(
        i2, RouteDecision(interaction_id="", policy="p", arm="rag", propensity=0.5)
    )
    assert st.decision_for(i2.id).propensity == 0.5


def test_feedback_is_idempotent_by_id_and_one_vote_per_voter(tmp_path):
    st = Store(_url(tmp_path))
    i = Interaction(question="q", arm="rag", answer="a")
    d = RouteDecision(
        interaction_id="", policy="p", arm="rag", propensity=1, context={"category": "bio"}
    )
    st.record_interaction(i, d)
    r = st.add_feedback("f1", i.id, 1.0, voter="v")
    assert r.created and r.seq == 1 and r.feedback.category == "bio"
    r = st.add_feedback("f1", i.id, 1.0, voter="v")
    assert not r.created and r.seq == 1
    with pytest.raises(InputError, match="already used"):
        st.add_feedback("f1", i.id, 0.0, voter="v")
    r = st.add_feedback("f2", i.id, 0.0, voter="v")  # changed vote replaces the old one
    assert r.replaced.id == "f1" and r.seq == 2
    assert [(f.id, f.score) for f in st.feedback_for(i.id)] == [("f2", 0.0)]
    st.add_feedback("f3", i.id, 1.0, voter="w")
    assert st.arm_stats() == {("rag", "bio"): (2, 1.0, 1.0)} == st.recompute_arm_stats()
    assert [(e.arm, e.context, e.reward) for e in st.feedback_events()] == [
        ("rag", {"category": "bio"}, 0.0),
        ("rag", {"category": "bio"}, 1.0),
    ]


def test_cost_aware_reward_is_stored_with_the_vote(tmp_path):
    st = Store(_url(tmp_path))
    i = Interaction(question="q", arm="rag", answer="a", latency_ms={"total": 2000.0})
    st.record_interaction(i, None)
    fn = lambda inter, score: score - 0.1 * inter.latency_ms["total"] / 1000  # noqa: E731
    r = st.add_feedback("f", i.id, 1.0, reward_fn=fn)
    assert r.feedback.reward == pytest.approx(0.8)
    assert st.arm_stats()[("rag", "*")][1] == pytest.approx(0.8)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"interaction_id": "nope"}, "unknown interaction"),
        ({"score": 1.5}, "between 0 and 1"),
        ({"score": -0.1}, "between 0 and 1"),
        ({"comment": "x" * 1_000_001}, "longer than"),
        ({"feedback_id": ""}, "feedback_id"),
        ({"score": float("nan")}, "between 0 and 1"),
        ({"score": "high"}, "must be a number"),
    ],
)
def test_bad_feedback_is_refused_and_nothing_stored(tmp_path, kwargs, match):
    st = Store(_url(tmp_path))
    i = Interaction(question="q", arm="rag", answer="a")
    st.record_interaction(i, None)
    args = {"feedback_id": "f", "interaction_id": i.id, "score": 1.0} | kwargs
    with pytest.raises(InputError, match=match):
        st.add_feedback(**args)
    assert st.feedback_for(i.id) == []


def test_a_corrupted_database_file_gets_a_clear_error(tmp_path):
    (tmp_path / "a.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open or migrate the database"):
        Store(_url(tmp_path))


def test_any_sqlalchemy_url_in_memory():
    st = Store("sqlite://")
    assert "m001_initial" in st.applied_migrations()
    i = Interaction(question="q", arm="rag", answer="a")
    st.record_interaction(i, None)
    assert st.interaction(i.id).answer == "a"
