"""Expert routers: which LoRA expert(s) of a ``multi_lora_raft`` arm answer a question, and how much.

Every router maps a question (and its sentence embedding, when it needs one) to an
:class:`ExpertChoice`: the experts used with their mixing weights (summing to 1), the router's full
distribution over all experts (stored with the interaction) and the method that chose them.

- :class:`ManualRouter` — a fixed expert (the user's override).
- :class:`DatasetRouter` — the caller's dataset tag (``hotpotqa`` → the ``hotpotqa`` expert);
  without a tag, or with an unknown one, it defers to a fallback router.
- :class:`PrototypeRouter` — LoraRetriever-style: cosine similarity of the L2-normalised question
  embedding to each expert's L2-normalised prototype (the mean embedding of its training questions,
  or of a description); ``probs = softmax(similarity / temperature)``. With
  ``metric="mahalanobis"`` the distance to each expert's mean is measured under the experts'
  pooled within-expert covariance (linear discriminant analysis), fitted from training questions.
- :class:`GateRouter` — a small MLP (d → 64 → experts) trained on (embedding, expert) pairs by
  :func:`train_gate` and stored as ``gate.safetensors`` + ``gate.json`` (never pickle).

How the distribution becomes weights is :func:`select`: ``top1``, ``top2``/``topk`` (renormalised)
or ``soft`` (all experts above 1e-3, renormalised). :func:`build_expert_router` builds a router
from an arm's options, e.g. ``{"router": "dataset", "fallback": "prototype", "mode": "top1"}``.

Importing this module is cheap: torch is imported only by :func:`train_gate`; a trained gate runs
in numpy (fp32) and is read with ``safetensors.numpy``.

Measured by ``python -m evals.experts_eval`` on the shared benchmark files (400 questions per
dataset, 20% held out, MiniLM embeddings), top-1 accuracy over seeds 0/1/2: cosine prototypes of
the question means 88.8/87.9/85.4%, mahalanobis prototypes 97.5/96.2/95.4%, the gate
96.2/95.0/93.8%, cosine prototypes of one-line descriptions 79.2/77.9/78.8%. Nearly every error
is a HotpotQA question taken for PopQA or the reverse; PubMedQA is told apart at 95-99% by all.
"""

from __future__ import annotations

import json
import math
import os
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import InputError

Embed = Callable[[list[str]], np.ndarray]
"""Texts → an (n, d) array of embeddings, e.g. ``functools.partial(embed_texts, settings)``."""

MODES = ("top1", "top2", "topk", "soft")
ROUTERS = ("dataset", "gate", "manual", "prototype")
METRICS = ("cosine", "mahalanobis")
DEFAULT_TEMPERATURE = {"cosine": 0.05, "mahalanobis": 1.0}
SOFT_FLOOR = 1e-3
"""``soft`` selection drops experts whose probability is below this, then renormalises."""

PROTOTYPES_FORMAT = "armada-expert-prototypes"
GATE_FORMAT = "armada-expert-gate"
FORMAT_VERSION = 1
GATE_WEIGHTS, GATE_CONFIG = "gate.safetensors", "gate.json"
_GATE_TENSORS = ("w1", "b1", "w2", "b2")


# -- the choice and how weights are selected -----------------------------------------------------
@dataclass(frozen=True)
class ExpertChoice:
    """The experts that answer one question, and the router's view of all experts."""

    weights: dict[str, float]
    """The experts used and their mixing weights (summing to 1)."""
    probs: dict[str, float]
    """The router's full distribution over all experts (stored with the interaction)."""
    method: str
    """``"dataset"``, ``"prototype"``, ``"gate"`` or ``"manual"``."""

    def top(self) -> str:
        """The expert with the largest weight (ties: the more probable, then the first listed)."""
        order = {e: i for i, e in enumerate(self.probs)}
        return min(
            self.weights,
            key=lambda e: (-self.weights[e], -self.probs.get(e, 0.0), order.get(e, len(order))),
        )

    def to_dict(self, digits: int = 4) -> dict[str, Any]:
        """JSON-friendly, with rounded floats."""
        return {
            "method": self.method,
            "top": self.top(),
            "weights": {e: round(float(w), digits) for e, w in self.weights.items()},
            "probs": {e: round(float(p), digits) for e, p in self.probs.items()},
        }


