"""Shared machinery of the learning policies: sampling, validation, the fold and arm lifecycle.

Every learning policy reduces to one pure function ``_probs(context) -> P(arm | context)``; the base
class samples ``select`` from it with a seeded numpy Generator, so the logged propensity is exactly
the probability the draw used, and ``action_probs`` (for off-policy evaluation) is the same function
read without touching any state. Learned state is a fold over ``(arm, context, reward)`` events:
``update`` applies one event, ``rebuild(events)`` resets and replays them, and ``state_dict`` is the
JSON-serialisable result, so incremental updates and a rebuild from the log are bit-for-bit equal.

Not run directly; ``tests/test_policies.py`` covers it.
"""

from __future__ import annotations

import json
import math
from abc import abstractmethod
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Self

import numpy as np

from core.errors import ArmadaError
from routers.base import Context, NoArmAvailable, Policy

Event = tuple[str, Context, float]
"""One logged outcome: ``(arm, context, reward)``."""

PriorSpec = float | tuple[float, float] | Sequence[float]
"""A Beta prior ``(alpha, beta)``, or an offline score ``s`` in [0, 1] read as
``Beta(1 + s*n0, 1 + (1 - s)*n0)`` with ``n0`` the policy's ``prior_weight``."""


class UnknownArm(ArmadaError, ValueError):
    """An update or lookup named an arm the policy does not route to."""


def check_reward(reward: float) -> float:
    """The reward as a float, or ValueError unless it is a finite number in [0, 1]."""
    r = float(reward)
    if not 0.0 <= r <= 1.0:  # also rejects NaN
        raise ValueError(f"reward must be in [0, 1], got {reward!r}")
    return r


def beta_prior(spec: PriorSpec, weight: float) -> tuple[float, float]:
    """Validate a prior spec (see ``PriorSpec``) and return ``(alpha, beta)``."""
    if isinstance(spec, int | float) and not isinstance(spec, bool):
        s = float(spec)
        if not 0.0 <= s <= 1.0:
            raise ValueError(f"a prior score must be in [0, 1], got {spec!r}")
        return 1.0 + s * weight, 1.0 + (1.0 - s) * weight
    a, b = (float(v) for v in spec)
    if not (a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"a Beta prior needs alpha > 0 and beta > 0, got {spec!r}")
    return a, b


def tie_probs(scores: np.ndarray) -> np.ndarray:
    """Uniform probability over the arms that share the highest score (ties broken at random)."""
    best = scores == scores.max()
    return best / best.sum()


