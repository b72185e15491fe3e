"""Router evaluation over cached arm outputs: cost-quality curves, APGR, CPT and bandit replay.

    from evals.routing import cost_quality_curve, apgr, cpt, replay_bandit
    rows = [{"example_id": "q1", "category": "multi_hop", "arm": "rag", "score": 1.0,
             "cost": 2.1}, ...]                       # every arm's cached output per example
    curve = cost_quality_curve(rows, router_scores)   # router_scores: {example_id: P(strong wins)}
    apgr(curve), cpt(curve, 0.5), cpt(curve, 0.8)
    replay_bandit(rows, "thompson", seed=0, rounds=5000).total_regret

Following RouteLLM (Ong et al., 2024): the weak arm is the cheapest (lowest mean cost), the strong
arm the best (highest mean score). A threshold router sends a question to the strong arm when its
score (the predicted probability that the strong arm wins) is >= the threshold; sweeping the
threshold over every distinct score traces (share of strong calls, quality) points, joined by
straight lines (mixing two thresholds at random reaches any point between them). PGR, the
performance gap recovered, is ``(quality − weak) / (strong − weak)``; APGR is its area over
strong-call share in [0, 1] (a random router scores 0.5); CPT(x) is the least strong-call share
whose PGR reaches x. Bandit replay samples examples with replacement and charges each pick the
pseudo-regret against the per-category best arm of the whole table.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from routers import Policy, build_policy

log = logging.getLogger(__name__)

Row = Mapping[str, Any]
"""``{example_id, category, arm, score (0–1), cost}``: one arm's cached output on one example."""


@dataclass(frozen=True)
class Table:
    """Cached outputs as example × arm matrices; only examples that every arm answered."""

    examples: list[str]
    categories: list[str]
    arms: list[str]
    score: np.ndarray
    cost: np.ndarray

    @classmethod
    def from_rows(cls, rows: Iterable[Row]) -> Table:
        cells: dict[tuple[str, str], tuple[float, float]] = {}
        category: dict[str, str] = {}
        for i, r in enumerate(rows):
            ex, arm, score = str(r["example_id"]), str(r["arm"]), float(r["score"])
            if not 0.0 <= score <= 1.0:
                raise ValueError(f"row {i}: score must be in [0, 1], got {r['score']!r}")
            if (ex, arm) in cells:
                raise ValueError(f"row {i}: arm {arm!r} appears twice for example {ex!r}")
            cells[(ex, arm)] = (score, float(r.get("cost", 0.0)))
            category.setdefault(ex, str(r.get("category", "general")))
        arms = sorted({a for _, a in cells})
        examples = [e for e in category if all((e, a) in cells for a in arms)]
        if len(examples) < len(category):
            log.warning(
                "routing: %d examples lack some arm and are left out", len(category) - len(examples)
            )
        if not examples:
            raise ValueError("no example has a cached output for every arm")
        score = np.array([[cells[(e, a)][0] for a in arms] for e in examples])
        cost = np.array([[cells[(e, a)][1] for a in arms] for e in examples])
        return cls(examples, [category[e] for e in examples], arms, score, cost)

    def weak_strong(self) -> tuple[str, str]:
        """RouteLLM's pair: the cheapest arm (ties: better) and the best arm (ties: cheaper)."""
        s, c = self.score.mean(axis=0), self.cost.mean(axis=0)
        weak = min(range(len(self.arms)), key=lambda j: (c[j], -s[j]))
        strong = min(range(len(self.arms)), key=lambda j: (-s[j], c[j]))
        return self.arms[weak], self.arms[strong]


@dataclass(frozen=True)
class CurvePoint:
    threshold: float
    strong_share: float
    quality: float
    cost: float
    pgr: float


@dataclass(frozen=True)
class Curve:
    """Quality and cost of a threshold router between ``weak`` and ``strong``, by strong share."""

    weak: str
    strong: str
    weak_quality: float
    strong_quality: float
    points: list[CurvePoint] = field(default_factory=list)


