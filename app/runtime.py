"""``Armada``: the services one process needs (store, retriever, models, agents, policy, graph).

Everything heavy is built lazily and once: opening Armada touches only SQLite; the retriever,
the embedding model and the generator load on first use.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agents.base import Agent
from agents.plugins import load_agents
from app.state import fresh_turn
from core.config import Settings, load_settings
from core.config import is_adapter_path as _is_path
from core.errors import InputError, PluginError
from core.store import Store
from core.store.feedback import VoteResult
from core.text import clean_question
from core.types import Hit
from routers import Policy, build_policy
from routers.categories import CategoryClassifier
from routers.linucb import project
from routers.rewards import reward_function

if TYPE_CHECKING:
    from core.models.base import ChatModel
    from core.retrieval import Retriever

log = logging.getLogger(__name__)

EMBED_DIM = 32
"""Size of the query-embedding projection stored in each route decision (LinUCB's context)."""


@dataclass
class AskResult:
    interaction_id: str
    thread_id: str
    question: str
    arm: str
    answer: str
    status: str
    policy: str
    propensity: float
    hits: list[Hit] = field(default_factory=list)
    cited_ids: list[str] = field(default_factory=list)
    error: str = ""
    fallback_from: str | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    usage: dict[str, int] = field(default_factory=dict)
    route_context: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def sources(self) -> list[Hit]:
        """Cited passages in citation order."""
        by_id = {h.passage.id: h for h in self.hits}
        return [by_id[i] for i in self.cited_ids if i in by_id]

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "hits"}
        d["passages"] = [h.to_dict() for h in self.hits]
        return d