def _check_mode(mode: str, k: int) -> None:
    if mode not in MODES:
        raise InputError(f"unknown expert selection mode {mode!r}; choose one of {list(MODES)}")
    if mode == "topk" and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
        raise InputError(f"topk selection needs an integer k >= 1, got {k!r}")


def select(probs: Mapping[str, float], mode: str = "top1", k: int = 2) -> dict[str, float]:
    """The mixing weights of a distribution over experts.

    ``top1`` → ``{best: 1.0}``; ``top2`` / ``topk`` → the ``2`` / ``k`` most probable experts with
    their probabilities renormalised; ``soft`` → every expert with probability >= 1e-3,
    renormalised. Ties are broken by the order of ``probs``.
    """
    _check_mode(mode, k)
    if not probs:
        raise InputError("cannot select experts from an empty distribution")
    items = [(e, float(p)) for e, p in probs.items()]
    if any(not math.isfinite(p) or p < 0 for _, p in items):
        raise InputError(f"expert probabilities must be finite and >= 0, got {dict(items)}")
    ranked = sorted(items, key=lambda item: -item[1])  # stable: ties keep the input order
    if mode == "top1":
        return {ranked[0][0]: 1.0}
    if mode == "soft":
        kept = [(e, p) for e, p in items if p >= SOFT_FLOOR] or ranked[:1]
    else:
        kept = ranked[: 2 if mode == "top2" else k]
    total = sum(p for _, p in kept)
    if total <= 0:
        return {e: 1.0 / len(kept) for e, _ in kept}
    return {e: p / total for e, p in kept}


# -- helpers -------------------------------------------------------------------------------------
def _normalise(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(n == 0, 1, n)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _check_experts(experts: Sequence[str]) -> list[str]:
    if isinstance(experts, str):
        raise InputError(f"experts must be a list of names, got the string {experts!r}")
    names = list(experts)
    if not names or not all(isinstance(e, str) and e.strip() for e in names):
        raise InputError(f"experts must be a non-empty list of names, got {names!r}")
    dupes = sorted(e for e, n in Counter(names).items() if n > 1)
    if dupes:
        raise InputError(f"duplicate expert names: {dupes}")
    return names


def _matrix(embeddings: Any, dim: int | None, what: str = "embeddings") -> np.ndarray:
    """``embeddings`` as an (n, d) float32 array of finite numbers, d == dim when given."""
    try:
        x = np.asarray(embeddings, dtype=np.float32)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be numeric arrays") from None
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] == 0:
        raise InputError(f"{what} must be a vector or an (n, d) matrix, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise InputError(
            f"{what} have {x.shape[1]} dimensions but the router expects {dim} "
            "(was it built with another embedding model?)"
        )
    if not np.isfinite(x).all():
        raise InputError(f"{what} contain NaN or infinite values")
    return x


def _distribution(experts: Sequence[str], p: np.ndarray) -> dict[str, float]:
    return {e: float(v) for e, v in zip(experts, p, strict=True)}


def _one_hot(experts: Sequence[str], chosen: str) -> dict[str, float]:
    return {e: 1.0 if e == chosen else 0.0 for e in experts}


# -- routers -------------------------------------------------------------------------------------
class ExpertRouter(ABC):
    """Chooses the expert(s) for a question. ``needs_embedding``: whether ``route`` uses one."""

    experts: list[str]
    needs_embedding: bool = False
    method: str = ""

    @abstractmethod
    def route(
        self, question: str, embedding: np.ndarray | None = None, *, dataset: str | None = None
    ) -> ExpertChoice:
        """The experts for ``question`` (``embedding``: its sentence embedding, when known)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(experts={self.experts!r})"


class _EmbeddingRouter(ExpertRouter):
    """A router over embeddings: uses the caller's embedding, or ``embed`` to compute one."""

    needs_embedding = True

    def __init__(self, experts: Sequence[str], dim: int, mode: str, k: int, embed: Embed | None):
        _check_mode(mode, k)
        self.experts = _check_experts(experts)
        self.dim, self.mode, self.k, self.embed = int(dim), mode, int(k), embed

    def _vector(self, question: str, embedding: np.ndarray | None) -> np.ndarray:
        if embedding is None:
            if self.embed is None:
                raise InputError(
                    f"the {self.method} expert router needs the question's embedding "
                    "(pass embedding=… or build the router with embed=…)"
                )
            embedding = np.asarray(self.embed([question]))[0]
        x = _matrix(embedding, self.dim, "the question embedding")
        if x.shape[0] != 1:
            raise InputError(f"route() takes one question embedding, got {x.shape[0]}")
        return x

    @abstractmethod
    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """An (n, experts) array of probabilities for an (n, d) array of embeddings."""

    def route(
        self, question: str, embedding: np.ndarray | None = None, *, dataset: str | None = None
    ) -> ExpertChoice:
        probs = _distribution(
            self.experts, self.predict_proba(self._vector(question, embedding))[0]
        )
        return ExpertChoice(select(probs, self.mode, self.k), probs, self.method)


