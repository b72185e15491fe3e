"""``armada eval``: the A/B harness, the judge study and router evaluation on cached outputs.

    armada eval --arms rag,closed_book --dataset hotpotqa:PATH --n 200 [--judge none|llm] --out DIR
    armada eval --arms rag --dataset popqa:TSV,PARAGRAPHS --dataset pubmedqa:PATH --stress 5
    armada eval --arms rag,refrag --dataset … --out DIR --report-only  # report what is cached
    armada eval judge --out DIR --a rag --b closed_book --pairs 50       # pairwise position bias
    armada eval judge --out DIR --a rag --b closed_book --rubric evals/rubrics/terse_ab.toml
    armada eval routers --cache DIR                                      # APGR / CPT / replay

Mounted on the main CLI with ``app.add_typer(eval_app, name="eval")``. Heavy modules load inside
the commands, so ``armada --help`` stays fast.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)
out = Console(highlight=False, soft_wrap=True)

eval_app = typer.Typer(
    help="Evaluate arms on benchmark datasets: A/B tables with intervals, judge, routers.",
    no_args_is_help=False,
)


def progress_bar(con: Console) -> Progress:
    """The CLI's progress bar (shared with ``app.cli``)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=con,
    )


def _progress() -> Progress:
    return progress_bar(console)


def _command() -> str:
    """The command line as typed (``armada eval …`` when mounted, else ``python -m evals.cli …``)."""
    prog = Path(sys.argv[0]).name
    head = ["python", "-m", "evals.cli"] if prog in ("cli.py", "__main__.py") else [prog]
    return shlex.join([*head, *sys.argv[1:]])


def _runtime():  # noqa: ANN202 - app.runtime is imported lazily
    from app.runtime import Armada

    return Armada()


@eval_app.callback(invoke_without_command=True)
def evaluate(
    ctx: typer.Context,
    arms: Annotated[str | None, typer.Option(help="Comma-separated arm names")] = None,
    dataset: Annotated[
        list[str] | None,
        typer.Option(
            help="hotpotqa:PATH, popqa:TSV[,PARAGRAPHS], pubmedqa:PATH or jsonl:PATH; repeatable"
        ),
    ] = None,
    n: Annotated[int, typer.Option(help="Questions per dataset")] = 100,
    seed: Annotated[int, typer.Option(help="Picks the questions and seeds the bootstrap")] = 0,
    judge: Annotated[str, typer.Option(help="none, or llm: a pointwise LLM judge score")] = "none",
    judge_model: Annotated[str, typer.Option(help="A configured model name")] = "default",
    rubric: Annotated[Path | None, typer.Option(help="Judge rubric file (TOML/JSON)")] = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples")] = 2000,
    stress: Annotated[int, typer.Option(help="Distractor stress test: N extra distractors")] = 0,
    stress_n: Annotated[int, typer.Option(help="Questions per dataset in the stress test")] = 30,
    all_examples: Annotated[
        bool, typer.Option("--all-examples", help="Also examples without gold passages")
    ] = False,
    out_dir: Annotated[Path, typer.Option("--out", help="Cache and report folder")] = Path(
        "artifacts/eval"
    ),
    report_only: Annotated[
        bool, typer.Option("--report-only", help="Report what the cache holds; ask nothing")
    ] = False,
) -> None:
    """Run arms on the same questions (resumable), then write the report and store an EvalRun."""
    if ctx.invoked_subcommand:
        return
    if not arms or not dataset:
        console.print(ctx.get_help())
        raise typer.Exit(2)
    from evals.harness import EvalConfig, run_eval

    cfg = EvalConfig(
        arms=[a.strip() for a in arms.split(",") if a.strip()],
        datasets=list(dataset),
        out=out_dir,
        n=n,
        seed=seed,
        judge=judge,  # type: ignore[arg-type]
        judge_model=judge_model,
        rubric=str(rubric) if rubric else None,
        n_boot=n_boot,
        require_gold=not all_examples,
        stress=stress,
        stress_n=stress_n,
        command=_command(),
    )
    rt = _runtime()
    try:
        if report_only:
            report = run_eval(rt, cfg, answer=False)
        else:
            with _progress() as bar:
                task = bar.add_task("answering", total=None)
                report = run_eval(
                    rt,
                    cfg,
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                )
    finally:
        rt.close()
    from evals.markdown import headline_table

    out.print("\n".join(headline_table(report)))
    out.print(f"report: {cfg.out / 'report.md'} · EvalRun {report['eval_run_id']}")


@eval_app.command("judge")
def judge_study(
    out_dir: Annotated[Path, typer.Option("--out", help="A harness output folder")],
    a: Annotated[str, typer.Option("--a", help="First arm")],
    b: Annotated[str, typer.Option("--b", help="Second arm")],
    pairs: Annotated[int, typer.Option(help="Pairs to judge (both orders each)")] = 50,
    judge_model: Annotated[str, typer.Option(help="A configured model name")] = "default",
    rubric: Annotated[Path | None, typer.Option(help="Judge rubric file (TOML/JSON)")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Judge reply budget")] = 96,
    reference: Annotated[
        bool, typer.Option("--reference/--no-reference", help="Show the judge the gold answer")
    ] = False,
    seed: int = 0,
) -> None:
    """Pairwise judge on cached answers: position-bias rate, agreement with EM/F1 and human votes."""
    from evals.judging import pairwise_study

    rt = _runtime()
    try:
        with _progress() as bar:
            task = bar.add_task("judging", total=pairs)
            result = pairwise_study(
                rt,
                out_dir,
                a,
                b,
                pairs=pairs,
                judge_model=judge_model,
                reference=reference,
                seed=seed,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
                rubric=rubric,
                max_new_tokens=max_new_tokens,
            )
    finally:
        rt.close()
    out.print_json(json.dumps({k: v for k, v in result.items() if k != "pairs"}))


@eval_app.command("routers")
def routers_cmd(
    cache: Annotated[Path, typer.Option(help="A harness output folder (with report.json)")],
    rounds: Annotated[int, typer.Option(help="Bandit replay rounds")] = 2000,
    seed: int = 0,
    cost: Annotated[str, typer.Option(help="latency_s or tokens")] = "latency_s",
) -> None:
    """Router evaluation on cached outputs: threshold-router APGR/CPT and bandit replay regret."""
    from evals.routers_run import evaluate_routers, render_routers

    result = evaluate_routers(cache, rounds=rounds, seed=seed, cost=cost)
    (cache / "routers.json").write_text(json.dumps(result, indent=1) + "\n")
    out.print(render_routers(result))
    out.print(f"written: {cache / 'routers.json'}")


if __name__ == "__main__":
    eval_app(prog_name="python -m evals.cli")
