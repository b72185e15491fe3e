"""The chat page under ``streamlit.testing``: turns, votes, threads, override, errors, safety.

AppTest runs the real entry script (``app/ui/Chat.py`` with ``st.navigation``) in this process, so
``app.ui.state.provide_runtime`` serves an ``Armada`` over the cheap test agents to the pages. One
test uses the real default model (``real_model``); one starts the entry in a fresh interpreter and
checks that torch was not imported.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sqlmodel
from streamlit.testing.v1 import AppTest

from agents.base import Agent, AgentContext, Answer
from agents.hookspecs import hookimpl
from app.runtime import Armada
from app.ui import state
from app.ui.render import escape_markdown
from core.config import ArmConfig
from core.store import Feedback, Interaction, RouteDecision, Store
from core.types import Hit
from tests.conftest import SHARED_MODELS_DIR
from tests.plugins_fixture import TestAgents
from tests.ui_seed import PAYLOAD_TEXT, PAYLOAD_TITLE, fast_runtime, fast_settings, write_corpus

ROOT = Path(__file__).resolve().parent.parent
ENTRY = str(ROOT / "app" / "ui" / "Chat.py")


@pytest.fixture(autouse=True)
def _fresh_ui(monkeypatch):
    import streamlit as st

    monkeypatch.setenv("ARMADA_MODELS_DIR", str(SHARED_MODELS_DIR))
    st.cache_resource.clear()
    yield
    state.provide_runtime(None)
    st.cache_resource.clear()


def _rows(home: Path, table) -> list:  # noqa: ANN001
    store = Store(f"sqlite:///{home / 'armada.db'}")
    try:
        with store.session() as s:
            return list(s.exec(sqlmodel.select(table)))
    finally:
        store.close()


def _texts(at: AppTest) -> str:
    """Everything the page wrote as text, markdown or captions, escaping backslashes removed."""
    parts = (
        [t.value for t in at.text] + [m.value for m in at.markdown] + [c.value for c in at.caption]
    )
    return "\n".join(parts).replace("\\", "")


def _app(rt: Armada | None = None, timeout: float = 60) -> AppTest:
    if rt is not None:
        state.provide_runtime(rt)
    return AppTest.from_file(ENTRY, default_timeout=timeout).run()


def test_chat_page_renders_on_an_empty_database(home):
    at = _app(fast_runtime(home))
    assert not at.exception and not at.error
    assert at.title[0].value == "Armada"
    assert at.chat_input[0].placeholder.startswith("Ask a question")
    assert at.sidebar.button[0].label == "New chat"
    assert at.sidebar.selectbox(key="arm_override").options == [
        "Routed by the policy",
        "echo",
        "loud",
    ]
    assert _rows(home, Interaction) == []


def test_the_app_starts_without_importing_torch(home):
    # A fresh interpreter: the entry page with the real default settings and an empty database.
    code = textwrap.dedent(
        f"""
        import sys
        from streamlit.testing.v1 import AppTest
        at = AppTest.from_file({ENTRY!r}, default_timeout=60).run()
        assert not at.exception, at.exception
        assert at.chat_input, "the chat input is missing"
        heavy = [m for m in ("torch", "transformers", "sentence_transformers", "peft") if m in sys.modules]
        print("HEAVY", heavy)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "HEAVY []" in out.stdout, out.stdout


def test_a_chat_turn_and_a_thumbs_vote_change_the_database_and_the_leaderboard(home):
    at = _app(fast_runtime(home))
    at.chat_input[0].set_value("What is up?").run()
    assert not at.exception and not at.error
    [row] = _rows(home, Interaction)
    assert row.answer.lower() == "echo: what is up?"
    shown = _texts(at)
    assert row.answer in shown
    assert (
        f"arm **{row.arm}**" in shown and "policy thompson" in shown and "category general" in shown
    )
    assert "p = " in shown

    at.switch_page("views/leaderboard.py").run()
    before = at.dataframe[0].value.set_index("arm")
    assert before.loc[row.arm, "pulls"] == 1 and before.loc[row.arm, "votes"] == 0

    at.switch_page("views/chat.py").run()
    at.feedback[0].set_value(1).run()
    assert not at.exception and not at.error
    [vote] = _rows(home, Feedback)
    assert (vote.interaction_id, vote.score, vote.comment) == (row.id, 1.0, "")
    assert at.toast[0].value.startswith("Vote saved")

    # A comment typed after the vote replaces the vote (same voter), keeping one vote per answer.
    at.text_input(key=f"comment-{row.id}").set_value("short and right").run()
    [vote] = _rows(home, Feedback)
    assert (vote.score, vote.comment) == (1.0, "short and right")

    at.switch_page("views/leaderboard.py").run()
    after = at.dataframe[0].value.set_index("arm")
    assert after.loc[row.arm, "votes"] == 1 and after.loc[row.arm, "mean reward"] == "1.000"
    assert not at.exception


def test_the_arm_override_pins_an_arm(home):
    at = _app(fast_runtime(home))
    at.sidebar.selectbox(key="arm_override").set_value("loud").run()
    at.chat_input[0].set_value("Who decides?").run()
    [row] = _rows(home, Interaction)
    [decision] = _rows(home, RouteDecision)
    assert row.arm == "loud" and (decision.policy, decision.propensity) == ("override", 1.0)
    assert "ECHO: WHO DECIDES?" in _texts(at)


