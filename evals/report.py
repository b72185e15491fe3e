"""Turn cached answers into the evaluation report: tables with intervals, paired tests, costs.

``build_report`` is pure (records in, a JSON-ready dict out); ``write_outputs`` writes
``report.json``, ``report.md`` and ``cost_quality.png``. The dict's ``arms`` and ``questions`` keys
follow the shape the Evaluations page reads (``app/ui/metrics.py``); the rest is the full detail:

    datasets.<kind>.arms.<arm>.metrics.<metric> = {"mean", "ci95": [lo, hi], "n"}
    datasets.<kind>.arms.<arm>.cost = {"latency_ms": {node: {"p50", "p95"}}, "tokens_in", …}
    datasets.<kind>.paired = [{"metric", "a", "b", "n", "diff", "low", "high", "p_bootstrap",
                               "a_only", "b_only", "p_mcnemar"}]
    datasets.<kind>.categories.<category>.<arm> = {"mean", "ci95", "n"}   (headline metric)

A cell built from a partial cache carries its own ``n``; ``complete`` says whether every
(arm, question) was answered.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.datasets import Example
from core.store.tables import utcnow
from evals.judge import pointwise_agreement
from evals.scoring import BINARY, label_of, primary_metric, score_record, subcategory
from evals.stats import bootstrap_macro_f1, bootstrap_mean, compare, percentile, stable_seed

if TYPE_CHECKING:
    from evals.harness import EvalConfig

NODES_ORDER = ("retrieve", "route", "generate", "fallback", "total", "wall")


def _clean(x: Any) -> Any:
    """NaN → None, so the JSON is standard."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def _cost(rows: list[dict[str, Any]], facts: Mapping[str, Any]) -> dict[str, Any]:
    nodes: dict[str, list[float]] = {}
    for r in rows:
        for node, ms in (r.get("latency_ms") or {}).items():
            nodes.setdefault(node, []).append(float(ms))
    ordered = sorted(nodes, key=lambda k: (NODES_ORDER.index(k) if k in NODES_ORDER else 99, k))
    tokens_in = [float((r.get("usage") or {}).get("prompt_tokens", 0)) for r in rows]
    tokens_out = [float((r.get("usage") or {}).get("completion_tokens", 0)) for r in rows]
    rss = [float(r["peak_rss_mb"]) for r in rows if r.get("peak_rss_mb") is not None]
    vram = [float(r["vram_mb"]) for r in rows if r.get("vram_mb") is not None]
    return {
        "n": len(rows),
        "latency_ms": {
            k: {"p50": percentile(nodes[k], 50), "p95": percentile(nodes[k], 95)} for k in ordered
        },
        "tokens_in": sum(tokens_in) / len(rows) if rows else None,
        "tokens_out": sum(tokens_out) / len(rows) if rows else None,
        "peak_rss_mb": max(rss) if rss else None,
        "vram_mb": max(vram) if vram else None,
        "failures": sum(r.get("status") != "ok" for r in rows),
        "train_time_s": facts.get("train_time_s"),
        "adapter_mb": facts.get("adapter_mb"),
    }


def _cell(
    examples: list[Example],
    records: Mapping[str, dict[str, Any]],
    key_of: Callable[[str, Example], str],
    arm: str,
    facts: Mapping[str, Any],
    judged: Mapping[str, dict[str, Any]] | None,
) -> tuple[list[tuple[Example, dict[str, Any], dict[str, float | None]]], dict[str, Any]]:
    rows = []
    for e in examples:
        rec = records.get(key_of(arm, e))
        if rec is None:
            continue
        scores = score_record(e, rec, retrieves=facts["retrieves"])
        if judged is not None and rec["key"] in judged:
            scores["judge"] = judged[rec["key"]].get("score")
        rows.append((e, rec, scores))
    return rows, _cost([r for _, r, _ in rows], facts)