def cost_quality_curve(
    rows: Iterable[Row] | Table,
    router_scores: Mapping[str, float],
    weak: str | None = None,
    strong: str | None = None,
) -> Curve:
    """Sweep the router's threshold over every distinct score (see the module docstring)."""
    table = rows if isinstance(rows, Table) else Table.from_rows(rows)
    default_weak, default_strong = table.weak_strong()
    weak, strong = weak or default_weak, strong or default_strong
    if weak == strong:
        raise ValueError(f"the cheapest arm {weak!r} is also the best: there is no gap to route")
    keep = [i for i, e in enumerate(table.examples) if e in router_scores]
    if not keep:
        raise ValueError("the router scored none of the table's examples")
    if len(keep) < len(table.examples):
        log.warning("routing: %d examples have no router score", len(table.examples) - len(keep))
    w, s = table.arms.index(weak), table.arms.index(strong)
    qw, qs = table.score[keep, w], table.score[keep, s]
    cw, cs = table.cost[keep, w], table.cost[keep, s]
    r = np.array([float(router_scores[table.examples[i]]) for i in keep])
    weak_q, strong_q = float(qw.mean()), float(qs.mean())
    gap = strong_q - weak_q
    if gap <= 0:
        raise ValueError(f"{strong!r} does not beat {weak!r} on the scored examples")
    points = []
    for t in [np.inf, *sorted(set(r.tolist()), reverse=True)]:
        to_strong = r >= t
        q = float(np.where(to_strong, qs, qw).mean())
        cost = float(np.where(to_strong, cs, cw).mean())
        points.append(CurvePoint(float(t), float(to_strong.mean()), q, cost, (q - weak_q) / gap))
    return Curve(weak, strong, weak_q, strong_q, points)


def apgr(curve: Curve) -> float:
    """Average performance gap recovered: the area under PGR over strong-call share [0, 1]."""
    x = np.array([p.strong_share for p in curve.points])
    y = np.array([p.pgr for p in curve.points])
    return float(np.trapezoid(y, x))


def cpt(curve: Curve, x: float) -> float | None:
    """The least share of strong calls whose PGR reaches ``x`` (a fraction: 0.5 for CPT(50%)).

    Interpolates between thresholds; ``None`` when the router never recovers that much.
    """
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"give x as a fraction in [0, 1] (0.5 for CPT(50%)), got {x!r}")
    pts = curve.points
    if pts[0].pgr >= x:
        return pts[0].strong_share
    for a, b in zip(pts, pts[1:], strict=False):
        if b.pgr >= x > a.pgr:
            return a.strong_share + (x - a.pgr) / (b.pgr - a.pgr) * (
                b.strong_share - a.strong_share
            )
    return None


# -- bandit replay -------------------------------------------------------------------------------
def category_means(table: Table) -> dict[str, np.ndarray]:
    """Mean score per arm (in ``table.arms`` order) for each category."""
    cats = np.array(table.categories)
    return {c: table.score[cats == c].mean(axis=0) for c in sorted(set(table.categories))}


@dataclass(frozen=True)
class ReplayResult:
    policy: str
    rounds: int
    seed: int
    cumulative_regret: np.ndarray
    """Pseudo-regret after each round: Σ (best arm's category mean − chosen arm's)."""
    mean_reward: float
    oracle_reward: float
    """Mean score the per-category best arm would have earned on the same sampled rounds."""
    oracle: dict[str, str]
    share: dict[str, float]
    """Traffic share per arm over the final window of rounds."""
    share_overall: dict[str, float]

    @property
    def total_regret(self) -> float:
        return float(self.cumulative_regret[-1]) if self.rounds else 0.0


