"""Agent plugins: built-ins load through the hook; bad and duplicate names fail loudly."""

from __future__ import annotations

import pytest

from agents.base import Agent, AgentContext, Answer
from agents.hookspecs import hookimpl
from agents.plugins import load_agents
from core.config import ArmConfig, Settings
from core.errors import PluginError
from tests.plugins_fixture import EchoAgent, TestAgents


def _plugin(*classes):
    class P:
        @hookimpl
        def register_agents(self, register):  # noqa: ANN001, ANN201
            for c in classes:
                register(c)

    return P()


def test_builtins_register_through_the_hook():
    agents = load_agents()
    assert {"rag", "closed_book"} <= set(agents)
    assert agents["rag"].needs_retrieval and not agents["closed_book"].needs_retrieval


def test_third_party_plugin_adds_agents():
    agents = load_agents(extra=[TestAgents()])
    assert agents["echo"] is EchoAgent


def test_duplicate_agent_name_names_both_sources():
    class Rag2(EchoAgent):
        name = "rag"

    with pytest.raises(PluginError, match="registered twice") as err:
        load_agents(extra=[_plugin(Rag2)])
    assert "agents.rag.RagAgent" in str(err.value) and "Rag2" in str(err.value)


@pytest.mark.parametrize("bad", ["Rag", "1rag", "rag-2", "", "x" * 49, None])
def test_malformed_agent_names_are_refused(bad):
    class Bad(EchoAgent):
        name = bad

    with pytest.raises(PluginError, match="invalid agent name"):
        load_agents(extra=[_plugin(Bad)])


def test_non_agent_and_abstract_classes_are_refused():
    with pytest.raises(PluginError, match="Agent subclass"):
        load_agents(extra=[_plugin(dict)])

    class Half(Agent):
        name = "half"

    with pytest.raises(PluginError, match="does not implement answer"):
        load_agents(extra=[_plugin(Half)])


def test_arm_names_are_validated_in_config():
    with pytest.raises(ValueError, match="invalid arm/agent name"):
        ArmConfig(name="Bad Name", agent="rag")
    with pytest.raises(ValueError, match="duplicate arm names"):
        Settings(arms=[ArmConfig(name="a", agent="rag"), ArmConfig(name="a", agent="rag")])


def test_arm_with_unknown_agent_fails_at_startup(settings):
    from app.runtime import Armada

    s = settings.model_copy(update={"arms": [ArmConfig(name="x", agent="nosuch")]})
    with pytest.raises(PluginError, match="arm 'x' uses agent 'nosuch'"):
        Armada(s)


def test_an_agent_answer_type():
    a = EchoAgent(ArmConfig(name="e", agent="echo"))
    ans = a.answer("hi", [], AgentContext(model=None))
    assert isinstance(ans, Answer) and ans.text == "echo: hi"
