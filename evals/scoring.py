"""Per-answer scores: which metrics each dataset gets, computed from one cached answer record.

A record is what the harness caches for one (arm, example): the answer, the retrieved passages
(``hits``: id, title, text), the cited ids, latency, usage and status. Scoring is pure, so a report
can be rebuilt from the cache at any time without running a model.

Conventions (documented once, here):
- An arm that failed (status "fallback" or "error") scores as an empty answer: a fallback arm's
  answer is not the evaluated arm's. Its failure is counted in the cost table.
- PubMedQA: the answer's first yes/no/maybe word is its label, "maybe" if none
  (``core.metrics.yes_no_maybe``); ROUGE-L is against the expert long answer.
- Retrieval metrics match passages by title and only apply to arms that retrieve.
- Faithfulness applies to retrieving arms that did not abstain.
"""

from __future__ import annotations

from typing import Any

from agents.refrag.support import is_abstention
from core.datasets import Example
from core.metrics import (
    contains_any,
    exact_match,
    f1_score,
    faithfulness,
    recall_at_k,
    reciprocal_rank,
    rouge_l,
    yes_no_maybe,
)

PRIMARY = {"hotpotqa": "f1", "popqa": "contains", "pubmedqa": "accuracy", "jsonl": "f1"}
"""Each dataset's headline metric (the standard one for the benchmark)."""
BINARY = frozenset({"em", "contains", "accuracy", "abstained"})
"""0/1 metrics, compared between arms with McNemar's test as well as the paired bootstrap."""
RECALL_KS = (2, 4, 8)
OK_STATUSES = frozenset({"ok"})


def primary_metric(dataset: str) -> str:
    return PRIMARY.get(dataset, "f1")


def answer_of(record: dict[str, Any]) -> str:
    """The evaluated arm's own answer: empty when it failed (see the module docstring)."""
    return str(record.get("answer", "")) if record.get("status") in OK_STATUSES else ""


def score_record(
    example: Example, record: dict[str, Any], retrieves: bool = True
) -> dict[str, float | None]:
    """Every metric that applies to this example's dataset (None: not applicable here)."""
    answer = answer_of(record)
    abstained = is_abstention(answer)
    m: dict[str, float | None] = {}
    if example.dataset == "pubmedqa":
        m["accuracy"] = float(yes_no_maybe(answer) == example.answers[0].strip().lower())
        long_answer = example.meta.get("long_answer")
        m["rouge_l"] = rouge_l(answer, [long_answer]) if long_answer else None
    else:
        m["em"] = exact_match(answer, example.answers)
        m["f1"] = f1_score(answer, example.answers)
        m["contains"] = contains_any(answer, example.answers)
        m["rouge_l"] = rouge_l(answer, example.answers)
    hits = record.get("hits") or []
    if retrieves:
        titles = [str(h.get("title", "")) for h in hits]
        gold = [p.title for p in example.gold]
        for k in RECALL_KS:
            m[f"recall@{k}"] = recall_at_k(titles, gold, k)
        m["mrr"] = reciprocal_rank(titles, gold)
        cited = set(record.get("cited_ids") or [])
        texts = [str(h.get("text", "")) for h in hits if h.get("id") in cited]
        m["faithfulness"] = None if abstained else faithfulness(answer, texts)
    m["abstained"] = float(abstained)
    return m


def label_of(example: Example, record: dict[str, Any]) -> str | None:
    """PubMedQA: the predicted yes/no/maybe label (for macro-F1); None for other datasets."""
    return yes_no_maybe(answer_of(record)) if example.dataset == "pubmedqa" else None


def subcategory(example: Example) -> str:
    """A finer category for per-category tables: HotpotQA type, PopQA relation, PubMedQA gold label."""
    if example.dataset == "hotpotqa":
        return str(example.meta.get("type") or "unknown")
    if example.dataset == "popqa":
        return str(example.meta.get("prop") or "unknown")
    if example.dataset == "pubmedqa":
        return f"gold={example.answers[0].lower()}"
    return example.category
