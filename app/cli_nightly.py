"""``armada retrain``: the nightly job (votes → data → a candidate LoRA → gate → promote or reject).

armada retrain                 one run for ``nightly.arm`` (see ``training/nightly.py``)
armada retrain --dry-run       what would be trained: counts and drops by reason; writes nothing
armada retrain --status        the watermark and the latest decisions with their reasons

The lead registers it with ``app.command("retrain")(retrain_cmd)``.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from core.config import load_settings
from core.errors import ArmadaError

console = Console(stderr=True)
out = Console(highlight=False, soft_wrap=True)

STAGE_NAMES = {
    "gather": "gathering votes",
    "train": "training the candidate",
    "evaluate": "evaluating candidate and champion",
    "decide": "deciding",
    "promote": "recording the decision",
}


def _fail(e: Exception) -> None:
    console.print(f"[red]error:[/] {e}")
    raise typer.Exit(1)


def _status(arm: str, as_json: bool, limit: int = 10) -> None:
    from core.store import Store
    from training.nightly import history, watermark

    s = load_settings()
    store = Store(s.db_url, s.store.busy_timeout_ms)
    try:
        mark, newest = watermark(store, arm), store.feedback_seq()
        rows = history(store, limit, arm=arm)
    finally:
        store.close()
    if as_json:
        runs = [
            {"created_at": r.created_at.isoformat(), "config": r.config, "metrics": r.metrics}
            for r in rows
        ]
        out.print(json.dumps({"arm": arm, "watermark": mark, "feedback_seq": newest, "runs": runs}))
        return
    out.print(f"arm [bold]{arm}[/]: watermark seq {mark}, newest vote seq {newest}")
    if not rows:
        out.print("no nightly runs yet")
        return
    table = Table("started", "decision", "candidate", "champion", "reasons")
    for r in rows:
        m = r.metrics or {}

        def side(d: dict) -> str:
            if not d:
                return ""
            score = d.get("score")
            return f"v{d.get('version')}" + (f" {score:.3f}" if isinstance(score, float) else "")

        table.add_row(
            r.created_at.strftime("%Y-%m-%d %H:%M"),
            str(m.get("decision", "")),
            side(m.get("candidate") or {}),
            side(m.get("champion") or {}),
            "; ".join(m.get("reasons") or []),
        )
    out.print(table)


def retrain_cmd(
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Show what would be trained; write nothing"),
    ] = False,
    arm: Annotated[
        str | None, typer.Option(help="The arm to improve (default: nightly.arm)")
    ] = None,
    status: Annotated[
        bool,
        typer.Option("--status", help="Show the watermark and the latest decisions, then exit"),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON")] = False,
) -> None:
    """Nightly retraining: thumbs-up → a candidate adapter → promoted only if it beats the champion."""
    from training.feedback_data import summary_line
    from training.nightly import run_nightly

    s = load_settings()
    name = arm or s.nightly.arm
    if status:
        _status(name, as_json)
        return

    def stage(st: str) -> None:
        if st in STAGE_NAMES and not as_json:
            console.print(f"[dim]nightly:[/] {STAGE_NAMES[st]}…")

    try:
        res = run_nightly(s, arm=name, dry_run=dry_run, on_stage=stage)
    except (ArmadaError, ValueError) as e:
        _fail(e)
    if as_json:
        out.print(json.dumps(res.to_dict(), default=str))
        return
    if res.data:
        out.print(summary_line(res.data))
    colour = {"promoted": "green", "rejected": "yellow", "skipped": "dim"}.get(res.decision, "cyan")
    head = f"[{colour}]{res.decision}[/]"
    if res.candidate:
        head += f": {res.adapter} v{res.candidate.get('version')}"
        if res.champion:
            head += f" vs champion v{res.champion.get('version')}"
    if res.resumed:
        head += " (resumed an interrupted run)"
    out.print(head)
    for reason in res.reasons:
        out.print(f"  - {reason}")
