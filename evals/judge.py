"""An LLM judge over any configured chat model: pointwise scores and order-swapped pairwise verdicts.

    from evals.judge import Judge
    judge = Judge(rt.model("default"))                       # or any ModelConfig, e.g. backend="openai"
    v = judge.pointwise(question, answer, reference="Paris")  # PointwiseVerdict(score, reason, …)
    r = judge.pairwise(question, answer_a, answer_b)          # asked A/B, then B/A
    r.winner, r.flipped

The rubric is data (``Rubric``; ``load_rubric`` reads one from TOML or JSON). Verdicts are typed.
Judge output is parsed defensively: a JSON object, then ``key: value`` lines, then a bare verdict;
anything else is ``"unparsed"`` and counted, never guessed (a 135M model writes mostly prose).

Pairwise position bias: each pair is judged in both orders; the verdicts, mapped back to the
answers, *flip* when the judge prefers whichever answer is shown first (or second). A flipped pair
counts as a tie; ``position_bias`` reports how often that happens.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from core.types import Message

if TYPE_CHECKING:
    from core.models.base import ChatModel

Winner = Literal["A", "B", "tie", "unparsed"]
Outcome = Literal["a", "b", "tie", "unparsed"]


@dataclass(frozen=True)
class Rubric:
    """The judge's prompts. Fields: ``{question}``, ``{answer}``/``{answer_a}``/``{answer_b}`` and
    ``{reference_block}`` (empty, or the reference answer on its own line)."""

    name: str = "correctness"
    version: str = "1"
    pointwise_system: str = (
        "You grade answers to questions. A correct, complete, concise answer scores 1; a wrong or "
        "missing answer scores 0; a partly correct one scores in between. If a reference answer "
        "is given, judge correctness against it."
    )
    pointwise_user: str = (
        "Question: {question}\n{reference_block}Answer to grade: {answer}\n\n"
        'Reply with JSON only: {{"score": <a number from 0 to 1>, "reason": "<one sentence>"}}'
    )
    pairwise_system: str = (
        "You compare two answers to the same question and pick the better one: correct beats "
        "wrong, then complete beats incomplete, then concise beats verbose. The order in which "
        "the answers are shown says nothing about their quality. If a reference answer is given, "
        "judge correctness against it."
    )
    pairwise_user: str = (
        "Question: {question}\n{reference_block}Answer A: {answer_a}\nAnswer B: {answer_b}\n\n"
        'Reply with JSON only: {{"winner": "A" or "B" or "tie", "reason": "<one sentence>"}}'
    )
    reference_line: str = "Reference answer: {reference}\n"

    @property
    def digest(self) -> str:
        """A short hash of the rubric's text (part of the judge cache key)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


DEFAULT_RUBRIC = Rubric()


