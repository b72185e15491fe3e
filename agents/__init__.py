"""Agents: the pluggable generators the bandit routes between (each configured agent is an arm)."""

from agents.base import Agent, AgentContext, Answer
from agents.hookspecs import hookimpl

__all__ = ["Agent", "AgentContext", "Answer", "hookimpl"]
