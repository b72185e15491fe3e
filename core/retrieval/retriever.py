"""The Retriever: BM25, dense or hybrid (reciprocal-rank fusion) search, with optional reranking.

``Retriever(settings)`` is cheap: nothing is opened until the first search, and the embedding
model loads only on the first dense query. Each search checks (cheaply) whether the catalogue or
the published BM25 index changed since the last one, so a long-lived process (the UI) sees what a
``armada ingest`` in another process added.

Search pipeline for ``mode="hybrid"``: BM25 top ``candidate_k`` and dense top ``candidate_k`` →
reciprocal-rank fusion (:mod:`core.retrieval.fusion`) → if ``reranker_model`` is set, the first
``candidate_k`` fused passages are reranked by the cross-encoder → the first ``k``. Every hit
records each stage's 1-based rank in ``Hit.ranks`` ("bm25", "dense", "rerank"); its score is
the last stage's score (RRF score, BM25 score, cosine similarity or reranker score).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from core.config import Settings
from core.errors import InputError
from core.retrieval.bm25 import BM25Index, build_in_memory, load_index, read_pointer
from core.retrieval.fusion import Fused, reciprocal_rank_fusion
from core.retrieval.ingest import catalogue_for, current_bm25, lock_path
from core.retrieval.storage import writer_lock
from core.retrieval.text import TOKENIZER_VERSION, indexed_text
from core.types import Hit, Passage

log = logging.getLogger(__name__)

MODES = ("hybrid", "bm25", "dense")


class Retriever:
    """Search the corpus described by ``settings`` (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self._warned_empty = False
        self.settings = settings
        self.config = settings.retrieval
        self.catalogue = catalogue_for(settings)
        self._bm25: BM25Index | None = None
        self._dense: Any = None
        self._lock = threading.Lock()

    # -- public API -----------------------------------------------------------------------------
    def search(self, query: str, k: int | None = None, mode: str | None = None) -> list[Hit]:
        """The best ``k`` passages (default ``retrieval.top_k``) for ``query``."""
        if not isinstance(query, str) or not query.strip():
            raise InputError("the query is empty; type a question or some keywords")
        query = query.strip()
        limit = self.settings.limits.max_question_chars
        if len(query) > limit:
            raise InputError(f"the query is {len(query)} characters long; the limit is {limit}")
        mode = mode or self.config.mode
        if mode not in MODES:
            raise InputError(f"unknown retrieval mode {mode!r}; choose one of {', '.join(MODES)}")
        k = self.config.top_k if k is None else k
        if k < 1:
            raise InputError("k must be at least 1")
        n_candidates = max(self.config.candidate_k, k)

        if not self.catalogue.exists():
            if not self._warned_empty:  # once per retriever, not once per question
                log.warning(
                    "the corpus is empty: run `armada ingest --demo` or `armada ingest PATH`"
                )
                self._warned_empty = True
            return []
        generation = self.catalogue.generation()
        rankings: dict[str, list[str]] = {}
        scores: dict[str, dict[str, float]] = {}
        if mode in ("hybrid", "bm25"):
            found = self._bm25_index(generation).search(query, n_candidates)
            rankings["bm25"] = [pid for pid, _ in found]
            scores["bm25"] = dict(found)
        if mode in ("hybrid", "dense"):
            found = self._dense_index().query(query, n_candidates, generation)
            rankings["dense"] = [pid for pid, _ in found]
            scores["dense"] = dict(found)

        if mode == "hybrid":
            fused = reciprocal_rank_fusion(rankings, self.config.rrf_k)
        else:
            fused = [
                Fused(pid, scores[mode][pid], {mode: r})
                for r, pid in enumerate(rankings[mode], start=1)
            ]
        passages = self.catalogue.passages_by_id(f.id for f in fused[:n_candidates])
        # An index entry for a passage the catalogue no longer has (mid-ingest) is dropped.
        candidates = [(f, passages[f.id]) for f in fused[:n_candidates] if f.id in passages]
        if self.config.reranker_model:
            return self._rerank(query, candidates)[:k]
        return [Hit(p, f.score, dict(f.ranks)) for f, p in candidates[:k]]

    def count(self) -> int:
        """Passages in the catalogue."""
        return self.catalogue.counts()[1]

    def get(self, ids: list[str]) -> list[Passage]:
        """The passages with these ids, in the order given; unknown ids are left out."""
        found = self.catalogue.passages_by_id(ids)
        return [found[i] for i in dict.fromkeys(ids) if i in found]

    def stats(self) -> dict[str, Any]:
        """What the corpus holds and how it is indexed (for ``armada doctor``)."""
        from core.retrieval.dense import model_identity

        documents, passages = self.catalogue.counts()
        generation = self.catalogue.generation()
        return {
            "documents": documents,
            "passages": passages,
            "generation": generation,
            "engine": self.config.bm25_engine,
            "index_version": read_pointer(self.settings.bm25_dir),
            "embedding_model": model_identity(self.settings),
            "dense_passages": self._dense_index().count(generation),
            "reranker_model": self.config.reranker_model,
            "mode": self.config.mode,
            "corpus_db": str(self.settings.corpus_db_path),
        }

    # -- stages ---------------------------------------------------------------------------------
    def _bm25_index(self, generation: int) -> BM25Index:
        engine = self.config.bm25_engine
        with self._lock:
            current = self._bm25
            if current is not None and current.is_current(engine, generation):
                return current
            published = read_pointer(self.settings.bm25_dir)
            if published is not None and (current is None or current.version != published):
                current = load_index(self.settings.bm25_dir)
            if current is not None and current.is_current(engine, generation):
                self._bm25 = current
                return current
            # Stale or missing. Rebuild and publish if no ingest is running; otherwise make do
            # with what is published (the ingest will publish a fresh one when it finishes).
            with writer_lock(lock_path(self.settings), blocking=False) as acquired:
                if acquired:
                    log.info("BM25 index is stale or missing: rebuilding")
                    current = current_bm25(self.settings, self.catalogue)
                elif not self._usable(current):
                    current = build_in_memory(engine, *self.catalogue.snapshot())
            self._bm25 = current
            return current

    def _usable(self, index: BM25Index | None) -> bool:
        return (
            index is not None
            and index.meta.get("engine") == self.config.bm25_engine
            and index.meta.get("tokenizer") == TOKENIZER_VERSION
        )

    def _dense_index(self) -> Any:
        with self._lock:
            if self._dense is None:
                from core.retrieval.dense import DenseIndex

                self._dense = DenseIndex(self.settings)
            return self._dense

    def _rerank(self, query: str, candidates: list[tuple[Fused, Passage]]) -> list[Hit]:
        from core.retrieval.rerank import load_reranker, rerank_order

        model = load_reranker(str(self.config.reranker_model))
        texts = [indexed_text(p.title, p.text) for _, p in candidates]
        hits: list[Hit] = []
        for r, (i, score) in enumerate(rerank_order(model, query, texts), start=1):
            fused, passage = candidates[i]
            hits.append(Hit(passage, score, {**fused.ranks, "rerank": r}))
        return hits
