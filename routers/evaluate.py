"""Off-policy evaluation over the store's logged decisions (``armada routers evaluate``).

The log is every route decision that has votes: (context, the arm the policy chose, its
propensity, the mean reward of the votes). A candidate learning policy is first fitted on the
same votes (a fold, as in serving), then its action probabilities are scored with IPS, SNIPS and
DR. Fitting and scoring on one log is optimistic for learning policies; for fixed or uniform
targets the estimate is unbiased.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlmodel import select

from core.store import Feedback, RouteDecision, Store
from routers import build_policy
from routers.ope import Estimate, Logged, evaluate


def logged_decisions(store: Store) -> list[Logged]:
    rewards: dict[str, list[float]] = defaultdict(list)
    with store.session() as s:
        for f in s.exec(select(Feedback)):
            rewards[f.interaction_id].append(float(f.reward))
        decisions = list(s.exec(select(RouteDecision).order_by(RouteDecision.id)))
    out: list[Logged] = []
    for d in decisions:
        r = rewards.get(d.interaction_id)
        # Pinned arms ("override") were not the policy's choice: they carry no propensity.
        if r and d.policy != "override" and d.propensity > 0:
            out.append((dict(d.context), d.arm, float(d.propensity), sum(r) / len(r)))
    return out


def offline_evaluate(
    rt: Any,
    log: list[Logged],
    policy: str,
    options: dict[str, Any],
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Estimate]:
    arms = rt.enabled_arms()
    target = build_policy(policy, arms, seed=seed, **options)
    if hasattr(target, "rebuild"):
        events = rt.store.feedback_events()
        target.rebuild((e.arm, e.context, e.reward) for e in events)
    if not hasattr(target, "action_probs"):
        raise ValueError(f"policy {policy!r} cannot give action probabilities")
    return evaluate(log, target, n_boot=n_boot, seed=seed)
