"""Running the LLM judge over a harness run: pointwise scores, and the pairwise trust study.

``judge_records`` scores every cached answer (``--judge llm``); verdicts are cached in
``OUT/judge.jsonl`` keyed by the answer and the judge's identity (model, rubric, token budget).
``pairwise_study`` judges ``pairs`` questions answered by two arms in both orders and reports the
judge's position-bias rate, its agreement with EM/F1 on the gold answers, and its agreement with
human votes where the ``feedback`` and ``arena_battle`` tables have any. Pairs whose two answers
are identical after normalisation are skipped: they say nothing about which answer is better.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlmodel import select

from core.datasets import Example
from core.metrics import normalize_answer
from core.store.tables import ArenaBattle, Feedback, Interaction
from evals.cache import JsonlCache, cache_key
from evals.harness import EvalConfig, load_examples
from evals.judge import (
    Judge,
    PairwiseResult,
    agreement,
    gold_preference,
    load_rubric,
    parse_pointwise,
    pointwise_agreement,
    position_bias,
)
from evals.scoring import answer_of, score_record

if TYPE_CHECKING:
    from app.runtime import Armada


def judge_records(
    rt: Armada,
    cfg: EvalConfig,
    by_ds: Mapping[str, list[Example]],
    records: Mapping[str, dict[str, Any]],
    facts: Mapping[str, Mapping[str, Any]],
    judge: Judge | None = None,
) -> dict[str, dict[str, Any]]:
    """``{answer key: {"score", "reason", "raw"}}`` for every cached answer (score None: unparsed).

    The judge is ``cfg.judge_model`` with the default rubric unless one is given."""
    judge = judge or Judge(rt.model(cfg.judge_model), load_rubric(cfg.rubric))
    cache = JsonlCache(cfg.out / "judge.jsonl")
    out = {}
    for examples in by_ds.values():
        for e in examples:
            for arm in cfg.arms:
                rec = records.get(cache_key(arm, e, facts[arm]["settings_hash"]))
                if rec is None:
                    continue
                jkey = f"{rec['key']}|{judge.identity}"
                if jkey not in cache:
                    v = judge.pointwise(e.question, answer_of(rec), reference=" | ".join(e.answers))
                    cache.put({"key": jkey, **v.to_dict()})
                # Re-parsed from the raw reply: a parser fix applies to cached verdicts too.
                out[rec["key"]] = parse_pointwise(cache.get(jkey)["raw"]).to_dict()  # type: ignore[index]
    return out


def _config_of(out_dir: Path) -> tuple[EvalConfig, dict[str, Any]]:
    report = json.loads((out_dir / "report.json").read_text())
    c = dict(report["config"])
    facts = c.pop("arm_facts")
    cfg = EvalConfig(**{**c, "out": out_dir})
    return cfg, facts


def _pairs(
    out_dir: Path, a: str, b: str, n: int, seed: int
) -> list[tuple[Example, dict[str, Any], dict[str, Any]]]:
    cfg, facts = _config_of(out_dir)
    for arm in (a, b):
        if arm not in facts:
            raise ValueError(f"arm {arm!r} is not in the run at {out_dir} (arms: {sorted(facts)})")
    cache = JsonlCache(out_dir / "answers.jsonl", repair=False)  # a run may still be writing
    found = []
    for examples in load_examples(cfg).values():
        for e in examples:
            ra = cache.get(cache_key(a, e, facts[a]["settings_hash"]))
            rb = cache.get(cache_key(b, e, facts[b]["settings_hash"]))
            if ra and rb and normalize_answer(answer_of(ra)) != normalize_answer(answer_of(rb)):
                found.append((e, ra, rb))
    # A seeded hash of each id orders the pairs: the same seed picks the same pairs, and the
    # choice does not depend on the order the answers were cached in.
    found.sort(key=lambda t: hashlib.sha256(f"{seed}:{t[0].dataset}:{t[0].id}".encode()).digest())
    return found[:n]


def pairwise_study(
    rt: Armada,
    out_dir: Path,
    a: str,
    b: str,
    pairs: int = 50,
    judge_model: str = "default",
    reference: bool = False,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    judge: Judge | None = None,
    rubric: str | Path | None = None,
    max_new_tokens: int = 96,
) -> dict[str, Any]:
    """Judge cached answers of arms ``a`` and ``b`` pairwise in both orders; write and return the
    position-bias and agreement figures (``OUT/judge_study_A_B_RUBRIC.json``)."""
    judge = judge or Judge(rt.model(judge_model), load_rubric(rubric), max_new_tokens)
    cache = JsonlCache(out_dir / "judge_pairs.jsonl")
    chosen = _pairs(out_dir, a, b, pairs, seed)
    results: list[PairwiseResult] = []
    rows = []
    for i, (e, ra, rb) in enumerate(chosen, 1):
        ref = " | ".join(e.answers) if reference else None
        key = f"{a}|{b}|{e.dataset}:{e.id}|{ra['key']}|{rb['key']}|{judge.identity}|ref={reference}"
        if key not in cache:
            res = judge.pairwise(e.question, answer_of(ra), answer_of(rb), reference=ref)
            cache.put({"key": key, **res.to_dict()})
        res = PairwiseResult.from_dict(cache.get(key))  # type: ignore[arg-type]
        results.append(res)
        sa, sb = score_record(e, ra), score_record(e, rb)
        rows.append({"example": f"{e.dataset}:{e.id}", "judge": res.winner, "sa": sa, "sb": sb})
        if progress:
            progress(i, len(chosen))
    study: dict[str, Any] = {
        "judge": judge.identity,
        "rubric": judge.rubric.name,
        "arms": [a, b],
        "reference_shown": reference,
        "position_bias": position_bias(results),
        "winner_counts": {
            w: sum(r.winner == w for r in results) for w in ("a", "b", "tie", "unparsed")
        },
    }
    for metric in ("f1", "em", "accuracy"):
        have = [
            r for r in rows if r["sa"].get(metric) is not None and r["sb"].get(metric) is not None
        ]
        if have:
            study[f"agreement_{metric}"] = agreement(
                [r["judge"] for r in have],
                [gold_preference(r["sa"][metric], r["sb"][metric]) for r in have],
            )
    study["human_votes"] = human_agreement(rt, judge, cache=cache)
    study["pairs"] = [{**r, **res.to_dict()} for r, res in zip(rows, results, strict=True)]
    path = out_dir / f"judge_study_{a}_{b}_{judge.rubric.name}.json"
    path.write_text(json.dumps(study, indent=1, ensure_ascii=False))
    return study


def human_agreement(
    rt: Armada, judge: Judge, limit: int = 200, cache: JsonlCache | None = None
) -> dict[str, Any]:
    """The judge against people: pointwise on voted answers (``feedback``), pairwise on arena
    battles (winner a/b/tie; "both bad" is skipped). Zero counts when nobody has voted.
    Verdicts are kept in ``cache`` when one is given (keyed by vote or battle id and judge)."""
    with rt.store.session() as s:
        votes = list(
            s.exec(
                select(Feedback, Interaction)
                .where(Feedback.interaction_id == Interaction.id)
                .order_by(Feedback.created_at.desc())
                .limit(limit)
            )
        )
        battles = list(
            s.exec(
                select(ArenaBattle)
                .where(ArenaBattle.winner != "bad")
                .order_by(ArenaBattle.created_at.desc())
                .limit(limit)
            )
        )
        answers = {
            i.id: i.answer
            for i in s.exec(
                select(Interaction).where(
                    Interaction.id.in_(  # type: ignore[union-attr]
                        [x for bt in battles for x in (bt.interaction_a, bt.interaction_b)]
                    )
                )
            )
        }
    scores = []
    for f, i in votes:
        key = f"vote|{f.id}|{judge.identity}"
        if cache is None or key not in cache:
            row = {"key": key, **judge.pointwise(i.question, i.answer).to_dict()}
            if cache is None:
                scores.append(row["score"])
                continue
            cache.put(row)
        scores.append(parse_pointwise(cache.get(key)["raw"]).score)  # type: ignore[index]
    pointwise = pointwise_agreement(scores, [f.score for f, _ in votes])
    judged, human = [], []
    for bt in battles:
        key = f"arena|{bt.id}|{judge.identity}"
        if cache is not None and key in cache:
            res = PairwiseResult.from_dict(cache.get(key))  # type: ignore[arg-type]
        else:
            a, b = answers.get(bt.interaction_a, ""), answers.get(bt.interaction_b, "")
            res = judge.pairwise(bt.question, a, b)
            if cache is not None:
                cache.put({"key": key, **res.to_dict()})
        judged.append(res.winner)
        human.append(bt.winner)
    return {"pointwise_vs_votes": pointwise, "pairwise_vs_arena": agreement(judged, human)}
