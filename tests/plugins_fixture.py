"""Test agents registered through the real plugin hook (no mocks of the plugin path)."""

from __future__ import annotations

import time

from agents.base import Agent, AgentContext, Answer
from agents.hookspecs import hookimpl
from core.types import Hit, Usage


class EchoAgent(Agent):
    """Answers with the question and cites the first passage; needs no model."""

    name = "echo"
    needs_model = False

    def answer(self, question: str, passages: list[Hit], ctx: AgentContext) -> Answer:
        text = f"echo: {question}"
        for word in text.split():
            if ctx.on_token:
                ctx.on_token(word + " ")
        cited = [passages[0].passage.id] if passages else []
        return Answer(text=text, cited_ids=cited, usage=Usage(3, len(text.split())))


class LoudAgent(EchoAgent):
    """Like echo, shouting; a second cheap arm for bandit tests."""

    name = "loud"

    def answer(self, question: str, passages: list[Hit], ctx: AgentContext) -> Answer:
        ans = super().answer(question, passages, ctx)
        ans.text = ans.text.upper()
        return ans


class BoomAgent(Agent):
    name = "boom"
    needs_model = False

    def answer(self, question: str, passages: list[Hit], ctx: AgentContext) -> Answer:
        if ctx.on_token:
            ctx.on_token("partial ")
        raise RuntimeError("adapter exploded")


class SlowAgent(Agent):
    name = "slow"
    needs_model = False

    def answer(self, question: str, passages: list[Hit], ctx: AgentContext) -> Answer:
        for _ in range(200):
            if ctx.cancel.is_set():
                break
            time.sleep(0.01)
        return Answer(text="too late")


class TestAgents:
    @hookimpl
    def register_agents(self, register):  # noqa: ANN001, ANN201
        for cls in (EchoAgent, LoudAgent, BoomAgent, SlowAgent):
            register(cls)
