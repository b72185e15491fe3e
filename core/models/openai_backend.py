"""The OpenAI-compatible backend: any server speaking ``/v1/chat/completions``.

OpenAI itself, vLLM, Ollama, llama.cpp's server, ... An adapter is a *served model name*: with
``adapter_models = {"hotpotqa": "hotpotqa-lora"}``, ``generate(adapter="hotpotqa")`` asks the server
for the model ``hotpotqa-lora``, which is how a vLLM server started with
``--enable-lora --lora-modules hotpotqa-lora=/path/to/adapter`` serves every LoRA arm.
``load_adapter`` uses vLLM's runtime endpoint (``/v1/load_lora_adapter``, enabled on the server by
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``); the path is one the *server* can read.

The client is built on first use, never at import.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from core.config import ModelConfig
from core.errors import ModelError
from core.models.base import ChatModel, MessageLike, message_dicts
from core.types import Generation, Usage

log = logging.getLogger(__name__)

DEFAULT_API_KEY = "EMPTY"
"""Local servers (vLLM, llama.cpp) accept any key, but the client insists on one."""


class OpenAIChatModel(ChatModel):
    """A chat model served over the OpenAI chat-completions API."""

    backend = "openai"

    def __init__(self, config: ModelConfig, cache_dir: Path | None = None) -> None:
        # cache_dir is accepted so every backend is built the same way; nothing is cached locally.
        self.config = config
        self.name = config.model or ""
        self._client: Any = None
        self._served: dict[str, str] = dict(config.adapter_models)
        self._runtime_loaded: set[str] = set()
        self._stream_options = True  # dropped after a server rejects it
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    from openai import OpenAI

                    self._client = OpenAI(
                        base_url=self.config.base_url,
                        api_key=self.config.api_key or DEFAULT_API_KEY,
                        timeout=self.config.request_timeout_s,
                        max_retries=1,
                    )
        return self._client

    def served_model(self, adapter: str | None = None) -> str:
        """The model name sent to the server for ``adapter`` (None: the base model)."""
        if adapter is not None:
            try:
                return self._served[adapter]
            except KeyError:
                raise ModelError(
                    f"adapter {adapter!r} has no served model; add it to adapter_models "
                    f"(known: {self.adapters()})"
                ) from None
        if not self.name:
            self.name = self._first_served_model()
        return self.name

    def generate(
        self,
        messages: Sequence[MessageLike],
        *,
        adapter: str | None = None,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        on_token: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> Generation:
        model = self.served_model(adapter)
        request = {
            "model": model,
            "messages": message_dicts(messages),
            "max_tokens": max_new_tokens or self.config.max_new_tokens,
            "temperature": self.config.temperature if temperature is None else temperature,
        }
        if cancel is not None and cancel.is_set():
            return Generation("", model=model, adapter=adapter, finish_reason="cancelled")
        if on_token is None and cancel is None:
            response = self._call(request)
            choice = response.choices[0]
            usage = response.usage
            return Generation(
                choice.message.content or "",
                Usage(usage.prompt_tokens, usage.completion_tokens) if usage else Usage(),
                model,
                adapter,
                choice.finish_reason or "stop",
            )
        return self._generate_streaming(request, adapter, on_token, cancel)

    def _generate_streaming(
        self,
        request: dict[str, Any],
        adapter: str | None,
        on_token: Callable[[str], None] | None,
        cancel: threading.Event | None,
    ) -> Generation:
        from openai import OpenAIError

        stream = self._call(request, stream=True)
        parts: list[str] = []
        usage: Usage | None = None
        reason = "stop"
        try:
            for chunk in stream:
                if chunk.usage is not None:
                    usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                for choice in chunk.choices:
                    delta = choice.delta.content if choice.delta else None
                    if delta:
                        parts.append(delta)
                        if on_token is not None:
                            on_token(delta)
                    reason = choice.finish_reason or reason
                if cancel is not None and cancel.is_set():
                    reason = "cancelled"
                    break
        except OpenAIError as e:
            raise self._error(e) from e
        finally:
            stream.close()
        # Without usage from the server, one content chunk is about one token.
        return Generation(
            "".join(parts), usage or Usage(0, len(parts)), request["model"], adapter, reason
        )

    def _call(self, request: dict[str, Any], stream: bool = False) -> Any:
        from openai import OpenAIError

        extra: dict[str, Any] = {}
        if stream:
            extra["stream"] = True
            if self._stream_options:
                extra["stream_options"] = {"include_usage": True}
        try:
            return self.client.chat.completions.create(**request, **extra)
        except OpenAIError as e:
            if stream and self._stream_options and "stream_options" in _server_message(e):
                self._stream_options = False  # an older server: stream without usage
                return self._call(request, stream=True)
            raise self._error(e) from e

    def _error(self, e: Exception) -> ModelError:
        where = self.config.base_url or "the OpenAI API"
        return ModelError(f"model server {where} failed: {_server_message(e)}")

    def _first_served_model(self) -> str:
        try:
            models = [m.id for m in self.client.models.list()]
        except Exception as e:
            raise self._error(e) from e
        if not models:
            raise ModelError(f"model server {self.config.base_url} serves no models")
        log.info("no model configured; using the server's first model %s", models[0])
        return models[0]

    # -- adapters --------------------------------------------------------------------------------

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Ask a vLLM server to load the LoRA at ``path`` (a path on the server) as ``name``."""
        try:
            self.client.post(
                "/load_lora_adapter",
                body={"lora_name": name, "lora_path": str(path)},
                cast_to=str,
            )
        except Exception as e:
            raise self._error(e) from e
        self._served[name] = name
        self._runtime_loaded.add(name)

    def unload_adapter(self, name: str) -> None:
        if name not in self._served:
            raise ModelError(f"adapter {name!r} is not known; known: {self.adapters()}")
        if name in self._runtime_loaded:
            try:
                self.client.post("/unload_lora_adapter", body={"lora_name": name}, cast_to=str)
            except Exception as e:
                raise self._error(e) from e
            self._runtime_loaded.discard(name)
        del self._served[name]

    def adapters(self) -> list[str]:
        return sorted(self._served)

    # -- introspection ---------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        """An estimate (about four characters per token): the server's tokenizer is not here."""
        return math.ceil(len(text) / 4)

    def info(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "name": self.name,
            "model": self.config.model,
            "base_url": self.config.base_url,
            "params": None,
            "dtype": None,
            "device": "remote",
            "quantization": None,
            "adapters": dict(sorted(self._served.items())),
        }


def _server_message(e: Exception) -> str:
    """The server's own error message where it sent one, else the exception's text."""
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if body.get("detail"):
            return str(body["detail"])
    return str(getattr(e, "message", None) or e)
