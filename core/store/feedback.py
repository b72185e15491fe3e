"""Votes and the bandit statistics they move, changed together in one transaction.

A vote (thumbs = 1 or 0, or a 0–1 score) is keyed by a client-supplied id: the same id with the
same content is a no-op, with other content an error. One vote per voter and interaction: a new
vote replaces the voter's old one. Each stored vote gets the next ``seq``; the bandit's state is a
fold over the current votes in ``seq`` order, and ``arm_stat`` holds the same fold kept
incrementally (count, sum and sum of squares of rewards per arm and category), so
``recompute_arm_stats()`` must always equal ``arm_stats()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlmodel import Session, select

from core.errors import InputError
from core.store.tables import ArmStat, Feedback, Interaction, Meta, RouteDecision, utcnow

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

RewardFn = Callable[[Interaction, float], float]
SEQ_KEY = "feedback_seq"
OVERALL = "*"
"""The category of an interaction whose route decision recorded none."""


@dataclass
class VoteResult:
    feedback: Feedback
    created: bool
    """False when the same vote (same id and content) was already stored."""
    replaced: Feedback | None
    """The voter's earlier vote on this interaction, now removed."""
    seq: int
    """The feedback sequence number after this call."""


@dataclass(frozen=True)
class Event:
    seq: int
    arm: str
    context: dict[str, Any]
    reward: float


def _bump(s: Session, key: str) -> int:
    # FOR UPDATE keeps read-modify-write safe on servers; SQLite's BEGIN IMMEDIATE already is.
    row = s.get(Meta, key, with_for_update=True) or Meta(key=key, value=0)
    row.value += 1
    s.add(row)
    return row.value


def _stat_add(s: Session, arm: str, category: str, reward: float, sign: int) -> None:
    row = s.get(ArmStat, (arm, category), with_for_update=True) or ArmStat(
        arm=arm, category=category
    )
    row.n += sign
    row.reward_sum += sign * reward
    row.reward_sq_sum += sign * reward * reward
    s.add(row)


