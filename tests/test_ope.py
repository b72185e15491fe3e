"""Off-policy evaluation: IPS is unbiased, DR with a good model is tighter, bad logs are refused.

Run: .venv/bin/python -m pytest -q tests/test_ope.py
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from routers import build_policy
from routers.ope import Estimate, dr, evaluate, fit_reward_model, ips, snips

ARMS = ["a", "b", "c"]
MEANS = {"x": [0.2, 0.5, 0.8], "y": [0.7, 0.4, 0.1]}
TARGET = {"x": {"a": 0.1, "b": 0.2, "c": 0.7}, "y": {"a": 0.6, "b": 0.3, "c": 0.1}}
TRUE_VALUE = float(
    np.mean([sum(TARGET[c][a] * MEANS[c][i] for i, a in enumerate(ARMS)) for c in "xy"])
)


def target(context: dict) -> dict[str, float]:
    return TARGET[context["category"]]


def uniform_log(n: int, seed: int) -> list[tuple[dict, str, float, float]]:
    rng = np.random.default_rng(seed)
    log = []
    for _ in range(n):
        cat = "x" if rng.random() < 0.5 else "y"
        k = int(rng.integers(3))
        log.append(({"category": cat}, ARMS[k], 1 / 3, float(rng.random() < MEANS[cat][k])))
    return log


def perfect_model(context: dict, arm: str) -> float:
    return MEANS[context["category"]][ARMS.index(arm)]


def test_ips_is_unbiased_and_its_interval_covers_the_true_value():
    results = [ips(uniform_log(1000, s), target, n_boot=400, seed=s) for s in range(30)]
    assert all(isinstance(r, Estimate) and r.n == 1000 for r in results)
    assert np.mean([r.estimate for r in results]) == pytest.approx(TRUE_VALUE, abs=0.01)
    assert sum(r.low <= TRUE_VALUE <= r.high for r in results) >= 25  # 95% nominal, 30 logs


def test_every_estimator_covers_the_truth_on_one_large_log():
    for name, est in evaluate(uniform_log(4000, 1), target, seed=1).items():
        assert est.estimator == name and est.low <= TRUE_VALUE <= est.high
        assert est.low < est.estimate < est.high and 0 < est.ess <= est.n


def test_dr_with_a_perfect_reward_model_has_lower_variance_than_ips():
    ips_vals, dr_vals = [], []
    for s in range(40):
        log = uniform_log(500, s)
        ips_vals.append(ips(log, target, n_boot=200, seed=s).estimate)
        est = dr(log, target, reward_model=perfect_model, n_boot=200, seed=s)
        dr_vals.append(est.estimate)
    assert np.std(dr_vals) < 0.8 * np.std(ips_vals)  # ~0.65 expected: Bernoulli noise remains
    log = uniform_log(500, 0)
    assert (lambda e: e.high - e.low)(dr(log, target, reward_model=perfect_model)) < (
        lambda e: e.high - e.low
    )(ips(log, target))


def test_evaluating_the_logging_policy_itself():
    log = uniform_log(300, 2)
    results = evaluate(log, lambda c: {a: 1 / 3 for a in ARMS}, n_boot=100)
    mean_reward = np.mean([r for *_, r in log])
    assert results["snips"].estimate == pytest.approx(mean_reward)
    assert results["ips"].estimate == pytest.approx(mean_reward)
    assert results["ips"].ess == pytest.approx(300)


def test_bootstrap_is_seeded():
    log = uniform_log(200, 3)
    assert snips(log, target, seed=4) == snips(log, target, seed=4)
    assert snips(log, target, seed=4).low != snips(log, target, seed=5).low


def test_a_policy_is_a_target_and_is_not_changed_by_evaluation():
    policy = build_policy("thompson", ARMS, seed=0)
    for context, arm, _, reward in uniform_log(200, 5):
        policy.update(arm, context, reward)
    before = json.dumps(policy.state_dict())
    res = evaluate(uniform_log(300, 6), policy, n_boot=100)
    assert json.dumps(policy.state_dict()) == before
    assert 0.0 <= res["snips"].estimate <= 1.0


def test_reward_model_backs_off_from_cell_to_arm_to_global_mean():
    log = [({"category": "x"}, "a", 0.5, 1.0), ({"category": "y"}, "a", 0.5, 0.0)]
    log.append(({"category": "x"}, "b", 0.5, 0.5))
    q = fit_reward_model(log)
    assert q({"category": "x"}, "a") == 1.0
    assert q({"category": "z"}, "a") == 0.5  # arm mean
    assert q({"category": "z"}, "c") == pytest.approx(0.5)  # global mean


def test_bad_logs_and_targets_are_refused():
    good = ({"category": "x"}, "a", 0.5, 1.0)
    with pytest.raises(ValueError, match="at least one"):
        ips([], target)
    for bad in [({"category": "x"}, "a", 0.0, 1.0), ({"category": "x"}, "a", 1.5, 1.0)]:
        with pytest.raises(ValueError, match="propensity"):
            ips([good, bad], target)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ips([({"category": "x"}, "a", 0.5, 2.0)], target)
    with pytest.raises(ValueError, match="sum to 1"):
        ips([good], lambda c: {"a": 0.7, "b": 0.7})
