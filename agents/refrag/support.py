"""The explicit support check behind abstention, and the multi-hop reward of a trace.

Support: an answer is supported when (1) it is not itself an abstention, (2) most of its content
words appear in one gathered passage (it is *grounded*), and (3) the passages it rests on, taken
together, cover enough of the question's content words (they are *about* the question). (3) is
what catches the unanswerable case: a small model will happily copy a name out of an unrelated
passage, and (2) alone would accept that.

Reward (from the design): 0.6 × answer quality + 0.3 × retrieved-passage relevance + 0.1 ×
efficiency, each in [0, 1]. With gold answers, quality is token F1; without, it is 1 for a
supported answer, 0.5 for an abstention (honest, but not an answer) and 0 for an unsupported one.
With gold passage ids, relevance is the fraction of gathered passages that are gold; without, the
mean share of question words each passage covers. Efficiency is 1 − (passages − 1) / max_passages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from core.metrics import f1_score, normalize_answer
from core.text import attribute_citations, content_words

ABSTAIN_MARKERS = (
    "i don't know",
    "i do not know",
    "cannot be determined",
    "not enough information",
)


@dataclass(frozen=True)
class Support:
    supported: bool
    reason: str
    cited: list[str]
    question_coverage: float


def is_abstention(answer: str) -> bool:
    a = normalize_answer(answer)
    return not a or any(normalize_answer(m) in a for m in ABSTAIN_MARKERS)


def check_support(
    question: str,
    answer: str,
    passages: Sequence[tuple[str, str]],
    min_grounding: float = 0.5,
    min_coverage: float = 0.35,
) -> Support:
    """Is ``answer`` supported by ``passages`` (``(id, text)`` pairs)? Says why not."""
    if is_abstention(answer):
        return Support(False, "the model abstained", [], 0.0)
    cited = attribute_citations(answer, passages, max_cites=3, min_overlap=min_grounding)
    if not cited:
        return Support(False, "no gathered passage contains the answer", [], 0.0)
    q_words = content_words(question)
    by_id = dict(passages)
    covered: set[str] = set()
    for pid in cited:
        covered |= q_words & content_words(by_id[pid])
    # Also count the passages that led to the cited ones (the bridge), as the chain's evidence.
    for _, text in passages[:3]:
        covered |= q_words & content_words(text)
    coverage = len(covered) / len(q_words) if q_words else 1.0
    if coverage < min_coverage:
        return Support(
            False, f"the evidence covers {coverage:.0%} of the question", cited, coverage
        )
    return Support(True, "supported", cited, coverage)


def multihop_reward(
    question: str,
    answer: str,
    passages: Sequence[tuple[str, str]],
    max_passages: int,
    gold_answers: Sequence[str] | None = None,
    gold_ids: Sequence[str] | None = None,
) -> dict[str, float]:
    """The shaped reward of one trace and its three parts."""
    if gold_answers:
        quality = f1_score(answer, gold_answers)
    elif is_abstention(answer):
        quality = 0.5
    else:
        quality = float(check_support(question, answer, passages).supported)
    if not passages:
        relevance = 0.0
    elif gold_ids is not None:
        gold = set(gold_ids)
        relevance = sum(pid in gold for pid, _ in passages) / len(passages)
    else:
        q = content_words(question)
        relevance = (
            sum(len(q & content_words(t)) / len(q) for _, t in passages) / len(passages)
            if q
            else 0.0
        )
    n = len(passages)
    efficiency = max(0.0, 1.0 - max(0, n - 1) / max(1, max_passages))
    reward = 0.6 * quality + 0.3 * relevance + 0.1 * efficiency
    return {
        "reward": round(reward, 6),
        "quality": round(quality, 6),
        "relevance": round(relevance, 6),
        "efficiency": round(efficiency, 6),
    }
