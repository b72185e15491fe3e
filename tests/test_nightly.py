"""Nightly retraining (``training/nightly.py``, ``training/feedback_data.py``): votes → data →
candidate → gate → promoted or rejected, on a tiny random-weight model; kill -9 at every stage;
poisoning, scrubbing, duplicates and conflicting votes."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core.adapters import format as fmt
from core.adapters import registry
from core.config import (
    REPO_ROOT,
    ArmConfig,
    ModelConfig,
    NightlyConfig,
    RetrievalConfig,
    RouterConfig,
    Settings,
)
from core.store import EvalRun, Interaction, Store
from core.types import Passage
from tests.conftest import SHARED_MODELS_DIR
from training import feedback_data as fd
from training.nightly import (
    NightlyBusyError,
    decide,
    history,
    run_lock,
    run_nightly,
    watermark,
)

CORPUS = [
    {
        "id": "eiffel",
        "title": "Eiffel Tower",
        "text": "The Eiffel Tower is named after Gustave Eiffel.",
    },
    {
        "id": "insulin",
        "title": "Insulin",
        "text": "Insulin is a hormone that lowers blood glucose.",
    },
    {
        "id": "smith",
        "title": "John Smith",
        "text": "John Smith is an English footballer from Leeds.",
    },
    {"id": "nile", "title": "Nile", "text": "The Nile flows north into the Mediterranean Sea."},
    {"id": "kiwi", "title": "Kiwi", "text": "The kiwi is a flightless bird native to New Zealand."},
]
EVAL = [
    {"id": "e1", "question": "Who is the Eiffel Tower named after?", "answers": ["Gustave Eiffel"],
     "gold": [{"title": "Eiffel Tower", "text": CORPUS[0]["text"]}]},
    {"id": "e2", "question": "What does insulin lower?", "answers": ["blood glucose"],
     "gold": [{"title": "Insulin", "text": CORPUS[1]["text"]}]},
    {"id": "e3", "question": "Where does the Nile flow?", "answers": ["the Mediterranean Sea"],
     "gold": [{"title": "Nile", "text": CORPUS[3]["text"]}]},
]  # fmt: skip
VOTED = [  # (question, answer, corpus id): what people asked the raft arm and liked
    ("Which city is John Smith from?", "Leeds", "smith"),
    ("Is the kiwi able to fly?", "No, it is flightless", "kiwi"),
    ("What kind of bird is a kiwi?", "a flightless bird", "kiwi"),
    ("Into which sea does the Nile run?", "the Mediterranean", "nile"),
    ("What is insulin?", "a hormone", "insulin"),
]


# -- the world: a corpus, a replay file, an evaluation set and a promoted champion --------------------
def _settings(home: Path, tiny: Path | str, **nightly) -> Settings:
    root = Path(home).parent
    opts = {
        "arm": "raft",
        "min_examples": 3,
        "max_per_voter": 3,
        "max_per_session": 2,
        "eval_datasets": [f"jsonl:{root / 'eval.jsonl'}"],
        "eval_n": 3,
        "n_boot": 200,
        "replay_data": root / "replay.jsonl",
        "replay_fraction": 0.3,
        "train": {"max_steps": 1, "threads": 1},
        "cheaper_by": None,
    } | nightly
    return Settings(
        home=home,
        models_dir=SHARED_MODELS_DIR,
        models={"default": ModelConfig(model=str(tiny), max_new_tokens=4)},
        retrieval=RetrievalConfig(mode="bm25", top_k=2),
        arms=[
            ArmConfig(name="rag", agent="rag", top_k=2),
            ArmConfig(name="raft", agent="raft", top_k=2),
        ],
        router=RouterConfig(policy="fixed", arm="raft", fallback_arm="rag", classify=False),
        nightly=NightlyConfig(**opts),
    )


def _replay_examples(n: int = 8) -> list:
    from core.datasets import Example

    return [
        Example(
            id=f"r{i}",
            question=f"What is the occupation of person {i}?",
            answers=(f"job{i}",),
            gold=(Passage(f"jsonl:{i}", f"Person {i} works as job{i}.", f"Person {i}"),),
            dataset="jsonl",
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir):
    """A home with a tiny corpus and a promoted champion ``raft`` v1 (module-wide, copied per test)."""
    from core.retrieval import ingest_paths
    from training.lora import TrainConfig, train
    from training.raft import RaftSettings, build_raft, write_raft

    root = tmp_path_factory.mktemp("nightly")
    home = root / "home"
    s = _settings(home, tiny_model_dir)
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CORPUS))
    (root / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in EVAL))
    ingest_paths(s, [root / "corpus.jsonl"])
    write_raft(build_raft(_replay_examples(), RaftSettings(k=1)), root / "replay.jsonl", None)
    store = Store(s.db_url)
    cfg = TrainConfig(base_model=str(tiny_model_dir), r=4, alpha=8, max_steps=1, threads=1)
    res = train(root / "replay.jsonl", "raft", s, cfg, store=store)
    registry.promote(store, "raft", res.version)
    store.close()
    return root


def _clone(world: Path, dest: Path) -> Path:
    """A copy of the world whose adapter rows point into the copy; returns the new home."""
    shutil.copytree(world, dest)
    db = sqlite3.connect(dest / "home" / "armada.db")
    db.execute("UPDATE adapter SET path = replace(path, ?, ?)", (str(world), str(dest)))
    db.commit()
    db.close()
    return dest / "home"


@pytest.fixture
def nhome(world, tmp_path):
    return _clone(world, tmp_path / "w")


def _ids(s: Settings) -> dict[str, str]:
    """Corpus passage id by document title."""
    from core.retrieval.catalogue import Catalogue

    _, rows = Catalogue(s.corpus_db_path).snapshot()
    return {title: pid for pid, title, _ in rows}


def _ask(store: Store, question: str, answer: str, passage_ids: list[str], **kw) -> str:
    row = Interaction(
        question=question,
        answer=answer,
        arm=kw.pop("arm", "raft"),
        passage_ids=passage_ids,
        thread_id=kw.pop("thread_id", None),
        status=kw.pop("status", "ok"),
    )
    return store.record_interaction(row, None)


def _vote(store: Store, iid: str, score: float, voter: str) -> None:
    store.add_feedback(f"{voter}-{iid}", iid, score, voter=voter)


def _seed_votes(s: Settings, store: Store) -> list[str]:
    titles = {c["id"]: c["title"] for c in CORPUS}
    pid = _ids(s)
    out = []
    for i, (q, a, doc) in enumerate(VOTED):
        iid = _ask(store, q, a, [pid[titles[doc]], pid["Eiffel Tower"]], thread_id=f"t{i}")
        _vote(store, iid, 1.0, f"user{i}")
        out.append(iid)
    return out


def _champion_state(s: Settings) -> tuple:
    store = Store(s.db_url)
    row = registry.get(store, "raft", 1)
    store.close()
    folder = Path(row.path)
    return row.status, row.sha256, row.path, (folder / fmt.MANIFEST_FILE).read_bytes()


def _serves(s: Settings) -> str:
    """The raft arm answers through the graph; returns the adapter version it serves."""
    from app.runtime import Armada

    rt = Armada(s)
    try:
        res = rt.ask("Who is the Eiffel Tower named after?", arm="raft")
        assert (res.status, res.arm, res.error) == ("ok", "raft", ""), res.error
        return rt.adapter_fingerprint("raft")["raft"].split(":")[0]
    finally:
        rt.close()


def _nightly_rows(store: Store) -> list[EvalRun]:
    return history(store, limit=100)


# -- scrubbing, duplicates, the gate (no model) ---------------------------------------------------------
def test_scrub_pii_replaces_emails_and_phones_but_not_years_dates_or_amounts():
    text = (
        "Mail jane.doe+qa@example.co.uk or bob@mail.example.com, call +44 20 7946 0958, "
        "(555) 123-4567, 555-123-4567 or 020 7946 0958."
    )
    out, counts = fd.scrub_pii(text)
    assert "@" not in out and "7946" not in out and "555" not in out
    assert counts == {"email": 2, "phone": 4}
    assert out.count("[email]") == 2 and out.count("[phone]") == 4
    keep = "Born in 1999, died 2024-01-15; sold 3,000,000 copies in 1990 2000; route 66."
    assert fd.scrub_pii(keep) == (keep, {})


def test_near_duplicates_by_word_bigram_jaccard():
    qs = [
        "Who wrote the novel War and Peace in the nineteenth century?",
        "who wrote the novel war and peace in the nineteenth century",  # same once normalised
        "Who wrote the novel War and Peace in the nineteenth century ?!",
        "Who painted the Mona Lisa in the sixteenth century?",
        "Who wrote the novel War and Peace in the twentieth century?",  # one word off: < 0.9
    ]
    dups = fd.near_duplicates([fd.shingles(q) for q in qs], 0.9)
    assert dups == [None, 0, 0, None, None]
    long = " ".join(f"w{i}" for i in range(40))
    assert fd.near_duplicates([fd.shingles(long), fd.shingles(long + " extra")], 0.9) == [None, 0]


def test_the_gate_promotes_better_or_equal_and_cheaper_and_rejects_the_rest():
    better = decide([1, 1, 1, 1, 0, 1] * 5, [0, 0, 1, 0, 0, 0] * 5, margin=0.05, n_boot=500)
    assert better.decision == "promoted" and better.rule == "better"
    assert better.low > 0.05 and "better" in better.reasons[-1]

    worse = decide([0, 0, 1, 0] * 5, [1, 1, 1, 1] * 5, n_boot=500)
    assert worse.decision == "rejected" and "worse" in worse.reasons[-1]

    same = [1, 0, 1, 0, 1, 1, 0, 0] * 3
    small, big = {"adapter_bytes": 600_000}, {"adapter_bytes": 1_000_000}
    cheap = decide(same, same, candidate_cost=small, champion_cost=big, cheaper_by=0.1)
    assert cheap.decision == "promoted" and cheap.rule == "equal_and_cheaper"
    assert "adapter" in cheap.reasons[-1]
    fast = decide(
        same,
        same,
        candidate_cost={"adapter_bytes": 10, "latency_p50_ms": 50.0},
        champion_cost={"adapter_bytes": 10, "latency_p50_ms": 100.0},
    )
    assert fast.decision == "promoted" and "latency" in fast.reasons[-1]
    dear = decide(same, same, candidate_cost=big, champion_cost=small, cheaper_by=0.1)
    assert dear.decision == "rejected" and "not cheaper" in dear.reasons[-1]
    off = decide(same, same, candidate_cost=small, champion_cost=big, cheaper_by=None)
    assert off.decision == "rejected" and "off" in off.reasons[-1]
    # Equal within the interval but a mean drop beyond the tolerance is not "equal".
    drop = decide([1, 0, 1, 0, 0, 1] * 2, [1, 0, 1, 1, 0, 1] * 2, candidate_cost=small,
                  champion_cost=big, equal_tolerance=0.01)  # fmt: skip
    assert drop.decision == "rejected" and "not equal" in drop.reasons[-1]
    # The margin steers the gate: −1 always promotes, +1 never (on 0–1 scores).
    assert decide(same, same, margin=-1.0).decision == "promoted"
    assert decide([1] * 10, [0] * 10, margin=1.0, cheaper_by=None).decision == "rejected"
    assert decide([], []).decision == "rejected"
    again = decide(same, [1 - x for x in same], n_boot=500, seed=3)
    assert again == decide(same, [1 - x for x in same], n_boot=500, seed=3)  # seeded


# -- gathering (a store, no model) --------------------------------------------------------------------------
PASSAGES = {
    "p1": Passage(
        "p1", "Leeds is a city. Contact press@leeds.example.org or 0113 496 0000.", "Leeds"
    ),
    "p2": Passage("p2", "The kiwi cannot fly.", "Kiwi"),
}


def _gather(store: Store, cfg: NightlyConfig, frm: int = 0, to: int | None = None, **kw):
    return fd.gather_feedback(
        store,
        lambda ids: {i: PASSAGES[i] for i in ids if i in PASSAGES},
        cfg,
        from_seq=frm,
        to_seq=store.feedback_seq() if to is None else to,
        top_k=2,
        **kw,
    )


def test_conflicting_votes_failed_answers_eval_questions_and_lost_contexts_are_dropped(settings):
    store = Store(settings.db_url)
    good = _ask(store, "Which city?", "Leeds", ["p1"])
    _vote(store, good, 1.0, "a")
    conflict = _ask(store, "Can a kiwi fly?", "No", ["p2"])
    _vote(store, conflict, 1.0, "a")
    _vote(store, conflict, 0.0, "b")
    only_down = _ask(store, "What is 2+2?", "5", ["p2"])
    _vote(store, only_down, 0.0, "a")
    failed = _ask(store, "Broken?", "", ["p2"], status="error")
    _vote(store, failed, 1.0, "a")
    in_eval = _ask(store, "Who is the Eiffel Tower named after?", "Gustave Eiffel", ["p1"])
    _vote(store, in_eval, 1.0, "a")
    lost = _ask(store, "Where did it go?", "gone", ["p404"])
    _vote(store, lost, 1.0, "a")
    other = _ask(store, "Rag answer?", "yes", ["p2"], arm="rag")
    _vote(store, other, 1.0, "c")

    eval_set = {fd.normalize_answer("who is the eiffel tower named after")}
    cfg = NightlyConfig(source_arms=["raft"], max_per_session=10)
    got = _gather(store, cfg, eval_set=eval_set)
    assert [e.interaction_id for e in got.examples] == [good]
    assert got.dropped == {
        "conflicting votes": 1,
        "no thumbs-up": 1,
        "failed answer": 1,
        "in the evaluation set": 1,
        "context gone": 1,
        "other arm": 1,
    }
    # A vote replaced by the same voter is no conflict: only current votes count.
    store.add_feedback("b-again", conflict, 1.0, voter="b")
    got = _gather(store, cfg, eval_set=eval_set)
    assert conflict in [e.interaction_id for e in got.examples]
    store.close()


def test_gathered_records_are_scrubbed_in_question_context_and_answer(settings):
    store = Store(settings.db_url)
    iid = _ask(store, "Mail me at ann@example.com: which city?", "Leeds, call 555-123-4567", ["p1"])
    _vote(store, iid, 1.0, "ann")
    got = _gather(store, NightlyConfig())
    (ex,) = got.examples
    assert ex.question == "Mail me at [email]: which city?"
    assert ex.answer == "Leeds, call [phone]"
    assert ex.passages[0].text == "Leeds is a city. Contact [email] or [phone]."
    assert got.stats["scrubbed"] == {"email": 2, "phone": 2}
    (rec,) = fd.to_records(got.examples)
    blob = json.dumps(rec)
    assert "@" not in blob and "555-123" not in blob and "0113" not in blob
    assert rec["messages"][-1] == {"role": "assistant", "content": "Leeds, call [phone]"}
    assert "[1] Leeds: Leeds is a city." in rec["messages"][1]["content"]
    store.close()


def test_exact_and_near_duplicates_are_removed_keeping_the_best_supported(settings):
    store = Store(settings.db_url)
    first = _ask(store, "Which city is John Smith from?", "Leeds", ["p1"], thread_id="s1")
    _vote(store, first, 1.0, "a")
    same = _ask(store, "which city is John Smith from", "leeds.", ["p1"], thread_id="s2")
    _vote(store, same, 1.0, "b")
    _vote(store, same, 1.0, "c")  # two thumbs-up: this copy is kept
    near = _ask(store, "Which city is John Smith from ??", "York", ["p1"], thread_id="s3")
    _vote(store, near, 1.0, "d")
    other = _ask(store, "Can the kiwi fly?", "No", ["p2"], thread_id="s4")
    _vote(store, other, 1.0, "e")
    got = _gather(store, NightlyConfig())
    assert sorted(e.interaction_id for e in got.examples) == sorted([same, other])
    assert got.dropped == {"duplicate": 1, "near-duplicate": 1}
    store.close()


def test_a_voter_flooding_1000_thumbs_up_on_wrong_answers_counts_only_up_to_its_cap(settings):
    store = Store(settings.db_url)
    legit = []
    for i in range(6):
        iid = _ask(store, f"Honest question number {i} about Leeds?", f"answer {i}", ["p1"])
        _vote(store, iid, 1.0, f"user{i}")
        legit.append(iid)
    with store.write() as s:  # 1,000 wrong answers, each in its own thread
        rows = [
            Interaction(question=f"Poison question {i} about kiwis?", answer=f"WRONG {i}",
                        arm="raft", passage_ids=["p2"], thread_id=f"flood{i}")
            for i in range(1000)
        ]  # fmt: skip
        s.add_all(rows)
    for row in rows:
        _vote(store, row.id, 1.0, "mallory")
    assert store.feedback_seq() == 1006
    cfg = NightlyConfig(max_per_voter=5, max_per_session=5)
    got = _gather(store, cfg)
    flood = [e for e in got.examples if e.voters == ("mallory",)]
    assert len(flood) == 5
    assert {e.interaction_id for e in got.examples} >= set(legit)  # honest voters unaffected
    assert len(got.examples) == 6 + 5 and got.dropped == {"voter cap": 995}
    assert got.stats["max_per_voter_taken"] == 5
    records = fd.to_records(got.examples)
    assert sum(r["messages"][-1]["content"].startswith("WRONG") for r in records) == 5
    # The flood cannot choose which of its votes count: another run's seed picks others.
    other = {e.interaction_id for e in _gather(store, cfg, salt="another run").examples}
    assert other != {e.interaction_id for e in got.examples}
    # A session cap holds the same way for one conversation thread.
    with store.write() as s:
        thread = [Interaction(question=f"Thread question {i}?", answer="x", arm="raft",
                              passage_ids=["p2"], thread_id="one") for i in range(20)]  # fmt: skip
        s.add_all(thread)
    for i, row in enumerate(thread):
        _vote(store, row.id, 1.0, f"v{i}")
    got = _gather(store, cfg, frm=1006)
    assert len(got.examples) == 5 and got.dropped == {"session cap": 15}
    store.close()


def test_the_watermark_range_bounds_what_is_gathered(settings):
    store = Store(settings.db_url)
    a = _ask(store, "First question?", "one", ["p1"])
    _vote(store, a, 1.0, "x")  # seq 1
    b = _ask(store, "Second question?", "two", ["p1"])
    _vote(store, b, 1.0, "y")  # seq 2
    _vote(store, a, 1.0, "z")  # seq 3: a new vote on an interaction already considered
    c = _ask(store, "Third question?", "three", ["p2"])
    _vote(store, c, 1.0, "w")  # seq 4: after the run's range
    got = _gather(store, NightlyConfig(), frm=1, to=3)
    assert [e.interaction_id for e in got.examples] == [b]
    assert got.dropped == {"already considered": 1}
    store.close()


class _Teacher:
    def __init__(self, replies: list) -> None:
        self.replies, self.prompts = list(replies), []

    def generate(self, messages, max_new_tokens=None):  # noqa: ANN001, ANN201
        from core.types import Generation

        self.prompts.append(messages)
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return Generation(text=reply)


def test_distillation_re_answers_from_the_same_context_and_keeps_the_vote_on_failure(settings):
    store = Store(settings.db_url)
    for i, q in enumerate(["Which city is it?", "Can a kiwi fly?", "Who wrote it?"]):
        _vote(store, _ask(store, q, f"voted {i}", ["p1", "p2"], thread_id=f"t{i}"), 1.0, f"u{i}")
    got = _gather(store, NightlyConfig())
    teacher = _Teacher(["<ANSWER>: Leeds, ring 555-123-4567", RuntimeError("down"), "  "])
    out, stats = fd.distill(got.examples, teacher, max_words=120)
    assert stats == {"teacher": 1, "kept_vote": 2}
    assert [e.answer for e in out] == ["Leeds, ring [phone]", "voted 1", "voted 2"]
    assert [e.answer_source for e in out] == ["teacher", "vote", "vote"]
    user = teacher.prompts[0][1]["content"]
    assert (
        user.startswith("Question: Which city is it?") and "[2] Kiwi: The kiwi cannot fly." in user
    )
    assert teacher.prompts[0][-1]["role"] == "user"  # the answer is not shown to the teacher
    store.close()


def test_replay_is_a_seeded_sample_without_evaluation_questions(tmp_path):
    from training.raft import RaftSettings, build_raft, write_raft

    path = tmp_path / "replay.jsonl"
    write_raft(build_raft(_replay_examples(20), RaftSettings(k=1)), path, None)
    banned = {fd.normalize_answer("What is the occupation of person 3?")}
    a, stats = fd.sample_replay(path, 8, seed=0, salt="run1", eval_set=banned)
    b, _ = fd.sample_replay(path, 8, seed=0, salt="run1", eval_set=banned)
    c, _ = fd.sample_replay(path, 8, seed=0, salt="run2", eval_set=banned)
    assert a == b and a != c and len(a) == 8 and all(r["source"] == "replay" for r in a)
    assert stats["excluded_eval"] == 1 and stats["available"] == 19
    assert all("person 3?" not in r["question"] for r in a + c)
    assert fd.replay_count(7, 0.3) == 3 and fd.replay_count(7, 0.0) == 0
    assert len(fd.sample_replay(path, 100, seed=0)[0]) == 20


# -- the whole loop on the tiny model -----------------------------------------------------------------------
def test_retrain_promotes_records_why_and_a_second_run_does_nothing_new(nhome, tiny_model_dir):
    s = _settings(nhome, tiny_model_dir, margin=-1.0)
    store = Store(s.db_url)
    _seed_votes(s, store)
    newest = store.feedback_seq()

    dry = run_nightly(s, store=store, dry_run=True)
    assert dry.decision == "dry-run" and dry.data["examples"] == 5
    assert not (nhome / "nightly").exists() and watermark(store, "raft") == 0
    assert registry.next_version(store, "raft") == 2 and not _nightly_rows(store)

    res = run_nightly(s, store=store)
    assert res.decision == "promoted", res.reasons
    assert (res.candidate["version"], res.champion["version"]) == (2, 1)
    assert res.data["examples"] == 5 and res.records == 5 + 2  # 30% replay
    assert res.candidate["failures"] == res.champion["failures"] == 0  # both really answered
    rows = {a.version: a for a in registry.list_adapters(store, "raft")}
    assert (rows[1].status, rows[2].status) == ("retired", "promoted")
    assert rows[2].metrics["offline_score"] == res.candidate["score"]
    assert registry.offline_prior(store, "raft") == res.candidate["score"]
    meta = fmt.read_meta(Path(rows[2].path))
    assert meta["nightly"]["run_id"] == res.run_id and meta["data"]["records"] == 7
    (rec,) = _nightly_rows(store)
    assert rec.id == res.eval_run_id and rec.config["kind"] == "nightly"
    assert rec.metrics["decision"] == "promoted" and rec.metrics["reasons"] == res.reasons
    assert rec.metrics["candidate"]["version"] == 2 and rec.metrics["champion"]["version"] == 1
    assert "95% CI" in rec.metrics["reasons"][0] and "above the margin" in rec.metrics["reasons"][1]
    assert rec.metrics["data"]["examples"] == 5
    assert watermark(store, "raft") == newest
    data = [json.loads(x) for x in (nhome / "nightly" / res.run_id / "data.jsonl").open()]
    assert sum(r["source"] == "replay" for r in data) == 2
    assert _serves(s) == "v2"

    again = run_nightly(s, store=store)
    assert again.decision == "skipped" and "no new feedback" in again.reasons[0]
    assert [a.version for a in registry.list_adapters(store, "raft")] == [1, 2]
    assert watermark(store, "raft") == newest and len(_nightly_rows(store)) == 2
    run_nightly(s, store=store)  # the same skip again is not recorded twice
    assert len(_nightly_rows(store)) == 2

    # Too few new examples: skipped and recorded, nothing trained, the watermark stays.
    iid = _ask(store, "A lonely new question?", "alone", [])
    _vote(store, iid, 1.0, "solo")
    few = run_nightly(s, store=store)
    assert few.decision == "skipped" and "fewer than nightly.min_examples" in few.reasons[0]
    assert watermark(store, "raft") == newest and registry.next_version(store, "raft") == 3

    # Roll back: the previous champion serves again.
    registry.roll_back(store, "raft")
    assert registry.resolve(store, "raft").version == 1
    assert _serves(s) == "v1"
    store.close()


def test_retrain_rejects_a_candidate_that_does_not_win(nhome, tiny_model_dir):
    s = _settings(nhome, tiny_model_dir, margin=1.0, cheaper_by=None)
    store = Store(s.db_url)
    before = _champion_state(s)
    _seed_votes(s, store)
    res = run_nightly(s, store=store)
    assert res.decision == "rejected", res.reasons
    assert any("not better by the margin" in r for r in res.reasons)
    cand = registry.get(store, "raft", 2)
    assert cand.status == "rejected" and "not better" in cand.metrics["status_reason"]
    assert _champion_state(s) == before
    (rec,) = _nightly_rows(store)
    assert rec.metrics["decision"] == "rejected" and rec.metrics["reasons"] == res.reasons
    assert watermark(store, "raft") == store.feedback_seq()
    assert _serves(s) == "v1"

    # The next night wins; without keep_old the rejected v2 goes (v1 stays: the roll-back target).
    _seed_votes(s, store)
    s2 = _settings(nhome, tiny_model_dir, margin=-1.0, keep_old=False, teacher="default")
    res = run_nightly(s2, store=store)
    assert res.decision == "promoted" and res.candidate["version"] == 3
    distilled = _nightly_rows(store)[0].metrics["data"]["distill"]  # the teacher re-answered
    assert distilled["teacher"] + distilled["kept_vote"] == 5
    assert [(a.version, a.status) for a in registry.list_adapters(store, "raft")] == [
        (1, "retired"),
        (3, "promoted"),
    ]
    assert not (nhome / "adapters" / "raft" / "v2").exists()
    assert registry.roll_back(store, "raft").version == 1
    store.close()


KILL_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from tests.test_nightly import _settings
    from training.nightly import run_nightly

    home, tiny, kill_at = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    s = _settings(home, tiny, margin=-1.0)

    def on_stage(stage):
        if stage == kill_at:
            os.kill(os.getpid(), 9)

    run_nightly(s, on_stage=on_stage)
    """
)


