"""Fused decoding (core.models.fused): the same logits and the same greedy text as transformers,
for fp32 and int8 weights, grouped-query attention, biases, odd sizes, LoRA adapters and
mixtures; the fallbacks when it can't run; bad inputs to the kernel; the real SmolLM2."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import pytest

from core.config import ModelConfig
from core.errors import ModelError
from core.models import LocalChatModel, fused
from core.types import Message
from tests.conftest import SHARED_MODELS_DIR

pytestmark = pytest.mark.skipif(not fused.kernel_available(), reason="no C++ compiler here")


def _questions() -> list[list[Message]]:
    return [
        [Message("user", "What is the capital of France?")],
        [Message("system", "Answer briefly."), Message("user", "word " * 40 + "?")],
        # > 256 tokens: the KV cache grows past its first capacity
        [Message("user", "Summarise: " + "the river flows past the old town. " * 40)],
    ]


@pytest.fixture(scope="module")
def qwen_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Qwen2-shaped model: q/k/v biases, one KV head for three query heads, and sizes that are
    no multiple of the SIMD width or of 4 rows (hidden 40, head_dim 8, intermediate 102)."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=40,
        intermediate_size=102,
        num_hidden_layers=2,
        num_attention_heads=5,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(3)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():  # non-zero biases and norms, so a dropped one shows
        for name, param in model.named_parameters():
            if name.endswith(("bias", "norm.weight", "layernorm.weight")):
                param.add_(torch.randn_like(param) * 0.3)
    folder = tmp_path_factory.mktemp("tiny-qwen2")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _hf(folder: Path, int8: bool = False) -> object:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    if int8:
        from core.models.quant import quantize_linears_int8

        quantize_linears_int8(model)
    return model


@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
@pytest.mark.parametrize("which", ["llama", "qwen2"])
def test_step_logits_match_transformers(
    which: str, int8: bool, tiny_model_dir: Path, qwen_dir: Path
) -> None:
    import torch

    model = _hf(tiny_model_dir if which == "llama" else qwen_dir, int8)
    assert fused.unsupported(model) is None
    decoder = fused.FusedDecoder(model)
    ids = [1, 5, 900, 77, 3000, 12, 44, 18, 2047, 9, 300, 301, 5, 5, 17, 80, 81, 82, 7]
    with torch.inference_mode():
        expected = model(input_ids=torch.tensor([ids])).logits[0]
    got = decoder.logits(ids, threads=2)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() < 1e-4 * expected.abs().max()
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
    # Threads split rows, never a sum: one or three threads give the very same numbers.
    assert torch.equal(decoder.logits(ids, threads=1), got)
    assert torch.equal(decoder.logits(ids, threads=3), got)


def test_greedy_text_matches_transformers_generate(qwen_dir: Path) -> None:
    models = {
        on: LocalChatModel(
            ModelConfig(model=str(qwen_dir), max_new_tokens=20, fused_decode=on), Path("x")
        )
        for on in (True, False)
    }
    for model in models.values():
        model.load()
    assert models[True].info()["decode"] == "fused"
    assert models[False].info()["decode"] == "transformers"
    assert "off" in models[False].info()["decode_note"]
    for messages in _questions():
        a, b = models[True].generate(messages), models[False].generate(messages)
        assert (a.text, a.usage, a.finish_reason) == (b.text, b.usage, b.finish_reason)
        assert a.usage.completion_tokens == 20 and a.finish_reason == "length"


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Random (non-identity) LoRA adapters: two plain ones on different layers and ranks, one
    on the output head too, and a DoRA one (which the fused path cannot run)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    specs = {
        "a": {"r": 8, "target_modules": ["q_proj", "v_proj", "o_proj", "down_proj"]},
        "b": {"r": 4, "target_modules": ["k_proj", "gate_proj", "up_proj", "lm_head"]},
        "dora": {"r": 4, "target_modules": ["q_proj"], "use_dora": True},
    }
    out = {}
    for seed, (name, spec) in enumerate(specs.items(), start=1):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        config = LoraConfig(lora_alpha=16, init_lora_weights=False, **spec)
        folder = tmp_path_factory.mktemp(f"adapter-{name}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            get_peft_model(base, config).save_pretrained(folder)
        out[name] = folder
    return out


def test_adapters_and_mixtures_match_transformers(
    tiny_model_dir: Path, adapters: dict[str, Path]
) -> None:
    models = {
        on: LocalChatModel(
            ModelConfig(model=str(tiny_model_dir), max_new_tokens=12, fused_decode=on), Path("x")
        )
        for on in (True, False)
    }
    for model in models.values():
        for name in ("a", "b", "dora"):
            model.load_adapter(name, adapters[name])
    mix = {on: m.mix_adapters({"a": 0.6, "b": 0.4}) for on, m in models.items()}
    assert mix[True] == mix[False]
    fast = models[True]
    assert fast._fused_unfit("a", 0.0) is None and fast._fused_unfit(mix[True], 0.0) is None
    assert "variant" in fast._fused_unfit("dora", 0.0)  # DoRA: transformers' path (which
    # peft refuses with adapter_names: a clear ModelError either way)
    with pytest.raises(ModelError, match="DoRA"):
        fast.generate(_questions()[0], adapter="dora")
    assert "sampling" in fast._fused_unfit(None, 0.7)
    texts = set()
    for messages in _questions()[:2]:
        for adapter in (None, "a", "b", mix[True], "a", None):
            a = fast.generate(messages, adapter=adapter)
            b = models[False].generate(messages, adapter=adapter)
            assert (a.text, a.usage, a.finish_reason) == (b.text, b.usage, b.finish_reason), adapter
            texts.add((adapter, a.text))
    assert len({t for _, t in texts}) >= 4  # the adapters really change the output
    # Reloading a name with other weights, or unloading it, is seen by the next generation.
    fast.load_adapter("a", adapters["b"])
    models[False].load_adapter("a", adapters["b"])
    messages = _questions()[0]
    assert (
        fast.generate(messages, adapter="a").text
        == models[False].generate(messages, adapter="a").text
    )
    for name in ("a", "b", "dora"):
        fast.unload_adapter(name)
    assert fast.generate(messages).text == models[False].generate(messages, adapter=None).text


def _count_fused(model: LocalChatModel, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A counter of the generations that really take the fused path."""
    calls = [0]
    original = model._generate_fused

    def counting(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "_generate_fused", counting)
    return calls