def test_a_failing_arm_falls_back_and_errors_are_readable_messages(home):
    at = _app(fast_runtime(home, arms=("echo", "boom")))
    at.sidebar.selectbox(key="arm_override").set_value("boom").run()
    at.chat_input[0].set_value("Will it blow?").run()
    assert not at.exception
    assert "Arm boom failed" in at.warning[0].value.replace("\\", "")
    assert "echo: Will it blow?" in _texts(at)

    at.chat_input[0].set_value("x" * 5000).run()  # longer than limits.max_question_chars
    assert not at.exception
    assert "the limit is 4,000" in at.error[0].value.replace("\\", "")


def test_a_broken_configuration_is_a_message_not_a_traceback(home, monkeypatch):
    monkeypatch.setenv("ARMADA_CONFIG", str(home / "missing.toml"))
    at = _app(None)
    assert not at.exception
    assert "missing.toml" in at.error[0].value.replace("\\", "")


def test_earlier_threads_come_back_from_the_checkpointer(home):
    at = _app(fast_runtime(home))
    at.chat_input[0].set_value("First question?").run()
    at.chat_input[0].set_value("Second question?").run()
    at.feedback[1].set_value(0).run()  # thumbs down on the second answer
    thread = at.session_state.thread_id
    at.sidebar.button[0].click().run()  # New chat
    assert at.session_state.turns == [] and at.session_state.thread_id != thread
    at.sidebar.button(key=f"thread-{thread}").click().run()
    assert not at.exception and not at.error
    assert [t["question"] for t in at.session_state.turns] == [
        "First question?",
        "Second question?",
    ]
    shown = _texts(at)
    assert "echo: Second question?".lower() in shown.lower() and "policy thompson" in shown
    assert [f.value for f in at.feedback] == [None, 0]  # this browser's vote comes back


class GateAgent(Agent):
    """Reports an expert gate and hops, as the multi-LoRA and multi-hop arms will."""

    name = "gate"
    needs_model = False

    def answer(self, question: str, passages: list[Hit], ctx: AgentContext) -> Answer:
        details = {
            "expert_gate": {"hotpotqa": 0.7, "pubmedqa": 0.3},
            "hops": [
                {"query": "<script>x</script>", "passages": 2},
                {"query": "q2", "passages": 1},
            ],
            "note": "<img src=x onerror=alert(1)>",
            "trace": {"retrieved": 3, "by": ["bm25"]},
        }
        return Answer(text="gated", details=details)


class GatePlugin:
    @hookimpl
    def register_agents(self, register):  # noqa: ANN001, ANN201
        register(GateAgent)


def test_agent_details_are_shown_generically(home):
    s = fast_settings(home).model_copy(update={"arms": [ArmConfig(name="gate", agent="gate")]})
    s.router.fallback_arm = "gate"
    at = _app(Armada(s, extra_plugins=[TestAgents(), GatePlugin()]))
    at.chat_input[0].set_value("Which expert?").run()
    assert not at.exception and not at.error
    assert at.expander[0].label == "Why this answer (agent details)"
    kinds = [type(e).__name__ for e in at.expander[0]]
    assert {"Markdown", "Dataframe", "Json"} <= set(kinds)
    charts = [e.type for e in at.expander[0] if type(e).__name__ == "UnknownElement"]
    assert charts == ["vega_lite_chart"]  # the gate's weights as bars
    hops = at.dataframe[0].value
    assert list(hops["query"]) == ["<script>x</script>", "q2"]  # a table cell is plain text
    assert "note: <img src=x onerror=alert(1)>" in [t.value for t in at.expander[0].text]


def test_html_in_documents_and_answers_is_shown_as_text(home):
    from core.retrieval import ingest_paths

    settings = fast_settings(home)
    ingest_paths(settings, [write_corpus(home / "docs")])
    at = _app(fast_runtime(home))
    at.chat_input[0].set_value("What does the Zanzibar archipelago grow?").run()
    assert not at.exception and not at.error
    # Document text is shown as plain text (st.text: no markdown or HTML parsing at all) …
    texts = [t.value for t in at.text]
    assert any(PAYLOAD_TEXT[:200] in t for t in texts)
    assert "[1] " + PAYLOAD_TITLE in texts
    # … and whatever went through markdown (our labels) kept no tag, link or image unescaped.
    for v in [m.value for m in at.markdown] + [c.value for c in at.caption]:
        assert not re.search(r"(?<!\\)<", v), v
        assert "](javascript" not in v and "![" not in v and "://" not in v


def test_escape_markdown_leaves_nothing_to_render():
    raw = "<script>x</script> ![i](http://h/i.png) [l](javascript:x) :red[y] $z$ **b**"
    escaped = escape_markdown(raw)
    assert escaped.replace("\\", "") == raw
    assert not re.search(r"(?<!\\)[<>\[\]()!*:$]", escaped)


@pytest.mark.real_model
def test_a_real_model_turn_and_a_thumbs_vote_are_stored(home, monkeypatch):
    monkeypatch.setenv("ARMADA_ROUTER__POLICY", "fixed")  # the rag arm, whatever the default
    at = _app(None, timeout=300)  # the real default runtime: SmolLM2 through the rag arm
    at.chat_input[0].set_value("What is the capital of France?").run()
    assert not at.exception, at.exception
    [row] = _rows(home, Interaction)
    assert row.answer and row.arm == "rag"
    assert row.answer[:20] in _texts(at)
    at.feedback[0].set_value(1).run()
    votes = _rows(home, Feedback)
    assert [(v.interaction_id, v.score) for v in votes] == [(row.id, 1.0)]
