"""Benchmark datasets as plain ``Example`` records: HotpotQA, PopQA, PubMedQA and generic JSONL.

    from core.datasets import load_dataset, split
    examples = load_dataset("hotpotqa:/path/dev_distractor.json")
    train, held_out = split(examples, held_out=0.2, seed=0)

Each loader reads one dataset's official file layout and fails with an ``InputError`` naming the
file and the record (or line) that is wrong, including a file of another dataset given to the
wrong loader. Passage ids are ``"{dataset}:{example_id}:{title}"`` (``#2``, ``#3`` … for repeated
titles in one record), so a passage can be traced back to its record. The app never needs these
files: they are for training and measurement runs, passed in by path.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import InputError
from core.types import Passage

log = logging.getLogger(__name__)

CATEGORIES = {"hotpotqa": "multi_hop", "popqa": "long_tail", "pubmedqa": "biomedical"}
"""Each dataset's router category (the router's default categories)."""


@dataclass(frozen=True)
class Example:
    """One benchmark question with its gold answers, gold passages and distractors."""

    id: str
    question: str
    answers: tuple[str, ...]
    """Gold answers (PubMedQA: ``("yes",)``, ``("no",)`` or ``("maybe",)``)."""
    gold: tuple[Passage, ...] = ()
    """Passages that support the answer."""
    others: tuple[Passage, ...] = ()
    """The record's non-gold passages (distractors)."""
    dataset: str = "jsonl"
    category: str = "general"
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def passages(self) -> tuple[Passage, ...]:
        """Gold and distractor passages, gold first."""
        return self.gold + self.others


