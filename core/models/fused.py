"""Fused CPU decoding: a whole decode step of a Llama-family model in one C++ call.

A decode step of SmolLM2-135M reads ~540 MB of fp32 weights: ~16 ms at the ~33 GB/s two cores
reach here. transformers' eager forward and ``generate`` spend ~40 ms more on each token (about a
thousand small torch ops, Python, cache bookkeeping), so decoding ran at ~27% of the bandwidth
bound. ``FusedDecoder`` runs the prompt through the transformers model as before (one batched
forward: prefill is compute-bound and torch does it well), copies its KV cache, then decodes
each further token with a single call into ``fused_kernel.cpp``: all layers, the final norm and
the head, on a persistent thread pool with spinning barriers between dependent stages. It reads
the model's own weight tensors in place (fp32 row-major, or the int8 layers of
``core.models.quant``), so it costs no extra memory beyond its KV cache.

Scope: one sequence (batch size 1), Llama/Mistral/Qwen2-shaped decoders (RMSNorm, rotary
embeddings from the model's own rotary module, grouped-query attention, SiLU-gated MLP, optional
q/k/v/o/MLP biases, no sliding window), optional LoRA adapters on the linear layers (peft's
``base(x) + scaling * B(A(x))``, with no dropout at inference). Anything else (batches,
sampling, DoRA, adapters on embeddings, other architectures) takes transformers' own path:
``unsupported()`` says why. The numbers match transformers up to float summation order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import ModelError
from core.models.extension import LazyExtension

if TYPE_CHECKING:
    import torch


_EXTENSION_NAME = "armada_fused_decode_v4"
_SOURCE = Path(__file__).with_name("fused_kernel.cpp")

ARCHITECTURES = ("llama", "mistral", "qwen2")
"""``config.model_type`` values whose decoder layers this path reproduces."""

DYNAMIC_ROPE = ("dynamic", "longrope")
"""RoPE types whose frequencies depend on the sequence length: not precomputable as one table."""

_NONE = (None,)
_GREEDY_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "num_beams": (None, 1),
    "num_beam_groups": (None, 1),
    "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0),
    "min_new_tokens": (None, 0),
    "min_length": (None, 0),
    "guidance_scale": (None, 1.0),
    "bad_words_ids": (None, []),
    "suppress_tokens": (None, []),
    "begin_suppress_tokens": (None, []),
    "sequence_bias": (None, {}),
    "forced_bos_token_id": _NONE,
    "forced_eos_token_id": _NONE,
    "exponential_decay_length_penalty": _NONE,
    "penalty_alpha": _NONE,
    "dola_layers": _NONE,
    "watermarking_config": _NONE,
    "prompt_lookup_num_tokens": _NONE,
    "assistant_model": _NONE,
}
"""Generation settings, and their values under which greedy decoding is plain argmax."""


def generation_unfit(generation_config: Any) -> str | None:
    """Why greedy ``generate`` under this generation config is not plain argmax (None: it is),
    e.g. a model that ships ``repetition_penalty`` (Qwen2.5-Instruct) keeps transformers' path."""
    for name, neutral in _GREEDY_NEUTRAL.items():
        value = getattr(generation_config, name, None)
        if value not in neutral:
            return f"the generation config sets {name}={value!r}"
    return None


KEEP_POSITIONS = 4096
"""A KV cache longer than this is freed after its generation (~190 MB for SmolLM2 at 4096)."""

_EXTENSION = LazyExtension(
    _EXTENSION_NAME, "fused decode", lambda: _SOURCE.read_text(encoding="utf-8")
)


def kernel() -> Any:
    """The compiled extension (built on the first call with the system C++ compiler, ~30 s, then
    cached by torch under ``TORCH_EXTENSIONS_DIR``); ModelError if it cannot be built here."""
    return _EXTENSION.load()


def kernel_available() -> bool:
    """Whether the fused kernel builds/loads here (builds it on the first call)."""
    return _EXTENSION.available()