def load_rubric(path: str | Path | None) -> Rubric:
    """A rubric from a TOML or JSON file of ``Rubric`` fields; missing fields keep the defaults.
    No path: the default rubric."""
    if path is None:
        return DEFAULT_RUBRIC
    p = Path(path)
    data = tomllib.loads(p.read_text()) if p.suffix == ".toml" else json.loads(p.read_text())
    known = {f.name for f in fields(Rubric)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{p}: unknown rubric fields {unknown}; known: {sorted(known)}")
    return Rubric(**data)


# -- verdicts and parsing ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PointwiseVerdict:
    score: float | None
    """In [0, 1]; None when the output could not be parsed."""
    reason: str
    raw: str

    @property
    def parsed(self) -> bool:
        return self.score is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PairwiseVerdict:
    """One judgement with the answers in one order: A is the answer shown first."""

    winner: Winner
    reason: str
    raw: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PairwiseResult:
    """Both orders of one pair, and the combined outcome in terms of the answers ``a`` and ``b``."""

    first: PairwiseVerdict
    """``a`` shown as A."""
    second: PairwiseVerdict
    """``b`` shown as A."""

    @property
    def outcomes(self) -> tuple[Outcome, Outcome]:
        swap = {"A": "b", "B": "a", "tie": "tie", "unparsed": "unparsed"}
        keep = {"A": "a", "B": "b", "tie": "tie", "unparsed": "unparsed"}
        return keep[self.first.winner], swap[self.second.winner]  # type: ignore[return-value]

    @property
    def flipped(self) -> bool:
        """Both orders parsed, and the verdict changed with the order."""
        one, two = self.outcomes
        return "unparsed" not in (one, two) and one != two

    @property
    def winner(self) -> Outcome:
        """The agreed verdict; a flip is a tie; any unparsed order makes it unparsed."""
        one, two = self.outcomes
        if "unparsed" in (one, two):
            return "unparsed"
        return one if one == two else "tie"

    def to_dict(self) -> dict[str, Any]:
        return {
            "first": self.first.to_dict(),
            "second": self.second.to_dict(),
            "winner": self.winner,
            "flipped": self.flipped,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PairwiseResult:
        """Rebuilt from the raw replies, so a cached verdict is read by the current parser."""
        return cls(parse_pairwise(d["first"]["raw"]), parse_pairwise(d["second"]["raw"]))


_JSON_OBJ = re.compile(r"\{[^{}]*\}", re.S)
_NUM = r"([01](?:\.\d+)?|\.\d+|\d+(?:\.\d+)?)"
_SCORE_KV = re.compile(rf"\b(?:score|rating|grade)\b\W{{0,3}}{_NUM}(?:\s*/\s*(\d+))?", re.I)
_FRACTION = re.compile(rf"(?<![\w.]){_NUM}\s*/\s*(1|5|10|100)\b")
_BARE_NUM = re.compile(rf"^\s*{_NUM}\s*\.?\s*$")
_BRACKETS = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.I)
_WINNER_KV = re.compile(
    # The lookahead rejects an echoed instruction ('"winner": "A" or "B" or "tie"').
    r"\b(?:winner|verdict|better(?: answer)?)\b\W{0,3}(?:is\W{0,3})?(?:answer\s+)?(A|B|tie)\b"
    r"(?!\W{0,2}\s*or\b)",
    re.I,
)
_IS_BETTER = re.compile(r"\b(?:[Aa]nswer\s+)?(A|B)\s+is\s+(?:the\s+)?better\b")
_BARE = re.compile(r"^\W*(?:answer\s+)?(A|B|[Tt]ie)\W*$")


def _json_object(text: str) -> dict[str, Any] | None:
    for m in _JSON_OBJ.finditer(text):
        try:
            obj = json.loads(m.group(0))
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def _score(value: Any, scale: Any = None) -> float | None:
    try:
        x = float(value)
        if scale not in (None, ""):
            x /= float(scale)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    # Only the asked-for range: "score: 7" could be out of 10 or out of 100, so it is not guessed.
    return x if 0.0 <= x <= 1.0 else None


def _reason(obj: dict[str, Any] | None, raw: str) -> str:
    if obj and isinstance(obj.get("reason"), str):
        return obj["reason"].strip()[:500]
    return " ".join(raw.split())[:500]


def parse_pointwise(raw: str) -> PointwiseVerdict:
    """A 0–1 score from JSON, ``score: x[/n]``, a bare ``x/n`` fraction or a number alone on the
    first line; else unparsed."""
    obj = _json_object(raw)
    score = None
    if obj is not None:
        for key in ("score", "rating", "grade"):
            if key in obj:
                score = _score(obj[key])
                break
    if score is None and (m := _SCORE_KV.search(raw)):
        score = _score(m.group(1), m.group(2))
    if score is None and (m := _FRACTION.search(raw)):
        score = _score(m.group(1), m.group(2))
    if score is None and (m := _BARE_NUM.search((raw.strip().splitlines() or [""])[0])):
        score = _score(m.group(1))  # a number alone on the first line
    return PointwiseVerdict(score, _reason(obj, raw), raw)


def parse_pairwise(raw: str) -> PairwiseVerdict:
    """The verdict ("A", "B" or "tie") from JSON, ``[[A]]``, ``winner: A``, ``A is better`` or
    a bare verdict on the first line; else "unparsed"."""
    obj = _json_object(raw)
    found: str | None = None
    if obj is not None and isinstance(obj.get("winner"), str):
        found = obj["winner"].strip()
    # A bare verdict must be the whole first line ("B", "Answer A.", "tie"), so a sentence that
    # merely starts with the article "A" is not read as a vote for A.
    first_line = (raw.strip().splitlines() or [""])[0]
    patterns = ((_BRACKETS, raw), (_WINNER_KV, raw), (_IS_BETTER, raw), (_BARE, first_line))
    for pattern, text in patterns:
        if found is not None:
            break
        if m := pattern.search(text.strip()):
            found = m.group(1)
    norm = {"a": "A", "b": "B", "tie": "tie", "c": "tie", "draw": "tie"}.get((found or "").lower())
    return PairwiseVerdict(norm or "unparsed", _reason(obj, raw), raw)  # type: ignore[arg-type]


# -- the judge ----------------------------------------------------------------------------------------
class Judge:
    """A rubric over a chat model; greedy decoding so a verdict is reproducible."""

    def __init__(
        self, model: ChatModel, rubric: Rubric = DEFAULT_RUBRIC, max_new_tokens: int = 96
    ) -> None:
        self.model = model
        self.rubric = rubric
        self.max_new_tokens = max_new_tokens

    @property
    def identity(self) -> str:
        """What a cached verdict depends on: the model, the rubric and the token budget."""
        return f"{self.model.backend}:{self.model.name}:{self.rubric.digest}:{self.max_new_tokens}"

    def _ask(self, system: str, user: str) -> str:
        messages = [Message("system", system), Message("user", user)]
        gen = self.model.generate(messages, max_new_tokens=self.max_new_tokens, temperature=0.0)
        return gen.text

    def _reference(self, reference: str | None) -> str:
        return self.rubric.reference_line.format(reference=reference) if reference else ""

    def pointwise(
        self, question: str, answer: str, reference: str | None = None
    ) -> PointwiseVerdict:
        """A 0–1 score with a reason (score None when the output could not be parsed)."""
        user = self.rubric.pointwise_user.format(
            question=question, answer=answer, reference_block=self._reference(reference)
        )
        return parse_pointwise(self._ask(self.rubric.pointwise_system, user))

    def pairwise_once(
        self, question: str, first: str, second: str, reference: str | None = None
    ) -> PairwiseVerdict:
        """One verdict with ``first`` shown as A."""
        user = self.rubric.pairwise_user.format(
            question=question,
            answer_a=first,
            answer_b=second,
            reference_block=self._reference(reference),
        )
        return parse_pairwise(self._ask(self.rubric.pairwise_system, user))

    def pairwise(
        self, question: str, a: str, b: str, reference: str | None = None
    ) -> PairwiseResult:
        """Judge (a, b) and then (b, a), so position bias cancels (and is measured)."""
        return PairwiseResult(
            self.pairwise_once(question, a, b, reference),
            self.pairwise_once(question, b, a, reference),
        )


# -- how far to trust it ---------------------------------------------------------------------------
def position_bias(results: Sequence[PairwiseResult]) -> dict[str, Any]:
    """Flip rate over pairs parsed in both orders; how often "A" (shown first) wins; unparsed share."""
    singles = [v for r in results for v in (r.first, r.second)]
    parsed = [v for v in singles if v.winner != "unparsed"]
    both = [r for r in results if "unparsed" not in r.outcomes]
    return {
        "pairs": len(results),
        "pairs_parsed_both_orders": len(both),
        "flip_rate": _share(sum(r.flipped for r in both), len(both)),
        "first_position_win_rate": _share(sum(v.winner == "A" for v in parsed), len(parsed)),
        "second_position_win_rate": _share(sum(v.winner == "B" for v in parsed), len(parsed)),
        "unparsed_rate": _share(len(singles) - len(parsed), len(singles)),
        "verdicts": len(singles),
    }


def gold_preference(score_a: float, score_b: float) -> Outcome:
    """Which answer a gold metric (EM, F1) prefers."""
    return "a" if score_a > score_b else "b" if score_b > score_a else "tie"


def agreement(judged: Iterable[Outcome], reference: Iterable[Outcome]) -> dict[str, Any]:
    """How often the judge's outcome equals a reference outcome (a gold metric or a human vote).

    ``decisive``: over pairs where the reference prefers one answer (ties dropped), counting a
    judge tie or unparsed as a disagreement; ``decisive_parsed`` drops those too.
    """
    pairs = list(zip(judged, reference, strict=True))
    decisive = [(j, r) for j, r in pairs if r in ("a", "b")]
    decided = [(j, r) for j, r in decisive if j in ("a", "b")]
    return {
        "n": len(pairs),
        "all": _share(sum(j == r for j, r in pairs), len(pairs)),
        "n_decisive": len(decisive),
        "decisive": _share(sum(j == r for j, r in decisive), len(decisive)),
        "n_decisive_parsed": len(decided),
        "decisive_parsed": _share(sum(j == r for j, r in decided), len(decided)),
    }


def pointwise_agreement(
    scores: Iterable[float | None], references: Iterable[float], threshold: float = 0.5
) -> dict[str, Any]:
    """Agreement of pass/fail (score ≥ threshold) between judge scores and reference scores."""
    pairs = list(zip(scores, references, strict=True))
    parsed = [(s, r) for s, r in pairs if s is not None]
    same = sum((s >= threshold) == (r >= threshold) for s, r in parsed)
    return {
        "n": len(pairs),
        "parsed": len(parsed),
        "unparsed_rate": _share(len(pairs) - len(parsed), len(pairs)),
        "agreement": _share(same, len(parsed)),
    }


def _share(k: int, n: int) -> float | None:
    return k / n if n else None
