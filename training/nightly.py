"""Nightly retraining: from thumbs-up to a better adapter, promoted only when it wins.

    armada retrain [--dry-run]            # or: run_nightly(settings)

One run improves the adapter of one arm (``nightly.arm``, a ``raft`` or ``ft`` arm) with the votes
cast since the last run, in stages, each with an atomic output in ``$ARMADA_HOME/nightly/<run>/``:

1. **gather** (``data.jsonl`` + manifest, ``gather.json``): thumbs-up interactions with a vote
   in (watermark, newest seq] → (question, the passages the arm saw, answer) records, scrubbed,
   de-duplicated and capped per voter and session (``training.feedback_data``); optionally
   re-answered by a teacher; mixed with a seeded replay sample of the original RAFT file.
   Fewer than ``min_examples`` (or no new vote at all): the run is recorded as ``skipped: …``,
   trains nothing and leaves the watermark where it is.
2. **train** (``train.json``): ``training.lora.train`` with the champion's hyperparameters (and
   ``nightly.train`` overrides), published as the next version of the champion's adapter name
   with status ``registered``. A champion that is only ``registered`` is first pinned
   (``promoted``: what serves does not change), so the newer candidate never serves by being
   newest.
3. **evaluate** (``eval/``, ``evaluation.json``): the evaluation harness asks candidate and
   champion (two temporary arms whose adapters are the two folders, same agent and settings as
   the arm, in a scratch database ``eval.db``) the fixed evaluation set, whose questions are never
   trained on. Answers are cached, so a killed evaluation resumes.
4. **decide** (``decision.json``): paired bootstrap of candidate − champion on ``nightly.metric``:
   promoted if the 95% interval's lower end is above ``margin``, or if the two are equal in
   quality (the interval contains 0 and the mean difference ≥ −``equal_tolerance``) and the
   candidate is ``cheaper_by`` smaller (adapter bytes) or faster (p50 latency); else rejected.
   Every reason is kept as text.
5. **promote + record**, one database transaction: the candidate becomes ``promoted`` (the old
   champion ``retired``: ``armada adapters rollback`` returns to it) or ``rejected`` with its
   reasons; its offline score goes to ``metrics["offline_score"]`` (``registry.offline_prior``);
   an ``EvalRun`` row (``config["kind"] == "nightly"``) keeps decision, reasons, candidate,
   champion and data counts; the watermark moves to the run's newest seq.

**Kill -9 anywhere**: nothing the champion serves changes before the single transaction of stage 5
(SQLite rolls an unfinished one back). The next run takes the same run folder (same watermark
range) and goes on from the first stage without its output: training resumes from its checkpoint
or finds the version it already published, evaluation from its answer cache. Only one run at a
time (``$ARMADA_HOME/nightly.lock``); a second one fails at once with a clear error.

Scheduling (the README has both)::

    # crontab -e: every night at 03:17
    17 3 * * * cd /srv/armada && ARMADA_HOME=/srv/armada/data .venv/bin/armada retrain >> data/nightly.log 2>&1

    # /etc/systemd/system/armada-retrain.service
    [Service]
    Type=oneshot
    WorkingDirectory=/srv/armada
    Environment=ARMADA_HOME=/srv/armada/data
    ExecStart=/srv/armada/.venv/bin/armada retrain
    # /etc/systemd/system/armada-retrain.timer
    [Timer]
    OnCalendar=*-*-* 03:17
    Persistent=true
    [Install]
    WantedBy=timers.target
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlmodel import select

from core.adapters import format as fmt
from core.adapters import registry
from core.config import ArmConfig, RouterConfig, Settings, StoreConfig, is_adapter_path
from core.errors import AdapterError, ArmadaError, InputError
from core.retrieval.storage import atomic_write_text
from core.store import Adapter, EvalRun, Store
from core.store.tables import Meta, utcnow
from training import feedback_data as fd

log = logging.getLogger(__name__)

SUPPORTED_AGENTS = ("raft", "ft")
CANDIDATE_ARM, CHAMPION_ARM = "nightly_candidate", "nightly_champion"
RUN_FILE, GATHER_FILE, DATA_FILE = "run.json", "gather.json", "data.jsonl"
TRAIN_FILE, EVAL_FILE, DECISION_FILE = "train.json", "evaluation.json", "decision.json"
EVAL_DIR, EVAL_DB = "eval", "eval.db"
LOCK_FILE = "nightly.lock"
PROMOTED, REJECTED, SKIPPED = "promoted", "rejected", "skipped"

OnStage = Callable[[str], None]
"""Called with ``gather``, ``gather:written``, ``train``, ``train:step``, ``evaluate``,
``evaluate:answer``, ``decide``, ``promote``, ``promote:commit`` (inside the transaction, before
it commits), ``promote:committed`` and ``done``: progress for a CLI, kill points for tests."""

_PROCESS_LOCK = threading.Lock()


class NightlyBusyError(ArmadaError):
    """Another nightly run holds the lock."""


# -- the lock and the watermark --------------------------------------------------------------------
@contextlib.contextmanager
def run_lock(path: Path) -> Iterator[None]:
    """Hold ``path`` exclusively for the block, or raise NightlyBusyError at once.

    Its own ``flock`` (not ``core.retrieval.storage.writer_lock``, whose one process-wide thread
    lock would make the trainer's own lock inside it fail).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    busy = NightlyBusyError(
        f"another nightly run is in progress (lock {path} is held); wait for it to finish, "
        "or find it with `fuser` if you think it is stuck"
    )
    if not _PROCESS_LOCK.acquire(blocking=False):
        raise busy
    try:
        with open(path, "a+") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise busy from None
            try:
                f.seek(0)
                f.truncate()
                f.write(f"{os.getpid()}\n")
                f.flush()
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    finally:
        _PROCESS_LOCK.release()


