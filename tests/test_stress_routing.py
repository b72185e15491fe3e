"""Distractor stress contexts and report; router curves, APGR/CPT by hand; bandit replay regret."""

from __future__ import annotations

import numpy as np
import pytest

from core.datasets import Example
from core.types import Hit, Passage
from evals.routing import (
    Table,
    apgr,
    category_router_baseline,
    category_router_scores,
    cost_quality_curve,
    cpt,
    fit_category_router,
    replay_bandit,
)
from evals.stress import hard_negatives, stress_contexts, stress_report
from routers import Policy

# -- stress ---------------------------------------------------------------------------------------


def _p(pid: str, title: str, text: str) -> Passage:
    return Passage(id=pid, text=text, title=title)


EXAMPLE = Example(
    "e1",
    "Who directed Ed Wood?",
    ("Tim Burton",),
    gold=(_p("hotpotqa:e1:Ed Wood", "Ed Wood", "Ed Wood is a film by Tim Burton."),),
    others=(_p("hotpotqa:e1:Other", "Other", "Unrelated text."),),
    dataset="hotpotqa",
)


class FakeRetriever:
    def __init__(self, passages: list[Passage]) -> None:
        self.passages, self.calls = passages, []

    def search(self, query: str, k: int) -> list[Hit]:
        self.calls.append((query, k))
        return [Hit(p, 1.0 / (i + 1)) for i, p in enumerate(self.passages[:k])]


CORPUS = [
    _p("c0", "ed wood", "A corpus copy of the gold paragraph."),  # same title as gold
    _p("c1", "X", "Ed Wood is a film by Tim Burton."),  # same text as gold
    _p("c2", "Other", "Unrelated text."),  # already in the context
    _p("c3", "Bela Lugosi", "Bela Lugosi was an actor."),
    _p("c3", "Bela Lugosi", "Bela Lugosi was an actor."),  # duplicate hit
    _p("c4", "Burton", "Tim Burton is a director."),  # answer-bearing
    _p("c5", "Johnny Depp", "Johnny Depp is an actor."),
]


def test_hard_negatives_skip_gold_context_and_duplicates() -> None:
    got = hard_negatives(EXAMPLE, CORPUS, 5)
    assert [p.id for p in got] == ["c3", "c4", "c5"]
    got = hard_negatives(EXAMPLE, CORPUS, 5, exclude_answer_bearing=True)
    assert [p.id for p in got] == ["c3", "c5"]
    assert [p.id for p in hard_negatives(EXAMPLE, CORPUS, 1)] == ["c3"]


def test_stress_contexts_add_n_and_keep_order_and_seed() -> None:
    retriever = FakeRetriever(CORPUS)
    ctx = stress_contexts([EXAMPLE], retriever, n_extra=2, seed=0)["e1"]
    assert retriever.calls == [("Who directed Ed Wood?", 14)]
    assert len(ctx) == 4 and {p.id for p in ctx} >= {"c3", "c4"}
    original = [p.id for p in ctx if p.id.startswith("hotpotqa:")]
    assert original == [p.id for p in EXAMPLE.passages]  # original order kept
    assert stress_contexts([EXAMPLE], retriever, 2, seed=0)["e1"] == ctx
    orders = {
        tuple(p.id for p in stress_contexts([EXAMPLE], retriever, 2, s)["e1"]) for s in range(20)
    }
    assert len(orders) > 1  # the seed moves the distractors
    assert stress_contexts([EXAMPLE], retriever, 0, 0)["e1"] == list(EXAMPLE.passages)


def test_stress_report_paired_drop_and_ci() -> None:
    ids = [f"q{i}" for i in range(50)]
    base = {"rag": dict.fromkeys(ids, 1.0), "closed": {i: float(n % 2) for n, i in enumerate(ids)}}
    stressed = {"rag": {i: float(n >= 20) for n, i in enumerate(ids)}, "closed": base["closed"]}
    rep = stress_report(base, stressed, seed=1)
    assert rep["rag"].n == 50 and rep["rag"].drop == pytest.approx(0.4)
    assert rep["rag"].low < 0.4 < rep["rag"].high and rep["rag"].low > 0.2
    assert rep["rag"].relative_drop == pytest.approx(0.4)
    assert (rep["closed"].drop, rep["closed"].low, rep["closed"].high) == (0.0, 0.0, 0.0)
    assert stress_report(base, stressed, seed=1) == rep


# -- routing --------------------------------------------------------------------------------------


def rows_from(
    scores: dict[str, list[float]], costs: dict[str, float], cats: list[str]
) -> list[dict]:
    return [
        {"example_id": f"q{i}", "category": cats[i], "arm": arm, "score": s, "cost": costs[arm]}
        for arm, col in scores.items()
        for i, s in enumerate(col)
    ]


# weak is cheap and always wrong; strong is right on q0 and q1 only
ROWS = rows_from(
    {"weak": [0, 0, 0, 0], "strong": [1, 1, 0, 0], "mid": [0, 0, 0, 0]},
    {"weak": 0.1, "strong": 2.0, "mid": 1.0},
    ["a", "a", "b", "b"],
)


def test_weak_is_cheapest_strong_is_best() -> None:
    assert Table.from_rows(ROWS).weak_strong() == ("weak", "strong")


