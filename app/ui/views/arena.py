"""Arena: one question, two arms side by side, their names hidden until you vote.

A page of the app (``armada ui``). Two enabled arms are drawn at random and shown as A and B; the
vote (A, B, tie, both bad) is stored as an ``ArenaBattle`` and the arms are revealed. Ratings are
Bradley–Terry (or Elo) over every stored battle with seeded bootstrap intervals
(``routers/arena.py``). Both answers go through the question graph with the arm pinned, so they
are recorded interactions like any other (the leaderboard counts them as pulls).
"""

from __future__ import annotations

import secrets
import uuid
from typing import TYPE_CHECKING, Any

import streamlit as st

from app.ui import render, state
from app.ui.render import escape_markdown
from core.store import ArenaBattle
from routers.arena import arena_ratings

if TYPE_CHECKING:
    from app.runtime import Armada

VOTES = {"a": "A is better", "b": "B is better", "tie": "Tie", "bad": "Both are bad"}
METHODS = {"Bradley–Terry": "bt", "Elo": "elo"}
N_BOOT = 200


def _run_side(rt: Armada, question: str, arm: str, side: str, battle: str) -> dict[str, Any]:
    """Stream one arm's answer into the current column; return what the battle needs."""
    events = rt.ask_stream(question, arm=arm, thread_id=f"arena-{battle}-{side}")
    res = render.stream_text(events, key=f"arena-stream-{side}")["result"]
    return {
        "arm": res.arm,  # the arm that answered: a failed arm's fallback is named here
        "interaction_id": res.interaction_id,
        "answer": res.answer,
        "sources": [(h.passage.title or h.passage.id, h.passage.text) for h in res.sources],
    }


def _start(rt: Armada, question: str) -> None:
    arms = rt.enabled_arms()
    pair = secrets.SystemRandom().sample(arms, 2)  # random pair, random sides
    battle = uuid.uuid4().hex[:12]
    sides = {}
    cols = st.columns(2)
    for side, arm, col in zip(("a", "b"), pair, cols, strict=True):
        with col:
            st.subheader(f"Arm {side.upper()}")
            with st.spinner("Thinking…"):
                sides[side] = _run_side(rt, question, arm, side, battle)
    st.session_state.arena = {"id": battle, "question": question, "voted": None, **sides}
    st.rerun()


@render.safe_callback
def _vote(winner: str) -> None:
    b = st.session_state.arena
    voter = state.voter()
    state.runtime().store.add_arena_battle(
        ArenaBattle(
            id=f"{voter}-{b['id']}",
            question=b["question"],
            arm_a=b["a"]["arm"],
            arm_b=b["b"]["arm"],
            interaction_a=b["a"]["interaction_id"],
            interaction_b=b["b"]["interaction_id"],
            winner=winner,
            voter=voter,
        )
    )
    b["voted"] = winner
    st.toast("Vote saved: the arms are revealed.", icon=":material/check:")


def _show_battle(b: dict[str, Any]) -> None:
    render.text(b["question"], label="Question:")
    cols = st.columns(2)
    for side, col in zip(("a", "b"), cols, strict=True):
        s = b[side]
        with col, st.container(border=True):
            name = f" · {escape_markdown(s['arm'])}" if b["voted"] else ""
            st.subheader(f"Arm {side.upper()}{name}")
            render.text(s["answer"])
            render.sources(s["sources"], chars=300)
    if b["a"]["arm"] == b["b"]["arm"]:
        st.warning("One arm failed and its fallback answered, so this pair cannot be compared.")
        return
    if b["voted"]:
        st.success(
            f"You voted **{VOTES[b['voted']]}**. A was {escape_markdown(b['a']['arm'])}, "
            f"B was {escape_markdown(b['b']['arm'])}."
        )
        return
    cols = st.columns(4)
    for (winner, label), col in zip(VOTES.items(), cols, strict=True):
        col.button(
            label, key=f"arena-vote-{winner}", on_click=_vote, args=(winner,), width="stretch"
        )


def _ratings(rt: Armada) -> None:
    st.header("Ratings")
    battles = rt.store.arena_battles()
    if not battles:
        st.info("No arena votes yet: ask a question above and vote for the better answer.")
        return
    label = st.radio("Rating", list(METHODS), horizontal=True, key="arena_method")
    ratings = arena_ratings(
        [(b.arm_a, b.arm_b, b.winner) for b in battles], method=METHODS[label], n_boot=N_BOOT
    )
    st.dataframe(
        [
            {
                "arm": r.arm,
                "rating": round(r.rating),
                "95% interval": f"{r.low:.0f} – {r.high:.0f}",
                "battles": r.battles,
                "wins": r.wins,
                "losses": r.losses,
                "ties / both bad": r.ties,
            }
            for r in ratings
        ],
        hide_index=True,
        key="arena-ratings",
    )
    st.caption(
        f"{len(battles)} battles. Intervals: {N_BOOT} bootstrap resamples of the battles (seed 0). "
        "A tie and “both bad” count half a win for each side."
    )


def page() -> None:
    rt = state.runtime()
    st.title("Arena")
    render.show_deferred_errors()
    st.caption("One question, two arms side by side. Their names stay hidden until you vote.")
    arms = rt.enabled_arms()
    if len(arms) < 2:
        st.info("The arena needs at least two enabled arms; see `armada arms`.")
    else:
        with st.form("arena-ask", clear_on_submit=False, border=False):
            question = st.text_input(
                "Question", placeholder="Ask both arms the same question", key="arena-question"
            )
            asked = st.form_submit_button("Ask two arms", type="primary", key="arena-ask-submit")
        if asked and question.strip():
            try:
                _start(rt, question)
            except Exception as e:
                render.error(e)
        elif asked:
            st.warning("Type a question first.")
    battle = st.session_state.get("arena")
    if battle:
        _show_battle(battle)
    _ratings(rt)


page()
