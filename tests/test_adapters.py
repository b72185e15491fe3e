"""Adapter verification, verified loading into a local model, and the adapter registry.

Adapters are real peft LoRAs of the tiny random Llama (``tiny_model_dir``), built once per module;
each damage test copies a good one and breaks exactly one thing, rewriting ``SHA256SUMS`` where
needed so that only the check under test can catch it.
"""

from __future__ import annotations

import json
import pickle
import shutil
import struct
from pathlib import Path

import pytest
import torch

from core.adapters import format as fmt
from core.adapters import registry
from core.adapters.verify import load_verified, verify_files
from core.config import ModelConfig
from core.errors import AdapterError
from core.models.local import LocalChatModel
from core.store import Store

HELLO = [{"role": "user", "content": "What is a LoRA adapter?"}]


def build_adapter(
    folder: Path,
    base_dir: Path,
    *,
    name: str = "qa",
    version: int = 1,
    seed: int = 0,
    r: int = 4,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
    rank_pattern: dict[str, int] | None = None,
    scale: float = 0.5,
) -> Path:
    """A published-format LoRA folder for ``base_dir`` whose lora_B is non-zero (it changes outputs)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True)
    peft_model = get_peft_model(
        base,
        LoraConfig(
            r=r, lora_alpha=2 * r, target_modules=list(targets), rank_pattern=rank_pattern or {}
        ),
    )
    with torch.no_grad():
        for pname, param in peft_model.named_parameters():
            if "lora_B" in pname:
                param.normal_(0.0, scale)
    peft_model.save_pretrained(folder, safe_serialization=True)
    fmt.write_meta(
        folder,
        {
            "name": name,
            "version": version,
            "kind": "sft",
            "base_model": base_dir.name,
            "base_model_sha256": fmt.model_fingerprint(base_dir),
            "metrics": {"f1": 0.5},
        },
    )
    fmt.write_manifest(folder)
    return folder


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "a": build_adapter(root / "a", tiny_model_dir, seed=1),
        "b": build_adapter(root / "b", tiny_model_dir, name="other", seed=2),
    }


@pytest.fixture(scope="module")
def shared_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LocalChatModel:
    model = LocalChatModel(
        ModelConfig(model=str(tiny_model_dir), max_new_tokens=4), tmp_path_factory.mktemp("cache")
    )
    model.load()
    return model


@pytest.fixture
def model(shared_model: LocalChatModel):
    """The module's model, with every adapter a test attached taken off again afterwards."""
    yield shared_model
    for name in shared_model.adapters():
        shared_model.unload_adapter(name)


def copy_of(src: Path, tmp_path: Path, name: str = "copy") -> Path:
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def edit_config(folder: Path, **changes) -> None:
    path = folder / fmt.CONFIG_FILE
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def logits(model: LocalChatModel, adapter: str | None = None) -> torch.Tensor:
    enc = model.tokenizer([model.render(HELLO)], return_tensors="pt", add_special_tokens=False)
    kwargs = {"adapter_names": [adapter or "__base__"]} if model.adapters() else {}
    with torch.inference_mode():
        return model.hf_model(**enc, **kwargs).logits


def refused(folder: Path, **kwargs) -> str:
    with pytest.raises(AdapterError) as info:
        verify_files(folder, **kwargs)
    message = str(info.value)
    assert str(folder) in message
    return message


# -- a good adapter ------------------------------------------------------------------------------


def test_good_adapter_verifies_loads_and_changes_logits(adapters, model, tiny_model_dir):
    meta = verify_files(adapters["a"], base_fingerprint=fmt.model_fingerprint(tiny_model_dir))
    assert meta["name"] == "qa" and meta["format"] == fmt.FORMAT
    base = logits(model)

    assert load_verified(model, "qa", adapters["a"])["version"] == 1
    assert model.adapters() == ["qa"]
    tuned = logits(model, "qa")
    assert torch.isfinite(tuned).all()
    assert (tuned - base).abs().max() > 1e-3
    assert torch.allclose(logits(model), base, atol=1e-5)  # the base rows are untouched
    assert model.generate(HELLO, adapter="qa", max_new_tokens=3).adapter == "qa"


# -- damaged folders: one check each -------------------------------------------------------------


def test_missing_folder(tmp_path):
    assert "no such folder" in refused(tmp_path / "nope")


def test_truncated_weights_caught_by_layout_check(adapters, tmp_path):
    folder = copy_of(adapters["a"], tmp_path)
    weights = folder / fmt.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-100])
    fmt.write_manifest(folder)  # the checksums agree: only the header check can tell
    message = refused(folder)
    assert f"{fmt.WEIGHTS_FILE} is truncated" in message
    assert "ends at byte" in message