def build_report(
    cfg: EvalConfig,
    by_ds: Mapping[str, list[Example]],
    records: Mapping[str, dict[str, Any]],
    facts: Mapping[str, Mapping[str, Any]],
    judged: Mapping[str, dict[str, Any]] | None = None,
    stress: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report for ``cfg`` from cached ``records`` (keyed as ``harness.cache_key``)."""
    from evals.cache import cache_key

    def key_of(arm: str, e: Example) -> str:
        return cache_key(arm, e, facts[arm]["settings_hash"])

    datasets: dict[str, Any] = {}
    per_arm_scores: dict[str, dict[str, dict[str, float | None]]] = {}
    questions: list[dict[str, Any]] = []
    complete = True
    q_index: dict[tuple[str, str], dict[str, Any]] = {}
    for kind, examples in by_ds.items():
        primary = primary_metric(kind)
        ds: dict[str, Any] = {"n_examples": len(examples), "primary": primary, "arms": {}}
        for e in examples:
            q = {
                "id": e.id,
                "dataset": kind,
                "category": e.category,
                "subcategory": subcategory(e),
                "question": e.question,
                "reference": " | ".join(e.answers),
                "answers": {},
            }
            q_index[(kind, e.id)] = q
            questions.append(q)
        for arm in cfg.arms:
            rows, cost = _cell(examples, records, key_of, arm, facts[arm], judged)
            complete &= len(rows) == len(examples)
            names = list(dict.fromkeys(k for _, _, s in rows for k in s))
            metrics = {}
            for m in names:
                vals = [s[m] for _, _, s in rows if s.get(m) is not None]
                seed = stable_seed(cfg.seed, kind, arm, m)
                metrics[m] = bootstrap_mean(vals, cfg.n_boot, seed).to_dict()  # type: ignore[arg-type]
            if kind == "pubmedqa" and rows:
                preds = [label_of(e, r) or "maybe" for e, r, _ in rows]
                golds = [e.answers[0].strip().lower() for e, _, _ in rows]
                seed = stable_seed(cfg.seed, kind, arm, "macro_f1")
                metrics["macro_f1"] = bootstrap_macro_f1(preds, golds, cfg.n_boot, seed).to_dict()
            ds["arms"][arm] = {"n": len(rows), "metrics": metrics, "cost": cost}
            for e, rec, s in rows:
                per_arm_scores.setdefault(arm, {})[f"{kind}:{e.id}"] = s
                ans: dict[str, Any] = {
                    "answer": rec.get("answer", ""),
                    "score": s.get(primary),
                    "status": rec.get("status"),
                    "latency_ms": (rec.get("latency_ms") or {}).get("total"),
                    "tokens": (rec.get("usage") or {}).get("total_tokens"),
                }
                if judged is not None and rec["key"] in judged:
                    ans["judge_reason"] = judged[rec["key"]].get("reason", "")
                q_index[(kind, e.id)]["answers"][arm] = ans
        ds["paired"] = _paired(cfg, kind, examples, per_arm_scores, primary)
        ds["categories"] = _categories(cfg, kind, examples, per_arm_scores, primary)
        datasets[kind] = ds
    report = {
        "schema": 1,
        "created_at": utcnow().isoformat(),
        "complete": complete,
        "answered": sum(ds["arms"][a]["n"] for ds in datasets.values() for a in cfg.arms),
        "expected": sum(len(x) for x in by_ds.values()) * len(cfg.arms),
        "config": {**cfg.to_dict(), "arm_facts": {a: dict(f) for a, f in facts.items()}},
        "arms": _ui_arms(cfg, datasets, facts),
        "datasets": datasets,
        "questions": questions,
    }
    if judged is not None:
        report["judge"] = _judge_summary(judged, by_ds, per_arm_scores)
    if stress is not None:
        report["stress"] = stress
    return _clean(report)


def _paired(
    cfg: EvalConfig,
    kind: str,
    examples: list[Example],
    scores: Mapping[str, Mapping[str, Mapping[str, float | None]]],
    primary: str,
) -> list[dict[str, Any]]:
    out = []
    wanted = list(dict.fromkeys([primary, "em", "f1", "contains", "accuracy", "judge"]))
    for a, b in combinations(cfg.arms, 2):
        for m in wanted:
            xa, xb = [], []
            for e in examples:
                sa = scores.get(a, {}).get(f"{kind}:{e.id}", {})
                sb = scores.get(b, {}).get(f"{kind}:{e.id}", {})
                if sa.get(m) is not None and sb.get(m) is not None:
                    xa.append(float(sa[m]))  # type: ignore[arg-type]
                    xb.append(float(sb[m]))  # type: ignore[arg-type]
            if not xa:
                continue
            seed = stable_seed(cfg.seed, kind, a, b, m)
            test = compare(m, a, b, xa, xb, cfg.n_boot, seed, binary=m in BINARY)
            out.append(test.to_dict())
    return out


def _categories(
    cfg: EvalConfig,
    kind: str,
    examples: list[Example],
    scores: Mapping[str, Mapping[str, Mapping[str, float | None]]],
    primary: str,
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    cats = sorted({subcategory(e) for e in examples})
    for cat in cats:
        members = [e for e in examples if subcategory(e) == cat]
        out[cat] = {}
        for arm in cfg.arms:
            vals = [
                float(s[primary])  # type: ignore[arg-type]
                for e in members
                if (s := scores.get(arm, {}).get(f"{kind}:{e.id}")) and s.get(primary) is not None
            ]
            seed = stable_seed(cfg.seed, kind, cat, arm, primary)
            out[cat][arm] = bootstrap_mean(vals, cfg.n_boot, seed).to_dict()
    return out


def _ui_arms(
    cfg: EvalConfig, datasets: Mapping[str, Any], facts: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """``metrics.arms`` for the Evaluations page: quality keys, costs and ``ci95`` per arm.

    One dataset: its metrics by name (``f1``, ``em``, …). Several: each dataset's headline metric
    as ``<kind>_<metric>`` plus ``score``, their unweighted mean (each dataset counts once).
    """
    out: dict[str, Any] = {}
    single = len(datasets) == 1
    for arm in cfg.arms:
        row: dict[str, Any] = {"ci95": {}}
        heads, lat, toks, rss, n = [], [], [], [], 0
        for kind, ds in datasets.items():
            cell = ds["arms"][arm]
            n += cell["n"]
            names = list(cell["metrics"]) if single else [ds["primary"]]
            for m in names:
                stat = cell["metrics"].get(m)
                if not stat or not stat["n"]:
                    continue
                key = m if single else f"{kind}_{m}"
                row[key] = stat["mean"]
                row["ci95"][key] = stat["ci95"]
            if (head := cell["metrics"].get(ds["primary"])) and head["n"]:
                heads.append(head["mean"])
            c = cell["cost"]
            if (total := c["latency_ms"].get("total")) and total["p50"] is not None:
                lat.append((total["p50"], cell["n"]))
            if c["tokens_in"] is not None:
                toks.append((c["tokens_in"] + c["tokens_out"], cell["n"]))
            if c["peak_rss_mb"] is not None:
                rss.append(c["peak_rss_mb"])
        if not single and heads:
            row["score"] = sum(heads) / len(heads)
        row["n"] = n
        if lat:
            row["latency_ms"] = sum(v * k for v, k in lat) / max(1, sum(k for _, k in lat))
        if toks:
            row["tokens"] = sum(v * k for v, k in toks) / max(1, sum(k for _, k in toks))
        if rss:
            row["peak_rss_mb"] = max(rss)
        for k in ("train_time_s", "adapter_mb"):
            if facts[arm].get(k) is not None:
                row[k] = facts[arm][k]
        out[arm] = row
    return out


def _judge_summary(
    judged: Mapping[str, dict[str, Any]],
    by_ds: Mapping[str, list[Example]],
    scores: Mapping[str, Mapping[str, Mapping[str, float | None]]],
) -> dict[str, Any]:
    """Unparsed share, mean score, and pass/fail agreement (≥ 0.5) with each dataset's headline
    metric on the gold answers."""
    verdicts = [v.get("score") for v in judged.values()]
    parsed = [s for s in verdicts if s is not None]
    gold: dict[str, Any] = {}
    for kind in by_ds:
        primary = primary_metric(kind)
        pairs = [
            (s["judge"], s[primary])
            for by_example in scores.values()
            for key, s in by_example.items()
            if key.startswith(f"{kind}:") and "judge" in s and s.get(primary) is not None
        ]
        gold[f"{kind}_{primary}"] = pointwise_agreement(
            [j for j, _ in pairs], [g for _, g in pairs]
        )
    return {
        "verdicts": len(verdicts),
        "unparsed": len(verdicts) - len(parsed),
        "unparsed_rate": (len(verdicts) - len(parsed)) / len(verdicts) if verdicts else None,
        "mean_score": sum(parsed) / len(parsed) if parsed else None,
        "agreement_with_gold": gold,
    }


# -- writing ---------------------------------------------------------------------------------------------
def comparable(report: Mapping[str, Any]) -> dict[str, Any]:
    """The report minus what legitimately differs between two runs over the same answers:
    timestamps, the EvalRun id and measured costs (latency, memory), which depend on the machine."""
    drop = {"created_at", "eval_run_id"}
    out = json.loads(json.dumps(report))
    for k in drop:
        out.pop(k, None)
    for ds in out.get("datasets", {}).values():
        for cell in ds["arms"].values():
            cell["cost"] = {k: v for k, v in cell["cost"].items() if k in ("n", "failures")}
    for row in out.get("arms", {}).values():
        for k in ("latency_ms", "peak_rss_mb", "tokens"):
            row.pop(k, None)
    for q in out.get("questions", []):
        for a in q["answers"].values():
            a.pop("latency_ms", None)
    return out


def write_outputs(report: dict[str, Any], out: Path) -> None:
    """``report.json``, ``report.md`` and the cost–performance map ``cost_quality.png``."""
    from evals.markdown import render_markdown
    from evals.plots import cost_quality_plot

    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    png = cost_quality_plot(report, out / "cost_quality.png")
    (out / "report.md").write_text(render_markdown(report, png.name if png else None))