def watermark_key(arm: str) -> str:
    return f"nightly:{arm}"[:64]


def watermark(store: Store, arm: str) -> int:
    """The highest feedback ``seq`` a finished run for ``arm`` consumed (0: none yet)."""
    with store.session() as s:
        row = s.get(Meta, watermark_key(arm))
        return row.value if row else 0


def _advance_watermark(s: Any, arm: str, seq: int) -> None:
    row = s.get(Meta, watermark_key(arm), with_for_update=True) or Meta(key=watermark_key(arm))
    row.value = max(row.value or 0, seq)
    s.add(row)


# -- the gate ---------------------------------------------------------------------------------------
@dataclass
class Decision:
    decision: str
    """``promoted`` or ``rejected``."""
    reasons: list[str]
    metric: str = ""
    n: int = 0
    candidate_score: float | None = None
    champion_score: float | None = None
    diff: float | None = None
    low: float | None = None
    high: float | None = None
    p: float | None = None
    rule: str = ""
    """``better``, ``equal_and_cheaper`` or "" (rejected)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def decide(
    candidate: Sequence[float],
    champion: Sequence[float],
    *,
    candidate_cost: dict[str, Any] | None = None,
    champion_cost: dict[str, Any] | None = None,
    margin: float = 0.0,
    equal_tolerance: float = 0.01,
    cheaper_by: float | None = 0.1,
    metric: str = "score",
    n_boot: int = 2000,
    seed: int = 0,
) -> Decision:
    """The gate, on paired per-question scores (see the module docstring); pure and seeded.

    Costs: ``{"adapter_bytes": int, "latency_p50_ms": float}`` (either may be None).
    """
    from evals.stats import paired_bootstrap

    if len(candidate) != len(champion):
        raise ValueError(f"{len(candidate)} candidate scores for {len(champion)} champion scores")
    n = len(candidate)
    if n == 0:
        return Decision(REJECTED, ["no evaluation question was answered by both adapters"], metric)
    diff, lo, hi, p = paired_bootstrap(candidate, champion, n_boot, seed)
    cs, hs = _mean(candidate), _mean(champion)
    d = Decision(REJECTED, [], metric, n, cs, hs, diff, lo, hi, p)
    d.reasons.append(
        f"{metric}: candidate {cs:.3f} vs champion {hs:.3f}, difference {diff:+.3f}, "
        f"95% CI [{lo:+.3f}, {hi:+.3f}] over {n} questions"
    )
    if lo > margin:
        d.decision, d.rule = PROMOTED, "better"
        d.reasons.append(
            f"better: the interval's lower end {lo:+.3f} is above the margin {margin:+.3f}"
        )
        return d
    d.reasons.append(
        f"not better by the margin: the interval's lower end {lo:+.3f} ≤ {margin:+.3f}"
    )
    if hi < 0:
        d.reasons.append("worse: the whole interval is below 0")
        return d
    if not (lo <= 0 <= hi and diff >= -equal_tolerance):
        d.reasons.append(
            f"not equal in quality: the mean difference {diff:+.3f} is below −{equal_tolerance:g}"
        )
        return d
    if cheaper_by is None:
        d.reasons.append("equal in quality; the equal-and-cheaper rule is off (cheaper_by = None)")
        return d
    cc, hc = candidate_cost or {}, champion_cost or {}
    savings, costs = [], []
    cb, hb = cc.get("adapter_bytes"), hc.get("adapter_bytes")
    if cb and hb:
        costs.append(f"adapter {cb / 2**20:.3f} MB vs {hb / 2**20:.3f} MB")
        if cb <= (1 - cheaper_by) * hb:
            savings.append(costs[-1])
    cl, hl = cc.get("latency_p50_ms"), hc.get("latency_p50_ms")
    if cl is not None and hl:
        costs.append(f"p50 latency {cl:.0f} ms vs {hl:.0f} ms")
        if cl <= (1 - cheaper_by) * hl:
            savings.append(costs[-1])
    if savings:
        d.decision, d.rule = PROMOTED, "equal_and_cheaper"
        d.reasons.append(
            f"equal in quality and cheaper by ≥ {cheaper_by:.0%}: {'; '.join(savings)}"
        )
    else:
        d.reasons.append(
            f"equal in quality but not cheaper by ≥ {cheaper_by:.0%}"
            + (f" ({'; '.join(costs)})" if costs else " (no cost measured)")
        )
    return d


# -- results ----------------------------------------------------------------------------------------
@dataclass
class NightlyResult:
    decision: str
    """``promoted``, ``rejected``, ``skipped`` or ``dry-run``."""
    reasons: list[str]
    arm: str
    adapter: str | None = None
    run_id: str | None = None
    from_seq: int = 0
    to_seq: int = 0
    data: dict[str, Any] = field(default_factory=dict)
    records: int = 0
    """Training records (feedback + replay)."""
    candidate: dict[str, Any] = field(default_factory=dict)
    champion: dict[str, Any] = field(default_factory=dict)
    eval_run_id: str | None = None
    """The ``EvalRun`` row that records this run (None when nothing was recorded)."""
    resumed: bool = False
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class _Target:
    """The arm being improved and its champion adapter."""

    arm: ArmConfig
    adapter: str
    kind: str
    retrieves: bool
    top_k: int | None
    champion: Adapter | None
    meta: dict[str, Any]
    system: str | None
    max_words: int | None
    problem: str = ""
    """Why the champion cannot be improved (no servable version, unreadable folder), or ""."""


def _target(settings: Settings, store: Store, arm_name: str) -> _Target:
    try:
        arm = settings.arm(arm_name)
    except KeyError as e:
        raise InputError(str(e).strip("'\"")) from None
    if arm.agent not in SUPPORTED_AGENTS:
        raise InputError(
            f"arm {arm_name!r} uses agent {arm.agent!r}; nightly retraining improves the single "
            f"adapter of a {' or '.join(SUPPORTED_AGENTS)} arm"
        )
    adapter = arm.adapter or arm.agent  # the agents' default adapter names are their own names
    if is_adapter_path(adapter):
        raise InputError(
            f"arm {arm_name!r} serves the adapter folder {adapter}; nightly retraining needs a "
            "registered adapter name (`armada adapters register FOLDER --name NAME`)"
        )
    champion, meta, problem = None, {}, ""
    try:
        champion = registry.resolve(store, adapter)
        meta = fmt.read_meta(Path(champion.path))
    except AdapterError as e:
        champion, problem = None, str(e)
    except (OSError, ValueError) as e:
        problem = f"the champion's meta.json cannot be read ({champion.path}): {e}"  # type: ignore[union-attr]
    backend = settings.models[arm.model].backend
    if backend != "local":
        raise InputError(
            f"arm {arm_name!r} runs on a {backend!r} model; nightly retraining trains and "
            "evaluates local LoRA adapters"
        )
    prompt = meta.get("prompt") or {}
    kind = "ft" if arm.agent == "ft" else "raft"
    return _Target(
        arm=arm,
        adapter=adapter,
        kind=kind,
        retrieves=kind != "ft",
        top_k=arm.top_k or settings.retrieval.top_k,
        champion=champion,
        meta=meta,
        system=arm.prompt or prompt.get("system"),
        max_words=prompt.get("max_passage_words", 120),
        problem=problem,
    )


def _passages_of(settings: Settings) -> fd.PassagesOf:
    from core.retrieval.catalogue import Catalogue

    catalogue = Catalogue(settings.corpus_db_path, settings.store.busy_timeout_ms)
    return catalogue.passages_by_id


def _gather(
    settings: Settings, store: Store, t: _Target, from_seq: int, to_seq: int, salt: str
) -> fd.Gathered:
    cfg = settings.nightly
    eval_set = _eval_set(cfg)
    return fd.gather_feedback(
        store,
        _passages_of(settings),
        cfg,
        from_seq=from_seq,
        to_seq=to_seq,
        top_k=t.top_k,
        retrieves=t.retrieves,
        eval_set=eval_set,
        salt=salt,
    )


# -- the run folder ---------------------------------------------------------------------------------
def nightly_dir(settings: Settings) -> Path:
    return settings.home / "nightly"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, ensure_ascii=False, default=str) + "\n")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _runs(settings: Settings) -> list[tuple[Path, dict[str, Any]]]:
    root = nightly_dir(settings)
    if not root.is_dir():
        return []
    out = []
    for d in sorted(root.iterdir()):
        state = _read_json(d / RUN_FILE) if d.is_dir() else None
        if state is not None:
            out.append((d, state))
    return out


def _recorded(store: Store, run_id: str) -> EvalRun | None:
    with store.session() as s:
        for row in s.exec(select(EvalRun).order_by(EvalRun.created_at.desc())):
            if (row.config or {}).get("kind") == "nightly" and row.config.get("run_id") == run_id:
                return row
    return None


def _abandon(store: Store, run_dir: Path, state: dict[str, Any], reason: str) -> None:
    """Close a run that will not be resumed: its candidate (if any) can never serve."""
    info = _read_json(run_dir / TRAIN_FILE)
    if info is not None:
        row = registry.get(store, info["name"], int(info["version"]))
        if row is not None and row.status == registry.REGISTERED:
            registry.set_status(store, row.name, row.version, registry.REJECTED, reason)
    _write_json(run_dir / RUN_FILE, {**state, "status": "abandoned", "reason": reason})
    log.info("nightly run %s abandoned: %s", state.get("run_id"), reason)


def _pending_run(
    settings: Settings, store: Store, arm: str, mark: int
) -> tuple[Path, dict[str, Any]] | None:
    """The unfinished run of ``arm`` that starts at the watermark (to resume); unfinished runs
    behind it were recorded (only a recorded run moves the watermark) and are closed."""
    found = None
    for run_dir, state in _runs(settings):
        if state.get("status") != "running" or state.get("arm") != arm:
            continue
        if int(state.get("from_seq", -1)) == mark and found is None:
            found = (run_dir, state)
        elif _recorded(store, str(state.get("run_id"))) is not None:
            _write_json(run_dir / RUN_FILE, {**state, "status": "done"})
        else:
            _abandon(store, run_dir, state, "superseded by a later nightly run")
    return found


# -- stages -----------------------------------------------------------------------------------------
def _write_data(
    settings: Settings,
    t: _Target,
    run_dir: Path,
    state: dict[str, Any],
    got: fd.Gathered,
    on_stage: OnStage,
) -> dict[str, Any]:
    cfg = settings.nightly
    examples, distill_stats = got.examples, None
    if cfg.teacher:
        from core.models import get_model

        teacher = get_model(settings, cfg.teacher)
        examples, distill_stats = fd.distill(
            examples,
            teacher,
            system=t.system if t.kind == "raft" else None,
            max_words=t.max_words,
            max_new_tokens=cfg.teacher_max_new_tokens,
        )
    records = fd.to_records(examples, kind=t.kind, system=t.system, max_words=t.max_words)
    replay, replay_stats = [], None
    if cfg.replay_data is not None and cfg.replay_fraction > 0:
        eval_set = _eval_set(cfg)
        n = fd.replay_count(len(records), cfg.replay_fraction)
        replay, replay_stats = fd.sample_replay(
            cfg.replay_data, n, cfg.seed, state["run_id"], eval_set
        )
    from training.raft import write_raft

    sources = [f"feedback:{state['from_seq']}-{state['to_seq']}"]
    if cfg.replay_data is not None:
        sources.append(str(cfg.replay_data))
    manifest = write_raft(
        [*records, *replay],
        run_dir / DATA_FILE,
        {"max_passage_words": t.max_words, "system": t.system, "seed": cfg.seed},
        sources=sources,
        kind=t.kind,
        extra={"nightly": {"run_id": state["run_id"], "gather": got.stats}},
    )
    on_stage("gather:written")
    info = {
        "stats": got.stats,
        "feedback_records": len(records),
        "replay": replay_stats,
        "distill": distill_stats,
        "records": manifest["records"],
        "data_hash": manifest["data_hash"],
    }
    _write_json(run_dir / GATHER_FILE, info)
    return info


def _train_config(settings: Settings, t: _Target) -> Any:
    from training.lora import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    hp = {k: v for k, v in (t.meta.get("hyperparameters") or {}).items() if k in names}
    unknown = sorted(set(settings.nightly.train) - names)
    if unknown:
        raise InputError(
            f"nightly.train: unknown TrainConfig fields {unknown}; known: {sorted(names)}"
        )
    hp["kind"] = t.meta.get("kind") or hp.get("kind") or t.kind
    return TrainConfig(**(hp | dict(settings.nightly.train)))


def _published_by(settings: Settings, adapter: str, run_id: str) -> Path | None:
    """The version folder a killed run already published for ``run_id`` (meta ``nightly.run_id``)."""
    root = settings.adapters_dir / adapter
    if not root.is_dir():
        return None
    for d in sorted(root.glob("v*")):
        if not d.name[1:].isdigit():
            continue
        with contextlib.suppress(OSError, ValueError):
            if (fmt.read_meta(d).get("nightly") or {}).get("run_id") == run_id:
                return d
    return None


def _pin_champion(store: Store, t: _Target) -> None:
    """A champion served only as the newest ``registered`` version is promoted (what serves does
    not change), so the candidate, registered as a newer version, cannot serve by being newest."""
    assert t.champion is not None
    row = registry.get(store, t.adapter, t.champion.version)
    if row is not None and row.status == registry.REGISTERED:
        registry.promote(store, t.adapter, t.champion.version)
        log.info("pinned %s v%d (promoted) before training a candidate", t.adapter, row.version)


def _train(
    settings: Settings,
    store: Store,
    t: _Target,
    run_dir: Path,
    state: dict[str, Any],
    on_stage: OnStage,
) -> dict[str, Any]:
    from training.lora import train

    _pin_champion(store, t)
    folder = _published_by(settings, t.adapter, state["run_id"])
    if folder is not None:  # killed after publishing: register what it published
        meta = fmt.read_meta(folder)
        version = int(meta["version"])
        row = registry.get(store, t.adapter, version) or registry.register(
            store, folder, name=t.adapter, version=version
        )
        metrics = dict(meta.get("metrics") or {})
    else:
        embed = None
        if t.meta.get("prototype") is not None:
            from core.retrieval import embed_texts

            embed = functools.partial(embed_texts, settings)
        res = train(
            run_dir / DATA_FILE,
            t.adapter,
            settings,
            _train_config(settings, t),
            store=store,
            on_step=lambda _step: on_stage("train:step"),
            embed=embed,
            extra_meta={
                "nightly": {
                    "run_id": state["run_id"],
                    "from_seq": state["from_seq"],
                    "to_seq": state["to_seq"],
                    "champion_version": state["champion"]["version"],
                }
            },
        )
        row = res.row or registry.get(store, t.adapter, res.version)
        folder, version, metrics = res.folder, res.version, res.metrics
    info = {
        "name": t.adapter,
        "version": version,
        "folder": str(folder),
        "sha256": row.sha256 if row is not None else registry.manifest_sha256(folder),
        "metrics": metrics,
    }
    _write_json(run_dir / TRAIN_FILE, info)
    return info


def _eval_arm(name: str, arm: ArmConfig, folder: str) -> ArmConfig:
    return ArmConfig(
        name=name,
        agent=arm.agent,
        model=arm.model,
        adapter=str(Path(folder).resolve()),
        top_k=arm.top_k,
        prompt=arm.prompt,
        options=dict(arm.options),
    )


def _evaluate(
    settings: Settings,
    t: _Target,
    run_dir: Path,
    state: dict[str, Any],
    cand: dict[str, Any],
    on_stage: OnStage,
) -> dict[str, Any]:
    from app.runtime import Armada
    from evals.cache import JsonlCache, cache_key
    from evals.harness import ANSWERS_FILE, EvalConfig, load_examples, run_eval
    from evals.scoring import primary_metric, score_record
    from evals.stats import percentile

    cfg = settings.nightly
    eval_settings = settings.model_copy(
        update={
            "arms": [
                _eval_arm(CANDIDATE_ARM, t.arm, cand["folder"]),
                _eval_arm(CHAMPION_ARM, t.arm, state["champion"]["path"]),
            ],
            "router": RouterConfig(
                policy="fixed",
                arm=CHAMPION_ARM,
                fallback_arm=CHAMPION_ARM,
                classify=False,
                arm_timeout_s=settings.router.arm_timeout_s,
            ),
            "store": StoreConfig(
                url=f"sqlite:///{run_dir / EVAL_DB}",
                busy_timeout_ms=settings.store.busy_timeout_ms,
            ),
        }
    )
    ecfg = EvalConfig(
        arms=[CANDIDATE_ARM, CHAMPION_ARM],
        datasets=list(cfg.eval_datasets),
        out=run_dir / EVAL_DIR,
        n=cfg.eval_n,
        seed=cfg.eval_seed,
        n_boot=cfg.n_boot,
        require_gold=cfg.eval_require_gold,
        name=f"nightly {state['run_id']}",
        command="armada retrain",
    )
    rt = Armada(eval_settings)
    try:
        report = run_eval(rt, ecfg, on_record=lambda _row: on_stage("evaluate:answer"))
    finally:
        rt.close()
    facts = report["config"]["arm_facts"]
    cache = JsonlCache(ecfg.out / ANSWERS_FILE, repair=False)
    pairs, latency = [], {CANDIDATE_ARM: [], CHAMPION_ARM: []}
    failures = {CANDIDATE_ARM: 0, CHAMPION_ARM: 0}
    for kind, examples in load_examples(ecfg).items():
        metric = primary_metric(kind) if cfg.metric == "primary" else cfg.metric
        for e in examples:
            recs = {a: cache.get(cache_key(a, e, facts[a]["settings_hash"])) for a in latency}
            if any(r is None for r in recs.values()):
                continue
            scores = {}
            for a, r in recs.items():
                total = (r.get("latency_ms") or {}).get("total")
                if total is not None:
                    latency[a].append(float(total))
                failures[a] += r.get("status") != "ok"
                scores[a] = score_record(e, r, retrieves=facts[a]["retrieves"]).get(metric)
            if all(isinstance(v, int | float) for v in scores.values()):
                pairs.append(
                    {
                        "id": f"{kind}:{e.id}",
                        "metric": metric,
                        "candidate": float(scores[CANDIDATE_ARM]),  # type: ignore[arg-type]
                        "champion": float(scores[CHAMPION_ARM]),  # type: ignore[arg-type]
                    }
                )
    if not pairs:
        raise InputError(
            f"nightly.metric {cfg.metric!r} scored no evaluation question of "
            f"{', '.join(cfg.eval_datasets)}; use 'primary', 'f1', 'em' or 'contains'"
        )

    def side(arm: str, folder: str, key: str) -> dict[str, Any]:
        weights = Path(folder) / fmt.WEIGHTS_FILE
        return {
            "score": _mean([p[key] for p in pairs]),
            "latency_p50_ms": percentile(latency[arm], 50),
            "adapter_bytes": weights.stat().st_size if weights.is_file() else None,
            "failures": failures[arm],
        }

    out = {
        "metric": cfg.metric,
        "datasets": list(cfg.eval_datasets),
        "n": len(pairs),
        "complete": bool(report.get("complete")),
        "pairs": pairs,
        "candidate": side(CANDIDATE_ARM, cand["folder"], "candidate"),
        "champion": side(CHAMPION_ARM, state["champion"]["path"], "champion"),
        "report": str(ecfg.out / "report.json"),
    }
    _write_json(run_dir / EVAL_FILE, out)
    return out


def _decide(settings: Settings, run_dir: Path, evaluation: dict[str, Any]) -> Decision:
    cfg = settings.nightly
    pairs = evaluation["pairs"]
    d = decide(
        [p["candidate"] for p in pairs],
        [p["champion"] for p in pairs],
        candidate_cost=evaluation["candidate"],
        champion_cost=evaluation["champion"],
        margin=cfg.margin,
        equal_tolerance=cfg.equal_tolerance,
        cheaper_by=cfg.cheaper_by,
        metric=cfg.metric if cfg.metric != "primary" else "primary metric",
        n_boot=cfg.n_boot,
        seed=cfg.seed,
    )
    failed = (evaluation.get("candidate") or {}).get("failures") or 0
    if failed:  # a candidate that cannot answer every question never wins on "equal and cheaper"
        d.decision, d.rule = "rejected", ""
        d.reasons.append(
            f"the candidate failed on {failed} evaluation question(s) (answered by the fallback)"
        )
    _write_json(run_dir / DECISION_FILE, d.to_dict())
    return d


def _side(info: dict[str, Any], version: int, ev: dict[str, Any]) -> dict[str, Any]:
    size = ev.get("adapter_bytes")
    return {
        "version": version,
        "score": ev.get("score"),
        "latency_p50_ms": ev.get("latency_p50_ms"),
        "adapter_mb": round(size / 2**20, 3) if size else None,
        "failures": ev.get("failures"),
        **info,
    }


def _commit(
    settings: Settings,
    store: Store,
    t: _Target,
    run_dir: Path,
    state: dict[str, Any],
    gather: dict[str, Any],
    cand: dict[str, Any],
    evaluation: dict[str, Any],
    d: Decision,
    on_stage: OnStage,
) -> tuple[str, list[str], str]:
    """Stage 5: the candidate's status, the decision record and the watermark in one transaction."""
    cfg = settings.nightly
    champ_version = int(state["champion"]["version"])
    decision, reasons = d.decision, list(d.reasons)
    advance = True
    score = evaluation["candidate"].get("score")
    with store.write() as s:
        rows = {a.version: a for a in s.exec(select(Adapter).where(Adapter.name == t.adapter))}
        current = next((a for a in rows.values() if a.status == registry.PROMOTED), None)
        mine = rows.get(int(cand["version"]))
        if current is None or current.version != champ_version:
            now = f"v{current.version}" if current is not None else "none"
            reasons.append(
                f"the champion changed during the run (v{champ_version} → {now}): the candidate "
                "was not evaluated against what serves now; its votes are taken again next run"
            )
            decision, advance = REJECTED, False
        extra = {registry.OFFLINE_SCORE: score, "nightly_run": state["run_id"]}
        if mine is None or mine.status != registry.REGISTERED:
            # Removed, promoted or rejected by hand meanwhile: a person's decision stands.
            held = mine.status if mine is not None else "removed"
            reasons.append(f"the candidate was {held} by hand during the run; left as it is")
            if decision == PROMOTED:
                decision, advance = REJECTED, False
        elif decision == PROMOTED:
            registry.set_status_in(s, t.adapter, cand["version"], registry.PROMOTED, metrics=extra)
        else:
            registry.set_status_in(
                s,
                t.adapter,
                cand["version"],
                registry.REJECTED,
                reason="; ".join(reasons),
                metrics=extra,
            )
        on_stage("promote:commit")
        row = EvalRun(
            name=f"nightly {t.arm.name} {state['run_id']}",
            config=_record_config(settings, t, state),
            metrics={
                "decision": decision,
                "reasons": reasons,
                "rule": d.rule if decision == PROMOTED else "",
                "candidate": _side(
                    {"adapter": t.adapter}, cand["version"], evaluation["candidate"]
                ),
                "champion": _side({"adapter": t.adapter}, champ_version, evaluation["champion"]),
                "diff": {"mean": d.diff, "ci95": [d.low, d.high], "p": d.p, "n": d.n},
                "metric": d.metric,
                "data": {
                    **gather["stats"],
                    "records": gather["records"],
                    "replay": gather["replay"],
                    "distill": gather["distill"],
                },
                "watermark": {
                    "from": state["from_seq"],
                    "to": state["to_seq"],
                    "advanced": advance,
                },
                "eval_report": evaluation.get("report"),
            },
            status="done",
        )
        s.add(row)
        if advance:
            _advance_watermark(s, t.arm.name, int(state["to_seq"]))
        s.flush()
        run_row_id = row.id
    if decision == PROMOTED and not cfg.keep_old:
        _prune(store, t.adapter, keep={cand["version"], champ_version})
    return decision, reasons, run_row_id