# -- shared helpers ------------------------------------------------------------------------------
def _read_text(path: str | Path) -> tuple[Path, str]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    try:
        return p, p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _read_json(path: str | Path) -> tuple[Path, Any]:
    p, text = _read_text(path)
    try:
        return p, json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(
            f"{p}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        ) from None


def _iter_jsonl(path: str | Path) -> Iterator[tuple[Path, int, dict[str, Any]]]:
    p, text = _read_text(path)
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{p}: line {n}: invalid JSON: {e.msg}") from None
        if not isinstance(record, dict):
            raise InputError(f"{p}: line {n}: expected a JSON object, got {type(record).__name__}")
        yield p, n, record


def _passages(
    dataset: str, example_id: str, items: Iterable[tuple[str, str]], seen: set[str]
) -> tuple[Passage, ...]:
    """Passages with ids ``dataset:example_id:title``; ``seen`` dedupes across calls."""
    out = []
    for title, text in items:
        base = f"{dataset}:{example_id}:{title}"
        pid, n = base, 1
        while pid in seen:
            n += 1
            pid = f"{base}#{n}"
        seen.add(pid)
        out.append(Passage(id=pid, text=text, title=title, doc_id=title, source=dataset))
    return tuple(out)


def _missing(record: Mapping[str, Any], keys: Sequence[str]) -> list[str]:
    return [k for k in keys if k not in record]


def _example(
    dataset: str, eid: str, question: Any, answers: Iterable[Any], gold: tuple[Passage, ...],
    others: tuple[Passage, ...], meta: dict[str, Any], category: str | None = None,
) -> Example:  # fmt: skip
    category = category or CATEGORIES[dataset]
    answers = tuple(str(a) for a in answers)
    return Example(eid, str(question).strip(), answers, gold, others, dataset, category, meta)


# -- HotpotQA ------------------------------------------------------------------------------------
def load_hotpotqa(path: str | Path) -> list[Example]:
    """The official HotpotQA JSON list (distractor or fullwiki); gold = supporting-fact titles."""
    p, data = _read_json(path)
    if isinstance(data, dict):
        hint = " (an object keyed by id: a PubMedQA file?)" if data else ""
        raise InputError(f"{p}: expected a JSON list of HotpotQA records, got an object{hint}")
    if not isinstance(data, list):
        raise InputError(f"{p}: expected a JSON list of HotpotQA records")
    out = []
    for i, r in enumerate(data):
        where = f"{p}: record {i}"
        if not isinstance(r, dict):
            raise InputError(f"{where}: expected an object, got {type(r).__name__}")
        missing = _missing(r, ("question", "answer", "context"))
        if missing:
            hint = " (a questions-only file has no contexts)" if missing == ["context"] else ""
            raise InputError(f"{where}: not a HotpotQA record, missing {missing}{hint}")
        eid = str(r.get("_id", r.get("id", i)))
        facts = r.get("supporting_facts") or []
        try:
            support = {str(f[0]) for f in facts}
            context = [(str(t), "".join(s).strip()) for t, s in r["context"]]
        except (TypeError, ValueError, IndexError, KeyError):
            raise InputError(
                f"{where} ({eid}): context must be [[title, [sentences]], …] and "
                "supporting_facts [[title, sentence_index], …]"
            ) from None
        seen: set[str] = set()
        gold = _passages("hotpotqa", eid, [c for c in context if c[0] in support], seen)
        others = _passages("hotpotqa", eid, [c for c in context if c[0] not in support], seen)
        meta = {
            "type": r.get("type"),
            "level": r.get("level"),
            "supporting_titles": sorted(support),
            "gold_in_context": bool(support) and support <= {t for t, _ in context},
        }
        out.append(_example("hotpotqa", eid, r["question"], [r["answer"]], gold, others, meta))
    return out


# -- PopQA ---------------------------------------------------------------------------------------
def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def _popqa_paragraphs(path: str | Path) -> tuple[dict[str, list], dict[str, list]]:
    by_id: dict[str, list] = {}
    by_question: dict[str, list] = {}
    for p, n, r in _iter_jsonl(path):
        paras = r.get("paragraphs")
        if not isinstance(paras, list) or not all(
            isinstance(x, dict) and "text" in x for x in paras
        ):
            raise InputError(
                f"{p}: line {n}: expected 'paragraphs': [{{title, text, is_supporting}}]"
            )
        if "id" in r:
            by_id[str(r["id"])] = paras
        if "question" in r:
            by_question[str(r["question"]).strip()] = paras
    return by_id, by_question


def load_popqa(path: str | Path, paragraphs: str | Path | None = None) -> list[Example]:
    """The official ``popQA.tsv``; ``paragraphs`` (JSONL) adds gold/distractor passages."""
    p, text = _read_text(path)
    reader = csv.DictReader(text.splitlines(), delimiter="\t")
    missing = _missing(reader.fieldnames or [], ("question", "possible_answers"))
    if missing:
        raise InputError(f"{p}: not a PopQA TSV, header lacks {missing}")
    by_id, by_question = _popqa_paragraphs(paragraphs) if paragraphs else ({}, {})
    out, joined = [], 0
    for i, row in enumerate(reader):
        line = reader.line_num
        eid = (row.get("id") or "").strip() or f"row{i}"
        try:
            answers = json.loads(row["possible_answers"] or "")
        except json.JSONDecodeError:
            answers = None
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise InputError(f"{p}: line {line} ({eid}): possible_answers must be a JSON list")
        question = (row["question"] or "").strip()
        if not question:
            raise InputError(f"{p}: line {line} ({eid}): empty question")
        paras = by_id.get(eid) or by_question.get(question) or []
        joined += bool(paras)
        seen: set[str] = set()
        items = [(x.get("title", ""), x["text"], bool(x.get("is_supporting"))) for x in paras]
        gold = _passages("popqa", eid, [(t, x) for t, x, s in items if s], seen)
        others = _passages("popqa", eid, [(t, x) for t, x, s in items if not s], seen)
        # Rows that lack the Wikidata columns have empty cells: keep only what is there.
        meta: dict[str, Any] = {k: row[k] for k in ("subj", "prop", "obj") if row.get(k)}
        for k in ("s_pop", "o_pop"):
            if (v := _int_or_none(row.get(k))) is not None:
                meta[k] = v
        out.append(_example("popqa", eid, question, answers, gold, others, meta))
    if paragraphs:
        log.info("popqa: paragraphs joined to %d of %d rows", joined, len(out))
    return out


# -- PubMedQA ------------------------------------------------------------------------------------
def load_pubmedqa(path: str | Path) -> list[Example]:
    """The official ``ori_pqal.json`` ({PMID: record}); gold = the abstract's contexts joined."""
    p, data = _read_json(path)
    if isinstance(data, list):
        raise InputError(f"{p}: expected a PubMedQA object keyed by PMID, got a list (HotpotQA?)")
    if not isinstance(data, dict):
        raise InputError(f"{p}: expected a PubMedQA object keyed by PMID")
    out = []
    for pmid, r in data.items():
        where = f"{p}: record {pmid!r}"
        if not isinstance(r, dict):
            raise InputError(f"{where}: expected an object, got {type(r).__name__}")
        missing = _missing(r, ("QUESTION", "CONTEXTS", "final_decision"))
        if missing:
            raise InputError(f"{where}: not a PubMedQA record, missing {missing}")
        contexts = r["CONTEXTS"]
        if not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts):
            raise InputError(f"{where}: CONTEXTS must be a list of strings")
        # Titled "PMID n", like the PubMed abstracts in the shared retrieval corpus.
        title = f"PMID {pmid}"
        gold = (
            Passage(f"pubmedqa:{pmid}:{title}", " ".join(contexts), title, str(pmid), "pubmedqa"),
        )
        meta = {
            "labels": list(r.get("LABELS", [])),
            "meshes": list(r.get("MESHES", [])),
            "year": r.get("YEAR"),
            "long_answer": r.get("LONG_ANSWER"),
        }
        answers = [r["final_decision"]]
        out.append(_example("pubmedqa", str(pmid), r["QUESTION"], answers, gold, (), meta))
    return out


