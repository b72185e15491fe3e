"""Training data from votes: thumbs-up interactions → RAFT (or FT) chat records for the nightly job.

    from training.feedback_data import gather_feedback, to_records
    got = gather_feedback(store, passages_of, cfg, from_seq=w, to_seq=h, top_k=4)
    records = to_records(got.examples, kind="raft", system=RAFT_SYSTEM, max_words=120)

An interaction is a candidate when one of its votes has ``seq`` in ``(from_seq, to_seq]`` (the
nightly watermark range). It becomes an example (question, the passages the arm saw, answer) when
a vote on it is a thumbs-up (reward ≥ ``min_reward``). The passages are the interaction's
recorded ``passage_ids`` (its retrieval hits, best first) cut to the improved arm's ``top_k`` and
read back from the corpus catalogue. Then, in this order (each drop is counted by its reason):

1. dropped: interactions with a thumbs-up and a thumbs-down (``conflicting votes``); no thumbs-up;
   failed or empty answers; answers of arms not in ``source_arms``; questions of the evaluation
   set (it is never trained on); interactions whose thumbs-up an earlier run already considered;
   contexts no longer in the corpus;
2. e-mail addresses and phone numbers become ``[email]`` / ``[phone]`` in questions, passages and
   answers (:func:`scrub_pii`);
3. exact duplicates (normalised question + answer) and near-duplicate questions (word-bigram
   Jaccard ≥ ``near_dup_jaccard``, :func:`near_duplicates`) are removed; the copy with the most
   thumbs-up (then the earliest) is kept;
4. caps against poisoning: at most ``max_per_voter`` examples per voter and ``max_per_session``
   per conversation thread, taken in a seeded random order, so a flood of votes cannot choose
   which of its votes count, and never counts for more than its cap.

Optional distillation (:func:`distill`): a teacher model re-answers each example from the same
context; a failed or empty reply keeps the voted answer. Replay (:func:`sample_replay`): a seeded
sample of the original RAFT file is mixed in, against forgetting.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlmodel import select

from core.metrics import normalize_answer
from core.store.tables import Feedback, Interaction
from core.types import Passage

if TYPE_CHECKING:
    from core.config import NightlyConfig
    from core.store import Store

ANONYMOUS = "(anonymous)"
"""The voter key of votes without a voter id: all of them share one cap."""
DATASET = "feedback"

PassagesOf = Callable[[list[str]], dict[str, Passage]]
"""``passages_of(ids)`` → id → passage (the corpus catalogue's ``passages_by_id``)."""

# -- scrubbing --------------------------------------------------------------------------------------
EMAIL_RE = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
)
PHONE_RE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}(?:[\s.-]?\(?\d{1,4}\)?){2,5}"  # +44 20 7946 0958, +1-555-123-4567
    r"|\(\d{2,4}\)\s?\d{3,4}[\s.-]?\d{3,4}"  # (555) 123-4567
    r"|\d{3}[.-]\d{3}[.-]\d{4}"  # 555-123-4567, 555.123.4567
    r"|0\d{2,4}[\s.-]\d{3,4}[\s.-]\d{3,4}"  # 020 7946 0958, 0151 496 0000
    r")(?!\w)"
)


def scrub_pii(text: str) -> tuple[str, Counter[str]]:
    """``text`` with e-mail addresses → ``[email]`` and phone numbers → ``[phone]``; and counts.

    Phone numbers are the common written forms (international ``+…``, ``(555) 123-4567``,
    ``555-123-4567``, national ``020 7946 0958``) with 7–15 digits; years, dates and amounts
    (``1999``, ``2024-01-15``, ``3,000,000``) are left alone.
    """
    counts: Counter[str] = Counter()

    def email(_m: re.Match[str]) -> str:
        counts["email"] += 1
        return "[email]"

    def phone(m: re.Match[str]) -> str:
        digits = sum(ch.isdigit() for ch in m.group(0))
        if not 7 <= digits <= 15:
            return m.group(0)
        counts["phone"] += 1
        return "[phone]"

    text = EMAIL_RE.sub(email, text)
    text = PHONE_RE.sub(phone, text)
    return text, counts


