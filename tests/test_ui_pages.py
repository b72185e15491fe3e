"""Every page under ``streamlit.testing``, empty and seeded; the arena vote; adapter promotion;
and the pure parts behind the pages (rating math in ``routers/arena.py``, ``app/ui/metrics.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sqlmodel
from streamlit.testing.v1 import AppTest

from app.ui import state
from app.ui.metrics import (
    beta_pdf,
    eval_arm_rows,
    pareto_front,
    posteriors_from_stats,
    quality_keys,
    reward_over_time,
)
from core.store import Adapter, ArenaBattle
from routers.arena import arena_ratings, bradley_terry, elo
from tests.conftest import SHARED_MODELS_DIR
from tests.ui_seed import PAYLOAD_TEXT, fast_runtime, seed_activity, seed_evals_and_adapters

ENTRY = str(Path(__file__).resolve().parent.parent / "app" / "ui" / "Chat.py")
PAGES = {
    "views/chat.py": "Armada",
    "views/arena.py": "Arena",
    "views/leaderboard.py": "Leaderboard",
    "views/evaluations.py": "Evaluations",
    "views/adapters.py": "Adapters & training",
}


@pytest.fixture(autouse=True)
def _fresh_ui(monkeypatch):
    import streamlit as st

    monkeypatch.setenv("ARMADA_MODELS_DIR", str(SHARED_MODELS_DIR))
    st.cache_resource.clear()
    yield
    state.provide_runtime(None)
    st.cache_resource.clear()


def _open(page: str) -> AppTest:
    at = AppTest.from_file(ENTRY, default_timeout=60).run()
    if page != "views/chat.py":
        at.switch_page(page).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert at.title[0].value == PAGES[page]
    return at


def _infos(at: AppTest) -> str:
    return " ".join(i.value for i in at.info)


@pytest.mark.parametrize("page", PAGES)
def test_each_page_renders_on_an_empty_database(home, page):
    state.provide_runtime(fast_runtime(home))
    at = _open(page)
    if page == "views/evaluations.py":
        assert "armada eval" in _infos(at)
    elif page == "views/adapters.py":
        assert "No adapters registered yet" in _infos(at)
    elif page == "views/leaderboard.py":
        assert "No answers yet" in _infos(at)
        assert list(at.dataframe[0].value["pulls"]) == [0, 0]
    elif page == "views/arena.py":
        assert "No arena votes yet" in _infos(at)


@pytest.mark.parametrize("page", PAGES)
def test_each_page_renders_with_seeded_data(home, page):
    rt = fast_runtime(home)
    seed_activity(rt)
    seed_evals_and_adapters(rt.store, home)
    state.provide_runtime(rt)
    at = _open(page)
    assert not at.info or page == "views/chat.py"
    if page == "views/chat.py":
        labels = [b.label for b in at.sidebar.button]
        assert labels[0] == "New chat" and len(labels) == 1 + 3  # three seeded threads
    elif page == "views/leaderboard.py":
        arms = at.dataframe[0].value.set_index("arm")
        assert arms.loc["echo", "arena rating"] != "–" and arms["pulls"].sum() == 12
        assert arms["votes"].sum() == 8
        cats = at.dataframe[1].value
        assert set(cats["category"]) == {"general"}
        assert at.selectbox(key="posterior-category").options == ["general"]
    elif page == "views/evaluations.py":
        arms = at.dataframe[0].value.set_index("arm")
        assert arms.loc["raft", "f1"] == 0.7 and "ci95" not in arms.index
        captions = [c.value for c in at.caption]
        assert "Pareto frontier (dashed): loud, echo, raft" in captions
        texts = [t.value for t in at.text]
        assert PAYLOAD_TEXT in texts and "Judge: off topic" in texts  # plain text, not markdown
    elif page == "views/adapters.py":
        table = at.dataframe[0].value
        assert list(table["checksum"]) == ["no checksum", f"recorded {'02' * 6}…", "folder missing"]
        assert at.dataframe[1].value["decision"][0] == "promoted"
    elif page == "views/arena.py":
        ratings = at.dataframe[0].value.set_index("arm")
        assert ratings.loc["echo", "rating"] > ratings.loc["loud", "rating"]


def test_an_arena_vote_changes_the_ratings(home):
    rt = fast_runtime(home)
    state.provide_runtime(rt)
    at = _open("views/arena.py")
    at.text_input(key="arena-question").set_value("Which is better?")
    at.button(key="arena-ask-submit").click().run()
    assert not at.exception and not at.error
    battle = at.session_state.arena
    assert {battle["a"]["arm"], battle["b"]["arm"]} == {"echo", "loud"}
    assert not any(m.value.endswith(("echo", "loud")) for m in at.subheader)  # names hidden
    at.button(key="arena-vote-a").click().run()
    assert not at.exception and not at.error
    [stored] = rt.store.arena_battles()
    assert (stored.winner, stored.arm_a) == ("a", battle["a"]["arm"])
    assert any(battle["a"]["arm"] in s.value for s in at.subheader)  # revealed after the vote
    first = at.dataframe[0].value.set_index("arm")["rating"]
    assert first[battle["a"]["arm"]] > 1000 > first[battle["b"]["arm"]]

    # Two more votes for B's arm turn the ratings around.
    for n in range(2):
        at.text_input(key="arena-question").set_value(f"Again {n}?")
        at.button(key="arena-ask-submit").click().run()
        b = at.session_state.arena
        winner = "a" if b["a"]["arm"] == battle["b"]["arm"] else "b"
        at.button(key=f"arena-vote-{winner}").click().run()
    assert len(rt.store.arena_battles()) == 3
    after = at.dataframe[0].value.set_index("arm")["rating"]
    assert after[battle["b"]["arm"]] > after[battle["a"]["arm"]]
    at.radio(key="arena_method").set_value("Elo").run()
    assert not at.exception and len(at.dataframe[0].value) == 2


def test_promote_and_roll_back_ask_for_confirmation(home):
    rt = fast_runtime(home)
    seed_evals_and_adapters(rt.store, home)
    state.provide_runtime(rt)
    at = _open("views/adapters.py")

    def statuses() -> dict[int, str]:
        with rt.store.session() as s:
            return {a.version: a.status for a in s.exec(sqlmodel.select(Adapter))}

    at.selectbox(key="adapter-v").set_value(3).run()
    at.button(key="adapter-promote").click().run()
    assert statuses()[3] == "registered"  # nothing changes before the confirmation
    at.button(key="adapter-cancel").click().run()
    assert "adapter_pending" not in at.session_state
    at.button(key="adapter-promote").click().run()
    at.button(key="adapter-confirm").click().run()
    assert not at.exception and not at.error
    assert statuses() == {1: "retired", 2: "retired", 3: "promoted"}
    at.button(key="adapter-rollback").click().run()
    at.button(key="adapter-confirm").click().run()
    assert statuses() == {1: "retired", 2: "promoted", 3: "rolled_back"}


def test_the_posterior_chart_uses_arm_statistics_under_another_policy(home):
    rt = fast_runtime(home, policy="uniform")
    seed_activity(rt, turns=4)
    state.provide_runtime(rt)
    at = _open("views/leaderboard.py")
    assert at.selectbox(key="posterior-category").options == ["all categories", "general"]
    assert any("Beta(1 + Σreward" in c.value for c in at.caption)


# -- the pure parts ------------------------------------------------------------------------------
def test_bradley_terry_orders_arms_by_wins_and_is_symmetric():
    battles = [("a", "b", "a")] * 6 + [("a", "b", "b")] * 2 + [("b", "c", "a")] * 3
    r = bradley_terry(battles)
    assert r["a"] > r["b"] > r["c"]
    assert abs(sum(r.values()) / 3 - 1000) < 1e-6  # centred by the symmetric prior
    swapped = bradley_terry([(y, x, {"a": "b", "b": "a"}[w]) for x, y, w in battles])
    assert all(abs(r[k] - swapped[k]) < 1e-6 for k in r)
    assert bradley_terry([("a", "b", "tie")] * 5) == pytest.approx({"a": 1000.0, "b": 1000.0})


def test_one_sided_battles_stay_finite_and_shrink_with_few_votes():
    one, many = bradley_terry([("a", "b", "a")]), bradley_terry([("a", "b", "a")] * 50)
    assert 1000 < one["a"] < many["a"] < 2000


def test_arena_intervals_are_seeded_and_cover_the_point():
    battles = [("rag", "cb", "a")] * 7 + [("rag", "cb", "b")] * 3 + [("rag", "cb", "bad")]
    first, again = arena_ratings(battles, seed=3), arena_ratings(battles, seed=3)
    assert first == again
    top = first[0]
    assert (top.arm, top.wins, top.losses, top.ties, top.battles) == ("rag", 7, 3, 1, 11)
    assert top.low < top.rating < top.high
    assert arena_ratings(battles, seed=4) != first
    e = arena_ratings(battles, method="elo", n_boot=50)
    assert e[0].arm == "rag" and e[0].low <= e[0].rating <= e[0].high


def test_elo_replays_in_order_and_inputs_are_validated():
    assert elo([("a", "b", "a")], k_factor=16) == {"a": 1008.0, "b": 992.0}
    assert arena_ratings([]) == []
    with pytest.raises(ValueError, match="winner"):
        bradley_terry([("a", "b", "x")])
    with pytest.raises(ValueError, match="two different arms"):
        elo([("a", "a", "a")])
    with pytest.raises(ValueError, match="method"):
        arena_ratings([("a", "b", "a")], method="glicko")  # type: ignore[arg-type]


def test_arena_battles_store_rejects_a_pair_of_one_arm(home):
    rt = fast_runtime(home)
    res = rt.ask("q?", arm="echo")
    with pytest.raises(Exception, match="two different arms"):
        rt.store.add_arena_battle(
            ArenaBattle(
                question="q?",
                arm_a="echo",
                arm_b="echo",
                interaction_a=res.interaction_id,
                interaction_b=res.interaction_id,
                winner="a",
            )
        )


def test_page_data_shaping():
    x = np.linspace(0.0005, 0.9995, 2000)
    assert abs(beta_pdf(3.0, 5.0, x).sum() * (x[1] - x[0]) - 1.0) < 1e-3
    stats = {("rag", "general"): (4, 3.0, 3.0), ("rag", "multi_hop"): (2, 0.0, 0.0)}
    assert posteriors_from_stats(stats, ["rag", "cb"]) == {"rag": (4.0, 4.0), "cb": (1.0, 1.0)}
    assert posteriors_from_stats(stats, ["rag"], "general") == {"rag": (4.0, 2.0)}
    assert pareto_front({"a": (1, 0.5), "b": (2, 0.4), "c": (3, 0.9), "d": (3, 0.2)}) == ["a", "c"]
    rows = reward_over_time([(2, "a", 0.0), (1, "a", 1.0), (3, "b", 1.0)])
    assert [(r["arm"], r["mean reward"]) for r in rows] == [("a", 1.0), ("a", 0.5), ("b", 1.0)]
    arm_rows = eval_arm_rows(
        {"arms": {"x": {"f1": 1, "latency_ms": 3, "ci95": {"f1": [0.1, 0.2]}}}}
    )
    assert arm_rows == [{"arm": "x", "f1": 1.0, "latency_ms": 3.0, "f1 95% CI": "[0.100, 0.200]"}]
    assert quality_keys(arm_rows) == ["f1"]