def _prune(store: Store, name: str, keep: set[int]) -> None:
    """Remove versions that no longer serve (retired, rolled back, rejected), but ``keep``."""
    gone = (registry.RETIRED, registry.ROLLED_BACK, registry.REJECTED)
    for row in registry.list_adapters(store, name):
        if row.status in gone and row.version not in keep:
            with contextlib.suppress(AdapterError):
                registry.remove(store, name, row.version)
                log.info("pruned %s v%d (%s)", name, row.version, row.status)


def _record_config(settings: Settings, t: _Target, state: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "nightly",
        "run_id": state.get("run_id"),
        "arm": t.arm.name,
        "adapter": t.adapter,
        "from_seq": state.get("from_seq"),
        "to_seq": state.get("to_seq"),
        "eval_datasets": list(settings.nightly.eval_datasets),
        "nightly": settings.nightly.model_dump(mode="json"),
    }


def _skip(
    settings: Settings,
    store: Store,
    t: _Target,
    from_seq: int,
    to_seq: int,
    reason: str,
    data: dict[str, Any] | None = None,
) -> NightlyResult:
    """Record ``skipped: reason`` (unless the last nightly record of this arm says the same)."""
    reason = f"skipped: {reason}"
    state = {"run_id": None, "from_seq": from_seq, "to_seq": to_seq}
    with store.write() as s:
        last = None
        for row in s.exec(select(EvalRun).order_by(EvalRun.created_at.desc())):
            if (row.config or {}).get("kind") == "nightly" and row.config.get("arm") == t.arm.name:
                last = row
                break
        m = (last.metrics or {}) if last is not None else {}
        same = (
            last is not None
            and m.get("decision") == SKIPPED
            and m.get("reasons") == [reason]
            and (last.config.get("from_seq"), last.config.get("to_seq")) == (from_seq, to_seq)
        )
        row_id = last.id if same and last is not None else None
        if not same:
            row = EvalRun(
                name=f"nightly {t.arm.name} skipped",
                config=_record_config(settings, t, state),
                metrics={
                    "decision": SKIPPED,
                    "reasons": [reason],
                    "candidate": {},
                    "champion": _champion_info(t),
                    "data": data or {},
                    "watermark": {"from": from_seq, "to": to_seq, "advanced": False},
                },
                status="done",
            )
            s.add(row)
            s.flush()
            row_id = row.id
    log.info("nightly %s: %s", t.arm.name, reason)
    return NightlyResult(
        SKIPPED,
        [reason],
        t.arm.name,
        t.adapter,
        from_seq=from_seq,
        to_seq=to_seq,
        data=data or {},
        champion=_champion_info(t),
        eval_run_id=row_id,
    )