def replay_bandit(
    rows: Iterable[Row] | Table,
    policy_name: str | Policy,
    seed: int = 0,
    rounds: int = 1000,
    *,
    final_window: float = 0.1,
    **options: Any,
) -> ReplayResult:
    """Replay traffic through a policy: each round, a seeded draw of an example (with replacement);
    the policy picks an arm for ``{"category": ...}`` and learns that arm's cached score."""
    table = rows if isinstance(rows, Table) else Table.from_rows(rows)
    if isinstance(policy_name, Policy):
        policy, name = policy_name, type(policy_name).__name__
    else:
        policy, name = build_policy(policy_name, table.arms, seed=seed, **options), policy_name
    means = category_means(table)
    best = {c: int(np.argmax(m)) for c, m in means.items()}
    pos = {a: j for j, a in enumerate(table.arms)}
    draws = np.random.default_rng(seed).integers(0, len(table.examples), size=rounds)
    regret, chosen = np.empty(rounds), np.empty(rounds, dtype=int)
    reward = oracle = 0.0
    for t, i in enumerate(draws):
        cat = table.categories[i]
        context = {"category": cat}
        arm, _ = policy.select(context)
        j = pos[arm]
        r = float(table.score[i, j])
        policy.update(arm, context, r)
        chosen[t], regret[t] = j, means[cat][best[cat]] - means[cat][j]
        reward += r
        oracle += float(table.score[i, best[cat]])
    window = chosen[-max(1, int(round(rounds * final_window))) :] if rounds else chosen

    def share(picks: np.ndarray) -> dict[str, float]:
        counts = np.bincount(picks, minlength=len(table.arms)) / max(1, picks.size)
        return {a: float(counts[j]) for j, a in enumerate(table.arms)}

    return ReplayResult(
        policy=name,
        rounds=rounds,
        seed=seed,
        cumulative_regret=np.cumsum(regret),
        mean_reward=reward / max(1, rounds),
        oracle_reward=oracle / max(1, rounds),
        oracle={c: table.arms[j] for c, j in best.items()},
        share=share(window),
        share_overall=share(chosen),
    )


# -- the category (prototype) router baseline ----------------------------------------------------
def fit_category_router(rows: Iterable[Row] | Table) -> dict[str, str]:
    """Each category's best arm by mean score (ties: the cheaper)."""
    table = rows if isinstance(rows, Table) else Table.from_rows(rows)
    cats = np.array(table.categories)
    out = {}
    for c, m in category_means(table).items():
        cost = table.cost[cats == c].mean(axis=0)
        out[c] = table.arms[min(range(len(m)), key=lambda j: (-m[j], cost[j]))]
    return out


def category_router_scores(rows: Iterable[Row] | Table, weak: str, strong: str) -> dict[str, float]:
    """Per category, how often ``strong`` beat ``weak`` (ties count half): a router score."""
    table = rows if isinstance(rows, Table) else Table.from_rows(rows)
    w, s = table.arms.index(weak), table.arms.index(strong)
    win = (table.score[:, s] > table.score[:, w]) + 0.5 * (table.score[:, s] == table.score[:, w])
    cats = np.array(table.categories)
    return {c: float(win[cats == c].mean()) for c in sorted(set(table.categories))}


def split_rows(rows: Iterable[Row], held_out: float, seed: int) -> tuple[list[Row], list[Row]]:
    """Split rows by example id with a seeded hash, so all arms of an example stay together."""
    rows = list(rows)
    ids = sorted({str(r["example_id"]) for r in rows})
    ranked = sorted(ids, key=lambda e: hashlib.sha256(f"{seed}:{e}".encode()).hexdigest())
    test = set(ranked[: round(len(ids) * held_out)])
    return [r for r in rows if str(r["example_id"]) not in test], [
        r for r in rows if str(r["example_id"]) in test
    ]


def category_router_baseline(
    rows: Iterable[Row], held_out: float = 0.5, seed: int = 0
) -> dict[str, Any]:
    """Fit the category router on one part of the examples and score it on the other.

    Returns the assignment, its held-out quality and cost, each single arm's, and the
    per-example oracle's (the best arm for each question, an upper bound).
    """
    train, test = split_rows(rows, held_out, seed)
    if not train or not test:
        raise ValueError("the split left no example on one side; use more examples")
    assignment = fit_category_router(train)
    table = Table.from_rows(test)
    fallback = table.arms[int(np.argmax(Table.from_rows(train).score.mean(axis=0)))]
    j = np.array([table.arms.index(assignment.get(c, fallback)) for c in table.categories])
    rows_i = np.arange(len(table.examples))
    return {
        "assignment": assignment,
        "quality": float(table.score[rows_i, j].mean()),
        "cost": float(table.cost[rows_i, j].mean()),
        "arms": {
            a: {"quality": float(table.score[:, k].mean()), "cost": float(table.cost[:, k].mean())}
            for k, a in enumerate(table.arms)
        },
        "oracle_quality": float(table.score.max(axis=1).mean()),
        "n_train": len({str(r["example_id"]) for r in train}),
        "n_test": len(table.examples),
    }