def test_kill_9_at_each_stage_leaves_the_champion_serving_and_the_next_run_finishes(
    nhome, tiny_model_dir
):
    s = _settings(nhome, tiny_model_dir, margin=-1.0)
    store = Store(s.db_url)
    _seed_votes(s, store)
    store.close()
    before = _champion_state(s)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}  # fmt: skip
    # Each run resumes the one killed before it, and is killed one stage further on.
    for kill_at in ("gather:written", "train:step", "evaluate:answer", "promote:commit"):
        proc = subprocess.run(
            [sys.executable, "-c", KILL_SCRIPT, str(nhome), str(tiny_model_dir), kill_at],
            env=env, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
        )  # fmt: skip
        assert proc.returncode == -9, (kill_at, proc.stderr[-3000:])
        assert _champion_state(s) == before, kill_at
        assert _serves(s) == "v1", kill_at
        store = Store(s.db_url)
        assert watermark(store, "raft") == 0 and not _nightly_rows(store), kill_at
        store.close()
    (run_dir,) = (nhome / "nightly").iterdir()
    assert (run_dir / "evaluation.json").is_file() and (run_dir / "decision.json").is_file()

    store = Store(s.db_url)
    res = run_nightly(s, store=store)
    assert res.resumed and res.decision == "promoted" and res.run_id == run_dir.name
    assert [(a.version, a.status) for a in registry.list_adapters(store, "raft")] == [
        (1, "retired"),
        (2, "promoted"),
    ]  # one candidate: the killed training was not repeated into another version
    assert len(_nightly_rows(store)) == 1 and watermark(store, "raft") == store.feedback_seq()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "done"
    assert _serves(s) == "v2"
    assert run_nightly(s, store=store).decision == "skipped"
    store.close()


