"""Bandit benchmark: regret against MABWiser, select latency, contextual routing, OPE coverage.

    .venv/bin/python evals/bench/bandit.py [--seeds 20] [--rounds 10000] [--workers 2]

1. Regret: 4 Bernoulli arms (means .50/.55/.60/.65 and .3/.5/.7/.8), pseudo-regret Σ(μ* − μ_pulled)
   averaged over seeds, ours vs MABWiser (``pip install mabwiser``) on the same pre-drawn
   rounds×arms reward table per seed. MABWiser's UCB1 and ε-greedy score untried arms 0 and would
   lock onto the first arm, so every MABWiser policy is ``fit`` on one pull per arm first (rows
   0..K−1 of the table, counted in its regret); ours start from nothing.
2. Latency: p50/p99 of one ``select`` (time.perf_counter_ns), alternating with ``update`` so each
   decision sees a fresh state; ``update`` refreshes the cached P(arm) of its key, so its cost is
   shown too, and so is a select whose cache was just invalidated (Thompson's quadrature inline).
3. Contextual: 3 categories × 4 arms, best arm differs per category; share of each category's
   traffic sent to its best arm in rounds 1000–2000 and overall (2000 rounds).
4. OPE: uniform logging over the contextual problem; coverage of the true value of a frozen
   Thompson policy by the IPS / SNIPS / DR 95% bootstrap intervals.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # runnable as a plain script

from routers import build_policy  # noqa: E402
from routers.ope import estimated_regret, evaluate  # noqa: E402

PROBLEMS = {
    "close .50/.55/.60/.65": (0.50, 0.55, 0.60, 0.65),
    "spread .3/.5/.7/.8": (0.3, 0.5, 0.7, 0.8),
}
ARMS = ["a0", "a1", "a2", "a3"]
# ours: (policy name, options, MABWiser counterpart or None)
POLICIES = {
    "thompson": ("thompson", {}, "ThompsonSampling"),
    "ucb1": ("ucb1", {"alpha": 1.0}, "UCB1"),
    "egreedy ε=0.1": ("egreedy", {"epsilon": 0.1}, "EpsilonGreedy"),
    "egreedy ε=min(1,50/t)": ("egreedy", {"decay": 50.0}, None),
}
CONTEXT_MEANS = np.array(
    [[0.75, 0.55, 0.45, 0.35], [0.35, 0.75, 0.55, 0.45], [0.45, 0.35, 0.55, 0.75]]
)
EMBED_DIM = 384


def _ours(
    name: str, opts: dict, mu: np.ndarray, table: np.ndarray, seed: int
) -> tuple[float, float]:
    """Pseudo-regret, and the regret ``estimated_regret`` infers from the policy's final means."""
    policy = build_policy(name, ARMS, seed=seed, **opts)
    pulls = np.zeros(len(mu))
    pulled = []
    for row in table:
        arm, _ = policy.select({})
        k = policy.index(arm)
        pulls[k] += 1
        pulled.append(({}, arm))
        policy.update(arm, {}, float(row[k]))
    return float(pulls @ (mu.max() - mu)), estimated_regret(policy, pulled)


def _mabwiser(kind: str, mu: np.ndarray, table: np.ndarray, seed: int) -> float:
    from mabwiser.mab import MAB, LearningPolicy

    lp = {
        "ThompsonSampling": LearningPolicy.ThompsonSampling(),
        "UCB1": LearningPolicy.UCB1(alpha=1.0),
        "EpsilonGreedy": LearningPolicy.EpsilonGreedy(epsilon=0.1),
    }[kind]
    k = len(mu)
    mab = MAB(list(range(k)), lp, seed=seed)
    mab.fit(list(range(k)), [float(table[i, i]) for i in range(k)])
    pulls = np.ones(k)
    for row in table[k:]:
        a = int(mab.predict())
        pulls[a] += 1
        mab.partial_fit([a], [float(row[a])])
    return float(pulls @ (mu.max() - mu))


def _regret_task(args: tuple[str, int, int, bool]) -> dict[str, tuple[float, float, float | None]]:
    problem, seed, rounds, with_mab = args
    mu = np.array(PROBLEMS[problem])
    table = (np.random.default_rng(seed).random((rounds, len(mu))) < mu).astype(float)
    out = {}
    for label, (name, opts, mab_kind) in POLICIES.items():
        theirs = _mabwiser(mab_kind, mu, table, seed) if with_mab and mab_kind else None
        out[label] = (*_ours(name, opts, mu, table, seed), theirs)
    return out


