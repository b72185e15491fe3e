"""Answer metrics: SQuAD-normalised exact match and token F1, and "any answer contained" (PopQA).

Normalisation (the official SQuAD v1.1 script): lower-case, drop punctuation, drop the articles
a/an/the, collapse white space. Unicode punctuation counts as punctuation too (category P*), so
"Café—Paris" and "cafe paris" differ only by the accent, as in the official script.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    s = s.lower()
    s = "".join(
        " " if (ch in _PUNCT or unicodedata.category(ch).startswith("P")) else ch for ch in s
    )
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, golds: Iterable[str]) -> float:
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
