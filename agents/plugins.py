"""Load agent plugins: built-ins first, then the ``armada.agents`` entry-point group.

Built-in agents are plugins too: they register through the same hook as third-party ones.
Registration validates loudly: a malformed or duplicate agent name raises PluginError at load.
"""

from __future__ import annotations

import importlib
import inspect
from types import ModuleType

import pluggy

from agents import hookspecs
from agents.base import Agent
from core.config import check_name
from core.errors import PluginError

ENTRY_POINT_GROUP = "armada.agents"
BUILTIN_MODULES = ("agents.rag", "agents.closed_book", "agents.refrag", "agents.lora")


def plugin_manager(extra: list[ModuleType | object] | None = None, entry_points: bool = True):
    """A PluginManager with built-ins, entry-point plugins and ``extra`` (tests) registered."""
    pm = pluggy.PluginManager("armada")
    pm.add_hookspecs(hookspecs)
    for mod in BUILTIN_MODULES:
        pm.register(importlib.import_module(mod), name=mod)
    if entry_points:
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except Exception as e:  # an entry point that fails to import names itself here
            raise PluginError(f"an '{ENTRY_POINT_GROUP}' plugin failed to load: {e}") from e
    for plugin in extra or []:
        pm.register(plugin)
    return pm


def load_agents(
    extra: list[ModuleType | object] | None = None, entry_points: bool = True
) -> dict[str, type[Agent]]:
    """Every registered agent class by name. Raises PluginError on a bad or duplicate name."""
    registry: dict[str, type[Agent]] = {}

    def register(cls: type[Agent]) -> None:
        if not (inspect.isclass(cls) and issubclass(cls, Agent)):
            raise PluginError(f"register() takes an Agent subclass, got {cls!r}")
        if inspect.isabstract(cls):
            raise PluginError(f"agent {cls.__qualname__} does not implement answer()")
        name = getattr(cls, "name", None)
        try:
            check_name(name, "agent name")
        except ValueError as e:
            raise PluginError(f"{cls.__module__}.{cls.__qualname__}: {e}") from None
        if name in registry:
            other = registry[name]
            raise PluginError(
                f"agent name {name!r} is registered twice: by {other.__module__}.{other.__qualname__}"
                f" and by {cls.__module__}.{cls.__qualname__}"
            )
        registry[name] = cls

    plugin_manager(extra, entry_points).hook.register_agents(register=register)
    return registry
