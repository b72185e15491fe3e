"""The adapter registry: ``adapter`` rows in the database, one per published adapter folder.

Status of a row: ``registered`` (trained, never served), ``promoted`` (the version arms using that
adapter serve; at most one per name), ``retired`` (served before), ``rolled_back`` (demoted by a
roll back), ``rejected`` (the nightly job's evaluation refused it) or ``broken`` (its folder
failed verification). Each change is one transaction.

Folders live at ``<ARMADA_HOME>/adapters/<name>/v<version>/`` (``adapter_dir``) in the format of
``core.adapters.format``; ``register`` verifies one before it gets a row.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from core.adapters import format as fmt
from core.adapters.verify import verify_files
from core.config import check_name
from core.errors import AdapterError
from core.store import Adapter, Store

if TYPE_CHECKING:
    from core.config import Settings

log = logging.getLogger(__name__)

REGISTERED, PROMOTED, RETIRED = "registered", "promoted", "retired"
ROLLED_BACK, REJECTED, BROKEN = "rolled_back", "rejected", "broken"
STATUSES = (REGISTERED, PROMOTED, RETIRED, ROLLED_BACK, REJECTED, BROKEN)
NOT_SERVABLE = {REJECTED, ROLLED_BACK, BROKEN}

TRAIN_HINT = "train it with `armada train` or register a folder with `armada adapters register`"


def adapter_dir(settings: Settings, name: str, version: int) -> Path:
    """Where version ``version`` of adapter ``name`` is published."""
    return settings.adapters_dir / name / f"v{int(version)}"


def next_version(store: Store, name: str) -> int:
    """One more than the newest registered version of ``name`` (1 for a new name)."""
    return max((a.version for a in list_adapters(store, name)), default=0) + 1


def manifest_sha256(folder: Path) -> str:
    """The adapter's id: the sha256 of its ``SHA256SUMS`` (what ``format.write_manifest`` returns)."""
    return hashlib.sha256((Path(folder) / fmt.MANIFEST_FILE).read_bytes()).hexdigest()


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise AdapterError(f"unknown adapter status {status!r}; use one of {', '.join(STATUSES)}")


def register(
    store: Store,
    folder: Path,
    *,
    name: str | None = None,
    version: int | None = None,
    status: str = REGISTERED,
    metrics: dict[str, Any] | None = None,
) -> Adapter:
    """Verify ``folder`` and add its row; name and version default to its ``meta.json``'s."""
    _check_status(status)
    folder = Path(folder).expanduser().resolve()
    meta = verify_files(folder)
    name = name or meta.get("name")
    if not isinstance(name, str) or not name:
        raise AdapterError(f"adapter at {folder}: meta.json names no adapter; pass a name")
    try:  # it becomes a folder name and, with "_v<N>", a loaded adapter's name
        check_name(name, "adapter name")
    except ValueError as e:
        raise AdapterError(f"adapter at {folder}: {e}") from None
    if len(name) > 40:
        raise AdapterError(f"adapter at {folder}: name {name!r} is longer than 40 characters")
    if version is None:
        version = meta.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise AdapterError(
            f"adapter at {folder}: no valid version (got {version!r}); pass a version ≥ 1"
        )
    merged = dict(meta.get("metrics") or {}) | dict(metrics or {})
    row = Adapter(
        name=name,
        version=version,
        path=str(folder),
        base_model=str(meta.get("base_model", "")),
        sha256=manifest_sha256(folder),
        metrics=merged,
        status=status,
    )
    try:
        with store.write() as s:
            old = s.exec(
                select(Adapter).where(Adapter.name == name, Adapter.version == version)
            ).first()
            if old is not None:
                raise _duplicate(store, name, version, old.path)
            if status == PROMOTED:
                _retire_promoted(s, name)
            s.add(row)
    except IntegrityError as e:  # a concurrent register of the same version won the race
        raise _duplicate(store, name, version, "another folder") from e
    log.info("registered adapter %s v%d from %s", name, version, folder)
    return row


