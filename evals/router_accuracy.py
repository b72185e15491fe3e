"""Top-1 accuracy of a multi_lora_raft arm's expert routers on the questions an evaluation uses.

    python -m evals.router_accuracy --routers DIR \
        --dataset hotpotqa:PATH --dataset popqa:TSV,PARAGRAPHS --dataset pubmedqa:PATH \
        [--n 100] [--seed 0] [--experts hotpotqa=raft_hotpotqa,popqa=raft_popqa,pubmedqa=raft_pubmedqa]

It routes the questions ``armada eval --n N --seed S`` picks (the held-out ones when the training
data was built with ``armada raft build --held-out``) with: the cosine prototypes stored in each
expert adapter's ``meta.json`` (the arm's default), ``DIR/prototypes.json`` and ``DIR/gate`` (from
``armada raft router``), and prints accuracy against the dataset labels with confusion matrices.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from evals.experts_eval import print_result, score


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", action="append", required=True)
    ap.add_argument("--routers", type=Path, default=None)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--experts", default="hotpotqa=raft_hotpotqa,popqa=raft_popqa,pubmedqa=raft_pubmedqa"
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    from core.adapters import registry
    from core.adapters.format import read_meta
    from core.config import load_settings
    from core.datasets import load_dataset
    from core.retrieval import embed_texts
    from core.store import Store
    from evals.harness import select_examples
    from routers.experts import Gate, PrototypeRouter

    settings = load_settings()
    experts = dict(item.split("=", 1) for item in args.experts.split(","))
    names = list(experts)
    examples = []
    for spec in args.dataset:
        examples += select_examples(load_dataset(spec), args.n, args.seed, True)
    questions = [e.question for e in examples]
    truth = np.array([names.index(e.dataset) for e in examples])
    x = np.asarray(embed_texts(settings, questions), dtype=np.float32)

    routers: dict[str, Any] = {}
    store = Store(settings.db_url)
    try:
        metas = {e: read_meta(Path(registry.resolve(store, a).path)) for e, a in experts.items()}
        if all(m.get("prototype") for m in metas.values()):
            routers["prototype (cosine, adapter meta)"] = PrototypeRouter(
                {e: np.asarray(m["prototype"], dtype=np.float32) for e, m in metas.items()}
            )
    except Exception as e:  # no registered experts here: only the saved routers
        print(f"(no expert adapters registered: {e})")
    if args.routers:
        if (args.routers / "prototypes.json").is_file():
            routers["prototype (saved)"] = PrototypeRouter.load(args.routers / "prototypes.json")
        if (args.routers / "gate").is_dir():
            routers["gate"] = Gate.load(args.routers / "gate", experts=names)
    results = {}
    for label, router in routers.items():
        probs = np.asarray(router.predict_proba(x))
        if list(getattr(router, "experts", names)) != names:
            order = [list(router.experts).index(n) for n in names]
            probs = probs[:, order]
        results[label] = score(label, probs, truth, questions, names)
        print_result(results[label], names)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