class ManualRouter(ExpertRouter):
    """Always ``expert`` (the user's override); ``experts`` (default ``[expert]``) must hold it."""

    method = "manual"

    def __init__(self, expert: str, experts: Sequence[str] | None = None) -> None:
        self.experts = _check_experts(experts if experts is not None else [expert])
        if expert not in self.experts:
            raise InputError(f"unknown expert {expert!r}; choose one of {self.experts}")
        self.expert = expert

    def route(
        self, question: str, embedding: np.ndarray | None = None, *, dataset: str | None = None
    ) -> ExpertChoice:
        return ExpertChoice({self.expert: 1.0}, _one_hot(self.experts, self.expert), self.method)


class DatasetRouter(ExpertRouter):
    """The expert named by the caller's dataset tag; otherwise the ``fallback`` router's choice.

    ``mapping`` (dataset → expert, case-insensitive tags) extends the default identity mapping of
    every expert's own name. Without a tag, or with an unmapped one, the question goes to
    ``fallback``; with no fallback that is an :class:`InputError` naming the known tags.
    """

    method = "dataset"

    def __init__(
        self,
        mapping: Mapping[str, str] | None,
        experts: Sequence[str],
        fallback: ExpertRouter | None = None,
    ) -> None:
        self.experts = _check_experts(experts)
        table = {e.lower(): e for e in self.experts}
        for tag, expert in (mapping or {}).items():
            if expert not in self.experts:
                raise InputError(
                    f"dataset {tag!r} is mapped to unknown expert {expert!r}; "
                    f"choose one of {self.experts}"
                )
            table[str(tag).strip().lower()] = expert
        self.mapping = table
        if fallback is not None:
            extra = [e for e in fallback.experts if e not in self.experts]
            if extra:
                raise InputError(f"the fallback router knows experts {extra} that this arm lacks")
        self.fallback = fallback
        self.needs_embedding = bool(fallback and fallback.needs_embedding)

    def expert_for(self, dataset: str | None) -> str | None:
        """The expert of a dataset tag, or None when the tag is missing or unknown."""
        return self.mapping.get(dataset.strip().lower()) if dataset else None

    def route(
        self, question: str, embedding: np.ndarray | None = None, *, dataset: str | None = None
    ) -> ExpertChoice:
        expert = self.expert_for(dataset)
        if expert is not None:
            return ExpertChoice({expert: 1.0}, _one_hot(self.experts, expert), self.method)
        if self.fallback is None:
            what = f"unknown dataset tag {dataset!r}" if dataset else "no dataset tag"
            raise InputError(
                f"cannot choose an expert: {what}; known tags are {sorted(self.mapping)} "
                "(or configure a fallback router, e.g. 'fallback': 'prototype')"
            )
        choice = self.fallback.route(question, embedding)
        probs = {e: choice.probs.get(e, 0.0) for e in self.experts}
        return ExpertChoice(dict(choice.weights), probs, choice.method)