class Crash(Exception):
    pass


def _crash_at(point: str):
    def on_stage(stage: str) -> None:
        if stage == point:
            raise Crash(stage)

    return on_stage


def test_a_run_recorded_but_not_closed_is_closed_and_a_champion_changed_by_hand_wins(
    nhome, tiny_model_dir
):
    s = _settings(nhome, tiny_model_dir, margin=-1.0)
    store = Store(s.db_url)
    _seed_votes(s, store)
    with pytest.raises(Crash):  # after the decision's transaction, before run.json says done
        run_nightly(s, store=store, on_stage=_crash_at("promote:committed"))
    assert registry.resolve(store, "raft").version == 2 and watermark(store, "raft") == 5
    (run_dir,) = (nhome / "nightly").iterdir()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"
    assert run_nightly(s, store=store).decision == "skipped"
    assert json.loads((run_dir / "run.json").read_text())["status"] == "done"

    # A person promotes the candidate by hand while the run is between evaluation and commit.
    _seed_votes(s, store)
    with pytest.raises(Crash):
        run_nightly(s, store=store, on_stage=_crash_at("promote"))
    registry.promote(store, "raft", 3)
    res = run_nightly(s, store=store)
    assert res.resumed and res.decision == "rejected"
    assert any("champion changed during the run (v2 → v3)" in r for r in res.reasons)
    assert any("promoted by hand" in r for r in res.reasons)
    assert registry.resolve(store, "raft").version == 3  # the person's decision stands
    assert watermark(store, "raft") == 5  # these votes are taken again next run
    assert _nightly_rows(store)[0].metrics["watermark"]["advanced"] is False
    store.close()


