"""Fixed and uniform policies: the baselines and the tools of plain A/B tests."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from routers.base import Context, Policy, register_policy


@register_policy
class FixedPolicy(Policy):
    """Always the configured arm (or the first eligible one if it is disabled)."""

    name = "fixed"

    def __init__(self, arms: Sequence[str], arm: str | None = None, **options: Any) -> None:
        super().__init__(arms)
        self.arm = arm if arm in self.arms else self.arms[0]

    def select(self, context: Context) -> tuple[str, float]:
        return self.arm, 1.0

    def action_probs(self, context: Context) -> dict[str, float]:
        return {a: float(a == self.arm) for a in self.arms}


@register_policy
class UniformPolicy(Policy):
    """Each eligible arm with equal probability."""

    name = "uniform"

    def __init__(self, arms: Sequence[str], seed: int | None = None, **options: Any) -> None:
        super().__init__(arms)
        self.rng = random.Random(seed)

    def select(self, context: Context) -> tuple[str, float]:
        return self.rng.choice(self.arms), 1.0 / len(self.arms)

    def action_probs(self, context: Context) -> dict[str, float]:
        return {a: 1.0 / len(self.arms) for a in self.arms}