class FeedbackMixin:
    write_engine: Engine
    read_engine: Engine

    def add_feedback(
        self,
        feedback_id: str,
        interaction_id: str,
        score: float,
        voter: str = "",
        comment: str = "",
        max_comment_chars: int = 10_000,
        reward_fn: RewardFn | None = None,
    ) -> VoteResult:
        """Store a vote and move the arm statistics in the same transaction."""
        if not isinstance(feedback_id, str) or not 0 < len(feedback_id) <= 128:
            raise InputError("feedback_id must be 1–128 characters")
        try:
            score = float(score)
        except (TypeError, ValueError):
            raise InputError(f"score must be a number between 0 and 1, got {score!r}") from None
        if not (math.isfinite(score) and 0.0 <= score <= 1.0):
            raise InputError(f"score must be between 0 and 1, got {score}")
        if len(comment) > max_comment_chars:
            raise InputError(f"comment is longer than {max_comment_chars:,} characters")
        if len(voter) > 128:
            raise InputError("voter must be at most 128 characters")
        with self.write() as s:  # type: ignore[attr-defined]
            inter = s.get(Interaction, interaction_id)
            if inter is None:
                raise InputError(f"unknown interaction {interaction_id!r}")
            old = s.get(Feedback, feedback_id)
            if old is not None:
                same = (old.interaction_id, old.score, old.voter, old.comment) == (
                    interaction_id,
                    score,
                    voter,
                    comment,
                )
                if not same:
                    raise InputError(
                        f"feedback id {feedback_id!r} was already used for another vote"
                    )
                return VoteResult(old, False, None, self._seq(s))
            replaced = None
            if voter:
                q = select(Feedback).where(
                    Feedback.interaction_id == interaction_id, Feedback.voter == voter
                )
                for prev in s.exec(q):
                    _stat_add(s, prev.arm or inter.arm, prev.category or OVERALL, prev.reward, -1)
                    replaced = prev
                    s.delete(prev)
                s.flush()
            decision = s.exec(
                select(RouteDecision).where(RouteDecision.interaction_id == interaction_id)
            ).first()
            category = str((decision.context if decision else {}).get("category") or OVERALL)
            reward = min(1.0, max(0.0, reward_fn(inter, score))) if reward_fn else score
            seq = _bump(s, SEQ_KEY)
            row = Feedback(
                id=feedback_id,
                interaction_id=interaction_id,
                score=score,
                voter=voter,
                comment=comment,
                reward=reward,
                seq=seq,
                arm=inter.arm,
                category=category,
                updated_at=utcnow() if replaced else None,
            )
            s.add(row)
            _stat_add(s, inter.arm, category, reward, +1)
        return VoteResult(row, True, replaced, seq)

    @staticmethod
    def _seq(s: Session) -> int:
        row = s.get(Meta, SEQ_KEY)
        return row.value if row else 0

    def feedback_seq(self) -> int:
        with self.session() as s:  # type: ignore[attr-defined]
            return self._seq(s)

    def feedback_for(self, interaction_id: str) -> list[Feedback]:
        with self.session() as s:  # type: ignore[attr-defined]
            return list(s.exec(select(Feedback).where(Feedback.interaction_id == interaction_id)))

    def feedback_events(self) -> list[Event]:
        """Every current vote as a bandit event, in fold order, with its route context."""
        return self.feedback_snapshot()[1]

    def feedback_snapshot(self) -> tuple[int, list[Event]]:
        """The feedback seq and the events it counts, read in one transaction (one snapshot)."""
        with self.session() as s:  # type: ignore[attr-defined]
            s.connection()  # begin now, so both reads see the same snapshot
            seq = self._seq(s)
            q = (
                select(Feedback, RouteDecision)
                .join(
                    RouteDecision,
                    RouteDecision.interaction_id == Feedback.interaction_id,
                    isouter=True,
                )
                .order_by(Feedback.seq)
            )
            events = [
                Event(f.seq or 0, f.arm or "", dict(d.context) if d else {}, float(f.reward))
                for f, d in s.exec(q)
            ]
        return seq, events

    def arm_stats(self) -> dict[tuple[str, str], tuple[int, float, float]]:
        """The incrementally kept fold: (arm, category) → (n, Σreward, Σreward²); empty cells dropped."""
        with self.session() as s:  # type: ignore[attr-defined]
            return {
                (r.arm, r.category): (r.n, r.reward_sum, r.reward_sq_sum)
                for r in s.exec(select(ArmStat))
                if r.n
            }

    def recompute_arm_stats(self) -> dict[tuple[str, str], tuple[int, float, float]]:
        """The same fold recomputed from the stored votes."""
        out: dict[tuple[str, str], tuple[int, float, float]] = {}
        with self.session() as s:  # type: ignore[attr-defined]
            for f in s.exec(select(Feedback)):
                key = (f.arm or "", f.category or OVERALL)
                n, t, q = out.get(key, (0, 0.0, 0.0))
                out[key] = (n + 1, t + f.reward, q + f.reward * f.reward)
        return out

    def rebuild_arm_stats(self) -> dict[tuple[str, str], tuple[int, float, float]]:
        """Replace ``arm_stat`` by the recomputed fold (after a manual repair, say)."""
        with self.write() as s:  # type: ignore[attr-defined]
            for row in s.exec(select(ArmStat)):
                s.delete(row)
            s.flush()
            fresh = self.recompute_arm_stats()
            for (arm, cat), (n, t, q) in fresh.items():
                s.add(ArmStat(arm=arm, category=cat, n=n, reward_sum=t, reward_sq_sum=q))
        return fresh


def stats_equal(
    a: dict[tuple[str, str], tuple[int, float, float]],
    b: dict[tuple[str, str], tuple[int, float, float]],
    tol: float = 1e-9,
) -> bool:
    """Equal folds: same cells and counts, sums equal up to float summation order."""
    return a.keys() == b.keys() and all(
        a[k][0] == b[k][0]
        and math.isclose(a[k][1], b[k][1], abs_tol=tol)
        and math.isclose(a[k][2], b[k][2], abs_tol=tol)
        for k in a
    )