def _decoder_model(model: Any) -> Any:
    """The transformers causal LM inside ``model`` (a PeftModel's base model, or itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) and hasattr(model, "peft_config") else model


def _base_linear(module: Any) -> Any:
    """The plain linear layer under a peft LoRA wrapper (or the module itself)."""
    return getattr(module, "base_layer", module)


LAYER_LINEARS = (
    ("self_attn", "q_proj"),
    ("self_attn", "k_proj"),
    ("self_attn", "v_proj"),
    ("self_attn", "o_proj"),
    ("mlp", "gate_proj"),
    ("mlp", "up_proj"),
    ("mlp", "down_proj"),
)
"""The linear layers of one decoder layer, in the kernel's order (its linear index 7 * layer + j)."""


def _linears(lm: Any) -> list[Any]:
    """Every linear layer of ``lm`` as the model holds it (peft wrappers included), in the
    kernel's order: each layer's ``LAYER_LINEARS``, then the output head (index 7 * layers)."""
    mods = [
        getattr(getattr(layer, owner), name)
        for layer in lm.model.layers
        for owner, name in LAYER_LINEARS
    ]
    return [*mods, lm.lm_head]


def unsupported(model: Any) -> str | None:
    """Why ``model`` cannot decode on the fused path (None: it can)."""
    import torch

    from core.models.quant import int8_linear_class

    lm = _decoder_model(model)
    config = getattr(lm, "config", None)
    kind = getattr(config, "model_type", None)
    if kind not in ARCHITECTURES:
        return f"model type {kind!r} is not one of {', '.join(ARCHITECTURES)}"
    if getattr(config, "hidden_act", None) != "silu":
        return f"activation {config.hidden_act!r} is not silu"
    window = getattr(config, "sliding_window", None)
    if "sliding_attention" in (getattr(config, "layer_types", None) or ()) or (
        window and (kind == "mistral" or getattr(config, "use_sliding_window", False))
    ):
        return "sliding-window attention"
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if isinstance(rope, dict) and rope.get("rope_type", rope.get("type")) in DYNAMIC_ROPE:
        return f"rope type {rope.get('rope_type', rope.get('type'))!r} changes with the length"
    if getattr(config, "pretraining_tp", 1) not in (None, 1):
        return "pretraining_tp > 1"
    if getattr(config, "final_logit_softcapping", None) or getattr(
        config, "attn_logit_softcapping", None
    ):
        return "logit soft-capping"
    inner = getattr(lm, "model", None)
    layers = getattr(inner, "layers", None)
    if inner is None or layers is None or not hasattr(inner, "rotary_emb"):
        return "no model.layers / rotary_emb"
    if any(hasattr(layer.self_attn, n) for layer in layers for n in ("q_norm", "k_norm")):
        return "q/k norms in attention"
    int8 = int8_linear_class()
    for lin in map(_base_linear, _linears(lm)):
        if type(lin) is int8:
            continue
        if type(lin) is not torch.nn.Linear:
            return f"linear layer of type {type(lin).__name__}"
        elif lin.weight.dtype != torch.float32 or lin.weight.device.type != "cpu":
            return f"weights are {lin.weight.dtype} on {lin.weight.device}, not fp32 on the CPU"
        elif not lin.weight.is_contiguous():
            return "a weight is not stored row-major"
    emb = inner.embed_tokens.weight
    if emb.dtype != torch.float32 or emb.device.type != "cpu":
        return "the input embedding is not fp32 on the CPU"
    return None


def _lora_parts(module: Any, adapter: str) -> tuple[list[Any], list[Any], list[float]] | None:
    """(A list, B list, scaling list) of ``adapter`` on a peft LoRA layer; ([], [], []) when the
    layer has no such adapter; None when it has one this path cannot run."""
    lora_a = getattr(module, "lora_A", None)
    if lora_a is None or adapter not in lora_a:
        return [], [], []
    if adapter in getattr(module, "lora_variant", {}) or getattr(module, "lora_bias", {}).get(
        adapter, False
    ):
        return None
    a = lora_a[adapter].weight.detach()
    b = module.lora_B[adapter].weight.detach()
    if a.dtype != b.dtype or a.dtype.is_floating_point is False:
        return None
    return [a.float().contiguous()], [b.float().contiguous()], [float(module.scaling[adapter])]


