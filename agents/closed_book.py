"""Closed-book: the base model without retrieval, the no-retrieval baseline."""

from __future__ import annotations

from agents import prompts
from agents.base import Agent, AgentContext, Answer
from agents.hookspecs import hookimpl
from core.types import Hit


class ClosedBookAgent(Agent):
    name = "closed_book"
    needs_retrieval = False
    default_system_prompt = prompts.CLOSED_BOOK_SYSTEM
    description = "Base model alone, no retrieval."

    def answer(self, question: str, passages: list[Hit], ctx: AgentContext) -> Answer:
        user = prompts.CLOSED_BOOK_USER.format(question=question)
        text, usage = self.generate(self.chat(user, ctx), ctx)
        return Answer(text=text, cited_ids=[], usage=usage)


@hookimpl
def register_agents(register):  # noqa: ANN001, ANN201 - pluggy hook signature
    register(ClosedBookAgent)
