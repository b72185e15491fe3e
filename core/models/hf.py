"""Small transformers/torch helpers for the local backend: placement, streaming, cancelling, speed.

Everything heavy is imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.errors import ModelError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Placement:
    """Where and how the weights live: device, dtype and an optional bitsandbytes config."""

    device: str
    dtype: torch.dtype
    quantization_config: Any = None


def placement(quantization: str) -> Placement:
    """CUDA (bf16/fp16, optionally 4/8-bit) when available, else CPU fp32.

    bitsandbytes quantization needs CUDA here; asking for it without raises ModelError rather than
    silently loading something else. ``"int8"`` is the CPU's weight-only int8 (applied after
    loading, by ``LocalChatModel``): it loads like ``"none"`` here, and on CUDA it is ``"none"``.
    """
    import torch

    cuda = torch.cuda.is_available()
    if quantization not in ("none", "int8", "4bit", "8bit"):
        raise ModelError(
            f"unknown quantization {quantization!r}; use 'none', 'int8', '4bit' or '8bit'"
        )
    if quantization == "int8":
        quantization = "none"
    if quantization != "none" and not cuda:
        raise ModelError(
            f"{quantization} quantization (bitsandbytes) needs a CUDA GPU and none is available; "
            "set quantization = 'none' to run in fp32 on the CPU"
        )
    if not cuda:
        # fp32 on the CPU: bf16 matmuls are emulated or slow on most CPUs and change greedy outputs.
        return Placement("cpu", torch.float32)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if quantization == "none":
        return Placement("cuda", dtype)
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as e:
        raise ModelError(f"{quantization} quantization needs bitsandbytes: {e}") from e
    if quantization == "4bit":
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    else:
        config = BitsAndBytesConfig(load_in_8bit=True)
    return Placement("cuda", dtype, config)


def column_major_linears(model: torch.nn.Module) -> int:
    """Store the weights of "wide" ``nn.Linear`` layers transposed in memory (same values).

    In a one-token decode step on the CPU, ``F.linear(x, W)`` over a column-major ``W`` becomes
    ``x @ Wt`` on a contiguous ``[in, out]`` matrix, which MKL streams much faster when ``out`` is
    at least ``in`` (SmolLM2: q/o, gate/up and the 49k-row output head; measured 11 → 13-20 GB/s)
    and a little slower when it is smaller (k/v, down), so only the wide layers change. Modules
    stay ``nn.Linear``, so peft still wraps them. Returns the number of layers changed.
    """
    import torch

    changed = 0
    with torch.no_grad():
        for module in model.modules():
            if (
                isinstance(module, torch.nn.Linear)
                and module.out_features >= module.in_features
                and module.weight.is_contiguous()
            ):
                w = module.weight
                module.weight = torch.nn.Parameter(
                    w.detach().t().contiguous().t(), requires_grad=w.requires_grad
                )
                changed += 1
        # Tied input embeddings must keep pointing at the (new) output projection weight.
        out, emb = model.get_output_embeddings(), model.get_input_embeddings()
        if (
            getattr(model.config, "tie_word_embeddings", False)
            and out is not None
            and emb is not None
        ):
            emb.weight = out.weight
    return changed


def callback_streamer(tokenizer: Any, on_token: Callable[[str], None]) -> Any:
    """A transformers streamer that hands each finished piece of text to ``on_token``."""
    from transformers import TextStreamer

    class _CallbackStreamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                on_token(text)

    return _CallbackStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def cancel_criteria(cancel: threading.Event) -> Any:
    """A stopping criterion that ends generation for every row once ``cancel`` is set."""
    import torch
    from transformers import StoppingCriteria

    class _Cancel(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            return torch.full(
                (input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device
            )

    return _Cancel()


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """Every token id that ends a reply (generation config, config and tokenizer)."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return ids
