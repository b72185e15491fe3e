"""Safe rendering helpers: model and document text is shown as text, never as HTML or markdown.

Answers and passages come from a model or from users' documents, so they may hold
``<script>``, ``<img onerror=…>``, ``javascript:`` links or markdown images pointing at outside
hosts. Escaping every markdown metacharacter makes Streamlit show them literally: no HTML is
rendered, no link is made and no image is fetched.
"""

from __future__ import annotations

import re

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~=$:&])")


def escape_markdown(text: str) -> str:
    """Backslash-escape markdown/HTML metacharacters so the text renders literally."""
    return _MD_SPECIAL.sub(r"\\\1", text).replace("\n", "  \n")


def snippet(text: str, n: int = 280) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"
