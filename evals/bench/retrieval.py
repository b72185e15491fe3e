"""Retrieval speed benchmark: bm25s against rank-bm25 at scale, and hybrid search latency.

Run from the repository root:

    python evals/bench/retrieval.py                      # 100k passages, 200 queries
    python evals/bench/retrieval.py --n 20000 --queries 50 --demo-limit 1000   # quick
    python evals/bench/retrieval.py --home data          # reuse an already ingested home

Part 1 synthesizes ``--n`` passages by recombining sentences of the demo Wikipedia summaries
(seeded), indexes them with both BM25 engines exactly as Armada does (same tokenizer, same
Lucene-idf BM25), and times top-10 queries. rank-bm25 scores every document in Python for each
query term, so it gets only ``--slow-queries`` queries (default 20); bm25s is timed on those same
queries (for the ratio) and on all ``--queries``. Agreement is the fraction of the shared queries
whose top-10 sets are identical.

Part 2 ingests the demo corpus into a temporary home (or uses ``--home``) and times
``Retriever.search`` in hybrid mode (BM25 + Chroma/MiniLM + reciprocal-rank fusion), after one
warm-up query that loads the embedding model.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

for _k, _v in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "OMP_WAIT_POLICY": "PASSIVE",
    "TOKENIZERS_PARALLELISM": "false",
    "ANONYMIZED_TELEMETRY": "False",
}.items():
    os.environ.setdefault(_k, _v)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core.config import Settings  # noqa: E402
from core.packaged import wiki_summaries  # noqa: E402
from core.retrieval import Retriever, ingest_demo  # noqa: E402
from core.retrieval.bm25 import Bm25sEngine, RankBM25Engine  # noqa: E402
from core.retrieval.text import tokenize  # noqa: E402

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def load_demo() -> list[dict[str, str]]:
    data = json.loads(wiki_summaries().read_text(encoding="utf-8"))
    return [data[k] for k in sorted(data) if isinstance(data[k], dict) and data[k].get("extract")]


def synth_passages(items: list[dict[str, str]], n: int, seed: int) -> list[str]:
    """``n`` passages of 3-6 sentences drawn at random (seeded) from the demo summaries."""
    sentences = [s for it in items for s in _SENTENCE_END.split(it["extract"]) if len(s) > 20]
    rng = random.Random(seed)
    return [" ".join(rng.choices(sentences, k=rng.randint(3, 6))) for _ in range(n)]


def make_queries(items: list[dict[str, str]], n: int, seed: int) -> list[str]:
    """Short keyword queries: article descriptions ("Painting by Georges Seurat") or titles."""
    rng = random.Random(seed + 1)
    out: list[str] = []
    for it in rng.sample(items, min(len(items), n * 3)):
        q = it.get("description") or it["title"]
        if len(tokenize(q)) >= 2:
            out.append(q)
        if len(out) == n:
            break
    return out


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def time_queries(engine, tokens: list[list[str]], k: int = 10) -> tuple[list[float], list[set]]:
    times, tops = [], []
    for q in tokens:
        t0 = time.perf_counter()
        top = engine.top(q, k)
        times.append((time.perf_counter() - t0) * 1000)
        tops.append({i for i, _ in top})
    return times, tops


def bench_bm25(args: argparse.Namespace, items: list[dict[str, str]]) -> list[tuple[str, ...]]:
    passages = synth_passages(items, args.n, args.seed)
    corpus = [tokenize(p) for p in passages]
    queries = make_queries(items, args.queries, args.seed)
    qtokens = [tokenize(q) for q in queries]
    shared = qtokens[: args.slow_queries]

    t0 = time.perf_counter()
    fast = Bm25sEngine.build(corpus)
    fast_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow = RankBM25Engine.build(corpus)
    slow_build = time.perf_counter() - t0

    fast.top(qtokens[0], 10)  # warm caches
    fast_all, _ = time_queries(fast, qtokens)
    fast_shared, fast_tops = time_queries(fast, shared)
    slow_shared, slow_tops = time_queries(slow, shared)
    agree = sum(a == b for a, b in zip(fast_tops, slow_tops, strict=True)) / len(shared)
    ratio = statistics.mean(slow_shared) / statistics.mean(fast_shared)
    n = f"{args.n:,}"
    return [
        ("bm25s", n, f"{len(qtokens)}", f"{fast_build:.1f}", _ms(statistics.median(fast_all)),
         _ms(pct(fast_all, 99)), _ms(statistics.mean(fast_all))),
        ("bm25s (shared queries)", n, f"{len(shared)}", "", _ms(statistics.median(fast_shared)),
         _ms(pct(fast_shared, 99)), _ms(statistics.mean(fast_shared))),
        ("rank-bm25 (shared queries)", n, f"{len(shared)}", f"{slow_build:.1f}",
         _ms(statistics.median(slow_shared)), _ms(pct(slow_shared, 99)),
         _ms(statistics.mean(slow_shared))),
        ("__summary__", f"{ratio:.0f}", f"{agree:.0%}", f"{len(shared)}"),
    ]  # fmt: skip


def bench_hybrid(args: argparse.Namespace, items: list[dict[str, str]]) -> list[tuple[str, ...]]:
    tmp = None
    if args.home:
        home = Path(args.home)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="armada-bench-")
        home = Path(tmp.name)
    settings = Settings(home=home)
    t0 = time.perf_counter()
    report = ingest_demo(settings, limit=args.demo_limit, progress=_progress)
    ingest_s = time.perf_counter() - t0
    print(f"\ndemo ingest into {home}: {report.summary()} in {ingest_s:.0f}s", file=sys.stderr)
    retriever = Retriever(settings)
    queries = make_queries(items, args.queries, args.seed + 7)
    retriever.search(queries[0], mode="hybrid")  # loads the embedding model
    rows = []
    for mode in ("hybrid", "bm25", "dense"):
        times = []
        for q in queries:
            t0 = time.perf_counter()
            retriever.search(q, mode=mode)
            times.append((time.perf_counter() - t0) * 1000)
        rows.append((mode, f"{retriever.count():,}", f"{len(queries)}", _ms(pct(times, 50)),
                     _ms(pct(times, 99)), _ms(statistics.mean(times))))  # fmt: skip
    if tmp is not None:
        tmp.cleanup()
    return rows


def _progress(done: int, total: int) -> None:
    if total and (done == total or done % 1024 == 0):
        print(f"\r  embedding {done}/{total}", end="", file=sys.stderr, flush=True)


def _ms(x: float) -> str:
    return f"{x:.2f}"


def _table(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                              for i, (c, w) in enumerate(zip(r, widths, strict=True)))  # fmt: skip
    return "\n".join([title, fmt(header), line, *(fmt(r) for r in rows)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="synthetic passages for BM25")
    ap.add_argument("--queries", type=int, default=200, help="queries for bm25s and hybrid")
    ap.add_argument("--slow-queries", type=int, default=20, help="queries for rank-bm25")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--home", help="an ARMADA_HOME to (re)use for the hybrid part")
    ap.add_argument("--demo-limit", type=int, default=None, help="demo articles to ingest")
    ap.add_argument("--skip-hybrid", action="store_true")
    args = ap.parse_args(argv)
    args.slow_queries = min(args.slow_queries, args.queries)

    items = load_demo()
    print(f"BM25: {args.n:,} synthetic passages from {len(items):,} demo summaries "
          f"(seed {args.seed}); rank-bm25 timed on {args.slow_queries} queries only (it is slow)",
          file=sys.stderr)  # fmt: skip
    bm25_rows = bench_bm25(args, items)
    summary = bm25_rows.pop()
    header = ("engine", "passages", "queries", "build s", "p50 ms", "p99 ms", "mean ms")
    print()
    print(_table("BM25 top-10 query latency (same tokenizer, Lucene-idf BM25, k1=1.5 b=0.75)",
                 header, bm25_rows))  # fmt: skip
    target = "meets" if float(summary[1]) >= 50 else "misses"
    print(f"\nbm25s is {summary[1]}x faster than rank-bm25 (mean latency, same {summary[3]} "
          f"queries; target >= 50x: {target})")  # fmt: skip
    print(f"top-10 agreement: {summary[2]} of {summary[3]} queries have identical top-10 sets")

    if not args.skip_hybrid:
        rows = bench_hybrid(args, items)
        header = ("mode", "passages", "queries", "p50 ms", "p99 ms", "mean ms")
        print()
        print(_table("Retriever.search latency on the demo corpus (k=top_k, candidate_k=30)",
                     header, rows))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
