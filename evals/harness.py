"""The A/B harness: run arms on the same questions, cache every answer, score, report, store.

    armada eval --arms rag,closed_book --dataset hotpotqa:PATH --n 200 --out runs/ab

or from Python, over any ``Armada`` (tests pass one with cheap test agents)::

    from evals.harness import EvalConfig, run_eval
    report = run_eval(rt, EvalConfig(arms=["rag"], datasets=["hotpotqa:PATH"], out=Path("runs/x")))

Answers go through ``Armada.ask(question, arm=…)``, so they take the app's own path (retrieve →
route → generate → record). Each answer is appended to ``OUT/answers.jsonl`` as soon as it exists,
keyed by (arm, dataset:example id, settings hash); a killed run resumes where it stopped, and a
changed arm, model or retrieval setting misses the cache instead of reusing stale answers.
Examples are chosen by a seeded hash of their ids (``core.datasets.split``), so the same seed picks
the same questions; bootstrap intervals are seeded too, so the same cache and seed give the same
report. Outputs: ``report.json``, ``report.md``, ``cost_quality.png`` and an ``EvalRun`` row.
"""

from __future__ import annotations

import contextlib
import json
import logging
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from core.config import is_adapter_path as is_path
from core.datasets import Example, load_dataset, split
from core.store.tables import EvalRun, utcnow
from evals.cache import JsonlCache, cache_key, exclusive, settings_hash

if TYPE_CHECKING:
    from app.runtime import Armada
    from evals.judge import Judge

log = logging.getLogger(__name__)

ANSWERS_FILE = "answers.jsonl"
Progress = Callable[[int, int], None]