class BanditPolicy(Policy):
    """Base of the learning policies: subclasses implement ``_probs``, ``_update`` and the state.

    Options shared by all: ``seed`` (int or None) seeds the numpy Generator used by ``select``;
    ``min_propensity`` f mixes P(arm) with uniform so every arm keeps probability >= f, which
    keeps the logs usable for evaluating other policies offline (IPS needs support everywhere).
    Unknown keyword options are ignored, as for every policy built through ``build_policy``.
    """

    def __init__(
        self,
        arms: Sequence[str],
        *,
        seed: int | None = None,
        min_propensity: float = 0.0,
        **options: Any,
    ) -> None:
        super().__init__(arms)
        if not 0.0 <= min_propensity <= 1.0 / len(self.arms):
            raise ValueError(f"min_propensity must be in [0, 1/len(arms)], got {min_propensity!r}")
        self.min_propensity = float(min_propensity)
        for arm in self.arms:
            self._check_name(arm, set())
        if len(set(self.arms)) != len(self.arms):
            raise ValueError(f"duplicate arm names in {self.arms}")
        self._pos = {arm: i for i, arm in enumerate(self.arms)}
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self._replaying = False

    # -- the one function each policy defines -------------------------------------------------
    @abstractmethod
    def _probs(self, context: Context) -> np.ndarray:
        """P(arm | context) over ``self.arms``; must not change any state (OPE reads it)."""

    @abstractmethod
    def _update(self, index: int, context: Context, reward: float) -> None:
        """Fold one validated event into the state."""

    @abstractmethod
    def _means(self, context: Context) -> np.ndarray:
        """Posterior or empirical mean reward per arm (for regret estimates)."""

    @abstractmethod
    def reset(self) -> None:
        """Forget every reward (priors, which are configuration, stay)."""

    @abstractmethod
    def _state(self) -> dict[str, Any]:
        """The learned state (and runtime priors) as JSON-ready values."""

    @abstractmethod
    def _set_state(self, state: dict[str, Any]) -> None:
        """Restore what ``_state`` returned (the arms are already set)."""

    @abstractmethod
    def _add_arm(self, name: str, prior: PriorSpec | None) -> None:
        """Validate ``prior`` and grow the state by one arm (appended last, after this call)."""

    @abstractmethod
    def _remove_arm(self, index: int) -> None:
        """Drop the state of the arm at ``index``."""

    # -- shared logic ----------------------------------------------------------------------------
    def _dist(self, context: Context) -> np.ndarray:
        p = self._probs(context)
        if self.min_propensity:
            f = min(self.min_propensity, 1.0 / p.size)  # the arm count may have grown
            p = f + (1.0 - f * p.size) * p
        return p

    def select(self, context: Context) -> tuple[str, float]:
        p = self._dist(context)
        c = np.cumsum(p)
        # u*total < total, so the index is in range and lands on an arm with p > 0.
        k = int(c.searchsorted(self.rng.random() * c[-1], side="right"))
        return self.arms[k], float(p[k])  # p sums to 1 up to rounding; action_probs gives the same

    def action_probs(self, context: Context) -> dict[str, float]:
        """P(arm | context) for every arm, without changing the policy (for OPE)."""
        return dict(zip(self.arms, self._dist(context).tolist(), strict=True))

    def means(self, context: Context) -> dict[str, float]:
        """The current mean-reward estimate of every arm in this context."""
        return dict(zip(self.arms, self._means(context).tolist(), strict=True))

    def update(self, arm: str, context: Context, reward: float) -> None:
        self._update(self.index(arm), context, check_reward(reward))

    def index(self, arm: str) -> int:
        try:
            return self._pos[arm]
        except KeyError:
            raise UnknownArm(
                f"unknown arm {arm!r} for policy {self.name!r}; arms: {self.arms}"
            ) from None

    def rebuild(self, events: Iterable[Event], *, strict: bool = False) -> Self:
        """Reset, then replay ``events`` in order; events of arms no longer routed to are skipped
        unless ``strict``. Equal to having called ``update`` on each event."""
        self.reset()
        self._replaying = True  # lets a policy skip per-event work that only the last state needs
        try:
            for arm, context, reward in events:
                if strict or arm in self._pos:
                    self.update(arm, context, reward)
        finally:
            self._replaying = False
        return self

    @classmethod
    def from_events(cls, arms: Sequence[str], events: Iterable[Event], **options: Any) -> Self:
        """A policy built with ``options`` whose state is the fold of ``events``."""
        return cls(arms, **options).rebuild(events)

    def add_arm(self, name: str, prior: PriorSpec | None = None) -> None:
        """Start routing to ``name``; ``prior`` warm-starts it (see ``PriorSpec``)."""
        self._check_name(name, self._pos)
        self._add_arm(name, prior)
        self.arms.append(name)
        self._pos[name] = len(self.arms) - 1

    def remove_arm(self, name: str) -> None:
        """Stop routing to ``name`` and forget its statistics."""
        i = self.index(name)
        if len(self.arms) == 1:
            raise NoArmAvailable(f"cannot remove {name!r}: it is the last arm")
        self._remove_arm(i)
        del self.arms[i]
        self._pos = {arm: j for j, arm in enumerate(self.arms)}

    def config(self) -> dict[str, Any]:
        """The options that shape the state (saved with it)."""
        return {"seed": self.seed, "min_propensity": self.min_propensity}

    def state_dict(self) -> dict[str, Any]:
        """The learned state with the arms and options that produced it; JSON-serialisable."""
        return {
            "policy": self.name,
            "config": self.config(),
            "arms": list(self.arms),
        } | self._state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict`` saved by a policy of the same kind and options (seed aside)."""
        if state.get("policy") != self.name:
            raise ValueError(f"state of policy {state.get('policy')!r} given to {self.name!r}")
        mine = json.loads(json.dumps(self.config() | {"seed": None}))
        if mine != state["config"] | {"seed": None}:
            raise ValueError(
                f"state saved with options {state['config']}, this policy has {self.config()};"
                " rebuild it from the events instead"
            )
        if not state["arms"]:
            raise NoArmAvailable("a saved state with no arms cannot be loaded")
        self.arms = list(state["arms"])
        self._pos = {arm: i for i, arm in enumerate(self.arms)}
        self._set_state(state)

    @staticmethod
    def _check_name(name: str, taken: Mapping[str, int] | set[str]) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"an arm name must be a non-empty string, got {name!r}")
        if name in taken:
            raise ValueError(f"arm {name!r} already exists")


class Cell:
    """The statistics of one context key: (discounted) pulls ``n`` and reward sums ``s`` per arm."""

    __slots__ = ("n", "recent", "s", "t", "version")

    def __init__(self, k: int, windowed: bool) -> None:
        self.n = np.zeros(k)
        self.s = np.zeros(k)
        self.t = 0  # undiscounted number of updates (drives a decaying ε)
        self.version = 0  # bumped on every update; keys the probability cache
        self.recent: deque[tuple[str, float]] | None = deque() if windowed else None


class CountingPolicy(BanditPolicy):
    """Base of Thompson sampling, UCB1 and ε-greedy: per-(category, arm) reward counts.

    Options: ``per_category`` (default True) keys the statistics by ``context["category"]``
    (missing → ``"*"``); ``prior`` (default ``(1, 1)``) and ``priors`` give Beta priors, looked up
    (category, arm) first, then arm, then ``prior``. ``priors`` maps an arm name to a ``PriorSpec``,
    a ``(category, arm)`` tuple to one, or a category to ``{arm: PriorSpec}`` (the TOML-friendly
    form). UCB1 and ε-greedy read a prior as ``alpha − 1`` successes and ``beta − 1`` failures
    already seen. ``prior_weight`` is ``n0`` for score priors. For non-stationary arms, either
    ``discount`` γ in (0, 1] multiplies the past statistics of a key on each of its updates, or
    ``window`` keeps only the last N rewards of each key. Priors are never discounted.
    """

    def __init__(
        self,
        arms: Sequence[str],
        *,
        seed: int | None = None,
        per_category: bool = True,
        prior: PriorSpec = (1.0, 1.0),
        priors: Mapping[Any, Any] | None = None,
        prior_weight: float = 10.0,
        discount: float = 1.0,
        window: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(arms, seed=seed, **options)
        if not 0.0 < discount <= 1.0:
            raise ValueError(f"discount must be in (0, 1], got {discount!r}")
        if window is not None and (window < 1 or discount != 1.0):
            raise ValueError("window must be >= 1 and cannot be combined with discount")
        if prior_weight < 0:
            raise ValueError(f"prior_weight must be >= 0, got {prior_weight!r}")
        self.per_category, self.discount, self.window = per_category, float(discount), window
        self.prior_weight = float(prior_weight)
        self.prior = beta_prior(prior, self.prior_weight)
        self.priors: dict[tuple[str | None, str], tuple[float, float]] = {}
        for key, value in (priors or {}).items():
            if isinstance(value, Mapping):
                for arm, spec in value.items():
                    self.priors[(str(key), arm)] = beta_prior(spec, self.prior_weight)
            elif isinstance(key, tuple):
                self.priors[(str(key[0]), key[1])] = beta_prior(value, self.prior_weight)
            else:
                self.priors[(None, key)] = beta_prior(value, self.prior_weight)
        self.reset()

    @abstractmethod
    def _cell_probs(self, key: str, a0: np.ndarray, b0: np.ndarray, cell: Cell) -> np.ndarray:
        """P(arm) from a key's priors and statistics."""

    def config(self) -> dict[str, Any]:
        return super().config() | {
            "per_category": self.per_category,
            "prior": list(self.prior),
            "prior_weight": self.prior_weight,
            "discount": self.discount,
            "window": self.window,
        }

    def reset(self) -> None:
        self.cells: dict[str, Cell] = {}
        self._invalidate()

    def _invalidate(self) -> None:
        self._cache: dict[str, tuple[int, np.ndarray]] = {}
        self._prior_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def key(self, context: Context) -> str:
        category = context.get("category") if self.per_category else None
        return "*" if category is None else str(category)

    def prior_arrays(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Beta ``(alpha0, beta0)`` per arm for one key."""
        if key not in self._prior_cache:
            ab = [
                self.priors.get((key, a)) or self.priors.get((None, a)) or self.prior
                for a in self.arms
            ]
            self._prior_cache[key] = (np.array([p[0] for p in ab]), np.array([p[1] for p in ab]))
        return self._prior_cache[key]

    def _stats(self, context: Context) -> tuple[str, Cell]:
        key = self.key(context)
        return key, self.cells.get(key) or Cell(len(self.arms), False)  # unseen: not stored

    def _probs(self, context: Context) -> np.ndarray:
        key, cell = self._stats(context)
        hit = self._cache.get(key)
        return hit[1] if hit is not None and hit[0] == cell.version else self._refresh(key, cell)

    def _refresh(self, key: str, cell: Cell) -> np.ndarray:
        p = self._cell_probs(key, *self.prior_arrays(key), cell)
        self._cache[key] = (cell.version, p)
        return p

    @staticmethod
    def pseudo(a0: np.ndarray, b0: np.ndarray, cell: Cell) -> tuple[np.ndarray, ...]:
        """``(n, s, prior_mean)``: pulls and reward sums with the prior read as pseudo-pulls."""
        s0 = np.maximum(a0 - 1.0, 0.0)
        return cell.n + s0 + np.maximum(b0 - 1.0, 0.0), cell.s + s0, a0 / (a0 + b0)

    def pseudo_counts(self, context: Context) -> tuple[np.ndarray, ...]:
        key, cell = self._stats(context)
        return self.pseudo(*self.prior_arrays(key), cell)

    def _means(self, context: Context) -> np.ndarray:
        n, s, prior_mean = self.pseudo_counts(context)
        return np.where(n > 0, s / np.where(n > 0, n, 1.0), prior_mean)

    def _update(self, index: int, context: Context, reward: float) -> None:
        key = self.key(context)
        cell = self.cells.get(key)
        if cell is None:
            cell = self.cells[key] = Cell(len(self.arms), self.window is not None)
        if self.discount != 1.0:
            cell.n *= self.discount
            cell.s *= self.discount
        cell.n[index] += 1.0
        cell.s[index] += reward
        cell.t += 1
        cell.version += 1
        if cell.recent is not None:
            cell.recent.append((self.arms[index], reward))
            if len(cell.recent) > self.window:
                old, r = cell.recent.popleft()
                j = self._pos[old]
                cell.n[j] -= 1.0
                cell.s[j] = min(max(cell.s[j] - r, 0.0), cell.n[j])  # no float drift below 0
        if not self._replaying:
            # Refresh P(arm) now, off the decision path: the next select reads it from the cache.
            self._refresh(key, cell)

    def _add_arm(self, name: str, prior: PriorSpec | None) -> None:
        ab = None if prior is None else beta_prior(prior, self.prior_weight)
        for cell in self.cells.values():
            cell.n, cell.s = np.append(cell.n, 0.0), np.append(cell.s, 0.0)
            cell.version += 1
        if ab is not None:
            self.priors[(None, name)] = ab
        self._invalidate()

    def _remove_arm(self, index: int) -> None:
        name = self.arms[index]
        for cell in self.cells.values():
            cell.n, cell.s = np.delete(cell.n, index), np.delete(cell.s, index)
            cell.version += 1
            if cell.recent is not None:
                cell.recent = deque(e for e in cell.recent if e[0] != name)
        self.priors = {k: v for k, v in self.priors.items() if k[1] != name}
        self._invalidate()

    def _state(self) -> dict[str, Any]:
        return {
            "priors": [[c, a, ab[0], ab[1]] for (c, a), ab in self.priors.items()],
            "cells": {
                key: {
                    "n": c.n.tolist(),
                    "s": c.s.tolist(),
                    "t": c.t,
                    "recent": None if c.recent is None else [list(e) for e in c.recent],
                }
                for key, c in self.cells.items()
            },
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        self.priors = {(c, a): (float(x), float(y)) for c, a, x, y in state["priors"]}
        self.cells = {}
        for key, d in state["cells"].items():
            cell = self.cells[key] = Cell(len(self.arms), d["recent"] is not None)
            cell.n, cell.s, cell.t = np.array(d["n"], float), np.array(d["s"], float), int(d["t"])
            if d["recent"] is not None:
                cell.recent = deque((a, float(r)) for a, r in d["recent"])
        self._invalidate()
