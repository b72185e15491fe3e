"""The local backend: one transformers model in this process, with peft LoRA adapters by name.

The base model loads lazily (first ``generate``/``load``). Adapters attach to it through peft and
are chosen per call (``adapter="name"``) or per row of a batch (``adapter_names=[...]``, peft's
mixed-adapter batches), so many LoRA arms share one copy of the base weights. ``mix_adapters``
adds exact weighted sums of loaded adapters as more adapters (a small LRU cache of them). Mixed
batches run on a leaner LoRA forward than peft's (contiguous runs of rows, no gather/scatter; see
``_run_mixed_batch_forward``). Greedy decoding by default; one generation at a time in the whole
process, because two would only fight over the same CPU cores and memory bandwidth.
"""

from __future__ import annotations

import hashlib
import logging
import math
import numbers
import threading
import types
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from core.config import ModelConfig, check_name
from core.errors import ModelError
from core.models import hf
from core.models.base import (
    BASE_ADAPTER,
    ChatModel,
    MessageLike,
    check_adapter_names,
    message_dicts,
)
from core.models.convert import ensure_local_model
from core.packaged import SMOLLM2_NAME
from core.types import Generation, Usage

log = logging.getLogger(__name__)

_GENERATION_LOCK = threading.RLock()
"""Held while any local model loads, changes adapters or generates: one at a time per process."""

BATCH_ROWS = 16
"""Rows per forward pass in ``generate_batch``; longer batches run in chunks of this size."""

MIX_CACHE = 8
"""Weighted mixtures (``mix_adapters``) kept attached at once; the least recently used goes first."""

MIX_DECIMALS = 2
"""Mixture weights are rounded to this many decimals, for caching and building alike."""

CpuWeights = Literal["fp32", "int8"]
"""How the linear weights are stored on the CPU: fp32, or int8 weight-only (``core.models.quant``)."""


@dataclass(frozen=True)
class _Mixture:
    """A weighted sum of loaded adapters, attached to the PeftModel as one more LoRA adapter."""

    key: tuple[tuple[str, float], ...]
    """(expert, rounded weight) pairs, sorted by expert."""

    @property
    def experts(self) -> frozenset[str]:
        return frozenset(expert for expert, _ in self.key)


