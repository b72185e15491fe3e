"""Answer and retrieval metrics, each a pure function of strings (no model, no I/O).

Answer quality:
- ``exact_match`` / ``f1_score``: the official SQuAD v1.1 normalisation (lower-case, drop
  punctuation, drop the articles a/an/the, collapse white space). Unicode punctuation counts as
  punctuation too (category P*), so "Café—Paris" and "cafe paris" differ only by the accent, as in
  the official script (which keeps accents).
- ``contains_any``: PopQA's "any possible answer appears in the generation" (on word boundaries).
- ``yes_no_maybe`` + ``label_scores``: PubMedQA accuracy and macro-F1 over yes/no/maybe.
- ``rouge_l``: ROUGE-L F-measure computed by Google's ``rouge-score`` package, tokenised with the
  SQuAD normalisation above (``rouge-score``'s own tokenizer drops every non-ASCII letter, so
  "Müller" would become "m ller"; ours keeps Unicode words).

Retrieval (``recall_at_k``, ``reciprocal_rank``) matches passages by *title*, because the index's
passage ids differ from a dataset's. Grounding: ``faithfulness`` is the share of an answer's content
words found in the passages it cites (``core.text.content_words``).
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any, Literal

from core.text import content_words

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)
_YNM = re.compile(r"\b(yes|no|maybe)\b")

Label = Literal["yes", "no", "maybe"]
LABELS: tuple[Label, ...] = ("yes", "no", "maybe")


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lower-case, punctuation to spaces, no articles, single spaces."""
    s = s.lower()
    s = "".join(
        " " if (ch in _PUNCT or unicodedata.category(ch).startswith("P")) else ch for ch in s
    )
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, golds: Iterable[str]) -> float:
    """1.0 when the normalised prediction equals any normalised gold answer."""
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(g) for g in golds))


def f1_score(prediction: str, golds: Iterable[str]) -> float:
    """Best token-F1 over the gold answers."""
    best = 0.0
    p_toks = normalize_answer(prediction).split()
    for g in golds:
        g_toks = normalize_answer(g).split()
        if not p_toks or not g_toks:
            best = max(best, float(p_toks == g_toks))
            continue
        common = sum((Counter(p_toks) & Counter(g_toks)).values())
        if common == 0:
            continue
        precision, recall = common / len(p_toks), common / len(g_toks)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def contains_any(prediction: str, golds: Iterable[str]) -> float:
    """PopQA's metric: 1 if any normalised gold answer appears in the normalised prediction."""
    p = f" {normalize_answer(prediction)} "
    return float(any(f" {normalize_answer(g)} " in p for g in golds if normalize_answer(g)))


# -- PubMedQA ---------------------------------------------------------------------------------------
def yes_no_maybe(text: str) -> Label:
    """The first of the words yes/no/maybe in ``text`` (after normalisation), else "maybe".

    "maybe" is the fallback because it is PubMedQA's "the evidence does not settle it" label: an
    answer that commits to neither yes nor no is read as not committing.
    """
    m = _YNM.search(normalize_answer(text))
    return m.group(1) if m else "maybe"  # type: ignore[return-value]


def label_scores(
    predictions: Sequence[str], golds: Sequence[str], labels: Sequence[str] = LABELS
) -> dict[str, float]:
    """Accuracy and macro-F1 of predicted labels against gold labels.

    Macro-F1 averages the per-label F1 over the labels that occur in the gold labels or the
    predictions (a label absent from both says nothing); a label with no true positive scores 0.
    """
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} gold labels")
    if not golds:
        return {"accuracy": 0.0, "macro_f1": 0.0}
    accuracy = sum(p == g for p, g in zip(predictions, golds, strict=True)) / len(golds)
    seen = [lab for lab in labels if lab in golds or lab in predictions]
    f1s = []
    for lab in seen:
        tp = sum(p == lab and g == lab for p, g in zip(predictions, golds, strict=True))
        fp = sum(p == lab and g != lab for p, g in zip(predictions, golds, strict=True))
        fn = sum(p != lab and g == lab for p, g in zip(predictions, golds, strict=True))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return {"accuracy": accuracy, "macro_f1": sum(f1s) / len(f1s) if f1s else 0.0}


# -- ROUGE-L ----------------------------------------------------------------------------------------
class _SquadTokenizer:
    """``rouge-score`` tokenizer protocol (``tokenize``) over the SQuAD normalisation."""

    def tokenize(self, text: str) -> list[str]:
        return normalize_answer(text).split()


@lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer  # imported on first use: it pulls in nltk

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=_SquadTokenizer())


def rouge_l(prediction: str, golds: Iterable[str]) -> float:
    """Best ROUGE-L F-measure over the gold answers (0 when either side has no tokens)."""
    scorer = _rouge_scorer()
    return float(max((scorer.score(g, prediction)["rougeL"].fmeasure for g in golds), default=0.0))


# -- retrieval ---------------------------------------------------------------------------------------
def normalize_title(title: str) -> str:
    """Titles compared across sources: NFC, case-folded, single spaces."""
    return " ".join(unicodedata.normalize("NFC", title).casefold().split())


def recall_at_k(retrieved: Sequence[str], gold: Iterable[str], k: int) -> float | None:
    """Share of the gold titles among the first ``k`` retrieved titles (None without gold)."""
    want = {normalize_title(t) for t in gold if t.strip()}
    if not want:
        return None
    got = {normalize_title(t) for t in retrieved[:k]}
    return len(want & got) / len(want)


def reciprocal_rank(retrieved: Sequence[str], gold: Iterable[str]) -> float | None:
    """1 / rank of the first retrieved title that is gold, 0 if none is (None without gold)."""
    want = {normalize_title(t) for t in gold if t.strip()}
    if not want:
        return None
    for rank, title in enumerate(retrieved, 1):
        if normalize_title(title) in want:
            return 1.0 / rank
    return 0.0


# -- grounding --------------------------------------------------------------------------------------
def faithfulness(answer: str, cited_texts: Iterable[str]) -> float | None:
    """Share of the answer's content words that appear in the passages it cites.

    None when the answer has no content words (nothing to support, e.g. "yes" or an empty
    answer); 0.0 when it has some but cites nothing.
    """
    words = content_words(answer)
    if not words:
        return None
    support: set[str] = set()
    for text in cited_texts:
        support |= content_words(text)
    return len(words & support) / len(words)
