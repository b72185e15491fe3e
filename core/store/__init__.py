"""The SQLite (or any SQLAlchemy URL) store: tables, ordered migrations, and transactional writes."""

from core.store.db import Store
from core.store.tables import (
    Adapter,
    Arm,
    ArmStat,
    EvalRun,
    Feedback,
    Interaction,
    RouteDecision,
)

__all__ = [
    "Adapter",
    "Arm",
    "ArmStat",
    "EvalRun",
    "Feedback",
    "Interaction",
    "RouteDecision",
    "Store",
]