def test_perfect_router_curve_apgr_cpt_by_hand() -> None:
    curve = cost_quality_curve(ROWS, {"q0": 0.9, "q1": 0.8, "q2": 0.2, "q3": 0.1})
    assert (curve.weak, curve.strong, curve.weak_quality, curve.strong_quality) == (
        "weak",
        "strong",
        0.0,
        0.5,
    )
    assert [p.strong_share for p in curve.points] == [0, 0.25, 0.5, 0.75, 1.0]
    assert [p.pgr for p in curve.points] == [0, 0.5, 1, 1, 1]
    assert curve.points[2].cost == pytest.approx((2.0 + 2.0 + 0.1 + 0.1) / 4)
    # trapezoids: .25·(0+.5)/2 + .25·(.5+1)/2 + .25 + .25
    assert apgr(curve) == pytest.approx(0.75)
    assert cpt(curve, 0.5) == pytest.approx(0.25)
    assert cpt(curve, 0.8) == pytest.approx(0.4)  # .25 + (.3/.5)·.25
    assert cpt(curve, 0.0) == 0.0


def test_random_worst_and_near_perfect_routers() -> None:
    tie = cost_quality_curve(ROWS, dict.fromkeys(["q0", "q1", "q2", "q3"], 0.5))
    assert [(p.strong_share, p.pgr) for p in tie.points] == [(0, 0), (1, 1)]
    assert apgr(tie) == pytest.approx(0.5)
    worst = cost_quality_curve(ROWS, {"q0": 0.1, "q1": 0.2, "q2": 0.8, "q3": 0.9})
    assert apgr(worst) == pytest.approx(0.25) and cpt(worst, 0.5) == pytest.approx(0.75)
    # strong wins rarely (5 of 100): a perfect router recovers the gap with few strong calls
    n = 100
    rows = rows_from(
        {"weak": [0] * n, "strong": [1] * 5 + [0] * 95}, {"weak": 0, "strong": 1}, ["c"] * n
    )
    perfect = {f"q{i}": float(i < 5) for i in range(n)}
    assert apgr(cost_quality_curve(rows, perfect)) == pytest.approx(1 - 0.05 / 2)
    rng = np.random.default_rng(0)
    random_scores = [
        apgr(cost_quality_curve(rows, {f"q{i}": rng.random() for i in range(n)})) for _ in range(40)
    ]
    assert np.mean(random_scores) == pytest.approx(0.5, abs=0.05)


def test_curve_errors() -> None:
    with pytest.raises(ValueError, match="no gap"):
        cost_quality_curve(rows_from({"a": [1], "b": [0]}, {"a": 0, "b": 1}, ["c"]), {"q0": 1})
    with pytest.raises(ValueError, match="scored none"):
        cost_quality_curve(ROWS, {})
    with pytest.raises(ValueError, match="fraction"):
        cpt(cost_quality_curve(ROWS, {"q0": 1}), 50)
    with pytest.raises(ValueError, match="twice"):
        Table.from_rows(ROWS + ROWS[:1])


# -- bandit replay and the category router --------------------------------------------------------

# arm "x" is best on category a, "y" on category b; 20 examples per category
REPLAY_ROWS = rows_from(
    {"x": [0.9] * 20 + [0.2] * 20, "y": [0.3] * 20 + [0.8] * 20},
    {"x": 1.0, "y": 1.0},
    ["a"] * 20 + ["b"] * 20,
)


class Oracle(Policy):
    name = "test-oracle"

    def select(self, context: dict) -> tuple[str, float]:
        return ("x" if context["category"] == "a" else "y"), 1.0


def test_replay_oracle_has_zero_regret() -> None:
    res = replay_bandit(REPLAY_ROWS, Oracle(["x", "y"]), seed=0, rounds=200)
    assert res.total_regret == 0.0 and res.oracle == {"a": "x", "b": "y"}
    assert res.mean_reward == pytest.approx(res.oracle_reward)
    assert sum(res.share.values()) == pytest.approx(1.0)


def test_replay_fixed_arm_regret_is_linear_and_thompson_learns() -> None:
    fixed = replay_bandit(REPLAY_ROWS, "fixed", seed=0, rounds=400, arm="x")
    n_b = int((np.random.default_rng(0).integers(0, 40, size=400) >= 20).sum())  # category b
    assert fixed.total_regret == pytest.approx(0.6 * n_b) and fixed.share == {"x": 1.0, "y": 0.0}
    ts = replay_bandit(REPLAY_ROWS, "thompson", seed=0, rounds=400)
    assert ts.total_regret < 0.25 * fixed.total_regret
    assert (
        replay_bandit(REPLAY_ROWS, "thompson", seed=0, rounds=400).total_regret == ts.total_regret
    )
    uniform = replay_bandit(REPLAY_ROWS, "uniform", seed=0, rounds=400)
    assert ts.total_regret < uniform.total_regret


def test_category_router_fit_scores_and_baseline() -> None:
    assert fit_category_router(REPLAY_ROWS) == {"a": "x", "b": "y"}
    assert category_router_scores(REPLAY_ROWS, weak="x", strong="y") == {"a": 0.0, "b": 1.0}
    base = category_router_baseline(REPLAY_ROWS, held_out=0.5, seed=0)
    assert base["assignment"] == {"a": "x", "b": "y"} and base["n_test"] == 20
    assert base["quality"] == pytest.approx(base["oracle_quality"])
    assert base["quality"] > max(v["quality"] for v in base["arms"].values())