def test_truncated_weights_caught_by_checksum(adapters, tmp_path):
    folder = copy_of(adapters["a"], tmp_path)
    weights = folder / fmt.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-100])
    message = refused(folder)
    assert f"checksum mismatch for {fmt.WEIGHTS_FILE}" in message


def test_empty_file_refused_by_name(adapters, tmp_path):
    folder = copy_of(adapters["a"], tmp_path)
    (folder / fmt.WEIGHTS_FILE).write_bytes(b"")
    assert f"{fmt.WEIGHTS_FILE} is empty (0 bytes)" in refused(folder)


def test_missing_required_file(adapters, tmp_path):
    folder = copy_of(adapters["a"], tmp_path)
    (folder / fmt.META_FILE).unlink()
    assert f"missing {fmt.META_FILE}" in refused(folder)


def test_invalid_json_config(adapters, tmp_path):
    folder = copy_of(adapters["a"], tmp_path)
    (folder / fmt.CONFIG_FILE).write_text('{"peft_type": "LORA", "r": 4,')
    fmt.write_manifest(folder)
    assert f"{fmt.CONFIG_FILE} is not valid JSON" in refused(folder)


def test_config_that_is_not_lora(adapters, tmp_path):
    folder = copy_of(adapters["a"], tmp_path)
    edit_config(folder, target_modules=[])
    fmt.write_manifest(folder)
    assert "target_modules=[]" in refused(folder)


def test_rank_mismatch(adapters, tmp_path):
    folder = copy_of(adapters["a"], tmp_path)
    edit_config(folder, r=8)
    fmt.write_manifest(folder)
    message = refused(folder)
    assert f"rank mismatch: {fmt.CONFIG_FILE} r=8 but base_model.model." in message
    assert "has shape [4, 64]" in message


def test_rank_pattern_is_honoured(tmp_path, tiny_model_dir):
    folder = build_adapter(tmp_path / "rp", tiny_model_dir, rank_pattern={"v_proj": 2})
    verify_files(folder)  # v_proj at rank 2, q_proj at r=4: as the config says
    edit_config(folder, rank_pattern={"v_proj": 3})
    fmt.write_manifest(folder)
    message = refused(folder)
    assert f"rank mismatch: {fmt.CONFIG_FILE} rank_pattern['v_proj']=3 but " in message
    assert "v_proj.lora_A.weight has shape [2, 64]" in message


@pytest.mark.parametrize("how", ["torch.save as safetensors", "pickle protocol 4", "stray .bin"])
def test_pickles_refused_without_unpickling(adapters, tmp_path, monkeypatch, how):
    def no_torch_load(*args, **kwargs):
        raise AssertionError("torch.load must never be called")

    monkeypatch.setattr(torch, "load", no_torch_load)
    monkeypatch.setattr(pickle, "load", no_torch_load)
    monkeypatch.setattr(pickle, "loads", no_torch_load)
    folder = copy_of(adapters["a"], tmp_path)
    state = {"base_model.model.x.lora_A.weight": torch.zeros(4, 4)}
    if how == "torch.save as safetensors":
        torch.save(state, folder / fmt.WEIGHTS_FILE)
    elif how == "pickle protocol 4":
        (folder / fmt.WEIGHTS_FILE).write_bytes(pickle.dumps({"a": 1}, protocol=4))
    else:
        torch.save(state, folder / "adapter_model.bin")
    fmt.write_manifest(folder)  # the checksums agree: only the pickle check can tell
    message = refused(folder)
    if how == "stray .bin":
        assert "adapter_model.bin is a pickle file" in message
    else:
        assert f"{fmt.WEIGHTS_FILE} holds a pickle" in message


def test_nan_bytes_in_tensor_data(adapters, tmp_path):
    folder = copy_of(adapters["a"], tmp_path)
    weights = folder / fmt.WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    (header_len,) = struct.unpack("<Q", data[:8])
    start = 8 + header_len + 64
    data[start : start + 16] = b"\xff" * 16  # 0xFFFFFFFF is a float32 NaN
    weights.write_bytes(bytes(data))
    fmt.write_manifest(folder)
    message = refused(folder)
    assert "non-finite values in base_model.model." in message
    assert ".lora_" in message


def test_unlisted_extra_file(adapters, tmp_path):
    folder = copy_of(adapters["a"], tmp_path)
    (folder / "notes.txt").write_text("hello")
    assert f"unexpected file(s) not listed in {fmt.MANIFEST_FILE}: notes.txt" in refused(folder)


