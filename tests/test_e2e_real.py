"""End to end with the real parts: SmolLM2, MiniLM, Chroma, bm25s, LangGraph, SQLite, the CLI.

The corpus is a small real sample of the demo Wikipedia summaries (with the Eiffel Tower article),
written as JSONL and ingested through the same code path a user's files take.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from core import packaged
from core.config import Settings
from tests.conftest import SHARED_MODELS_DIR

pytestmark = pytest.mark.real_model

QUESTION = "Who is the Eiffel Tower named after?"


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from core.retrieval import ingest_paths

    home = tmp_path_factory.mktemp("e2e") / "home"
    home.mkdir()
    summaries = json.loads(packaged.wiki_summaries().read_text())
    titles = sorted(summaries)
    sample = set(random.Random(0).sample(titles, 150)) | {"Eiffel Tower", "Gustave Eiffel", "Paris"}
    path = home.parent / "sample.jsonl"
    with path.open("w") as f:
        for t in sorted(sample):
            f.write(json.dumps({"id": t, "title": t, "text": summaries[t]["extract"]}) + "\n")
    report = ingest_paths(Settings(home=home, models_dir=SHARED_MODELS_DIR), [path])
    assert report.documents_added == len(sample) and not report.errors
    return home


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(ARMADA_HOME=str(home), ARMADA_MODELS_DIR=str(SHARED_MODELS_DIR))
    env.pop("ARMADA_CONFIG", None)
    return env


def test_cli_ask_answers_and_cites_the_eiffel_tower_passage(demo_home):
    cmd = [sys.executable, "-m", "app.cli", "ask", QUESTION, "--arm", "rag", "--json"]
    proc = subprocess.run(cmd, env=_env(demo_home), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["arm"] == "rag" and res["status"] == "ok"
    assert "eiffel" in res["answer"].lower()
    titles = {p["id"]: p["title"] for p in res["passages"]}
    assert "Eiffel Tower" in [titles[i] for i in res["cited_ids"]]
    assert res["usage"]["completion_tokens"] > 0
    assert {"retrieve", "route", "generate", "total"} <= set(res["latency_ms"])


def test_routed_question_goes_through_the_default_bandit(demo_home):
    cmd = [sys.executable, "-m", "app.cli", "ask", QUESTION, "--json"]
    proc = subprocess.run(cmd, env=_env(demo_home), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["policy"] == "thompson" and 0 < res["propensity"] <= 1
    assert res["arm"] in {"rag", "closed_book", "refrag"} and res["answer"]
    assert res["route_context"]["category"] in {"multi_hop", "long_tail", "biomedical", "general"}


def test_cli_streams_the_answer_then_sources(demo_home):
    cmd = [sys.executable, "-m", "app.cli", "ask", QUESTION, "--arm", "closed_book"]
    proc = subprocess.run(cmd, env=_env(demo_home), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].strip()  # the streamed answer comes first
    assert any("arm=closed_book" in line for line in lines)


def test_cli_bad_question_is_one_clear_line(demo_home):
    cmd = [sys.executable, "-m", "app.cli", "ask", "   "]
    proc = subprocess.run(cmd, env=_env(demo_home), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "question is empty" in proc.stderr and "Traceback" not in proc.stderr


def test_refrag_arm_shows_its_hops(demo_home):
    q = "Which country is the city where the Eiffel Tower stands the capital of?"
    cmd = [sys.executable, "-m", "app.cli", "ask", q, "--arm", "refrag", "--json"]
    proc = subprocess.run(cmd, env=_env(demo_home), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    hops = res["details"]["hops"]
    assert 1 <= len(hops) <= 3 and hops[0]["query"] == q
    assert all(h["documents"] for h in hops[:1])
    assert set(res["details"]["multihop_reward"]) == {
        "reward",
        "quality",
        "relevance",
        "efficiency",
    }
    ids = {p["id"] for p in res["passages"]}
    assert set(res["cited_ids"]) <= ids
