"""Routing policies (bandits) that choose an arm per question and learn from rewards."""

from routers import simple  # noqa: F401 - registers the built-in policies
from routers.base import POLICIES, Context, NoArmAvailable, Policy, build_policy

__all__ = ["POLICIES", "Context", "NoArmAvailable", "Policy", "build_policy"]
