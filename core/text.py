"""Text utilities: question validation, tokenising for overlap, and citation attribution."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from core.errors import InputError

_WORD_RE = re.compile(r"\w+", re.UNICODE)
_MARKER_RE = re.compile(r"\[(\d{1,3})\]")
_SURROGATE_RE = re.compile(r"[\ud800-\udfff]")

# Words too common to say anything about which passage an answer came from.
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "has",
        "have",
        "he",
        "her",
        "his",
        "i",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "she",
        "that",
        "the",
        "their",
        "them",
        "they",
        "this",
        "to",
        "was",
        "were",
        "which",
        "who",
        "whom",
        "whose",
        "with",
        "what",
        "when",
        "where",
        "why",
        "how",
        "named",
        "after",
        "called",
        "known",
    ]
)


def clean_question(text: object, max_chars: int = 4000) -> str:
    """Return the question stripped, or raise InputError saying exactly what is wrong with it."""
    if isinstance(text, bytes):
        raise InputError("the question must be text, not bytes")
    if not isinstance(text, str):
        raise InputError(f"the question must be text, got {type(text).__name__}")
    if "\x00" in text:
        raise InputError("the question contains a NUL byte (\\x00); remove it and ask again")
    if _SURROGATE_RE.search(text):
        raise InputError("the question contains a lone UTF-16 surrogate, which is not valid text")
    text = unicodedata.normalize("NFC", text).strip()
    if not text:
        raise InputError("the question is empty")
    if len(text) > max_chars:
        raise InputError(
            f"the question is {len(text):,} characters long; the limit is {max_chars:,} "
            "(ARMADA_LIMITS__MAX_QUESTION_CHARS)"
        )
    return text


def content_words(text: str) -> set[str]:
    """Lower-cased word tokens minus stopwords and 1-letter tokens."""
    return {
        w for w in (m.group(0).lower() for m in _WORD_RE.finditer(text)) if len(w) > 1
    } - STOPWORDS


def attribute_citations(
    answer: str, passages: Sequence[tuple[str, str]], max_cites: int = 3, min_overlap: float = 0.5
) -> list[str]:
    """Which passages an answer rests on, as passage ids, best-supported first.

    ``passages`` are ``(id, text)`` pairs in the order shown to the model (marker ``[n]`` means the
    n-th). Explicit ``[n]`` markers win. Otherwise a passage is cited when it contains at least
    ``min_overlap`` of the answer's content words (small models rarely write markers).
    """
    ids = [pid for pid, _ in passages]
    marked: list[str] = []
    for m in _MARKER_RE.finditer(answer):
        n = int(m.group(1))
        if 1 <= n <= len(ids) and ids[n - 1] not in marked:
            marked.append(ids[n - 1])
    if marked:
        return marked[:max_cites]
    words = content_words(_MARKER_RE.sub(" ", answer))
    if not words:
        return []
    scored = []
    for rank, (pid, text) in enumerate(passages):
        overlap = len(words & content_words(text)) / len(words)
        if overlap >= min_overlap:
            scored.append((-overlap, rank, pid))
    # Best-supported first; ties keep retrieval order.
    return [pid for _, _, pid in sorted(scored)[:max_cites]]
