"""Seeded statistics for comparing arms: bootstrap intervals, paired bootstrap and McNemar's test.

Every function takes its seed explicitly (``numpy.random.default_rng``), so the same inputs and
seed give the same numbers. ``stable_seed`` derives one seed per cell (dataset, arm, metric) from
the run's seed, so a cell's interval does not depend on which other cells were computed first.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from core.metrics import LABELS

_CHUNK = 500  # resamples per vectorised step (bounds memory at n × 500 indices)


def stable_seed(seed: int, *parts: str) -> int:
    """A 63-bit seed from the run seed and a cell's name (stable across processes)."""
    digest = hashlib.sha256(":".join([str(seed), *parts]).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _resample_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    out = np.empty(n_boot)
    n = len(values)
    for start in range(0, n_boot, _CHUNK):
        stop = min(n_boot, start + _CHUNK)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = values[idx].mean(axis=1)
    return out


@dataclass(frozen=True)
class Interval:
    """A mean with its percentile-bootstrap 95% interval."""

    mean: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "ci95": [self.low, self.high], "n": self.n}


def bootstrap_mean(values: Sequence[float], n_boot: int = 2000, seed: int = 0) -> Interval:
    """The mean of ``values`` with a seeded percentile-bootstrap 95% interval."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    boots = _resample_means(x, n_boot, np.random.default_rng(seed))
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return Interval(float(x.mean()), float(lo), float(hi), len(x))


def bootstrap_macro_f1(
    predictions: Sequence[str],
    golds: Sequence[str],
    n_boot: int = 2000,
    seed: int = 0,
    labels: Sequence[str] = LABELS,
) -> Interval:
    """Macro-F1 (as ``core.metrics.label_scores``) with a bootstrap interval over examples."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} gold labels")
    if not golds:
        return Interval(math.nan, math.nan, math.nan, 0)
    code = {lab: i for i, lab in enumerate(labels)}
    p = np.array([code.get(x, -1) for x in predictions])
    g = np.array([code.get(x, -2) for x in golds])

    def macro(pi: np.ndarray, gi: np.ndarray) -> np.ndarray:  # rows of resampled labels
        f1s, present = [], []
        for k in range(len(labels)):
            tp = ((pi == k) & (gi == k)).sum(axis=-1)
            fp = ((pi == k) & (gi != k)).sum(axis=-1)
            fn = ((pi != k) & (gi == k)).sum(axis=-1)
            denom = 2 * tp + fp + fn
            f1s.append(np.where(tp > 0, 2 * tp / np.maximum(denom, 1), 0.0))
            present.append(denom > 0)  # the label occurs in gold or predictions
        f1 = np.stack(f1s) * np.stack(present)
        return f1.sum(axis=0) / np.maximum(np.stack(present).sum(axis=0), 1)

    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for start in range(0, n_boot, _CHUNK):
        stop = min(n_boot, start + _CHUNK)
        idx = rng.integers(0, len(g), size=(stop - start, len(g)))
        boots[start:stop] = macro(p[idx], g[idx])
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return Interval(float(macro(p[None, :], g[None, :])[0]), float(lo), float(hi), len(g))


@dataclass(frozen=True)
class PairedTest:
    """Arm ``a`` minus arm ``b`` on the same examples."""

    metric: str
    a: str
    b: str
    n: int
    diff: float
    """Mean of a − b."""
    low: float
    high: float
    p_bootstrap: float
    """Two-sided paired-bootstrap p-value for "no difference"."""
    a_only: int | None = None
    """Binary metrics: examples only ``a`` got right (McNemar's discordant pairs)."""
    b_only: int | None = None
    p_mcnemar: float | None = None
    """Binary metrics: exact McNemar p-value (two-sided binomial on the discordant pairs)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float, float]:
    """``(mean diff, low, high, p)`` for a − b over paired values, resampling examples."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(d) == 0:
        return math.nan, math.nan, math.nan, math.nan
    boots = _resample_means(d, n_boot, np.random.default_rng(seed))
    lo, hi = np.percentile(boots, [2.5, 97.5])
    # Share of resampled means on each side of 0, doubled: the percentile-bootstrap test.
    p = min(1.0, 2.0 * min(float((boots <= 0).mean()), float((boots >= 0).mean())))
    return float(d.mean()), float(lo), float(hi), p


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts (1.0 when there are none)."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    k = min(a_only, b_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def compare(
    metric: str,
    a: str,
    b: str,
    xa: Sequence[float],
    xb: Sequence[float],
    n_boot: int = 2000,
    seed: int = 0,
    binary: bool = False,
) -> PairedTest:
    """Paired bootstrap on ``metric`` for arms a and b (and McNemar when it is 0/1)."""
    diff, lo, hi, p = paired_bootstrap(xa, xb, n_boot, seed)
    if not binary:
        return PairedTest(metric, a, b, len(xa), diff, lo, hi, p)
    a_only = sum(1 for u, v in zip(xa, xb, strict=True) if u >= 0.5 > v)
    b_only = sum(1 for u, v in zip(xa, xb, strict=True) if v >= 0.5 > u)
    return PairedTest(
        metric, a, b, len(xa), diff, lo, hi, p, a_only, b_only, mcnemar_exact(a_only, b_only)
    )


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (linear interpolation), None for no values."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else None
