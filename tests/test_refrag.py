"""The multi-hop arm: the loop always ends, hops are recorded, abstention and reward are explicit.

The model is scripted here (loop control is what is under test); tests/test_e2e_real.py runs the
arm with the real SmolLM2 and a real index.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from agents.base import AgentContext
from agents.refrag import RefragAgent
from agents.refrag.graph import build_refrag_graph, clean_query
from agents.refrag.support import check_support, multihop_reward
from core.config import ArmConfig
from core.types import Generation, Hit, Passage, Usage

SNAPSHOT = Path(__file__).parent / "snapshots" / "refrag.mmd"

CORPUS = [
    Passage(
        "p1",
        "Kiss and Tell is a 1945 comedy film starring Shirley Temple as Corliss Archer.",
        "Kiss and Tell (1945 film)",
    ),
    Passage(
        "p2",
        "Shirley Temple Black was an American actress who later served as Chief of Protocol of the United States.",
        "Shirley Temple",
    ),
    Passage("p3", "Meet Corliss Archer is an American radio sitcom.", "Meet Corliss Archer"),
    Passage("p4", "The Eiffel Tower is in Paris.", "Eiffel Tower"),
]
Q = "What government position was held by the woman who portrayed Corliss Archer in Kiss and Tell?"


class WordRetriever:
    """Ranks the fixed corpus by shared words with the query (a stand-in index)."""

    def __init__(self, corpus: list[Passage]) -> None:
        self.corpus, self.queries = corpus, []

    def search(self, query: str, k: int | None = None) -> list[Hit]:
        self.queries.append(query)
        q = set(query.lower().split())
        scored = sorted(
            self.corpus, key=lambda p: -len(q & set((p.title + " " + p.text).lower().split()))
        )
        return [
            Hit(p, score=1.0 / (i + 1))
            for i, p in enumerate(scored[: k or 4])
            if q & set((p.title + " " + p.text).lower().split())
        ]


class ScriptedModel:
    """Replies from a script by prompt kind (read / decide / answer)."""

    name, backend = "scripted", "test"

    def __init__(self, read: str, decide: str, answer: str) -> None:
        self.replies = {"look": read, "reply `ANSWER": decide, "Answer in a few": answer}
        self.calls = 0

    def generate(
        self,
        messages,
        *,
        adapter=None,
        max_new_tokens=None,
        temperature=None,
        on_token=None,
        cancel=None,
    ):
        self.calls += 1
        user = messages[-1].content
        text = next(v for k, v in self.replies.items() if k in user)
        if on_token:
            on_token(text)
        return Generation(text=text, usage=Usage(10, 3))


def _run(model, retriever=None, max_hops=3, passages=None):
    agent = RefragAgent(
        ArmConfig(name="refrag", agent="refrag", options={"max_hops": max_hops, "hop_k": 2})
    )
    retriever = retriever or WordRetriever(CORPUS)
    ctx = AgentContext(model=model, retriever=retriever, cancel=threading.Event())
    return agent.answer(Q, passages or [], ctx), retriever


def test_subgraph_shape_is_pinned():
    mermaid = build_refrag_graph().get_graph().draw_mermaid()
    if os.environ.get("ARMADA_UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(mermaid)
    assert mermaid == SNAPSHOT.read_text()


@pytest.mark.parametrize(
    "decide",
    [
        "SEARCH: Corliss Archer",  # repeats itself every hop
        "SEARCH:",  # empty query
        "SEARCH: ###!!!@@@ 123",  # garbage
        "\x00\x01 blah",  # neither ANSWER nor SEARCH
        "ANSWER: I don't know",  # an abstention is not an answer
    ],
)
@pytest.mark.parametrize("max_hops", [1, 2, 3])
def test_the_loop_always_ends_within_max_hops(decide, max_hops):
    model = ScriptedModel(read="", decide=decide, answer="Chief of Protocol")
    ans, retriever = _run(model, max_hops=max_hops)
    hops = ans.details["hops"]
    assert 1 <= len(hops) <= max_hops
    assert len(retriever.queries) == len(hops)
    assert len({h["query"].lower() for h in hops}) == len(hops)  # never the same query twice
    assert [h["hop"] for h in hops] == list(range(1, len(hops) + 1))


def test_a_bridge_hop_finds_the_second_passage_and_the_answer_cites_it():
    model = ScriptedModel(
        read="Shirley Temple",
        decide="SEARCH: Shirley Temple government position",
        answer="Chief of Protocol",
    )
    ans, retriever = _run(model, max_hops=2)
    hops = ans.details["hops"]
    assert hops[0]["query"] == Q and hops[1]["query"] == "Shirley Temple government position"
    found = {d["id"] for h in hops for d in h["documents"]}
    assert {"p1", "p2"} <= found
    assert ans.text == "Chief of Protocol" and "p2" in ans.cited_ids
    assert not ans.details["abstained"] and ans.details["stop_reason"] == "max_hops"
    assert {p.passage.id for p in ans.passages} == found


def test_garbage_follow_up_is_repaired_with_the_bridge_entity():
    model = ScriptedModel(read="Shirley Temple", decide="SEARCH: ???", answer="Chief of Protocol")
    ans, _ = _run(model, max_hops=2)
    assert ans.details["hops"][1]["query"].startswith("Shirley Temple ")


def test_it_stops_early_when_a_hop_brings_nothing_new():
    model = ScriptedModel(read="", decide="SEARCH: Kiss and Tell Corliss Archer", answer="x")
    ans, _ = _run(model, retriever=WordRetriever(CORPUS[:1]), max_hops=3)
    assert ans.details["stop_reason"] == "no_new_passages" and ans.details["hop_count"] == 2


def test_it_stops_when_the_model_can_answer_with_support():
    model = ScriptedModel(read="", decide="ANSWER: Shirley Temple", answer="unused")
    ans, _ = _run(model, max_hops=3)
    assert ans.details["stop_reason"] == "answerable" and ans.details["hop_count"] == 1
    assert ans.text == "Shirley Temple"


def test_unsupported_answer_becomes_the_abstention_phrase():
    model = ScriptedModel(read="", decide="SEARCH: Eiffel", answer="Napoleon Bonaparte")
    ans, _ = _run(model, max_hops=2)
    assert ans.text == "I don't know." and ans.details["abstained"] and ans.cited_ids == []


def test_cancel_stops_the_arm():
    model = ScriptedModel(read="", decide="SEARCH: x", answer="y")
    agent = RefragAgent(ArmConfig(name="refrag", agent="refrag"))
    ctx = AgentContext(model=model, retriever=WordRetriever(CORPUS), cancel=threading.Event())
    ctx.cancel.set()
    with pytest.raises(TimeoutError):
        agent.answer(Q, [], ctx)


def test_support_check_is_explicit():
    pairs = [(p.id, p.text) for p in CORPUS]
    assert check_support(Q, "Chief of Protocol", pairs).supported
    s = check_support(Q, "Napoleon", pairs)
    assert not s.supported and "no gathered passage" in s.reason
    s = check_support("Who designed the Eiffel Tower in Paris?", "Shirley Temple", pairs)
    assert not s.supported and "covers" in s.reason  # grounded in a passage about something else
    assert not check_support(Q, "I don't know.", pairs).supported


def test_multihop_reward_on_hand_made_traces():
    pairs = [("g1", "gold one"), ("g2", "gold two"), ("d1", "noise")]
    r = multihop_reward(
        "q",
        "Chief of Protocol",
        pairs,
        max_passages=6,
        gold_answers=["Chief of Protocol"],
        gold_ids=["g1", "g2"],
    )
    # quality 1, relevance 2/3, efficiency 1 - 2/6
    assert r["reward"] == pytest.approx(0.6 * 1 + 0.3 * (2 / 3) + 0.1 * (4 / 6))
    r = multihop_reward(
        "q", "wrong", pairs[:1], max_passages=6, gold_answers=["right"], gold_ids=["g1"]
    )
    assert r == {"reward": pytest.approx(0.4), "quality": 0.0, "relevance": 1.0, "efficiency": 1.0}
    r = multihop_reward("q", "I don't know", [], max_passages=6)
    assert r["quality"] == 0.5 and r["relevance"] == 0.0


@pytest.mark.parametrize(
    ("raw", "clean"),
    [("  Shirley Temple\nmore", "Shirley Temple"), ("###", ""), ("", ""), ("`x`", "")],
)
def test_clean_query(raw, clean):
    assert clean_query(raw) == clean