class LocalChatModel(ChatModel):
    """A transformers causal LM on this machine (CPU fp32, or CUDA with optional 4/8-bit).

    ``cpu_weights`` picks how a CPU model stores its linear layers: ``"fp32"``, or ``"int8"``:
    weight-only int8 with an fp32 scale and offset per 32 weights (``core.models.quant``), ~3.2x
    fewer bytes per decoded token and bit-for-bit the weights of the packaged GGUF; activations
    and adapters stay fp32. If its C++ kernel cannot be built here, the model falls back to fp32
    with a warning (``info()["weights"]`` says which is in use). ``None`` (default): ``"int8"``
    when ``config.quantization == "int8"``, else ``"fp32"``.

    On the CPU, ``generate`` decodes greedily on ``core.models.fused`` (one C++ call per token,
    adapters and mixtures included) when ``config.fused_decode`` is on and the model and adapter
    allow it; ``info()["decode"]`` says which path runs and ``info()["decode_note"]`` why not.
    Without it, fp32 wide layers are stored column-major (faster transformers decode steps).
    """

    backend = "local"

    def __init__(
        self, config: ModelConfig, cache_dir: Path, *, cpu_weights: CpuWeights | None = None
    ) -> None:
        if cpu_weights not in (None, "fp32", "int8"):
            raise ModelError(f"unknown cpu_weights {cpu_weights!r}; use 'fp32' or 'int8'")
        self.config = config
        self.cache_dir = Path(cache_dir)
        self.name = config.model or SMOLLM2_NAME
        self._path: Path | None = None
        self._tokenizer: Any = None
        self._model: Any = None  # the transformers model, or a PeftModel around it
        self._placement: hf.Placement | None = None
        self._params = 0
        self._adapters: dict[str, Path] = {}  # the user's adapters, by name
        self._mixtures: OrderedDict[str, _Mixture] = OrderedDict()  # by name, least recent first
        self._tokenizer_lock = threading.Lock()
        self._cpu_weights: CpuWeights = cpu_weights or (
            "int8" if config.quantization == "int8" else "fp32"
        )
        self._weights: str | None = None  # what the loaded linear layers hold: fp32, int8, ...
        self._fused: Any = None  # a core.models.fused.FusedDecoder when that path can run
        self._fused_note: str | None = None  # why it can't, when it can't
        self._fused_adapters: dict[str, str | None] = {}  # adapter -> why not fused (None: fine)

    # -- loading ---------------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The local folder of the model (converting the packaged default on first use)."""
        if self._path is None:
            self._path = ensure_local_model(self.config.model, self.cache_dir)
        return self._path

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def hf_model(self) -> Any:
        """The loaded transformers model (a ``PeftModel`` once adapters are attached)."""
        self.load()
        return self._model

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            with self._tokenizer_lock:
                if self._tokenizer is None:
                    self._tokenizer = self._load_tokenizer()
        return self._tokenizer

    def load(self) -> None:
        """Load the weights now (idempotent)."""
        if self._model is not None:
            return
        with _GENERATION_LOCK:
            if self._model is not None:
                return
            placement = hf.placement(self.config.quantization)  # fails fast, before any work
            import torch
            from transformers import AutoModelForCausalLM

            if self.config.threads:
                torch.set_num_threads(self.config.threads)
            path, tokenizer = self.path, self.tokenizer
            kwargs: dict[str, Any] = {"dtype": placement.dtype, "local_files_only": True}
            if placement.quantization_config is not None:
                kwargs |= {
                    "quantization_config": placement.quantization_config,
                    "device_map": {"": 0},
                }
            try:
                model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
            except Exception as e:
                raise ModelError(f"could not load model {self.name!r} from {path}: {e}") from e
            if placement.quantization_config is None:
                model.to(placement.device)
            model.eval()
            model.requires_grad_(False)
            if model.generation_config.pad_token_id is None:
                model.generation_config.pad_token_id = tokenizer.pad_token_id
            self._params = model.num_parameters()  # before int8 unties the output head
            self._weights = str(placement.dtype).removeprefix("torch.")
            if placement.device == "cpu" and placement.dtype == torch.float32:
                self._weights = self._prepare_cpu_weights(model)
            self._placement = placement
            self._model = model
            log.info(
                "loaded %s from %s (%.0fM params, %s, %s weights, %d threads)",
                self.name,
                path,
                self._params / 1e6,
                placement.device,
                self._weights,
                torch.get_num_threads(),
            )

    def _prepare_cpu_weights(self, model: Any) -> str:
        """Lay out an fp32 CPU model's linear weights for decoding and set up fused decoding;
        returns what the weights hold."""
        weights = "float32"
        if self._cpu_weights == "int8":
            from core.models import quant

            try:
                count = quant.quantize_linears_int8(model)
            except ModelError as e:
                log.warning("%s; %s stays in fp32", e, self.name)
            else:
                log.info("%s: %d linear layers in int8 (weight-only)", self.name, count)
                weights = "int8"
        if self.config.fused_decode:
            from core.models import fused

            try:
                self._fused = fused.FusedDecoder(model)  # reads the row-major weights in place
            except Exception as e:  # unsupported, no compiler, or a config the kernel refuses
                self._fused_note = (
                    str(e) if isinstance(e, ModelError) else f"{type(e).__name__}: {e}"
                )
                log.warning("%s: %s; decoding with transformers' generate", self.name, e)
            else:
                log.info("%s: fused decoding (%s kernel)", self.name, fused.kernel().isa())
        else:
            self._fused_note = "fused_decode is off in the model's configuration"
        if self._fused is None and weights == "float32":
            hf.column_major_linears(model)  # faster transformers decode steps
        return weights

    def _load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        except Exception as e:
            raise ModelError(f"could not load the tokenizer of {self.name!r}: {e}") from e
        tokenizer.padding_side = "left"  # decoder-only batches are padded on the left
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    # -- generation ------------------------------------------------------------------------------

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
        prompt = self.render(messages)
        if cancel is not None and cancel.is_set():
            return Generation("", model=self.name, adapter=adapter, finish_reason="cancelled")
        with _GENERATION_LOCK:
            self.load()
            streamer = hf.callback_streamer(self.tokenizer, on_token) if on_token else None
            temp = self.config.temperature if temperature is None else temperature
            if self._fused_unfit(adapter, temp) is None:
                return self._generate_fused(prompt, adapter, max_new_tokens, streamer, cancel)
            return self._generate_rows(
                [prompt], [adapter], max_new_tokens, temperature, streamer=streamer, cancel=cancel
            )[0]

    def generate_batch(
        self,
        batch: Sequence[Sequence[MessageLike]],
        *,
        adapter_names: Sequence[str | None] | None = None,
        max_new_tokens: int | None = None,
    ) -> list[Generation]:
        """All rows in padded batches; row ``i`` runs through ``adapter_names[i]`` (None: base)."""
        names = check_adapter_names(batch, adapter_names)
        prompts = [self.render(messages) for messages in batch]
        # Similar lengths share a chunk, so little compute is spent on padding.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[Generation | None] = [None] * len(prompts)
        with _GENERATION_LOCK:
            self.load()
            for start in range(0, len(order), BATCH_ROWS):
                # Within a chunk, rows of one adapter sit together: contiguous LoRA sub-batches.
                rows = sorted(
                    order[start : start + BATCH_ROWS], key=lambda i: _adapter_key(names[i])
                )
                generations = self._generate_rows(
                    [prompts[i] for i in rows], [names[i] for i in rows], max_new_tokens, None
                )
                for i, generation in zip(rows, generations, strict=True):
                    results[i] = generation
        return [g for g in results if g is not None]

    def render(self, messages: Sequence[MessageLike]) -> str:
        """The prompt text for ``messages``: the tokenizer's chat template with the reply opened."""
        dicts = message_dicts(messages)
        tokenizer = self.tokenizer
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(dicts, tokenize=False, add_generation_prompt=True)
        # A base model without a template: a plain transcript ending where the reply begins.
        lines = [f"{d['role'].capitalize()}: {d['content']}" for d in dicts]
        return "\n".join([*lines, "Assistant:"])

    def _fused_unfit(self, adapter: str | None, temperature: float) -> str | None:
        """Why one greedy generation with ``adapter`` cannot take the fused path (None: it can)."""
        if self._fused is None:
            return self._fused_note or "not a CPU model"
        if temperature > 0:
            return "sampling (temperature > 0) runs on transformers' generate"
        from core.models import fused

        unfit = fused.generation_unfit(self._model.generation_config)
        if unfit is not None:
            return unfit
        if adapter is None:
            return None
        self._check_adapter(adapter)
        if adapter not in self._fused_adapters:
            self._fused_adapters[adapter] = self._fused.adapter_supported(self._model, adapter)
        return self._fused_adapters[adapter]

    def _generate_fused(
        self,
        prompt: str,
        adapter: str | None,
        max_new_tokens: int | None,
        streamer: Any,
        cancel: threading.Event | None,
    ) -> Generation:
        """One greedy generation on ``core.models.fused``: transformers prefill, then one C++
        call per token. Same results (text, usage, finish reason) as ``_generate_rows``."""
        import torch

        tokenizer = self.tokenizer
        templated = bool(getattr(tokenizer, "chat_template", None))
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=not templated)["input_ids"]
        limit = max_new_tokens or self.config.max_new_tokens
        eos = hf.eos_ids(self._model, tokenizer)
        forward_kwargs = {"adapter_names": [adapter or BASE_ADAPTER]} if self._adapters else {}
        if streamer is not None:
            streamer.put(ids)  # the prompt: a skip_prompt streamer drops it

        def on_ids(token: int) -> None:
            if streamer is not None:
                streamer.put(torch.tensor([token]))

        try:
            new = self._fused.generate(
                self._model,
                ids,
                max_new_tokens=limit,
                eos=eos,
                adapter=adapter,
                forward_kwargs=forward_kwargs,
                on_ids=on_ids,
                stop=cancel.is_set if cancel is not None else None,
                threads=self.config.threads,
            )
        except Exception as e:
            raise ModelError(f"generation with {self.name!r} failed: {e}") from e
        if streamer is not None:
            streamer.end()  # the last piece of text (not after a failure: the callback failed)
        return self._finish(new, int(ids.shape[1]), adapter, eos, limit, cancel)

    def _finish(
        self,
        new: list[int],
        prompt_tokens: int,
        adapter: str | None,
        eos: set[int],
        limit: int,
        cancel: threading.Event | None,
    ) -> Generation:
        """The ``Generation`` of the new token ids ``new``: cut after the first end-of-sequence
        token ("stop"), else "cancelled" or "length" (or "stop" when it ended short of both)."""
        stop_at = next((i for i, t in enumerate(new) if t in eos), None)
        if stop_at is not None:
            new, reason = new[: stop_at + 1], "stop"
        elif cancel is not None and cancel.is_set():
            reason = "cancelled"
        else:
            reason = "length" if len(new) >= limit else "stop"
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        return Generation(text, Usage(prompt_tokens, len(new)), self.name, adapter, reason)

    def _adapters_changed(self) -> None:
        """Adapters were attached, dropped or mixed: the fused path re-reads them when used."""
        self._fused_adapters.clear()
        if self._fused is not None:
            self._fused.forget_adapters()

    def _generate_rows(
        self,
        prompts: list[str],
        adapters: list[str | None],
        max_new_tokens: int | None,
        temperature: float | None,
        *,
        streamer: Any = None,
        cancel: threading.Event | None = None,
    ) -> list[Generation]:
        import torch
        from transformers import StoppingCriteriaList

        for name in set(adapters):
            self._check_adapter(name)
        tokenizer, model = self.tokenizer, self._model
        templated = bool(getattr(tokenizer, "chat_template", None))
        enc = tokenizer(
            prompts, return_tensors="pt", padding=True, add_special_tokens=not templated
        ).to(self._placement.device)
        limit = max_new_tokens or self.config.max_new_tokens
        temp = self.config.temperature if temperature is None else temperature
        kwargs: dict[str, Any] = {"max_new_tokens": limit, "streamer": streamer}
        if temp > 0:
            kwargs |= {"do_sample": True, "temperature": temp}
        else:
            kwargs |= {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        if cancel is not None:
            kwargs["stopping_criteria"] = StoppingCriteriaList([hf.cancel_criteria(cancel)])
        if self._adapters:  # a PeftModel: say which adapter each row uses, base rows included
            kwargs["adapter_names"] = [name or BASE_ADAPTER for name in adapters]
        try:
            with torch.inference_mode():
                out = model.generate(**enc, **kwargs)
        except Exception as e:
            raise ModelError(f"generation with {self.name!r} failed: {e}") from e

        eos = hf.eos_ids(model, tokenizer)
        width = enc["input_ids"].shape[1]
        return [
            self._finish(
                out[row, width:].tolist(),
                int(enc["attention_mask"][row].sum()),
                adapter,
                eos,
                limit,
                cancel,
            )
            for row, adapter in enumerate(adapters)
        ]

    # -- adapters --------------------------------------------------------------------------------

    def load_adapter(self, name: str, path: str | Path) -> None:
        try:
            check_name(name, "adapter name")
        except ValueError as e:
            raise ModelError(str(e)) from e
        folder = Path(path).expanduser().resolve()
        if not (folder / "adapter_config.json").is_file():
            raise ModelError(f"adapter {name!r}: {folder} holds no adapter_config.json")
        with _GENERATION_LOCK:
            if self._adapters.get(name) == folder:
                return
            if name in self._mixtures:
                raise ModelError(f"adapter name {name!r} is taken by a mixture; unload it first")
            self.load()
            if name in self._adapters:
                self.unload_adapter(name)
            from peft import PeftModel

            try:
                with warnings.catch_warnings():
                    # peft calls a transformers API deprecated in v5: not the user's concern.
                    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
                    if isinstance(self._model, PeftModel):
                        self._model.load_adapter(folder, adapter_name=name, is_trainable=False)
                    else:
                        self._model = PeftModel.from_pretrained(
                            self._model, folder, adapter_name=name, is_trainable=False
                        )
            except Exception as e:
                raise ModelError(f"could not load adapter {name!r} from {folder}: {e}") from e
            self._model.eval()
            _use_run_forward(self._model)
            self._adapters[name] = folder
            self._adapters_changed()
            log.info("loaded adapter %s from %s", name, folder)

    def unload_adapter(self, name: str) -> None:
        """Forget the adapter ``name`` and every mixture built from it (a mixture's name drops
        just that mixture). The last user adapter takes the LoRA layers out: the plain model."""
        with _GENERATION_LOCK:
            if name in self._mixtures:
                self._drop_mixture(name)
                return
            if name not in self._adapters:
                raise ModelError(f"adapter {name!r} is not loaded; loaded: {self.adapters()}")
            for mixture in [m for m, mix in self._mixtures.items() if name in mix.experts]:
                self._drop_mixture(mixture)
            del self._adapters[name]
            self._adapters_changed()
            if self._adapters:
                self._delete_peft_adapter(name)
            else:  # the last one: take the LoRA layers out again, back to the plain model
                self._model = self._model.unload()
                self._mixtures.clear()  # (none left: each one used an adapter just dropped)
            log.info("unloaded adapter %s", name)

    def adapters(self) -> list[str]:
        """The user's adapters (mixtures from ``mix_adapters`` are not listed; see ``info()``)."""
        return sorted(self._adapters)

    def mix_adapters(self, weights: Mapping[str, float], *, name: str | None = None) -> str:
        """The name of an adapter whose weight delta is ``sum(w * delta_W(expert))``.

        ``weights`` maps loaded adapters (the experts) to positive weights; they are rounded to
        ``MIX_DECIMALS`` decimals (an expert whose weight rounds to 0 is left out). The mixture is
        peft's ``add_weighted_adapter(combination_type="cat")``: the experts' LoRA matrices side
        by side (``A`` rows scaled by ``w * lora_alpha / r``), rank the sum of theirs, so it is
        exact, experts of different ranks or target modules included. It is used like any
        adapter (``generate(adapter=...)``, ``adapter_names=[...]``) until evicted.

        A single expert at weight 1 is just that expert: its name comes back and nothing is
        built. Mixtures are cached by (experts, rounded weights): the same mixture again returns
        the same name without work. At most ``MIX_CACHE`` stay attached; making one more drops
        the least recently used (its name then raises "not loaded" until mixed again). ``name``
        names a new mixture (default ``mix_<hash8>`` of its key); a name used by another
        mixture is rebuilt with these weights. Unloading an expert drops its mixtures.
        """
        if not isinstance(weights, Mapping) or not weights:
            raise ModelError("mix_adapters needs a non-empty {adapter: weight} mapping")
        with _GENERATION_LOCK:
            key = self._mixture_key(weights)
            if len(key) == 1 and key[0][1] == 1.0:
                return key[0][0]
            if name is not None:
                try:
                    check_name(name, "mixture name")
                except ValueError as e:
                    raise ModelError(str(e)) from e
                if name in self._adapters:
                    raise ModelError(f"mixture name {name!r} is a loaded adapter's name")
                if name in self._mixtures and self._mixtures[name].key != key:
                    self._drop_mixture(name)
            else:
                digest = hashlib.sha1(repr(key).encode()).hexdigest()[:8]
                name = next(
                    (n for n, mix in reversed(self._mixtures.items()) if mix.key == key),
                    f"mix_{digest}",
                )
            if name in self._mixtures:
                self._mixtures.move_to_end(name)
                return name
            self._build_mixture(name, key)
            self._mixtures[name] = _Mixture(key)
            while len(self._mixtures) > MIX_CACHE:
                self._drop_mixture(next(iter(self._mixtures)))
            return name

    def adapter_bytes(self, name: str) -> int:
        """Bytes of the parameters adapter (or mixture) ``name`` adds to the model."""
        with _GENERATION_LOCK:
            self._check_adapter(name)
            total = 0
            for path, param in self._model.named_parameters():
                parts = path.split(".")
                owners = [i for i, p in enumerate(parts) if p == name and i > 0]
                if any(parts[i - 1].startswith("lora_") for i in owners) or any(
                    parts[i - 1] == "modules_to_save" for i in owners
                ):
                    total += param.numel() * param.element_size()
            return total

    def _mixture_key(self, weights: Mapping[str, float]) -> tuple[tuple[str, float], ...]:
        pairs = []
        for expert, weight in weights.items():
            if expert not in self._adapters:
                what = "a mixture, not an adapter" if expert in self._mixtures else "not loaded"
                raise ModelError(
                    f"cannot mix {expert!r}: {what}; loaded adapters: {self.adapters()}"
                )
            if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
                raise ModelError(f"weight of {expert!r} is not a number: {weight!r}")
            if not math.isfinite(weight) or weight <= 0:
                raise ModelError(f"weight of {expert!r} must be positive and finite, not {weight}")
            rounded = round(float(weight), MIX_DECIMALS)
            if rounded > 0:
                pairs.append((expert, rounded))
        if not pairs:
            raise ModelError(f"every weight rounds to 0 at {MIX_DECIMALS} decimals: {weights}")
        return tuple(sorted(pairs))

    def _build_mixture(self, name: str, key: tuple[tuple[str, float], ...]) -> None:
        from peft.tuners.lora import LoraLayer

        experts, weights = [e for e, _ in key], [w for _, w in key]
        model = self._model
        for expert in experts:
            config = model.peft_config[expert]
            if getattr(config, "use_dora", False) or getattr(config, "lora_bias", False):
                raise ModelError(
                    f"cannot mix {expert!r}: a DoRA or LoRA-bias adapter is not a sum of B @ A"
                )
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
                model.add_weighted_adapter(experts, weights, name, combination_type="cat")
        except Exception as e:
            if name in model.peft_config:
                self._delete_peft_adapter(name)
            raise ModelError(f"could not mix adapters {dict(key)}: {e}") from e
        # "cat" folds each expert's scaling into A and gives the mixture lora_alpha == r, i.e.
        # scaling 1, unless the first expert used rsLoRA (alpha / sqrt(r)): pin it to 1.
        model.peft_config[name].use_rslora = False
        missing = []
        for path, layer in model.named_modules():
            if not isinstance(layer, LoraLayer):
                continue
            if name in layer.lora_A:
                layer.scaling[name] = 1.0
                layer.lora_A[name].requires_grad_(False)
                layer.lora_B[name].requires_grad_(False)
            elif any(e in layer.lora_A or e in layer.lora_embedding_A for e in experts):
                missing.append(path)  # e.g. the first expert's layers_to_transform left it out
        if missing:
            self._delete_peft_adapter(name)
            raise ModelError(
                f"could not mix adapters {dict(key)}: the mixture misses {len(missing)} of "
                f"their layers (first: {missing[0]}); mix adapters with the same layer layout"
            )
        _use_run_forward(model)
        self._adapters_changed()
        log.info("mixed adapters %s into %s", dict(key), name)

    def _drop_mixture(self, name: str) -> None:
        del self._mixtures[name]
        self._delete_peft_adapter(name)
        self._adapters_changed()
        log.info("dropped mixture %s", name)

    def _delete_peft_adapter(self, name: str) -> None:
        with warnings.catch_warnings():
            # peft moves its (unused: every call names its adapters) active adapter elsewhere.
            warnings.filterwarnings("ignore", message=".*was active which is now deleted.*")
            self._model.delete_adapter(name)

    def _check_adapter(self, name: str | None) -> None:
        if name is not None and name not in self._adapters and name not in self._mixtures:
            raise ModelError(
                f"adapter {name!r} is not loaded in {self.name!r}; loaded: {self.adapters()}"
            )

    # -- introspection ---------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def info(self) -> dict[str, Any]:
        """What is loaded; does not load anything itself (``loaded`` says whether weights are in)."""
        placement = self._placement
        return {
            "backend": self.backend,
            "name": self.name,
            "model": self.config.model,
            "path": str(self._path) if self._path else None,
            "loaded": self.loaded,
            "params": self._params or None,
            "dtype": str(placement.dtype).removeprefix("torch.") if placement else None,
            "weights": self._weights,
            "decode": "fused" if self._fused is not None else "transformers",
            "decode_note": self._fused_note,
            "device": placement.device if placement else None,
            "quantization": self.config.quantization,
            "adapters": {name: str(path) for name, path in sorted(self._adapters.items())},
            # (a snapshot taken in one step: mix_adapters may change them meanwhile)
            "mixtures": {name: dict(mix.key) for name, mix in tuple(self._mixtures.items())},
        }


# -- mixed-adapter batches -----------------------------------------------------------------------


def _adapter_key(name: str | None) -> tuple[bool, str]:
    """Sort key that groups a batch's rows by adapter (base rows first)."""
    return (name is not None, name or "")


def _adapter_runs(adapter_names: Sequence[str]) -> list[tuple[str, int, int]]:
    """``(adapter, start, stop)`` for each run of equal consecutive names."""
    runs: list[tuple[str, int, int]] = []
    start = 0
    for i in range(1, len(adapter_names) + 1):
        if i == len(adapter_names) or adapter_names[i] != adapter_names[start]:
            runs.append((adapter_names[start], start, i))
            start = i
    return runs


def _run_mixed_batch_forward(
    layer: Any, x: Any, *args: Any, adapter_names: list[str], **kwargs: Any
) -> Any:
    """peft's mixed-adapter LoRA forward (``lora.Linear._mixed_batch_forward``) over contiguous
    runs of rows: per adapter, one ``mm`` and one in-place ``addmm_`` on a slice of the output
    (views), instead of a gather, module calls and a scatter. In eval mode (no dropout) the same
    sum, ``result + scaling * B(A(x))``, up to float rounding.

    ``generate_batch`` groups rows by adapter, so a chunk has one run per adapter; any order is
    still correct, only with more runs. LoRA variants (DoRA, aLoRA) take peft's own path.
    """
    runs = _adapter_runs(adapter_names)
    if (
        layer.training
        or kwargs.get("alora_offsets") is not None
        or any(a in layer.lora_variant for a, _, _ in runs)
    ):
        return type(layer)._mixed_batch_forward(
            layer, x, *args, adapter_names=adapter_names, **kwargs
        )
    kwargs.pop("alora_offsets", None)
    result = layer.base_layer(x, *args, **kwargs)
    if not result.is_contiguous():
        result = result.contiguous()
    flat = result.view(-1, result.shape[-1])  # [rows * positions, out], rows outermost
    x_flat = x.reshape(-1, x.shape[-1])
    per_row = flat.shape[0] // len(adapter_names)
    for adapter, start, stop in runs:
        if adapter not in layer.lora_A:  # the base model ("__base__"), or not on this layer
            continue
        a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
        sub = x_flat[start * per_row : stop * per_row]
        rows = flat[start * per_row : stop * per_row]
        # rows += scaling * (sub @ A.T) @ B.T, in place; eval mode has no dropout.
        if sub.dtype == a.dtype == rows.dtype:
            rows.addmm_(sub @ a.t(), b.t(), alpha=layer.scaling[adapter])
        else:  # e.g. fp32 adapters on a bf16 model
            out = (sub.to(a.dtype) @ a.t()) @ b.t() * layer.scaling[adapter]
            rows += out.to(rows.dtype)
    return result


def _use_run_forward(model: Any) -> int:
    """Give every peft ``lora.Linear`` of ``model`` the run-based mixed-batch forward (on the
    instance: nothing else in the process changes). Returns how many layers have it."""
    from peft.tuners.lora.layer import Linear

    count = 0
    for module in model.modules():
        if type(module) is Linear:  # subclasses (quantized layers) keep their own
            if "_mixed_batch_forward" not in vars(module):
                module._mixed_batch_forward = types.MethodType(_run_mixed_batch_forward, module)
            count += 1
    return count
