"""Safe rendering: model and document text is shown as text, never as HTML or markdown.

Answers and passages come from a model or from users' documents, so they may hold ``<script>``,
``<img onerror=…>``, ``javascript:`` links or markdown images pointing at outside hosts. Escaping
every markdown metacharacter makes Streamlit show them literally: no HTML is rendered and no image
is fetched. Bare URLs would still become links (GitHub-flavoured markdown finds them after escapes
are resolved), so long untrusted text (answers, passages, judge reasons) goes through ``text()``
(``st.text``: no parsing at all), and ``escape_markdown`` is kept for short values inside our own
markdown (arm names, titles in labels). Tables (``st.dataframe``) and ``st.json`` draw plain text.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from typing import Any, ParamSpec

import streamlit as st

from app.ui import state
from core.errors import ArmadaError

log = logging.getLogger(__name__)
P = ParamSpec("P")

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~=$:&])")


def escape_markdown(text: str) -> str:
    """Backslash-escape markdown/HTML metacharacters so the text renders literally."""
    return _MD_SPECIAL.sub(r"\\\1", str(text)).replace("\n", "  \n")


def snippet(text: str, n: int = 280) -> str:
    """The text on one line, cut to ``n`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def text(value: str, label: str = "") -> None:
    """Untrusted text as plain text (``st.text``: no markdown, no HTML, no autolinks); ``label``
    is ours and goes in front."""
    st.text(f"{label} {value}" if label else str(value))


def sources(items: list[tuple[str, str]], label: str = "Sources", chars: int = 400) -> None:
    """Passages ``(title, text)`` in an expander, each as plain text: title line, then a snippet."""
    if not items:
        return
    with st.expander(f"{label} ({len(items)})", icon=":material/library_books:"):
        for i, (title, body) in enumerate(items, 1):
            with st.container(border=True):
                st.text(f"[{i}] {title}")
                st.text(snippet(body, chars))


def stream_text(events: Iterable[dict[str, Any]], key: str) -> dict[str, Any]:
    """Show ``{"token": …}`` events as plain text as they come, clearing it on ``{"reset": arm}``
    (a failed arm before its fallback streams); return the ``{"result": …}`` event ({} if none).

    Not ``st.write_stream``: it renders strings as markdown, and bare URLs would become links.
    """
    box = st.container(key=key)  # a stable class (st-key-…) for browser tests and benchmarks
    slot, note = box.empty(), st.empty()
    shown = ""
    for ev in events:
        if "token" in ev:
            shown += ev["token"]
            slot.text(shown)
        elif "reset" in ev:
            shown = ""
            slot.empty()
            note.caption(f"Arm {escape_markdown(ev['reset'])} failed; falling back…")
        elif "result" in ev:
            return ev
    return {}


def friendly(e: BaseException) -> str:
    """One readable line for a person: our errors say what to do; others name their type."""
    if isinstance(e, ArmadaError):
        return str(e)
    return f"Something went wrong ({type(e).__name__}): {e}. The details are in the server log."


def error(e: BaseException) -> None:
    """Show an exception as a readable message (never a traceback); log the traceback."""
    if isinstance(e, ArmadaError):  # expected (bad input, missing corpus…): no traceback
        log.warning("UI: %s", e)
    else:
        log.error("UI error: %s", e, exc_info=e)
    st.error(escape_markdown(friendly(e)), icon=":material/error:")


def show_deferred_errors() -> None:
    for message in state.take_errors():
        st.error(escape_markdown(message), icon=":material/error:")


def safe_callback(fn: Callable[P, Any]) -> Callable[P, None]:
    """A widget callback whose exceptions become a message on the page, not a traceback."""

    def wrapped(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as e:
            log.error("UI callback error: %s", e, exc_info=e)
            state.defer_error(friendly(e))

    return wrapped


def details(d: dict[str, Any]) -> None:
    """An agent's ``details`` (expert gate, hops, …) drawn by shape, whatever the agent."""
    for key, value in d.items():
        label = escape_markdown(key.replace("_", " "))
        if isinstance(value, dict) and value and all(_number(v) for v in value.values()):
            import pandas as pd

            st.markdown(f"**{label}**")  # e.g. an expert gate: expert → weight
            rows = pd.DataFrame({"name": [str(k) for k in value], "weight": list(value.values())})
            st.bar_chart(rows, x="name", y="weight", horizontal=True, height=160)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            st.markdown(f"**{label}** ({len(value)})")  # e.g. hops: one row per hop
            st.dataframe([{k: _cell(v) for k, v in row.items()} for row in value])
        elif isinstance(value, dict | list):
            st.markdown(f"**{label}**")
            st.json(value, expanded=False)
        else:
            text(str(value), label=f"{key.replace('_', ' ')}:")


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _cell(v: Any) -> Any:
    return v if isinstance(v, int | float | str | bool) or v is None else str(v)
