"""The LoRA arms: ``ft`` (closed-book LoRA), ``raft`` (one RAFT LoRA) and ``multi_lora_raft``.

Each names registered adapters (``core.adapters.registry``); the runtime verifies and loads them
onto the arm's base model before the arm runs (``AgentContext.adapters``), so a damaged adapter
disables its arm instead of answering with garbage. The prompts are the ones the adapters were
trained on: ``training.raft.raft_messages`` for RAFT, the closed-book prompt for FT, with the
system prompt and passage length read from the adapter's ``meta.json``.

``multi_lora_raft`` holds one RAFT expert per dataset on one base model. Its expert router
(``routers.experts``) is chosen in the arm's options::

    [[arms]]
    name = "multi_lora_raft"
    agent = "multi_lora_raft"
    options = {experts = {hotpotqa = "raft_hotpotqa", popqa = "raft_popqa", pubmedqa = "raft_pubmedqa"},
               router = "prototype", mode = "top1"}

``router`` is ``prototype`` (default: each expert's stored mean training-question embedding),
``gate`` (``gate_dir`` = a trained gate), ``dataset`` (the caller's dataset tag, with a
``fallback`` router) or ``manual`` (``expert``). A caller's ``expert`` tag overrides any router.
With several experts chosen (``mode`` = ``top2`` or ``soft``), their LoRAs are combined by weight
into one adapter (``LocalChatModel.mix_adapters``). The choice and the router's probabilities are
stored with the interaction (``details``).
"""

from __future__ import annotations

from typing import Any

from agents import prompts
from agents.base import Agent, AgentContext, Answer
from agents.hookspecs import hookimpl
from core.errors import InputError
from core.types import Hit, Message
from training.raft import RAFT_SYSTEM, raft_messages
from training.teacher import final_answer

DEFAULT_EXPERTS = {"hotpotqa": "raft_hotpotqa", "popqa": "raft_popqa", "pubmedqa": "raft_pubmedqa"}


class FtAgent(Agent):
    """A LoRA fine-tuned on question → answer, answering closed-book."""

    name = "ft"
    needs_retrieval = False
    default_system_prompt = prompts.CLOSED_BOOK_SYSTEM
    description = "LoRA fine-tuned on questions and answers, no retrieval."
    default_adapter = "ft"

    def adapter_names(self) -> list[str]:
        return [self.arm.adapter or self.default_adapter]

    def _system(self, ctx: AgentContext, adapter: str) -> str:
        meta = ctx.adapter_meta(adapter)
        return self.arm.prompt or (meta.get("prompt") or {}).get("system") or self.system_prompt

    def answer(self, question: str, passages: list[Hit], ctx: AgentContext) -> Answer:
        adapter = self.adapter_names()[0]
        messages = [
            Message("system", self._system(ctx, adapter)),
            *ctx.history,
            Message("user", prompts.CLOSED_BOOK_USER.format(question=question)),
        ]
        text, usage = self.generate_with(messages, ctx, ctx.adapter(adapter))
        return Answer(text=final_answer(text), usage=usage, details={"adapter": adapter})


class RaftAgent(Agent):
    """One RAFT LoRA answering from the retrieved passages, in its training prompt format."""

    name = "raft"
    needs_retrieval = True
    default_system_prompt = RAFT_SYSTEM
    description = "RAFT LoRA: trained to use the evidence and ignore distractors."
    default_adapter = "raft"

    def adapter_names(self) -> list[str]:
        return [self.arm.adapter or self.default_adapter]

    def raft_chat(
        self, question: str, shown: list[Hit], ctx: AgentContext, meta: dict[str, Any]
    ) -> list[Message]:
        prompt = meta.get("prompt") or {}
        system = self.arm.prompt or prompt.get("system") or self.system_prompt
        msgs = raft_messages(
            question,
            [h.passage for h in shown],
            system=system,
            max_words=prompt.get("max_passage_words", 120),
        )
        return [
            Message("system", msgs[0]["content"]),
            *ctx.history,
            Message("user", msgs[1]["content"]),
        ]

    def run(
        self, question: str, passages: list[Hit], ctx: AgentContext, adapter: str, loaded: str
    ) -> Answer:
        shown = self.top(passages)
        messages = self.raft_chat(question, shown, ctx, ctx.adapter_meta(adapter))
        text, usage = self.generate_with(messages, ctx, loaded)
        text = final_answer(text)
        return Answer(text=text, cited_ids=self.cite(text, shown), usage=usage)

    def answer(self, question: str, passages: list[Hit], ctx: AgentContext) -> Answer:
        adapter = self.adapter_names()[0]
        ans = self.run(question, passages, ctx, adapter, ctx.adapter(adapter))
        ans.details["adapter"] = adapter
        return ans


