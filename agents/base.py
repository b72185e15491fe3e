"""The agent contract: one abstract method, ``answer``, plus capabilities as class attributes.

An *agent* is a kind of generator (RAG-only, closed-book, …). An *arm* is a configured instance of
an agent (model, adapter, top-k, prompt), declared in configuration; the bandit chooses among arms.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from agents import prompts
from core.config import ArmConfig
from core.text import attribute_citations
from core.types import Hit, Message, Usage

if TYPE_CHECKING:
    from core.models.base import ChatModel
    from core.retrieval import Retriever


@dataclass
class Answer:
    text: str
    cited_ids: list[str] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    details: dict[str, Any] = field(default_factory=dict)
    """Agent-specific trace (expert gate, hops, …), stored with the interaction."""
    passages: list[Hit] = field(default_factory=list)
    """Passages the agent found itself (e.g. later hops), added to the interaction's passages."""


@dataclass
class AgentContext:
    """What an agent may use while answering; built per request by the graph."""

    model: ChatModel | None
    retriever: Retriever | None = None
    history: list[Message] = field(default_factory=list)
    on_token: Callable[[str], None] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    adapters: dict[str, str] = field(default_factory=dict)
    """Registry adapter name → the name it is loaded under in ``model`` (``name_v3``)."""
    metas: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Registry adapter name → its ``meta.json`` (prompt format, prototype, metrics)."""
    embed: Callable[[list[str]], Any] | None = None
    """Texts → sentence embeddings (the retriever's model), for routers inside an arm."""
    tags: dict[str, str] = field(default_factory=dict)
    """The caller's hints, e.g. ``{"dataset": "popqa"}`` or ``{"expert": "pubmedqa"}``."""

    def adapter(self, name: str | None) -> str | None:
        """The loaded name of registry adapter ``name`` (itself when the runtime did not map it)."""
        return self.adapters.get(name, name) if name else None

    def adapter_meta(self, name: str) -> dict[str, Any]:
        return self.metas.get(name, {})


class Agent(ABC):
    name: ClassVar[str]
    """The agent type's registered name (lowercase, unique)."""
    needs_retrieval: ClassVar[bool] = True
    needs_model: ClassVar[bool] = True
    adapters: ClassVar[tuple[str, ...]] = ()
    default_system_prompt: ClassVar[str] = prompts.RAG_SYSTEM
    description: ClassVar[str] = ""

    def __init__(self, arm: ArmConfig) -> None:
        self.arm = arm

    @abstractmethod
    def answer(self, question: str, passages: list[Hit], ctx: AgentContext) -> Answer:
        """Answer ``question``; ``passages`` are already retrieved (empty if none were found)."""

    # -- shared helpers ----------------------------------------------------------------------------
    @property
    def system_prompt(self) -> str:
        return self.arm.prompt or self.default_system_prompt

    def top(self, passages: list[Hit]) -> list[Hit]:
        return passages[: self.arm.top_k] if self.arm.top_k else passages

    @staticmethod
    def format_passages(passages: list[Hit]) -> str:
        if not passages:
            return prompts.NO_PASSAGES
        return "\n".join(
            prompts.PASSAGE.format(n=i, title=h.passage.title or "untitled", text=h.passage.text)
            for i, h in enumerate(passages, 1)
        )

    def chat(self, user: str, ctx: AgentContext) -> list[Message]:
        """System prompt, the thread's earlier turns, then this turn."""
        return [Message("system", self.system_prompt), *ctx.history, Message("user", user)]

    def adapter_names(self) -> list[str]:
        """Registry adapters this arm needs (verified and loaded by the runtime before it runs)."""
        return [self.arm.adapter] if self.arm.adapter else []

    def generate(self, messages: list[Message], ctx: AgentContext) -> tuple[str, Usage]:
        return self.generate_with(messages, ctx, ctx.adapter(self.arm.adapter))

    def generate_with(
        self, messages: list[Message], ctx: AgentContext, adapter: str | None
    ) -> tuple[str, Usage]:
        """Generate through ``adapter`` (a loaded name; None: the base model)."""
        gen = ctx.model.generate(
            messages, adapter=adapter, on_token=ctx.on_token, cancel=ctx.cancel
        )
        if gen.finish_reason == "cancelled":
            raise TimeoutError(f"arm {self.arm.name!r} was cancelled before it finished")
        return gen.text.strip(), gen.usage

    @staticmethod
    def cite(text: str, passages: list[Hit]) -> list[str]:
        return attribute_citations(text, [(h.passage.id, h.passage.text) for h in passages])
