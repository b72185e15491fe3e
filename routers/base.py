"""The bandit policy contract: ``select(context) -> (arm, propensity)`` and ``update``.

Policies are built by name from a small registry; shared logic (the eligible-arm check) lives here
once. The bandit issue adds learning policies (Thompson sampling, UCB1, ε-greedy, LinUCB).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from core.errors import ArmadaError

Context = dict[str, Any]


class NoArmAvailable(ArmadaError):
    """Every arm is disabled or unknown."""


class Policy(ABC):
    name: ClassVar[str]

    def __init__(self, arms: Sequence[str], **options: Any) -> None:
        if not arms:
            raise NoArmAvailable("no enabled arm to route to; enable one with `armada arms`")
        self.arms = list(arms)

    @abstractmethod
    def select(self, context: Context) -> tuple[str, float]:
        """The chosen arm and the probability this policy gave it (its propensity)."""

    def update(self, arm: str, context: Context, reward: float) -> None:  # noqa: B027
        """Learn from a reward; stateless policies ignore it."""


POLICIES: dict[str, type[Policy]] = {}


def register_policy(cls: type[Policy]) -> type[Policy]:
    if cls.name in POLICIES:
        raise ValueError(f"policy {cls.name!r} is registered twice")
    POLICIES[cls.name] = cls
    return cls


def build_policy(name: str, arms: Sequence[str], **options: Any) -> Policy:
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ArmadaError(f"unknown policy {name!r}; known: {sorted(POLICIES)}") from None
    return cls(arms, **options)
