"""Seeding helpers for the UI tests: a fast runtime with test agents, stored activity, a corpus.

The pages get their ``Armada`` from ``app.ui.state.runtime()``; AppTest runs the real entry script
in the test's own process, so ``app.ui.state.provide_runtime(fast_runtime(home))`` is all a test
needs to serve the cheap test agents (registered through the real plugin hook) to every page.
"""

from __future__ import annotations

import json
from pathlib import Path

from app.runtime import Armada
from core.config import ArmConfig, RetrievalConfig, RouterConfig, Settings
from core.store import Adapter, ArenaBattle, EvalRun, Store
from tests.conftest import SHARED_MODELS_DIR
from tests.plugins_fixture import TestAgents

PAYLOAD_TITLE = "<b onmouseover=alert(1)>Zanzibar</b><script>document.title='pwned'</script>"
PAYLOAD_TEXT = (
    "The Zanzibar archipelago grows cloves, nutmeg and cinnamon on its spice farms. "
    "<img src=x onerror=\"window.__pwned=1;document.title='pwned'\"> "
    "<script>window.__pwned=2;document.title='pwned'</script> "
    '<a href="javascript:window.__pwned=3">click me</a> [a markdown link](javascript:window.__pwned=4) '
    "![tracker](https://armada-test.invalid/pixel.png) Zanzibar cloves are famous."
)
"""A document that would run script, make a link or fetch an outside image if it were rendered."""
CORPUS = [
    {"id": "zanzibar", "title": PAYLOAD_TITLE, "text": PAYLOAD_TEXT},
    {
        "id": "paris",
        "title": "Paris",
        "text": "Paris is the capital and largest city of France, on the river Seine.",
    },
    {
        "id": "eiffel",
        "title": "Eiffel Tower",
        "text": "The Eiffel Tower in Paris is named after the engineer Gustave Eiffel.",
    },
]


def write_corpus(folder: Path) -> Path:
    """A tiny JSONL corpus (with the injection document) under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "corpus.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in CORPUS))
    return path


def fast_settings(home: Path, policy: str = "thompson", arms: tuple[str, ...] = ("echo", "loud")):
    """Settings for cheap test arms: no model, no category embedding, BM25 retrieval."""
    return Settings(
        home=home,
        models_dir=SHARED_MODELS_DIR,
        arms=[ArmConfig(name=a, agent=a) for a in arms],
        router=RouterConfig(policy=policy, seed=0, fallback_arm="echo", classify=False),
        retrieval=RetrievalConfig(mode="bm25"),
    )


def fast_runtime(home: Path, **kw) -> Armada:  # noqa: ANN003
    """An ``Armada`` over the test agents (echo, loud, boom, slow), registered as plugins."""
    return Armada(fast_settings(home, **kw), extra_plugins=[TestAgents()])


def seed_activity(rt: Armada, turns: int = 8) -> list[str]:
    """Routed answers with votes (echo good, loud bad) and two arena battles; interaction ids."""
    ids = []
    for i in range(turns):
        res = rt.ask(f"What is seeded question number {i}?", thread_id=f"seed-{i % 3}")
        rt.feedback(res.interaction_id, 1.0 if res.arm == "echo" else 0.0, voter="seed")
        ids.append(res.interaction_id)
    for n, winner in enumerate(("a", "tie")):
        a = rt.ask("Which arm is better?", arm="echo", thread_id=f"arena-seed-{n}-a")
        b = rt.ask("Which arm is better?", arm="loud", thread_id=f"arena-seed-{n}-b")
        rt.store.add_arena_battle(
            ArenaBattle(
                id=f"seed-{n}",
                question=a.question,
                arm_a="echo",
                arm_b="loud",
                interaction_a=a.interaction_id,
                interaction_b=b.interaction_id,
                winner=winner,
                voter="seed",
            )
        )
    return ids


def seed_evals_and_adapters(store: Store, home: Path) -> None:
    """One evaluation run (with a drill-down), one nightly run and three adapter versions."""
    metrics = {
        "arms": {
            "echo": {"f1": 0.62, "em": 0.5, "latency_ms": 40.0, "train_time_s": 0.0},
            "loud": {"f1": 0.31, "em": 0.2, "latency_ms": 35.0, "train_time_s": 0.0},
            "raft": {"f1": 0.7, "em": 0.6, "latency_ms": 90.0, "train_time_s": 600.0},
            "ci95": "not an arm",  # tolerated: non-dict entries are skipped
        },
        "questions": [
            {
                "id": "q1",
                "question": "What grows in Zanzibar?",
                "reference": "cloves",
                "answers": {
                    "echo": {"answer": PAYLOAD_TEXT, "score": 0.0, "judge_reason": "off topic"},
                    "raft": {"answer": "Cloves.", "score": 1.0, "judge_reason": "matches"},
                },
            }
        ],
    }
    adapters = home / "adapters" / "hotpotqa"
    with store.write() as s:
        s.add(EvalRun(name="hotpotqa-dev", config={"dataset": "hotpotqa", "n": 1}, metrics=metrics))
        s.add(
            EvalRun(
                name="nightly",
                config={"kind": "nightly"},
                metrics={"decision": "promoted", "candidate": {"f1": 0.7}, "champion": {"f1": 0.6}},
            )
        )
        for v, status in ((1, "retired"), (2, "promoted"), (3, "registered")):
            folder = adapters / str(v)
            if v != 3:
                folder.mkdir(parents=True, exist_ok=True)
            s.add(
                Adapter(
                    name="hotpotqa",
                    version=v,
                    path=str(folder),
                    base_model="SmolLM2-135M-Instruct",
                    sha256=f"{v:02d}" * 32 if v != 1 else "",
                    metrics={"f1": 0.5 + v / 10},
                    status=status,
                )
            )
