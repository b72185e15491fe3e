"""Measure the REFRAG multi-hop arm against single-shot retrieval and the `rag` arm on HotpotQA.

    python evals/refrag_eval.py --corpus ../shared/datasets/corpus/passages.jsonl \
        --questions ../shared/datasets/hotpotqa/dev_distractor.json --n 40 --home /tmp/refrag/home

It ingests the corpus into ``--home`` (skipped when already there), then for ``--n`` seeded bridge
questions reports: recall of both gold paragraphs within 2 hops against single-shot retrieval of
the same total number of passages; EM/F1 of `refrag` and `rag`; the hop-count distribution and
latency per question. With ``--unanswerable`` it also builds a copy of the index without those
questions' gold paragraphs and reports each arm's abstention rate there. Results go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.refrag.support import is_abstention  # noqa: E402
from app.runtime import Armada  # noqa: E402
from core.config import Settings  # noqa: E402
from core.metrics import exact_match, f1_score  # noqa: E402
from core.retrieval import ingest_paths  # noqa: E402


def bridge_questions(path: Path, n: int, seed: int) -> list[dict]:
    data = [r for r in json.loads(path.read_text()) if r.get("type") == "bridge"]
    random.Random(seed).shuffle(data)
    return [
        {
            "id": r["_id"],
            "question": r["question"],
            "answer": r["answer"],
            "gold": sorted({t for t, _ in r["supporting_facts"]}),
        }
        for r in data[:n]
    ]


def run_arms(rt: Armada, questions: list[dict], single_shot: bool) -> list[dict]:
    rows = []
    for i, q in enumerate(questions, 1):
        t0 = time.perf_counter()
        ref = rt.ask(q["question"], arm="refrag")
        t_ref = time.perf_counter() - t0
        t0 = time.perf_counter()
        rag = rt.ask(q["question"], arm="rag")
        t_rag = time.perf_counter() - t0
        hops = ref.details.get("hops", [])
        by_hop = [{d["title"] for d in h["documents"]} for h in hops]
        two_hops = set().union(*by_hop[:2]) if by_hop else set()
        total = sum(len(h["documents"]) for h in hops)
        row = {
            "id": q["id"],
            "refrag": ref.answer,
            "rag": rag.answer,
            "hop_count": len(hops),
            "stop_reason": ref.details.get("stop_reason"),
            "refrag_s": t_ref,
            "rag_s": t_rag,
            "refrag_recall2": float(set(q["gold"]) <= two_hops),
            "passages": total,
        }
        if single_shot:
            k = max(1, sum(len(h["documents"]) for h in hops[:2]))
            titles = {h.passage.title for h in rt.retriever.search(q["question"], k=k)}
            row["single_recall"] = float(set(q["gold"]) <= titles)
            row["single_k"] = k
        for arm in ("refrag", "rag"):
            row[f"{arm}_em"] = exact_match(row[arm], [q["answer"]])
            row[f"{arm}_f1"] = f1_score(row[arm], [q["answer"]])
            row[f"{arm}_abstained"] = float(is_abstention(row[arm]))
        rows.append(row)
        print(
            f"[{i}/{len(questions)}] hops={len(hops)} recall2={row['refrag_recall2']:.0f} "
            f"single={row.get('single_recall', '-')} f1 refrag={row['refrag_f1']:.2f} "
            f"rag={row['rag_f1']:.2f}",
            flush=True,
        )
    return rows


def without_gold(corpus: Path, home: Path, questions: list[dict]) -> Path:
    """A copy of ``home`` whose corpus lacks the gold paragraphs of ``questions``.

    Re-ingesting a JSONL file drops its removed records and embeds nothing new, so the copy costs
    seconds; the file must sit at the path it was first ingested from, hence the swap.
    """
    gold = {t for q in questions for t in q["gold"]}
    out = home.parent / (home.name + "-nogold")
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(home, out)
    backup = corpus.with_suffix(".jsonl.bak")
    shutil.copy2(corpus, backup)
    try:
        lines = [
            ln for ln in backup.read_text().splitlines() if json.loads(ln)["title"] not in gold
        ]
        corpus.write_text("\n".join(lines) + "\n")
        ingest_paths(Settings(home=out), [corpus])
    finally:
        shutil.move(backup, corpus)
    return out


def summary(rows: list[dict], unanswerable: list[dict] | None) -> dict:
    def mean(key: str, rs: list[dict] = rows) -> float:
        return statistics.fmean(r[key] for r in rs) if rs else float("nan")

    def pct(xs: list[float], p: float) -> float:
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(p * len(xs)))]

    out = {
        "n": len(rows),
        "recall_both_gold_refrag_2hops": mean("refrag_recall2"),
        "recall_both_gold_single_shot_same_k": mean("single_recall"),
        "mean_single_k": mean("single_k"),
        "em": {"refrag": mean("refrag_em"), "rag": mean("rag_em")},
        "f1": {"refrag": mean("refrag_f1"), "rag": mean("rag_f1")},
        "hop_counts": dict(sorted(Counter(r["hop_count"] for r in rows).items())),
        "stop_reasons": dict(Counter(r["stop_reason"] for r in rows)),
        "latency_s": {
            arm: {
                "p50": pct([r[f"{arm}_s"] for r in rows], 0.5),
                "p95": pct([r[f"{arm}_s"] for r in rows], 0.95),
            }
            for arm in ("refrag", "rag")
        },
        "abstention_answerable": {"refrag": mean("refrag_abstained"), "rag": mean("rag_abstained")},
    }
    if unanswerable is not None:
        out["abstention_unanswerable"] = {
            "refrag": mean("refrag_abstained", unanswerable),
            "rag": mean("rag_abstained", unanswerable),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--questions", type=Path, required=True)
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--unanswerable", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("artifacts/refrag_eval.json"))
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    questions = bridge_questions(a.questions, a.n, a.seed)
    settings = Settings(home=a.home)
    if not (a.home / "corpus.db").exists():
        print("ingesting", a.corpus, flush=True)
        ingest_paths(settings, [a.corpus])
    rows = run_arms(Armada(settings), questions, single_shot=True)
    un_rows = None
    if a.unanswerable:
        nogold = without_gold(a.corpus, a.home, questions)
        print("unanswerable: gold paragraphs removed", flush=True)
        un_rows = run_arms(Armada(Settings(home=nogold)), questions, single_shot=False)
    result = {
        "settings": vars(a)
        | {
            "corpus": str(a.corpus),
            "questions": str(a.questions),
            "home": str(a.home),
            "out": str(a.out),
        },
        "summary": summary(rows, un_rows),
        "rows": rows,
        "unanswerable_rows": un_rows,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
