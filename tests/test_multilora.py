"""Weighted adapter mixtures (``LocalChatModel.mix_adapters``) on the tiny random Llama: exactness
against hand-merged weights, mixed batches, the mixture cache and its bookkeeping."""

from __future__ import annotations

import math
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from core.config import ModelConfig
from core.errors import ModelError
from core.models import LocalChatModel
from core.models import local as local_mod
from core.models.base import BASE_ADAPTER
from core.types import Message

# name: (rank, alpha, rsLoRA, target modules). "a" is the first expert of every mixture it is in,
# so peft copies its config (rsLoRA included) into the mixture's; "c" also targets o_proj.
EXPERTS = {
    "a": (4, 8, True, ["q_proj", "v_proj"]),
    "b": (8, 16, False, ["q_proj", "v_proj"]),
    "c": (8, 32, False, ["q_proj", "v_proj", "o_proj"]),
}


@pytest.fixture(scope="module")
def experts(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three LoRA adapters with random (non-zero) A and B, of different ranks and targets."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = {}
    for seed, (name, (r, alpha, rslora, targets)) in enumerate(EXPERTS.items(), start=1):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        config = LoraConfig(
            r=r,
            lora_alpha=alpha,
            use_rslora=rslora,
            target_modules=targets,
            init_lora_weights=False,  # random A and B: an untrained but non-identity adapter
        )
        folder = tmp_path_factory.mktemp(f"expert-{name}")
        with warnings.catch_warnings():  # peft uses a transformers API deprecated in v5
            warnings.simplefilter("ignore", FutureWarning)
            get_peft_model(base, config).save_pretrained(folder, safe_serialization=True)
        out[name] = folder
    return out


@pytest.fixture
def model(tiny_model_dir: Path, experts: dict[str, Path]) -> LocalChatModel:
    m = LocalChatModel(ModelConfig(model=str(tiny_model_dir), max_new_tokens=8), Path("unused"))
    for name, folder in experts.items():
        m.load_adapter(name, folder)
    return m


def _question(i: int) -> list[Message]:
    return [Message("system", "Answer briefly."), Message("user", "word " * (2 + 4 * i) + "?")]


def _ids(model: LocalChatModel):  # noqa: ANN202
    return model.tokenizer(model.render(_question(1)), return_tensors="pt")


def _logits(model: LocalChatModel, adapter: str | None):  # noqa: ANN202
    import torch

    with torch.inference_mode():
        return model.hf_model(**_ids(model), adapter_names=[adapter or BASE_ADAPTER]).logits[0]


def _hand_merged_logits(
    tiny_model_dir: Path, experts: dict[str, Path], weights: dict[str, float], enc: dict
):  # noqa: ANN202
    """Logits of the plain model with ``W + sum(w * alpha/r * B @ A)`` written into its weights,
    from the adapters' safetensors files (no peft involved)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    params = dict(plain.named_parameters())
    for name, weight in weights.items():
        r, alpha, rslora, _ = EXPERTS[name]
        scaling = alpha / math.sqrt(r) if rslora else alpha / r
        tensors = load_file(experts[name] / "adapter_model.safetensors")
        for key, a in tensors.items():
            if ".lora_A." not in key:
                continue
            b = tensors[key.replace(".lora_A.", ".lora_B.")]
            target = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
            with torch.no_grad():
                params[target] += weight * scaling * (b @ a)
    with torch.inference_mode():
        return plain(**enc).logits[0]


def test_one_expert_at_weight_one_is_that_expert(model: LocalChatModel) -> None:
    adapters_before = set(model.hf_model.peft_config)
    assert model.mix_adapters({"a": 1.0}) == "a"
    assert model.mix_adapters({"b": 1.004}, name="ignored") == "b"  # rounds to 1: no work
    assert model.mix_adapters({"b": 1, "c": 0.001}) == "b"  # c rounds to 0 and is left out
    assert set(model.hf_model.peft_config) == adapters_before
    assert model.info()["mixtures"] == {}


@pytest.mark.parametrize(
    "weights", [{"a": 0.5, "b": 0.5}, {"a": 0.3, "b": 1.2, "c": 0.7}, {"c": 0.25}]
)
def test_mixture_equals_hand_merged_weights(
    model: LocalChatModel,
    tiny_model_dir: Path,
    experts: dict[str, Path],
    weights: dict[str, float],
) -> None:
    import torch

    name = model.mix_adapters(weights)
    assert name.startswith("mix_") and len(name) == 12
    assert model.info()["mixtures"] == {name: weights}
    assert name not in model.adapters() and model.adapters() == ["a", "b", "c"]
    mixed = _logits(model, name)
    expected = _hand_merged_logits(tiny_model_dir, experts, weights, _ids(model))
    assert torch.allclose(mixed, expected, atol=1e-4, rtol=1e-4), (mixed - expected).abs().max()
    for other in [None, "a", "b", "c"]:
        assert not torch.allclose(mixed, _logits(model, other), atol=1e-3), other


def test_mixed_batch_with_mixtures_matches_single_rows(model: LocalChatModel) -> None:
    mix = model.mix_adapters({"a": 0.5, "b": 0.5})
    names = ["a", mix, None, "c", mix, "b"]
    batch = [_question(i) for i in range(len(names))]
    rows = model.generate_batch(batch, adapter_names=names)
    singles = [model.generate(m, adapter=n) for m, n in zip(batch, names, strict=True)]
    assert [r.text for r in rows] == [s.text for s in singles]
    assert [r.adapter for r in rows] == names
    assert len({s.text for s in singles[:4]}) == 4  # each adapter, and the mixture, differs


def test_mixtures_are_cached_and_the_least_recently_used_is_evicted(
    model: LocalChatModel,
) -> None:
    first = model.mix_adapters({"a": 0.5, "b": 0.5})
    peft_adapters = set(model.hf_model.peft_config)
    assert model.mix_adapters({"b": 0.5, "a": 0.5}) == first  # order does not matter
    assert model.mix_adapters({"a": 0.501, "b": 0.4999}) == first  # nor beyond 2 decimals
    assert model.mix_adapters({"a": np.float32(0.5), "b": 0.5}) == first  # any real number
    assert set(model.hf_model.peft_config) == peft_adapters

    names = [first]
    for i in range(1, local_mod.MIX_CACHE):
        names.append(model.mix_adapters({"a": 0.1 * i, "c": 0.5}))
    assert len(set(names)) == local_mod.MIX_CACHE == len(model.info()["mixtures"])
    assert model.mix_adapters({"a": 0.5, "b": 0.5}) == first  # used again: now the most recent
    newest = model.mix_adapters({"b": 2.0, "c": 0.5})
    mixtures = model.info()["mixtures"]
    assert len(mixtures) == local_mod.MIX_CACHE
    assert names[1] not in mixtures and names[1] not in model.hf_model.peft_config
    assert {first, newest} <= set(mixtures) <= set(model.hf_model.peft_config)
    with pytest.raises(ModelError, match="not loaded"):
        model.generate(_question(0), adapter=names[1])
    assert model.mix_adapters({"a": 0.1, "c": 0.5}) == names[1]  # rebuilt on demand

    named = model.mix_adapters({"a": 0.55, "c": 0.5}, name="blend")
    assert named == "blend" and model.info()["mixtures"]["blend"] == {"a": 0.55, "c": 0.5}
    assert model.mix_adapters({"a": 0.55, "c": 0.5}) == "blend"  # found by its key
    assert model.mix_adapters({"b": 0.5, "c": 0.5}, name="blend") == "blend"  # rebuilt
    assert model.info()["mixtures"]["blend"] == {"b": 0.5, "c": 0.5}


def test_unloading_an_expert_drops_its_mixtures(model: LocalChatModel) -> None:
    ab = model.mix_adapters({"a": 0.5, "b": 0.5})
    bc = model.mix_adapters({"b": 0.5, "c": 0.5})
    ac = model.mix_adapters({"a": 0.7, "c": 0.3})
    before = model.generate(_question(0), adapter=bc).text
    model.unload_adapter("a")
    assert set(model.info()["mixtures"]) == {bc}
    assert ab not in model.hf_model.peft_config and ac not in model.hf_model.peft_config
    assert model.generate(_question(0), adapter=bc).text == before
    model.unload_adapter(bc)  # a mixture's name drops just the mixture
    assert model.info()["mixtures"] == {} and model.adapters() == ["b", "c"]
    bc = model.mix_adapters({"b": 0.5, "c": 0.5})
    model.unload_adapter("b")
    model.unload_adapter("c")  # the last adapter: back to the plain model, no mixture left
    assert model.info()["mixtures"] == {} and model.adapters() == []
    assert type(model.hf_model).__name__ == "LlamaForCausalLM"
    with pytest.raises(ModelError, match="not loaded"):
        model.generate(_question(0), adapter=bc)


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ({}, "non-empty"),
        ({"nope": 1.0}, "not loaded"),
        ({"a": 0.0, "b": 1.0}, "positive"),
        ({"a": -0.5, "b": 1.0}, "positive"),
        ({"a": math.nan}, "finite"),
        ({"a": math.inf, "b": 1.0}, "finite"),
        ({"a": "0.5"}, "not a number"),
        ({"a": True}, "not a number"),
        ({"a": 0.001, "b": 0.004}, "rounds to 0"),
    ],
)
def test_bad_mixtures_are_refused(model: LocalChatModel, weights: dict, match: str) -> None:
    with pytest.raises(ModelError, match=match):
        model.mix_adapters(weights)
    assert model.info()["mixtures"] == {}


def test_bad_mixture_names_are_refused(model: LocalChatModel, experts: dict[str, Path]) -> None:
    with pytest.raises(ModelError, match="invalid mixture name"):
        model.mix_adapters({"a": 0.5, "b": 0.5}, name="Bad Name")
    with pytest.raises(ModelError, match="loaded adapter's name"):
        model.mix_adapters({"a": 0.5, "b": 0.5}, name="c")
    mix = model.mix_adapters({"a": 0.5, "b": 0.5})
    with pytest.raises(ModelError, match="a mixture, not an adapter"):
        model.mix_adapters({mix: 0.5, "c": 0.5})
    with pytest.raises(ModelError, match="taken by a mixture"):
        model.load_adapter(mix, experts["a"])


def test_adapter_bytes(model: LocalChatModel, experts: dict[str, Path]) -> None:
    from safetensors.torch import load_file

    for name, folder in experts.items():
        on_disk = sum(
            t.numel() * 4 for t in load_file(folder / "adapter_model.safetensors").values()
        )
        assert model.adapter_bytes(name) == on_disk
    # A "cat" mixture has rank 4 + 8 = 12 on the q (64 -> 64) and v (64 -> 32) layers of 2 blocks.
    mix = model.mix_adapters({"a": 0.5, "b": 0.5})
    assert model.adapter_bytes(mix) == 2 * 4 * 12 * (64 + 64 + 64 + 32)
    with pytest.raises(ModelError, match="not loaded"):
        model.adapter_bytes("nope")


def test_mixing_and_generating_from_threads(model: LocalChatModel) -> None:
    errors: list[BaseException] = []
    texts: dict[int, str] = {}

    def work(i: int) -> None:
        try:
            name = model.mix_adapters({"a": 0.25 * (1 + i % 2), "b": 0.5})
            texts[i] = model.generate(_question(0), adapter=name, max_new_tokens=4).text
        except BaseException as e:  # handed to the test's thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(model.info()["mixtures"]) == 2
    assert texts[0] == texts[2] == texts[4] and texts[1] == texts[3] == texts[5]


def test_run_forward_matches_pefts_mixed_batch_forward(model: LocalChatModel) -> None:
    """``LocalChatModel`` swaps peft's mixed-batch LoRA forward for one over contiguous runs of
    rows; on any row order (unsorted, base rows, a mixture) it computes what peft's does."""
    import torch
    from peft.tuners.lora.layer import Linear

    mix = model.mix_adapters({"a": 0.4, "c": 0.9})
    layers = [m for m in model.hf_model.modules() if type(m) is Linear]
    assert layers and all("_mixed_batch_forward" in vars(m) for m in layers)
    names = ["b", "b", BASE_ADAPTER, "a", mix, "c", "c", "a", BASE_ADAPTER]
    torch.manual_seed(0)
    ids = torch.randint(10, 5000, (len(names), 7))
    with torch.inference_mode():
        ours = model.hf_model(input_ids=ids, adapter_names=names).logits
        saved = {m: vars(m).pop("_mixed_batch_forward") for m in layers}  # back to peft's
        try:
            pefts = model.hf_model(input_ids=ids, adapter_names=names).logits
        finally:
            for m, forward in saved.items():
                m._mixed_batch_forward = forward
    assert torch.allclose(ours, pefts, atol=1e-5, rtol=1e-5), (ours - pefts).abs().max()
