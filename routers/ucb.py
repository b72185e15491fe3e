"""UCB1: pick the arm with the highest mean + alpha·sqrt(2 ln N / n), per category by default.

``build_policy("ucb1", arms, alpha=1.0)`` (other options: ``CountingPolicy``). Deterministic given
the state, so the propensity is exact: 1/|ties| for each arm tied at the top (ties broken at
random), 0 otherwise. Untried arms score +inf and are tried first. With ``discount`` the counts are
discounted (D-UCB) and N is the discounted total, its log clamped at 0 while N < 1; with
``window`` the counts are the last N rewards (SW-UCB). A prior counts as pseudo-pulls.

Not run directly; see ``evals/bench/bandit.py`` and ``tests/test_policies.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from routers.base import register_policy
from routers.stats import Cell, CountingPolicy, tie_probs


@register_policy
class UCB1Policy(CountingPolicy):
    """UCB1 (Auer et al., 2002) with exploration weight ``alpha`` (1.0 is the classic bound)."""

    name = "ucb1"

    def __init__(self, arms: Sequence[str], *, alpha: float = 1.0, **options: Any) -> None:
        if not alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha!r}")
        self.alpha = float(alpha)
        super().__init__(arms, **options)

    def config(self) -> dict[str, Any]:
        return super().config() | {"alpha": self.alpha}

    def scores(self, context: dict[str, Any]) -> np.ndarray:
        """The upper confidence bound of every arm (+inf for untried arms)."""
        return self._bounds(*self.pseudo_counts(context)[:2])

    def _bounds(self, n: np.ndarray, s: np.ndarray) -> np.ndarray:
        tried = n > 0
        safe_n = np.where(tried, n, 1.0)
        log_total = math.log(max(float(n.sum()), 1.0))
        bound = s / safe_n + self.alpha * np.sqrt(2.0 * log_total / safe_n)
        return np.where(tried, bound, np.inf)

    def _cell_probs(self, key: str, a0: np.ndarray, b0: np.ndarray, cell: Cell) -> np.ndarray:
        return tie_probs(self._bounds(*self.pseudo(a0, b0, cell)[:2]))
