"""Reciprocal-rank fusion (RRF) of several rankings into one. Pure; no I/O.

For a passage d and retrievers r with 1-based ranks rank_r(d):

    score(d) = Σ_r 1 / (rrf_k + rank_r(d))      (a retriever that did not return d adds nothing)

Passages are ordered by score, highest first. Ties (equal scores, compared exactly as fractions,
so float rounding never decides) go to the passage with the better (smaller) best rank across
retrievers, then to the smaller passage id, so the order is fully deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction


@dataclass
class Fused:
    id: str
    score: float
    ranks: dict[str, int] = field(default_factory=dict)
    """1-based rank per retriever that returned this passage."""


def reciprocal_rank_fusion(rankings: Mapping[str, Sequence[str]], rrf_k: int = 60) -> list[Fused]:
    """Fuse ``{retriever name: [passage ids, best first]}`` into one ranking (see module doc)."""
    if rrf_k < 1:
        raise ValueError("rrf_k must be at least 1")
    exact: dict[str, Fraction] = {}
    ranks: dict[str, dict[str, int]] = {}
    for name, ids in rankings.items():
        seen: set[str] = set()
        for rank, pid in enumerate(ids, start=1):
            if pid in seen:  # a retriever lists a passage once; later repeats are ignored
                continue
            seen.add(pid)
            exact[pid] = exact.get(pid, Fraction(0)) + Fraction(1, rrf_k + rank)
            ranks.setdefault(pid, {})[name] = rank
    order = sorted(exact, key=lambda pid: (-exact[pid], min(ranks[pid].values()), pid))
    return [Fused(pid, float(exact[pid]), ranks[pid]) for pid in order]
