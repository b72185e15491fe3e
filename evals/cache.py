"""The answer cache: an append-only JSONL file keyed by (arm, dataset:example id, settings hash).

A killed run loses at most the answer in flight: each record is flushed and fsynced, and a line cut
short is dropped on the next open. ``settings_hash`` is what an answer depends on (the arm's
config, its model's config, retrieval settings, whether questions are classified), so a changed
setting misses the cache instead of reusing a stale answer. One process writes a folder at a time
(``exclusive``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.datasets import Example

if TYPE_CHECKING:
    from core.config import Settings

log = logging.getLogger(__name__)

HARNESS_VERSION = 1
"""Part of every cache key: bump it when what a cached answer means changes."""


def settings_hash(settings: Settings, arm: str, adapters: dict[str, str] | None = None) -> str:
    """What an arm's answer depends on: its config, its model's config, retrieval settings and
    (``adapters``: adapter name → checksum) the adapter versions it serves."""
    cfg = settings.arm(arm)
    blob = {
        "v": HARNESS_VERSION,
        "arm": cfg.model_dump(mode="json"),
        "model": settings.models[cfg.model].model_dump(mode="json", exclude={"api_key"}),
        "retrieval": settings.retrieval.model_dump(mode="json"),
        "classify": settings.router.classify,
    }
    if adapters:
        blob["adapters"] = dict(sorted(adapters.items()))
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def cache_key(arm: str, example: Example, shash: str) -> str:
    return f"{arm}|{example.dataset}:{example.id}|{shash}"


class JsonlCache:
    """An append-only JSONL file of records with a ``key``; the last record of a key wins.

    A line cut short by a kill is dropped (and cut off the file) on open; each record is flushed
    and fsynced before the next question starts, so at most the answer in flight is lost.
    """

    def __init__(self, path: Path, repair: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._rows: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            self._load(repair)

    def _load(self, repair: bool) -> None:
        """Read every complete line; ``repair`` cuts a damaged tail off the file (only the
        writer may: a reader beside a running writer could catch a line half-written)."""
        good_bytes = 0
        with self.path.open("rb") as f:
            for line in f:
                try:
                    if not line.endswith(b"\n"):
                        raise ValueError("unterminated line")
                    row = json.loads(line)
                    self._rows[row["key"]] = row
                except (ValueError, KeyError, TypeError):
                    log.warning("%s: dropping a damaged line at byte %d", self.path, good_bytes)
                    break
                good_bytes += len(line)
        if repair and good_bytes < self.path.stat().st_size:
            with self.path.open("r+b") as f:
                f.truncate(good_bytes)

    def __contains__(self, key: str) -> bool:
        return key in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: str) -> dict[str, Any] | None:
        return self._rows.get(key)

    def put(self, row: dict[str, Any]) -> None:
        line = json.dumps(row, ensure_ascii=False, default=str) + "\n"
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self._rows[row["key"]] = row

    def rows(self) -> list[dict[str, Any]]:
        return list(self._rows.values())


@contextlib.contextmanager
def exclusive(out: Path) -> Iterator[None]:
    """One harness process per output folder: a second one fails instead of interleaving."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".lock").open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another evaluation is writing to {out}") from None
        yield