class FusedDecoder:
    """Decodes one sequence of ``model`` a token per C++ call (see the module docstring).

    Build it once the model's weights are final (after int8 quantization; adapters may come and
    go later, they are read per generation). ``generate`` holds no lock: the caller serialises.
    """

    def __init__(self, model: Any) -> None:
        import torch

        reason = unsupported(model)
        if reason is not None:
            raise ModelError(f"fused decoding does not support this model: {reason}")
        module = kernel()
        lm = _decoder_model(model)
        config, inner = lm.config, lm.model
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        tensors: list[torch.Tensor] = []
        empty = torch.empty(0)

        def linear(mod: Any, with_bias: bool = True) -> None:
            lin = _base_linear(mod)
            if lin.weight.dtype == torch.int8:
                tensors.extend([lin.weight, lin.weight_scale, lin.weight_zero])
            else:
                tensors.append(lin.weight.detach())
            if with_bias:
                tensors.append(lin.bias.detach() if lin.bias is not None else empty)

        linears = _linears(lm)
        per_layer = len(LAYER_LINEARS)
        with torch.no_grad():
            tensors.append(inner.embed_tokens.weight.detach())
            tensors.append(inner.norm.weight.detach())
            linear(lm.lm_head, with_bias=False)
            if _base_linear(lm.lm_head).bias is not None:
                raise ModelError("fused decoding does not support a biased output head")
            for index, layer in enumerate(inner.layers):
                tensors += [
                    layer.input_layernorm.weight.detach(),
                    layer.post_attention_layernorm.weight.detach(),
                ]
                for mod in linears[per_layer * index : per_layer * (index + 1)]:
                    linear(mod)
        ints = [
            config.num_hidden_layers,
            config.hidden_size,
            heads,
            kv_heads,
            head_dim,
            config.intermediate_size,
            config.vocab_size,
        ]
        self._impl = module.Decoder(tensors, ints, float(config.rms_norm_eps))
        self._lm = lm
        self._shape = (config.num_hidden_layers, kv_heads, head_dim)
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self._adapter: str | None = None
        self._busy = False

    # -- adapters --------------------------------------------------------------------------------

    def adapter_supported(self, model: Any, adapter: str) -> str | None:
        """Why ``adapter`` of ``model`` (a PeftModel) cannot run here (None: it can): it must be
        plain LoRA on the decoder's linear layers and the head, nothing else."""
        targets = {id(module) for module in _linears(_decoder_model(model))}
        found = False
        for name, module in model.named_modules():
            holders = [*getattr(module, "adapter_layer_names", ()), "modules_to_save"]
            if not any(adapter in (getattr(module, h, None) or {}) for h in holders):
                continue
            if id(module) not in targets:
                return f"adapter {adapter!r} changes {name}, not only the linear layers"
            parts = _lora_parts(module, adapter)
            if parts is None:
                return f"adapter {adapter!r} is a LoRA variant (DoRA, LoRA bias, ...) at {name}"
            if not parts[0]:
                return f"adapter {adapter!r} at {name} is not LoRA"
            found = True
        return None if found else f"adapter {adapter!r} has no LoRA layers in this model"

    def _use_adapter(self, model: Any, adapter: str | None) -> None:
        """Point the kernel's LoRA parts at ``adapter``'s matrices (None: none)."""
        if adapter == self._adapter:
            return
        self._impl.clear_lora()
        self._adapter = None
        if adapter is None:
            return
        for index, module in enumerate(_linears(_decoder_model(model))):
            parts = _lora_parts(module, adapter)
            if parts is None:
                raise ModelError(f"adapter {adapter!r} cannot run on the fused path")
            if parts[0]:
                self._impl.set_lora(index, *parts)
        self._adapter = adapter

    def forget_adapters(self) -> None:
        """Drop every reference to adapter matrices (call when adapters are unloaded)."""
        self._impl.clear_lora()
        self._adapter = None

    # -- decoding --------------------------------------------------------------------------------

    def _ensure_capacity(self, positions: int) -> None:
        import torch

        capacity = -(-positions // 256) * 256
        if self._cache is not None and self._cache[0].shape[2] >= positions:
            return
        self._cache = None  # free the old one before allocating the new one
        self._impl.clear_cache()
        layers, kv_heads, head_dim = self._shape
        rotary = self._lm.model.rotary_emb
        with torch.no_grad():
            ids = torch.arange(capacity).unsqueeze(0)
            cos, sin = rotary(torch.zeros(1, dtype=torch.float32), ids)
        shape = (layers, kv_heads, capacity, head_dim)
        self._cache = (torch.empty(shape), torch.empty(shape))  # a step reads positions <= its own
        # (the kernel holds its own references to the cache and the RoPE tables)
        self._impl.set_cache(*self._cache, cos[0].float().contiguous(), sin[0].float().contiguous())

    def generate(
        self,
        model: Any,
        input_ids: torch.Tensor,
        *,
        max_new_tokens: int,
        eos: set[int],
        adapter: str | None = None,
        forward_kwargs: dict[str, Any] | None = None,
        on_ids: Callable[[int], None] | None = None,
        stop: Callable[[], bool] | None = None,
        threads: int | None = None,
    ) -> list[int]:
        """Greedy continuation of ``input_ids`` ([1, T]) by ``model`` (the loaded transformers
        model or PeftModel this decoder was built from): the new token ids, an end-of-sequence
        token included when one ended it. ``on_ids`` gets each new id as it is chosen; ``stop``
        is polled before each step (True ends the generation)."""
        if input_ids.dim() != 2 or input_ids.shape[0] != 1:
            raise ModelError("fused decoding takes one sequence: input_ids of shape [1, T]")
        prompt_len = int(input_ids.shape[1])
        if prompt_len < 1 or max_new_tokens < 1:
            return []
        if self._busy:  # e.g. an on_ids callback generating again: it would overwrite the cache
            raise ModelError("this model is already generating (a nested generate call?)")
        self._busy = True
        try:
            return self._generate(
                model,
                input_ids,
                max_new_tokens,
                eos,
                adapter,
                forward_kwargs,
                on_ids,
                stop,
                threads,
            )
        finally:
            self._busy = False
            if self._cache is not None and self._cache[0].shape[2] > KEEP_POSITIONS:
                self._cache = None  # a long context's cache is not kept between generations
                self._impl.clear_cache()

    def _generate(
        self,
        model: Any,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        eos: set[int],
        adapter: str | None,
        forward_kwargs: dict[str, Any] | None,
        on_ids: Callable[[int], None] | None,
        stop: Callable[[], bool] | None,
        threads: int | None,
    ) -> list[int]:
        import torch
        from transformers import DynamicCache

        prompt_len = int(input_ids.shape[1])
        self._use_adapter(model, adapter)
        self._ensure_capacity(prompt_len + max_new_tokens)
        threads = threads or torch.get_num_threads()
        with torch.inference_mode():
            cache = DynamicCache(config=self._lm.config)
            out = model(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
                **(forward_kwargs or {}),
            )
            keys, values = self._cache
            for index, layer in enumerate(_cache_layers(out.past_key_values)):
                k, v = layer
                keys[index, :, :prompt_len].copy_(k[0])
                values[index, :, :prompt_len].copy_(v[0])
            token = int(out.logits[0, -1].argmax())
            del out, cache
        new = [token]
        if on_ids is not None:
            on_ids(token)
        pos = prompt_len
        while token not in eos and len(new) < max_new_tokens and not (stop and stop()):
            logits = self._impl.step(token, pos, threads)
            token = int(torch.argmax(logits))
            new.append(token)
            pos += 1
            if on_ids is not None:
                on_ids(token)
        return new

    def logits(self, token_ids: Sequence[int], *, threads: int | None = None) -> torch.Tensor:
        """Next-token logits after each of ``token_ids`` ([len, vocab]), fed one step at a time
        from position 0 with no adapter (to compare with the transformers forward)."""
        import torch

        self.forget_adapters()
        self._ensure_capacity(len(token_ids))
        rows = []
        threads = threads or torch.get_num_threads()
        for pos, token in enumerate(token_ids):
            rows.append(self._impl.step(int(token), pos, threads).clone())
        return torch.stack(rows)


def _cache_layers(cache: Any) -> list[tuple[Any, Any]]:
    """(keys, values) per layer of a transformers cache ([batch, kv_heads, T, head_dim] each)."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return [(layer.keys, layer.values) for layer in layers]
    return [(k, v) for k, v in cache]  # legacy tuple-of-tuples caches