def _duplicate(store: Store, name: str, version: int, path: str) -> AdapterError:
    return AdapterError(
        f"adapter {name!r} v{version} is already registered (from {path}); versions are never "
        f"overwritten: register this folder as v{next_version(store, name)}, or remove the old "
        "one first with `armada adapters remove`"
    )


def list_adapters(store: Store, name: str | None = None) -> list[Adapter]:
    """All rows (or those of ``name``), by name then version."""
    q = select(Adapter)
    if name is not None:
        q = q.where(Adapter.name == name)
    with store.session() as s:
        return list(s.exec(q.order_by(Adapter.name, Adapter.version)))


def get(store: Store, name: str, version: int) -> Adapter | None:
    """The row of ``name`` v``version``, or None."""
    with store.session() as s:
        q = select(Adapter).where(Adapter.name == name, Adapter.version == version)
        return s.exec(q).first()


def resolve(store: Store, name: str) -> Adapter:
    """The version of ``name`` to serve: the promoted one, else the newest ``registered`` one."""
    rows = list_adapters(store, name)
    promoted = next((a for a in rows if a.status == PROMOTED), None)
    if promoted is not None:
        return promoted
    registered = [a for a in rows if a.status == REGISTERED]
    broken = [a for a in rows if a.status == BROKEN]
    # A version that broke while serving does not hand its place to an unvetted newer one (a
    # nightly candidate waiting for its gate): the operator promotes what should serve.
    if registered and not broken:
        return max(registered, key=lambda a: a.version)
    if rows:
        states = ", ".join(f"v{a.version} {a.status}" for a in rows)
        raise AdapterError(
            f"adapter {name!r} has no servable version ({states}); promote one with "
            f"`armada adapters promote`, or {TRAIN_HINT}"
        )
    raise AdapterError(f"adapter {name!r} is not registered; {TRAIN_HINT}")


def _retire_promoted(s: Any, name: str, keep: Adapter | None = None) -> None:
    for a in s.exec(select(Adapter).where(Adapter.name == name, Adapter.status == PROMOTED)):
        if a is not keep:
            a.status = RETIRED
            s.add(a)


def promote(store: Store, name: str, version: int) -> Adapter:
    """Make ``name`` v``version`` the promoted one; the previously promoted version is retired."""
    with store.write() as s:
        rows = list(s.exec(select(Adapter).where(Adapter.name == name)))
        target = next((a for a in rows if a.version == version), None)
        if target is None:
            raise AdapterError(f"no adapter {name!r} version {version}; {TRAIN_HINT}")
        if target.status == BROKEN:
            raise AdapterError(
                f"adapter {name!r} v{version} is broken ("
                f"{target.metrics.get('status_reason', 'failed verification')}); fix or retrain it"
            )
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
            raise AdapterError(f"adapter {name!r} has no earlier version to roll back to")
        current.status, target.status = ROLLED_BACK, PROMOTED
        s.add(current)
        s.add(target)
    return target


def set_status(store: Store, name: str, version: int, status: str, reason: str = "") -> Adapter:
    """Set the status of ``name`` v``version``; ``reason`` goes to ``metrics["status_reason"]``."""
    with store.write() as s:
        return set_status_in(s, name, version, status, reason=reason)


def remove(
    store: Store,
    name: str,
    version: int | None = None,
    *,
    delete_files: bool = True,
    force: bool = False,
    root: Path | None = None,
) -> list[Adapter]:
    """Remove ``name`` v``version`` (every version when None) and, by default, its folder.

    A promoted version is refused unless ``force``: arms serve it. With ``root`` (the adapters
    folder), only folders inside it are deleted: a folder registered from elsewhere is the user's
    and stays. Returns the removed rows.
    """
    with store.write() as s:
        q = select(Adapter).where(Adapter.name == name)
        if version is not None:
            q = q.where(Adapter.version == version)
        rows = list(s.exec(q))
        if not rows:
            which = f"version {version}" if version is not None else "versions"
            raise AdapterError(f"no adapter {name!r} {which} to remove")
        promoted = [a for a in rows if a.status == PROMOTED]
        if promoted and not force:
            raise AdapterError(
                f"adapter {name!r} v{promoted[0].version} is promoted and serving; promote "
                "another version or roll back first (or force the removal)"
            )
        for a in rows:
            s.delete(a)
    if delete_files:
        for a in rows:
            folder = Path(a.path)
            if root is not None and not folder.resolve().is_relative_to(Path(root).resolve()):
                log.warning(
                    "not deleting %s: it is outside %s (registered from there)", folder, root
                )
                continue
            _delete_folder(folder, a.name)
    return rows


