"""Learning policies: propensities, reproducibility, the fold, arm lifecycle and bad inputs.

Run: .venv/bin/python -m pytest -q tests/test_policies.py
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from routers import POLICIES, NoArmAvailable, UnknownArm, build_policy
from routers.linucb import project
from routers.ope import estimated_regret
from routers.thompson import beta_argmax_probs

ARMS = ["a", "b", "c", "d"]
LEARNING = ["thompson", "ucb1", "egreedy", "linucb"]
MEANS = {"x": [0.2, 0.5, 0.8, 0.4], "y": [0.7, 0.3, 0.2, 0.5]}


def events(n: int, seed: int = 0, embedding: bool = False) -> list[tuple[str, dict, float]]:
    """A synthetic log: random arms in two categories, fractional and binary rewards."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        cat = "x" if rng.random() < 0.5 else "y"
        k = int(rng.integers(4))
        ctx: dict = {"category": cat}
        if embedding:
            ctx["embedding"] = rng.standard_normal(16).tolist()
        reward = float(rng.random() < MEANS[cat][k]) if rng.random() < 0.5 else float(rng.random())
        out.append((ARMS[k], ctx, reward))
    return out


def trained(name: str, n: int = 60, **options) -> object:
    policy = build_policy(name, ARMS, seed=1, **options)
    for arm, ctx, r in events(n, embedding=name == "linucb"):
        policy.update(arm, ctx, r)
    return policy


def play(policy, rounds: int, means: list[float], rng: np.random.Generator, ctx=None) -> list[str]:
    ctx = ctx or {}
    pulled = []
    for _ in range(rounds):
        arm, _ = policy.select(ctx)
        policy.update(arm, ctx, float(rng.random() < means[ARMS.index(arm)]))
        pulled.append(arm)
    return pulled


def test_learning_policies_are_registered_and_accept_runtime_options():
    assert set(LEARNING) <= set(POLICIES)
    for name in LEARNING:  # the runtime passes `arm=` to every policy
        assert build_policy(name, ARMS, arm="a", seed=0).select({})[0] in ARMS


@pytest.mark.parametrize("name", LEARNING)
def test_propensity_is_the_action_probability_and_probs_sum_to_one(name):
    policy = trained(name)
    for ctx in ({"category": "x"}, {"category": "y"}, {"category": "unseen"}, {}):
        probs = policy.action_probs(ctx)
        assert set(probs) == set(ARMS) and min(probs.values()) >= 0
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-9)
        arm, propensity = policy.select(ctx)
        assert propensity == probs[arm] > 0


@pytest.mark.parametrize(
    ("name", "options"),
    [("thompson", {}), ("thompson", {"propensity": "mc"}), ("egreedy", {"epsilon": 0.3})],
)
def test_selection_frequencies_match_propensities(name, options):
    policy = build_policy(name, ARMS, seed=3, **options)
    for arm, _, r in events(12, seed=5):  # little data: the probabilities are spread out
        policy.update(arm, {}, r)
    probs = policy.action_probs({})
    n = 6000
    counts = {a: 0 for a in ARMS}
    for _ in range(n):
        counts[policy.select({})[0]] += 1
    for a in ARMS:  # within ~4 standard errors
        assert counts[a] / n == pytest.approx(probs[a], abs=4 * np.sqrt(0.25 / n))


def test_thompson_quadrature_matches_monte_carlo():
    rng = np.random.default_rng(0)
    cases = [
        ([1, 1, 1, 1], [1, 1, 1, 1]),
        ([1, 300, 310, 5], [1, 200, 190, 9]),  # a flat (new) arm beside sharp ones
        ([2.5, 3.7, 1.2, 8.1], [1.5, 2.2, 4.0, 3.3]),  # fractional
        ([5000, 5100, 4000], [5000, 4900, 6000]),
    ]
    for a, b in cases:
        a, b = np.array(a, float), np.array(b, float)
        mc = np.bincount(rng.beta(a, b, (200_000, a.size)).argmax(1), minlength=a.size) / 200_000
        np.testing.assert_allclose(beta_argmax_probs(a, b), mc, atol=0.006)


def test_egreedy_propensity_is_exact_including_ties():
    policy = build_policy("egreedy", ARMS, seed=0, epsilon=0.2)
    for arm, r in [("a", 0.2), ("b", 0.9), ("c", 0.9), ("d", 0.1)]:
        policy.update(arm, {}, r)
    probs = policy.action_probs({})
    assert probs["b"] == pytest.approx(0.8 / 2 + 0.2 / 4) and probs["c"] == probs["b"]
    assert probs["a"] == pytest.approx(0.2 / 4) and probs["d"] == probs["a"]
    decaying = build_policy("egreedy", ARMS, seed=0, decay=5.0)
    assert decaying.epsilon_at({}) == 1.0
    for _ in range(9):
        decaying.update("a", {}, 1.0)
    assert decaying.epsilon_at({}) == pytest.approx(5.0 / 10)  # ε_t = min(1, c/t), t = 10


