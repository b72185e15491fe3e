"""Adapter lifecycle writes behind the Adapters page: promote a version, roll back to the last one.

The logic lives in ``core.adapters.registry``; this module re-exports what the page uses.
"""

from __future__ import annotations

from core.adapters.registry import (
    NOT_SERVABLE,
    PROMOTED,
    RETIRED,
    ROLLED_BACK,
    previous_version,
    promote,
    roll_back,
)

__all__ = [
    "NOT_SERVABLE",
    "PROMOTED",
    "RETIRED",
    "ROLLED_BACK",
    "previous_version",
    "promote",
    "roll_back",
]