@dataclass
class EvalConfig:
    """One evaluation run; stored whole with its results."""

    arms: list[str]
    datasets: list[str]
    """Dataset specs for ``core.datasets.load_dataset``, e.g. ``"hotpotqa:PATH"``."""
    out: Path
    """Folder for the answer cache and the reports."""
    n: int = 100
    """Questions per dataset (fewer if the dataset has fewer)."""
    seed: int = 0
    judge: Literal["none", "llm"] = "none"
    judge_model: str = "default"
    """A configured model name (``settings.models``): the local default or an OpenAI-compatible one."""
    rubric: str | None = None
    """A rubric file (TOML or JSON of ``evals.judge.Rubric`` fields); default: the built-in one."""
    n_boot: int = 2000
    require_gold: bool = True
    """Keep only examples with gold passages (PopQA rows without paragraphs have no gold in the
    corpus, so retrieval cannot be scored and RAG cannot be expected to help)."""
    stress: int = 0
    """Distractor stress test: extra hard distractors per question (0: off); ``evals/stress.py``."""
    stress_n: int = 30
    """Questions per dataset in the stress test (the first of the chosen ones)."""
    name: str = ""
    command: str = ""
    """The command line that made this run, recorded in the report."""

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if not self.arms:
            raise ValueError("give at least one arm")
        if len(set(self.arms)) != len(self.arms):
            raise ValueError(f"duplicate arms in {self.arms}")
        if not self.datasets:
            raise ValueError("give at least one dataset (KIND:PATH)")
        if self.n < 1 or self.n_boot < 100 or self.stress < 0 or self.stress_n < 1:
            raise ValueError("n and stress_n must be ≥ 1, n_boot ≥ 100 and stress ≥ 0")
        if self.judge not in ("none", "llm"):
            raise ValueError(f"judge must be 'none' or 'llm', got {self.judge!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        return d


# -- choosing and answering ----------------------------------------------------------------------------
def select_examples(
    examples: list[Example], n: int, seed: int, require_gold: bool
) -> list[Example]:
    """``n`` examples picked by a seeded hash of their ids, in the dataset's order."""
    pool = [e for e in examples if e.gold] if require_gold else list(examples)
    if len(pool) <= n:
        return pool
    return split(pool, held_out=n / len(pool), seed=seed)[1]


def _vram_mb() -> float | None:
    torch = sys.modules.get("torch")  # only when something already loaded it
    if torch is None or not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def ask_record(rt: Armada, arm: str, example: Example, shash: str) -> dict[str, Any]:
    """Ask one question of one arm and return the record the cache keeps."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    res = rt.ask(example.question, arm=arm, tags={"dataset": example.dataset})
    wall_ms = (time.perf_counter() - t0) * 1000
    return {
        "key": cache_key(arm, example, shash),
        "arm": arm,
        "dataset": example.dataset,
        "example_id": example.id,
        "settings_hash": shash,
        "question": example.question,
        "answer": res.answer,
        "answered_by": res.arm,
        "status": res.status,
        "error": res.error,
        "hits": [
            {"id": h.passage.id, "title": h.passage.title, "text": h.passage.text} for h in res.hits
        ],
        "cited_ids": list(res.cited_ids),
        "latency_ms": {**res.latency_ms, "wall": round(wall_ms, 2)},
        "usage": dict(res.usage),
        # The process's peak so far (arms sharing a process share it; see the report's notes).
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "vram_mb": _vram_mb(),
        "details": {k: v for k, v in res.details.items() if k != "peak_rss_mb"},
        "interaction_id": res.interaction_id,
        "created_at": utcnow().isoformat(),
    }


def warm_up(rt: Armada, arms: list[str]) -> None:
    """Load the retriever, classifier and models first, so loading is not counted as latency."""
    with contextlib.suppress(Exception):
        rt.retrieve("warm up")
    with contextlib.suppress(Exception):
        rt.route_context("warm up")
    for arm in arms:
        agent = rt.agent(arm)
        if agent.needs_model:
            load = getattr(rt.model(agent.arm.model), "load", None)
            if callable(load):
                load()


def answer_all(
    rt: Armada,
    arms: list[str],
    examples: list[Example],
    cache: JsonlCache,
    progress: Progress | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every (arm, example) answer, from the cache or by asking. Questions are taken in order
    with every arm on each, so a partial run has about the same questions for every arm."""
    hashes = {arm: settings_hash(rt.settings, arm, rt.adapter_fingerprint(arm)) for arm in arms}
    total = len(arms) * len(examples)
    todo = [(e, a) for e in examples for a in arms if cache_key(a, e, hashes[a]) not in cache]
    if todo:
        warm_up(rt, sorted({a for _, a in todo}))
    done = total - len(todo)
    if progress:
        progress(done, total)
    for example, arm in todo:
        row = ask_record(rt, arm, example, hashes[arm])
        cache.put(row)
        done += 1
        if on_record:
            on_record(row)
        if progress:
            progress(done, total)
    out = {}
    for e in examples:
        for a in arms:
            key = cache_key(a, e, hashes[a])
            out[key] = cache.get(key)  # type: ignore[assignment]
    return out


# -- arm facts -------------------------------------------------------------------------------------------
def _folder_mb(path: Path) -> float:
    files = [p for p in path.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin")]
    return round(sum(p.stat().st_size for p in files) / 2**20, 3)


def _metadata_number(path: Path, keys: tuple[str, ...]) -> float | None:
    for meta in sorted(path.glob("*.json")):
        with contextlib.suppress(Exception):
            data = json.loads(meta.read_text())
            for scope in (data, data.get("metrics", {}), data.get("training", {})):
                for k in keys:
                    if isinstance(scope, dict) and isinstance(scope.get(k), int | float):
                        return float(scope[k])
    return None


def adapter_facts(rt: Armada, arm: str) -> dict[str, Any]:
    """Training time and adapter size from the arm's adapter metadata; zeros without an adapter.

    An arm's adapters are what its agent names (``ft``/``raft`` default to their own name, a
    ``multi_lora_raft`` arm has one per expert: times and sizes are summed). Each is found in the
    ``adapter`` table (the version it serves, else the latest) or under
    ``settings.adapters_dir/NAME``; a fact its metadata lacks is None, not guessed.
    """
    cfg = rt.settings.arm(arm)
    names = rt.agent_classes[cfg.agent](cfg).adapter_names()
    if not names:
        return {"adapter": None, "train_time_s": 0.0, "adapter_mb": 0.0}
    from core.adapters import registry
    from core.errors import AdapterError

    train_total: float | None = 0.0
    mb_total: float | None = 0.0
    for name in names:
        row = None
        try:
            row = registry.resolve(rt.store, name)
        except AdapterError:
            rows = registry.list_adapters(rt.store, name)
            row = max(rows, key=lambda a: a.version, default=None)
        path = (
            Path(row.path)
            if row
            else Path(name).expanduser()
            if is_path(name)
            else rt.settings.adapters_dir / name
        )
        train = (row.metrics or {}).get("train_time_s") if row else None
        if not isinstance(train, int | float) and path.is_dir():
            train = _metadata_number(path, ("train_time_s", "training_time_s", "train_runtime"))
        mb = _folder_mb(path) if path.is_dir() else None
        train_total = (
            train_total + float(train)
            if isinstance(train, int | float) and train_total is not None
            else None
        )
        mb_total = mb_total + mb if mb is not None and mb_total is not None else None
    return {
        "adapter": ",".join(names),
        "train_time_s": round(train_total, 2) if train_total is not None else None,
        "adapter_mb": round(mb_total, 3) if mb_total is not None else None,
    }


def arm_facts(rt: Armada, arm: str) -> dict[str, Any]:
    agent = rt.agent(arm)
    cfg = rt.settings.arm(arm)
    return {
        "agent": cfg.agent,
        "model": cfg.model,
        "retrieves": bool(agent.needs_retrieval),
        "settings_hash": settings_hash(rt.settings, arm, rt.adapter_fingerprint(arm)),
        **adapter_facts(rt, arm),
    }


# -- the whole run ---------------------------------------------------------------------------------------
def load_examples(cfg: EvalConfig) -> dict[str, list[Example]]:
    """The chosen examples per dataset kind (two specs of one kind are merged under one key)."""
    chosen: dict[str, list[Example]] = {}
    for spec in cfg.datasets:
        examples = load_dataset(spec)
        picked = select_examples(examples, cfg.n, cfg.seed, cfg.require_gold)
        if not picked:
            raise ValueError(f"{spec}: no examples left (require_gold={cfg.require_gold})")
        kind = picked[0].dataset
        chosen.setdefault(kind, []).extend(picked)
    return chosen


def interleave(lists: list[list[Example]]) -> list[Example]:
    """Round-robin over the datasets, so a partial run has covered each about equally."""
    out = []
    for i in range(max((len(x) for x in lists), default=0)):
        out.extend(x[i] for x in lists if i < len(x))
    return out


def run_eval(
    rt: Armada,
    cfg: EvalConfig,
    progress: Progress | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    answer: bool = True,
    judge: Judge | None = None,
) -> dict[str, Any]:
    """Answer (or resume), judge if asked, build and write the report, store it as an EvalRun.

    ``answer=False`` reports what the cache holds without asking anything (partial cells carry
    their own ``n``). ``judge`` replaces the configured judge (``cfg.judge == "llm"``).
    """
    from evals.report import build_report, write_outputs

    for arm in cfg.arms:
        rt.check_arm(arm)
    # Reporting only reads the answers, so it may run beside the run that is writing them.
    with exclusive(cfg.out) if answer else contextlib.nullcontext():
        by_ds = load_examples(cfg)
        cache = JsonlCache(cfg.out / ANSWERS_FILE, repair=answer)
        records: dict[str, dict[str, Any]] = {}
        flat = interleave(list(by_ds.values()))
        if answer:
            records = answer_all(rt, cfg.arms, flat, cache, progress, on_record)
        else:
            hashes = {a: settings_hash(rt.settings, a, rt.adapter_fingerprint(a)) for a in cfg.arms}
            for e in flat:
                for a in cfg.arms:
                    if (row := cache.get(cache_key(a, e, hashes[a]))) is not None:
                        records[row["key"]] = row
        facts = {arm: arm_facts(rt, arm) for arm in cfg.arms}
        judged = humans = None
        if cfg.judge == "llm":
            from evals.judge import Judge, load_rubric
            from evals.judging import human_agreement, judge_records

            judge = judge or Judge(rt.model(cfg.judge_model), load_rubric(cfg.rubric))
            judged = judge_records(rt, cfg, by_ds, records, facts, judge)
            humans = human_agreement(rt, judge, cache=JsonlCache(cfg.out / "judge.jsonl"))
        stress = None
        if cfg.stress:
            from evals.stress_run import run_stress

            stress = run_stress(rt, cfg, by_ds)
        report = build_report(cfg, by_ds, records, facts, judged=judged, stress=stress)
        if humans is not None:
            report["judge"]["human_votes"] = humans
        write_outputs(report, cfg.out)
        report["eval_run_id"] = store_run(rt, cfg, report)
    return report


def store_run(rt: Armada, cfg: EvalConfig, report: dict[str, Any]) -> str:
    """Write (or, on a resumed run, update) this output folder's ``EvalRun`` row."""
    id_file = cfg.out / "eval_run_id"
    run_id = id_file.read_text().strip() if id_file.exists() else ""
    kinds = sorted(report["datasets"])
    name = cfg.name or f"{','.join(cfg.arms)} on {'+'.join(kinds)} (n≤{cfg.n}, seed {cfg.seed})"
    config = {
        **cfg.to_dict(),
        "kind": "eval",
        "dataset": "+".join(kinds),
        "arm_settings": report["config"]["arm_facts"],
    }
    metrics = {k: v for k, v in report.items() if k != "config"}
    status = "done" if report["complete"] else "partial"
    with rt.store.write() as s:
        row = s.get(EvalRun, run_id) if run_id else None
        if row is None:
            row = EvalRun(name=name, config=config, metrics=metrics, status=status)
        else:
            row.name, row.config, row.metrics, row.status = name, config, metrics, status
        s.add(row)
        s.flush()
        run_id = row.id
    id_file.write_text(run_id)
    return run_id


__all__ = [
    "EvalConfig",
    "JsonlCache",
    "answer_all",
    "cache_key",
    "run_eval",
    "select_examples",
    "settings_hash",
]
