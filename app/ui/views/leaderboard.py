"""Leaderboard: how each arm is doing, per category, over time, and what the router believes.

A page of the app (``armada ui``). The numbers are ``routers.leaderboard.leaderboard(store)`` (the
same function as ``armada leaderboard`` and the API), plus the arena rating from the stored battles.
The posterior chart shows the Beta densities of the Thompson policy's state for a category, or,
when another policy routes, Beta(1 + Σreward, 1 + n − Σreward) from the kept arm statistics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import altair as alt
import pandas as pd
import streamlit as st
from sqlmodel import select

from app.ui import render, state
from app.ui.metrics import posterior_curves, posteriors_from_stats, reward_over_time, traffic_rows
from core.store import Feedback
from routers.arena import arena_ratings
from routers.leaderboard import leaderboard

if TYPE_CHECKING:
    from app.runtime import Armada

ALL = "all categories"


def _fmt_mean(cell: dict[str, Any]) -> str:
    return "–" if cell["mean_reward"] is None else f"{cell['mean_reward']:.3f}"


def _ci(cell: dict[str, Any]) -> str:
    lo, hi = cell["ci95"]
    return f"[{lo:.2f}, {hi:.2f}]"


def _arms_table(board: dict[str, Any], rt: Armada) -> None:
    battles = [(b.arm_a, b.arm_b, b.winner) for b in rt.store.arena_battles()]
    ratings = {r.arm: r for r in arena_ratings(battles, n_boot=200)}
    rows = []
    for row in board["arms"]:
        r = ratings.get(row["arm"])
        rows.append(
            {
                "arm": row["arm"],
                "pulls": row["pulls"],
                "votes": row["votes"],
                "mean reward": _fmt_mean(row),
                "95% interval": _ci(row),
                "traffic share": row["traffic_share"],
                "est. regret": row["estimated_regret"],
                "arena rating": f"{r.rating:.0f} ({r.low:.0f}–{r.high:.0f})" if r else "–",
            }
        )
    st.dataframe(
        rows,
        hide_index=True,
        key="leaderboard-arms",
        column_config={
            "traffic share": st.column_config.ProgressColumn(
                "traffic share", format="percent", min_value=0.0, max_value=1.0
            ),
        },
    )
    st.caption(
        f"{board['total_pulls']} answers, {board['total_votes']} votes. Mean reward with a 95% "
        "Wilson interval; arena rating: Bradley–Terry with a 95% bootstrap interval."
    )


def _categories(board: dict[str, Any]) -> None:
    rows = [
        {
            "arm": row["arm"],
            "category": cat,
            "pulls": cell["pulls"],
            "votes": cell["votes"],
            "mean reward": _fmt_mean(cell),
            "95% interval": _ci(cell),
        }
        for row in board["arms"]
        for cat, cell in row["categories"].items()
    ]
    st.subheader("Per category")
    if rows:
        st.dataframe(rows, hide_index=True, key="leaderboard-categories")
    else:
        st.caption("No answers yet.")


def _over_time(board: dict[str, Any], rt: Armada) -> None:
    left, right = st.columns(2)
    with left:
        st.subheader("Mean reward over time")
        with rt.store.session() as s:
            votes = list(s.exec(select(Feedback.created_at, Feedback.arm, Feedback.reward)))
        rows = reward_over_time((ts, arm or "?", r or 0.0) for ts, arm, r in votes)
        if rows:
            chart = (
                alt.Chart(pd.DataFrame(rows))
                .mark_line(point=True, interpolate="step-after")
                .encode(
                    x=alt.X("time:T", title=None),
                    y=alt.Y("mean reward:Q", scale=alt.Scale(domain=[0, 1])),
                    color="arm:N",
                    tooltip=["arm", "mean reward", "votes"],
                )
                .properties(height=260)
            )
            st.altair_chart(chart)
        else:
            st.caption("No votes yet.")
    with right:
        st.subheader("Traffic share over time")
        rows = traffic_rows(board["traffic_over_time"])
        if rows:
            chart = (
                alt.Chart(pd.DataFrame(rows))
                .mark_bar()
                .encode(
                    x=alt.X("time:O", title=None, axis=alt.Axis(labelAngle=0)),
                    y=alt.Y("share:Q", stack="normalize", axis=alt.Axis(format="%")),
                    color="arm:N",
                )
                .properties(height=260)
            )
            st.altair_chart(chart)
        else:
            st.caption("No answers yet.")


def _posteriors(board: dict[str, Any], rt: Armada) -> None:
    st.subheader("What the router believes")
    policy = rt.policy()
    posterior = getattr(policy, "posterior", None)
    arms = list(policy.arms)
    if callable(posterior):
        cats = sorted(getattr(policy, "cells", {}) or {"*": None})
        cat = st.selectbox(
            "Category", cats, key="posterior-category", format_func=lambda c: ALL if c == "*" else c
        )
        a, b = posterior({"category": None if cat == "*" else cat})
        params = {arm: (float(x), float(y)) for arm, x, y in zip(arms, a, b, strict=True)}
        where = ALL if cat == "*" else f"category {cat}"
        st.caption(f"Beta posteriors of the {policy.name} policy ({where}).")
    else:
        cats = [ALL, *board["categories"]]
        cat = st.selectbox("Category", cats, key="posterior-category")
        stats = rt.store.arm_stats()
        params = posteriors_from_stats(stats, arms, None if cat == ALL else cat)
        st.caption(
            f"The {policy.name} policy keeps no Beta posteriors; these are Beta(1 + Σreward, "
            "1 + n − Σreward) from the arm statistics."
        )
    df = pd.DataFrame(posterior_curves(params))
    st.line_chart(df, x="reward", y="density", color="arm", height=260)


def page() -> None:
    rt = state.runtime()
    st.title("Leaderboard")
    render.show_deferred_errors()
    board = leaderboard(rt.store)
    if not board["total_pulls"]:
        st.info("No answers yet: ask something on the Chat page, then vote with the thumbs.")
    _arms_table(board, rt)
    _categories(board)
    _over_time(board, rt)
    _posteriors(board, rt)


page()
