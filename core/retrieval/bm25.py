"""BM25 engines (bm25s, rank-bm25) behind one interface, and the versioned on-disk BM25 index.

Both engines score with BM25 in its Lucene form (k1=1.5, b=0.75) over the same tokens
(:func:`core.retrieval.text.tokenize`): bm25s with ``method="lucene"`` and rank-bm25's
``BM25Okapi`` with its idf replaced by Lucene's, idf = log(1 + (N - df + 0.5) / (df + 0.5)).
Their term weights then differ only by the constant factor (k1 + 1), so they rank identically.
Lucene's idf is used, rather than Robertson's log((N - df + 0.5) / (df + 0.5)) floored at 0,
because the latter scores 0 for any term in half the documents or more, so a small corpus
(two documents) could never match anything. Ties are broken by index position, and the index is
ordered by passage id, so ties go to the smaller id in both engines.

On disk (``settings.bm25_dir``)::

    CURRENT                     the name of the live version, swapped atomically
    v000012-bm25s-1a2b3c/       meta.json (engine, tokenizer, catalogue generation), ids.json,
                                and the engine's own files

A new version is written to a temporary folder, renamed into place, and only then named in
``CURRENT``; older versions (all but the previous one) are removed afterwards.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import shutil
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from core.retrieval.storage import atomic_write_text, fsync_tree
from core.retrieval.text import TOKENIZER_VERSION, indexed_text, tokenize

log = logging.getLogger(__name__)

K1 = 1.5
B = 0.75
POINTER = "CURRENT"
ENGINES: dict[str, type[BM25Engine]] = {}


def register_engine(cls: type[BM25Engine]) -> type[BM25Engine]:
    """Class decorator: add an engine to :data:`ENGINES` under its lowercase, unique ``name``."""
    name = cls.name
    if not name or name != name.lower() or not name.replace("_", "").isalnum():
        raise ValueError(f"bad BM25 engine name {name!r}")
    if name in ENGINES:
        raise ValueError(f"BM25 engine {name!r} is already registered")
    ENGINES[name] = cls
    return cls


def get_engine(name: str) -> type[BM25Engine]:
    try:
        return ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown BM25 engine {name!r}; choose one of {sorted(ENGINES)}") from None


class BM25Engine(ABC):
    """Scores every indexed document for a tokenized query."""

    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def build(cls, corpus_tokens: list[list[str]]) -> BM25Engine: ...

    @abstractmethod
    def scores(self, query_tokens: list[str]) -> np.ndarray:
        """One score per indexed document (0 where no query term occurs)."""

    @abstractmethod
    def save(self, folder: Path) -> None: ...

    @classmethod
    @abstractmethod
    def load(cls, folder: Path) -> BM25Engine: ...

    def top(self, query_tokens: list[str], k: int) -> list[tuple[int, float]]:
        """The best ``k`` (document index, score) pairs with a positive score."""
        if not query_tokens:
            return []
        return top_k(self.scores(query_tokens), k)


def top_k(scores: np.ndarray, k: int) -> list[tuple[int, float]]:
    """Indices of the ``k`` highest positive scores, ties broken by the smaller index."""
    if k <= 0:
        return []
    cand = np.flatnonzero(scores > 0)
    if cand.size > k:
        # Keep everything that scores at least the k-th best, so ties at the boundary are all seen.
        vals = scores[cand]
        kth = np.partition(vals, cand.size - k)[cand.size - k]
        cand = cand[vals >= kth]
    order = cand[np.lexsort((cand, -scores[cand]))][:k]
    return [(int(i), float(scores[i])) for i in order]


def _import_bm25s() -> Any:
    import bm25s

    # bm25s sets its own logger to DEBUG on import, which floods any app that logs at DEBUG or
    # prints what reaches the root logger; hand the level back to the application's config.
    if logging.getLogger("bm25s").level == logging.DEBUG:
        logging.getLogger("bm25s").setLevel(logging.NOTSET)
    return bm25s


@register_engine
class Bm25sEngine(BM25Engine):
    name = "bm25s"

    def __init__(self, model: Any) -> None:
        self.model = model

    @classmethod
    def build(cls, corpus_tokens: list[list[str]]) -> Bm25sEngine:
        bm25s = _import_bm25s()

        if not corpus_tokens:
            return cls(None)
        model = bm25s.BM25(method="lucene", k1=K1, b=B)
        model.index(corpus_tokens, show_progress=False)
        return cls(model)

    def scores(self, query_tokens: list[str]) -> np.ndarray:
        if self.model is None:
            return np.zeros(0, dtype=np.float32)
        ids = self.model.get_tokens_ids(query_tokens)
        if not ids:
            return np.zeros(self.model.scores["num_docs"], dtype=np.float32)
        return self.model.get_scores_from_ids(ids)

    def save(self, folder: Path) -> None:
        self.model.save(str(folder), show_progress=False)

    @classmethod
    def load(cls, folder: Path) -> Bm25sEngine:
        bm25s = _import_bm25s()

        return cls(bm25s.BM25.load(str(folder), mmap=False, show_progress=False))


@register_engine
class RankBM25Engine(BM25Engine):
    """rank-bm25: pure Python and slow at scale; kept as the reference implementation."""

    name = "rank_bm25"
    FILE = "rank_bm25.pkl"

    def __init__(self, model: Any) -> None:
        self.model = model

    @classmethod
    def build(cls, corpus_tokens: list[list[str]]) -> RankBM25Engine:
        if not corpus_tokens:  # BM25Okapi divides by the corpus size
            return cls(None)
        return cls(_lucene_okapi()(corpus_tokens, k1=K1, b=B))

    def scores(self, query_tokens: list[str]) -> np.ndarray:
        if self.model is None:
            return np.zeros(0)
        return np.asarray(self.model.get_scores(query_tokens), dtype=np.float64)

    def save(self, folder: Path) -> None:
        # The model's state (plain lists, dicts and numbers) is pickled; the pickle is only ever
        # read back from Armada's own data folder.
        with open(folder / self.FILE, "wb") as f:
            pickle.dump(vars(self.model), f, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def load(cls, folder: Path) -> RankBM25Engine:
        with open(folder / cls.FILE, "rb") as f:
            state = pickle.load(f)
        okapi = _lucene_okapi()
        model = okapi.__new__(okapi)
        vars(model).update(state)
        return cls(model)


@lru_cache(maxsize=1)
def _lucene_okapi() -> type:
    """rank_bm25.BM25Okapi with Lucene's idf (see the module docstring); defined on first use."""
    from rank_bm25 import BM25Okapi

    class LuceneIdfOkapi(BM25Okapi):
        def _calc_idf(self, nd: dict[str, int]) -> None:
            n = self.corpus_size
            for word, df in nd.items():
                self.idf[word] = math.log(1.0 + (n - df + 0.5) / (df + 0.5))

    return LuceneIdfOkapi


