"""Simulated users: ask an arm benchmark questions and vote from the gold answers.

    python -m evals.simulate_traffic --arm raft --dataset popqa:TSV,PARAGRAPHS --n 80 \
        [--skip-held-out 0.2] [--exclude TRAINING.jsonl] [--voters 8] [--seed 0]

Each question goes through ``Armada.ask`` (the app's own graph, so interactions and route decisions
are recorded as for a person) and gets a thumbs-up when the answer is right by the dataset's
headline metric (PopQA: a gold answer appears; HotpotQA: F1 ≥ 0.5; PubMedQA: the label matches),
else a thumbs-down, from one of ``--voters`` simulated voters. ``--skip-held-out`` leaves out the
questions ``armada eval --seed S`` evaluates on (the same seeded held-out split as
``armada raft build --held-out``); ``--exclude`` leaves out questions a training file already has.
It feeds ``armada retrain`` with realistic votes for a measured run of the nightly loop.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any


def is_correct(dataset: str, answer: str, golds: tuple[str, ...]) -> bool:
    from core.metrics import contains_any, f1_score, yes_no_maybe

    if dataset == "popqa":
        return contains_any(answer, golds) > 0
    if dataset == "pubmedqa":
        return yes_no_maybe(answer) == golds[0]
    return f1_score(answer, golds) >= 0.5


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arm", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--n", type=int, default=80)
    ap.add_argument("--skip-held-out", type=float, default=0.2)
    ap.add_argument("--exclude", type=Path, action="append", default=[])
    ap.add_argument("--voters", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    from app.runtime import Armada
    from core.datasets import load_dataset, split

    examples = [e for e in load_dataset(args.dataset) if e.answers]
    held = set()
    if args.skip_held_out:
        held = {
            e.id for e in split([e for e in examples if e.gold], args.skip_held_out, args.seed)[1]
        }
    trained = set()
    for path in args.exclude:
        for line in path.read_text("utf-8").splitlines():
            if line.strip():
                trained.add(" ".join(json.loads(line).get("question", "").lower().split()))
    pool = [
        e
        for e in examples
        if e.id not in held and " ".join(e.question.lower().split()) not in trained
    ]
    chosen = random.Random(args.seed).sample(pool, min(args.n, len(pool)))
    rt = Armada()
    up = 0
    rows = []
    for i, ex in enumerate(chosen):
        res = rt.ask(ex.question, arm=args.arm, tags={"dataset": ex.dataset})
        good = res.status == "ok" and is_correct(ex.dataset, res.answer, ex.answers)
        up += good
        rt.feedback(
            res.interaction_id,
            1.0 if good else 0.0,
            feedback_id=f"sim-{args.seed}-{ex.dataset}-{ex.id}",
            voter=f"sim-voter-{i % args.voters}",
        )
        rows.append({"id": ex.id, "answer": res.answer, "gold": list(ex.answers), "up": good})
        print(
            f"{i + 1}/{len(chosen)} {'👍' if good else '👎'} {ex.question[:60]!r} → {res.answer[:40]!r}"
        )
    summary = {"asked": len(chosen), "thumbs_up": up, "arm": args.arm, "dataset": args.dataset}
    print(json.dumps(summary))
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))
    rt.close()
    return summary


if __name__ == "__main__":
    main()
