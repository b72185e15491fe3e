"""Optional cross-encoder reranking, used when ``retrieval.reranker_model`` names a local model.

No reranker ships offline, so nothing here runs by default. The model is a
``sentence_transformers.CrossEncoder`` loaded once per process per path, on CPU, from local files
only. Reranking scores each (query, passage) pair and sorts by that score, highest first; equal
scores keep the incoming (fused) order.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from core.errors import ModelError

log = logging.getLogger(__name__)


@lru_cache(maxsize=2)
def load_reranker(path: str) -> Any:
    """A CrossEncoder with one output label, loaded once per process."""
    from sentence_transformers import CrossEncoder

    log.info("loading reranker %s", path)
    try:
        return CrossEncoder(path, num_labels=1, device="cpu", local_files_only=True)
    except Exception as e:  # noqa: BLE001 - reported with the path, which is what users need
        raise ModelError(f"cannot load the reranker model at {path}: {e}") from e


def rerank_order(model: Any, query: str, texts: Sequence[str]) -> list[tuple[int, float]]:
    """(index into ``texts``, score) sorted by the cross-encoder's score, best first; stable."""
    if not texts:
        return []
    scores = model.predict(
        [(query, t) for t in texts], convert_to_numpy=True, show_progress_bar=False
    )
    order = sorted(range(len(texts)), key=lambda i: -float(scores[i]))
    return [(i, float(scores[i])) for i in order]
