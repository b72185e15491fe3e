"""The corpus catalogue: documents and passages in SQLite (``settings.corpus_db_path``, WAL mode).

The catalogue is the source of truth; the BM25 and Chroma indexes are derived from it and can be
rebuilt from it. Every write is one ``BEGIN IMMEDIATE`` transaction, so a killed ingest leaves
either the old or the new version of a file's documents, never a mix. A ``generation`` counter in
the ``meta`` table goes up with every change; derived indexes record the generation they were
built from, which is how a stale index is noticed.

Schema changes are ordered, named migrations (``m001_initial``, …), applied once each.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from core.types import Passage

_M001 = [
    """CREATE TABLE documents (
        doc_id TEXT PRIMARY KEY,
        source TEXT NOT NULL,      -- where it came from: a file path or a dataset name
        origin TEXT NOT NULL,      -- the file (or dataset) key; a JSONL file holds many docs
        title TEXT NOT NULL,
        sha256 TEXT NOT NULL,      -- fingerprint of title + text + chunking settings
        n_passages INTEGER NOT NULL,
        ingested_at TEXT NOT NULL
    )""",
    "CREATE INDEX documents_origin ON documents(origin)",
    "CREATE INDEX documents_source ON documents(source)",
    """CREATE TABLE passages (
        id TEXT PRIMARY KEY,       -- f"{doc_id}#{position}"
        doc_id TEXT NOT NULL REFERENCES documents(doc_id) ON DELETE CASCADE,
        title TEXT NOT NULL,
        text TEXT NOT NULL,
        source TEXT NOT NULL,
        position INTEGER NOT NULL,
        sha256 TEXT NOT NULL       -- of the indexed text (title + text)
    )""",
    "CREATE INDEX passages_doc ON passages(doc_id, position)",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "INSERT INTO meta(key, value) VALUES ('generation', '0')",
]


def _m001_initial(db: sqlite3.Connection) -> None:
    # Statement by statement: executescript() would COMMIT the migration's transaction early.
    for statement in _M001:
        db.execute(statement)


MIGRATIONS: list[tuple[str, Callable[[sqlite3.Connection], None]]] = [
    ("m001_initial", _m001_initial),
]


@dataclass(frozen=True)
class PassageRow:
    id: str
    position: int
    text: str
    sha256: str


@dataclass(frozen=True)
class DocumentRow:
    """A document ready to store: its fingerprint and its chunked passages."""

    doc_id: str
    source: str
    origin: str
    title: str
    sha256: str
    passages: tuple[PassageRow, ...]


@dataclass
class ApplyResult:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    passages_added: int = 0
    changed_ids: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)


class Catalogue:
    """Documents and passages in one SQLite file. Opens a short-lived connection per call."""

    def __init__(self, path: Path, busy_timeout_ms: int = 10_000) -> None:
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self._migrated = False

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a write is exactly one
        # transaction and reads never hold a lock longer than their statement.
        db = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout_ms / 1000)
        try:
            db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            db.execute("PRAGMA foreign_keys = ON")
            if not self._migrated:
                self._migrate(db)
                self._migrated = True
            yield db
        finally:
            db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT)"
            )
            done = {r[0] for r in db.execute("SELECT name FROM _migrations")}
            for name, fn in MIGRATIONS:
                if name not in done:
                    fn(db)
                    db.execute(
                        "INSERT INTO _migrations(name, applied_at) VALUES (?, ?)", (name, _now())
                    )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # -- reads ----------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.path.is_file()

    def generation(self) -> int:
        """Goes up by one with every committed change to documents or passages."""
        if not self.exists():
            return 0
        with self._connect() as db:
            return int(db.execute("SELECT value FROM meta WHERE key='generation'").fetchone()[0])

    def counts(self) -> tuple[int, int]:
        """(documents, passages)."""
        if not self.exists():
            return 0, 0
        with self._connect() as db:
            docs = db.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
            passages = db.execute("SELECT COUNT(*) FROM passages").fetchone()[0]
        return int(docs), int(passages)

    def origin_of_source(self, source: str) -> str | None:
        """The origin under which documents from ``source`` (a file path) were stored, if any."""
        if not self.exists():
            return None
        with self._connect() as db:
            row = db.execute(
                "SELECT origin FROM documents WHERE source = ? LIMIT 1", (source,)
            ).fetchone()
        return row[0] if row else None

    def passage_keys(self) -> list[tuple[str, str]]:
        """Every (passage id, sha256), ordered by id."""
        with self._connect() as db:
            return db.execute("SELECT id, sha256 FROM passages ORDER BY id").fetchall()

    def snapshot(self) -> tuple[int, list[tuple[str, str, str]]]:
        """The generation and every passage's (id, title, text), ordered by id, read consistently."""
        if not self.exists():
            return 0, []
        with self._connect() as db:
            db.execute("BEGIN")  # one read transaction: the rows match the generation
            try:
                gen = int(db.execute("SELECT value FROM meta WHERE key='generation'").fetchone()[0])
                rows = db.execute("SELECT id, title, text FROM passages ORDER BY id").fetchall()
            finally:
                db.execute("COMMIT")
        return gen, rows

    def passages_by_id(self, ids: Iterable[str]) -> dict[str, Passage]:
        ids = list(dict.fromkeys(ids))
        out: dict[str, Passage] = {}
        if not ids or not self.exists():
            return out
        with self._connect() as db:
            for i in range(0, len(ids), 500):
                batch = ids[i : i + 500]
                marks = ",".join("?" * len(batch))
                q = f"SELECT id, text, title, doc_id, source FROM passages WHERE id IN ({marks})"
                for pid, text, title, doc_id, source in db.execute(q, batch):
                    out[pid] = Passage(id=pid, text=text, title=title, doc_id=doc_id, source=source)
        return out

    # -- writes ---------------------------------------------------------------------------------
    def apply(
        self, origin: str, docs: list[DocumentRow], remove_missing: bool = False
    ) -> ApplyResult:
        """Store ``docs`` from one origin in a single transaction.

        Unchanged documents (same fingerprint) are left alone; changed ones have their passages
        replaced. With ``remove_missing``, documents of this origin absent from ``docs`` are
        deleted (a record taken out of a JSONL file). The generation goes up if anything changed.
        """
        res = ApplyResult()
        now = _now()
        with self._write() as db:
            existing = dict(
                db.execute("SELECT doc_id, sha256 FROM documents WHERE origin = ?", (origin,))
            )
            seen: set[str] = set()
            for doc in docs:
                seen.add(doc.doc_id)
                old = existing.get(doc.doc_id)
                if old is None:
                    # The same doc_id may live under another origin (a file moved or re-rooted).
                    row = db.execute(
                        "SELECT sha256 FROM documents WHERE doc_id = ?", (doc.doc_id,)
                    ).fetchone()
                    old = row[0] if row else None
                if old == doc.sha256:
                    res.unchanged += 1
                    continue
                if old is None:
                    res.added += 1
                else:
                    res.updated += 1
                    db.execute("DELETE FROM documents WHERE doc_id = ?", (doc.doc_id,))
                db.execute(
                    "INSERT INTO documents(doc_id, source, origin, title, sha256, n_passages,"
                    " ingested_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (doc.doc_id, doc.source, origin, doc.title, doc.sha256, len(doc.passages), now),
                )
                db.executemany(
                    "INSERT INTO passages(id, doc_id, title, text, source, position, sha256)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (p.id, doc.doc_id, doc.title, p.text, doc.source, p.position, p.sha256)
                        for p in doc.passages
                    ],
                )
                res.passages_added += len(doc.passages)
                res.changed_ids.append(doc.doc_id)
            if remove_missing:
                gone = [d for d in existing if d not in seen]
                for d in gone:
                    db.execute("DELETE FROM documents WHERE doc_id = ?", (d,))
                res.removed = len(gone)
            if res.changed:
                db.execute(
                    "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'"
                )
        return res


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