@pytest.mark.parametrize("name", LEARNING)
def test_min_propensity_keeps_every_arm_reachable(name):
    policy = trained(name, n=300, min_propensity=0.05)
    for ctx in ({"category": "x"}, {}):
        probs = policy.action_probs(ctx)
        assert min(probs.values()) >= 0.05 - 1e-12 and sum(probs.values()) == pytest.approx(1)
        arm, propensity = policy.select(ctx)
        assert propensity == probs[arm]
    policy.add_arm("e")
    policy.add_arm("f")  # 6 arms × 0.05 still fits; the floor holds for new arms too
    assert min(policy.action_probs({}).values()) >= 0.05 - 1e-12
    with pytest.raises(ValueError, match="min_propensity"):
        build_policy(name, ARMS, min_propensity=0.3)


def test_ucb_tries_untried_arms_first_with_uniform_tie_propensity():
    policy = build_policy("ucb1", ARMS, seed=0)
    assert policy.action_probs({}) == {a: 0.25 for a in ARMS}
    policy.update("a", {}, 1.0)
    assert policy.action_probs({}) == {"a": 0.0, "b": 1 / 3, "c": 1 / 3, "d": 1 / 3}


@pytest.mark.parametrize("name", [*LEARNING, "uniform"])
def test_same_seed_same_decisions(name):
    def run(seed):
        policy = build_policy(name, ARMS, seed=seed)
        return play(policy, 200, [0.5, 0.5, 0.5, 0.5], np.random.default_rng(0))

    assert run(7) == run(7)
    if name != "ucb1":  # UCB1 is random only in its tie-breaks
        assert run(7) != run(8)


def test_thompson_converges_on_an_easy_problem():
    policy = build_policy("thompson", ARMS, seed=0)
    pulled = play(policy, 300, [0.2, 0.3, 0.8, 0.4], np.random.default_rng(1))
    assert pulled[-100:].count("c") >= 90
    assert policy.action_probs({})["c"] > 0.95


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("thompson", {}),
        ("thompson", {"discount": 0.97}),
        ("thompson", {"window": 25, "priors": {"a": (3, 1)}}),
        ("ucb1", {"discount": 0.9}),
        ("ucb1", {"window": 10}),
        ("egreedy", {"decay": 3.0, "discount": 0.95}),
        ("linucb", {"embed_dim": 8}),
    ],
)
def test_incremental_updates_equal_rebuild_from_the_log(name, options):
    log = events(300, seed=2, embedding=True)
    live = build_policy(name, ARMS, seed=0, **options)
    for arm, ctx, r in log:
        live.select(ctx)  # decisions interleaved: they must not enter the fold
        live.update(arm, ctx, r)
    rebuilt = POLICIES[name].from_events(ARMS, log, seed=0, **options)
    assert json.dumps(live.state_dict()) == json.dumps(rebuilt.state_dict()) != "{}"
    for ctx in (log[-1][1], {"category": "y"}):
        assert live.action_probs(ctx) == rebuilt.action_probs(ctx)
    again = build_policy(name, ARMS, seed=5, **options)  # a restart: same options, fresh seed
    again.load_state_dict(json.loads(json.dumps(live.state_dict())))
    assert again.state_dict() | {"config": None} == live.state_dict() | {"config": None}
    assert again.action_probs(log[-1][1]) == live.action_probs(log[-1][1])
    other = build_policy(name, ARMS, **(options | {"embed_dim": 4, "per_category": False}))
    with pytest.raises(ValueError, match="rebuild it from the events"):
        other.load_state_dict(live.state_dict())


