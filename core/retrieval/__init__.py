"""Corpus and retrieval: ingest documents, then search them with BM25, dense or hybrid retrieval.

    from core.retrieval import Retriever, ingest_demo, ingest_paths
    ingest_demo(settings)                      # or ingest_paths(settings, [Path("notes/")])
    hits = Retriever(settings).search("Who painted La Grande Jatte?", k=4)

Layout: ``text`` (tokenizer, chunker), ``loaders`` (files → documents), ``catalogue`` (SQLite),
``bm25`` (engines, versioned index), ``dense`` (Chroma + MiniLM), ``fusion`` (RRF), ``rerank``
(cross-encoder), ``ingest`` and ``retriever`` (the two entry points). Importing this package is
cheap: chromadb, torch and sentence-transformers load only when first needed.
"""

from core.retrieval.dense import embed_texts
from core.retrieval.fusion import Fused, reciprocal_rank_fusion
from core.retrieval.ingest import IngestReport, ingest_demo, ingest_paths, refresh_indexes
from core.retrieval.retriever import MODES, Retriever
from core.retrieval.text import chunk_text, tokenize

__all__ = [
    "MODES",
    "embed_texts",
    "Fused",
    "IngestReport",
    "Retriever",
    "chunk_text",
    "ingest_demo",
    "ingest_paths",
    "reciprocal_rank_fusion",
    "refresh_indexes",
    "tokenize",
]