def regret(seeds: int, rounds: int, workers: int) -> None:
    try:
        import mabwiser  # noqa: F401

        with_mab = True
    except ImportError:
        with_mab = False
        print("(mabwiser not installed: `pip install mabwiser` for the side-by-side columns)")
    tasks = [(p, s, rounds, with_mab) for p in PROBLEMS for s in range(seeds)]
    with ProcessPoolExecutor(workers) as pool:
        results = list(pool.map(_regret_task, tasks))
    print(f"\n## Pseudo-regret over {rounds} rounds, mean ± s.e. over {seeds} seeds")
    print("(est. = our estimated_regret from the policy's own final means; ratio = ours / MABWiser")
    print(" with a paired bootstrap over seeds for its 95% CI)")
    print(
        f"{'problem':22} {'policy':22} {'ours':>13} {'est.':>6} {'MABWiser':>13} {'ratio':>6}  95% CI"
    )
    rng = np.random.default_rng(0)
    for p in PROBLEMS:
        rows = [r for (q, *_), r in zip(tasks, results, strict=True) if q == p]
        for label in POLICIES:
            ours = np.array([r[label][0] for r in rows])
            est = np.mean([r[label][1] for r in rows])
            line = (
                f"{p:22} {label:22} {ours.mean():7.1f} ± {ours.std(ddof=1) / np.sqrt(seeds):4.1f}"
            )
            line += f" {est:6.1f}"
            if rows[0][label][2] is not None:
                theirs = np.array([r[label][2] for r in rows])
                boot = rng.integers(0, seeds, (10_000, seeds))  # paired over seeds
                ratios = ours[boot].mean(1) / theirs[boot].mean(1)
                lo, hi = np.percentile(ratios, [2.5, 97.5])
                line += f" {theirs.mean():7.1f} ± {theirs.std(ddof=1) / np.sqrt(seeds):4.1f}"
                line += f" {ours.mean() / theirs.mean():6.2f}  [{lo:.2f}, {hi:.2f}]"
            print(line)


def latency(calls: int = 20_000) -> None:
    print(f"\n## select() decision overhead, 4 arms, {calls} calls (µs)")
    print(f"{'policy':34} {'p50':>7} {'p99':>7}   update() p50 / p99")
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((64, EMBED_DIM))
    cases = [
        ("thompson (update between selects)", "thompson", True),
        ("thompson (cached, no update)", "thompson", False),
        ("thompson (cold cache: worst case)", "thompson", None),
        ("ucb1", "ucb1", True),
        ("egreedy", "egreedy", True),
        ("linucb (384-d embedding → 32)", "linucb", True),
    ]
    for label, name, updates in cases:
        policy = build_policy(name, ARMS, seed=0)
        gc.collect()  # start each case from a clean heap; collections during the run still count
        times = np.zeros((calls, 2), dtype=np.int64)
        for i in range(calls + 500):
            ctx = {"category": f"c{i % 3}", "embedding": emb[i % 64]}
            if updates is None:
                policy._invalidate()  # as after a rebuild or an arm change: quadrature in select
            t0 = time.perf_counter_ns()
            arm, _ = policy.select(ctx)
            t1 = time.perf_counter_ns()
            if updates is not False or i < 500:
                policy.update(arm, ctx, float(rng.random() < 0.5))
            if i >= 500:
                times[i - 500] = t1 - t0, time.perf_counter_ns() - t1
        (p50, u50), (p99, u99) = np.percentile(times, [50, 99], axis=0) / 1000
        upd = f"{u50:7.1f} / {u99:5.1f}" if updates is not False else ""
        print(f"{label:34} {p50:7.1f} {p99:7.1f}   {upd}")