def test_only_one_run_at_a_time(nhome, tiny_model_dir):
    s = _settings(nhome, tiny_model_dir)
    lock = nhome / "nightly.lock"
    with open(lock, "a+") as f:  # another process's run holds the lock
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        with pytest.raises(NightlyBusyError, match="another nightly run is in progress"):
            run_nightly(s)
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    with run_lock(lock), pytest.raises(NightlyBusyError):  # and within one process
        run_nightly(s)
    assert run_nightly(s).decision == "skipped"  # free again


def test_cli_dry_run_and_status(nhome, tiny_model_dir, monkeypatch):
    import typer
    from typer.testing import CliRunner

    from app.cli_nightly import retrain_cmd

    root = nhome.parent
    (nhome / "armada.toml").write_text(
        textwrap.dedent(
            f"""
            models_dir = "{SHARED_MODELS_DIR}"
            [models.default]
            model = "{tiny_model_dir}"
            max_new_tokens = 4
            [retrieval]
            mode = "bm25"
            top_k = 2
            [[arms]]
            name = "raft"
            agent = "raft"
            top_k = 2
            [nightly]
            arm = "raft"
            min_examples = 3
            eval_datasets = ["jsonl:{root / "eval.jsonl"}"]
            """
        )
    )
    monkeypatch.setenv("ARMADA_HOME", str(nhome))
    monkeypatch.delenv("ARMADA_CONFIG", raising=False)
    s = Settings()
    store = Store(s.db_url)
    _seed_votes(s, store)
    store.close()
    app = typer.Typer()
    app.command("retrain")(retrain_cmd)
    app.command("other")(lambda: None)
    runner = CliRunner()
    res = runner.invoke(app, ["retrain", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert (
        "5 examples from 5 voted interactions" in res.output and "would train raft v2" in res.output
    )
    assert not (nhome / "nightly").exists()
    res = runner.invoke(app, ["retrain", "--status"])
    assert res.exit_code == 0 and "watermark seq 0, newest vote seq 5" in res.output
    res = runner.invoke(app, ["retrain", "--dry-run", "--arm", "nope"])
    assert res.exit_code == 1 and "unknown arm" in res.output


def test_a_candidate_that_failed_questions_is_rejected_even_if_equal_and_cheaper(
    settings, tmp_path
):
    from training.nightly import _decide

    pairs = [{"id": str(i), "metric": "f1", "candidate": 0.0, "champion": 0.0} for i in range(20)]
    evaluation = {
        "pairs": pairs,
        "candidate": {"score": 0.0, "latency_p50_ms": 10.0, "adapter_bytes": 100, "failures": 0},
        "champion": {"score": 0.0, "latency_p50_ms": 100.0, "adapter_bytes": 1000, "failures": 0},
    }
    assert _decide(settings, tmp_path, evaluation).decision == "promoted"  # equal and cheaper
    evaluation["candidate"]["failures"] = 3
    d = _decide(settings, tmp_path, evaluation)
    assert d.decision == "rejected" and "failed on 3 evaluation question(s)" in d.reasons[-1]
