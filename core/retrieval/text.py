"""Pure text helpers for retrieval: the BM25 tokenizer and the overlapping chunker.

Both BM25 engines (bm25s and rank-bm25) use :func:`tokenize`, so their rankings agree. Nothing here
does I/O or imports a heavy library.
"""

from __future__ import annotations

import re

TOKENIZER_VERSION = "casefold-w-stop1"
"""Stored with every BM25 index; an index built by another tokenizer is rebuilt, never mixed."""

# A compact English stopword list (NLTK's, with the contraction fragments that \w+ leaves behind).
_STOPWORDS = """
    a about above after again against ain all am an and any are aren as at be because been before
    being below between both but by can couldn d did didn do does doesn doing don down during each
    few for from further had hadn has hasn have haven having he her here hers herself him himself his
    how i if in into is isn it its itself just ll m ma me mightn more most mustn my myself needn no
    nor not now o of off on once only or other our ours ourselves out over own re s same shan she
    should shouldn so some such t than that the their theirs them themselves then there these they
    this those through to too under until up ve very was wasn we were weren what when where which
    while who whom why will with won wouldn y you your yours yourself yourselves
"""
STOPWORDS_EN: frozenset[str] = frozenset(_STOPWORDS.split())

_TOKEN = re.compile(r"\w+")
# A "word" for chunking is a run of non-space characters, capped so that a megabyte without spaces
# still splits into windows instead of becoming one enormous passage.
_WORD = re.compile(r"\S{1,100}")
_PARAGRAPH_GAP = re.compile(r"\n[ \t\r\f\v]*\n")


def tokenize(text: str, stopwords: bool = True) -> list[str]:
    """Casefolded ``\\w+`` tokens, English stopwords removed unless ``stopwords=False``."""
    tokens = _TOKEN.findall(text.casefold())
    if stopwords:
        return [t for t in tokens if t not in STOPWORDS_EN]
    return tokens


def indexed_text(title: str, text: str) -> str:
    """What BM25 and the embedder see for a passage: its document title, then its text."""
    return f"{title}\n{text}" if title else text


def chunk_text(text: str, words: int, overlap: int) -> list[str]:
    """Split ``text`` into windows of at most ``words`` words, preferring paragraph boundaries.

    A window that would cross a paragraph break (a blank line) in its second half ends at that
    break, and the next window starts exactly there: paragraphs are natural seams, so no overlap is
    needed. A window cut inside a paragraph is followed by one that repeats its last ``overlap``
    words. Each chunk is a verbatim slice of ``text`` (inner whitespace and markup kept), stripped
    at the ends. Whitespace-only text gives ``[]``.
    """
    if words < 1:
        raise ValueError("words must be at least 1")
    if not 0 <= overlap < words:
        raise ValueError("overlap must be in [0, words)")
    spans = [m.span() for m in _WORD.finditer(text)]
    n = len(spans)
    if n == 0:
        return []
    # starts_paragraph[i]: word i is the first word after a blank line.
    starts_paragraph = [False] * n
    for i in range(1, n):
        gap = text[spans[i - 1][1] : spans[i][0]]
        starts_paragraph[i] = bool(_PARAGRAPH_GAP.search(gap))

    chunks: list[str] = []
    start = 0
    while True:
        end = min(start + words, n)
        at_paragraph = False
        if end < n:
            # The latest paragraph start in the window's second half, if any.
            for j in range(end, start + max(words // 2, 1), -1):
                if starts_paragraph[j]:
                    end, at_paragraph = j, True
                    break
        chunks.append(text[spans[start][0] : spans[end - 1][1]])
        if end >= n:
            return chunks
        start = end if at_paragraph else end - overlap