def _champion_info(t: _Target) -> dict[str, Any]:
    c = t.champion
    if c is None:
        return {}
    return {"adapter": c.name, "version": c.version, "status": c.status}


# -- the run ----------------------------------------------------------------------------------------
def _run_id(arm: str, from_seq: int, to_seq: int) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    return f"{stamp}-{arm}-{from_seq}-{to_seq}"


def _eval_set(cfg: Any) -> set[str]:
    """The questions of the gate's fixed evaluation set, kept out of every training mix."""
    if not cfg.eval_datasets:
        return set()
    return fd.eval_questions(cfg.eval_datasets, cfg.eval_n, cfg.eval_seed, cfg.eval_require_gold)


def run_nightly(
    settings: Settings,
    *,
    store: Store | None = None,
    arm: str | None = None,
    dry_run: bool = False,
    on_stage: OnStage | None = None,
) -> NightlyResult:
    """One nightly run for ``arm`` (default ``settings.nightly.arm``); see the module docstring.

    ``dry_run``: gather and report what would be trained; writes nothing, trains nothing and
    leaves the watermark alone. Raises NightlyBusyError when another run holds the lock.
    """
    own = store is None
    store = store or Store(settings.db_url, settings.store.busy_timeout_ms)
    try:
        if dry_run:
            return _dry_run(settings, store, arm or settings.nightly.arm)
        with run_lock(settings.home / LOCK_FILE):
            return _run(settings, store, arm or settings.nightly.arm, on_stage or (lambda _s: None))
    finally:
        if own:
            store.close()


