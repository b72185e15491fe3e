"""Plain data types shared by every layer: passages, retrieval hits, chat messages, usage."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Passage:
    """A retrievable chunk of a document."""

    id: str
    text: str
    title: str = ""
    doc_id: str = ""
    source: str = ""


@dataclass
class Hit:
    """A passage returned by a retriever, with its score and the ranks each stage gave it."""

    passage: Passage
    score: float
    ranks: dict[str, int] = field(default_factory=dict)
    """1-based rank per stage, e.g. {"bm25": 3, "dense": 1, "rerank": 1}."""

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "ranks": dict(self.ranks), **asdict(self.passage)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Hit:
        p = Passage(
            id=d["id"],
            text=d["text"],
            title=d.get("title", ""),
            doc_id=d.get("doc_id", ""),
            source=d.get("source", ""),
        )
        return cls(passage=p, score=float(d.get("score", 0.0)), ranks=dict(d.get("ranks", {})))


@dataclass(frozen=True)
class Message:
    role: Role
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )

    def to_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass
class Generation:
    """One completed generation."""

    text: str
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    adapter: str | None = None
    finish_reason: str = "stop"
    """"stop", "length" or "cancelled"."""
