"""Evaluations: stored evaluation runs, metrics per arm, the cost–performance map, drill-down.

A page of the app (``armada ui``). It renders ``EvalRun`` rows (the ``eval_run`` table) written by
the evaluation harness; the expected ``metrics`` JSON shape is documented in ``app/ui/metrics.py``.
The map plots a quality metric against a cost (latency, training time or adapter size) and draws
the Pareto frontier: the arms no other arm beats on both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import altair as alt
import pandas as pd
import streamlit as st
from sqlmodel import select

from app.ui import render, state
from app.ui.metrics import COST_AXES, eval_arm_rows, pareto_front, quality_keys
from core.store import EvalRun

if TYPE_CHECKING:
    from app.runtime import Armada

EMPTY_HINT = (
    "No evaluation runs yet. Run `armada eval …` (the evaluation harness) to compare arms on a "
    "dataset; each run is stored in the `eval_run` table and shown here."
)


def _runs(rt: Armada) -> list[EvalRun]:
    with rt.store.session() as s:
        rows = s.exec(select(EvalRun).order_by(EvalRun.created_at.desc()))
        return [r for r in rows if (r.config or {}).get("kind") != "nightly"]


def _label(run: EvalRun) -> str:
    return f"{run.name} · {run.created_at:%Y-%m-%d %H:%M} · {run.status}"


def _cost_map(rows: list[dict[str, Any]]) -> None:
    st.subheader("Cost–performance map")
    qualities = quality_keys(rows)
    costs = [c for c in COST_AXES if any(c in r for r in rows)]
    if not qualities or not costs:
        st.caption(
            "This run has no quality metric or no cost (latency_ms, train_time_s, adapter_mb)."
        )
        return
    left, right = st.columns(2)
    quality = left.selectbox("Quality", qualities, key="eval-quality")
    cost = right.selectbox("Cost", costs, format_func=COST_AXES.get, key="eval-cost")
    points = {r["arm"]: (r[cost], r[quality]) for r in rows if cost in r and quality in r}
    front = pareto_front(points)
    df = pd.DataFrame(
        [{"arm": a, "cost": c, "quality": q, "Pareto": a in front} for a, (c, q) in points.items()]
    )
    base = alt.Chart(df).encode(
        x=alt.X("cost:Q", title=COST_AXES[cost]), y=alt.Y("quality:Q", title=quality)
    )
    dots = base.mark_circle(size=120).encode(
        color=alt.Color("Pareto:N", scale=alt.Scale(domain=[True, False])), tooltip=["arm"]
    )
    labels = base.mark_text(align="left", dx=8).encode(text="arm:N")
    line = (
        alt.Chart(df[df["Pareto"]].sort_values("cost"))
        .mark_line(strokeDash=[4, 3])
        .encode(x="cost:Q", y="quality:Q")
    )
    st.altair_chart(line + dots + labels)
    st.caption("Pareto frontier (dashed): " + ", ".join(render.escape_markdown(a) for a in front))


def _drill_down(metrics: dict[str, Any]) -> None:
    questions = [q for q in metrics.get("questions") or [] if isinstance(q, dict)]
    st.subheader("Questions")
    if not questions:
        st.caption("This run stored no per-question answers.")
        return
    i = st.selectbox(
        "Question",
        range(len(questions)),
        format_func=lambda k: render.snippet(str(questions[k].get("question", "")), 90),
        key="eval-question",
    )
    q = questions[i]
    render.text(str(q.get("question", "")), label="Question:")
    if q.get("reference"):
        render.text(str(q["reference"]), label="Reference:")
    for arm, ans in (q.get("answers") or {}).items():
        ans = ans if isinstance(ans, dict) else {"answer": str(ans)}
        with st.container(border=True):
            score = ans.get("score")
            head = f"**{render.escape_markdown(arm)}**"
            st.markdown(head + (f" · score {float(score):.2f}" if score is not None else ""))
            render.text(str(ans.get("answer", "")))
            reason = ans.get("judge_reason") or ans.get("reason")
            if reason:
                render.text(str(reason), label="Judge:")


def page() -> None:
    rt = state.runtime()
    st.title("Evaluations")
    render.show_deferred_errors()
    runs = _runs(rt)
    if not runs:
        st.info(EMPTY_HINT, icon=":material/lightbulb:")
        return
    run = runs[st.selectbox("Run", range(len(runs)), format_func=lambda k: _label(runs[k]))]
    with st.expander("Settings of this run"):
        st.json(run.config or {}, expanded=True)
    rows = eval_arm_rows(run.metrics or {})
    st.subheader("Metrics per arm")
    if rows:
        st.dataframe(rows, hide_index=True, key="eval-arms")
        _cost_map(rows)
    else:
        st.caption("This run stored no per-arm metrics (`metrics.arms`).")
    _drill_down(run.metrics or {})


page()
