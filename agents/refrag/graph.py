"""The multi-hop subgraph: retrieve → read → decide → (retrieve again | answer).

```
START → retrieve → read → decide ─(search)→ retrieve
                             └─(answer)→ answer → END
```

Each hop records ``{hop, query, documents}``. The loop always ends: ``decide`` answers when the
hop cap is reached, when a hop brought no new passage, when the model can answer, or when the
follow-up query is empty, garbage or already asked (after one deterministic repair: the bridge
entity the read step found, or the top new passage's title, joined to the question).
"""

from __future__ import annotations

import re
from typing import Any, Literal, TypedDict

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph

from agents.refrag import prompts
from agents.refrag.support import check_support, is_abstention
from core.text import content_words
from core.types import Hit, Usage

_SEARCH = re.compile(r"search\s*:\s*(.+)", re.IGNORECASE)
_ANSWER = re.compile(r"answer\s*:\s*(.+)", re.IGNORECASE)
MAX_QUERY_CHARS = 200


class HopState(TypedDict, total=False):
    question: str
    query: str
    hop: int
    passages: list[dict[str, Any]]
    hops: list[dict[str, Any]]
    queries: list[str]
    notes: list[str]
    new_count: int
    next: str
    stop_reason: str
    draft: str
    answer: str
    cited: list[str]
    support: dict[str, Any]
    usage: dict[str, int]


def _ctx(config: RunnableConfig) -> Any:
    return config["configurable"]["refrag"]


def _fmt(passages: list[dict[str, Any]]) -> str:
    return "\n".join(f"[{i}] {p['title']}: {p['text']}" for i, p in enumerate(passages, 1))


def _add_usage(state: HopState, usage: Usage) -> dict[str, int]:
    u = dict(state.get("usage") or {})
    u["prompt_tokens"] = u.get("prompt_tokens", 0) + usage.prompt_tokens
    u["completion_tokens"] = u.get("completion_tokens", 0) + usage.completion_tokens
    return u


def clean_query(text: str) -> str:
    """A usable search query from model output, or "" when it is garbage."""
    text = text.strip().splitlines()[0] if text.strip() else ""
    text = re.sub(r"[`*\"<>\[\]{}]", " ", text)[:MAX_QUERY_CHARS]
    text = " ".join(text.split())
    letters = sum(ch.isalpha() for ch in text)
    return text if letters >= 3 and letters >= 0.5 * len(text.replace(" ", "")) else ""


def retrieve(state: HopState, config: RunnableConfig) -> dict[str, Any]:
    rc = _ctx(config)
    hop = state.get("hop", 0) + 1
    query = state["query"]
    seen = {p["id"] for p in state.get("passages", [])}
    if hop == 1 and rc.first_hits is not None:
        hits = rc.first_hits  # the main graph already retrieved for the question
    else:
        # Search past what earlier hops hold, so a follow-up that still resembles the question
        # brings its best *unseen* passages instead of the same top k again.
        hits = rc.search(query, rc.hop_k + len(seen))
    new = [{**h.to_dict(), "hop": hop, "query": query} for h in hits if h.passage.id not in seen][
        : rc.hop_k
    ]
    record = {"hop": hop, "query": query, "documents": [p["id"] for p in new]}
    return {
        "hop": hop,
        "passages": [*state.get("passages", []), *new],
        "hops": [*state.get("hops", []), record],
        "queries": [*state.get("queries", []), query],
        "new_count": len(new),
    }


def read(state: HopState, config: RunnableConfig) -> dict[str, Any]:
    rc = _ctx(config)
    new = [p for p in state["passages"] if p["hop"] == state["hop"]][:3]
    if not new or state["hop"] >= rc.max_hops:
        return {"notes": [*state.get("notes", []), ""]}
    text, usage = rc.generate(
        prompts.READ.format(question=state["question"], context=_fmt(new)), max_new_tokens=16
    )
    return {
        "notes": [*state.get("notes", []), clean_query(text)],
        "usage": _add_usage(state, usage),
    }


def decide(state: HopState, config: RunnableConfig) -> dict[str, Any]:
    rc = _ctx(config)
    if state["hop"] >= rc.max_hops:
        return {"next": "answer", "stop_reason": "max_hops"}
    if state.get("new_count", 0) == 0:
        return {"next": "answer", "stop_reason": "no_new_passages"}
    context = _fmt(state["passages"][: rc.max_context])
    text, usage = rc.generate(
        prompts.DECIDE.format(question=state["question"], context=context), max_new_tokens=24
    )
    upd: dict[str, Any] = {"usage": _add_usage(state, usage)}
    m = _ANSWER.search(text)
    if m and not is_abstention(m.group(1)):
        draft = m.group(1).strip()
        pairs = [(p["id"], p["text"]) for p in state["passages"]]
        if check_support(state["question"], draft, pairs).supported:
            return {**upd, "next": "answer", "stop_reason": "answerable", "draft": draft}
    m = _SEARCH.search(text)
    query = clean_query(m.group(1)) if m else ""
    asked = {q.lower() for q in state.get("queries", [])}
    if not query or query.lower() in asked or not content_words(query):
        query = _repair(state)
    if not query or query.lower() in asked:
        return {**upd, "next": "answer", "stop_reason": "no_new_query"}
    return {**upd, "next": "retrieve", "query": query}


def _repair(state: HopState) -> str:
    """Bridge entity (or the top new passage's title) + the question: a deterministic follow-up."""
    note = (state.get("notes") or [""])[-1]
    q_words = content_words(state["question"])
    if not note or content_words(note) <= q_words:
        new = [p for p in state["passages"] if p["hop"] == state["hop"]]
        titles = [
            p["title"] for p in new if p["title"] and not content_words(p["title"]) <= q_words
        ]
        note = titles[0] if titles else ""
    return f"{note} {state['question']}"[:MAX_QUERY_CHARS].strip() if note else ""


def route_after_decide(state: HopState) -> Literal["retrieve", "answer"]:
    return "retrieve" if state.get("next") == "retrieve" else "answer"


def answer(state: HopState, config: RunnableConfig) -> dict[str, Any]:
    rc = _ctx(config)
    # Newest hops last but kept: the bridge passage and the passage it led to are both shown.
    shown = sorted(state["passages"], key=lambda p: (p["hop"], -p["score"]))[: rc.max_context]
    if state.get("draft"):  # decide already answered, and the answer was supported
        text, usage = state["draft"], Usage()
        rc.emit(text)
    else:
        text, usage = rc.generate(
            prompts.ANSWER.format(question=state["question"], context=_fmt(shown)),
            max_new_tokens=rc.max_new_tokens,
            stream=True,
        )
    pairs = [(p["id"], p["text"]) for p in state["passages"]]
    support = check_support(state["question"], text, pairs)
    final = text if support.supported else rc.abstain_phrase
    return {
        "answer": final,
        "cited": support.cited if support.supported else [],
        "support": {"supported": support.supported, "reason": support.reason},
        "usage": _add_usage(state, usage),
    }


def build_refrag_graph() -> Any:
    g = StateGraph(HopState)
    g.add_node("retrieve", retrieve)
    g.add_node("read", read)
    g.add_node("decide", decide)
    g.add_node("answer", answer)
    g.add_edge(START, "retrieve")
    g.add_edge("retrieve", "read")
    g.add_edge("read", "decide")
    g.add_conditional_edges("decide", route_after_decide, ["retrieve", "answer"])
    g.add_edge("answer", END)
    return g.compile(name="refrag")


def hits_of(passages: list[dict[str, Any]]) -> list[Hit]:
    return [Hit.from_dict(p) for p in passages]