def _contextual_run(policy_name: str, opts: dict, seed: int, rounds: int) -> np.ndarray:
    """Per round: (category, whether the best arm was picked)."""
    rng = np.random.default_rng(10_000 + seed)
    centroids = rng.standard_normal((3, EMBED_DIM))
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    cats = rng.integers(0, 3, rounds)
    noise = rng.standard_normal((rounds, EMBED_DIM)) / np.sqrt(EMBED_DIM)  # cos ≈ 0.7 to centroid
    embs = centroids[cats] + noise
    embs /= np.linalg.norm(embs, axis=1, keepdims=True)
    table = rng.random((rounds, 4)) < CONTEXT_MEANS[cats]
    policy = build_policy(policy_name, ARMS, seed=seed, **opts)
    out = np.zeros((rounds, 2), dtype=int)
    for t in range(rounds):
        ctx = {"category": f"cat{cats[t]}", "embedding": embs[t]}
        arm, _ = policy.select(ctx)
        k = policy.index(arm)
        policy.update(arm, ctx, float(table[t, k]))
        out[t] = cats[t], k == CONTEXT_MEANS[cats[t]].argmax()
    return out


def contextual(seeds: int, rounds: int = 2000) -> None:
    print(f"\n## Contextual: 3 categories × 4 arms, best-arm share per category, {seeds} seeds")
    print(f"   means: {CONTEXT_MEANS.tolist()}")
    print(f"{'policy':34} {'window':>10} {'cat0':>6} {'cat1':>6} {'cat2':>6} {'worst seed':>10}")
    half = rounds // 2
    for label, name, opts in [
        ("thompson (per category)", "thompson", {}),
        ("linucb", "linucb", {}),
        ("thompson (ignores category)", "thompson", {"per_category": False}),
    ]:
        runs = [_contextual_run(name, opts, s, rounds) for s in range(seeds)]
        for window, sl in [(f"{half}-{rounds}", slice(half, None)), (f"0-{rounds}", slice(None))]:
            share = np.array([[r[sl][r[sl][:, 0] == c, 1].mean() for c in range(3)] for r in runs])
            cells = " ".join(f"{v:6.3f}" for v in share.mean(0))
            print(f"{label:34} {window:>10} {cells} {share.min():10.3f}")


def ope(seeds: int, n_log: int = 2000) -> None:
    print(f"\n## OPE: uniform logging ({n_log} decisions), frozen Thompson target, {seeds} seeds")
    covered = {"ips": 0, "snips": 0, "dr": 0}
    err = {k: [] for k in covered}
    width = {k: [] for k in covered}
    ess = []
    for s in range(seeds):
        rng = np.random.default_rng(20_000 + s)
        target = build_policy("thompson", ARMS, seed=s)
        for _ in range(300):  # an imperfect, stochastic target: trained on 300 uniform rounds
            c, k = rng.integers(3), rng.integers(4)
            target.update(
                ARMS[k], {"category": f"cat{c}"}, float(rng.random() < CONTEXT_MEANS[c, k])
            )
        probs = [target.action_probs({"category": f"cat{c}"}) for c in range(3)]
        truth = np.mean(
            [
                sum(p[a] * CONTEXT_MEANS[c, i] for i, a in enumerate(ARMS))
                for c, p in enumerate(probs)
            ]
        )
        cats, arms = rng.integers(0, 3, n_log), rng.integers(0, 4, n_log)
        rewards = (rng.random(n_log) < CONTEXT_MEANS[cats, arms]).astype(float)
        log = [
            ({"category": f"cat{c}"}, ARMS[a], 0.25, r)
            for c, a, r in zip(cats, arms, rewards, strict=True)
        ]
        for name, est in evaluate(log, target, seed=s).items():
            covered[name] += est.low <= truth <= est.high
            err[name].append(est.estimate - truth)
            width[name].append(est.high - est.low)
            ess.append(est.ess)
    print(f"{'estimator':10} {'coverage ± s.e.':>16} {'bias':>8} {'rmse':>7} {'CI width':>9}")
    for name in covered:
        e, cov = np.array(err[name]), covered[name] / seeds
        print(
            f"{name:10} {cov:9.3f} ± {np.sqrt(cov * (1 - cov) / seeds):.3f} {e.mean():8.4f}"
            f" {np.sqrt((e**2).mean()):7.4f} {np.mean(width[name]):9.4f}"
        )
    print(f"mean effective sample size: {np.mean(ess):.0f} of {n_log}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--ope-seeds", type=int, default=500, help="coverage s.e. ≈ 1%% at 500")
    args = ap.parse_args()
    t0 = time.perf_counter()
    latency()
    contextual(args.seeds)
    ope(max(args.ope_seeds, 20))
    regret(args.seeds, args.rounds, args.workers)
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