# -- duplicates -------------------------------------------------------------------------------------
def shingles(text: str) -> frozenset[str]:
    """Word bigrams of the normalised text (its words when it has fewer than two)."""
    words = normalize_answer(text).split()
    if len(words) < 2:
        return frozenset(words)
    return frozenset(f"{a} {b}" for a, b in zip(words, words[1:], strict=False))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def near_duplicates(sets: Sequence[frozenset[str]], threshold: float) -> list[int | None]:
    """For each set, the index of an earlier kept set it is a near-duplicate of (None: kept).

    Jaccard ≥ ``threshold``; candidates come from a prefix-filtered inverted index (two sets that
    similar share a token among the first ``|x| − ⌈t·|x|⌉ + 1`` of each in a global token order),
    so the work grows with the number of similar pairs, not with n².
    """
    freq: Counter[str] = Counter(t for s in sets for t in s)
    index: dict[str, list[int]] = {}
    out: list[int | None] = []
    for i, s in enumerate(sets):
        toks = sorted(s, key=lambda t: (freq[t], t))
        prefix = toks[: len(toks) - math.ceil(threshold * len(toks)) + 1] if toks else []
        seen: set[int] = set()
        dup = None
        for t in prefix:
            for j in index.get(t, ()):
                if j not in seen:
                    seen.add(j)
                    if jaccard(s, sets[j]) >= threshold:
                        dup = j
                        break
            if dup is not None:
                break
        out.append(dup)
        if dup is None:
            for t in prefix:
                index.setdefault(t, []).append(i)
    return out


# -- gathering --------------------------------------------------------------------------------------
@dataclass
class FeedbackExample:
    interaction_id: str
    question: str
    passages: list[Passage]
    answer: str
    voters: tuple[str, ...]
    """The voters who gave it a thumbs-up (``ANONYMOUS`` for votes without a voter id)."""
    session: str
    """The conversation thread (the interaction's id when it has none)."""
    seq: int
    """Its newest thumbs-up's position in the feedback sequence."""
    arm: str
    answer_source: str = "vote"
    """``vote`` (the answer people liked) or ``teacher`` (re-answered by the teacher)."""


@dataclass
class Gathered:
    examples: list[FeedbackExample]
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def dropped(self) -> dict[str, int]:
        return dict(self.stats.get("dropped", {}))


def _chunks(xs: Sequence[str], n: int = 500) -> Iterable[Sequence[str]]:
    for i in range(0, len(xs), n):
        yield xs[i : i + n]


def _order_key(seed: int, salt: str, interaction_id: str) -> str:
    return hashlib.sha256(f"{seed}:{salt}:{interaction_id}".encode()).hexdigest()


def eval_questions(
    specs: Sequence[str], n: int | None = None, seed: int = 0, require_gold: bool = False
) -> set[str]:
    """The normalised questions of the fixed evaluation set (never trained on): the ``n``
    examples per dataset the evaluation harness picks with ``seed`` (all when ``n`` is None)."""
    from core.datasets import load_dataset
    from evals.harness import select_examples

    out: set[str] = set()
    for spec in specs:
        examples = load_dataset(spec)
        if n is not None:
            examples = select_examples(examples, n, seed, require_gold)
        out |= {normalize_answer(e.question) for e in examples}
    return out


def read_votes(
    store: Store, from_seq: int, to_seq: int
) -> tuple[dict[str, Interaction], dict[str, list[Feedback]]]:
    """Interactions with a vote in ``(from_seq, to_seq]`` and all their votes up to ``to_seq``,
    read in one snapshot."""
    with store.session() as s:
        s.connection()  # one read transaction for every query below
        q = select(Feedback.interaction_id).where(
            Feedback.seq > from_seq,  # type: ignore[operator]
            Feedback.seq <= to_seq,  # type: ignore[operator]
        )
        ids = sorted(set(s.exec(q)))
        inters: dict[str, Interaction] = {}
        votes: dict[str, list[Feedback]] = {}
        for chunk in _chunks(ids):
            for row in s.exec(select(Interaction).where(Interaction.id.in_(chunk))):  # type: ignore[attr-defined]
                inters[row.id] = row
            q2 = select(Feedback).where(Feedback.interaction_id.in_(chunk))  # type: ignore[attr-defined]
            for f in s.exec(q2):
                if (f.seq or 0) <= to_seq:
                    votes.setdefault(f.interaction_id, []).append(f)
    return inters, votes


