"""Distractor stress test: the same questions with N extra hard distractors, and the drop per arm.

    from evals.stress import stress_contexts, stress_report
    contexts = stress_contexts(examples, retriever, n_extra=5, seed=0)   # {example_id: [Passage]}
    # ... score each arm on the baseline contexts and on ``contexts`` ...
    report = stress_report(baseline_scores, stressed_scores)  # {arm: StressDrop}

Hard distractors are the retriever's top hits for the question that are not gold: a hit is gold
when its id, its normalised title or its normalised text equals a gold passage's, so a corpus copy
of a gold paragraph (another id, same title) is never counted as a distractor. Hits already in the
example's context are skipped too. The extra passages are inserted at seeded random positions,
keeping the original passages in their order, so only the distractors change between runs.
The retriever is anything with ``search(query, k) -> list[Hit]``; nothing else does I/O.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from core.datasets import Example
from core.metrics import contains_any, normalize_answer
from core.types import Hit, Passage

log = logging.getLogger(__name__)

Scores = Mapping[str, Mapping[str, float]]
"""``{arm: {example_id: score}}``."""


class Searcher(Protocol):
    def search(self, query: str, k: int) -> list[Hit]: ...


def _key(text: str) -> str:
    return normalize_answer(text)


def hard_negatives(
    example: Example,
    candidates: Iterable[Passage],
    n: int,
    *,
    exclude_answer_bearing: bool = False,
) -> list[Passage]:
    """The first ``n`` candidates that are neither gold nor already in the example's context.

    ``exclude_answer_bearing`` also drops candidates that contain a gold answer (useful for
    short-answer sets such as PopQA; meaningless for PubMedQA's yes/no/maybe).
    """
    gold_ids = {p.id for p in example.gold}
    gold_keys = {_key(p.title) for p in example.gold if p.title.strip()}
    gold_keys |= {_key(p.text) for p in example.gold}
    seen_ids = {p.id for p in example.passages}
    seen_texts = {_key(p.text) for p in example.passages}
    out: list[Passage] = []
    for p in candidates:
        if len(out) >= n:
            break
        text_key = _key(p.text)
        if (
            p.id in gold_ids
            or text_key in gold_keys
            or (p.title.strip() and _key(p.title) in gold_keys)
        ):
            continue
        if p.id in seen_ids or text_key in seen_texts:
            continue
        if exclude_answer_bearing and contains_any(p.text, example.answers):
            continue
        seen_ids.add(p.id)
        seen_texts.add(text_key)
        out.append(p)
    return out


def insert_distractors(
    context: Sequence[Passage], extra: Sequence[Passage], rng: random.Random
) -> list[Passage]:
    """``context`` with ``extra`` at random positions; the original passages keep their order."""
    out = list(context)
    for p in extra:
        out.insert(rng.randint(0, len(out)), p)
    return out


def stress_contexts(
    examples: Sequence[Example],
    retriever: Searcher,
    n_extra: int,
    seed: int,
    *,
    search_k: int | None = None,
    exclude_answer_bearing: bool = False,
) -> dict[str, list[Passage]]:
    """Each example's passages (gold and others) plus ``n_extra`` hard distractors.

    ``search_k`` (default ``n_extra + len(passages) + 10``) is how many hits to ask for, since
    gold and duplicate hits are skipped. An example whose retriever runs short gets fewer extras
    (logged once at the end).
    """
    if n_extra < 0:
        raise ValueError(f"n_extra must be >= 0, got {n_extra!r}")
    out: dict[str, list[Passage]] = {}
    short = 0
    for ex in examples:
        extra: list[Passage] = []
        if n_extra:
            k = search_k or n_extra + len(ex.passages) + 10
            hits = retriever.search(ex.question, k)
            extra = hard_negatives(
                ex,
                (h.passage for h in hits),
                n_extra,
                exclude_answer_bearing=exclude_answer_bearing,
            )
            short += len(extra) < n_extra
        # A per-example seed: one example's positions do not depend on the others in the list.
        rng = random.Random(f"{seed}:{ex.dataset}:{ex.id}")
        out[ex.id] = insert_distractors(ex.passages, extra, rng)
    if short:
        log.warning(
            "stress: %d of %d examples got fewer than %d extra distractors",
            short,
            len(out),
            n_extra,
        )
    return out


@dataclass(frozen=True)
class StressDrop:
    """One arm's mean score without and with the extra distractors, paired over examples."""

    arm: str
    n: int
    baseline: float
    stressed: float
    drop: float
    """``baseline − stressed`` (positive when the distractors hurt)."""
    low: float
    high: float
    """Paired percentile-bootstrap interval of ``drop``."""
    relative_drop: float
    """``drop / baseline`` (NaN when the baseline is 0)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_bootstrap(
    diffs: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of the mean of paired differences, resampling examples."""
    if not 0.0 < level < 1.0 or n_boot < 1:
        raise ValueError("need 0 < level < 1 and n_boot >= 1")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, diffs.size, size=(n_boot, diffs.size))
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(diffs[idx].mean(axis=1), [tail, 100.0 - tail])
    return float(low), float(high)


def scores_by_arm(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """``{arm: {example_id: score}}`` from rows with ``arm``, ``example_id`` and ``score``."""
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        out.setdefault(str(r["arm"]), {})[str(r["example_id"])] = float(r["score"])
    return out


def stress_report(
    baseline_scores: Scores,
    stressed_scores: Scores,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, StressDrop]:
    """Per arm, the mean drop over the examples scored in both runs, with a paired bootstrap CI."""
    report: dict[str, StressDrop] = {}
    for arm in sorted(set(baseline_scores) & set(stressed_scores)):
        base, stressed = baseline_scores[arm], stressed_scores[arm]
        ids = sorted(set(base) & set(stressed))
        if not ids:
            log.warning("stress: arm %r has no example scored in both runs", arm)
            continue
        b = np.array([float(base[i]) for i in ids])
        s = np.array([float(stressed[i]) for i in ids])
        low, high = paired_bootstrap(b - s, n_boot=n_boot, seed=seed, level=level)
        mb, ms = float(b.mean()), float(s.mean())
        rel = (mb - ms) / mb if mb else float("nan")
        report[arm] = StressDrop(arm, len(ids), mb, ms, mb - ms, low, high, rel)
    missing = set(baseline_scores) ^ set(stressed_scores)
    if missing:
        log.warning("stress: arms scored in only one run are left out: %s", sorted(missing))
    return report
