"""The A/B harness end to end over cheap test agents (registered through the real plugin hook):
cache and resumption (a SIGKILLed run resumes to the same report), the report's shape for the
Evaluations page, the EvalRun row, and the seeded statistics it reports."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from app.runtime import Armada
from app.ui.metrics import eval_arm_rows, quality_keys
from core.config import REPO_ROOT, ArmConfig, RouterConfig, Settings
from core.datasets import load_dataset
from core.store.tables import EvalRun
from evals.cache import JsonlCache, settings_hash
from evals.cli import eval_app
from evals.harness import EvalConfig, run_eval, select_examples
from evals.report import comparable
from evals.stats import bootstrap_mean, mcnemar_exact, paired_bootstrap, stable_seed
from tests.plugins_fixture import TestAgents

N_EXAMPLES = 14


def make_runtime(home: Path, models_dir: Path | None = None) -> Armada:
    """Arms echo (answers with the question), loud (the same, shouted) and boom (always fails)."""
    s = Settings(
        home=home,
        models_dir=models_dir,
        arms=[
            ArmConfig(name="echo", agent="echo"),
            ArmConfig(name="loud", agent="loud"),
            ArmConfig(name="boom", agent="boom"),
        ],
        router=RouterConfig(policy="fixed", arm="echo", fallback_arm="echo", classify=False),
    )
    return Armada(s, extra_plugins=[TestAgents()])


def write_dataset(path: Path, n: int = N_EXAMPLES) -> Path:
    """Questions whose answer is in the question for even i, so echo scores on half of them."""
    rows = []
    for i in range(n):
        city = ["Paris", "Zürich", "São Paulo", "Kraków"][i % 4]
        q = f"Which city, {city} or nowhere, is number {i}?" if i % 2 == 0 else f"Question {i}?"
        rows.append(
            {
                "id": f"q{i}",
                "question": q,
                "answers": [city],
                "gold": [{"title": f"{city} (city)", "text": f"{city} is a city."}],
                "category": "even" if i % 2 == 0 else "odd",
            }
        )
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def config(out: Path, data: Path, n: int = N_EXAMPLES) -> EvalConfig:
    return EvalConfig(
        arms=["echo", "loud", "boom"], datasets=[f"jsonl:{data}"], out=out, n=n, n_boot=300
    )


CHILD = """
import sys, time
from pathlib import Path
from tests.test_harness import config, make_runtime
from evals.harness import run_eval
home, out, data = map(Path, sys.argv[1:4])
rt = make_runtime(home)
run_eval(rt, config(out, data), on_record=lambda _row: time.sleep(0.15))
"""


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "qa.jsonl")


def test_report_shape_scores_and_eval_run(home: Path, tmp_path: Path, data: Path):
    rt = make_runtime(home)
    report = run_eval(rt, config(tmp_path / "out", data))
    assert report["complete"]
    ds = report["datasets"]["jsonl"]
    assert ds["n_examples"] == N_EXAMPLES and ds["primary"] == "f1"
    echo, boom = ds["arms"]["echo"], ds["arms"]["boom"]
    # echo contains the answer exactly for the even questions; boom always fails (scored empty).
    assert echo["metrics"]["contains"]["mean"] == pytest.approx(0.5)
    assert echo["metrics"]["em"]["mean"] == 0.0
    assert boom["metrics"]["contains"]["mean"] == 0.0
    assert boom["cost"]["failures"] == N_EXAMPLES and echo["cost"]["failures"] == 0
    lo, hi = echo["metrics"]["contains"]["ci95"]
    assert 0.0 <= lo < 0.5 < hi <= 1.0
    assert set(echo["cost"]["latency_ms"]) >= {"retrieve", "route", "generate", "total"}
    assert echo["cost"]["tokens_in"] == 3.0  # the echo agent reports 3 prompt tokens
    assert echo["cost"]["train_time_s"] == 0.0 and echo["cost"]["adapter_mb"] == 0.0
    # Paired tests: echo vs boom on contains is 7 wins to 0; McNemar's exact p = 2 / 2**7.
    t = next(
        x for x in ds["paired"] if (x["a"], x["b"], x["metric"]) == ("echo", "boom", "contains")
    )
    assert (t["a_only"], t["b_only"]) == (7, 0)
    assert t["p_mcnemar"] == pytest.approx(2 / 2**7)
    assert ds["categories"]["even"]["echo"]["n"] == N_EXAMPLES // 2
    # The UI's reader accepts it: per-arm quality keys, costs kept out of quality.
    rows = eval_arm_rows(report)
    assert {r["arm"] for r in rows} == {"echo", "loud", "boom"}
    keys = quality_keys(rows)
    assert "f1" in keys and "latency_ms" not in keys and "tokens" not in keys
    assert report["questions"][0]["answers"]["echo"]["answer"].startswith("echo:")
    # Files and the stored run.
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} >= {"answers.jsonl", "report.json", "report.md"}
    assert (out / "cost_quality.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Headline" in (out / "report.md").read_text()
    with rt.store.session() as s:
        run = s.exec(select(EvalRun)).one()
    assert run.id == report["eval_run_id"] and run.status == "done"
    assert run.config["kind"] == "eval" and run.metrics["arms"]["echo"]["n"] == N_EXAMPLES
    # Reporting again from the cache asks nothing and updates the same row.
    before = len(JsonlCache(out / "answers.jsonl"))
    again = run_eval(rt, config(out, data), answer=False)
    assert comparable(again) == comparable(report)
    assert len(JsonlCache(out / "answers.jsonl")) == before
    with rt.store.session() as s:
        assert len(s.exec(select(EvalRun)).all()) == 1
    rt.close()
    # Router evaluation on the cached outputs, through the CLI.
    res = CliRunner().invoke(eval_app, ["routers", "--cache", str(out), "--rounds", "200"])
    assert res.exit_code == 0, res.output
    routers = json.loads((out / "routers.json").read_text())
    assert routers["examples"] == N_EXAMPLES and routers["strong"] in ("echo", "loud")
    assert set(routers["replay"]) == {"uniform", "egreedy", "ucb1", "thompson"}
    assert "APGR" in res.output or "Threshold router" in res.output


def test_stress_section(home: Path, tmp_path: Path, data: Path):
    rt = make_runtime(home)
    cfg = config(tmp_path / "out", data, n=6)
    cfg.arms, cfg.stress, cfg.stress_n = ["echo", "boom"], 2, 3
    report = run_eval(rt, cfg)
    drops = report["stress"]["datasets"]["jsonl"]
    # echo ignores its passages, so distractors cannot hurt it; boom always fails.
    assert drops["echo"]["n"] == 3 and drops["echo"]["drop"] == 0.0
    assert drops["boom"]["baseline"] == 0.0
    assert "Distractor stress test" in (tmp_path / "out" / "report.md").read_text()
    assert len(JsonlCache(tmp_path / "out" / "stress.jsonl")) == 2 * 2 * 3
    rt.close()


def test_killed_run_resumes_to_the_same_report(home: Path, tmp_path: Path, data: Path):
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(home), str(out), str(data)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    answers = out / "answers.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if answers.exists() and answers.read_text().count("\n") >= 10:
            break
        if child.poll() is not None:
            pytest.fail(f"the child exited early: {child.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    done = JsonlCache(answers)
    assert 10 <= len(done) < 3 * N_EXAMPLES, "the kill came mid-run"
    assert not (out / "report.json").exists()

    rt = make_runtime(home)
    asked: list[str] = []
    resumed = run_eval(rt, config(out, data), on_record=lambda row: asked.append(row["key"]))
    assert len(asked) == 3 * N_EXAMPLES - len(done)  # only what the cache lacked
    assert not set(asked) & {r["key"] for r in done.rows()}
    fresh = run_eval(rt, config(tmp_path / "fresh", data))
    a, b = comparable(resumed), comparable(fresh)
    assert a["config"].pop("out") != b["config"].pop("out")  # the only setting that differs
    assert a == b
    rt.close()


def test_cache_drops_a_line_cut_by_a_kill(tmp_path: Path):
    path = tmp_path / "c.jsonl"
    cache = JsonlCache(path)
    cache.put({"key": "a", "answer": "Zürich"})
    cache.put({"key": "b", "answer": "x"})
    with path.open("a") as f:
        f.write('{"key": "c", "ans')  # the process died mid-write
    again = JsonlCache(path)
    assert len(again) == 2 and again.get("a")["answer"] == "Zürich"
    again.put({"key": "c", "answer": "y"})  # appends cleanly after the cut
    assert len(JsonlCache(path)) == 3


def test_selection_is_seeded_and_order_free(tmp_path: Path):
    examples = load_dataset(f"jsonl:{write_dataset(tmp_path / 'd.jsonl', 40)}")
    a = select_examples(examples, 10, seed=0, require_gold=True)
    assert [e.id for e in a] == [e.id for e in select_examples(examples[::-1], 10, 0, True)][::-1]
    assert len(a) == 10 and a != select_examples(examples, 10, seed=1, require_gold=True)
    assert len(select_examples(examples, 100, 0, True)) == 40


def test_settings_hash_changes_with_what_the_answer_depends_on(home: Path):
    rt = make_runtime(home)
    h = settings_hash(rt.settings, "echo")
    assert h == settings_hash(make_runtime(home).settings, "echo")
    s2 = rt.settings.model_copy(deep=True)
    s2.retrieval.top_k = 7
    assert settings_hash(s2, "echo") != h
    assert settings_hash(rt.settings, "loud") != h


def test_adapter_facts_from_metadata_or_absent(home: Path):
    from evals.harness import adapter_facts

    rt = make_runtime(home)
    assert adapter_facts(rt, "echo") == {"adapter": None, "train_time_s": 0.0, "adapter_mb": 0.0}
    s = rt.settings.model_copy(deep=True)
    s.arms[0].adapter = "tuned"
    rt.settings = s
    # Named but missing: the facts are unknown (None), not zero.
    assert adapter_facts(rt, "echo") == {
        "adapter": "tuned",
        "train_time_s": None,
        "adapter_mb": None,
    }
    folder = s.adapters_dir / "tuned"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * 2**20)
    (folder / "armada_adapter.json").write_text('{"training": {"train_time_s": 42.5}}')
    assert adapter_facts(rt, "echo") == {
        "adapter": "tuned",
        "train_time_s": 42.5,
        "adapter_mb": 1.0,
    }
    rt.close()


def test_config_validates():
    with pytest.raises(ValueError):
        EvalConfig(arms=[], datasets=["jsonl:x"], out=Path("o"))
    with pytest.raises(ValueError):
        EvalConfig(arms=["a", "a"], datasets=["jsonl:x"], out=Path("o"))
    with pytest.raises(ValueError):
        EvalConfig(arms=["a"], datasets=["jsonl:x"], out=Path("o"), judge="gpt")  # type: ignore[arg-type]


# -- statistics ---------------------------------------------------------------------------------------
def test_bootstrap_is_seeded():
    x = [1, 0, 1, 1, 0, 1, 0, 1, 1, 1]
    a, b = bootstrap_mean(x, 1000, seed=3), bootstrap_mean(x, 1000, seed=3)
    assert a == b and a.mean == pytest.approx(0.7) and a.low < 0.7 < a.high
    y = [0.1, 0.5, 0.33, 0.9, 0.2, 0.7, 0.05, 0.61]  # continuous: the seed shows in the interval
    assert bootstrap_mean(y, 1000, seed=4) == bootstrap_mean(y, 1000, seed=4)
    assert bootstrap_mean(y, 1000, seed=4) != bootstrap_mean(y, 1000, seed=5)
    assert math.isnan(bootstrap_mean([], 100, 0).mean)
    assert stable_seed(0, "hotpotqa", "rag", "f1") == stable_seed(0, "hotpotqa", "rag", "f1")
    assert stable_seed(0, "hotpotqa", "rag", "f1") != stable_seed(1, "hotpotqa", "rag", "f1")


def test_paired_tests_hand_computed():
    # McNemar exact: discordant 1 vs 6 → p = 2 × P(X ≤ 1 | n=7, ½) = 2 × 8/128
    assert mcnemar_exact(1, 6) == pytest.approx(16 / 128)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(5, 5) == 1.0
    diff, lo, hi, p = paired_bootstrap([1, 1, 1, 1], [0, 0, 0, 0], 500, 0)
    assert (diff, lo, hi, p) == (1.0, 1.0, 1.0, 0.0)
    diff, lo, hi, p = paired_bootstrap([1, 0, 1, 0], [1, 0, 1, 0], 500, 0)
    assert diff == 0.0 and p == 1.0