def test_wrong_base_model(adapters, tmp_path, model, tiny_model_dir):
    folder = copy_of(adapters["a"], tmp_path)
    meta = fmt.read_meta(folder)
    meta["base_model_sha256"] = "ab" * 32
    fmt.write_meta(folder, meta)
    fmt.write_manifest(folder)
    verify_files(folder)  # fine on its own
    fingerprint = fmt.model_fingerprint(tiny_model_dir)
    message = refused(folder, base_fingerprint=fingerprint)
    assert f"trained on base model {tiny_model_dir.name} (sha256 ababababab" in message
    assert f"the loaded base model is different (sha256 {fingerprint[:12]}" in message
    with pytest.raises(AdapterError, match="trained on base model"):
        load_verified(model, "qa", folder)
    assert model.adapters() == []


def test_wrong_target_modules_refused_by_load_verified(adapters, tmp_path, model):
    folder = copy_of(adapters["a"], tmp_path)
    edit_config(folder, target_modules=["k_proj", "o_proj"])
    fmt.write_manifest(folder)
    verify_files(folder)  # the files are consistent; only peft's view shows the mismatch
    load_verified(model, "other", adapters["b"])

    with pytest.raises(AdapterError) as info:
        load_verified(model, "qa", folder)
    message = str(info.value)
    assert "does not match the weights" in message
    assert "match no layer the config targets (peft would silently ignore them)" in message
    assert "self_attn.q_proj.lora_A.weight" in message  # in the file, not targeted
    assert "self_attn.k_proj.lora_A.weight" in message  # targeted, not in the file
    assert model.adapters() == ["other"]
    assert "qa" not in model.hf_model.peft_config
    assert not any(".qa." in n for n, _ in model.hf_model.named_parameters())


def test_huge_weights_give_non_finite_logits(adapters, tmp_path, model):
    from safetensors.torch import load_file, save_file

    folder = copy_of(adapters["a"], tmp_path)
    weights = folder / fmt.WEIGHTS_FILE
    tensors = load_file(weights)
    # Finite (float32 tops out at 3.4e38), but any activation through them overflows to inf; a
    # merely huge one would not do: RMSNorm scales 1e36 back down to finite logits.
    tensors = {k: (torch.full_like(v, 3e38) if "lora_B" in k else v) for k, v in tensors.items()}
    save_file(tensors, weights)
    fmt.write_manifest(folder)
    verify_files(folder)  # finite, so the files pass
    with pytest.raises(AdapterError, match="smoke prompt through the adapter gives non-finite"):
        load_verified(model, "qa", folder)
    assert model.adapters() == []


# -- a refused adapter leaves the other arms serving ----------------------------------------------


def wrong_targets_copy(adapter: Path, tmp_path: Path) -> Path:
    """A copy of ``adapter`` whose config names other target modules than its weights hold."""
    broken = copy_of(adapter, tmp_path)
    edit_config(broken, target_modules=["k_proj"])
    fmt.write_manifest(broken)
    return broken


def test_refused_load_leaves_other_adapters_serving(adapters, tmp_path, model):
    load_verified(model, "qa", adapters["a"])
    before = logits(model, "qa")
    broken = wrong_targets_copy(adapters["b"], tmp_path)

    with pytest.raises(AdapterError):
        load_verified(model, "other", broken)
    assert model.adapters() == ["qa"]
    assert torch.allclose(logits(model, "qa"), before)
    assert model.generate(HELLO, adapter="qa", max_new_tokens=2).usage.completion_tokens > 0

    load_verified(model, "other", adapters["b"])  # a good one still loads next to it
    assert model.adapters() == ["other", "qa"]
    assert model.generate(HELLO, adapter="other", max_new_tokens=2).usage.completion_tokens > 0
    assert not torch.allclose(logits(model, "other"), before)


def test_refused_new_version_puts_the_served_one_back(adapters, tmp_path, model):
    load_verified(model, "qa", adapters["a"])
    before = logits(model, "qa")
    broken = wrong_targets_copy(adapters["b"], tmp_path)
    with pytest.raises(AdapterError):
        load_verified(model, "qa", broken)
    assert model.info()["adapters"] == {"qa": str(adapters["a"].resolve())}
    assert torch.allclose(logits(model, "qa"), before)


# -- registry ------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path}/a.db")
    yield s
    s.close()


def publish(src: Path, settings, name: str, version: int) -> Path:
    folder = registry.adapter_dir(settings, name, version)
    folder.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, folder)
    return folder