class PrototypeRouter(_EmbeddingRouter):
    """Nearest expert prototype; ``probs = softmax(score / temperature)``.

    ``metric="cosine"`` (LoraRetriever-style, the default): the score is the cosine similarity of
    the L2-normalised question embedding to each expert's L2-normalised prototype; the default
    temperature is 0.05.

    ``metric="mahalanobis"`` (nearest class mean under the experts' pooled, shrunk within-expert
    covariance S, i.e. linear discriminant analysis; see :meth:`from_embeddings`): the prototypes
    are stored pre-whitened, ``w_e = S⁻¹ m_e`` with ``bias_e = -½ m_eᵀ S⁻¹ m_e``, so the score
    ``x·w_e + bias_e`` is −½ the squared Mahalanobis distance from the (L2-normalised) question to
    the expert's mean ``m_e``, up to a term shared by all experts. At the default temperature 1
    the probabilities are LDA's posteriors under equal priors.
    """

    method = "prototype"

    def __init__(
        self,
        prototypes: Mapping[str, np.ndarray],
        mode: str = "top1",
        k: int = 2,
        temperature: float | None = None,
        *,
        metric: str = "cosine",
        bias: Mapping[str, float] | None = None,
        embed: Embed | None = None,
    ) -> None:
        if not prototypes:
            raise InputError("a prototype router needs at least one expert prototype")
        if metric not in METRICS:
            raise InputError(f"unknown prototype metric {metric!r}; choose one of {list(METRICS)}")
        experts = _check_experts(list(prototypes))
        rows = [_matrix(prototypes[e], None, f"the prototype of {e!r}") for e in experts]
        if any(r.shape[0] != 1 for r in rows):
            raise InputError("each prototype must be one vector (use from_embeddings for many)")
        dims = {r.shape[1] for r in rows}
        if len(dims) != 1:
            raise InputError(f"prototypes differ in dimension: {sorted(dims)}")
        matrix = np.concatenate(rows)
        if temperature is None:
            temperature = DEFAULT_TEMPERATURE[metric]
        if not (isinstance(temperature, int | float) and math.isfinite(temperature)) or (
            temperature <= 0
        ):
            raise InputError(f"temperature must be a positive number, got {temperature!r}")
        if metric == "cosine":
            if bias is not None:
                raise InputError("a bias is only used by the mahalanobis metric")
            if (np.linalg.norm(matrix, axis=1) == 0).any():
                raise InputError("a prototype is the zero vector")
            matrix, offsets = _normalise(matrix), np.zeros(len(experts))
        else:
            if bias is None or set(bias) != set(experts):
                raise InputError("mahalanobis prototypes need a bias for every expert")
            offsets = np.array([bias[e] for e in experts], dtype=np.float64)
            if not np.isfinite(offsets).all():
                raise InputError("mahalanobis prototype biases must be finite numbers")
        super().__init__(experts, dims.pop(), mode, k, embed)
        self.metric = metric
        self.prototypes = matrix.astype(np.float32)
        self.bias = offsets
        self.temperature = float(temperature)

    @classmethod
    def from_embeddings(
        cls,
        embeddings: Mapping[str, np.ndarray],
        *,
        metric: str = "cosine",
        shrinkage: float = 0.2,
        **options: Any,
    ) -> PrototypeRouter:
        """Prototypes from each expert's (n, d) training-question embeddings (L2-normalised).

        ``cosine``: each expert's mean embedding. ``mahalanobis``: the means whitened by the
        pooled within-expert covariance, shrunk toward a multiple of the identity,
        ``(1 - shrinkage)·S + shrinkage·(tr S / d)·I`` (needs two or more examples per expert).
        """
        if metric not in METRICS:
            raise InputError(f"unknown prototype metric {metric!r}; choose one of {list(METRICS)}")
        groups = {}
        for expert, e in embeddings.items():
            groups[expert] = _normalise(_matrix(e, None, f"the embeddings of {expert!r}")).astype(
                np.float64
            )
        dims = {x.shape[1] for x in groups.values()}
        if len(dims) > 1:
            raise InputError(f"expert embeddings differ in dimension: {sorted(dims)}")
        means = {e: x.mean(axis=0) for e, x in groups.items()}
        if metric == "cosine":
            return cls(means, metric="cosine", **options)
        if not 0.0 <= shrinkage <= 1.0:
            raise InputError(f"shrinkage must be in [0, 1], got {shrinkage!r}")
        few = [e for e, x in groups.items() if x.shape[0] < 2]
        if few:
            raise InputError(f"mahalanobis prototypes need two or more examples per expert: {few}")
        centred = np.concatenate([x - means[e] for e, x in groups.items()])
        d = centred.shape[1]
        cov = centred.T @ centred / max(centred.shape[0] - len(groups), 1)
        scale = float(np.trace(cov)) / d
        if scale <= 0:
            raise InputError("the expert embeddings do not vary: cannot fit mahalanobis prototypes")
        cov = (1.0 - shrinkage) * cov + shrinkage * scale * np.eye(d)
        m = np.stack(list(means.values()))
        try:
            w = np.linalg.solve(cov, m.T).T  # (experts, d): S⁻¹ m_e
        except np.linalg.LinAlgError:
            raise InputError("singular covariance: use shrinkage > 0 or more examples") from None
        bias = {e: float(-0.5 * m[i] @ w[i]) for i, e in enumerate(means)}
        protos = dict(zip(means, w, strict=True))
        return cls(protos, metric="mahalanobis", bias=bias, **options)

    @classmethod
    def from_descriptions(
        cls, embed: Embed, descriptions: Mapping[str, str | Sequence[str]], **options: Any
    ) -> PrototypeRouter:
        """Prototypes = the mean embedding of each expert's description(s) (or example questions)."""
        embeddings = {}
        for expert, text in descriptions.items():
            texts = [text] if isinstance(text, str) else list(text)
            if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
                raise InputError(f"expert {expert!r} needs a non-empty description")
            embeddings[expert] = np.asarray(embed(texts))
        options.setdefault("embed", embed)
        return cls.from_embeddings(embeddings, **options)

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, experts) scores of (n, d) embeddings: cosine similarities, or −½ Mahalanobis²."""
        x = _normalise(_matrix(embeddings, self.dim)).astype(np.float64)
        return x @ self.prototypes.T.astype(np.float64) + self.bias

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        return _softmax(self.scores(embeddings) / self.temperature)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly (lists of floats), e.g. to store next to an adapter."""
        out = {
            "format": PROTOTYPES_FORMAT,
            "version": FORMAT_VERSION,
            "experts": list(self.experts),
            "dim": self.dim,
            "metric": self.metric,
            "mode": self.mode,
            "k": self.k,
            "temperature": self.temperature,
            "prototypes": {
                e: [float(v) for v in row]
                for e, row in zip(self.experts, self.prototypes, strict=True)
            },
        }
        if self.metric != "cosine":
            out["bias"] = {e: float(b) for e, b in zip(self.experts, self.bias, strict=True)}
        return out

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, embed: Embed | None = None, **overrides: Any
    ) -> PrototypeRouter:
        """The router ``to_dict`` described (``overrides``: mode, k or temperature to change).

        :class:`InputError` when the data is not one.
        """
        if not isinstance(data, Mapping) or data.get("format") != PROTOTYPES_FORMAT:
            raise InputError(f"not expert prototypes (expected format {PROTOTYPES_FORMAT!r})")
        if data.get("version") != FORMAT_VERSION:
            raise InputError(
                f"expert prototypes of version {data.get('version')!r}; "
                f"this Armada reads version {FORMAT_VERSION}"
            )
        protos = data.get("prototypes")
        if not isinstance(protos, Mapping) or list(protos) != list(data.get("experts") or []):
            raise InputError("expert prototypes: 'prototypes' must hold one vector per expert")
        bias = data.get("bias")
        if bias is not None and not isinstance(bias, Mapping):
            raise InputError("expert prototypes: 'bias' must map each expert to a number")
        options = {
            "mode": data.get("mode", "top1"),
            "k": data.get("k", 2),
            "temperature": data.get("temperature"),
        }
        options.update({k: v for k, v in overrides.items() if v is not None})
        router = cls(
            {e: np.asarray(v, dtype=np.float32) for e, v in protos.items()},
            **options,
            metric=data.get("metric", "cosine"),
            bias=bias,
            embed=embed,
        )
        if router.dim != data.get("dim"):
            raise InputError(
                f"expert prototypes: vectors have {router.dim} dims, not {data.get('dim')}"
            )
        return router

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON to ``path``."""
        p = Path(path)
        _write_atomic(p, json.dumps(self.to_dict()).encode())
        return p

    @classmethod
    def load(
        cls, path: str | Path, *, embed: Embed | None = None, **overrides: Any
    ) -> PrototypeRouter:
        """Read prototypes saved by :meth:`save`."""
        return cls.from_dict(_read_json(Path(path)), embed=embed, **overrides)


# -- the gate ------------------------------------------------------------------------------------
@dataclass
class Gate:
    """A trained MLP gate: ``softmax(W2 · relu(W1 · normalise(x) + b1) + b2)``, fp32, in numpy."""

    experts: list[str]
    w1: np.ndarray  # (hidden, dim)
    b1: np.ndarray  # (hidden,)
    w2: np.ndarray  # (experts, hidden)
    b2: np.ndarray  # (experts,)
    metrics: dict[str, Any]

    @property
    def dim(self) -> int:
        return int(self.w1.shape[1])

    @property
    def hidden(self) -> int:
        return int(self.w1.shape[0])

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        x = _normalise(_matrix(embeddings, self.dim))
        h = np.maximum(x @ self.w1.T + self.b1, 0.0)
        return h @ self.w2.T + self.b2

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """An (n, experts) array of probabilities for (n, d) embeddings."""
        return _softmax(self.logits(embeddings).astype(np.float64))

    def save(self, folder: str | Path) -> Path:
        """Write ``gate.safetensors`` (the weights) and ``gate.json`` (experts, sizes, metrics)."""
        from safetensors.numpy import save

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {
            n: np.ascontiguousarray(getattr(self, n), dtype=np.float32) for n in _GATE_TENSORS
        }
        meta = {"format": GATE_FORMAT, "version": str(FORMAT_VERSION)}
        _write_atomic(out / GATE_WEIGHTS, save(tensors, metadata=meta))
        config = {
            "format": GATE_FORMAT,
            "version": FORMAT_VERSION,
            "experts": list(self.experts),
            "dim": self.dim,
            "hidden": self.hidden,
            "metrics": self.metrics,
        }
        _write_atomic(out / GATE_CONFIG, json.dumps(config, indent=2).encode())
        return out

    @classmethod
    def load(cls, folder: str | Path, *, experts: Sequence[str] | None = None) -> Gate:
        """Read a gate saved by :meth:`save`; :class:`InputError` if it is damaged or mismatched.

        ``experts``, when given, must be the gate's experts (in any order).
        """
        from safetensors import SafetensorError
        from safetensors.numpy import load

        folder = Path(folder)
        config_path, weights_path = folder / GATE_CONFIG, folder / GATE_WEIGHTS
        for p in (config_path, weights_path):
            if not p.is_file():
                raise InputError(f"no expert gate in {folder}: {p.name} is missing")
        config = _read_json(config_path)
        if not isinstance(config, dict) or config.get("format") != GATE_FORMAT:
            raise InputError(f"{config_path}: not an expert gate (format {GATE_FORMAT!r})")
        if config.get("version") != FORMAT_VERSION:
            raise InputError(
                f"{config_path}: gate format version {config.get('version')!r}; "
                f"this Armada reads version {FORMAT_VERSION}"
            )
        try:
            names = _check_experts(config.get("experts") or [])
        except InputError as e:
            raise InputError(f"{config_path}: {e}") from None
        dim, hidden = config.get("dim"), config.get("hidden")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (dim, hidden)):
            raise InputError(f"{config_path}: 'dim' and 'hidden' must be positive integers")
        try:
            tensors = load(weights_path.read_bytes())
        except (SafetensorError, ValueError, OSError) as e:
            raise InputError(
                f"{weights_path}: damaged gate weights ({e}); retrain the gate"
            ) from None
        if set(tensors) != set(_GATE_TENSORS):
            raise InputError(
                f"{weights_path}: expected tensors {list(_GATE_TENSORS)}, found {sorted(tensors)}"
            )
        n = len(names)
        shapes = {"w1": (hidden, dim), "b1": (hidden,), "w2": (n, hidden), "b2": (n,)}
        for name, shape in shapes.items():
            t = tensors[name]
            if t.shape != shape or t.dtype != np.float32:
                raise InputError(
                    f"{weights_path}: tensor {name} is {t.dtype}{list(t.shape)}, but {GATE_CONFIG} "
                    f"({n} experts, dim {dim}, hidden {hidden}) needs float32{list(shape)}"
                )
            if not np.isfinite(t).all():
                raise InputError(f"{weights_path}: tensor {name} holds NaN or infinite values")
        if experts is not None and sorted(_check_experts(experts)) != sorted(names):
            raise InputError(
                f"the gate in {folder} routes between {names}, but the arm's experts are "
                f"{list(experts)}; retrain the gate for these experts"
            )
        metrics = config.get("metrics")
        return cls(names, *(tensors[t] for t in _GATE_TENSORS), dict(metrics or {}))


def train_gate(
    embeddings: np.ndarray,
    labels: Sequence[str],
    experts: Sequence[str],
    *,
    hidden: int = 64,
    epochs: int = 200,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    seed: int = 0,
    balance: bool = True,
) -> Gate:
    """Train a gate on (embedding, expert) pairs: full-batch Adam, cross-entropy, fp32 on CPU.

    Deterministic under ``seed`` (initial weights come from a seeded generator; no dropout, no
    shuffling). ``balance`` weights each expert's examples by the inverse of its frequency, so a
    larger training set does not bias the gate toward its expert. The training loss and accuracy
    (overall and per expert) are recorded in ``gate.metrics``.
    """
    import torch

    experts = _check_experts(experts)
    x_np = _normalise(_matrix(embeddings, None))
    labels = list(labels)
    if len(labels) != x_np.shape[0]:
        raise InputError(f"{x_np.shape[0]} embeddings but {len(labels)} labels")
    unknown = sorted({str(lab) for lab in labels} - set(experts))
    if unknown:
        raise InputError(f"labels {unknown} are not experts; choose from {experts}")
    counts = Counter(labels)
    missing = [e for e in experts if not counts[e]]
    if missing:
        raise InputError(f"no training examples for experts {missing}")
    if hidden < 1 or epochs < 1 or lr <= 0 or weight_decay < 0:
        raise InputError("train_gate needs hidden >= 1, epochs >= 1, lr > 0 and weight_decay >= 0")

    index = {e: i for i, e in enumerate(experts)}
    n, d, k = x_np.shape[0], x_np.shape[1], len(experts)
    gen = torch.Generator().manual_seed(int(seed))

    def uniform(shape: tuple[int, ...], fan_in: int) -> torch.Tensor:
        bound = 1.0 / math.sqrt(fan_in)  # torch.nn.Linear's default initialisation range
        return (
            (torch.rand(shape, generator=gen, dtype=torch.float32) * 2 - 1) * bound
        ).requires_grad_()

    params = [uniform((hidden, d), d), uniform((hidden,), d), uniform((k, hidden), hidden)]
    params.append(uniform((k,), hidden))
    x = torch.from_numpy(np.ascontiguousarray(x_np, dtype=np.float32))
    y = torch.tensor([index[lab] for lab in labels], dtype=torch.long)
    class_weight = None
    if balance:
        class_weight = torch.tensor([n / (k * counts[e]) for e in experts], dtype=torch.float32)
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    w1, b1, w2, b2 = params
    loss = torch.tensor(0.0)
    for _ in range(epochs):
        opt.zero_grad()
        logits = torch.relu(x @ w1.T + b1) @ w2.T + b2
        loss = torch.nn.functional.cross_entropy(logits, y, weight=class_weight)
        loss.backward()
        opt.step()
    arrays = [p.detach().numpy().astype(np.float32, copy=True) for p in params]
    gate = Gate(experts, *arrays, metrics={})
    pred = gate.predict_proba(x_np).argmax(axis=1)
    truth = y.numpy()
    gate.metrics = {
        "train_accuracy": round(float((pred == truth).mean()), 4),
        "train_accuracy_by_expert": {
            e: round(float((pred[truth == i] == i).mean()), 4) for i, e in enumerate(experts)
        },
        "train_loss": round(float(loss.item()), 6),
        "n_train": n,
        "n_by_expert": {e: counts[e] for e in experts},
        "epochs": epochs,
        "lr": lr,
        "weight_decay": weight_decay,
        "seed": seed,
        "balance": balance,
    }
    return gate


class GateRouter(_EmbeddingRouter):
    """Routes by a trained :class:`Gate`; ``mode`` ``soft`` mixes experts by the gate's probs."""

    method = "gate"

    def __init__(self, gate: Gate, mode: str = "soft", k: int = 2, *, embed: Embed | None = None):
        super().__init__(gate.experts, gate.dim, mode, k, embed)
        self.gate = gate

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        return self.gate.predict_proba(embeddings)