def _dry_run(settings: Settings, store: Store, arm: str) -> NightlyResult:
    cfg = settings.nightly
    t = _target(settings, store, arm)
    mark, newest = watermark(store, arm), store.feedback_seq()
    got = _gather(settings, store, t, mark, newest, salt="dry-run")
    n = len(got.examples)
    replay = fd.replay_count(n, cfg.replay_fraction) if cfg.replay_data is not None else 0
    reasons = []
    if newest <= mark:
        reasons.append(f"nothing new: no vote since seq {mark}")
    elif n < cfg.min_examples:
        reasons.append(
            f"would skip: {n} new examples, fewer than nightly.min_examples = {cfg.min_examples}"
        )
    else:
        reasons.append(
            f"would train {t.adapter} v{registry.next_version(store, t.adapter)} on {n} feedback "
            f"records + about {replay} replayed"
            + (f", re-answered by teacher {cfg.teacher!r}" if cfg.teacher else "")
        )
    if t.problem:
        reasons.append(f"a real run would fail: {t.problem}")
    if not cfg.eval_datasets:
        reasons.append("nightly.eval_datasets is empty: a real run refuses to start without it")
    return NightlyResult(
        "dry-run",
        reasons,
        arm,
        t.adapter,
        from_seq=mark,
        to_seq=newest,
        data=got.stats,
        records=n + replay,
        champion=_champion_info(t),
        dry_run=True,
    )