class MultiLoraRaftAgent(RaftAgent):
    """Several RAFT experts on one base model, with an expert router per question."""

    name = "multi_lora_raft"
    description = "RAFT LoRA experts (multi-hop, long-tail, biomedical) with an expert router."

    def __init__(self, arm: Any) -> None:
        super().__init__(arm)
        experts = arm.options.get("experts", DEFAULT_EXPERTS)
        if not isinstance(experts, dict) or not experts:
            raise InputError(f"arm {arm.name!r}: options.experts must map expert → adapter name")
        self.experts: dict[str, str] = {str(k): str(v) for k, v in experts.items()}
        self._router: Any = None
        self._router_key: tuple = ()

    def adapter_names(self) -> list[str]:
        return list(self.experts.values())

    def router(self, ctx: AgentContext) -> Any:
        from routers.experts import build_expert_router

        # Rebuilt when an expert's version changes (a new prototype comes with it).
        key = tuple(ctx.adapter(a) for a in self.experts.values())
        if self._router is None or key != self._router_key:
            spec = {k: v for k, v in self.arm.options.items() if k != "experts"}
            prototypes = None
            if spec.get("router", "prototype") in ("prototype", "dataset"):
                protos = {e: ctx.adapter_meta(a).get("prototype") for e, a in self.experts.items()}
                if all(protos.values()) and "prototypes" not in spec and "descriptions" not in spec:
                    prototypes = protos
            self._router = build_expert_router(
                spec, list(self.experts), embed=ctx.embed, prototypes=prototypes
            )
            self._router_key = key
        return self._router

    def answer(self, question: str, passages: list[Hit], ctx: AgentContext) -> Answer:
        from routers.experts import ManualRouter

        override = ctx.tags.get("expert")
        if override:
            if override not in self.experts:
                raise InputError(f"unknown expert {override!r}; experts: {sorted(self.experts)}")
            choice = ManualRouter(override, list(self.experts)).route(question)
        else:
            router = self.router(ctx)
            embedding = None
            if getattr(router, "needs_embedding", False) and ctx.embed is not None:
                embedding = ctx.embed([question])[0]
            choice = router.route(question, embedding, dataset=ctx.tags.get("dataset"))
        # Mixing weights in steps of 0.1: mixtures are built once and reused (an LRU of a few),
        # not rebuilt for every question's slightly different soft weights.
        coarse = {e: round(w, 1) for e, w in choice.weights.items() if round(w, 1) > 0}
        coarse = coarse or {choice.top(): 1.0}
        total = sum(coarse.values())
        weights = {ctx.adapter(self.experts[e]): w / total for e, w in coarse.items()}
        if len(weights) == 1:
            loaded = next(iter(weights))
        else:
            mix = getattr(ctx.model, "mix_adapters", None)
            if mix is None:  # a backend that cannot combine LoRAs: the most probable expert
                loaded = ctx.adapter(self.experts[choice.top()])
            else:
                loaded = mix(weights)
        lead = self.experts[choice.top()]
        ans = self.run(question, passages, ctx, lead, loaded)
        ans.details.update({"experts": choice.to_dict(), "adapter": lead})
        return ans


@hookimpl
def register_agents(register):  # noqa: ANN001, ANN201 - pluggy hook signature
    register(FtAgent)
    register(RaftAgent)
    register(MultiLoraRaftAgent)
