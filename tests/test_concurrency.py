"""Many processes voting into one SQLite database, and writers killed with SIGKILL mid-stream.

Each writer is a fresh ``spawn`` process with its own ``Store`` (WAL, ``BEGIN IMMEDIATE``, busy
timeout). Right after each ``add_feedback`` returns, the writer appends the vote to its own ack
file with one ``write(2)``: a write that returned is in the kernel and survives the process being
killed, so every line is a vote the store acknowledged. The checks: no errors, no acknowledged
vote lost, the kept arm statistics equal their recompute, sequence numbers unique and gapless,
``PRAGMA integrity_check`` ok, and the policy rebuilt from the stored votes equals the one
updated vote by vote in acknowledged order.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

from sqlmodel import select

from core.store import Feedback, Interaction, RouteDecision, Store

SPAWN = multiprocessing.get_context("spawn")
ARMS = ("rag", "closed_book", "refrag")
CATEGORIES = ("multi_hop", "long_tail", "general", None)  # None: no route decision recorded
SCORES = (0.0, 0.25, 0.5, 0.75, 1.0)  # dyadic, so sums in any order are exact
VOTERS = 6  # named voters replace their own earlier vote on an interaction


def write_votes(
    url: str, prefix: str, n: int, iids: list[str], ack: str, seed: int, voters: bool
) -> None:
    """A writer process: ``n`` votes, each acknowledged in ``ack`` once ``add_feedback`` returned."""
    store = Store(url, migrate=False)
    rng = random.Random(seed)
    fd = os.open(ack, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    for k in range(n):
        fid, iid, score = f"{prefix}-{k}", rng.choice(iids), rng.choice(SCORES)
        voter = f"v{rng.randrange(VOTERS)}" if voters and rng.random() < 0.3 else ""
        try:
            res = store.add_feedback(fid, iid, score, voter=voter)
            replaced = res.replaced.id if res.replaced else None
            line = {"id": fid, "iid": iid, "score": score, "seq": res.seq, "replaced": replaced}
        except Exception as e:  # counted by the parent: there must be none
            line = {"id": fid, "error": f"{type(e).__name__}: {e}"}
        os.write(fd, (json.dumps(line) + "\n").encode())
    os.close(fd)


def _setup(tmp_path: Path, n: int = 60) -> tuple[str, dict[str, tuple[str, dict[str, Any]]]]:
    """A database with ``n`` answered interactions: id → (arm, route context)."""
    url = f"sqlite:///{tmp_path / 'armada.db'}"
    store = Store(url)
    made = {}
    for i in range(n):
        arm, cat = ARMS[i % len(ARMS)], CATEGORIES[i % len(CATEGORIES)]
        inter = Interaction(question=f"q{i}", arm=arm, answer=f"a{i}")
        ctx = {"category": cat} if cat else {}
        decision = RouteDecision(policy="uniform", arm=arm, propensity=1 / 3, context=ctx)
        made[store.record_interaction(inter, decision if cat else None)] = (arm, ctx)
    store.close()
    return url, made


def _acks(paths: list[Path]) -> list[dict[str, Any]]:
    lines = [ln for p in paths if p.exists() for ln in p.read_text().splitlines()]
    return [json.loads(ln) for ln in lines]


def _stored_ids(store: Store) -> set[str]:
    with store.session() as s:
        return set(s.exec(select(Feedback.id)))


def _check_store(store: Store) -> None:
    assert store.integrity_check() == "ok"
    assert store.arm_stats() == store.recompute_arm_stats()


def test_eight_writers_lose_nothing_and_the_fold_matches(tmp_path: Path) -> None:
    from routers import build_policy

    url, made = _setup(tmp_path)
    iids, n, writers = list(made), 500, 8
    paths = [tmp_path / f"ack{w}.jsonl" for w in range(writers)]
    procs = [
        SPAWN.Process(target=write_votes, args=(url, f"w{w}", n, iids, str(paths[w]), w, True))
        for w in range(writers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    acks = _acks(paths)
    assert [a for a in acks if "error" in a] == []
    assert len(acks) == writers * n

    store = Store(url, migrate=False)
    replaced = {a["replaced"] for a in acks if a["replaced"]}
    current = {a["id"] for a in acks} - replaced
    assert _stored_ids(store) == current  # nothing lost, nothing replaced left behind
    seqs = sorted(a["seq"] for a in acks)
    assert seqs == list(range(1, len(acks) + 1)) and store.feedback_seq() == len(acks)
    _check_store(store)
    assert sum(v[0] for v in store.arm_stats().values()) == len(current)

    # The policy is the fold of the stored votes in seq order: rebuilding it from the database
    # equals updating it vote by vote in the order the writers were acknowledged.
    events = store.feedback_events()
    assert [e.seq for e in events] == sorted(a["seq"] for a in acks if a["id"] in current)
    rebuilt = build_policy("thompson", ARMS, seed=0).rebuild(
        (e.arm, e.context, e.reward) for e in events
    )
    incremental = build_policy("thompson", ARMS, seed=0)
    for a in sorted(acks, key=lambda a: a["seq"]):
        if a["id"] in current:
            arm, ctx = made[a["iid"]]
            incremental.update(arm, ctx, a["score"])
    assert rebuilt.state_dict() == incremental.state_dict()
    store.close()


def test_votes_acknowledged_before_a_sigkill_survive_it(tmp_path: Path) -> None:
    url, made = _setup(tmp_path, n=30)
    rng = random.Random(7)
    paths: list[Path] = []
    for round_ in range(10):
        batch = [tmp_path / f"r{round_}w{w}.jsonl" for w in range(2)]
        paths += batch
        procs = [
            SPAWN.Process(
                target=write_votes,
                args=(url, f"r{round_}w{w}", 10**6, list(made), str(path), round_ * 2 + w, False),
            )
            for w, path in enumerate(batch)
        ]
        for p in procs:
            p.start()
        deadline = time.monotonic() + 30
        while not all(p.exists() and p.stat().st_size for p in batch):  # both are voting
            assert time.monotonic() < deadline, "the writers did not start"
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.15))
        for p in procs:
            os.kill(p.pid, signal.SIGKILL)
        for p in procs:
            p.join(10)
            assert p.exitcode == -signal.SIGKILL  # killed mid-stream, not finished

        acks = _acks(paths)
        assert [a for a in acks if "error" in a] == []
        store = Store(url, migrate=False)
        stored = _stored_ids(store)
        acked = {a["id"] for a in acks}
        assert acked <= stored, f"round {round_}: acknowledged votes lost"
        # At most one vote per killed writer committed without its acknowledgement being written.
        assert len(stored - acked) <= 2 * (round_ + 1)
        _check_store(store)
        store.close()
