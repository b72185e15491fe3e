"""LinUCB (disjoint: one ridge regression per arm) over a compact feature vector of the question.

Features: ``[1 (bias), project(context["embedding"], embed_dim, projection_seed), one-hot category]``.
The embedding part is zero when the context has none; categories get a one-hot slot the first time
an *update* sees them (a new slot is exactly what the model would hold had the feature always been
there and been 0), so the feature layout is itself a fold of the log. ``select`` picks the arm with
the highest x·θ_a + alpha·sqrt(x' A_a⁻¹ x), ties broken at random, so its propensity is 1/|ties|.

``build_policy("linucb", arms, alpha=1.0, ridge=8.0, center=0.5, embed_dim=32, projection_seed=0,
categories=(), priors={"rag": 0.7}, prior_weight=10, seed=0)``. Rewards are regressed as
``reward − center``, so an arm with little data is shrunk towards 0.5, not 0. ``ridge`` = 8 is a
prior sd of about 0.5/√8 ≈ 0.18 on each weight: with ridge 1 the 32 embedding directions kept the
confidence widths wide for hundreds of pulls (~15% of traffic still exploring at round 2,000 on the
benchmark's contextual problem). A prior (see ``PriorSpec``) is read as pseudo-pulls on the bias
feature. A⁻¹ is kept by Sherman–Morrison updates (O(d²) per update, exactly symmetric).

Not run directly; see ``evals/bench/bandit.py`` and ``tests/test_policies.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from routers.base import Context, register_policy
from routers.stats import BanditPolicy, PriorSpec, beta_prior, tie_probs


@lru_cache(maxsize=16)
def _projection(in_dim: int, dim: int, seed: int) -> np.ndarray:
    m = np.random.default_rng(seed).standard_normal((dim, in_dim)) / math.sqrt(dim)
    m.setflags(write=False)
    return m


def project(embedding: Sequence[float] | np.ndarray, dim: int = 32, seed: int = 0) -> np.ndarray:
    """A seeded Gaussian random projection of ``embedding`` to ``dim`` dimensions.

    Entries are N(0, 1/dim), so norms and angles are kept up to O(1/sqrt(dim)) distortion
    (Johnson–Lindenstrauss); the same ``(len(embedding), dim, seed)`` always gives the same matrix.
    """
    e = np.asarray(embedding, dtype=float)
    if e.ndim != 1 or e.size == 0 or not np.isfinite(e).all():
        raise ValueError("an embedding must be a non-empty 1-D vector of finite numbers")
    return _projection(e.size, dim, seed) @ e


@register_policy
class LinUCBPolicy(BanditPolicy):
    """Disjoint LinUCB (Li et al., 2010) with ridge ``ridge`` and exploration weight ``alpha``."""

    name = "linucb"

    def __init__(
        self,
        arms: Sequence[str],
        *,
        seed: int | None = None,
        alpha: float = 1.0,
        ridge: float = 8.0,
        embed_dim: int = 32,
        projection_seed: int = 0,
        categories: Sequence[str] = (),
        priors: Mapping[str, PriorSpec] | None = None,
        prior_weight: float = 10.0,
        center: float = 0.5,
        **options: Any,
    ) -> None:
        super().__init__(arms, seed=seed, **options)
        self.center = float(center)
        if not (alpha >= 0 and ridge > 0 and embed_dim >= 0):
            raise ValueError("LinUCB needs alpha >= 0, ridge > 0 and embed_dim >= 0")
        self.alpha, self.ridge, self.prior_weight = float(alpha), float(ridge), float(prior_weight)
        self.embed_dim, self.projection_seed = int(embed_dim), int(projection_seed)
        self.initial_categories = [str(c) for c in categories]
        self.priors = {arm: beta_prior(p, self.prior_weight) for arm, p in (priors or {}).items()}
        self.reset()

    def config(self) -> dict[str, Any]:
        return super().config() | {
            "alpha": self.alpha,
            "ridge": self.ridge,
            "embed_dim": self.embed_dim,
            "projection_seed": self.projection_seed,
            "categories": self.initial_categories,
            "prior_weight": self.prior_weight,
            "center": self.center,
        }

    @property
    def dim(self) -> int:
        return 1 + self.embed_dim + len(self.categories)

    def reset(self) -> None:
        self.categories = list(self.initial_categories)
        self._cat_pos = {c: i for i, c in enumerate(self.categories)}
        fresh = [self._fresh(arm) for arm in self.arms]
        self.A_inv = np.stack([f[0] for f in fresh])  # (arms, d, d), kept exactly symmetric
        self.b = np.stack([f[1] for f in fresh])  # (arms, d)

    def _fresh(self, arm: str) -> tuple[np.ndarray, np.ndarray]:
        """A⁻¹ and b of an arm with no data: the ridge, plus its prior as pseudo-pulls on the bias."""
        a_inv, b = np.eye(self.dim) / self.ridge, np.zeros(self.dim)
        if arm in self.priors:
            wins, losses = (max(v - 1.0, 0.0) for v in self.priors[arm])
            a_inv[0, 0] = 1.0 / (self.ridge + wins + losses)
            b[0] = wins - self.center * (wins + losses)
        return a_inv, b

    def features(self, context: Context) -> np.ndarray:
        """The feature vector x of a context."""
        x = np.zeros(self.dim)
        x[0] = 1.0
        emb = context.get("embedding")
        if emb is not None and self.embed_dim:
            x[1 : 1 + self.embed_dim] = project(emb, self.embed_dim, self.projection_seed)
        category = context.get("category")
        slot = None if category is None else self._cat_pos.get(str(category))
        if slot is not None:
            x[1 + self.embed_dim + slot] = 1.0
        return x

    def _fit(self, context: Context) -> tuple[np.ndarray, np.ndarray]:
        """Per arm: the mean x·θ (θ = A⁻¹b, so x·θ = b·A⁻¹x for symmetric A⁻¹) and x' A⁻¹ x."""
        x = self.features(context)
        a_inv_x = self.A_inv @ x
        mean = (self.b * a_inv_x).sum(axis=1) + self.center
        return mean, np.maximum(a_inv_x @ x, 0.0)

    def _means(self, context: Context) -> np.ndarray:
        return self._fit(context)[0]

    def scores(self, context: Context) -> np.ndarray:
        """The upper confidence bound of every arm."""
        mean, var = self._fit(context)
        return mean + self.alpha * np.sqrt(var)

    def _probs(self, context: Context) -> np.ndarray:
        return tie_probs(self.scores(context))

    def _update(self, index: int, context: Context, reward: float) -> None:
        category = context.get("category")
        if category is not None and str(category) not in self._cat_pos:
            self._grow(str(category))
        x = self.features(context)
        a_inv = self.A_inv[index]
        v = a_inv @ x
        self.A_inv[index] = a_inv - np.outer(v, v) / (1.0 + x @ v)
        self.b[index] += (reward - self.center) * x

    def _grow(self, category: str) -> None:
        d = self.dim
        a_inv = np.zeros((len(self.arms), d + 1, d + 1))
        a_inv[:, :d, :d] = self.A_inv
        a_inv[:, d, d] = 1.0 / self.ridge
        self.A_inv, self.b = a_inv, np.pad(self.b, ((0, 0), (0, 1)))
        self._cat_pos[category] = len(self.categories)
        self.categories.append(category)

    def _add_arm(self, name: str, prior: PriorSpec | None) -> None:
        if prior is not None:
            self.priors[name] = beta_prior(prior, self.prior_weight)
        a_inv, b = self._fresh(name)
        self.A_inv, self.b = np.concatenate([self.A_inv, a_inv[None]]), np.vstack([self.b, b])

    def _remove_arm(self, index: int) -> None:
        self.priors.pop(self.arms[index], None)
        self.A_inv, self.b = np.delete(self.A_inv, index, axis=0), np.delete(self.b, index, axis=0)

    def _state(self) -> dict[str, Any]:
        return {
            "priors": {arm: list(p) for arm, p in self.priors.items()},
            "categories": list(self.categories),
            "A_inv": self.A_inv.tolist(),
            "b": self.b.tolist(),
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        self.priors = {arm: (float(a), float(b)) for arm, (a, b) in state["priors"].items()}
        self.categories = list(state["categories"])
        self._cat_pos = {c: i for i, c in enumerate(self.categories)}
        self.A_inv, self.b = np.array(state["A_inv"], float), np.array(state["b"], float)
