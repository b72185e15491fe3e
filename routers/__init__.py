"""Routing policies (bandits) that choose an arm per question and learn from rewards."""

# Importing a policy module registers it.
from routers import egreedy, linucb, simple, thompson, ucb  # noqa: F401
from routers.base import POLICIES, Context, NoArmAvailable, Policy, build_policy
from routers.stats import BanditPolicy, UnknownArm

__all__ = [
    "POLICIES",
    "BanditPolicy",
    "Context",
    "NoArmAvailable",
    "Policy",
    "UnknownArm",
    "build_policy",
]