def _run(settings: Settings, store: Store, arm: str, on_stage: OnStage) -> NightlyResult:
    cfg = settings.nightly
    t = _target(settings, store, arm)
    if not cfg.eval_datasets:
        raise InputError(
            "nightly.eval_datasets is empty: a candidate cannot be gated without a fixed "
            'evaluation set (e.g. nightly.eval_datasets = ["hotpotqa:dev.json"])'
        )
    mark = watermark(store, arm)
    pending = _pending_run(settings, store, arm, mark)
    resumed = pending is not None
    got: fd.Gathered | None = None
    if pending is not None:
        run_dir, state = pending
        log.info("resuming nightly run %s", state["run_id"])
        champ = registry.get(store, t.adapter, int(state["champion"]["version"]))
        if champ is None:
            _abandon(store, run_dir, state, "its champion version was removed")
            return _run(settings, store, arm, on_stage)
        try:
            t.champion, t.meta, t.problem = champ, fmt.read_meta(Path(champ.path)), ""
        except (OSError, ValueError) as e:
            raise InputError(
                f"cannot resume run {state['run_id']}: champion {champ.path}: {e}"
            ) from e
    else:
        newest = store.feedback_seq()
        if newest <= mark:
            return _skip(settings, store, t, mark, newest, f"no new feedback since seq {mark}")
        if t.champion is None or t.problem:
            raise InputError(f"cannot improve adapter {t.adapter!r}: {t.problem}")
        on_stage("gather")
        state = {
            "run_id": _run_id(arm, mark, newest),
            "arm": arm,
            "adapter": t.adapter,
            "kind": t.kind,
            "from_seq": mark,
            "to_seq": newest,
            "status": "running",
            "started_at": utcnow().isoformat(),
            "champion": {
                "version": t.champion.version,
                "path": t.champion.path,
                "sha256": t.champion.sha256,
                "status": t.champion.status,
            },
            "config": cfg.model_dump(mode="json"),
        }
        got = _gather(settings, store, t, mark, newest, salt=state["run_id"])
        if len(got.examples) < cfg.min_examples:
            why = f"{len(got.examples)} new examples, fewer than nightly.min_examples = {cfg.min_examples}"
            return _skip(settings, store, t, mark, newest, why, got.stats)
        run_dir = nightly_dir(settings) / state["run_id"]
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_json(run_dir / RUN_FILE, state)

    frm, to = int(state["from_seq"]), int(state["to_seq"])
    # 1. gather
    gather = _read_json(run_dir / GATHER_FILE)
    if gather is None:
        if got is None:
            on_stage("gather")
            got = _gather(settings, store, t, frm, to, salt=state["run_id"])
            if len(got.examples) < cfg.min_examples:
                why = f"{len(got.examples)} new examples, fewer than nightly.min_examples = {cfg.min_examples}"
                _abandon(store, run_dir, state, why)
                return _skip(settings, store, t, frm, to, why, got.stats)
        gather = _write_data(settings, t, run_dir, state, got, on_stage)
    # 2. train
    cand = _read_json(run_dir / TRAIN_FILE)
    if cand is None:
        on_stage("train")
        cand = _train(settings, store, t, run_dir, state, on_stage)
    # 3. evaluate
    evaluation = _read_json(run_dir / EVAL_FILE)
    if evaluation is None:
        on_stage("evaluate")
        evaluation = _evaluate(settings, t, run_dir, state, cand, on_stage)
    # 4. decide
    saved = _read_json(run_dir / DECISION_FILE)
    if saved is not None:
        d = Decision(**saved)
    else:
        on_stage("decide")
        d = _decide(settings, run_dir, evaluation)
    # 5. promote + record
    on_stage("promote")
    decision, reasons, row_id = _commit(
        settings, store, t, run_dir, state, gather, cand, evaluation, d, on_stage
    )
    on_stage("promote:committed")
    _write_json(run_dir / RUN_FILE, {**state, "status": "done", "decision": decision})
    on_stage("done")
    log.info("nightly %s: %s (%s)", arm, decision, "; ".join(reasons))
    return NightlyResult(
        decision,
        reasons,
        arm,
        t.adapter,
        run_id=state["run_id"],
        from_seq=frm,
        to_seq=to,
        data=gather["stats"],
        records=int(gather["records"]),
        candidate=_side({"adapter": t.adapter}, cand["version"], evaluation["candidate"]),
        champion=_side(
            {"adapter": t.adapter}, int(state["champion"]["version"]), evaluation["champion"]
        ),
        eval_run_id=row_id,
        resumed=resumed,
    )


def history(store: Store, limit: int = 10, arm: str | None = None) -> list[EvalRun]:
    """The latest nightly records (newest first)."""
    with store.session() as s:
        rows = [
            r
            for r in s.exec(select(EvalRun).order_by(EvalRun.created_at.desc()))
            if (r.config or {}).get("kind") == "nightly"
            and (arm is None or r.config.get("arm") == arm)
        ]
    return rows[:limit]


__all__ = [
    "Decision",
    "NightlyBusyError",
    "NightlyResult",
    "decide",
    "history",
    "run_lock",
    "run_nightly",
    "watermark",
]