def gather_feedback(
    store: Store,
    passages_of: PassagesOf,
    cfg: NightlyConfig,
    *,
    from_seq: int,
    to_seq: int,
    top_k: int | None,
    retrieves: bool = True,
    eval_set: set[str] | frozenset[str] = frozenset(),
    salt: str = "",
) -> Gathered:
    """The examples of the votes in ``(from_seq, to_seq]`` (see the module docstring).

    ``top_k``: passages the arm shows (None: all recorded); ``retrieves=False`` (closed-book FT
    data) keeps no passages. ``salt`` varies the seeded cap order between runs.
    """
    inters, votes = read_votes(store, from_seq, to_seq)
    dropped: Counter[str] = Counter()
    scrubbed: Counter[str] = Counter()
    pending: list[tuple[FeedbackExample, list[str], int]] = []  # example, passage ids, support
    for iid in sorted(inters, key=lambda i: (max(v.seq or 0 for v in votes[i]), i)):
        inter, vs = inters[iid], votes[iid]
        up = [v for v in vs if (v.reward if v.reward is not None else v.score) >= cfg.min_reward]
        down = [v for v in vs if v.score < cfg.negative_below]
        if up and down:
            dropped["conflicting votes"] += 1
            continue
        if not up:
            dropped["no thumbs-up"] += 1
            continue
        if any((v.seq or 0) <= from_seq for v in up):
            dropped["already considered"] += 1
            continue
        if inter.status != "ok" or not inter.answer.strip():
            dropped["failed answer"] += 1
            continue
        if cfg.source_arms and inter.arm not in cfg.source_arms:
            dropped["other arm"] += 1
            continue
        if normalize_answer(inter.question) in eval_set:
            dropped["in the evaluation set"] += 1
            continue
        ids = list(inter.passage_ids or []) if retrieves else []
        if top_k:
            ids = ids[:top_k]
        ex = FeedbackExample(
            interaction_id=iid,
            question=inter.question,
            passages=[],
            answer=inter.answer.strip(),
            voters=tuple(sorted({v.voter or ANONYMOUS for v in up})),
            session=inter.thread_id or f"interaction:{iid}",
            seq=max(v.seq or 0 for v in up),
            arm=inter.arm,
        )
        pending.append((ex, ids, len(up)))

    wanted = sorted({pid for _, ids, _ in pending for pid in ids})
    found: dict[str, Passage] = {}
    for chunk in _chunks(wanted):
        found.update(passages_of(list(chunk)))
    candidates: list[tuple[FeedbackExample, int]] = []
    for ex, ids, support in pending:
        ex.passages = [found[p] for p in ids if p in found]
        if ids and not ex.passages:
            dropped["context gone"] += 1
            continue
        if cfg.scrub_pii:
            ex.question, c1 = scrub_pii(ex.question)
            ex.answer, c2 = scrub_pii(ex.answer)
            scrubbed += c1 + c2
            clean = []
            for p in ex.passages:
                text, c3 = scrub_pii(p.text)
                title, c4 = scrub_pii(p.title)
                scrubbed += c3 + c4
                clean.append(replace(p, text=text, title=title))
            ex.passages = clean
        candidates.append((ex, support))

    # Duplicates: the best-supported copy (then the earliest) wins.
    candidates.sort(key=lambda c: (-c[1], c[0].seq, c[0].interaction_id))
    exact: set[tuple[str, str]] = set()
    unique: list[FeedbackExample] = []
    for ex, _ in candidates:
        key = (normalize_answer(ex.question), normalize_answer(ex.answer))
        if key in exact:
            dropped["duplicate"] += 1
            continue
        exact.add(key)
        unique.append(ex)
    dups = near_duplicates([shingles(ex.question) for ex in unique], cfg.near_dup_jaccard)
    distinct = [ex for ex, d in zip(unique, dups, strict=True) if d is None]
    dropped["near-duplicate"] += len(unique) - len(distinct)

    # Caps, in a seeded order that no voter controls.
    distinct.sort(key=lambda ex: _order_key(cfg.seed, salt, ex.interaction_id))
    per_voter: Counter[str] = Counter()
    per_session: Counter[str] = Counter()
    kept: list[FeedbackExample] = []
    for ex in distinct:
        if per_session[ex.session] >= cfg.max_per_session:
            dropped["session cap"] += 1
            continue
        open_voters = [v for v in ex.voters if per_voter[v] < cfg.max_per_voter]
        if not open_voters:
            dropped["voter cap"] += 1
            continue
        # Charge the supporter with the most room left (ties by name): one example, one charge.
        charged = min(open_voters, key=lambda v: (per_voter[v], v))
        per_voter[charged] += 1
        per_session[ex.session] += 1
        kept.append(ex)
    kept.sort(key=lambda ex: (ex.seq, ex.interaction_id))
    stats = {
        "from_seq": from_seq,
        "to_seq": to_seq,
        "interactions": len(inters),
        "examples": len(kept),
        "dropped": {k: v for k, v in sorted(dropped.items()) if v},
        "scrubbed": dict(sorted(scrubbed.items())),
        "voters": len(per_voter),
        "sessions": len(per_session),
        "max_per_voter_taken": max(per_voter.values(), default=0),
    }
    return Gathered(kept, stats)