# -- from an arm's options -----------------------------------------------------------------------
def build_expert_router(
    spec: Mapping[str, Any],
    experts: Sequence[str],
    *,
    embed: Embed | None = None,
    prototypes: Any = None,
    gate_dir: str | Path | None = None,
) -> ExpertRouter:
    """The router an arm's options describe.

    ``spec["router"]`` is one of ``dataset``, ``gate``, ``manual`` or ``prototype`` (the default);
    other keys: ``mode`` / ``k`` (selection), ``temperature`` (prototype), ``expert`` (manual),
    ``mapping`` and ``fallback`` (dataset: a router name, or a spec of its own; other keys of the
    spec pass on to it). Keys this function does not know are ignored (they are the arm's).

    ``prototypes`` (or ``spec["prototypes"]``) may be a :class:`PrototypeRouter`, the path of a
    file :meth:`PrototypeRouter.save` wrote (its metric, bias and, unless the spec sets them,
    mode / k / temperature are kept), a mapping expert → cosine prototype vector, or expert →
    description(s) (needs ``embed``); without one, ``spec["descriptions"]`` is used.
    ``gate_dir`` (or ``spec["gate_dir"]``) is a folder :meth:`Gate.save` wrote.
    """
    if not isinstance(spec, Mapping):
        raise InputError(f"an expert router spec must be a mapping, got {type(spec).__name__}")
    experts = _check_experts(experts)
    name = str(spec.get("router", "prototype")).strip().lower()
    if name not in ROUTERS:
        raise InputError(
            f"unknown expert router {spec.get('router')!r}; choose one of {list(ROUTERS)}"
        )
    mode = spec.get("mode", "soft" if name == "gate" else "top1")
    k = spec.get("k", 2)
    _check_mode(mode, k)

    if name == "manual":
        expert = spec.get("expert")
        if not expert:
            raise InputError(f"the manual expert router needs 'expert': one of {experts}")
        return ManualRouter(str(expert), experts)

    if name == "dataset":
        fallback_spec = spec.get("fallback")
        fallback = None
        if fallback_spec:
            if isinstance(fallback_spec, str):
                rest = {o: v for o, v in spec.items() if o not in ("router", "fallback", "mapping")}
                fallback_spec = {**rest, "router": fallback_spec}
            if not isinstance(fallback_spec, Mapping):
                raise InputError("'fallback' must be a router name or a router spec")
            if str(fallback_spec.get("router", "prototype")).strip().lower() == "dataset":
                raise InputError("the dataset router's fallback cannot be another dataset router")
            fallback = build_expert_router(
                fallback_spec, experts, embed=embed, prototypes=prototypes, gate_dir=gate_dir
            )
        mapping = spec.get("mapping")
        if mapping is not None and not isinstance(mapping, Mapping):
            raise InputError("'mapping' must map dataset tags to expert names")
        return DatasetRouter(mapping, experts, fallback)

    if name == "gate":
        folder = gate_dir or spec.get("gate_dir")
        if not folder:
            raise InputError(
                "the gate expert router needs a gate folder (gate_dir); train one first"
            )
        return GateRouter(Gate.load(folder, experts=experts), mode, k, embed=embed)

    options = {"mode": mode, "k": k, "temperature": spec.get("temperature")}
    source = prototypes if prototypes is not None else spec.get("prototypes")
    if source is None:
        source = spec.get("descriptions")
    if source is None:
        raise InputError(
            "the prototype expert router needs prototypes: a saved prototypes file, expert "
            "vectors or descriptions ('descriptions': {expert: text})"
        )
    if isinstance(source, str | Path):
        source = PrototypeRouter.load(source)
    if isinstance(source, PrototypeRouter):
        missing = [e for e in experts if e not in source.experts]
        extra = [e for e in source.experts if e not in experts]
        if missing or extra:
            raise InputError(
                f"the prototypes are for experts {source.experts}, but the arm's experts are "
                f"{experts}; refit the prototypes for these experts"
            )
        given = {o: spec.get(o) for o in ("mode", "k", "temperature")}  # else the file's own
        return PrototypeRouter.from_dict(source.to_dict(), embed=embed, **given)
    if not isinstance(source, Mapping):
        raise InputError("prototypes must map each expert to a vector or a description")
    missing = [e for e in experts if e not in source]
    if missing:
        raise InputError(f"no prototype for experts {missing} (have {sorted(source)})")
    chosen = {e: source[e] for e in experts}
    if all(isinstance(v, str) or _is_text_list(v) for v in chosen.values()):
        if embed is None:
            raise InputError("prototypes given as descriptions need an embed function")
        return PrototypeRouter.from_descriptions(embed, chosen, **options)
    return PrototypeRouter(chosen, **options, embed=embed)


def _is_text_list(v: Any) -> bool:
    return isinstance(v, list | tuple) and bool(v) and all(isinstance(t, str) for t in v)


# -- files ---------------------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: unreadable ({e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(
            f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        ) from None


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
