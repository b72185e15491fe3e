"""The chat-model contract every backend implements, plus the logic they share.

A backend turns chat messages into a :class:`~core.types.Generation`. ``generate`` is the one method
that does the work; streaming (``stream``) and sequential batching (``generate_batch``) are built on
it here, once, so a new backend only has to implement generation, adapters and token counting.
"""

from __future__ import annotations

import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from core.errors import ModelError
from core.types import Generation, Message

BASE_ADAPTER = "__base__"
"""The name peft gives the base model (no adapter) inside a mixed-adapter batch."""

MessageLike = Message | Mapping[str, str]


def message_dicts(messages: Sequence[MessageLike]) -> list[dict[str, str]]:
    """Messages as the ``{"role", "content"}`` dicts chat templates and OpenAI servers expect."""
    if not messages:
        raise ModelError("cannot generate from an empty list of messages")
    out = []
    for m in messages:
        if isinstance(m, Message):
            out.append(m.to_dict())
        else:
            out.append({"role": str(m["role"]), "content": str(m["content"])})
    return out


class ChatModel(ABC):
    """A chat model: messages in, text out, optionally through a named adapter."""

    name: str = ""
    """The model id, path or served name, for logs and records."""
    backend: str = ""
    """The registry name of the backend ("local", "openai")."""

    @abstractmethod
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
        """Generate one reply. ``on_token`` receives text deltas as they are produced; setting
        ``cancel`` stops early with ``finish_reason == "cancelled"``."""

    def stream(
        self,
        messages: Sequence[MessageLike],
        *,
        adapter: str | None = None,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[str]:
        """Yield text deltas as they are produced; closing the iterator cancels the generation."""
        deltas: queue.Queue[tuple[str, Any]] = queue.Queue()
        stop = cancel or threading.Event()

        def work() -> None:
            try:
                self.generate(
                    messages,
                    adapter=adapter,
                    max_new_tokens=max_new_tokens,
                    temperature=temperature,
                    on_token=lambda text: deltas.put(("text", text)),
                    cancel=stop,
                )
            except BaseException as e:  # handed to the consumer's thread below
                deltas.put(("error", e))
            else:
                deltas.put(("done", None))

        worker = threading.Thread(target=work, name=f"stream-{self.backend}", daemon=True)
        worker.start()
        try:
            while True:
                kind, value = deltas.get()
                if kind == "text":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    return
        finally:
            # The consumer stopped early (break, exception, garbage collection): stop the worker.
            stop.set()

    def generate_batch(
        self,
        batch: Sequence[Sequence[MessageLike]],
        *,
        adapter_names: Sequence[str | None] | None = None,
        max_new_tokens: int | None = None,
    ) -> list[Generation]:
        """One generation per conversation; row ``i`` uses ``adapter_names[i]`` (None: base model).

        The default runs the rows one after another; backends that can batch override it.
        """
        names = check_adapter_names(batch, adapter_names)
        return [
            self.generate(messages, adapter=name, max_new_tokens=max_new_tokens)
            for messages, name in zip(batch, names, strict=True)
        ]

    @abstractmethod
    def load_adapter(self, name: str, path: str | Path) -> None:
        """Make the adapter at ``path`` available as ``name`` (replacing one of that name)."""

    @abstractmethod
    def unload_adapter(self, name: str) -> None:
        """Forget the adapter ``name``; unknown names raise ModelError."""

    @abstractmethod
    def adapters(self) -> list[str]:
        """Names of the adapters ``generate(adapter=...)`` accepts."""

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes for this model (an estimate where the backend has no tokenizer)."""

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """What is loaded: model path/id, parameters, dtype, device, quantization, adapters."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def check_adapter_names(
    batch: Sequence[Sequence[MessageLike]], adapter_names: Sequence[str | None] | None
) -> list[str | None]:
    """One adapter name (or None) per row of ``batch``."""
    if adapter_names is None:
        return [None] * len(batch)
    if len(adapter_names) != len(batch):
        raise ModelError(
            f"adapter_names has {len(adapter_names)} entries for a batch of {len(batch)} rows"
        )
    return list(adapter_names)
