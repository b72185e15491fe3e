"""Armada chat page: streamed answers with their arm and sources, thumbs, conversation threads.

Run with ``armada ui`` (or ``make run``). The runtime is built once per process and shared across
sessions; torch and the models load on the first question, not at start.
"""

from __future__ import annotations

import uuid

import streamlit as st

from app.runtime import Armada, AskResult
from app.ui.render import escape_markdown, snippet
from core.errors import ArmadaError

st.set_page_config(page_title="Armada · Chat", page_icon="⚓", layout="wide")


@st.cache_resource(show_spinner=False)
def runtime() -> Armada:
    return Armada()


def _new_thread() -> None:
    st.session_state.thread_id = str(uuid.uuid4())
    st.session_state.turns = []


def _load_thread(thread_id: str) -> None:
    st.session_state.thread_id = thread_id
    rows = [i for i in rt.store.recent_interactions(500) if i.thread_id == thread_id]
    st.session_state.turns = [
        {"question": i.question, "answer": i.answer, "interaction_id": i.id, "arm": i.arm}
        for i in sorted(rows, key=lambda i: i.created_at)
    ]


def _store_vote(interaction_id: str, key: str) -> None:
    value = st.session_state.get(key)
    if value is None:
        return
    comment = st.session_state.get(f"comment-{interaction_id}", "")
    try:
        # One vote per browser session and interaction: a changed vote keeps its id.
        rt.feedback(
            interaction_id,
            float(value),
            feedback_id=f"ui-{st.session_state.voter}-{interaction_id}-{value}",
            voter=st.session_state.voter,
            comment=comment,
        )
        st.toast("Thanks, your vote was saved.")
    except ArmadaError as e:
        st.error(f"Could not save the vote: {e}")


def _show_meta(res: AskResult) -> None:
    why = f"arm **{escape_markdown(res.arm)}** · policy {escape_markdown(res.policy)}"
    why += f" · p={res.propensity:.2f}"
    if res.route_context.get("category"):
        why += f" · category {escape_markdown(str(res.route_context['category']))}"
    if res.fallback_from:
        why += f" · fell back from {escape_markdown(res.fallback_from)}"
    st.caption(why + f" · {res.latency_ms.get('total', 0):.0f} ms")
    if res.sources:
        with st.expander(f"Sources ({len(res.sources)})"):
            for i, h in enumerate(res.sources, 1):
                st.markdown(f"**[{i}] {escape_markdown(h.passage.title or h.passage.id)}**")
                st.text(snippet(h.passage.text))


def _feedback(interaction_id: str) -> None:
    key = f"vote-{interaction_id}"
    st.feedback("thumbs", key=key, on_change=_store_vote, args=(interaction_id, key))
    st.text_input("Comment (optional)", key=f"comment-{interaction_id}", max_chars=2000)


rt = runtime()
st.session_state.setdefault("voter", str(uuid.uuid4())[:8])
if "thread_id" not in st.session_state:
    _new_thread()

with st.sidebar:
    st.header("Conversations")
    st.button("New chat", on_click=_new_thread, use_container_width=True)
    threads: dict[str, str] = {}
    for i in rt.store.recent_interactions(200):
        if i.thread_id and i.thread_id not in threads:
            threads[i.thread_id] = i.question
    for tid, q in list(threads.items())[:15]:
        st.button(snippet(q, 40), key=f"thread-{tid}", on_click=_load_thread, args=(tid,))
    st.divider()
    arms = rt.enabled_arms()
    override = st.selectbox("Arm", ["(routed)", *arms], help="Pin an arm instead of routing")

st.title("Armada")
for turn in st.session_state.turns:
    with st.chat_message("user"):
        st.text(turn["question"])
    with st.chat_message("assistant"):
        st.markdown(escape_markdown(turn["answer"]))
        if "result" in turn:
            _show_meta(turn["result"])
        _feedback(turn["interaction_id"])

question = st.chat_input("Ask a question about your documents")
if question:
    with st.chat_message("user"):
        st.text(question)
    with st.chat_message("assistant"):
        holder: dict[str, AskResult] = {}

        def tokens():
            arm = None if override == "(routed)" else override
            for ev in rt.ask_stream(question, arm=arm, thread_id=st.session_state.thread_id):
                if "token" in ev:
                    yield escape_markdown(ev["token"])
                elif "result" in ev:
                    holder["result"] = ev["result"]

        try:
            with st.spinner("Thinking…"):
                st.write_stream(tokens())
        except ArmadaError as e:
            st.error(str(e))
        except Exception as e:  # never a traceback in the page
            st.error(f"Something went wrong: {type(e).__name__}: {e}")
        res = holder.get("result")
        if res is not None:
            turn = {
                "question": res.question,
                "answer": res.answer,
                "interaction_id": res.interaction_id,
                "arm": res.arm,
                "result": res,
            }
            st.session_state.turns.append(turn)
            st.rerun()