def test_streaming_cancel_and_stop_reasons(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = LocalChatModel(ModelConfig(model=str(tiny_model_dir), max_new_tokens=30), Path("x"))
    fused_calls = _count_fused(model, monkeypatch)
    messages = _questions()[1]
    deltas: list[str] = []
    streamed = model.generate(messages, on_token=deltas.append)
    assert model.info()["decode"] == "fused" and fused_calls == [1]
    assert len(deltas) > 1 and "".join(deltas) == streamed.text == model.generate(messages).text
    assert streamed.finish_reason == "length" and streamed.usage.completion_tokens == 30

    cancel = threading.Event()

    def on_token(text: str) -> None:
        cancel.set()

    gen = model.generate(messages, on_token=on_token, cancel=cancel)
    assert gen.finish_reason == "cancelled" and 0 < gen.usage.completion_tokens < 30

    def boom(text: str) -> None:
        raise ValueError("client went away")

    with pytest.raises(ModelError, match="client went away"):
        model.generate(messages, on_token=boom)

    def nested(text: str) -> None:
        model.generate(messages, max_new_tokens=2)  # would overwrite the running KV cache

    with pytest.raises(ModelError, match="already generating"):
        model.generate(messages, on_token=nested)
    assert model.generate(messages, max_new_tokens=3).usage.completion_tokens == 3
    assert model.generate(messages).text == streamed.text
    assert fused_calls[0] == 8  # the nested call included: it is refused inside


def test_end_of_sequence_and_generation_config_parity(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = {
        on: LocalChatModel(
            ModelConfig(model=str(tiny_model_dir), max_new_tokens=24, fused_decode=on), Path("x")
        )
        for on in (True, False)
    }
    fused_calls = _count_fused(models[True], monkeypatch)
    messages = _questions()[0]
    free = models[True].generate(messages)
    fast = models[True]
    prompt = fast.tokenizer(fast.render(messages), return_tensors="pt", add_special_tokens=False)
    tokens = fast._fused.generate(fast.hf_model, prompt["input_ids"], max_new_tokens=24, eos=set())
    stop_id = tokens[len(tokens) // 2]  # a token it writes mid-reply: make it end the reply
    for model in models.values():
        model.hf_model.generation_config.eos_token_id = stop_id
    a, b = models[True].generate(messages), models[False].generate(messages)
    assert (a.text, a.usage, a.finish_reason) == (b.text, b.usage, b.finish_reason)
    assert a.finish_reason == "stop" and a.usage.completion_tokens < free.usage.completion_tokens
    assert fused_calls == [2]
    # A generation config that is not plain argmax (repetition penalty) keeps transformers' path.
    for model in models.values():
        model.hf_model.generation_config.eos_token_id = None
        model.hf_model.generation_config.repetition_penalty = 1.5
    assert "repetition_penalty" in models[True]._fused_unfit(None, 0.0)
    a, b = models[True].generate(messages), models[False].generate(messages)
    assert (a.text, a.usage) == (b.text, b.usage) and a.text != free.text
    assert fused_calls == [2]


def test_int8_with_adapters_matches_transformers(
    tiny_model_dir: Path, adapters: dict[str, Path]
) -> None:
    from core.models import quant

    if not quant.kernel_available():
        pytest.skip("no int8 kernel here")
    models = {
        on: LocalChatModel(
            ModelConfig(model=str(tiny_model_dir), max_new_tokens=12, fused_decode=on),
            Path("x"),
            cpu_weights="int8",
        )
        for on in (True, False)
    }
    for model in models.values():
        model.load_adapter("a", adapters["a"])
    assert models[True].info()["weights"] == "int8" and models[True].info()["decode"] == "fused"
    for messages in _questions()[:2]:
        for adapter in (None, "a"):
            a = models[True].generate(messages, adapter=adapter)
            b = models[False].generate(messages, adapter=adapter)
            assert (a.text, a.usage) == (b.text, b.usage), adapter


def test_unsupported_models_and_missing_compiler(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100))
    assert "model type 'gpt2'" in fused.unsupported(gpt2)
    with pytest.raises(ModelError, match="does not support"):
        fused.FusedDecoder(gpt2)
    llama = _hf(tiny_model_dir)
    from core.models.hf import column_major_linears

    column_major_linears(llama)
    assert "row-major" in fused.unsupported(llama)
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    small = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
    small |= {"num_attention_heads": 4, "num_key_value_heads": 2}
    mistral = MistralForCausalLM(MistralConfig(sliding_window=16, **small))
    assert "sliding-window" in fused.unsupported(mistral)
    assert (
        fused.unsupported(MistralForCausalLM(MistralConfig(sliding_window=None, **small))) is None
    )
    rope = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    dynamic = LlamaForCausalLM(LlamaConfig(rope_parameters=rope, **small))
    assert "'dynamic'" in fused.unsupported(dynamic)

    def no_kernel() -> None:
        raise ModelError("the fused decode kernel could not be built: no compiler")

    monkeypatch.setattr(fused, "kernel", no_kernel)
    model = LocalChatModel(ModelConfig(model=str(tiny_model_dir)), Path("x"))
    gen = model.generate(_questions()[0], max_new_tokens=4)
    assert gen.usage.completion_tokens == 4
    info = model.info()
    assert info["decode"] == "transformers" and "no compiler" in info["decode_note"]


def test_kernel_rejects_bad_steps(tiny_model_dir: Path) -> None:
    decoder = fused.FusedDecoder(_hf(tiny_model_dir))
    with pytest.raises(RuntimeError, match="no cache"):
        decoder._impl.step(1, 0, 1)
    decoder.logits([1, 2])  # sets up a cache of 256 positions
    with pytest.raises(RuntimeError, match="outside the vocabulary"):
        decoder._impl.step(10**9, 0, 2)
    with pytest.raises(RuntimeError, match="outside the vocabulary"):
        decoder._impl.step(-1, 0, 2)
    with pytest.raises(RuntimeError, match="outside the cache"):
        decoder._impl.step(1, 256, 2)
    with pytest.raises(ModelError, match="one sequence"):
        import torch

        decoder.generate(None, torch.ones(2, 3, dtype=torch.long), max_new_tokens=2, eos=set())


@pytest.mark.real_model
def test_smollm2_fused_matches_transformers_generate() -> None:
    """The default model decodes on the fused path and writes what transformers writes."""
    fast = LocalChatModel(ModelConfig(max_new_tokens=40), SHARED_MODELS_DIR)
    slow = LocalChatModel(ModelConfig(max_new_tokens=40, fused_decode=False), SHARED_MODELS_DIR)
    assert fast.hf_model is not None and fast.info()["decode"] == "fused"
    for messages in [
        [Message("user", "Who is the Eiffel Tower named after?")],
        [Message("user", "Why is the sky blue?")],
    ]:
        a, b = fast.generate(messages), slow.generate(messages)
        assert (a.text, a.usage, a.finish_reason) == (b.text, b.usage, b.finish_reason)


def test_a_forked_child_decodes_with_its_own_threads(tiny_model_dir: Path) -> None:
    """Worker threads do not survive fork(): a child must start its own, not wait forever."""
    import os
    import signal

    import numpy as np

    decoder = fused.FusedDecoder(_hf(tiny_model_dir))
    expected = decoder.logits([1, 5, 900], threads=2).numpy()  # the parent's pool is running
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if it decodes the same numbers in time
        status = 1  # (numpy, not torch, in the child: torch's own OpenMP pool hangs after fork)
        try:
            signal.alarm(20)
            rows = [decoder._impl.step(t, p, 2).numpy().copy() for p, t in enumerate([1, 5, 900])]
            status = 0 if np.array_equal(np.stack(rows), expected) else 2
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
