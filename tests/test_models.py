"""The local backend, conversion and registry: a tiny random Llama for the mechanics (adapters,
mixed batches, cancelling), the real SmolLM2 for a few short greedy generations."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest

from core.config import REPO_ROOT, ModelConfig, Settings
from core.errors import ModelError
from core.models import (
    ChatModel,
    LocalChatModel,
    OpenAIChatModel,
    build_model,
    clear_models,
    ensure_local_model,
    get_model,
    register_backend,
)
from core.models import convert as convert_mod
from core.models.base import BASE_ADAPTER
from core.models.hf import column_major_linears
from core.types import Message
from tests.conftest import SHARED_MODELS_DIR

Q_FRANCE = [Message("user", "What is the capital of France?")]


@pytest.fixture(scope="session")
def smollm_dir() -> Path:
    return ensure_local_model(None, SHARED_MODELS_DIR)


@pytest.fixture(scope="session")
def tiny_dir(smollm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 64-wide Llama with random weights and SmolLM2's tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(smollm_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_adapters(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two LoRA adapters with random (non-zero) lora_B, so each changes the outputs differently."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = {}
    for seed, name in enumerate(["a", "b"], start=1):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(tiny_dir)
        config = LoraConfig(
            r=8,
            lora_alpha=32,
            target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
            init_lora_weights=False,  # random A and B: an untrained but non-identity adapter
        )
        folder = tmp_path_factory.mktemp(f"adapter-{name}")
        with warnings.catch_warnings():  # peft uses a transformers API deprecated in v5
            warnings.simplefilter("ignore", FutureWarning)
            get_peft_model(base, config).save_pretrained(folder)
        out[name] = folder
    return out


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path, tiny_adapters: dict[str, Path]) -> LocalChatModel:
    model = LocalChatModel(ModelConfig(model=str(tiny_dir), max_new_tokens=8), SHARED_MODELS_DIR)
    for name, folder in tiny_adapters.items():
        model.load_adapter(name, folder)
    return model


@pytest.fixture(scope="module")
def smollm(smollm_dir: Path) -> LocalChatModel:
    model = LocalChatModel(ModelConfig(max_new_tokens=24), SHARED_MODELS_DIR)
    model.load()
    return model


def _question(i: int) -> list[Message]:
    # Different lengths, so the mixed batch below needs (left) padding.
    return [Message("system", "Answer briefly."), Message("user", "word " * (3 + 5 * i) + "?")]


# -- conversion and model resolution -------------------------------------------------------------


def test_conversion_is_cached_with_a_marker(smollm_dir: Path) -> None:
    import time

    started = time.perf_counter()
    again = ensure_local_model(None, SHARED_MODELS_DIR)
    assert again == smollm_dir
    assert time.perf_counter() - started < 0.5
    marker = json.loads((smollm_dir / convert_mod.MARKER).read_text())
    assert marker["params"] == 134_515_008
    assert len(marker["source_sha256"]) == 64
    assert (smollm_dir / "model.safetensors").is_file()
    assert (smollm_dir / "tokenizer.json").is_file()


def test_killed_conversion_leaves_nothing_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        ensure_local_model(None, tmp_path)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
    # A folder without the marker (e.g. copied by hand, half written) does not count as converted.
    (tmp_path / convert_mod.DEFAULT_DIR_NAME).mkdir()
    assert not convert_mod._is_complete(tmp_path / convert_mod.DEFAULT_DIR_NAME, Path(__file__))


def test_local_folder_is_used_as_is(tiny_dir: Path) -> None:
    assert ensure_local_model(str(tiny_dir), Path("unused")) == tiny_dir.resolve()


@pytest.mark.parametrize("model", ["/no/such/model", "./missing-model", "~/nope/x"])
def test_unknown_local_path_raises_naming_it(model: str, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist") as err:
        LocalChatModel(ModelConfig(model=model), tmp_path).load()
    assert Path(model).name in str(err.value)


def test_uncached_hub_id_raises_clearly(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="local Hugging Face cache"):
        ensure_local_model("armada-test/no-such-model", tmp_path)


def test_folder_without_config_raises(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="config.json"):
        ensure_local_model(str(tmp_path), tmp_path)


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_quantization_without_cuda_is_a_clear_error(quantization: str, tiny_dir: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    model = LocalChatModel(ModelConfig(model=str(tiny_dir), quantization=quantization), Path("x"))
    with pytest.raises(ModelError, match="needs a CUDA GPU"):
        model.generate(Q_FRANCE)
    assert not model.loaded


# -- adapters and batches on the tiny model ------------------------------------------------------


def test_adapters_change_logits_and_outputs(tiny: LocalChatModel) -> None:
    import torch

    assert tiny.adapters() == ["a", "b"]
    enc = tiny.tokenizer(tiny.render(_question(0)), return_tensors="pt")
    with torch.inference_mode():
        logits = {
            name: tiny._model(**enc, adapter_names=[name]).logits[0, -1]
            for name in ["__base__", "a", "b"]
        }
    assert not torch.allclose(logits["a"], logits["__base__"], atol=1e-4)
    assert not torch.allclose(logits["b"], logits["__base__"], atol=1e-4)
    assert not torch.allclose(logits["a"], logits["b"], atol=1e-4)

    texts = {name: tiny.generate(_question(0), adapter=name).text for name in ["a", "b", None]}
    assert len(set(texts.values())) == 3, texts
    assert tiny.generate(_question(0), adapter="a").adapter == "a"


def test_mixed_adapter_batch_matches_single_rows(tiny: LocalChatModel) -> None:
    names = ["a", "b", None, "a"]
    batch = [_question(i) for i in range(len(names))]
    rows = tiny.generate_batch(batch, adapter_names=names)
    singles = [tiny.generate(m, adapter=n) for m, n in zip(batch, names, strict=True)]
    assert [r.text for r in rows] == [s.text for s in singles]
    assert [r.usage for r in rows] == [s.usage for s in singles]
    assert [r.adapter for r in rows] == names
    assert all(r.finish_reason == "length" and r.usage.completion_tokens == 8 for r in rows)


def test_unknown_adapter_and_bad_adapter_folders(tiny: LocalChatModel, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not loaded"):
        tiny.generate(Q_FRANCE, adapter="nope")
    with pytest.raises(ModelError, match="adapter_names has 1 entries"):
        tiny.generate_batch([Q_FRANCE, Q_FRANCE], adapter_names=["a"])
    with pytest.raises(ModelError, match="adapter_config.json"):
        tiny.load_adapter("c", tmp_path)
    with pytest.raises(ModelError, match="invalid adapter name"):
        tiny.load_adapter("Bad Name", tmp_path)


def test_unloading_adapters_restores_the_base(tiny_dir: Path, tiny_adapters: dict) -> None:
    model = LocalChatModel(ModelConfig(model=str(tiny_dir), max_new_tokens=6), Path("x"))
    before = model.generate(_question(1)).text
    model.load_adapter("a", tiny_adapters["a"])
    model.load_adapter("b", tiny_adapters["b"])
    model.load_adapter("b", tiny_adapters["b"])  # same folder again: a no-op
    model.unload_adapter("b")
    assert model.adapters() == ["a"]
    with pytest.raises(ModelError):
        model.generate(_question(1), adapter="b")
    assert model.generate(_question(1)).text == before
    model.unload_adapter("a")
    assert model.adapters() == [] and type(model._model).__name__ == "LlamaForCausalLM"
    assert model.generate(_question(1)).text == before
    with pytest.raises(ModelError, match="not loaded"):
        model.unload_adapter("a")


def test_cancel_stops_generation(tiny: LocalChatModel) -> None:
    cancel = threading.Event()
    deltas: list[str] = []

    def on_token(text: str) -> None:
        deltas.append(text)
        cancel.set()

    gen = tiny.generate(_question(2), max_new_tokens=64, on_token=on_token, cancel=cancel)
    assert gen.finish_reason == "cancelled"
    assert 0 < gen.usage.completion_tokens < 64
    already = tiny.generate(_question(2), cancel=cancel)
    assert (already.finish_reason, already.text) == ("cancelled", "")


def test_closing_a_stream_cancels_and_releases_the_model(tiny: LocalChatModel) -> None:
    stream = tiny.stream(_question(2), max_new_tokens=200)
    next(stream)
    stream.close()
    assert tiny.generate(_question(2), max_new_tokens=2).usage.completion_tokens == 2


def test_column_major_weights_keep_outputs(tiny_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    ids = torch.tensor([[1, 5, 900, 77, 3000]])
    with torch.inference_mode():
        before = model(ids).logits
        assert column_major_linears(model) == 9  # q, o, gate, up in 2 layers + lm_head
        after = model(ids).logits
    assert torch.allclose(before, after, atol=1e-5)
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight


# -- int8 weight-only linear layers on the CPU ---------------------------------------------------


@pytest.fixture(scope="session")
def int8_kernel() -> None:
    from core.models import quant

    if not quant.kernel_available():  # builds it once (~1 min), then torch caches it
        pytest.skip(f"the int8 kernel does not build here: {quant._EXTENSION.error}")


def test_int8_grid_is_exact_for_gguf_blocks_and_close_otherwise(int8_kernel: None) -> None:
    import torch

    from core.models.quant import quantize_groups

    torch.manual_seed(0)
    d, m = torch.rand(8, 4, 1) * 0.1, torch.randn(8, 4, 1) * 0.1
    q4 = torch.randint(0, 16, (8, 4, 32)).float()
    q4[..., 0], q4[..., 1] = 0, 15  # each Q4_1 block uses its full range
    q8 = torch.randint(-127, 128, (8, 4, 32)).float()
    q8[..., 0] = 127
    for w in [(d * q4 + m).reshape(8, 128), (d * q8).reshape(8, 128)]:
        q, scale, zero = quantize_groups(w)
        back = (q.float().view(8, 4, 32) * scale[..., None] + zero[..., None]).view(8, 128)
        assert (back - w).abs().max() < 1e-6
    w = torch.randn(16, 96)
    q, scale, zero = quantize_groups(w)
    back = (q.float().view(16, 3, 32) * scale[..., None] + zero[..., None]).view(16, 96)
    assert ((back - w).abs().amax(1) <= w.abs().amax(1) / 254 + 1e-6).all()


@pytest.mark.parametrize(("n", "k", "bias"), [(96, 64, False), (7, 37, True), (1030, 576, True)])
def test_int8_kernel_matches_dequantized_fp32(
    int8_kernel: None, n: int, k: int, bias: bool
) -> None:
    import torch

    from core.models.quant import KERNEL_MAX_ROWS, int8_linear_class

    torch.manual_seed(0)
    layer = int8_linear_class()(torch.nn.Linear(k, n, bias=bias))
    groups = layer.weight_scale.shape[1]
    q = layer.weight.float().view(n, groups, -1)
    reference = (q * layer.weight_scale[..., None] + layer.weight_zero[..., None]).view(n, k)
    assert torch.allclose(layer.dequantized_weight(), reference, atol=1e-6)
    with torch.inference_mode():
        for rows in [1, 2, 3, 4, 5, 8, KERNEL_MAX_ROWS, KERNEL_MAX_ROWS + 1]:
            x = torch.randn(1, rows, k)
            expected = torch.nn.functional.linear(x, reference, layer.bias)
            assert torch.allclose(layer(x), expected, atol=1e-4, rtol=1e-4), rows


def test_int8_backend_matches_fp32_and_keeps_adapters(
    int8_kernel: None, tiny_dir: Path, tiny_adapters: dict[str, Path]
) -> None:
    import torch

    models = {
        w: LocalChatModel(
            ModelConfig(model=str(tiny_dir), max_new_tokens=8), Path("x"), cpu_weights=w
        )
        for w in ("fp32", "int8")
    }
    for model in models.values():
        for name, folder in tiny_adapters.items():
            model.load_adapter(name, folder)
    assert models["int8"].info()["weights"] == "int8"
    assert models["fp32"].info()["weights"] == "float32"
    ids = torch.tensor([[1, 5, 900, 77, 3000]])

    def logits(model: LocalChatModel, adapter: str | None) -> torch.Tensor:
        with torch.inference_mode():
            return model.hf_model(input_ids=ids, adapter_names=[adapter or BASE_ADAPTER]).logits

    for adapter in [None, "a", "b"]:
        fp32, int8 = logits(models["fp32"], adapter), logits(models["int8"], adapter)
        assert (fp32 - int8).abs().max() < 0.05 * fp32.abs().max(), adapter
    # The adapters still change the int8 model, and a mixed batch matches its single rows.
    assert not torch.allclose(logits(models["int8"], None), logits(models["int8"], "a"))
    int8 = models["int8"]
    batch = [_question(i) for i in range(3)]
    mixed = int8.generate_batch(batch, adapter_names=[None, "a", "b"])
    singles = [int8.generate(q, adapter=a) for q, a in zip(batch, [None, "a", "b"], strict=True)]
    assert [g.text for g in mixed] == [g.text for g in singles]
    for name in ["a", "b"]:
        int8.unload_adapter(name)
    assert int8.hf_model.__class__.__name__ == "LlamaForCausalLM"


def test_int8_falls_back_to_fp32_without_its_kernel(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.models import quant

    def no_kernel() -> None:
        raise ModelError("the int8 CPU kernel could not be built: no compiler")

    monkeypatch.setattr(quant, "kernel", no_kernel)
    model = LocalChatModel(ModelConfig(model=str(tiny_dir)), Path("x"), cpu_weights="int8")
    assert model.generate(Q_FRANCE, max_new_tokens=2).usage.completion_tokens == 2
    assert model.info()["weights"] == "float32"
    with pytest.raises(ModelError, match="unknown cpu_weights"):
        LocalChatModel(ModelConfig(), Path("x"), cpu_weights="int4")  # type: ignore[arg-type]


# -- the real SmolLM2 ----------------------------------------------------------------------------


@pytest.mark.real_model
def test_smollm2_greedy_is_deterministic_and_factual(smollm: LocalChatModel) -> None:
    first, second = smollm.generate(Q_FRANCE), smollm.generate(Q_FRANCE)
    assert first.text == second.text
    assert "Paris" in first.text
    assert first.finish_reason == "stop"
    assert first.usage.prompt_tokens > 10 and 0 < first.usage.completion_tokens <= 24
    assert first.model == "SmolLM2-135M-Instruct"


@pytest.mark.real_model
def test_smollm2_streaming_matches_non_streaming(smollm: LocalChatModel) -> None:
    messages = [Message("user", "Name three primary colors.")]
    deltas: list[str] = []
    streamed = smollm.generate(messages, on_token=deltas.append)
    assert len(deltas) > 1
    assert "".join(deltas) == streamed.text == smollm.generate(messages).text
    assert "".join(smollm.stream(messages)) == streamed.text


@pytest.mark.real_model
def test_smollm2_info_and_token_counts(smollm: LocalChatModel) -> None:
    info = smollm.info()
    assert info["loaded"] and info["params"] == 134_515_008
    assert (info["dtype"], info["device"], info["quantization"]) == ("float32", "cpu", "none")
    assert smollm.count_tokens("Paris is the capital of France.") == 7


# -- registry --------------------------------------------------------------------------------------


def test_registry_builds_backends_lazily(tmp_path: Path) -> None:
    local = build_model(ModelConfig(model="/nowhere/at/all"), tmp_path)
    assert isinstance(local, LocalChatModel) and not local.loaded
    remote = build_model(ModelConfig(backend="openai", model="m"), tmp_path)
    assert isinstance(remote, OpenAIChatModel) and remote._client is None
    with pytest.raises(ModelError, match="unknown model backend"):
        build_model(ModelConfig.model_construct(backend="vllm"), tmp_path)
    with pytest.raises(ModelError, match="already registered"):
        register_backend("local", OpenAIChatModel)


def test_get_model_is_cached_per_configuration(settings: Settings) -> None:
    clear_models()
    settings.models["same"] = settings.models["default"].model_copy()
    settings.models["other"] = ModelConfig(max_new_tokens=5)
    model = get_model(settings)
    assert isinstance(model, ChatModel)
    assert get_model(settings, "default") is model is get_model(settings, "same")
    assert get_model(settings, "other") is not model
    with pytest.raises(ModelError, match="unknown model 'missing'"):
        get_model(settings, "missing")
    clear_models()


def test_importing_models_loads_no_heavy_library() -> None:
    code = (
        "import sys, core.models, core.models.local, core.models.openai_backend;"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'openai') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


@pytest.mark.real_model
def test_smollm2_int8_is_the_gguf_weights_exactly(
    int8_kernel: None, smollm: LocalChatModel
) -> None:
    """The packaged model is Q4_1/Q8_0: its int8 copy holds the same values, so greedy agrees."""
    import torch

    int8 = LocalChatModel(ModelConfig(max_new_tokens=24), SHARED_MODELS_DIR, cpu_weights="int8")
    int8.load()
    assert int8.info()["weights"] == "int8" and int8.info()["params"] == 134_515_008
    questions = [
        [Message("user", text)]
        for text in (
            "What is 17 times 3?",
            "Translate 'good morning' into Spanish.",
            "Why is the sky blue?",
        )
    ]
    for messages in [Q_FRANCE, *questions]:
        assert int8.generate(messages).text == smollm.generate(messages).text
    ids = smollm.tokenizer(smollm.render(Q_FRANCE), return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        for rows in (ids, ids[:, -1:]):  # the fp32 prefill path and the int8 kernel path
            diff = (int8.hf_model(rows).logits - smollm.hf_model(rows).logits).abs().max()
            assert diff < 1e-3