def test_discount_and_window_forget_the_past():
    disc = build_policy("thompson", ARMS, discount=0.5)
    for r in (1.0, 0.0, 0.0):
        disc.update("a", {}, r)
    n, s = disc.cells["*"].n[0], disc.cells["*"].s[0]
    assert (n, s) == (1 + 0.5 + 0.25, 0.25)  # the reward three updates ago weighs 1/4
    win = build_policy("ucb1", ARMS, window=3)
    for arm in "aabcd":
        win.update(arm, {}, 1.0)
    assert win.cells["*"].n.tolist() == [0.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("name", LEARNING)
def test_action_probs_does_not_mutate_the_policy(name):
    a, b = trained(name), trained(name)
    before = json.dumps(a.state_dict())
    for ctx in ({"category": "x"}, {"category": "new"}, {}):
        a.action_probs(ctx)
        a.means(ctx)
    assert json.dumps(a.state_dict()) == before
    ctx = {"category": "x"}
    assert [a.select(ctx) for _ in range(20)] == [b.select(ctx) for _ in range(20)]  # same rng


def test_thompson_priors_per_arm_and_per_category():
    policy = build_policy(
        "thompson", ARMS, priors={"a": (30, 1), ("multi_hop", "b"): (1, 30), "qa": {"c": 0.9}}
    )
    assert policy.prior_arrays("multi_hop")[0].tolist() == [30, 1, 1, 1]
    assert policy.prior_arrays("multi_hop")[1].tolist() == [1, 30, 1, 1]
    assert policy.prior_arrays("qa")[0].tolist() == [30, 1, 1 + 0.9 * 10, 1]
    assert policy.action_probs({"category": "general"})["a"] > 0.9
    with pytest.raises(ValueError, match="alpha > 0"):
        build_policy("thompson", ARMS, priors={"a": (0, 1)})


@pytest.mark.parametrize("name", LEARNING)
def test_add_arm_with_a_prior_changes_early_selection(name):
    cold, warm = trained(name), trained(name)
    cold.add_arm("e")
    warm.add_arm("e", prior=0.95)  # an offline score of 0.95, worth 10 pulls
    ctx = {"category": "x"}
    assert warm.means(ctx)["e"] > cold.means(ctx)["e"] + 0.2
    if name == "thompson":
        assert warm.action_probs(ctx)["e"] > cold.action_probs(ctx)["e"]
    elif name == "ucb1":  # untried: +inf; with 10 pseudo-pulls it must compete
        assert cold.action_probs(ctx)["e"] == 1.0 > warm.action_probs(ctx)["e"]
    arms = [warm.select(ctx)[0] for _ in range(50)]
    assert set(arms) <= {*ARMS, "e"}
    warm.update("e", ctx, 1.0)
    assert warm.state_dict()["arms"][-1] == "e"


@pytest.mark.parametrize("name", LEARNING)
def test_remove_arm_drops_it_and_the_last_arm_cannot_go(name):
    policy = trained(name)
    policy.remove_arm("b")
    assert policy.arms == ["a", "c", "d"] and set(policy.action_probs({"category": "x"})) == {
        "a",
        "c",
        "d",
    }
    policy.update("c", {"category": "x"}, 1.0)
    with pytest.raises(UnknownArm, match="'b'"):
        policy.update("b", {"category": "x"}, 1.0)
    policy.remove_arm("a")
    policy.remove_arm("c")
    with pytest.raises(NoArmAvailable):
        policy.remove_arm("d")
    with pytest.raises(ValueError, match="already exists"):
        policy.add_arm("d")


@pytest.mark.parametrize("name", LEARNING)
def test_bad_inputs_fail_clearly(name):
    policy = build_policy(name, ARMS)
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            policy.update("a", {}, bad)
    with pytest.raises(UnknownArm, match="unknown arm 'zz'"):
        policy.update("zz", {}, 1.0)
    with pytest.raises(NoArmAvailable):
        build_policy(name, [])
    with pytest.raises(ValueError, match="duplicate"):
        build_policy(name, ["a", "a"])


def test_invalid_options_are_rejected():
    for name, options in [
        ("thompson", {"discount": 0.0}),
        ("ucb1", {"window": 10, "discount": 0.9}),
        ("egreedy", {"epsilon": 1.5}),
        ("thompson", {"propensity": "guess"}),
        ("linucb", {"ridge": 0.0}),
    ]:
        with pytest.raises(ValueError):
            build_policy(name, ARMS, **options)


def test_project_is_seeded_and_keeps_norms():
    e = np.random.default_rng(0).standard_normal(384)
    e /= np.linalg.norm(e)
    assert project(e, 32, seed=1).shape == (32,)
    np.testing.assert_array_equal(project(e, 32, seed=1), project(e.tolist(), 32, seed=1))
    assert not np.allclose(project(e, 32, seed=1), project(e, 32, seed=2))
    assert 0.5 < np.linalg.norm(project(e, 32, seed=1)) < 1.5
    with pytest.raises(ValueError):
        project([], 32)


def test_linucb_learns_a_different_best_arm_per_category():
    rng = np.random.default_rng(0)
    policy = build_policy("linucb", ARMS, seed=0)
    best = {"x": "c", "y": "a"}
    for _ in range(800):
        cat = "x" if rng.random() < 0.5 else "y"
        ctx = {"category": cat, "embedding": rng.standard_normal(16)}
        arm, _ = policy.select(ctx)
        policy.update(arm, ctx, float(rng.random() < MEANS[cat][ARMS.index(arm)]))
    for cat, arm in best.items():
        ctx = {"category": cat, "embedding": rng.standard_normal(16)}
        assert max(policy.means(ctx), key=policy.means(ctx).get) == arm


def test_estimated_regret_uses_the_policy_means():
    policy = trained("thompson", n=400)
    ctx = {"category": "x"}
    means = policy.means(ctx)
    best = max(means, key=means.get)
    assert estimated_regret(policy, [(ctx, best)] * 5) == 0.0
    assert estimated_regret(policy, [(ctx, "a"), (ctx, best)]) == pytest.approx(
        means[best] - means["a"]
    )
    with pytest.raises(UnknownArm):
        estimated_regret(policy, [(ctx, "zz")])
