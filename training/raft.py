"""RAFT training data: each question with its gold passage(s) among distractors, or without them.

    from training.raft import RaftSettings, build_raft, write_raft
    records = build_raft(examples, RaftSettings(p_gold=0.8, k=4, seed=0))
    write_raft(records, Path("raft.jsonl"), settings, sources=["hotpotqa:train.json"])

RAFT (Zhang et al., 2024) trains a model to answer from a context in which some documents are
distractors: with probability ``p_gold`` a question keeps its gold passage(s) mixed with ``k``
distractors; otherwise it gets distractors only, so the model also learns to answer (from what it
memorised) when retrieval missed. The prompt is the method's ``Question / Context / Answer`` format
(``PROMPT``). :func:`build_raft` is pure: the same examples and settings give the same records, and
each record depends only on its own example (a per-example seed), so subsets and reorderings agree.

Distractors come from the record's own non-gold paragraphs (``"record"``, topped up at random),
hard negatives from a retriever (``"retriever"``) or random passages of the pool (``"random"``).
Output: chat-format JSONL (system, user, assistant) plus a manifest with settings, counts and a
hash of the data (``write_raft``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from core.datasets import Example, _iter_jsonl
from core.errors import InputError
from core.retrieval.storage import atomic_write_text
from core.types import Passage

RAFT_SYSTEM = (
    "Answer the question using the context. Some documents in the context are distractors: use "
    "only the ones that help. Reply with the short answer only."
)
PROMPT = "Question: {question}\nContext:\n{context}\nAnswer:"
"""The user turn of a RAFT example (the assistant turn is the answer)."""
DOC = "[{n}] {title}: {text}"
MANIFEST_SUFFIX = ".manifest.json"
FORMAT = "armada-raft/1"

DistractorSource = Literal["record", "retriever", "random"]
Retrieve = Callable[[str, int], Sequence[Passage]]
"""``retrieve(question, n)`` → passages, best first (for hard negatives)."""


@dataclass(frozen=True)
class RaftSettings:
    p_gold: float = 0.8
    """Probability that a question keeps its gold passage(s)."""
    k: int = 4
    """Distractors per question (with gold); a question without gold gets ``k + #gold``."""
    distractors: DistractorSource = "record"
    max_passage_words: int | None = 120
    """Passages are cut to this many words (None: whole), at training and at answer time alike."""
    system: str = RAFT_SYSTEM
    seed: int = 0
    drop_answer_titled_gold: bool = False
    """Leave out gold passages whose title *is* the answer (PopQA's paragraphs include the answer
    entity's own page): they teach "answer = a passage title", which fails at test time when the
    retriever does not bring that page."""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= self.p_gold <= 1.0:
            raise InputError(f"p_gold must be in [0, 1], got {self.p_gold!r}")
        if self.k < 0:
            raise InputError(f"k must be ≥ 0, got {self.k!r}")
        if self.distractors not in ("record", "retriever", "random"):
            raise InputError(
                f"unknown distractor source {self.distractors!r}; use record, retriever or random"
            )
        if self.max_passage_words is not None and self.max_passage_words < 8:
            raise InputError("max_passage_words must be ≥ 8 (or None for whole passages)")


def truncate_words(text: str, max_words: int | None) -> str:
    if max_words is None:
        return text
    words = text.split()
    return text if len(words) <= max_words else " ".join(words[:max_words]) + " …"


def format_context(passages: Sequence[Passage], max_words: int | None) -> str:
    return "\n".join(
        DOC.format(n=i, title=p.title or "untitled", text=truncate_words(p.text, max_words))
        for i, p in enumerate(passages, 1)
    )


