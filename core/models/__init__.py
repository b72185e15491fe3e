"""Chat models behind one interface: a local transformers+peft backend and an OpenAI-compatible one.

    from core.models import get_model
    model = get_model(settings)                     # the "default" model, loaded once per process
    model.generate([Message("user", "Hi")], adapter="hotpotqa").text

Backends are found by name in a small registry (``register_backend``); each is a ``ChatModel``
subclass built as ``cls(config, cache_dir)``. The built-in ones are registered below; importing
this package loads no model, client or heavy library.
"""

from __future__ import annotations

import threading
from pathlib import Path

from core.config import ModelConfig, Settings
from core.errors import ModelError
from core.models.base import BASE_ADAPTER, ChatModel, message_dicts
from core.models.convert import ensure_local_model
from core.models.local import LocalChatModel
from core.models.openai_backend import OpenAIChatModel

__all__ = [
    "BASE_ADAPTER",
    "ChatModel",
    "LocalChatModel",
    "OpenAIChatModel",
    "backends",
    "build_model",
    "clear_models",
    "ensure_local_model",
    "get_model",
    "message_dicts",
    "register_backend",
]

_BACKENDS: dict[str, type[ChatModel]] = {}
_MODELS: dict[tuple[str, str], ChatModel] = {}
_MODELS_LOCK = threading.Lock()


def register_backend(name: str, cls: type[ChatModel]) -> None:
    """Make ``cls`` available as ``ModelConfig.backend == name``; a taken name raises."""
    if not name.isidentifier() or name != name.lower():
        raise ModelError(f"backend name {name!r} must be a lowercase identifier")
    if name in _BACKENDS and _BACKENDS[name] is not cls:
        raise ModelError(f"backend {name!r} is already registered by {_BACKENDS[name].__name__}")
    _BACKENDS[name] = cls


def backends() -> dict[str, type[ChatModel]]:
    """The registered backends by name."""
    return dict(_BACKENDS)


def build_model(config: ModelConfig, cache_dir: Path) -> ChatModel:
    """A new (lazy) model for ``config``; nothing is loaded until it is first used."""
    try:
        cls = _BACKENDS[config.backend]
    except KeyError:
        raise ModelError(
            f"unknown model backend {config.backend!r}; registered: {sorted(_BACKENDS)}"
        ) from None
    return cls(config, cache_dir)


def get_model(settings: Settings, name: str = "default") -> ChatModel:
    """The configured model ``name``, built once per process and shared by every caller.

    Models with identical configurations (and cache folder) are the same object, so the base
    weights are in memory once however many arms use them.
    """
    try:
        config = settings.models[name]
    except KeyError:
        raise ModelError(
            f"unknown model {name!r}; configured models: {sorted(settings.models)}"
        ) from None
    key = (config.model_dump_json(), str(settings.model_cache_dir))
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = _MODELS[key] = build_model(config, settings.model_cache_dir)
        return model


def clear_models() -> None:
    """Forget every model ``get_model`` built (tests; freeing memory after a config change)."""
    with _MODELS_LOCK:
        _MODELS.clear()


register_backend("local", LocalChatModel)
register_backend("openai", OpenAIChatModel)
