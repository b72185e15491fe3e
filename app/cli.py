"""The ``armada`` command line.

armada prepare                 convert the packaged model once (cached under data/models)
armada ingest PATH… | --demo   add files/folders (JSONL, TXT, Markdown) or the demo corpus
armada ask "question" [--arm NAME] [--json] [--thread ID]
armada ui [streamlit options]  the chat app (e.g. --server.port 8502)
armada doctor                  model, corpus, database and versions
armada arms                    configured arms and their status
armada raft build | train | adapters …   training data, LoRA training, the adapter registry
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from core.config import Settings, load_settings
from core.errors import ArmadaError
from evals.cli import progress_bar

app = typer.Typer(
    help="Armada: run, compare and improve question-answering agents on your own documents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console(highlight=False, soft_wrap=True)

UI_ENTRY = Path(__file__).resolve().parent / "ui" / "Chat.py"
# No usage statistics leave the browser, and no "Deploy" button; the user's options come later
# on the command line, so they still win.
UI_DEFAULTS = ["--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal"]


def _settings() -> Settings:
    return load_settings()


def _progress() -> Progress:
    return progress_bar(console)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # bitsandbytes warns at import (through peft) that CPU 4-bit kernels are missing: noise here.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # Offline by default: a hub lookup would stall for about a minute on this network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


@app.command()
def prepare() -> None:
    """Prepare every local model the configured arms use (the GGUF is converted once)."""
    from core.models.convert import ensure_local_model

    s = _settings()
    for name, cfg in s.models.items():
        if cfg.backend != "local":
            continue
        with console.status(f"preparing model {name!r} (first time: about a minute)…"):
            path = ensure_local_model(cfg.model, s.model_cache_dir)
        console.print(f"model [bold]{name}[/]: {path}")
    _build_kernels(s)


def _build_kernels(s: Settings) -> None:
    """Compile the CPU kernels the local models will use now, not on the first question."""
    local = [cfg for cfg in s.models.values() if cfg.backend == "local"]
    wanted = []
    if any(cfg.fused_decode for cfg in local):
        from core.models import fused

        wanted.append(("fused decode", fused.kernel))
    if any(cfg.quantization == "int8" for cfg in local):
        from core.models import quant

        wanted.append(("int8 linear", quant.kernel))
    for label, build in wanted:
        with console.status(f"building the {label} kernel (first time: under a minute)…"):
            try:
                module = build()
            except ArmadaError as e:
                console.print(f"[yellow]{label} kernel unavailable[/]: {e} (slower fallback used)")
                continue
        console.print(f"{label} kernel: {module.isa()}")


@app.command()
def ingest(
    paths: Annotated[list[Path] | None, typer.Argument(help="Files or folders")] = None,
    demo: Annotated[bool, typer.Option("--demo", help="The packaged Wikipedia summaries")] = False,
    limit: Annotated[int | None, typer.Option(help="Demo: only the first N summaries")] = None,
) -> None:
    """Add documents to the corpus; unchanged files are skipped and nothing is re-embedded."""
    from core.retrieval import ingest_demo, ingest_paths

    if not paths and not demo:
        raise ArmadaError("give one or more files/folders, or --demo")
    s = _settings()
    with _progress() as bar:
        task = bar.add_task("ingesting", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        reports = []
        if demo:
            reports.append(ingest_demo(s, limit=limit, progress=progress))
        if paths:
            reports.append(ingest_paths(s, list(paths), progress=progress))
    for r in reports:
        console.print(
            f"documents: +{r.documents_added} new, {r.documents_updated} updated, "
            f"{r.documents_unchanged} unchanged; passages: +{r.passages_added}, "
            f"embedded {r.passages_embedded}"
        )
        for path, msg in r.errors:
            console.print(f"[yellow]skipped[/] {path}: {msg}")


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question")],
    arm: Annotated[str | None, typer.Option(help="Pin an arm instead of routing")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object, no streaming")] = False,
    thread: Annotated[str | None, typer.Option(help="Continue a conversation thread")] = None,
) -> None:
    """Ask a question: streams the answer, then its sources."""
    from app.runtime import Armada

    rt = Armada(_settings())
    try:
        if as_json:
            res = rt.ask(question, arm=arm, thread_id=thread)
            out.print_json(json.dumps(res.to_dict(), default=str))
            return
        res = rt.ask(
            question,
            arm=arm,
            thread_id=thread,
            on_token=lambda t: (sys.stdout.write(t), sys.stdout.flush()),
            on_reset=lambda a: sys.stdout.write(f"\n[arm {a} failed; falling back]\n"),
        )
        sys.stdout.write("\n")
        _print_sources(res)
    finally:
        rt.close()


def _print_sources(res: Any) -> None:
    note = f"arm={res.arm} policy={res.policy} p={res.propensity:.2f}"
    if res.fallback_from:
        note += f" (fallback from {res.fallback_from}: {res.error})"
    out.print(f"[dim]{note} · {res.latency_ms.get('total', 0):.0f} ms · {res.interaction_id}[/]")
    sources = res.sources or []
    if not sources:
        out.print("[dim]no cited sources[/]")
    for i, h in enumerate(sources, 1):
        snippet = h.passage.text[:160].replace("\n", " ")
        out.print(f"[{i}] [bold]{h.passage.title}[/] ({h.passage.id}): {snippet}…", markup=True)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def ui(ctx: typer.Context) -> None:
    """Start the Streamlit app; extra options go to Streamlit (e.g. --server.port 8502)."""
    from streamlit.web import cli as stcli

    sys.argv = ["streamlit", "run", str(UI_ENTRY), *UI_DEFAULTS, *ctx.args]
    raise SystemExit(stcli.main())


@app.command()
def doctor() -> None:
    """Check the model, corpus, database and library versions."""
    import importlib.metadata as md

    from core import packaged

    s = _settings()
    table = Table("check", "status", "detail", title="armada doctor")
    ok = True

    def row(name: str, fn: Any) -> None:
        nonlocal ok
        try:
            table.add_row(name, "[green]ok[/]", str(fn()))
        except Exception as e:
            ok = False
            table.add_row(name, "[red]problem[/]", f"{type(e).__name__}: {e}")

    row("home", lambda: s.home)
    row("packaged generator", packaged.smollm2_gguf)
    row("packaged embedder", packaged.minilm_dir)
    row("demo corpus", packaged.wiki_summaries)

    def database() -> str:
        from core.store import Store

        st = Store(s.db_url, s.store.busy_timeout_ms)
        try:
            return f"{s.db_url} · migrations {st.applied_migrations()} · {st.integrity_check()}"
        finally:
            st.close()

    def corpus() -> str:
        from core.retrieval import Retriever

        stats = Retriever(s).stats()
        if not stats.get("passages"):
            raise ArmadaError(
                "the corpus is empty: run `armada ingest --demo` or `armada ingest PATH`"
            )
        return json.dumps(stats, default=str)

    def model() -> str:
        from core.models.convert import ensure_local_model

        cfg = s.models["default"]
        if cfg.backend != "local":
            return f"openai-compatible {cfg.base_url} model={cfg.model}"
        marker = ensure_local_model(cfg.model, s.model_cache_dir)
        return str(marker)

    def adapters() -> str:
        from core.adapters import registry
        from core.store import Store

        st = Store(s.db_url, s.store.busy_timeout_ms)
        try:
            rows = registry.list_adapters(st)
            missing = [f"{a.name} v{a.version}" for a in rows if not Path(a.path).is_dir()]
            if missing:
                raise ArmadaError(f"adapter folders missing: {', '.join(missing)}")
            serving = sorted({a.name for a in rows if a.status == registry.PROMOTED})
            return f"{len(rows)} registered; promoted: {', '.join(serving) or 'none'}"
        finally:
            st.close()

    def decode_kernel() -> str:
        cfg = s.models["default"]
        if cfg.backend != "local" or not cfg.fused_decode:
            return "off (transformers' generate)"
        from core.models import fused

        return f"fused decode kernel built ({fused.kernel().isa()})"

    row("database", database)
    row("corpus", corpus)
    row("default model", model)
    row("decode", decode_kernel)
    row("adapters", adapters)
    versions = []
    for dist in ("torch", "transformers", "peft", "langgraph", "chromadb", "bm25s", "streamlit"):
        try:
            versions.append(f"{dist} {md.version(dist)}")
        except md.PackageNotFoundError:
            versions.append(f"{dist} missing")
    table.add_row("versions", "", ", ".join(versions))
    out.print(table)
    if not ok:
        raise typer.Exit(1)


from app.cli_train import adapters_app, raft_app, train_cmd  # noqa: E402

app.add_typer(raft_app, name="raft")
app.add_typer(adapters_app, name="adapters")
app.command("train")(train_cmd)

from app.cli_nightly import retrain_cmd  # noqa: E402

app.command("retrain")(retrain_cmd)

arms_app = typer.Typer(help="List, enable and disable arms.", no_args_is_help=False)
app.add_typer(arms_app, name="arms")


@arms_app.callback(invoke_without_command=True)
def arms_list(ctx: typer.Context) -> None:
    """Configured arms with their agent, model, adapter and status."""
    if ctx.invoked_subcommand:
        return
    from app.runtime import Armada

    rt = Armada(_settings())
    status = {a.name: a for a in rt.store.arms()}
    table = Table("arm", "agent", "model", "adapter", "prior", "status")
    for a in rt.settings.arms:
        row = status[a.name]
        state = row.status + (f": {row.reason}" if row.reason else "")
        prior = "" if a.prior is None else f"{a.prior:.2f}"
        table.add_row(a.name, a.agent, a.model, a.adapter or "", prior, state)
    out.print(table)


@arms_app.command("disable")
def arms_disable(
    name: str, reason: Annotated[str, typer.Option(help="Shown wherever the arm is listed")] = ""
) -> None:
    """Stop routing to an arm (its history stays)."""
    from app.runtime import Armada

    rt = Armada(_settings())
    rt.store.set_arm_status(name, "disabled", reason or "disabled by an operator")
    console.print(f"arm {name} disabled")


@arms_app.command("enable")
def arms_enable(name: str) -> None:
    """Route to an arm again."""
    from app.runtime import Armada

    rt = Armada(_settings())
    rt.store.set_arm_status(name, "ok", "")
    console.print(f"arm {name} enabled")


@app.command("leaderboard")
def leaderboard_cmd(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    categories: Annotated[bool, typer.Option("--categories/--no-categories")] = True,
) -> None:
    """Per arm: pulls, votes, mean reward with a 95% interval, traffic share, estimated regret."""
    from core.store import Store
    from routers.leaderboard import leaderboard

    s = _settings()
    board = leaderboard(Store(s.db_url, s.store.busy_timeout_ms))
    if as_json:
        out.print_json(json.dumps(board))
        return
    table = Table("arm", "category", "pulls", "votes", "mean reward", "95% CI", "share", "regret")

    def fmt(cell: dict[str, Any]) -> list[str]:
        m = cell["mean_reward"]
        lo, hi = cell["ci95"]
        mean = "–" if m is None else f"{m:.3f}"
        return [str(cell["pulls"]), str(cell["votes"]), mean, f"[{lo:.2f}, {hi:.2f}]"]

    for row in board["arms"]:
        share = f"{row['traffic_share']:.0%}"
        table.add_row(row["arm"], "all", *fmt(row), share, f"{row['estimated_regret']:.2f}")
        if categories:
            for cat, cell in row["categories"].items():
                table.add_row("", cat, *fmt(cell), "", "")
    out.print(table)
    out.print(f"{board['total_pulls']} answers, {board['total_votes']} votes")


from evals.cli import eval_app  # noqa: E402 - a light module: heavy parts load inside commands

app.add_typer(eval_app, name="eval")

routers_app = typer.Typer(help="Inspect and audit the routing policy.", no_args_is_help=True)
app.add_typer(routers_app, name="routers")


@routers_app.command("rebuild")
def routers_rebuild() -> None:
    """Recompute the arm statistics and policy state from the stored votes; compare with the kept state."""
    from app.runtime import Armada
    from core.store.feedback import stats_equal

    rt = Armada(_settings())
    kept, fresh = rt.store.arm_stats(), rt.store.recompute_arm_stats()
    same = stats_equal(kept, fresh)
    if not same:
        rt.store.rebuild_arm_stats()
    policy = rt.policy()  # rebuilt from the votes (a fold in seq order)
    out.print(
        f"{sum(v[0] for v in fresh.values())} votes; arm statistics "
        + ("[green]equal the rebuild[/]" if same else "[yellow]differed and were repaired[/]")
        + f"; policy {policy.name} rebuilt from {len(rt.store.feedback_events())} events"
    )
    if not same:
        raise typer.Exit(1)


@routers_app.command("evaluate")
def routers_evaluate(
    policy: Annotated[str, typer.Option(help="fixed, uniform, thompson, ucb1, egreedy, linucb")],
    options: Annotated[str, typer.Option(help="Policy options as JSON")] = "{}",
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples")] = 1000,
    seed: int = 0,
) -> None:
    """Off-policy estimates (IPS, SNIPS, DR with 95% bootstrap intervals) of a policy's reward."""
    from app.runtime import Armada
    from routers.evaluate import logged_decisions, offline_evaluate

    rt = Armada(_settings())
    log_rows = logged_decisions(rt.store)
    if not log_rows:
        raise ArmadaError("no voted decisions yet: OPE needs logged decisions with rewards")
    est = offline_evaluate(rt, log_rows, policy, json.loads(options), n_boot=n_boot, seed=seed)
    table = Table("estimator", "estimate", "95% CI", "n", "effective n")
    for e in est.values():
        table.add_row(
            e.estimator,
            f"{e.estimate:.3f}",
            f"[{e.low:.3f}, {e.high:.3f}]",
            str(e.n),
            f"{e.ess:.0f}",
        )
    out.print(table)
    logged = sum(r[3] for r in log_rows) / len(log_rows)
    out.print(f"logged policy's mean reward: {logged:.3f} over {len(log_rows)} decisions")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    api_key: Annotated[
        list[str] | None,
        typer.Option("--api-key", help="Require this bearer key (repeatable; or ARMADA_API_KEYS)"),
    ] = None,
) -> None:
    """Serve the OpenAI-compatible HTTP API (/v1/chat/completions, /v1/feedback, …)."""
    from app.api import serve_command

    serve_command(host, port, api_key)


def main() -> None:
    """Console entry point: errors meant for people print as one line, not a traceback."""
    try:
        app()
    except ArmadaError as e:
        console.print(f"[red]error:[/] {e}")
        raise SystemExit(2) from None
    except ValueError as e:  # pydantic validation of settings and similar
        console.print(f"[red]error:[/] {e}")
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
