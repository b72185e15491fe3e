"""Optional RAFT step: a teacher model writes chain-of-thought answers that quote their evidence.

    from training.teacher import add_chain_of_thought
    records, stats = add_chain_of_thought(records, teacher_model)

For each record the teacher sees the question, the context and the gold answer, and writes a short
reasoning quoting the context between ``##begin_quote##`` and ``##end_quote##``, ending with
``<ANSWER>: ...`` (the RAFT paper's format). A reply is kept only if every quote really occurs in
the context and the final answer matches the gold one; otherwise the record keeps its plain answer,
so a weak or misbehaving teacher never makes the data worse. The teacher is any ``ChatModel``: the
local default, a larger local model or an OpenAI-compatible server.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from core.metrics import normalize_answer

BEGIN, END, ANSWER = "##begin_quote##", "##end_quote##", "<ANSWER>:"
TEACHER_SYSTEM = (
    "You explain answers. Given a question, a context of numbered documents and the correct "
    "answer, write two or three sentences of reasoning that quote the supporting text of the "
    f"context exactly between {BEGIN} and {END}, then end with a line '{ANSWER} <the answer>'."
)
TEACHER_USER = "{user}\n\nCorrect answer: {answer}\nReasoning:"
_QUOTE_RE = re.compile(re.escape(BEGIN) + r"(.*?)" + re.escape(END), re.S)


def _squash(text: str) -> str:
    return " ".join(text.split()).lower()


def check_cot(reply: str, context: str, answer: str) -> str | None:
    """Why a chain-of-thought reply is unusable, or None when it is fine."""
    if ANSWER not in reply:
        return f"no '{ANSWER}' line"
    final = reply.rsplit(ANSWER, 1)[1].strip()
    if normalize_answer(final) != normalize_answer(answer):
        return "final answer differs from the gold answer"
    quotes = [q.strip() for q in _QUOTE_RE.findall(reply)]
    if not quotes:
        return "no quoted evidence"
    ctx = _squash(context)
    if any(_squash(q) not in ctx for q in quotes if q):
        return "a quote is not in the context"
    return None


def final_answer(text: str) -> str:
    """The answer part of a (possibly chain-of-thought) reply."""
    return text.rsplit(ANSWER, 1)[1].strip() if ANSWER in text else text.strip()


def add_chain_of_thought(
    records: Sequence[dict[str, Any]],
    teacher: Any,
    *,
    max_new_tokens: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Records with chain-of-thought answers where the teacher's reply passes :func:`check_cot`."""
    out, stats = [], {"cot": 0, "kept_plain": 0}
    reasons: dict[str, int] = {}
    for i, rec in enumerate(records):
        msgs = rec["messages"]
        user = next(m["content"] for m in msgs if m["role"] == "user")
        answer = msgs[-1]["content"]
        prompt = [
            {"role": "system", "content": TEACHER_SYSTEM},
            {"role": "user", "content": TEACHER_USER.format(user=user, answer=answer)},
        ]
        try:
            reply = teacher.generate(prompt, max_new_tokens=max_new_tokens).text.strip()
            why = check_cot(reply, user, answer)
        except Exception as e:  # a failing teacher call keeps the plain record
            reply, why = "", f"teacher error: {type(e).__name__}"
        new = dict(rec)
        if why is None:
            new["messages"] = [*msgs[:-1], {"role": "assistant", "content": reply}]
            new["cot"] = True
            stats["cot"] += 1
        else:
            new["cot"] = False
            stats["kept_plain"] += 1
            reasons[why] = reasons.get(why, 0) + 1
        out.append(new)
        if progress:
            progress(i + 1, len(records))
    stats.update({f"rejected: {k}": v for k, v in sorted(reasons.items())})
    return out, stats