# -- generic JSONL -------------------------------------------------------------------------------
def _jsonl_passages(value: Any, where: str, key: str) -> list[tuple[str, str]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InputError(f"{where}: {key!r} must be a list of {{title, text}} objects or strings")
    items = []
    for x in value:
        if isinstance(x, str):
            items.append(("", x))
        elif isinstance(x, dict) and isinstance(x.get("text"), str):
            items.append((str(x.get("title", "")), x["text"]))
        else:
            raise InputError(f"{where}: each of {key!r} must be {{title, text}} or a string")
    return items


def load_jsonl(path: str | Path) -> list[Example]:
    """One JSON object a line: ``{id?, question, answers | answer, gold?, others?, category?}``."""
    out = []
    for p, n, r in _iter_jsonl(path):
        where = f"{p}: line {n}"
        if not isinstance(r.get("question"), str) or not r["question"].strip():
            raise InputError(f"{where}: missing 'question'")
        answers = r.get("answers", r.get("answer"))
        if isinstance(answers, str):
            answers = [answers]
        if not isinstance(answers, list) or not answers:
            raise InputError(f"{where}: missing 'answers' (a list) or 'answer' (a string)")
        eid = str(r.get("id", f"line{n}"))
        seen: set[str] = set()
        gold = _passages("jsonl", eid, _jsonl_passages(r.get("gold"), where, "gold"), seen)
        others = _passages("jsonl", eid, _jsonl_passages(r.get("others"), where, "others"), seen)
        known = {"id", "question", "answers", "answer", "gold", "others", "category"}
        meta = {k: v for k, v in r.items() if k not in known}
        category = str(r.get("category", "general"))
        out.append(_example("jsonl", eid, r["question"], answers, gold, others, meta, category))
    return out


# -- by spec, and splitting ----------------------------------------------------------------------
LOADERS = {"hotpotqa": load_hotpotqa, "pubmedqa": load_pubmedqa, "jsonl": load_jsonl}


def load_dataset(spec: str) -> list[Example]:
    """``"hotpotqa:PATH"``, ``"popqa:PATH[,PARAGRAPHS]"``, ``"pubmedqa:PATH"`` or ``"jsonl:PATH"``."""
    kind, sep, rest = spec.partition(":")
    kind = kind.strip().lower()
    known = sorted([*LOADERS, "popqa"])
    if not sep or not rest.strip() or kind not in known:
        raise InputError(f"dataset spec {spec!r} must be KIND:PATH with KIND one of {known}")
    if kind == "popqa":
        tsv, _, paragraphs = rest.rpartition(",") if "," in rest else (rest, "", "")
        return load_popqa(tsv.strip(), paragraphs.strip() or None)
    return LOADERS[kind](rest.strip())


def _split_key(seed: int, example: Example) -> str:
    return hashlib.sha256(f"{seed}:{example.dataset}:{example.id}".encode()).hexdigest()


def split(
    examples: Sequence[Example], held_out: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """``(kept, held_out)``: a seeded hash of each id picks the held-out part.

    The held-out part is ``round(len * held_out)`` examples; which ones depends only on the seed
    and each example's id, not on the list's order. Both parts keep the input order.
    """
    if not 0.0 <= held_out <= 1.0:
        raise ValueError(f"held_out must be in [0, 1], got {held_out!r}")
    ranked = sorted(range(len(examples)), key=lambda i: (_split_key(seed, examples[i]), i))
    chosen = set(ranked[: round(len(examples) * held_out)])
    kept = [e for i, e in enumerate(examples) if i not in chosen]
    return kept, [e for i, e in enumerate(examples) if i in chosen]
