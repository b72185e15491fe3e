"""Leaderboard data: how each arm is doing, overall and per question category.

One function, ``leaderboard(store)``, feeds ``armada leaderboard``, ``GET /v1/leaderboard`` and the
UI's leaderboard page, so they always agree. Per arm: pulls (questions it answered), votes, mean
reward with a 95% Wilson interval, traffic share over time, and the estimated regret of the
traffic it received (Σ over its pulls of the best arm's mean reward in that category minus its own).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from datetime import datetime
from typing import Any

from sqlmodel import select

from core.store import Interaction, RouteDecision, Store

Z95 = 1.959963984540054


def wilson(mean: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a mean of rewards in [0, 1] over n votes ((0, 1) when n = 0)."""
    if n <= 0:
        return 0.0, 1.0
    denom = 1 + z * z / n
    centre = (mean + z * z / (2 * n)) / denom
    half = z * math.sqrt(mean * (1 - mean) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _bucket(ts: datetime, span_s: float) -> str:
    return ts.strftime("%Y-%m-%d %H:00" if span_s < 3 * 86400 else "%Y-%m-%d")


def _cell(n: int, total: float, pulls: int) -> dict[str, Any]:
    mean = total / n if n else None
    lo, hi = wilson(mean or 0.0, n)
    return {"pulls": pulls, "votes": n, "mean_reward": mean, "ci95": [lo, hi]}


def leaderboard(store: Store, arms: list[str] | None = None) -> dict[str, Any]:
    """Per-arm and per-category statistics, traffic share over time and estimated regret."""
    stats = store.arm_stats()
    with store.session() as s:
        rows = list(
            s.exec(
                select(Interaction.arm, Interaction.created_at, RouteDecision.context).join(
                    RouteDecision,
                    RouteDecision.interaction_id == Interaction.id,
                    isouter=True,
                )
            )
        )
    names = list(arms or [a.name for a in store.arms()])
    for arm, *_ in rows:
        if arm not in names:
            names.append(arm)

    pulls: Counter[tuple[str, str]] = Counter()
    for arm, _, ctx in rows:
        pulls[(arm, str((ctx or {}).get("category") or "*"))] += 1
    cats = sorted({c for _, c in pulls} | {c for _, c in stats})

    def votes(arm: str, cat: str | None) -> tuple[int, float]:
        cells = [v for (a, c), v in stats.items() if a == arm and (cat is None or c == cat)]
        return sum(v[0] for v in cells), sum(v[1] for v in cells)

    # Estimated regret: best voted mean in the category minus the pulled arm's mean (or the
    # category's overall mean when that arm has no votes there).
    regret: dict[str, float] = defaultdict(float)
    for cat in cats:
        means = {}
        for arm in names:
            n, t = votes(arm, cat)
            if n:
                means[arm] = t / n
        if not means:
            continue
        best, fallback = max(means.values()), sum(means.values()) / len(means)
        for arm in names:
            regret[arm] += pulls[(arm, cat)] * (best - means.get(arm, fallback))

    total_pulls = sum(pulls.values())
    table = []
    for arm in names:
        n, t = votes(arm, None)
        p = sum(v for (a, _), v in pulls.items() if a == arm)
        row = {"arm": arm, **_cell(n, t, p)}
        row["traffic_share"] = p / total_pulls if total_pulls else 0.0
        row["estimated_regret"] = round(regret[arm], 4)
        row["categories"] = {
            c: _cell(*votes(arm, c), pulls[(arm, c)])
            for c in cats
            if pulls[(arm, c)] or votes(arm, c)[0]
        }
        table.append(row)
    table.sort(key=lambda r: (r["mean_reward"] is None, -(r["mean_reward"] or 0), r["arm"]))

    over_time: dict[str, dict[str, float]] = {}
    if rows:
        times = [ts for _, ts, _ in rows]
        span = (max(times) - min(times)).total_seconds()
        per: dict[str, Counter[str]] = defaultdict(Counter)
        for arm, ts, _ in rows:
            per[_bucket(ts, span)][arm] += 1
        for b in sorted(per):
            tot = sum(per[b].values())
            over_time[b] = {a: per[b][a] / tot for a in names if per[b][a]}
    return {
        "arms": table,
        "categories": cats,
        "traffic_over_time": over_time,
        "total_pulls": total_pulls,
        "total_votes": sum(v[0] for v in stats.values()),
    }
