"""REFRAG multi-hop arm: recursive retrieval with follow-up queries, a hop cap and abstention.

Arm options (``[[arms]] … options = {…}``): ``max_hops`` (3), ``hop_k`` (passages kept per hop,
4), ``max_context`` (passages shown to the model, 6), ``abstain_phrase`` ("I don't know."),
``max_new_tokens`` (48). The subgraph is in ``graph.py``; the support check and the multi-hop
reward are in ``support.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agents.base import Agent, AgentContext, Answer
from agents.hookspecs import hookimpl
from agents.refrag import prompts
from agents.refrag.support import multihop_reward
from core.errors import ArmadaError
from core.types import Hit, Message, Usage


@dataclass
class RefragRun:
    """What the subgraph's nodes may use during one question (passed through the run config)."""

    search: Callable[[str, int], list[Hit]]
    generate_fn: Callable[..., tuple[str, Usage]]
    emit: Callable[[str], None]
    first_hits: list[Hit] | None
    max_hops: int = 3
    hop_k: int = 4
    max_context: int = 6
    max_new_tokens: int = 48
    abstain_phrase: str = prompts.ABSTAIN

    def generate(self, user: str, max_new_tokens: int, stream: bool = False) -> tuple[str, Usage]:
        return self.generate_fn(user, max_new_tokens, stream)


class RefragAgent(Agent):
    name = "refrag"
    needs_retrieval = True
    default_system_prompt = prompts.SYSTEM
    description = "Recursive retrieval: retrieve, read, write a follow-up query, retrieve again."

    def __init__(self, arm: Any) -> None:
        super().__init__(arm)
        o = arm.options
        self.max_hops = int(o.get("max_hops", 3))
        if self.max_hops < 1:
            raise ArmadaError("refrag: max_hops must be at least 1")
        self.hop_k = int(o.get("hop_k", 4))
        self.max_context = int(o.get("max_context", 6))
        self.max_new_tokens = int(o.get("max_new_tokens", 48))
        self.abstain_phrase = str(o.get("abstain_phrase", prompts.ABSTAIN))
        self._graph: Any = None

    @property
    def graph(self) -> Any:
        # langgraph is imported on first use, not when plugins load (it costs ~1 s at start).
        if self._graph is None:
            from agents.refrag.graph import build_refrag_graph

            self._graph = build_refrag_graph()
        return self._graph

    def answer(self, question: str, passages: list[Hit], ctx: AgentContext) -> Answer:
        if ctx.retriever is None:
            raise ArmadaError("refrag needs a retriever (is the corpus ingested?)")

        def generate(user: str, max_new_tokens: int, stream: bool) -> tuple[str, Usage]:
            if ctx.cancel.is_set():
                raise TimeoutError("refrag was cancelled")
            messages = [Message("system", self.system_prompt), Message("user", user)]
            gen = ctx.model.generate(
                messages,
                adapter=self.arm.adapter,
                max_new_tokens=max_new_tokens,
                on_token=ctx.on_token if stream else None,
                cancel=ctx.cancel,
            )
            if gen.finish_reason == "cancelled":
                raise TimeoutError("refrag was cancelled")
            return gen.text.strip(), gen.usage

        run = RefragRun(
            search=lambda q, k: ctx.retriever.search(q, k=k),
            generate_fn=generate,
            emit=lambda t: ctx.on_token(t) if ctx.on_token else None,
            first_hits=passages[: self.hop_k] if passages else None,
            max_hops=self.max_hops,
            hop_k=self.hop_k,
            max_context=self.max_context,
            max_new_tokens=self.max_new_tokens,
            abstain_phrase=self.abstain_phrase,
        )
        out = self.graph.invoke(
            {"question": question, "query": question, "hop": 0, "passages": [], "hops": []},
            {"configurable": {"refrag": run}, "recursion_limit": 4 * self.max_hops + 8},
        )
        gathered = out.get("passages", [])
        pairs = [(p["id"], p["text"]) for p in gathered]
        reward = multihop_reward(question, out["answer"], pairs, self.max_hops * self.hop_k)
        u = out.get("usage") or {}
        details = {
            "hops": [
                {
                    "hop": h["hop"],
                    "query": h["query"],
                    "documents": [
                        {"id": p["id"], "title": p["title"]}
                        for p in gathered
                        if p["id"] in set(h["documents"])
                    ],
                }
                for h in out.get("hops", [])
            ],
            "hop_count": len(out.get("hops", [])),
            "stop_reason": out.get("stop_reason", ""),
            "abstained": not out.get("support", {}).get("supported", False),
            "support": out.get("support", {}),
            "multihop_reward": reward,
        }
        return Answer(
            text=out["answer"],
            cited_ids=list(out.get("cited", [])),
            usage=Usage(u.get("prompt_tokens", 0), u.get("completion_tokens", 0)),
            details=details,
            passages=[Hit.from_dict(p) for p in gathered],
        )


@hookimpl
def register_agents(register):  # noqa: ANN001, ANN201 - pluggy hook signature
    register(RefragAgent)
