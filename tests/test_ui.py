"""The chat page under ``streamlit.testing``: empty state, and a real turn plus a thumbs vote."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.store import Feedback, Interaction, Store
from tests.conftest import SHARED_MODELS_DIR

CHAT = str(Path(__file__).resolve().parent.parent / "app" / "ui" / "Chat.py")


@pytest.fixture(autouse=True)
def _fresh_runtime(monkeypatch):
    import streamlit as st

    monkeypatch.setenv("ARMADA_MODELS_DIR", str(SHARED_MODELS_DIR))
    st.cache_resource.clear()
    yield
    st.cache_resource.clear()


def _rows(home: Path, table) -> list:
    st = Store(f"sqlite:///{home / 'armada.db'}")
    with st.session() as s:
        return list(s.exec(__import__("sqlmodel").select(table)))


def test_chat_page_renders_on_an_empty_database(home):
    at = AppTest.from_file(CHAT, default_timeout=60).run()
    assert not at.exception
    assert at.title[0].value == "Armada"
    assert at.chat_input[0].placeholder.startswith("Ask a question")
    assert [b.label for b in at.sidebar.button][:1] == ["New chat"]
    assert _rows(home, Interaction) == []


@pytest.mark.real_model
def test_a_chat_turn_and_a_thumbs_vote_are_stored(home):
    at = AppTest.from_file(CHAT, default_timeout=300).run()
    at.chat_input[0].set_value("What is the capital of France?").run()
    assert not at.exception, at.exception
    rows = _rows(home, Interaction)
    assert len(rows) == 1 and rows[0].answer
    assert any(rows[0].answer[:20] in md.value.replace("\\", "") for md in at.markdown)
    at.feedback[0].set_value(1).run()
    votes = _rows(home, Feedback)
    assert [(v.interaction_id, v.score) for v in votes] == [(rows[0].id, 1.0)]
