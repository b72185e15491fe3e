"""Chat: streamed answers with the arm that answered and why, sources, thumbs, threads.

A page of the app (``armada ui``); ``app/ui/Chat.py`` runs it. Each answer shows its arm, the
policy's reason (policy, category, propensity), the agent's ``details`` (an expert gate, hops, …),
its sources, a thumbs vote and an optional comment, both stored at once. Earlier conversations come
back from LangGraph's checkpointer (``rt.thread_history``).
"""

from __future__ import annotations

import hashlib
import uuid
from typing import TYPE_CHECKING, Any

import streamlit as st

from app.ui import render, state
from app.ui.render import escape_markdown, snippet
from core.types import Passage

if TYPE_CHECKING:
    from app.runtime import Armada, AskResult

ROUTED = "Routed by the policy"
HIDDEN_DETAILS = {"peak_rss_mb"}


# -- turns: what a rendered answer needs, from a fresh result or from the store ----------------------
def _turn_from_result(rt: Armada, res: AskResult) -> dict[str, Any]:
    hits = res.hits if _reads_passages(rt, res.arm) else []
    return {
        "question": res.question,
        "answer": res.answer,
        "interaction_id": res.interaction_id,
        "arm": res.arm,
        "why": {
            "policy": res.policy,
            "propensity": res.propensity,
            "category": res.route_context.get("category"),
            "fallback_from": res.fallback_from,
            "error": res.error,
            "status": res.status,
            "ms": res.latency_ms.get("total", 0.0),
        },
        "details": res.details,
        **_sources_of([h.passage for h in res.sources], [h.passage for h in hits]),
    }


def _reads_passages(rt: Armada, arm: str) -> bool:
    """Whether the arm was given the retrieved passages (a closed-book arm was not)."""
    try:
        return rt.agent(arm).needs_retrieval
    except Exception:  # an arm no longer configured
        return False


def _sources_of(cited: list[Passage], retrieved: list[Passage]) -> dict[str, Any]:
    """The cited passages, else the retrieved ones (labelled so), as (title, text) pairs."""
    shown = cited or retrieved
    return {
        "sources": [(p.title or p.id, p.text) for p in shown],
        "sources_label": "Sources" if cited else "Retrieved passages (none cited)",
    }


def _turn_from_store(rt: Armada, turn: dict[str, Any]) -> dict[str, Any]:
    """A turn of an earlier thread: the checkpointer's text plus the stored decision and sources."""
    out = dict(turn)
    row = rt.store.interaction(turn["interaction_id"])
    decision = rt.store.decision_for(turn["interaction_id"])
    if row is None:
        return out
    ctx = decision.context if decision else {}
    out["why"] = {
        "policy": decision.policy if decision else "",
        "propensity": decision.propensity if decision else 1.0,
        "category": ctx.get("category"),
        "fallback_from": row.fallback_from,
        "error": row.error,
        "status": row.status,
        "ms": (row.latency_ms or {}).get("total", 0.0),
    }
    out["details"] = row.details or {}
    ids = row.cited_ids or (row.passage_ids if _reads_passages(rt, row.arm) else [])
    try:  # the corpus may have changed or be gone: the answer still shows
        found = rt.retriever.get(ids) if ids else []
    except Exception:
        found = [Passage(id=i, text="(passage no longer in the corpus)") for i in ids]
    out.update(_sources_of(found, []) if row.cited_ids else _sources_of([], found))
    mine = [f for f in rt.store.feedback_for(row.id) if f.voter == state.voter()]
    if mine and mine[0].score in (0.0, 1.0):  # this browser's earlier thumbs, shown again
        out["my_vote"], out["my_comment"] = int(mine[0].score), mine[0].comment
    return out


# -- rendering --------------------------------------------------------------------------------------
def _why(turn: dict[str, Any]) -> None:
    why = turn.get("why")
    if not why:
        return
    parts = [f"arm **{escape_markdown(turn['arm'])}**"]
    if why["policy"]:
        parts.append(f"policy {escape_markdown(why['policy'])}")
    if why.get("category"):
        parts.append(f"category {escape_markdown(str(why['category']))}")
    parts.append(f"p = {why['propensity']:.2f}")
    parts.append(f"{why['ms']:.0f} ms")
    st.caption(" · ".join(parts))
    if why.get("fallback_from"):
        st.warning(
            f"Arm {escape_markdown(why['fallback_from'])} failed "
            f"({escape_markdown(snippet(why.get('error') or 'no reason', 160))}); "
            f"{escape_markdown(turn['arm'])} answered instead.",
            icon=":material/sync_problem:",
        )
    shown = {k: v for k, v in (turn.get("details") or {}).items() if k not in HIDDEN_DETAILS}
    if shown:
        with st.expander("Why this answer (agent details)"):
            render.details(shown)


def _sources(turn: dict[str, Any]) -> None:
    render.sources(turn.get("sources") or [], turn.get("sources_label", "Sources"))