@dataclass
class BM25Index:
    """A loaded index version: the engine plus the passage id of each indexed document."""

    engine: BM25Engine
    ids: list[str]
    meta: dict[str, Any]
    version: str

    @property
    def generation(self) -> int:
        return int(self.meta.get("generation", -1))

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        """(passage id, score) of the best ``k`` passages for ``query``."""
        return [(self.ids[i], s) for i, s in self.engine.top(tokenize(query), k)]

    def is_current(self, engine: str, generation: int) -> bool:
        return (
            self.meta.get("engine") == engine
            and self.meta.get("tokenizer") == TOKENIZER_VERSION
            and self.generation == generation
        )


def build_in_memory(
    engine: str, generation: int, passages: Iterable[tuple[str, str, str]]
) -> BM25Index:
    """Build an index over ``(id, title, text)`` rows without writing anything."""
    cls = get_engine(engine)
    t0 = time.perf_counter()
    ids: list[str] = []
    tokens: list[list[str]] = []
    for pid, title, text in passages:
        ids.append(pid)
        tokens.append(tokenize(indexed_text(title, text)))
    model = cls.build(tokens)
    meta = {
        "engine": engine,
        "tokenizer": TOKENIZER_VERSION,
        "generation": generation,
        "passages": len(ids),
        "k1": K1,
        "b": B,
        "built_at": time.time(),
    }
    version = f"v{generation:06d}-{engine}-{uuid.uuid4().hex[:6]}"
    log.info("built BM25 index over %d passages in %.1fs", len(ids), time.perf_counter() - t0)
    return BM25Index(model, ids, meta, version)


def build_index(
    bm25_dir: Path, engine: str, generation: int, passages: Iterable[tuple[str, str, str]]
) -> BM25Index:
    """Build an index over ``(id, title, text)`` rows and publish it as the current version.

    The caller must hold the writer lock.
    """
    index = build_in_memory(engine, generation, passages)
    bm25_dir.mkdir(parents=True, exist_ok=True)
    tmp = bm25_dir / f".tmp-{index.version}"
    tmp.mkdir()
    try:
        if index.ids:
            index.engine.save(tmp)
        (tmp / "ids.json").write_text(json.dumps(index.ids), encoding="utf-8")
        (tmp / "meta.json").write_text(json.dumps(index.meta, indent=1), encoding="utf-8")
        fsync_tree(tmp)  # the data must be on disk before the rename can be
        tmp.rename(bm25_dir / index.version)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    previous = read_pointer(bm25_dir)
    atomic_write_text(bm25_dir / POINTER, index.version + "\n")
    _cleanup(bm25_dir, keep={index.version, previous})
    log.info("published BM25 index %s", index.version)
    return index


def read_pointer(bm25_dir: Path) -> str | None:
    try:
        name = (bm25_dir / POINTER).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return name or None


def load_index(bm25_dir: Path) -> BM25Index | None:
    """The current published version, or None if there is none (or it cannot be read)."""
    version = read_pointer(bm25_dir)
    if version is None:
        return None
    folder = bm25_dir / version
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        ids = json.loads((folder / "ids.json").read_text(encoding="utf-8"))
        cls = get_engine(meta["engine"])
        engine = cls.load(folder) if ids else cls.build([])
    except (OSError, ValueError, KeyError, pickle.UnpicklingError) as e:
        log.warning("BM25 index %s is unreadable (%s); it will be rebuilt", folder, e)
        return None
    return BM25Index(engine, ids, meta, version)


def _cleanup(bm25_dir: Path, keep: set[str | None]) -> None:
    # Callers hold the writer lock, so every temporary folder left here is from a dead build.
    for child in bm25_dir.iterdir():
        if child.is_dir() and child.name not in keep:
            shutil.rmtree(child, ignore_errors=True)
