"""Arena ratings: Bradley–Terry (or online Elo) scores from pairwise votes, with bootstrap intervals.

A battle is ``(arm_a, arm_b, winner)`` with winner ``"a"``, ``"b"``, ``"tie"`` or ``"bad"`` (both
bad). A tie and "both bad" count as half a win for each side, as in LMSYS's Chatbot Arena: neither
says one arm is better than the other.

Bradley–Terry: P(a beats b) = σ(θ_a − θ_b), fitted by Newton's method on the log-likelihood with a
Gaussian prior θ ~ N(0, prior_sd²). The prior keeps the fit finite when an arm has won every battle
(the maximum-likelihood θ would be infinite) and shrinks arms with few battles toward the mean; with
many battles it is negligible. Elo: the classic online update in battle order, K = ``k_factor``.
Both are reported on the Elo scale, 1000 + 400·log10(odds), so 400 points mean 10:1 odds.

Intervals: the battles are resampled with replacement ``n_boot`` times from a seeded Generator, the
ratings refitted on each resample, and the 2.5th and 97.5th percentiles reported.

    ratings = arena_ratings([("rag", "closed_book", "a"), ...], method="bt", n_boot=200, seed=0)

Pure functions, no I/O: the UI reads the battles (``store.arena_battles()``) and calls this.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Battle = tuple[str, str, str]
"""``(arm_a, arm_b, winner)`` with winner "a", "b", "tie" or "bad"."""
Method = Literal["bt", "elo"]

BASE = 1000.0
SCALE = 400.0 / math.log(10.0)
"""Natural log-odds to Elo points."""
OUTCOME = {"a": 1.0, "b": 0.0, "tie": 0.5, "bad": 0.5}


@dataclass(frozen=True)
class Rating:
    arm: str
    rating: float
    low: float
    """Lower end of the bootstrap interval (equal to ``rating`` without bootstrap)."""
    high: float
    battles: int
    wins: int
    losses: int
    ties: int
    """Ties and "both bad" votes."""


def _encode(battles: Sequence[Battle]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    for b in battles:
        if b[2] not in OUTCOME:
            raise ValueError(f"winner must be a, b, tie or bad, got {b[2]!r}")
        if b[0] == b[1]:
            raise ValueError(f"a battle needs two different arms, got {b[0]!r} twice")
    arms = sorted({a for b in battles for a in b[:2]})
    pos = {a: k for k, a in enumerate(arms)}
    i = np.array([pos[b[0]] for b in battles], dtype=int)
    j = np.array([pos[b[1]] for b in battles], dtype=int)
    y = np.array([OUTCOME[b[2]] for b in battles], dtype=float)
    return arms, i, j, y


def _fit_bt(
    i: np.ndarray, j: np.ndarray, y: np.ndarray, w: np.ndarray, k: int, prior_sd: float
) -> np.ndarray:
    """MAP Bradley–Terry strengths (natural scale) for weighted battles; Newton's method."""
    lam = 1.0 / (prior_sd * prior_sd)
    theta = np.zeros(k)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(theta[i] - theta[j])))
        r = w * (p - y)
        g = lam * theta
        np.add.at(g, i, r)
        np.add.at(g, j, -r)
        h = w * p * (1.0 - p)
        hess = lam * np.eye(k)
        np.add.at(hess, (i, i), h)
        np.add.at(hess, (j, j), h)
        np.add.at(hess, (i, j), -h)
        np.add.at(hess, (j, i), -h)
        step = np.linalg.solve(hess, g)  # the prior makes the Hessian positive definite
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return theta


def _run_elo(
    i: np.ndarray, j: np.ndarray, y: np.ndarray, order: np.ndarray, k: int, k_factor: float
) -> np.ndarray:
    r = np.full(k, BASE)
    for n in order:
        a, b = i[n], j[n]
        expected = 1.0 / (1.0 + 10.0 ** ((r[b] - r[a]) / 400.0))
        delta = k_factor * (y[n] - expected)
        r[a] += delta
        r[b] -= delta
    return r


def bradley_terry(battles: Sequence[Battle], prior_sd: float = 1.0) -> dict[str, float]:
    """Bradley–Terry ratings on the Elo scale (mean 1000 over the rated arms)."""
    if not battles:
        return {}
    arms, i, j, y = _encode(battles)
    theta = _fit_bt(i, j, y, np.ones(len(y)), len(arms), prior_sd)
    return dict(zip(arms, (BASE + SCALE * theta).tolist(), strict=True))


def elo(battles: Sequence[Battle], k_factor: float = 16.0) -> dict[str, float]:
    """Online Elo ratings after replaying the battles in the given order (start 1000)."""
    if not battles:
        return {}
    arms, i, j, y = _encode(battles)
    r = _run_elo(i, j, y, np.arange(len(y)), len(arms), k_factor)
    return dict(zip(arms, r.tolist(), strict=True))


def arena_ratings(
    battles: Sequence[Battle],
    method: Method = "bt",
    n_boot: int = 200,
    seed: int = 0,
    prior_sd: float = 1.0,
    k_factor: float = 16.0,
    level: float = 0.95,
) -> list[Rating]:
    """Ratings with bootstrap intervals, best first; an arm with no battle is not rated."""
    if method not in ("bt", "elo"):
        raise ValueError(f"method must be 'bt' or 'elo', got {method!r}")
    if not battles:
        return []
    arms, i, j, y = _encode(battles)
    k, n = len(arms), len(y)

    def fit(w: np.ndarray, order: np.ndarray) -> np.ndarray:
        if method == "bt":
            return BASE + SCALE * _fit_bt(i, j, y, w, k, prior_sd)
        return _run_elo(i, j, y, order, k, k_factor)

    point = fit(np.ones(n), np.arange(n))
    low, high = point.copy(), point.copy()
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        samples = np.empty((n_boot, k))
        for b in range(n_boot):
            draw = rng.integers(0, n, size=n)
            samples[b] = fit(np.bincount(draw, minlength=n).astype(float), draw)
        tail = (1.0 - level) / 2.0 * 100.0
        low, high = np.percentile(samples, [tail, 100.0 - tail], axis=0)
    out = []
    for a, arm in enumerate(arms):
        mine_a, mine_b = i == a, j == a
        wins = int(((y == 1.0) & mine_a).sum() + ((y == 0.0) & mine_b).sum())
        losses = int(((y == 0.0) & mine_a).sum() + ((y == 1.0) & mine_b).sum())
        ties = int(((y == 0.5) & (mine_a | mine_b)).sum())
        out.append(
            Rating(
                arm=arm,
                rating=float(point[a]),
                low=float(min(low[a], point[a])),
                high=float(max(high[a], point[a])),
                battles=wins + losses + ties,
                wins=wins,
                losses=losses,
                ties=ties,
            )
        )
    return sorted(out, key=lambda r: (-r.rating, r.arm))
