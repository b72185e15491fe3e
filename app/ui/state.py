"""What the pages share in one process and one browser session: the runtime, the voter, errors.

Every page gets its services from ``runtime()``: an ``Armada`` built once per process from the
settings (``ARMADA_HOME``, ``ARMADA_CONFIG``, ``ARMADA_*``) and cached with ``st.cache_resource``.
Building it touches only SQLite; torch and the models load on the first question.

``provide_runtime(rt)`` makes every page of this process use ``rt`` instead: how a test (AppTest
runs the real entry script in the test's own process) or a program embedding the UI supplies an
``Armada`` built with its own plugins or settings. It is the one seam; pages never build services.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import streamlit as st

if TYPE_CHECKING:
    from app.runtime import Armada

_provided: Armada | None = None


def provide_runtime(rt: Armada | None) -> None:
    """Serve ``rt`` to every page of this process (``None`` goes back to building one)."""
    global _provided
    _provided = rt


@st.cache_resource(show_spinner="Opening Armada…")
def _built_runtime() -> Armada:
    from app.runtime import Armada

    return Armada()


def runtime() -> Armada:
    """The process's ``Armada``: the provided one, else built once from the settings."""
    return _provided if _provided is not None else _built_runtime()


def voter() -> str:
    """A random id for this browser session: one vote per voter and answer."""
    if "voter" not in st.session_state:
        st.session_state.voter = "ui-" + uuid.uuid4().hex[:12]
    return st.session_state.voter


def defer_error(message: str) -> None:
    """Keep an error raised in a widget callback for the page to show on this run."""
    st.session_state.setdefault("_errors", []).append(message)


def take_errors() -> list[str]:
    """The errors kept by callbacks since the last run (and forget them)."""
    return st.session_state.pop("_errors", [])
