"""Measure the expert routers of the ``multi_lora_raft`` arm: which expert gets each question?

    python -m evals.experts_eval \
        --hotpotqa ../shared/datasets/hotpotqa/dev_distractor.json \
        --hotpotqa ../shared/datasets/hotpotqa/train_sample.json \
        --popqa ../shared/datasets/popqa/popqa.tsv,../shared/datasets/popqa/paragraphs.jsonl \
        --pubmedqa ../shared/datasets/pubmedqa/ori_pqal_trainval.json \
        --max-per-dataset 400 --held-out 0.2 --seed 0 --out artifacts/experts_eval.json

Dataset values are paths or ``core.datasets.load_dataset`` specs (``hotpotqa:PATH``); a flag may be
repeated to pool files (questions are deduplicated). Each dataset is capped (a seeded sample) and
split with ``core.datasets.split``; every question is embedded once with the configured embedding
model (MiniLM). Three routers are fitted on the train questions only and scored by top-1 accuracy
on the held-back ones (the expert of a question is its dataset):

- ``prototype cosine (question means)``: :meth:`PrototypeRouter.from_embeddings` of the train
  questions, LoraRetriever-style cosine to each dataset's mean embedding;
- ``prototype mahalanobis (question means)``: the same means under the pooled within-dataset
  covariance (``metric="mahalanobis"``, ``--shrinkage``);
- ``prototype cosine (descriptions)``: :meth:`PrototypeRouter.from_descriptions` of one line per
  dataset (no training questions at all);
- ``gate``: :func:`train_gate` on the train questions.

Printed and written to ``--out``: overall and per-dataset accuracy, macro accuracy, the confusion
matrix (rows: true dataset, columns: chosen expert) and a few misrouted questions per router.
``--save-dir`` also writes the fitted routers: ``prototypes.json`` (mahalanobis),
``prototypes-cosine.json`` and ``gate/``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.datasets import Example, load_dataset, split  # noqa: E402
from routers.experts import PrototypeRouter, train_gate  # noqa: E402

EXPERTS = ("hotpotqa", "popqa", "pubmedqa")

DESCRIPTIONS = {
    "hotpotqa": (
        "A multi-hop trivia question about Wikipedia entities that combines two facts, such as "
        "comparing two people, films, bands or places, or asking about the person linked to another."
    ),
    "popqa": (
        "A short factual question about one entity's attribute: What is X's occupation? "
        "In what city was X born? Who was the director, producer or author of X? What genre is X?"
    ),
    "pubmedqa": (
        "A biomedical research yes/no question about whether a treatment, disease, gene or "
        "clinical factor affects patients' outcomes or risk."
    ),
}
"""One line per dataset, for the description-only prototype variant."""


def load_questions(name: str, specs: list[str], cap: int | None, seed: int) -> list[Example]:
    """The deduplicated questions of ``specs``; at most ``cap``, a seeded sample in file order."""
    seen: set[str] = set()
    out = []
    for spec in specs:
        full = spec if spec.lower().startswith(f"{name}:") else f"{name}:{spec}"
        for ex in load_dataset(full):
            key = " ".join(ex.question.lower().split())
            if key and key not in seen:
                seen.add(key)
                out.append(ex)
    if cap is not None and len(out) > cap:
        keep = set(random.Random(f"{seed}:{name}").sample(range(len(out)), cap))
        out = [ex for i, ex in enumerate(out) if i in keep]
    return out


def score(
    name: str, probs: np.ndarray, truth: np.ndarray, questions: list[str], experts: list[str]
) -> dict[str, Any]:
    """Top-1 accuracy (overall, per dataset, macro), confusion matrix and misrouted examples."""
    pred = probs.argmax(axis=1)
    k = len(experts)
    confusion = np.zeros((k, k), dtype=int)
    np.add.at(confusion, (truth, pred), 1)
    per = {e: float(confusion[i, i] / max(confusion[i].sum(), 1)) for i, e in enumerate(experts)}
    wrong = [
        {
            "question": questions[i],
            "dataset": experts[truth[i]],
            "chosen": experts[pred[i]],
            "p": round(float(probs[i, pred[i]]), 3),
        }
        for i in np.flatnonzero(pred != truth)
    ]
    return {
        "router": name,
        "accuracy": float((pred == truth).mean()),
        "macro_accuracy": float(np.mean(list(per.values()))),
        "per_dataset": per,
        "confusion": {
            e: dict(zip(experts, map(int, confusion[i]), strict=True))
            for i, e in enumerate(experts)
        },
        "n": int(len(truth)),
        "misrouted": wrong[:8],
        "n_misrouted": len(wrong),
    }


def print_result(r: dict[str, Any], experts: list[str]) -> None:
    print(
        f"\n== {r['router']}: top-1 {r['accuracy']:.1%} (macro {r['macro_accuracy']:.1%}, n={r['n']})"
    )
    width = max(len(e) for e in experts) + 2
    print(" " * width + "".join(f"{e:>{width}}" for e in experts) + f"{'acc':>8}")
    for e in experts:
        row = "".join(f"{r['confusion'][e][c]:>{width}}" for c in experts)
        print(f"{e:<{width}}{row}{r['per_dataset'][e]:>8.1%}")
    for w in r["misrouted"][:4]:
        print(f"  ✗ [{w['dataset']} → {w['chosen']} p={w['p']}] {w['question'][:100]}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in EXPERTS:
        ap.add_argument(f"--{name}", action="append", required=True, metavar="PATH|SPEC")
    ap.add_argument("--held-out", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-per-dataset", type=int, default=None)
    ap.add_argument("--shrinkage", type=float, default=0.2, help="mahalanobis prototypes")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--save-dir", type=Path, default=None, help="write prototypes.json and gate/")
    args = ap.parse_args(argv)

    from core.config import load_settings
    from core.retrieval import embed_texts

    settings = load_settings()

    def embed(texts: list[str]) -> np.ndarray:
        return np.asarray(embed_texts(settings, list(texts)), dtype=np.float32)

    experts = list(EXPERTS)
    train: list[Example] = []
    test: list[Example] = []
    sizes = {}
    for name in experts:
        examples = load_questions(name, getattr(args, name), args.max_per_dataset, args.seed)
        kept, held = split(examples, args.held_out, args.seed)
        train += kept
        test += held
        sizes[name] = {"loaded": len(examples), "train": len(kept), "held_out": len(held)}
        print(f"{name}: {len(examples)} questions, {len(kept)} train / {len(held)} held out")

    t0 = time.perf_counter()
    x_train = embed([e.question for e in train])
    x_test = embed([e.question for e in test])
    embed_s = time.perf_counter() - t0
    print(f"embedded {len(train) + len(test)} questions in {embed_s:.1f} s")
    y_train = [e.dataset for e in train]
    truth = np.array([experts.index(e.dataset) for e in test])
    questions = [e.question for e in test]

    by_expert = {n: x_train[[y == n for y in y_train]] for n in experts}
    means = PrototypeRouter.from_embeddings(by_expert)
    whitened = PrototypeRouter.from_embeddings(
        by_expert, metric="mahalanobis", shrinkage=args.shrinkage
    )
    described = PrototypeRouter.from_descriptions(embed, DESCRIPTIONS)
    t0 = time.perf_counter()
    gate = train_gate(x_train, y_train, experts, epochs=args.epochs, seed=args.seed)
    gate_s = time.perf_counter() - t0

    routers = {
        "prototype cosine (question means)": means,
        "prototype mahalanobis (question means)": whitened,
        "prototype cosine (descriptions)": described,
        "gate": gate,
    }
    results = [
        score(name, r.predict_proba(x_test), truth, questions, experts)
        for name, r in routers.items()
    ]
    results[-1]["train"] = gate.metrics | {"seconds": round(gate_s, 2)}
    for r in results:
        print_result(r, experts)

    report = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "embedding_model": settings.retrieval.embedding_model or "packaged:all-MiniLM-L6-v2",
        "datasets": sizes,
        "embed_seconds": round(embed_s, 2),
        "descriptions": DESCRIPTIONS,
        "results": results,
    }
    if args.save_dir:
        args.save_dir.mkdir(parents=True, exist_ok=True)
        whitened.save(args.save_dir / "prototypes.json")
        means.save(args.save_dir / "prototypes-cosine.json")
        gate.save(args.save_dir / "gate")
        print(f"saved prototypes.json, prototypes-cosine.json and gate/ to {args.save_dir}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False))
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