def _vote_id(voter: str, interaction_id: str, value: int, comment: str) -> str:
    # Same vote and comment → same id (a double click is a no-op); an edit gets a new id and
    # replaces the voter's earlier vote on this answer.
    digest = hashlib.sha1(comment.encode()).hexdigest()[:10]
    return f"{voter}-{interaction_id}-{value}-{digest}"


@render.safe_callback
def _store_vote(interaction_id: str) -> None:
    value = st.session_state.get(f"vote-{interaction_id}")
    if value is None:
        return
    comment = st.session_state.get(f"comment-{interaction_id}", "") or ""
    voter = state.voter()
    state.runtime().feedback(
        interaction_id,
        float(value),
        feedback_id=_vote_id(voter, interaction_id, int(value), comment),
        voter=voter,
        comment=comment,
    )
    st.toast("Vote saved" + (" with your comment." if comment else "."), icon=":material/check:")


def _feedback(turn: dict[str, Any]) -> None:
    interaction_id = turn["interaction_id"]
    left, right = st.columns([1, 4], vertical_alignment="center")
    with left:
        st.feedback(
            "thumbs",
            key=f"vote-{interaction_id}",
            default=turn.get("my_vote"),
            on_change=_store_vote,
            args=(interaction_id,),
        )
    with right:
        st.text_input(
            "Comment (optional)",
            value=turn.get("my_comment", ""),
            key=f"comment-{interaction_id}",
            max_chars=2000,
            placeholder="What was good or wrong? Saved with your vote.",
            label_visibility="collapsed",
            on_change=_store_vote,
            args=(interaction_id,),
        )


def _show_turn(turn: dict[str, Any]) -> None:
    with st.chat_message("user"):
        render.text(turn["question"])
    with st.chat_message("assistant"):
        render.text(turn["answer"])
        _why(turn)
        _sources(turn)
        if turn.get("interaction_id"):
            _feedback(turn)


# -- threads ----------------------------------------------------------------------------------------
def _new_thread() -> None:
    st.session_state.thread_id = str(uuid.uuid4())
    st.session_state.turns = []


@render.safe_callback
def _open_thread(thread_id: str) -> None:
    rt = state.runtime()
    st.session_state.thread_id = thread_id
    st.session_state.turns = [_turn_from_store(rt, t) for t in rt.thread_history(thread_id)]


def _sidebar(rt: Armada) -> str | None:
    with st.sidebar:
        st.button("New chat", on_click=_new_thread, icon=":material/add:", width="stretch")
        st.caption("Earlier chats")
        seen: dict[str, str] = {}
        for i in rt.store.recent_interactions(300):
            # Arena answers have threads of their own (``arena-…``): not conversations.
            if i.thread_id and not i.thread_id.startswith("arena-") and i.thread_id not in seen:
                seen[i.thread_id] = i.question
        for tid, question in list(seen.items())[:15]:
            current = tid == st.session_state.thread_id
            # A button label is rendered as markdown: escape the user's text.
            st.button(
                escape_markdown(snippet(question, 38)),
                key=f"thread-{tid}",
                on_click=_open_thread,
                args=(tid,),
                type="secondary" if current else "tertiary",
                width="stretch",
            )
        st.divider()
        choice = st.selectbox(
            "Arm",
            [ROUTED, *rt.enabled_arms()],
            key="arm_override",
            help="Power users: pin an arm instead of letting the policy choose.",
        )
    return None if choice == ROUTED else choice


# -- asking -----------------------------------------------------------------------------------------
def _ask(rt: Armada, question: str, arm: str | None) -> None:
    with st.chat_message("user"):
        render.text(question)
    with st.chat_message("assistant"):
        try:
            with st.spinner("Thinking…"):
                events = rt.ask_stream(question, arm=arm, thread_id=st.session_state.thread_id)
                turn = len(st.session_state.turns)  # a fresh key per turn: benchmarks wait on it
                end = render.stream_text(events, key=f"answer-stream-{turn}")
        except Exception as e:
            render.error(e)
            return
    res = end.get("result")
    if res is not None:
        st.session_state.turns.append(_turn_from_result(rt, res))
        st.rerun()


def page() -> None:
    if "thread_id" not in st.session_state:
        _new_thread()
    st.title("Armada")
    # The input is pinned to the bottom wherever it is called; drawn before the runtime opens
    # (~1.5 s in a fresh process), the page can be typed into at once.
    question = st.chat_input("Ask a question about your documents")
    rt = state.runtime()
    arm = _sidebar(rt)
    render.show_deferred_errors()
    if not st.session_state.turns:
        st.caption(
            "Ask a question about your documents. Each answer says which arm answered and why, "
            "with its sources; your thumbs teach the router."
        )
    for turn in st.session_state.turns:
        _show_turn(turn)
    if question:
        _ask(rt, question, arm)


page()
