"""The distractor stress test inside a harness run (``--stress N``), on top of ``evals/stress.py``.

For the first ``stress_n`` chosen questions of each dataset that come with passages, every arm that
reads passages answers twice from a fixed context instead of the index: the dataset's own passages
(gold and its distractors), then the same passages plus ``N`` hard distractors the index retrieves
(``evals.stress.stress_contexts``, seeded). The report gives each arm's headline-metric drop with a
paired bootstrap interval (``evals.stress.stress_report``). Answers are cached in
``OUT/stress.jsonl`` like the main answers, so a killed stress run resumes too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from core.datasets import Example
from core.types import Hit, Passage
from evals.cache import JsonlCache, cache_key, settings_hash
from evals.harness import EvalConfig
from evals.scoring import primary_metric, score_record
from evals.stress import stress_contexts, stress_report

if TYPE_CHECKING:
    from app.runtime import Armada


def _answer(rt: Armada, arm: str, example: Example, passages: list[Passage]) -> dict[str, Any]:
    from app.graph import run_arm

    hits = [Hit(p, 0.0) for p in passages]
    try:
        ans = run_arm(rt, arm, example.question, hits, [], None)
    except Exception as e:  # an arm failure scores as an empty answer, as in the main run
        return {"answer": "", "status": "error", "error": f"{type(e).__name__}: {e}", "hits": []}
    shown = [*hits, *ans.passages]
    return {
        "answer": ans.text,
        "status": "ok",
        "cited_ids": list(ans.cited_ids),
        "hits": [
            {"id": h.passage.id, "title": h.passage.title, "text": h.passage.text} for h in shown
        ],
    }


def run_stress(rt: Armada, cfg: EvalConfig, by_ds: Mapping[str, list[Example]]) -> dict[str, Any]:
    """``{"n_extra", "datasets": {kind: {arm: StressDrop dict}}}`` for the retrieving arms."""
    arms = [a for a in cfg.arms if rt.agent(a).needs_retrieval]
    cache = JsonlCache(cfg.out / "stress.jsonl")
    result: dict[str, Any] = {"n_extra": cfg.stress, "questions": cfg.stress_n, "datasets": {}}
    for kind, examples in by_ds.items():
        chosen = [e for e in examples if e.passages][: cfg.stress_n]
        if not chosen or not arms:
            continue
        contexts = {
            "baseline": {e.id: list(e.passages) for e in chosen},
            "stressed": stress_contexts(chosen, rt.retriever, cfg.stress, cfg.seed),
        }
        scores: dict[str, dict[str, dict[str, float]]] = {"baseline": {}, "stressed": {}}
        for e in chosen:
            for arm in arms:
                base = cache_key(
                    arm, e, settings_hash(rt.settings, arm, rt.adapter_fingerprint(arm))
                )
                for variant, ctx in contexts.items():
                    key = f"{variant}:{cfg.stress}:{cfg.seed}|{base}"
                    if key not in cache:
                        cache.put({"key": key, **_answer(rt, arm, e, ctx[e.id])})
                    score = score_record(e, cache.get(key))[primary_metric(kind)]  # type: ignore[arg-type]
                    scores[variant].setdefault(arm, {})[e.id] = float(score or 0.0)
        drops = stress_report(
            scores["baseline"], scores["stressed"], n_boot=cfg.n_boot, seed=cfg.seed
        )
        result["datasets"][kind] = {arm: d.to_dict() for arm, d in drops.items()}
    return result
