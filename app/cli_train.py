"""``armada raft …``, ``armada train`` and ``armada adapters …``: training data, LoRA training, registry.

armada raft build --dataset hotpotqa:PATH [--dataset …] --out raft.jsonl [--k 4 --p-gold 0.8]
armada raft build --ft --dataset … --out ft.jsonl          closed-book Q→A data for the FT arm
armada raft cot raft.jsonl --out raft_cot.jsonl --teacher default
armada train raft.jsonl --name raft [--r 16 --epochs 1 --lr 2e-4 --qlora]
armada adapters list | verify [NAME] | remove NAME [--version N] | promote NAME N | rollback NAME
armada adapters register FOLDER [--name NAME]
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from core.config import load_settings
from core.errors import ArmadaError, InputError
from evals.cli import progress_bar

console = Console(stderr=True)
out = Console(highlight=False, soft_wrap=True)

raft_app = typer.Typer(help="Build RAFT (and FT) training data.", no_args_is_help=True)
adapters_app = typer.Typer(help="The adapter registry.", no_args_is_help=True)


def _fail(e: Exception) -> None:
    console.print(f"[red]error:[/] {e}")
    raise typer.Exit(1)


@raft_app.command("build")
def raft_build(
    dataset: Annotated[
        list[str],
        typer.Option("--dataset", "-d", help="KIND:PATH (hotpotqa, popqa, pubmedqa, jsonl)"),
    ],
    out_path: Annotated[
        Path, typer.Option("--out", "-o", help="Output JSONL (manifest beside it)")
    ],
    p_gold: Annotated[
        float, typer.Option(help="Probability a question keeps its gold passages")
    ] = 0.8,
    k: Annotated[int, typer.Option(help="Distractors per question")] = 4,
    distractors: Annotated[str, typer.Option(help="record | retriever | random")] = "record",
    max_passage_words: Annotated[int, typer.Option(help="Cut passages to this many words")] = 120,
    n: Annotated[int | None, typer.Option(help="At most this many questions per dataset")] = None,
    held_out: Annotated[
        float, typer.Option(help="Seeded fraction of each dataset left out (for evaluation)")
    ] = 0.0,
    seed: int = 0,
    ft: Annotated[bool, typer.Option("--ft", help="Closed-book Q→A records (the FT arm)")] = False,
    drop_answer_titled_gold: Annotated[
        bool, typer.Option(help="Leave out gold passages titled with the answer (PopQA)")
    ] = False,
) -> None:
    """Build RAFT records (or FT records with --ft) from benchmark files."""
    from core.datasets import load_dataset, split
    from training.raft import RaftSettings, build_ft, build_raft, write_raft

    try:
        examples, excluded = [], 0
        for spec in dataset:
            loaded = [e for e in load_dataset(spec) if e.answers]
            # The held-out part is drawn from the questions with gold passages, exactly as
            # `armada eval --n N --seed S` draws its questions: with N ≤ held_out × their count
            # and the same seed, every evaluated question is one never trained on.
            gold_pool = [e for e in loaded if e.gold]
            left = {e.id for e in split(gold_pool, held_out, seed)[1]} if held_out else set()
            kept = [e for e in loaded if e.id not in left]
            excluded += len(left)
            if not ft:  # RAFT's p_gold is about questions that have gold passages
                kept = [e for e in kept if e.gold]
            examples += kept[:n] if n else kept
        if ft:
            records = build_ft(examples)
            settings = {"kind": "ft", "held_out": held_out, "seed": seed}
            manifest = write_raft(records, out_path, settings, sources=dataset, kind="ft")
        else:
            s = RaftSettings(
                p_gold=p_gold,
                k=k,
                distractors=distractors,  # type: ignore[arg-type]
                max_passage_words=max_passage_words,
                seed=seed,
                drop_answer_titled_gold=drop_answer_titled_gold,
                extra={"held_out": held_out},
            )
            retrieve = None
            if distractors == "retriever":
                from core.retrieval import Retriever

                retriever = Retriever(load_settings())

                def retrieve(q: str, m: int):  # noqa: ANN202
                    return [h.passage for h in retriever.search(q, k=m)]

            records = build_raft(examples, s, retrieve=retrieve)
            manifest = write_raft(records, out_path, s, sources=dataset)
    except (ArmadaError, ValueError) as e:
        _fail(e)
    console.print(
        f"wrote {manifest['records']} records to {out_path} ({json.dumps(manifest['by_dataset'])}"
        f"; {excluded} held out); manifest {out_path.name}.manifest.json"
    )


@raft_app.command("cot")
def raft_cot(
    data: Path,
    out_path: Annotated[Path, typer.Option("--out", "-o")],
    teacher: Annotated[
        str, typer.Option(help="A configured model name (settings.models)")
    ] = "default",
    max_new_tokens: int = 256,
) -> None:
    """Ask a teacher model for chain-of-thought answers quoting their evidence."""
    from core.models import get_model
    from training.raft import read_records, write_raft
    from training.teacher import add_chain_of_thought

    try:
        records, manifest = read_records(data)
        model = get_model(load_settings(), teacher)
        with progress_bar(console) as bar:
            task = bar.add_task("teacher", total=len(records))
            new, stats = add_chain_of_thought(
                records,
                model,
                max_new_tokens=max_new_tokens,
                progress=lambda i, _t: bar.update(task, completed=i),
            )
        write_raft(
            new,
            out_path,
            manifest.get("settings", {}),
            sources=[str(data)],
            kind=manifest.get("kind", "raft"),
            extra={"cot": stats, "teacher": model.name},
        )
    except ArmadaError as e:
        _fail(e)
    console.print(f"wrote {len(new)} records to {out_path}: {stats}")


def train_cmd(
    data: Annotated[Path, typer.Argument(help="Chat JSONL from `armada raft build`")],
    name: Annotated[str, typer.Option("--name", "-n", help="Adapter name (registry)")],
    kind: Annotated[str, typer.Option(help="ft | raft | raft_expert | …")] = "raft",
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    targets: Annotated[str, typer.Option(help="Comma-separated LoRA target modules")] = (
        "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    ),
    epochs: int = 1,
    max_steps: int | None = None,
    lr: float = 2e-4,
    batch_tokens: int = 2048,
    grad_accum: int = 1,
    max_len: int = 1024,
    gradient_checkpointing: bool = False,
    qlora: Annotated[bool, typer.Option(help="4-bit base weights (CUDA only)")] = False,
    base: Annotated[str | None, typer.Option(help="Base model id or folder")] = None,
    seed: int = 0,
    threads: int | None = None,
    prototype: Annotated[
        bool, typer.Option(help="Store the mean question embedding (expert routing)")
    ] = True,
    promote: Annotated[bool, typer.Option(help="Promote the new version at once")] = False,
) -> None:
    """Train a LoRA adapter on chat JSONL and register it (resumes a killed run)."""
    from core.retrieval import embed_texts
    from core.store import Store
    from training.lora import TrainConfig, train

    s = load_settings()
    try:
        cfg = TrainConfig(
            base_model=base,
            r=r,
            alpha=alpha,
            dropout=dropout,
            target_modules=[t.strip() for t in targets.split(",") if t.strip()],
            epochs=epochs,
            max_steps=max_steps,
            lr=lr,
            batch_tokens=batch_tokens,
            grad_accum=grad_accum,
            max_len=max_len,
            gradient_checkpointing=gradient_checkpointing,
            quantization="4bit" if qlora else "none",
            seed=seed,
            threads=threads,
            kind=kind,
        )
        store = Store(s.db_url, s.store.busy_timeout_ms)
        embed = functools.partial(embed_texts, s) if prototype else None
        with progress_bar(console) as bar:
            task = bar.add_task(f"training {name}", total=None)

            def report(step: int, total: int, info: dict) -> None:
                bar.update(
                    task,
                    completed=step,
                    total=total,
                    description=f"training {name} loss {info['loss']:.3f} "
                    f"{info['tokens_per_s']:.0f} tok/s",
                )

            result = train(data, name, s, cfg, store=store, progress=report, embed=embed)
        if promote:
            from core.adapters import registry

            registry.promote(store, name, result.version)
    except (ArmadaError, ValueError) as e:
        _fail(e)
    m = result.metrics
    console.print(
        f"adapter [bold]{name}[/] v{result.version} at {result.folder}: "
        f"{m.get('train_time_s')} s, {m.get('tokens_per_s')} tok/s, {m.get('adapter_mb')} MB, "
        f"loss {m.get('mean_loss_first')} → {m.get('mean_loss_last')}"
        + (f" (resumed at step {result.resumed_from})" if result.resumed_from else "")
    )


def _store():  # noqa: ANN202
    from core.store import Store

    s = load_settings()
    return s, Store(s.db_url, s.store.busy_timeout_ms)


@adapters_app.command("list")
def adapters_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Registered adapters: name, version, status, base model, size, training time."""
    from core.adapters import registry
    from core.adapters.format import read_meta

    _, store = _store()
    rows = registry.list_adapters(store)
    if as_json:
        out.print(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
        return
    table = Table("name", "version", "status", "kind", "MB", "train s", "path")
    for a in rows:
        m = a.metrics or {}
        try:
            kind = read_meta(Path(a.path)).get("kind", "")
        except (OSError, ValueError):
            kind = "(meta unreadable)"
        table.add_row(
            a.name,
            str(a.version),
            a.status,
            kind,
            str(m.get("adapter_mb", "")),
            str(m.get("train_time_s", "")),
            a.path,
        )
    out.print(table)


@adapters_app.command("verify")
def adapters_verify(name: Annotated[str | None, typer.Argument()] = None) -> None:
    """Check every registered adapter's files (checksums, pickle, keys, ranks, finite weights)."""
    from core.adapters import registry
    from core.adapters.format import model_fingerprint
    from core.models.convert import ensure_local_model

    s, store = _store()
    base_fp = model_fingerprint(ensure_local_model(s.models["default"].model, s.model_cache_dir))
    bad = 0
    for row in registry.list_adapters(store, name):
        problem = registry.verify_registered(store, row, base_fp)
        status = "[green]ok[/]" if problem is None else f"[red]{problem}[/]"
        bad += problem is not None
        out.print(f"{row.name} v{row.version}: {status}")
    if bad:
        raise typer.Exit(1)


@adapters_app.command("remove")
def adapters_remove(
    name: str,
    version: Annotated[int | None, typer.Option(help="One version (default: all)")] = None,
    keep_files: bool = False,
    force: Annotated[bool, typer.Option(help="Also remove a promoted version")] = False,
) -> None:
    """Remove an adapter (or one version) from the registry and disk."""
    from core.adapters import registry

    s, store = _store()
    try:
        removed = registry.remove(
            store, name, version, delete_files=not keep_files, force=force, root=s.adapters_dir
        )
    except ArmadaError as e:
        _fail(e)
    console.print(f"removed {len(removed)} version(s) of {name}")


@adapters_app.command("register")
def adapters_register(
    folder: Path, name: Annotated[str | None, typer.Option()] = None, promote: bool = False
) -> None:
    """Register an adapter folder (verified first)."""
    from core.adapters import registry

    _, store = _store()
    try:
        row = registry.register(store, folder, name=name)
        if promote:
            row = registry.promote(store, row.name, row.version)
    except ArmadaError as e:
        _fail(e)
    console.print(f"registered {row.name} v{row.version} ({row.status})")


@adapters_app.command("promote")
def adapters_promote(name: str, version: int) -> None:
    """Serve this version for arms using adapter NAME."""
    from core.adapters import registry

    _, store = _store()
    try:
        row = registry.promote(store, name, version)
    except (ArmadaError, InputError) as e:
        _fail(e)
    console.print(f"{row.name} v{row.version} promoted")


@adapters_app.command("rollback")
def adapters_rollback(name: str) -> None:
    """Demote the promoted version of NAME and promote the one before it."""
    from core.adapters import registry

    _, store = _store()
    try:
        row = registry.roll_back(store, name)
    except ArmadaError as e:
        _fail(e)
    console.print(f"{row.name} rolled back to v{row.version}")


@raft_app.command("router")
def raft_router(
    expert: Annotated[
        list[str],
        typer.Option(
            "--expert",
            "-e",
            help="EXPERT=SOURCE: a training JSONL or a dataset spec KIND:PATH (repeatable)",
        ),
    ],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for prototypes + gate")],
    metric: Annotated[str, typer.Option(help="cosine | mahalanobis")] = "mahalanobis",
    held_out: Annotated[
        float, typer.Option(help="Leave out this seeded fraction of each dataset spec")
    ] = 0.0,
    exclude: Annotated[
        list[str] | None, typer.Option(help="Drop every question of this dataset spec")
    ] = None,
    max_per_expert: int = 1000,
    seed: int = 0,
) -> None:
    """Fit the expert routers of a multi_lora_raft arm from questions of each expert's domain:
    prototypes (OUT/prototypes.json) and a gate (OUT/gate/). Point the arm's options at them:
    ``prototypes = "OUT/prototypes.json"`` or ``router = "gate", gate_dir = "OUT/gate"``.

    Questions only (no answers) are needed, so a router can learn from more of a domain than
    the adapter was trained on; ``--held-out`` and ``--exclude`` keep evaluation questions out."""
    import random

    import numpy as np

    from core.datasets import load_dataset, split
    from core.retrieval import embed_texts
    from routers.experts import PrototypeRouter, train_gate
    from training.raft import read_records

    def norm(q: str) -> str:
        return " ".join(q.lower().split())

    s = load_settings()
    try:
        banned = {norm(e.question) for spec in exclude or [] for e in load_dataset(spec)}
        questions: dict[str, list[str]] = {}
        for item in expert:
            name, sep, source = item.partition("=")
            if not sep or not name or not source:
                raise InputError(f"--expert takes EXPERT=SOURCE, got {item!r}")
            if source.endswith(".jsonl") and Path(source).is_file():
                records, _ = read_records(Path(source))
                found = [r["question"] for r in records if r.get("question")]
            else:
                loaded = load_dataset(source)
                pool = [e for e in loaded if e.gold]
                left = {e.id for e in split(pool, held_out, seed)[1]} if held_out else set()
                found = [e.question for e in loaded if e.id not in left]
            bucket = questions.setdefault(name, [])
            seen = {norm(q) for q in bucket}
            for q in found:
                if norm(q) not in seen and norm(q) not in banned:
                    seen.add(norm(q))
                    bucket.append(q)
        by_expert: dict[str, np.ndarray] = {}
        for name, qs in questions.items():
            if not qs:
                raise InputError(f"expert {name!r}: no questions left to fit on")
            if len(qs) > max_per_expert:
                qs = random.Random(f"{seed}:{name}").sample(qs, max_per_expert)
            by_expert[name] = np.asarray(embed_texts(s, qs), dtype=np.float32)
        protos = PrototypeRouter.from_embeddings(by_expert, metric=metric)
        experts = list(by_expert)
        x = np.concatenate([by_expert[e] for e in experts])
        y = [e for e in experts for _ in range(len(by_expert[e]))]
        gate = train_gate(x, y, experts, seed=seed)
        out_dir.mkdir(parents=True, exist_ok=True)
        protos.save(out_dir / "prototypes.json")
        gate.save(out_dir / "gate")
    except (ArmadaError, ValueError) as e:
        _fail(e)
    counts = {e: len(v) for e, v in by_expert.items()}
    console.print(
        f"wrote {out_dir / 'prototypes.json'} ({metric}) and {out_dir / 'gate'} from {counts} "
        f"questions (gate train accuracy {gate.metrics.get('train_accuracy')})"
    )
