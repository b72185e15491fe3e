"""RAG-only: the base model answers from the retrieved passages."""

from __future__ import annotations

from agents import prompts
from agents.base import Agent, AgentContext, Answer
from agents.hookspecs import hookimpl
from core.types import Hit


class RagAgent(Agent):
    name = "rag"
    needs_retrieval = True
    default_system_prompt = prompts.RAG_SYSTEM
    description = "Base model + retrieved passages."

    def answer(self, question: str, passages: list[Hit], ctx: AgentContext) -> Answer:
        shown = self.top(passages)
        user = prompts.RAG_USER.format(context=self.format_passages(shown), question=question)
        text, usage = self.generate(self.chat(user, ctx), ctx)
        return Answer(text=text, cited_ids=self.cite(text, shown), usage=usage)


@hookimpl
def register_agents(register):  # noqa: ANN001, ANN201 - pluggy hook signature
    register(RagAgent)
