"""The bandit loop through the real graph: route → answer → vote → the policy learns.

Arms are cheap test agents registered through the real plugin hook; the store, LangGraph graph,
MiniLM category classifier and policies are real.
"""

from __future__ import annotations

import pytest

from app.runtime import Armada
from core.config import ArmConfig, RouterConfig, Settings
from routers.evaluate import logged_decisions, offline_evaluate
from routers.leaderboard import leaderboard, wilson
from tests.plugins_fixture import TestAgents


def _rt(settings: Settings, policy: str = "thompson", **arm_kw) -> Armada:
    s = settings.model_copy(
        update={
            "arms": [
                ArmConfig(name="echo", agent="echo", **arm_kw),
                ArmConfig(name="loud", agent="loud"),
            ],
            "router": RouterConfig(policy=policy, seed=0, fallback_arm="echo"),
        }
    )
    return Armada(s, extra_plugins=[TestAgents()])


def test_votes_teach_thompson_to_prefer_the_better_arm(settings):
    rt = _rt(settings)
    for i in range(60):
        res = rt.ask(f"What is the capital of country number {i}?")
        assert res.policy == "thompson" and 0 < res.propensity <= 1
        rt.feedback(res.interaction_id, 1.0 if res.arm == "echo" else 0.0, voter="u")
    late = [rt.ask(f"What is the capital of country number {i + 100}?").arm for i in range(20)]
    assert late.count("echo") >= 17
    board = leaderboard(rt.store)
    top = board["arms"][0]
    assert top["arm"] == "echo" and top["mean_reward"] == 1.0
    assert board["total_votes"] == 60 and board["total_pulls"] == 80
    loud = next(r for r in board["arms"] if r["arm"] == "loud")
    assert loud["estimated_regret"] > 0 and top["estimated_regret"] == 0
    # The kept statistics equal the fold recomputed from the votes.
    assert rt.store.arm_stats() == rt.store.recompute_arm_stats()


def test_each_decision_stores_the_category_and_projection(settings):
    rt = _rt(settings)
    res = rt.ask("Does metformin reduce cancer risk in patients with type 2 diabetes?")
    ctx = rt.store.decision_for(res.interaction_id).context
    assert ctx["category"] == "biomedical"
    assert len(ctx["embedding"]) == 32
    res = rt.ask("Which magazine was started first, Arthur's Magazine or First for Women?")
    assert rt.store.decision_for(res.interaction_id).context["category"] == "multi_hop"


def test_policy_in_a_new_process_equals_the_incremental_one(settings):
    rt = _rt(settings)
    for i in range(15):
        res = rt.ask(f"question {i}?")
        rt.feedback(res.interaction_id, float(i % 3 == 0), voter=f"v{i}")
    incremental = rt.policy().state_dict()
    fresh = _rt(settings).policy().state_dict()  # rebuilt from the stored votes
    assert fresh == incremental


def test_a_changed_vote_replaces_the_old_one_in_the_policy(settings):
    rt = _rt(settings)
    res = rt.ask("q?")
    rt.feedback(res.interaction_id, 1.0, feedback_id="a", voter="v")
    rt.feedback(res.interaction_id, 0.0, feedback_id="b", voter="v")
    stats = rt.store.arm_stats()
    assert sum(n for n, _, _ in stats.values()) == 1 and sum(t for _, t, _ in stats.values()) == 0
    assert rt.policy().state_dict() == _rt(settings).policy().state_dict()


def test_a_new_arm_enters_with_its_prior(settings):
    rt = _rt(settings, prior=0.95)
    picks = [rt.ask(f"q{i}?").arm for i in range(20)]
    assert picks.count("echo") >= 16


def test_disabling_an_arm_reroutes_and_keeps_history(settings):
    rt = _rt(settings, policy="uniform")
    rt.store.set_arm_status("loud", "disabled", "testing")
    assert {rt.ask(f"q{i}?").arm for i in range(8)} == {"echo"}
    rt.store.set_arm_status("loud", "ok")
    assert "loud" in rt.enabled_arms()


def test_off_policy_evaluation_of_logged_uniform_traffic(settings):
    rt = _rt(settings, policy="uniform")
    for i in range(80):
        res = rt.ask(f"q{i}?")
        rt.feedback(res.interaction_id, 1.0 if res.arm == "echo" else 0.0)
    log = logged_decisions(rt.store)
    assert len(log) == 80 and all(p == pytest.approx(0.5) for _, _, p, _ in log)
    est = offline_evaluate(rt, log, "fixed", {"arm": "echo"}, n_boot=300)
    assert est["ips"].low <= 1.0 <= est["ips"].high + 1e-9
    assert est["snips"].estimate == pytest.approx(1.0)
    est = offline_evaluate(rt, log, "fixed", {"arm": "loud"}, n_boot=300)
    assert est["snips"].estimate == pytest.approx(0.0)


def test_wilson_interval():
    assert wilson(0.0, 0) == (0.0, 1.0)
    lo, hi = wilson(0.5, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
