"""Evaluating routing policies offline: off-policy value (IPS, SNIPS, DR) and estimated regret.

    from routers.ope import evaluate
    results = evaluate(log, policy)  # log: [(context, logged_arm, logged_propensity, reward), ...]
    results["dr"].estimate, results["dr"].low, results["dr"].high

The target is any policy with ``action_probs(context) -> {arm: prob}`` (every learning policy has
one, and it never changes the policy) or such a function. Each estimate carries a seeded
percentile-bootstrap interval over ``n_boot`` resamples of the log, computed as one vectorised
gather per chunk of resamples. The doubly-robust reward model (per (category, arm) mean reward,
backing off to the arm's mean, then the global mean) is fitted once on the whole log and held
fixed across resamples, so the interval ignores the model's own fitting noise.

``estimated_regret(policy, pulls)`` prices a sequence of pulls for leaderboards with the policy's
own posterior or empirical means. Not run directly; see ``evals/bench/bandit.py`` and ``tests/test_ope.py``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from routers.base import Context
from routers.stats import UnknownArm, check_reward

Logged = tuple[Context, str, float, float]
"""One logged decision: ``(context, logged_arm, logged_propensity, reward)``."""
RewardModel = Callable[[Context, str], float]
Target = Any
"""A policy with ``action_probs(context)``, or a function ``context -> {arm: probability}``."""

_CHUNK = 2_000_000  # resampled indices held in memory at once


@dataclass(frozen=True)
class Estimate:
    """A policy-value estimate with its bootstrap interval."""

    estimator: str
    estimate: float
    low: float
    high: float
    n: int
    """Logged decisions used."""
    ess: float
    """Effective sample size of the importance weights, (Σw)² / Σw²."""


@dataclass(frozen=True)
class _Prepared:
    contexts: list[Context]
    arms: list[str]
    probs: list[Mapping[str, float]]  # the target's action probabilities per logged context
    w: np.ndarray  # importance weights π(a_i | x_i) / μ_i
    r: np.ndarray


def _prepare(log: Iterable[Logged], target: Target) -> _Prepared:
    probs_of = getattr(target, "action_probs", target)
    contexts, arms, probs, w, r = [], [], [], [], []
    for i, (context, arm, propensity, reward) in enumerate(log):
        if not 0.0 < float(propensity) <= 1.0:
            raise ValueError(f"logged propensity must be in (0, 1], got {propensity!r} at row {i}")
        p = probs_of(context)
        if any(v < 0 for v in p.values()) or abs(sum(p.values()) - 1.0) > 1e-6:
            raise ValueError(f"target action probabilities must be >= 0 and sum to 1, got {p}")
        contexts.append(context)
        arms.append(arm)
        probs.append(p)
        w.append(p.get(arm, 0.0) / float(propensity))
        r.append(check_reward(reward))
    if not arms:
        raise ValueError("off-policy evaluation needs at least one logged decision")
    return _Prepared(contexts, arms, probs, np.array(w), np.array(r))


def fit_reward_model(log: Iterable[Logged]) -> RewardModel:
    """Per (category, arm) mean reward on the log, backing off to the arm's, then the global mean."""
    cell: dict[tuple[Any, str], list[float]] = defaultdict(list)
    by_arm: dict[str, list[float]] = defaultdict(list)
    every: list[float] = []
    for context, arm, _, reward in log:
        cell[(context.get("category"), arm)].append(float(reward))
        by_arm[arm].append(float(reward))
        every.append(float(reward))
    means = {k: float(np.mean(v)) for k, v in cell.items()}
    arm_means = {k: float(np.mean(v)) for k, v in by_arm.items()}
    default = float(np.mean(every)) if every else 0.5

    def model(context: Context, arm: str) -> float:
        got = means.get((context.get("category"), arm))
        return got if got is not None else arm_means.get(arm, default)

    return model


def _estimate(
    name: str, num: np.ndarray, den: np.ndarray, w: np.ndarray, n_boot: int, seed: int, level: float
) -> Estimate:
    """Σnum / Σden on the log, with a percentile interval over bootstrap resamples of rows."""
    if not 0.0 < level < 1.0 or n_boot < 1:
        raise ValueError("need 0 < level < 1 and n_boot >= 1")
    n = num.size
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    step = max(1, _CHUNK // n)
    with np.errstate(invalid="ignore", divide="ignore"):
        for start in range(0, n_boot, step):
            idx = rng.integers(0, n, size=(min(step, n_boot - start), n))
            stats[start : start + len(idx)] = num[idx].sum(axis=1) / den[idx].sum(axis=1)
        point = float(num.sum() / den.sum()) if den.sum() > 0 else float("nan")
    tail = (1.0 - level) / 2.0 * 100.0
    finite = stats[np.isfinite(stats)]
    low, high = np.percentile(finite, [tail, 100.0 - tail]) if finite.size else (np.nan, np.nan)
    ess = float(w.sum() ** 2 / (w**2).sum()) if (w > 0).any() else 0.0
    return Estimate(name, point, float(low), float(high), n, ess)


def evaluate(
    log: Iterable[Logged],
    target: Target,
    *,
    reward_model: RewardModel | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Estimate]:
    """IPS, self-normalised IPS and doubly-robust estimates of ``target``'s value on ``log``."""
    log = list(log)
    d = _prepare(log, target)
    q = reward_model or fit_reward_model(log)
    # DR: the model's prediction for the target's whole action distribution, corrected by the
    # importance-weighted residual of the logged arm.
    direct = np.array(
        [sum(p * q(c, a) for a, p in ps.items()) for c, ps in zip(d.contexts, d.probs, strict=True)]
    )
    q_logged = np.array([q(c, a) for c, a in zip(d.contexts, d.arms, strict=True)])
    ones = np.ones_like(d.w)
    wr = d.w * d.r
    return {
        "ips": _estimate("ips", wr, ones, d.w, n_boot, seed, level),
        "snips": _estimate("snips", wr, d.w, d.w, n_boot, seed, level),
        "dr": _estimate("dr", direct + d.w * (d.r - q_logged), ones, d.w, n_boot, seed, level),
    }


def ips(log: Iterable[Logged], target: Target, **kw: Any) -> Estimate:
    """Inverse propensity scoring: mean of w·r (unbiased when logged propensities are right)."""
    return evaluate(log, target, **kw)["ips"]


def snips(log: Iterable[Logged], target: Target, **kw: Any) -> Estimate:
    """Self-normalised IPS: Σ w·r / Σ w (slightly biased, much lower variance)."""
    return evaluate(log, target, **kw)["snips"]


def dr(log: Iterable[Logged], target: Target, **kw: Any) -> Estimate:
    """Doubly robust: reward model plus importance-weighted residual (see ``evaluate``)."""
    return evaluate(log, target, **kw)["dr"]


def estimated_regret(policy: Any, pulls: Iterable[tuple[Context, str]]) -> float:
    """Σ over pulls of (best arm's mean − pulled arm's mean) under ``policy.means(context)``.

    With a learned policy's posterior (Thompson) or empirical means (UCB1, ε-greedy, LinUCB), an
    estimate of what routing ``pulls`` cost against always picking the best arm.
    """
    total = 0.0
    for context, arm in pulls:
        means = policy.means(context)
        if arm not in means:
            raise UnknownArm(f"unknown arm {arm!r}; arms: {list(means)}")
        total += max(means.values()) - means[arm]
    return total
