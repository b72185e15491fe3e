"""The SQLite (or any SQLAlchemy URL) store: tables, ordered migrations, and transactional writes."""

from core.store.db import Store
from core.store.tables import (
    Adapter,
    ArenaBattle,
    Arm,
    ArmStat,
    EvalRun,
    Feedback,
    Interaction,
    RouteDecision,
)

__all__ = [
    "Adapter",
    "ArenaBattle",
    "Arm",
    "ArmStat",
    "EvalRun",
    "Feedback",
    "Interaction",
    "RouteDecision",
    "Store",
]