class Armada:
    def __init__(self, settings: Settings | None = None, extra_plugins: list | None = None) -> None:
        self.settings = settings or load_settings()
        self.store = Store(self.settings.db_url, self.settings.store.busy_timeout_ms)
        self.agent_classes = load_agents(extra_plugins)
        for arm in self.settings.arms:
            if arm.agent not in self.agent_classes:
                raise PluginError(
                    f"arm {arm.name!r} uses agent {arm.agent!r}, which no plugin provides; "
                    f"known agents: {sorted(self.agent_classes)}"
                )
        self.store.sync_arms([a.model_dump() for a in self.settings.arms])
        self._agents: dict[str, Agent] = {}
        self._adapter_lock = threading.RLock()
        self._adapter_metas: dict[str, dict[str, Any]] = {}
        self._adapter_shas: dict[str, str] = {}
        self._retriever: Retriever | None = None
        self._graph: Any = None
        self._checkpointer: Any = None
        self._policy: Policy | None = None
        self._policy_arms: tuple[str, ...] = ()
        self._policy_seq = -1
        self._policy_adapters: tuple = ()
        self._policy_lock = threading.RLock()
        self._classifier: CategoryClassifier | None = None
        self.check_adapter_arms()

    # -- services ---------------------------------------------------------------------------------
    @property
    def retriever(self) -> Retriever:
        if self._retriever is None:
            from core.retrieval import Retriever

            self._retriever = Retriever(self.settings)
        return self._retriever

    def retrieve(self, question: str) -> list[Hit]:
        return self.retriever.search(question)

    def model(self, name: str = "default") -> ChatModel:
        from core.models import get_model

        return get_model(self.settings, name)

    def agent(self, arm: str) -> Agent:
        if arm not in self._agents:
            cfg = self.settings.arm(arm)
            self._agents[arm] = self.agent_classes[cfg.agent](cfg)
        return self._agents[arm]

    def embed(self, texts: list[str]) -> Any:
        """Sentence embeddings with the retriever's model (loaded once per process)."""
        from core.retrieval import embed_texts

        return embed_texts(self.settings, texts)

    # -- adapters -----------------------------------------------------------------------------------
    def _local_model(self, arm: str) -> Any:
        from core.models import LocalChatModel

        agent = self.agent(arm)
        model = self.model(agent.arm.model) if agent.needs_model else None
        return model if isinstance(model, LocalChatModel) else None

    def check_adapter_arms(self) -> None:
        """Mark arms whose adapters are not registered ``unavailable`` (and back ``ok`` once they
        are); cheap: reads the registry and the folders, loads nothing."""
        from core.adapters import registry
        from core.errors import AdapterError

        rows = {a.name: a for a in self.store.arms()}
        for cfg in self.settings.arms:
            row = rows.get(cfg.name)
            if row is None or row.status not in ("ok", "unavailable", "broken"):
                continue  # disabled by an operator: theirs to enable
            try:
                agent = self.agent(cfg.name)
                names = agent.adapter_names()
                if not names or self._local_model(cfg.name) is None:
                    continue
                for name in names:
                    if not _is_path(name):
                        found = registry.resolve(self.store, name)
                        if not Path(found.path).is_dir():
                            raise AdapterError(
                                f"adapter {name!r} v{found.version}: folder {found.path} is missing"
                            )
            except (AdapterError, InputError, PluginError) as e:
                if row.status == "ok" or row.reason != str(e):
                    self.store.set_arm_status(cfg.name, "unavailable", str(e))
                continue
            if row.status in ("unavailable", "broken"):
                self.store.set_arm_status(cfg.name, "ok", "")

    def adapter_fingerprint(self, arm: str) -> dict[str, str]:
        """The adapters ``arm`` would serve now: registry name → ``v<N>:<checksum>`` (a cache key
        part: a retrained adapter makes earlier evaluation answers stale)."""
        from core.adapters import registry
        from core.errors import AdapterError

        out: dict[str, str] = {}
        for name in self.agent(arm).adapter_names():
            if _is_path(name):
                folder = Path(name).expanduser()
                try:
                    out[name] = registry.manifest_sha256(folder)[:16]
                except OSError:
                    out[name] = "missing"
                continue
            try:
                row = registry.resolve(self.store, name)
                out[name] = f"v{row.version}:{row.sha256[:16]}"
            except AdapterError:
                out[name] = "missing"
        return out

    def prepare_adapters(self, arm: str) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
        """Verify and load the adapters ``arm`` needs onto its model; registry name → loaded name
        (``name_vN``) and → meta. A bad adapter marks the arm ``broken`` (and that version in the
        registry), then raises AdapterError: the graph answers with the fallback arm."""
        from core.adapters import registry
        from core.adapters.format import read_meta
        from core.adapters.verify import load_verified
        from core.errors import AdapterError

        agent = self.agent(arm)
        names = agent.adapter_names()
        if not names:
            return {}, {}
        model = self._local_model(arm)
        if model is None:  # a served model (OpenAI-compatible): adapters are served names
            return {n: n for n in names}, {}
        loaded: dict[str, str] = {}
        metas: dict[str, dict[str, Any]] = {}
        for name in names:
            row = None
            try:
                if _is_path(name):
                    folder = Path(name).expanduser().resolve()
                    tag = "p_" + hashlib.sha256(str(folder).encode()).hexdigest()[:10]
                    sha = registry.manifest_sha256(folder) if folder.is_dir() else ""
                else:
                    row = registry.resolve(self.store, name)
                    folder, tag, sha = Path(row.path), f"{name}_v{row.version}", row.sha256
                with self._adapter_lock:
                    stale = tag in model.adapters() and self._adapter_shas.get(tag) != sha
                    if stale:  # a reused version number or a folder rewritten in place
                        model.unload_adapter(tag)
                    if tag not in model.adapters():
                        meta = load_verified(model, tag, folder)
                        for old in model.adapters():  # older versions of this adapter
                            if old != tag and old.rsplit("_v", 1)[0] == name:
                                model.unload_adapter(old)
                        self._adapter_metas[tag], self._adapter_shas[tag] = meta, sha
                    meta = self._adapter_metas.get(tag) or read_meta(folder)
            except (AdapterError, OSError) as e:
                reason = str(e)
                self.store.set_arm_status(arm, "broken", reason)
                if row is not None and _files_damaged(folder):
                    # Only damage to the files marks the version itself; a mismatch with this
                    # arm's model (another base) or a runtime failure disables just the arm.
                    registry.set_status(self.store, name, row.version, registry.BROKEN, reason)
                log.error("arm %s disabled: %s", arm, reason)
                if isinstance(e, AdapterError):
                    raise
                raise AdapterError(reason) from e
            loaded[name], metas[name] = tag, meta
        return loaded, metas

    def enabled_arms(self) -> list[str]:
        usable = {a.name for a in self.store.arms() if a.enabled and a.status == "ok"}
        return [a.name for a in self.settings.arms if a.enabled and a.name in usable]

    def policy(self) -> Policy:
        """The routing policy, its state the fold of the stored votes (rebuilt when they change)."""
        with self._policy_lock:
            arms = tuple(self.enabled_arms())
            seq = self.store.feedback_seq()
            adapters = self._adapter_versions(arms)
            if (
                self._policy is None
                or (arms, seq) != (self._policy_arms, self._policy_seq)
                or adapters != self._policy_adapters
            ):
                self._policy_adapters = adapters
                self._policy = self._build_policy(arms)
                # Seq and events from one snapshot: a vote committed in between would otherwise
                # be folded in now and applied again by feedback() below.
                seq, events = self.store.feedback_snapshot()
                if hasattr(self._policy, "rebuild"):
                    self._policy.rebuild((e.arm, e.context, e.reward) for e in events)
                self._policy_arms, self._policy_seq = arms, seq
            return self._policy

    def _build_policy(self, arms: tuple[str, ...]) -> Policy:
        r = self.settings.router
        opts = dict(r.options)
        if r.policy == "fixed":
            opts.setdefault("arm", r.arm)
        # A promoted adapter's offline score is its arm's prior; a configured prior wins.
        priors = {
            **self._offline_priors(arms),
            **{a.name: a.prior for a in self.settings.arms if a.prior is not None},
        }
        if priors and r.policy not in ("fixed", "uniform"):
            opts["priors"] = {**priors, **opts.get("priors", {})}
        return build_policy(r.policy, arms, seed=r.seed, **opts)

    def _adapter_versions(self, arms: tuple[str, ...]) -> tuple:
        """The adapter versions the arms serve (a promotion rebuilds the policy)."""
        try:
            return tuple((a, tuple(sorted(self.adapter_fingerprint(a).items()))) for a in arms)
        except Exception:  # an arm that cannot even be built: no adapters to track
            return ()

    def _offline_priors(self, arms: tuple[str, ...]) -> dict[str, float]:
        from core.adapters import registry

        out: dict[str, float] = {}
        for arm in arms:
            try:
                names = self.agent(arm).adapter_names()
            except Exception:
                continue
            if len(names) == 1 and not _is_path(names[0]):
                score = registry.offline_prior(self.store, names[0])
                if score is not None:
                    out[arm] = float(score)
        return out

    @property
    def classifier(self) -> CategoryClassifier:
        if self._classifier is None:
            from core.retrieval import embed_texts

            embed = functools.partial(embed_texts, self.settings)
            self._classifier = CategoryClassifier(embed, self.settings.router.categories)
        return self._classifier

    def route_context(self, question: str) -> dict[str, Any]:
        """The bandit's context: the question's category and a 32-d projection of its embedding."""
        if not self.settings.router.classify:
            return {"category": "general"}
        try:
            emb = self.classifier.embed([question])[0]
            return {
                "category": self.classifier.classify(question, emb),
                "embedding": [round(float(x), 5) for x in project(emb, EMBED_DIM)],
            }
        except Exception as e:  # no embedder: route without a category rather than fail
            log.warning("cannot classify the question: %s", e)
            return {"category": "general"}

    def feedback(
        self,
        interaction_id: str,
        score: float,
        feedback_id: str | None = None,
        voter: str = "",
        comment: str = "",
    ) -> VoteResult:
        """Store a vote; the arm statistics move in the same transaction, then the policy learns."""
        res = self.store.add_feedback(
            feedback_id or str(uuid.uuid4()),
            interaction_id,
            score,
            voter=voter,
            comment=comment,
            max_comment_chars=self.settings.limits.max_comment_chars,
            reward_fn=reward_function(self.settings.router.reward),
        )
        with self._policy_lock:
            pol = self._policy
            fresh = res.created and res.replaced is None and res.seq == self._policy_seq + 1
            if pol is not None and fresh and hasattr(pol, "update"):
                f = res.feedback
                ctx = self.store.decision_context(interaction_id)
                if f.arm in pol.arms:
                    pol.update(f.arm, ctx, f.reward)
                self._policy_seq = res.seq
        return res

    def fallback_arm(self, exclude: str) -> str | None:
        enabled = self.enabled_arms()
        preferred = self.settings.router.fallback_arm
        if preferred != exclude and preferred in enabled:
            return preferred
        return next((a for a in enabled if a != exclude), None)

    @property
    def graph(self) -> Any:
        if self._graph is None:
            from langgraph.checkpoint.sqlite import SqliteSaver

            from app.graph import build_graph

            path = self.settings.checkpoint_path
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(path), check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            self._checkpointer = SqliteSaver(conn)
            self._checkpointer.setup()
            self._graph = build_graph(self, checkpointer=self._checkpointer)
        return self._graph

    # -- asking -------------------------------------------------------------------------------------
    def check_arm(self, arm: str) -> str:
        known = [a.name for a in self.settings.arms]
        if arm not in known:
            raise InputError(f"unknown arm {arm!r}; configured arms: {known}")
        if arm not in self.enabled_arms():
            row = next((a for a in self.store.arms() if a.name == arm), None)
            why = f": {row.reason}" if row and row.reason else ""
            raise InputError(f"arm {arm!r} is disabled{why}")
        return arm

    def ask(
        self,
        question: str,
        arm: str | None = None,
        thread_id: str | None = None,
        on_token: Callable[[str], None] | None = None,
        on_reset: Callable[[str], None] | None = None,
        tags: dict[str, str] | None = None,
    ) -> AskResult:
        """Answer one question through the graph; tokens go to ``on_token`` as they come.

        ``tags`` are hints for the arm, e.g. ``{"dataset": "popqa"}`` (the per-dataset expert
        router) or ``{"expert": "pubmedqa"}`` (a manual expert override)."""
        for event in self.ask_stream(question, arm=arm, thread_id=thread_id, tags=tags):
            if "token" in event and on_token:
                on_token(event["token"])
            elif "reset" in event and on_reset:
                on_reset(event["reset"])
            elif "result" in event:
                return event["result"]
        raise RuntimeError("the graph ended without a result")  # pragma: no cover

    def ask_stream(
        self,
        question: str,
        arm: str | None = None,
        thread_id: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Yield ``{"token": …}`` and ``{"reset": arm}`` events, then ``{"result": AskResult}``."""
        q = clean_question(question, self.settings.limits.max_question_chars)
        if arm:
            self.check_arm(arm)
        thread_id = thread_id or str(uuid.uuid4())
        config = {"configurable": {"thread_id": thread_id}}
        final: dict[str, Any] = {}
        for mode, chunk in self.graph.stream(
            fresh_turn(q, arm, _clean_tags(tags)), config, stream_mode=["custom", "values"]
        ):
            if mode == "custom":
                yield chunk
            else:
                final = chunk
        yield {"result": self._result(final, thread_id)}

    def _result(self, s: dict[str, Any], thread_id: str) -> AskResult:
        return AskResult(
            interaction_id=s["interaction_id"],
            thread_id=thread_id,
            question=s["question"],
            arm=s["arm"],
            answer=s.get("answer", ""),
            status=s.get("status", "ok"),
            policy=s.get("policy", ""),
            propensity=float(s.get("propensity", 1.0)),
            hits=[Hit.from_dict(h) for h in s.get("hits", [])],
            cited_ids=list(s.get("cited_ids", [])),
            error=s.get("error", ""),
            fallback_from=s.get("fallback_from"),
            latency_ms=dict(s.get("latency_ms", {})),
            usage=dict(s.get("usage", {})),
            route_context=dict(s.get("route_context", {})),
            details=dict(s.get("details", {})),
        )

    def thread_history(self, thread_id: str) -> list[dict[str, Any]]:
        """The turns of a conversation thread, from the checkpointer."""
        snap = self.graph.get_state({"configurable": {"thread_id": thread_id}})
        return list((snap.values or {}).get("history", [])) if snap else []

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.conn.close()
        self.store.close()


def _files_damaged(folder: Path) -> bool:
    """Whether the adapter folder itself fails verification (checksums, format, weights)."""
    from core.adapters.verify import verify_files
    from core.errors import AdapterError

    try:
        verify_files(folder)
    except AdapterError:
        return True
    return False


def _clean_tags(tags: dict[str, str] | None) -> dict[str, str]:
    """Caller hints as short strings; anything else is refused."""
    out: dict[str, str] = {}
    for k, v in (tags or {}).items():
        if not isinstance(k, str) or not isinstance(v, str) or len(k) > 64 or len(v) > 200:
            raise InputError("tags must map short strings to short strings")
        out[k] = v
    return out
