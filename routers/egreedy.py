"""ε-greedy: the best empirical mean with probability 1 − ε, a uniform arm with probability ε.

``build_policy("egreedy", arms, epsilon=0.1)`` for a fixed ε, or ``decay=c`` for
ε_t = min(1, c / t) where t counts the updates of the context key so far, plus one (a count of
the fold, not of ``select`` calls, so a rebuilt policy explores exactly as the live one did).
Other options: ``CountingPolicy``. The propensity is exact: (1 − ε)/|ties| + ε/K for an arm tied
for the best mean, ε/K for the others. Untried arms count as best, so each is tried once early.

Not run directly; see ``evals/bench/bandit.py`` and ``tests/test_policies.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from routers.base import Context, register_policy
from routers.stats import Cell, CountingPolicy, tie_probs


@register_policy
class EpsilonGreedyPolicy(CountingPolicy):
    """ε-greedy with a fixed ``epsilon`` or a decaying one (``decay`` = c in min(1, c/t))."""

    name = "egreedy"

    def __init__(
        self,
        arms: Sequence[str],
        *,
        epsilon: float = 0.1,
        decay: float | None = None,
        **options: Any,
    ) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon!r}")
        if decay is not None and not decay > 0:
            raise ValueError(f"decay must be > 0, got {decay!r}")
        self.epsilon, self.decay = float(epsilon), decay
        super().__init__(arms, **options)

    def config(self) -> dict[str, Any]:
        return super().config() | {"epsilon": self.epsilon, "decay": self.decay}

    def epsilon_at(self, context: Context) -> float:
        """The exploration rate of the next decision in this context."""
        return self._epsilon(self._stats(context)[1])

    def _epsilon(self, cell: Cell) -> float:
        return self.epsilon if self.decay is None else min(1.0, self.decay / (cell.t + 1))

    def _cell_probs(self, key: str, a0: np.ndarray, b0: np.ndarray, cell: Cell) -> np.ndarray:
        n, s, _ = self.pseudo(a0, b0, cell)
        greedy = np.where(n > 0, s / np.where(n > 0, n, 1.0), np.inf)
        eps = self._epsilon(cell)
        return (1.0 - eps) * tie_probs(greedy) + eps / len(self.arms)