def test_registry_lifecycle(adapters, settings, store):
    assert registry.next_version(store, "qa") == 1
    with pytest.raises(AdapterError, match="adapter 'qa' is not registered; train it with"):
        registry.resolve(store, "qa")

    v1 = registry.register(store, publish(adapters["a"], settings, "qa", 1))
    assert (v1.name, v1.version, v1.status) == ("qa", 1, "registered")
    assert v1.sha256 == registry.manifest_sha256(Path(v1.path))
    assert v1.base_model and v1.metrics == {"f1": 0.5}
    assert Path(v1.path) == settings.adapters_dir / "qa" / "v1"

    with pytest.raises(AdapterError, match=r"'qa' v1 is already registered .*as v2"):
        registry.register(store, adapters["a"])
    v2 = registry.register(
        store, publish(adapters["a"], settings, "qa", 2), version=2, metrics={"f1": 0.7}
    )
    assert v2.metrics == {"f1": 0.7}
    assert registry.next_version(store, "qa") == 3
    assert registry.resolve(store, "qa").version == 2  # newest registered

    registry.promote(store, "qa", 1)
    assert registry.resolve(store, "qa").version == 1  # promoted wins
    registry.promote(store, "qa", 2)
    assert {a.version: a.status for a in registry.list_adapters(store, "qa")} == {
        1: "retired",
        2: "promoted",
    }
    assert registry.previous_version(registry.list_adapters(store, "qa")).version == 1
    assert registry.roll_back(store, "qa").version == 1
    assert registry.get(store, "qa", 2).status == "rolled_back"
    with pytest.raises(AdapterError, match="no earlier version"):
        registry.roll_back(store, "qa")

    row = registry.set_status(store, "qa", 2, "rejected", reason="f1 below the champion")
    assert row.metrics["status_reason"] == "f1 below the champion"
    assert registry.get(store, "qa", 2).metrics == {
        "f1": 0.7,
        "status_reason": "f1 below the champion",
    }
    with pytest.raises(AdapterError, match="unknown adapter status"):
        registry.set_status(store, "qa", 2, "great")

    with pytest.raises(AdapterError, match="is promoted and serving"):
        registry.remove(store, "qa", 1)
    removed = registry.remove(store, "qa", 2)
    assert [a.version for a in removed] == [2]
    assert not (settings.adapters_dir / "qa" / "v2").exists()
    assert registry.remove(store, "qa", force=True)[0].version == 1
    assert registry.list_adapters(store) == []
    assert not (settings.adapters_dir / "qa").exists()


def test_register_refuses_a_damaged_folder(adapters, settings, store):
    folder = publish(adapters["a"], settings, "qa", 1)
    (folder / "stray.txt").write_text("x")
    with pytest.raises(AdapterError, match="unexpected file"):
        registry.register(store, folder)
    assert registry.list_adapters(store) == []


def test_verify_registered(adapters, settings, store, tiny_model_dir):
    row = registry.register(store, publish(adapters["b"], settings, "other", 1))
    fingerprint = fmt.model_fingerprint(tiny_model_dir)
    assert registry.verify_registered(store, row, fingerprint) is None
    assert "trained on base model" in registry.verify_registered(store, row, "0" * 64)

    (Path(row.path) / "stray.txt").write_text("x")
    message = registry.verify_registered(store, row, mark_broken=True)
    assert "unexpected file" in message
    broken = registry.get(store, "other", 1)
    assert broken.status == "broken" and broken.metrics["status_reason"] == message
    with pytest.raises(AdapterError, match="no servable version"):
        registry.resolve(store, "other")


def test_ui_registry_reexports_the_core_registry():
    from app.ui import registry as ui_registry

    assert ui_registry.promote is registry.promote
    assert ui_registry.roll_back is registry.roll_back
    assert ui_registry.previous_version is registry.previous_version


def test_a_broken_champion_does_not_hand_over_to_an_unvetted_version(adapters, settings, store):
    registry.register(store, publish(adapters["a"], settings, "qa", 1))
    registry.promote(store, "qa", 1)
    registry.register(store, publish(adapters["a"], settings, "qa", 2), version=2)  # a candidate
    registry.set_status(store, "qa", 1, registry.BROKEN, "checksum mismatch")
    with pytest.raises(AdapterError, match=r"no servable version \(v1 broken, v2 registered\)"):
        registry.resolve(store, "qa")
    registry.promote(store, "qa", 2)  # the operator decides
    assert registry.resolve(store, "qa").version == 2


def test_remove_leaves_a_folder_registered_from_outside_the_adapters_root(
    adapters, settings, store, tmp_path
):
    outside = copy_of(adapters["a"], tmp_path, "mine")
    registry.register(store, outside, name="mine", version=1)
    registry.remove(store, "mine", root=settings.adapters_dir)
    assert registry.list_adapters(store, "mine") == [] and (outside / "meta.json").is_file()
    inside = publish(adapters["a"], settings, "qa", 1)
    registry.register(store, inside)
    registry.remove(store, "qa", root=settings.adapters_dir)
    assert not inside.exists()


def test_register_refuses_names_that_cannot_be_loaded(adapters, store, tmp_path):
    folder = copy_of(adapters["a"], tmp_path, "bad")
    with pytest.raises(AdapterError, match="adapter name"):
        registry.register(store, folder, name="Bad-Name", version=1)
    with pytest.raises(AdapterError, match="longer than 40"):
        registry.register(store, folder, name="a" * 41, version=1)
