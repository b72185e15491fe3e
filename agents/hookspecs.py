"""The whole plugin contract: one hook through which a plugin registers its agent classes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("armada")
hookimpl = pluggy.HookimplMarker("armada")


@hookspec
def register_agents(register: Callable[[type[Any]], None]) -> None:
    """Call ``register(AgentClass)`` for each agent this plugin provides."""
