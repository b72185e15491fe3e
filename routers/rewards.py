"""From a vote to the bandit's reward: the score itself, or cost-aware when configured.

reward = clip(score − cost_weight × cost, 0, 1), cost being the interaction's total latency in
seconds or its tokens in thousands. Off by default (cost_weight = 0): a slow right answer is still
right, and users who care about cost say so explicitly.
"""

from __future__ import annotations

from core.config import RewardConfig
from core.store import Interaction
from core.store.feedback import RewardFn


def interaction_cost(interaction: Interaction, kind: str) -> float:
    if kind == "ktokens":
        return (interaction.prompt_tokens + interaction.completion_tokens) / 1000
    return float((interaction.latency_ms or {}).get("total", 0.0)) / 1000


def reward_function(cfg: RewardConfig) -> RewardFn | None:
    """None (reward = score) unless a cost weight is set."""
    if cfg.cost_weight <= 0:
        return None

    def reward(interaction: Interaction, score: float) -> float:
        r = score - cfg.cost_weight * interaction_cost(interaction, cfg.cost)
        return min(1.0, max(0.0, r))

    return reward
