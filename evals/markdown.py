"""The Markdown rendering of an evaluation report (``report.md``), from the report dict alone."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

LABELS = {
    "em": "EM",
    "f1": "F1",
    "contains": "contains (acc)",
    "accuracy": "accuracy",
    "macro_f1": "macro-F1",
    "rouge_l": "ROUGE-L",
    "mrr": "MRR",
    "faithfulness": "faithfulness",
    "abstained": "abstention",
    "judge": "judge",
}


def _label(metric: str) -> str:
    return LABELS.get(metric, metric)


def _num(x: Any, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _ci(stat: Mapping[str, Any] | None, n: bool = False) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    lo, hi = stat.get("ci95") or (None, None)
    text = f"{stat['mean']:.3f} [{_num(lo)}, {_num(hi)}]"
    return text + (f" n={stat['n']}" if n else "")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines + [""]


def headline_table(report: Mapping[str, Any]) -> list[str]:
    """Arms × datasets on each dataset's headline metric, with 95% intervals and n per cell."""
    ds = report["datasets"]
    arms = list(report["config"]["arms"])
    header = ["arm", *[f"{k} {_label(d['primary'])}" for k, d in ds.items()], "latency p50 (s)"]
    rows = []
    for arm in arms:
        cells = [_ci(d["arms"][arm]["metrics"].get(d["primary"]), n=True) for d in ds.values()]
        lat = report["arms"].get(arm, {}).get("latency_ms")
        rows.append([arm, *cells, _num(lat / 1000 if lat is not None else None, 2)])
    return _table(header, rows)


def _dataset_section(kind: str, d: Mapping[str, Any], arms: Sequence[str]) -> list[str]:
    lines = [f"## {kind} (n={d['n_examples']} questions, headline: {_label(d['primary'])})", ""]
    names = list(dict.fromkeys(m for a in arms for m in d["arms"][a]["metrics"]))
    lines += _table(
        ["arm", "n", *[_label(m) for m in names]],
        [
            [a, str(d["arms"][a]["n"]), *[_ci(d["arms"][a]["metrics"].get(m)) for m in names]]
            for a in arms
        ],
    )
    lines += ["Cost per answer (latency p50 / p95 in ms per graph node; tokens are means):", ""]
    nodes = list(dict.fromkeys(n for a in arms for n in d["arms"][a]["cost"]["latency_ms"]))
    rows = []
    for a in arms:
        c = d["arms"][a]["cost"]
        lat = [
            f"{_num(c['latency_ms'][n]['p50'], 0)} / {_num(c['latency_ms'][n]['p95'], 0)}"
            if n in c["latency_ms"]
            else "–"
            for n in nodes
        ]
        rows.append(
            [
                a,
                *lat,
                _num(c["tokens_in"], 0),
                _num(c["tokens_out"], 0),
                _num(c["peak_rss_mb"], 0),
                _num(c["vram_mb"], 0),
                str(c["failures"]),
                _num(c["train_time_s"], 1),
                _num(c["adapter_mb"], 2),
            ]
        )
    lines += _table(
        [
            "arm",
            *nodes,
            "tokens in",
            "tokens out",
            "peak RSS (MB)",
            "VRAM (MB)",
            "failed",
            "train (s)",
            "adapter (MB)",
        ],
        rows,
    )
    if d.get("paired"):
        lines += ["Paired tests (a − b on the same questions; McNemar for 0/1 metrics):", ""]
        lines += _table(
            ["metric", "a", "b", "n", "a − b [95% CI]", "p (bootstrap)", "a only / b only", "p"],
            [
                [
                    _label(t["metric"]),
                    t["a"],
                    t["b"],
                    str(t["n"]),
                    f"{t['diff']:+.3f} [{_num(t['low'])}, {_num(t['high'])}]",
                    _num(t["p_bootstrap"]),
                    "–" if t["a_only"] is None else f"{t['a_only']} / {t['b_only']}",
                    _num(t["p_mcnemar"]),
                ]
                for t in d["paired"]
            ],
        )
    if d.get("categories"):
        lines += [f"By category ({_label(d['primary'])}):", ""]
        lines += _table(
            ["category", *arms],
            [
                [cat, *[_ci(cells.get(a), n=True) for a in arms]]
                for cat, cells in d["categories"].items()
            ],
        )
    return lines


def render_markdown(report: Mapping[str, Any], png: str | None = None) -> str:
    """The whole report as Markdown: settings, headline, per-dataset tables, judge, stress."""
    cfg = report["config"]
    arms = list(cfg["arms"])
    lines = [
        "# Evaluation report",
        "",
        f"- command: `{cfg.get('command') or '(from Python)'}`",
        f"- arms: {', '.join(arms)}; datasets: {', '.join(cfg['datasets'])}",
        f"- n ≤ {cfg['n']} per dataset, seed {cfg['seed']}, {cfg['n_boot']} bootstrap resamples, "
        f"judge: {cfg['judge']}",
        f"- answered: {report.get('answered', '?')} of {report.get('expected', '?')} "
        f"(arm, question) pairs; complete: "
        f"{'yes' if report['complete'] else 'no (partial cache: see n per cell)'}",
        "",
        "Intervals are seeded percentile-bootstrap 95% intervals over questions. A failed arm "
        "(fallback or error) scores as an empty answer. PubMedQA answers are read as their first "
        "yes/no/maybe word (else maybe). Retrieval metrics match gold passages by title. Peak RSS "
        "is the evaluating process's peak, shared by arms run in one process. Arm settings:",
        "",
    ]
    for arm, f in cfg.get("arm_facts", {}).items():
        adapter = f.get("adapter") or "none"
        lines.append(
            f"- `{arm}`: agent {f['agent']}, model {f['model']}, adapter {adapter}, "
            f"retrieves: {'yes' if f['retrieves'] else 'no'}, settings {f['settings_hash']}"
        )
    lines += ["", "## Headline", ""] + headline_table(report)
    if png:
        lines += [f"![cost–performance map]({png})", ""]
    for kind, d in report["datasets"].items():
        lines += _dataset_section(kind, d, arms)
    if report.get("judge"):
        j = report["judge"]
        lines += [
            "## LLM judge (pointwise)",
            "",
            f"{j['verdicts']} verdicts, {j['unparsed']} unparsed "
            f"({_num(j['unparsed_rate'])}); mean parsed score {_num(j['mean_score'])}.",
            "",
        ]
        rows = [
            [what, str(a["n"]), str(a["parsed"]), _num(a["agreement"])]
            for what, a in (j.get("agreement_with_gold") or {}).items()
        ]
        for what, key in (("human votes", "pointwise_vs_votes"),):
            if (h := (j.get("human_votes") or {}).get(key)) is not None:
                rows.append([what, str(h["n"]), str(h["parsed"]), _num(h["agreement"])])
        if rows:
            lines += ["Pass/fail agreement (score ≥ 0.5 on both sides):", ""]
            lines += _table(["against", "n", "parsed", "agreement"], rows)
    if report.get("stress"):
        s = report["stress"]
        lines += [f"## Distractor stress test (+{s['n_extra']} hard distractors)", ""]
        lines += _table(
            ["dataset", "arm", "n", "baseline", "stressed", "drop [95% CI]"],
            [
                [
                    kind,
                    arm,
                    str(r["n"]),
                    _num(r["baseline"]),
                    _num(r["stressed"]),
                    f"{r['drop']:+.3f} [{_num(r['low'])}, {_num(r['high'])}]",
                ]
                for kind, by_arm in s["datasets"].items()
                for arm, r in by_arm.items()
            ],
        )
    return "\n".join(lines) + "\n"
