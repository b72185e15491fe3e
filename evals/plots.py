"""The cost–performance map: each arm's headline quality against its median latency, per dataset,
with 95% intervals and the Pareto frontier (``app.ui.metrics.pareto_front``). matplotlib, Agg.

Training time and adapter size are drawn as extra panels only when some arm has a non-zero value
(no arm has an adapter yet, so today the map is quality against latency).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.ui.metrics import pareto_front


def _panels(
    report: Mapping[str, Any],
) -> list[tuple[str, str, dict[str, tuple[float, float, Any]]]]:
    """``(title, x label, {arm: (cost, quality, ci)})`` per panel."""
    panels = []
    for kind, d in report["datasets"].items():
        pts = {}
        for arm, cell in d["arms"].items():
            stat = cell["metrics"].get(d["primary"])
            total = cell["cost"]["latency_ms"].get("total")
            if stat and stat["mean"] is not None and total and total["p50"] is not None:
                pts[arm] = (total["p50"] / 1000, stat["mean"], stat["ci95"])
        if pts:
            panels.append((f"{kind}: {d['primary']}", "median latency per answer (s)", pts))
    for cost, label in (("train_time_s", "training time (s)"), ("adapter_mb", "adapter size (MB)")):
        rows = report.get("arms", {})
        if any((r.get(cost) or 0) > 0 for r in rows.values()):
            pts = {
                a: (r[cost], r.get("score", r.get("f1", 0.0)), None)
                for a, r in rows.items()
                if r.get(cost) is not None
            }
            panels.append(("all datasets: score", label, pts))
    return panels


def cost_quality_plot(report: Mapping[str, Any], path: Path) -> Path | None:
    """Write the map to ``path`` (PNG); None when no arm has both a cost and a quality."""
    panels = _panels(report)
    if not panels:
        return None
    import matplotlib

    matplotlib.use(
        "Agg"
    )  # no display; set here, not at import, so importing stays side-effect free
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.0), squeeze=False)
    for ax, (title, xlabel, pts) in zip(axes[0], panels, strict=True):
        front = pareto_front({a: (c, q) for a, (c, q, _) in pts.items()})
        for arm, (c, q, ci) in pts.items():
            on = arm in front
            if ci and ci[0] is not None:
                ax.errorbar(c, q, yerr=[[q - ci[0]], [ci[1] - q]], fmt="none", ecolor="0.6")
            ax.scatter(c, q, s=60, color="tab:red" if on else "tab:blue", zorder=3)
            ax.annotate(arm, (c, q), textcoords="offset points", xytext=(6, 4), fontsize=9)
        xs = [pts[a][0] for a in front]
        ys = [pts[a][1] for a in front]
        ax.plot(xs, ys, "--", color="tab:red", lw=1, label="Pareto frontier")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("quality (higher is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle("Cost–performance map (95% bootstrap intervals)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
