"""The question graph: its shape, fallback on failure or timeout, threads, streaming, bad input."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlmodel import func, select

from app.graph import FAILED_ANSWER
from app.runtime import Armada
from core.config import ArmConfig, RouterConfig, Settings
from core.errors import InputError
from core.store import Interaction
from tests.plugins_fixture import TestAgents

SNAPSHOT = Path(__file__).parent / "snapshots" / "graph.mmd"


def _rt(
    settings: Settings, arm: str = "echo", fallback: str = "echo", timeout: float = 30
) -> Armada:
    s = settings.model_copy(
        update={
            "arms": [
                ArmConfig(name="echo", agent="echo"),
                ArmConfig(name="boom", agent="boom"),
                ArmConfig(name="slow", agent="slow"),
            ],
            "router": RouterConfig(
                policy="fixed", arm=arm, fallback_arm=fallback, arm_timeout_s=timeout
            ),
        }
    )
    return Armada(s, extra_plugins=[TestAgents()])


def _count(rt: Armada) -> int:
    with rt.store.session() as s:
        return s.exec(select(func.count()).select_from(Interaction)).one()


def test_graph_shape_is_pinned(settings):
    rt = _rt(settings)
    mermaid = rt.graph.get_graph().draw_mermaid()
    if os.environ.get("ARMADA_UPDATE_SNAPSHOTS"):  # after an intended change to the graph
        SNAPSHOT.write_text(mermaid)
    assert mermaid == SNAPSHOT.read_text(), "graph shape changed; see tests/snapshots/graph.mmd"
    for edge in ("retrieve --> route", "route --> generate", "fallback --> record"):
        assert edge in mermaid


def test_answer_is_streamed_and_recorded(settings):
    rt = _rt(settings)
    events = list(rt.ask_stream("What is up?"))
    tokens = "".join(e["token"] for e in events if "token" in e)
    res = events[-1]["result"]
    assert tokens.strip() == res.answer == "echo: What is up?"
    row = rt.store.interaction(res.interaction_id)
    assert row.arm == "echo" and row.status == "ok" and row.thread_id == res.thread_id
    assert set(row.latency_ms) >= {"retrieve", "route", "generate", "total"}
    assert (row.prompt_tokens, row.completion_tokens) == (3, 4)
    d = rt.store.decision_for(res.interaction_id)
    assert (d.policy, d.arm, d.propensity) == ("fixed", "echo", 1.0)


def test_failing_arm_falls_back_and_the_failure_is_recorded(settings):
    rt = _rt(settings, arm="boom", fallback="echo")
    events = list(rt.ask_stream("Who?"))
    assert {"reset": "boom"} in events
    res = events[-1]["result"]
    assert (res.arm, res.status, res.fallback_from) == ("echo", "fallback", "boom")
    assert res.answer == "echo: Who?"
    row = rt.store.interaction(res.interaction_id)
    assert row.status == "fallback" and "adapter exploded" in row.error
    assert rt.store.decision_for(res.interaction_id).arm == "boom"  # what the policy chose


def test_arm_timeout_cancels_and_falls_back(settings):
    rt = _rt(settings, arm="slow", fallback="echo", timeout=0.2)
    res = rt.ask("Anyone?")
    assert res.fallback_from == "slow" and res.arm == "echo"
    assert "TimeoutError" in res.error


def test_when_every_arm_fails_the_user_still_gets_an_answer(settings):
    rt = _rt(settings, arm="boom", fallback="boom")
    s = rt.settings.model_copy(
        update={"arms": [ArmConfig(name="boom", agent="boom")], "router": rt.settings.router}
    )
    rt = Armada(s, extra_plugins=[TestAgents()])
    res = rt.ask("Q?")
    assert res.status == "error" and res.answer == FAILED_ANSWER
    assert rt.store.interaction(res.interaction_id).status == "error"


def test_threads_keep_their_turns(settings):
    rt = _rt(settings)
    a = rt.ask("first?")
    b = rt.ask("second?", thread_id=a.thread_id)
    c = rt.ask("other thread?")
    assert [t["question"] for t in rt.thread_history(a.thread_id)] == ["first?", "second?"]
    assert [t["question"] for t in rt.thread_history(c.thread_id)] == ["other thread?"]
    assert b.fallback_from is None  # per-turn fields were reset


def test_pinned_arm_overrides_the_policy(settings):
    rt = _rt(settings, arm="boom")
    res = rt.ask("Q?", arm="echo")
    assert (res.arm, res.policy) == ("echo", "override")
    with pytest.raises(InputError, match="unknown arm 'nosuch'"):
        rt.ask("Q?", arm="nosuch")
    rt.store.set_arm_status("boom", "disabled", "bad adapter checksum")
    with pytest.raises(InputError, match="disabled: bad adapter checksum"):
        rt.ask("Q?", arm="boom")


@pytest.mark.parametrize(
    ("question", "match"),
    [
        ("", "empty"),
        ("   \n\t ", "empty"),
        ("x" * 1_000_000, "limit is"),
        ("who\x00are you", "NUL"),
        ("bad \ud800 surrogate", "surrogate"),
        (b"bytes", "not bytes"),
    ],
)
def test_bad_questions_get_a_clear_error_and_store_nothing(settings, question, match):
    rt = _rt(settings)
    before = _count(rt)
    with pytest.raises(InputError, match=match):
        rt.ask(question)
    assert _count(rt) == before
    assert rt.store.integrity_check() == "ok"