# -- records ----------------------------------------------------------------------------------------
def to_records(
    examples: Sequence[FeedbackExample],
    *,
    kind: str = "raft",
    system: str | None = None,
    max_words: int | None = 120,
) -> list[dict[str, Any]]:
    """Chat records in the format the arm's adapter was trained on (RAFT, or closed-book FT)."""
    from agents import prompts
    from training.raft import RAFT_SYSTEM, raft_messages

    out = []
    for ex in examples:
        if kind == "ft":
            messages = [
                {"role": "system", "content": system or prompts.CLOSED_BOOK_SYSTEM},
                {"role": "user", "content": prompts.CLOSED_BOOK_USER.format(question=ex.question)},
                {"role": "assistant", "content": ex.answer},
            ]
        else:
            messages = raft_messages(
                ex.question,
                ex.passages,
                system=system or RAFT_SYSTEM,
                max_words=max_words,
                answer=ex.answer,
            )
        out.append(
            {
                "id": f"{DATASET}:{ex.interaction_id}",
                "dataset": DATASET,
                "category": "feedback",
                "question": ex.question,
                "answers": [ex.answer],
                "passage_ids": [p.id for p in ex.passages],
                "interaction_id": ex.interaction_id,
                "voters": list(ex.voters),
                "session": ex.session,
                "seq": ex.seq,
                "source": ex.answer_source,
                "messages": messages,
            }
        )
    return out


def distill(
    examples: Sequence[FeedbackExample],
    teacher: Any,
    *,
    system: str | None = None,
    max_words: int | None = 120,
    max_new_tokens: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[FeedbackExample], dict[str, int]]:
    """Each example re-answered by ``teacher`` (a ``ChatModel``) from the same context.

    The teacher sees the RAFT prompt the arm saw; its final answer replaces the voted one. A
    failed or empty reply keeps the voted answer (so a bad teacher never loses an example).
    """
    from training.raft import RAFT_SYSTEM, raft_messages
    from training.teacher import final_answer

    out, stats = [], {"teacher": 0, "kept_vote": 0}
    for i, ex in enumerate(examples):
        msgs = raft_messages(
            ex.question, ex.passages, system=system or RAFT_SYSTEM, max_words=max_words
        )
        try:
            reply = final_answer(teacher.generate(msgs, max_new_tokens=max_new_tokens).text)
        except Exception:  # a failing teacher keeps the voted answer
            reply = ""
        if reply:
            reply, _ = scrub_pii(reply)
            out.append(replace(ex, answer=reply, answer_source="teacher"))
            stats["teacher"] += 1
        else:
            out.append(ex)
            stats["kept_vote"] += 1
        if progress:
            progress(i + 1, len(examples))
    return out, stats


def replay_count(n_new: int, fraction: float) -> int:
    """Replayed records so that they make up ``fraction`` of the mix with ``n_new`` new ones."""
    if fraction <= 0 or n_new <= 0:
        return 0
    return round(n_new * fraction / (1.0 - fraction))


def sample_replay(
    path: Path, n: int, seed: int, salt: str = "", eval_set: set[str] | frozenset[str] = frozenset()
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``n`` records (fewer if the file has fewer) of the original training file, seeded; records
    whose question is in the evaluation set are left out."""
    from training.raft import read_records

    records, manifest = read_records(Path(path))
    pool = [r for r in records if normalize_answer(str(r.get("question", ""))) not in eval_set]
    rng = random.Random(int(_order_key(seed, salt, "replay")[:16], 16))
    picked = rng.sample(pool, min(n, len(pool))) if n > 0 else []
    out = [{**r, "source": "replay"} for r in picked]
    stats = {
        "file": str(path),
        "available": len(pool),
        "excluded_eval": len(records) - len(pool),
        "sampled": len(out),
        "data_hash": manifest.get("data_hash"),
    }
    return out, stats


def summary_line(stats: dict[str, Any]) -> str:
    """One line for logs and the CLI: counts and drops by reason."""
    drops = ", ".join(f"{k} {v}" for k, v in stats.get("dropped", {}).items()) or "none"
    return (
        f"{stats.get('examples', 0)} examples from {stats.get('interactions', 0)} voted "
        f"interactions (seq {stats.get('from_seq')}–{stats.get('to_seq')}); dropped: {drops}; "
        f"scrubbed: {json.dumps(stats.get('scrubbed', {}))}"
    )
