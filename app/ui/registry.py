"""Adapter lifecycle writes behind the Adapters page: promote a version, roll back to the last one.

Status of an ``adapter`` row: ``registered`` (trained, never served), ``promoted`` (the version arms
using that adapter serve; at most one per name), ``retired`` (served before), ``rolled_back``
(demoted by a roll back) or ``rejected`` (the nightly job's evaluation refused it). Each change is
one transaction. Kept here until the adapter registry of the training work takes it over.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import select

from core.errors import InputError
from core.store import Adapter, Store

PROMOTED, RETIRED, ROLLED_BACK = "promoted", "retired", "rolled_back"
NOT_SERVABLE = {"rejected", ROLLED_BACK}


def promote(store: Store, name: str, version: int) -> Adapter:
    """Make ``name`` v``version`` the promoted one; the previously promoted version is retired."""
    with store.write() as s:
        rows = list(s.exec(select(Adapter).where(Adapter.name == name)))
        target = next((a for a in rows if a.version == version), None)
        if target is None:
            raise InputError(f"no adapter {name!r} version {version}")
        for a in rows:
            if a.status == PROMOTED and a is not target:
                a.status = RETIRED
                s.add(a)
        target.status = PROMOTED
        s.add(target)
    return target


def previous_version(versions: Sequence[Adapter]) -> Adapter | None:
    """The version a roll back returns to: the newest servable one below the promoted one."""
    current = next((a for a in versions if a.status == PROMOTED), None)
    if current is None:
        return None
    older = [a for a in versions if a.version < current.version and a.status not in NOT_SERVABLE]
    return max(older, key=lambda a: a.version, default=None)


def roll_back(store: Store, name: str) -> Adapter:
    """Demote the promoted version of ``name`` and promote the one before it."""
    with store.write() as s:
        rows = list(s.exec(select(Adapter).where(Adapter.name == name)))
        current = next((a for a in rows if a.status == PROMOTED), None)
        target = previous_version(rows)
        if current is None or target is None:
            raise InputError(f"adapter {name!r} has no earlier version to roll back to")
        current.status, target.status = ROLLED_BACK, PROMOTED
        s.add(current)
        s.add(target)
    return target
