"""``armada eval routers --cache DIR``: evaluate routing on a harness run's cached outputs.

Rows come from ``DIR/report.json`` (each question's headline score and cost per arm; only questions
every arm answered count). On a seeded half of the questions a category router is fitted (each
category's best arm) and the threshold router's scores (per category, how often the strong arm
beat the weak one); both are measured on the other half: APGR, CPT(50%), CPT(80%) and quality/cost
against every single arm and the per-question oracle. Bandit policies are replayed over all
questions (``evals.routing.replay_bandit``). The computations are ``evals/routing.py``'s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evals.routing import (
    Table,
    apgr,
    category_router_baseline,
    category_router_scores,
    cost_quality_curve,
    cpt,
    replay_bandit,
    split_rows,
)

REPLAY_POLICIES = ("uniform", "egreedy", "ucb1", "thompson")


def rows_from_report(report: dict[str, Any], cost: str = "latency_s") -> list[dict[str, Any]]:
    """``{example_id, category, arm, score, cost}`` per answered (question, arm)."""
    if cost not in ("latency_s", "tokens"):
        raise ValueError(f"cost must be latency_s or tokens, got {cost!r}")
    rows = []
    for q in report.get("questions", []):
        for arm, a in q.get("answers", {}).items():
            if a.get("score") is None:
                continue
            c = (a.get("latency_ms") or 0.0) / 1000 if cost == "latency_s" else a.get("tokens") or 0
            rows.append(
                {
                    "example_id": f"{q['dataset']}:{q['id']}",
                    "category": q.get("category", "general"),
                    "arm": arm,
                    "score": float(a["score"]),
                    "cost": float(c),
                }
            )
    return rows


def evaluate_routers(
    cache: Path, rounds: int = 2000, seed: int = 0, cost: str = "latency_s"
) -> dict[str, Any]:
    """Router figures for the run in ``cache`` (a folder holding ``report.json``)."""
    path = Path(cache) / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: run `armada eval … --out {cache}` first")
    rows = rows_from_report(json.loads(path.read_text()), cost)
    table = Table.from_rows(rows)
    weak, strong = table.weak_strong()
    result: dict[str, Any] = {
        "examples": len(table.examples),
        "arms": table.arms,
        "cost": cost,
        "weak": weak,
        "strong": strong,
        "mean_score": dict(zip(table.arms, table.score.mean(axis=0).tolist(), strict=True)),
        "mean_cost": dict(zip(table.arms, table.cost.mean(axis=0).tolist(), strict=True)),
    }
    try:
        result["category_router"] = category_router_baseline(rows, held_out=0.5, seed=seed)
    except ValueError as e:
        result["category_router"] = {"error": str(e)}
    try:
        train, test = split_rows(rows, held_out=0.5, seed=seed)
        by_cat = category_router_scores(train, weak, strong)
        test_table = Table.from_rows(test)
        scores = {
            e: by_cat.get(c, 0.5)
            for e, c in zip(test_table.examples, test_table.categories, strict=True)
        }
        curve = cost_quality_curve(test_table, scores, weak, strong)
        result["threshold_router"] = {
            "router": "category win rate of strong over weak (fitted on the other half)",
            "apgr": apgr(curve),
            "cpt50": cpt(curve, 0.5),
            "cpt80": cpt(curve, 0.8),
            "weak_quality": curve.weak_quality,
            "strong_quality": curve.strong_quality,
            "points": [p.__dict__ for p in curve.points],
        }
    except ValueError as e:  # e.g. the cheapest arm is also the best: nothing to route
        result["threshold_router"] = {"error": str(e)}
    result["replay"] = {}
    for name in REPLAY_POLICIES:
        r = replay_bandit(table, name, seed=seed, rounds=rounds)
        result["replay"][name] = {
            "rounds": r.rounds,
            "total_regret": r.total_regret,
            "mean_reward": r.mean_reward,
            "oracle_reward": r.oracle_reward,
            "final_share": r.share,
        }
    result["oracle"] = r.oracle if REPLAY_POLICIES else {}
    return result


def render_routers(result: dict[str, Any]) -> str:
    """A short Markdown summary of ``evaluate_routers``'s result."""
    lines = [
        f"# Router evaluation ({result['examples']} questions; cost = {result['cost']})",
        "",
        f"weak (cheapest): {result['weak']}; strong (best): {result['strong']}",
        "",
        "| arm | mean score | mean cost |",
        "|---|---|---|",
    ]
    for a in result["arms"]:
        lines.append(f"| {a} | {result['mean_score'][a]:.3f} | {result['mean_cost'][a]:.3f} |")
    tr = result["threshold_router"]
    lines += ["", "Threshold router: " + (tr.get("error") or "")]
    if "apgr" in tr:
        fmt = lambda x: "never" if x is None else f"{x:.2f}"  # noqa: E731
        lines[-1] += (
            f"APGR {tr['apgr']:.3f}, CPT(50%) {fmt(tr['cpt50'])}, CPT(80%) {fmt(tr['cpt80'])}"
        )
    cr = result["category_router"]
    if "quality" in cr:
        lines += [
            f"Category router (held-out n={cr['n_test']}): quality {cr['quality']:.3f}, cost "
            f"{cr['cost']:.3f}, oracle {cr['oracle_quality']:.3f}; assignment {cr['assignment']}"
        ]
    lines += [
        "",
        "| policy | regret | mean reward | oracle reward | final share |",
        "|---|---|---|---|---|",
    ]
    for name, r in result["replay"].items():
        share = ", ".join(f"{a} {s:.2f}" for a, s in r["final_share"].items())
        lines.append(
            f"| {name} | {r['total_regret']:.1f} | {r['mean_reward']:.3f} | "
            f"{r['oracle_reward']:.3f} | {share} |"
        )
    return "\n".join(lines) + "\n"
