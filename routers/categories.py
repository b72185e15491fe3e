"""Question categories by prototype embeddings: the bandit's context.

Each category is described by a few example questions (and/or a description); its prototype is the
normalised mean of their embeddings. A question gets the category whose prototype is nearest by
cosine similarity. Categories are configurable; the defaults are multi_hop, long_tail, biomedical
and general.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

Embed = Callable[[list[str]], np.ndarray]

DEFAULT_PROTOTYPES: dict[str, list[str]] = {
    "multi_hop": [
        "What government position was held by the woman who portrayed Corliss Archer?",
        "Which magazine was started first, Arthur's Magazine or First for Women?",
        "Were Scott Derrickson and Ed Wood of the same nationality?",
        "The director of the romantic comedy Big Stone Gap is based in what New York city?",
        "What is the nationality of the composer of the opera that premiered in 1901?",
        "Who was born first, the founder of the company that makes the iPhone or Bill Gates?",
    ],
    "long_tail": [
        "What is George Rankin's occupation?",
        "In what city was Marcel Tyberg born?",
        "Who was the producer of The Hunt?",
        "What genre is Guilty Pleasures?",
        "Who is the author of The Quiet Neighbour?",
        "What is the capital of Kirov Oblast?",
    ],
    "biomedical": [
        "Do mitochondria play a role in remodelling lace plant leaves during programmed cell death?",
        "Is low-dose aspirin effective for the prevention of preeclampsia?",
        "Does metformin reduce cancer risk in patients with type 2 diabetes?",
        "Are serum biomarkers predictive of outcome after traumatic brain injury?",
        "Is the expression of this gene associated with tumour progression?",
        "Does early surgery improve survival in patients with infective endocarditis?",
    ],
    "general": [
        "Who is the Eiffel Tower named after?",
        "What is the capital of France?",
        "How does photosynthesis work?",
        "When did the Second World War end?",
        "What is the largest planet in the solar system?",
        "Who wrote Romeo and Juliet?",
    ],
}


class CategoryClassifier:
    """Nearest prototype by cosine similarity over sentence embeddings."""

    def __init__(self, embed: Embed, prototypes: Mapping[str, Sequence[str]] | None = None) -> None:
        protos = dict(prototypes or DEFAULT_PROTOTYPES)
        if not protos or any(not qs for qs in protos.values()):
            raise ValueError("every category needs at least one example question or description")
        self.embed = embed
        self.categories = list(protos)
        rows = []
        for name in self.categories:
            e = _normalise(np.asarray(embed(list(protos[name])), dtype=np.float32))
            rows.append(_normalise(e.mean(axis=0, keepdims=True))[0])
        self.prototypes = np.stack(rows)

    def scores(self, question: str, embedding: np.ndarray | None = None) -> dict[str, float]:
        e = embedding if embedding is not None else self.embed([question])[0]
        sims = self.prototypes @ _normalise(np.asarray(e, dtype=np.float32)[None, :])[0]
        return {c: float(s) for c, s in zip(self.categories, sims, strict=True)}

    def classify(self, question: str, embedding: np.ndarray | None = None) -> str:
        s = self.scores(question, embedding)
        return max(s, key=s.__getitem__)


def _normalise(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(n == 0, 1, n)