def raft_messages(
    question: str,
    passages: Sequence[Passage],
    *,
    system: str = RAFT_SYSTEM,
    max_words: int | None = 120,
    answer: str | None = None,
) -> list[dict[str, str]]:
    """The chat of one RAFT example (the same function renders the prompt at answer time)."""
    user = PROMPT.format(question=question, context=format_context(passages, max_words))
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def _rng(seed: int, example_id: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}:{example_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _key(p: Passage) -> str:
    return (p.title or p.id).strip().lower()


def _pick(
    candidates: Iterable[Passage], n: int, exclude: set[str], rng: random.Random | None
) -> list[Passage]:
    """Up to ``n`` passages from ``candidates`` (sampled when ``rng``, else in order), no repeats."""
    seen = set(exclude)
    pool = []
    for p in candidates:
        if _key(p) not in seen and p.text.strip():
            seen.add(_key(p))
            pool.append(p)
    if rng is not None:
        return rng.sample(pool, min(n, len(pool)))
    return pool[:n]


def _distractors(
    ex: Example,
    n: int,
    s: RaftSettings,
    rng: random.Random,
    pool: Sequence[Passage],
    retrieve: Retrieve | None,
) -> list[Passage]:
    exclude = {_key(p) for p in ex.gold}
    chosen: list[Passage] = []
    if s.distractors == "retriever":
        if retrieve is None:
            raise InputError("distractors='retriever' needs a retriever")
        chosen = _pick(retrieve(ex.question, n + len(ex.gold) + 4), n, exclude, None)
    elif s.distractors == "record":
        chosen = _pick(ex.others, n, exclude, rng)
    if len(chosen) < n:  # top up at random from the pool (other records' passages)
        exclude |= {_key(p) for p in chosen}
        # Sample a bounded slice so a 100k pool costs no more than a small one.
        start = rng.randrange(len(pool)) if pool else 0
        window = [pool[(start + i) % len(pool)] for i in range(min(len(pool), 8 * n + 32))]
        chosen += _pick(window, n - len(chosen), exclude, rng)
    return chosen


def build_raft(
    examples: Sequence[Example],
    settings: RaftSettings | None = None,
    *,
    pool: Sequence[Passage] | None = None,
    retrieve: Retrieve | None = None,
) -> list[dict[str, Any]]:
    """One chat record per example that has an answer (see the module docstring).

    ``pool`` (default: every passage of ``examples``) supplies random distractors; ``retrieve``
    supplies hard negatives when ``settings.distractors == "retriever"``.
    """
    s = settings or RaftSettings()
    if pool is None:
        pool = [p for ex in examples for p in ex.passages]
    records = []
    for ex in examples:
        if not ex.answers or not ex.answers[0].strip():
            continue
        rng = _rng(s.seed, f"{ex.dataset}:{ex.id}")
        if s.drop_answer_titled_gold:
            answers = {a.strip().lower() for a in ex.answers}
            kept = tuple(p for p in ex.gold if p.title.strip().lower() not in answers)
            ex = dataclasses.replace(ex, gold=kept or ex.gold)
        keep_gold = bool(ex.gold) and rng.random() < s.p_gold
        n = s.k if keep_gold else s.k + len(ex.gold)
        docs = _distractors(ex, n, s, rng, pool, retrieve)
        if keep_gold:
            docs = [*ex.gold, *docs]
        # Canonical order before the seeded shuffle: a retriever that returns the same passages
        # in a different order (score ties) still yields the same record.
        docs.sort(key=lambda p: p.id)
        rng.shuffle(docs)
        records.append(
            {
                "id": f"{ex.dataset}:{ex.id}",
                "dataset": ex.dataset,
                "category": ex.category,
                "question": ex.question,
                "answers": list(ex.answers),
                "gold_included": keep_gold,
                "passage_ids": [p.id for p in docs],
                "gold_ids": [p.id for p in ex.gold],
                "messages": raft_messages(
                    ex.question,
                    docs,
                    system=s.system,
                    max_words=s.max_passage_words,
                    answer=ex.answers[0].strip(),
                ),
            }
        )
    return records


def build_ft(examples: Sequence[Example], system: str | None = None) -> list[dict[str, Any]]:
    """Closed-book SFT records (question → answer, no context): the FT arm's data."""
    from agents import prompts

    sys_prompt = system or prompts.CLOSED_BOOK_SYSTEM
    return [
        {
            "id": f"{ex.dataset}:{ex.id}",
            "dataset": ex.dataset,
            "category": ex.category,
            "question": ex.question,
            "answers": list(ex.answers),
            "messages": [
                {"role": "system", "content": sys_prompt},
                {"role": "user", "content": prompts.CLOSED_BOOK_USER.format(question=ex.question)},
                {"role": "assistant", "content": ex.answers[0].strip()},
            ],
        }
        for ex in examples
        if ex.answers and ex.answers[0].strip()
    ]


def data_hash(records: Sequence[dict[str, Any]]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps(r, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def manifest_path(path: Path) -> Path:
    return path.with_name(path.name + MANIFEST_SUFFIX)


def write_raft(
    records: Sequence[dict[str, Any]],
    path: Path,
    settings: RaftSettings | dict[str, Any] | None,
    *,
    sources: Sequence[str] = (),
    kind: str = "raft",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``records`` as JSONL and its manifest next to it (both atomically); returns the manifest."""
    if not records:
        raise InputError("no training records to write (were the datasets empty or unanswered?)")
    path = Path(path)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    by_dataset: dict[str, int] = {}
    for r in records:
        by_dataset[r.get("dataset", "")] = by_dataset.get(r.get("dataset", ""), 0) + 1
    s = asdict(settings) if isinstance(settings, RaftSettings) else dict(settings or {})
    manifest = {
        "format": FORMAT,
        "kind": kind,
        "file": path.name,
        "records": len(records),
        "by_dataset": dict(sorted(by_dataset.items())),
        "with_gold": sum(1 for r in records if r.get("gold_included")),
        "sources": list(sources),
        "settings": s,
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "data_hash": data_hash(records),
        **(extra or {}),
    }
    atomic_write_text(path, text)
    atomic_write_text(
        manifest_path(path), json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    )
    return manifest


def read_records(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Records of a chat JSONL file and its manifest (``{}`` when there is none).

    Every line must be a JSON object with ``messages`` ending in an assistant turn; a manifest whose
    sha256 no longer matches the file is refused (the data changed after it was written).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such training file")
    raw = path.read_bytes()
    records = []
    for _, n, rec in _iter_jsonl(path):
        msgs = rec.get("messages")
        if (
            not isinstance(msgs, list)
            or len(msgs) < 2
            or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in msgs)
            or msgs[-1].get("role") != "assistant"
            or not msgs[-1]["content"].strip()
        ):
            raise InputError(
                f"{path} line {n}: a record needs 'messages' (role/content objects) ending in a "
                "non-empty assistant turn"
            )
        records.append(rec)
    if not records:
        raise InputError(f"{path}: no training records")
    manifest: dict[str, Any] = {}
    mpath = manifest_path(path)
    if mpath.is_file():
        try:
            manifest = json.loads(mpath.read_text("utf-8"))
        except json.JSONDecodeError as e:
            raise InputError(f"{mpath}: invalid JSON ({e.msg})") from None
        if manifest.get("sha256") != hashlib.sha256(raw).hexdigest():
            raise InputError(
                f"{path} changed after its manifest was written ({mpath.name}); rebuild it "
                "or delete the manifest"
            )
    else:
        manifest = {"file": path.name, "records": len(records), "data_hash": data_hash(records)}
    return records, manifest