def _delete_folder(folder: Path, name: str) -> None:
    """Delete an adapter folder; anything that does not look like one is left alone."""
    if not folder.is_dir():
        return
    if not any((folder / n).is_file() for n in (fmt.META_FILE, fmt.CONFIG_FILE, fmt.MANIFEST_FILE)):
        log.warning("not deleting %s: it does not look like an adapter folder", folder)
        return
    shutil.rmtree(folder, ignore_errors=True)
    parent = folder.parent
    if parent.name == name and folder.name.startswith("v"):  # <adapters>/<name>/v<version>
        with contextlib.suppress(OSError):
            if not any(parent.iterdir()):
                parent.rmdir()


def verify_registered(
    store: Store,
    row: Adapter,
    base_fingerprint: str | None = None,
    *,
    mark_broken: bool = False,
) -> str | None:
    """None when ``row``'s folder still verifies (and is the one registered), else the reason.

    With ``mark_broken`` a failing row gets status ``broken`` with that reason.
    """
    folder = Path(row.path)
    try:
        verify_files(folder, base_fingerprint=base_fingerprint)
        if row.sha256 and manifest_sha256(folder) != row.sha256:
            raise AdapterError(
                f"adapter at {folder}: its files were replaced after registration (manifest sha256 "
                f"{manifest_sha256(folder)[:12]}…, registered {row.sha256[:12]}…). Register the "
                "new files as a new version"
            )
    except (AdapterError, OSError) as e:
        message = str(e)
        if mark_broken:
            set_status(store, row.name, row.version, BROKEN, message)
        return message
    return None


# -- the nightly job's helpers (one transaction with its decision record) ----------------------------
OFFLINE_SCORE = "offline_score"
"""``metrics`` key of a version's score on the nightly job's fixed evaluation set (0–1)."""


def set_status_in(
    s: Any,
    name: str,
    version: int,
    status: str,
    *,
    reason: str = "",
    metrics: dict[str, Any] | None = None,
) -> Adapter:
    """``set_status`` inside the caller's write session ``s`` (it commits or rolls back with the
    caller's other writes). ``PROMOTED`` retires the version promoted before; ``metrics`` are
    merged into the row's; a broken version cannot be promoted."""
    _check_status(status)
    row = s.exec(select(Adapter).where(Adapter.name == name, Adapter.version == version)).first()
    if row is None:
        raise AdapterError(f"no adapter {name!r} version {version}")
    if status == PROMOTED:
        if row.status == BROKEN:
            raise AdapterError(f"adapter {name!r} v{version} is broken; fix or retrain it")
        _retire_promoted(s, name, keep=row)
    merged = dict(row.metrics or {}) | dict(metrics or {})  # a new dict: the JSON column is written
    if reason:
        merged["status_reason"] = reason
    else:
        merged.pop("status_reason", None)
    row.status, row.metrics = status, merged
    s.add(row)
    return row


def offline_prior(store: Store, name: str) -> float | None:
    """The offline score (0–1) of the version of ``name`` that serves now, or None: what a
    bandit can start the arms serving it from (``ArmConfig.prior``)."""
    try:
        row = resolve(store, name)
    except AdapterError:
        return None
    score = (row.metrics or {}).get(OFFLINE_SCORE)
    if isinstance(score, bool) or not isinstance(score, int | float):
        return None
    return min(1.0, max(0.0, float(score)))
