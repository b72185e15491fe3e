"""Pure data shaping for the pages: posterior curves, reward over time, eval runs, Pareto fronts.

No Streamlit and no I/O here, so each function is tested on its own. Evaluation runs are read from
the ``eval_run`` table; until the evaluation harness writes them, this is the shape they must have
(every key optional except ``metrics.arms``)::

    EvalRun.config  = {"dataset": "hotpotqa", "n": 200, "seed": 0, "judge": "…", "kind": "eval"}
    EvalRun.metrics = {
      "arms": {                                   # one entry per arm evaluated
        "rag": {"f1": 0.41, "em": 0.30, "judge": 0.55,           # quality, in [0, 1]
                "latency_ms": 812.0, "train_time_s": 0.0, "adapter_mb": 0.0,   # costs
                "ci95": {"f1": [0.37, 0.45]}},                   # optional intervals
      },
      "questions": [                              # optional: the drill-down
        {"id": "q1", "question": "…", "reference": "…",
         "answers": {"rag": {"answer": "…", "score": 1.0, "judge_reason": "…"}}},
      ],
    }

A nightly training run is an ``EvalRun`` whose ``config["kind"]`` is ``"nightly"``; its metrics may
add ``"candidate"``, ``"champion"`` and ``"decision"`` (``"promoted"`` or ``"rejected"``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import numpy as np

COST_AXES = {
    "latency_ms": "latency (ms)",
    "train_time_s": "training time (s)",
    "adapter_mb": "adapter size (MB)",
}
"""Cost keys of an arm's eval metrics, with their axis labels (lower is better)."""
NOT_QUALITY = {*COST_AXES, "n", "ci95", "memory_mb", "peak_rss_mb", "tokens"}


def beta_pdf(a: float, b: float, x: np.ndarray) -> np.ndarray:
    """The Beta(a, b) density at ``x`` (0 < x < 1), through log-gamma for stability."""
    log_norm = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    return np.exp(log_norm + (a - 1.0) * np.log(x) + (b - 1.0) * np.log1p(-x))


def posterior_curves(params: Mapping[str, tuple[float, float]], points: int = 201) -> list[dict]:
    """Rows ``{"reward", "density", "arm"}`` tracing each arm's Beta posterior over (0, 1)."""
    x = np.linspace(0.0, 1.0, points)[1:-1]  # the density can be infinite at the ends
    rows = []
    for arm, (a, b) in params.items():
        for xi, yi in zip(x.tolist(), beta_pdf(a, b, x).tolist(), strict=True):
            rows.append({"reward": round(xi, 4), "density": yi, "arm": arm})
    return rows


def posteriors_from_stats(
    stats: Mapping[tuple[str, str], tuple[int, float, float]],
    arms: Iterable[str],
    category: str | None = None,
) -> dict[str, tuple[float, float]]:
    """Beta(1 + Σr, 1 + n − Σr) per arm from the kept arm statistics (all categories if None)."""
    out = {}
    for arm in arms:
        cells = [v for (a, c), v in stats.items() if a == arm and category in (None, c)]
        n, s = sum(v[0] for v in cells), sum(v[1] for v in cells)
        out[arm] = (1.0 + s, 1.0 + n - s)
    return out


def reward_over_time(votes: Iterable[tuple[datetime, str, float]]) -> list[dict]:
    """Each arm's running mean reward after each of its votes: rows ``{"time", "arm", "mean
    reward", "votes"}`` (votes in time order)."""
    totals: dict[str, tuple[int, float]] = {}
    rows = []
    for ts, arm, reward in sorted(votes, key=lambda v: v[0]):
        n, s = totals.get(arm, (0, 0.0))
        n, s = n + 1, s + float(reward)
        totals[arm] = (n, s)
        rows.append({"time": ts, "arm": arm, "mean reward": s / n, "votes": n})
    return rows


def traffic_rows(over_time: Mapping[str, Mapping[str, float]]) -> list[dict]:
    """``leaderboard()["traffic_over_time"]`` as long rows ``{"time", "arm", "share"}``."""
    return [
        {"time": bucket, "arm": arm, "share": share}
        for bucket, shares in over_time.items()
        for arm, share in shares.items()
    ]


def pareto_front(points: Mapping[str, tuple[float, float]]) -> list[str]:
    """Names of the points no other point beats: ``(cost, quality)``, lower cost and higher quality
    better. Returned in increasing cost."""
    ordered = sorted(points.items(), key=lambda kv: (kv[1][0], -kv[1][1], kv[0]))
    front, best = [], -math.inf
    for name, (_, quality) in ordered:
        if quality > best:
            front.append(name)
            best = quality
    return front


def eval_arm_rows(metrics: Mapping[str, Any]) -> list[dict]:
    """One row per arm of an eval run's ``metrics["arms"]``: the arm, then its numbers."""
    rows = []
    for arm, m in (metrics.get("arms") or {}).items():
        if not isinstance(m, Mapping):
            continue
        row: dict[str, Any] = {"arm": str(arm)}
        for key, value in m.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                row[str(key)] = float(value)
        for key, (lo, hi) in (m.get("ci95") or {}).items():
            row[f"{key} 95% CI"] = f"[{lo:.3f}, {hi:.3f}]"
        rows.append(row)
    return rows


def quality_keys(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The numeric keys of the arm rows that measure quality (not cost or counts)."""
    keys: dict[str, None] = {}
    for row in rows:
        for k, v in row.items():
            if k != "arm" and k not in NOT_QUALITY and isinstance(v, float):
                keys[k] = None
    return list(keys)


def checksum_state(sha256: str, folder_exists: bool) -> str:
    """What the page can say about an adapter's integrity without reading its files."""
    if not folder_exists:
        return "folder missing"
    if not sha256:
        return "no checksum"
    return f"recorded {sha256[:12]}…"
