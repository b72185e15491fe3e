"""The LoRA arms (ft, raft, multi_lora_raft) through the real graph: adapters verified and loaded
from the registry, expert routing stored with the interaction, and a damaged adapter disabling
only its own arm."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.runtime import Armada
from core.adapters import format as fmt
from core.adapters import registry
from core.config import ArmConfig, ModelConfig, RouterConfig, Settings
from core.errors import InputError
from core.models import clear_models
from core.store import Store
from tests.conftest import SHARED_MODELS_DIR
from training.lora import TrainConfig, train
from training.raft import RaftSettings, build_ft, build_raft, write_raft
from training.teacher import final_answer

EXPERTS = {"hotpotqa": "raft_hotpotqa", "popqa": "raft_popqa"}
CORPUS = [
    {
        "id": "eiffel",
        "title": "Eiffel Tower",
        "text": "The Eiffel Tower in Paris is named after Gustave Eiffel.",
    },
    {
        "id": "insulin",
        "title": "Insulin",
        "text": "Insulin is a hormone that lowers blood glucose.",
    },
    {
        "id": "smith",
        "title": "John Smith",
        "text": "John Smith is an English footballer born in Leeds.",
    },
]


def _arms(**multi_options) -> list[ArmConfig]:
    return [
        ArmConfig(name="rag", agent="rag", top_k=2),
        ArmConfig(name="ft", agent="ft"),
        ArmConfig(name="raft", agent="raft", top_k=2),
        ArmConfig(
            name="multi_lora_raft",
            agent="multi_lora_raft",
            top_k=2,
            options={"experts": EXPERTS, **multi_options},
        ),
    ]


def _settings(home: Path, tiny: Path, **multi_options) -> Settings:
    return Settings(
        home=home,
        models_dir=SHARED_MODELS_DIR,
        models={"default": ModelConfig(model=str(tiny), max_new_tokens=6)},
        arms=_arms(**multi_options),
        router=RouterConfig(policy="fixed", arm="rag", fallback_arm="rag", classify=False),
    )


def _questions(dataset: str, n: int = 6) -> list:
    from core.datasets import Example
    from core.types import Passage

    stems = {
        "hotpotqa": "Which film directed by the brother of {i} won the award",
        "popqa": "What is the occupation of person {i}",
    }
    return [
        Example(
            id=f"{dataset}{i}",
            question=stems[dataset].format(i=i) + "?",
            answers=(f"answer{i}",),
            gold=(Passage(f"{dataset}:{i}", f"Evidence {i} says answer{i}.", f"Doc {i}"),),
            dataset=dataset,
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir):
    """A home with a tiny corpus and four trained tiny adapters (ft, raft and two experts)."""
    from core.retrieval import embed_texts, ingest_paths

    home = tmp_path_factory.mktemp("lora") / "home"
    s = _settings(home, tiny_model_dir)
    corpus = home.parent / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in CORPUS))
    ingest_paths(s, [corpus])
    store = Store(s.db_url)
    cfg = TrainConfig(base_model=str(tiny_model_dir), r=4, alpha=8, max_steps=1, threads=1)
    data = home.parent / "data"
    data.mkdir()
    embed = lambda texts: embed_texts(s, texts)  # noqa: E731
    for name, examples, kind in [
        ("ft", _questions("hotpotqa") + _questions("popqa"), "ft"),
        ("raft", _questions("hotpotqa") + _questions("popqa"), "raft"),
        ("raft_hotpotqa", _questions("hotpotqa"), "raft"),
        ("raft_popqa", _questions("popqa"), "raft"),
    ]:
        recs = build_ft(examples) if kind == "ft" else build_raft(examples, RaftSettings(k=1))
        path = data / f"{name}.jsonl"
        write_raft(recs, path, None, kind=kind)
        train(path, name, s, cfg, store=store, embed=embed)
    store.close()
    return home


@pytest.fixture
def rt(world, tiny_model_dir):
    clear_models()
    runtime = Armada(_settings(world, tiny_model_dir))
    yield runtime
    runtime.close()


@pytest.mark.parametrize("arm", ["ft", "raft", "multi_lora_raft"])
def test_each_lora_arm_answers_through_its_adapter(rt, arm):
    res = rt.ask("Who is the Eiffel Tower named after?", arm=arm)
    assert (res.arm, res.status, res.error) == (arm, "ok", "")
    loaded = rt.model().adapters()
    expected = {"ft": ["ft"], "raft": ["raft"], "multi_lora_raft": list(EXPERTS.values())}[arm]
    assert {f"{name}_v1" for name in expected} <= set(loaded)
    row = rt.store.interaction(res.interaction_id)
    assert row.arm == arm and row.details["adapter"] in expected
    if arm == "ft":
        assert res.hits == [] or not res.cited_ids  # closed-book: no passages used
    if arm == "multi_lora_raft":
        experts = row.details["experts"]
        assert set(experts["probs"]) == set(EXPERTS) and experts["method"] == "prototype"
        assert abs(sum(experts["probs"].values()) - 1) < 1e-3
        assert list(experts["weights"]) == [experts["top"]]


def test_adapters_change_the_output(rt):
    """The arms really run through their adapters: base and adapter logits differ."""
    import torch

    model = rt.model()
    rt.prepare_adapters("raft")
    tok = model.tokenizer
    ids = tok("Question: q\nContext:\n[1] x\nAnswer:", return_tensors="pt")
    with torch.inference_mode():
        base = model.hf_model(**ids, adapter_names=["__base__"]).logits
        tuned = model.hf_model(**ids, adapter_names=["raft_v1"]).logits
    assert not torch.allclose(base, tuned)


def test_expert_routers_dataset_tag_and_manual_override(world, tiny_model_dir):
    clear_models()
    rt = Armada(_settings(world, tiny_model_dir, router="dataset", fallback="prototype"))
    res = rt.ask("Which film won the award?", arm="multi_lora_raft", tags={"dataset": "popqa"})
    experts = rt.store.interaction(res.interaction_id).details["experts"]
    assert (experts["method"], experts["top"]) == ("dataset", "popqa")
    res = rt.ask("Which film won the award?", arm="multi_lora_raft")  # no tag: the fallback
    assert rt.store.interaction(res.interaction_id).details["experts"]["method"] == "prototype"
    res = rt.ask("Anything?", arm="multi_lora_raft", tags={"expert": "hotpotqa"})
    experts = rt.store.interaction(res.interaction_id).details["experts"]
    assert (experts["method"], experts["top"]) == ("manual", "hotpotqa")
    res = rt.ask("Anything?", arm="multi_lora_raft", tags={"expert": "nope"})
    assert res.status == "fallback" and "unknown expert" in res.error
    with pytest.raises(InputError, match="tags"):
        rt.ask("Anything?", tags={"dataset": 3})  # type: ignore[dict-item]
    rt.close()


def test_soft_mixture_combines_experts_by_weight(world, tiny_model_dir):
    clear_models()
    rt = Armada(_settings(world, tiny_model_dir, mode="soft", temperature=5.0))
    res = rt.ask("What is the occupation of the director of a film?", arm="multi_lora_raft")
    assert res.status == "ok", res.error
    experts = rt.store.interaction(res.interaction_id).details["experts"]
    assert len(experts["weights"]) == 2 and abs(sum(experts["weights"].values()) - 1) < 1e-3
    assert rt.model().info()["mixtures"], "a weighted mixture adapter was built"
    rt.close()


def test_unregistered_adapter_makes_its_arm_unavailable_with_a_reason(home, tiny_model_dir):
    s = _settings(home, tiny_model_dir)
    rt = Armada(s)
    arms = {a.name: a for a in rt.store.arms()}
    assert arms["ft"].status == "unavailable" and "not registered" in arms["ft"].reason
    assert "armada train" in arms["ft"].reason
    assert rt.enabled_arms() == ["rag"]
    with pytest.raises(InputError, match="disabled.*not registered"):
        rt.ask("q?", arm="raft")
    rt.close()


def test_a_damaged_adapter_disables_only_its_arm(tmp_path, world, tiny_model_dir):
    import shutil

    home = tmp_path / "home"
    shutil.copytree(world, home)
    store = Store(_settings(home, tiny_model_dir).db_url)
    for row in registry.list_adapters(store):  # the copied rows point into the copy
        registry.remove(store, row.name, row.version, delete_files=False, force=True)
        registry.register(store, home / "adapters" / row.name / f"v{row.version}")
    store.close()
    weights = home / "adapters" / "raft" / "v1" / fmt.WEIGHTS_FILE
    blob = bytearray(weights.read_bytes())
    blob[-64:] = b"\xff" * 64
    weights.write_bytes(bytes(blob))

    clear_models()
    rt = Armada(_settings(home, tiny_model_dir))
    res = rt.ask("Who is the Eiffel Tower named after?", arm="raft")
    assert (res.status, res.fallback_from, res.arm) == ("fallback", "raft", "rag")
    assert "checksum" in res.error
    arms = {a.name: a for a in rt.store.arms()}
    assert arms["raft"].status == "broken" and "checksum mismatch" in arms["raft"].reason
    assert "raft" not in rt.enabled_arms()
    assert registry.get(rt.store, "raft", 1).status == registry.BROKEN
    for other in ("ft", "multi_lora_raft", "rag"):  # everyone else keeps serving
        assert rt.ask("Who is the Eiffel Tower named after?", arm=other).status == "ok"
    rt.close()


def test_final_answer_reads_chain_of_thought():
    assert final_answer("reasoning ##begin_quote##x##end_quote## <ANSWER>: Paris") == "Paris"
    assert final_answer("  Paris ") == "Paris"


@pytest.mark.real_model
def test_raft_arm_on_the_real_model(tmp_path):
    """The real path: a RAFT LoRA trained for two steps on SmolLM2, then served by the raft arm."""
    from core.retrieval import ingest_paths

    home = tmp_path / "home"
    s = Settings(
        home=home,
        models_dir=SHARED_MODELS_DIR,
        models={"default": ModelConfig(max_new_tokens=24)},
        arms=[
            ArmConfig(name="rag", agent="rag", top_k=2),
            ArmConfig(name="raft", agent="raft", top_k=2),
        ],
        router=RouterConfig(policy="fixed", arm="raft", fallback_arm="rag", classify=False),
    )
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in CORPUS))
    ingest_paths(s, [corpus])
    from core.datasets import Example
    from core.types import Passage

    examples = [
        Example(str(i), r["text"].split(" is ")[0] + " is what?", (r["title"],),
                (Passage(r["id"], r["text"], r["title"]),), dataset="jsonl")
        for i, r in enumerate(CORPUS)
    ]  # fmt: skip
    path = tmp_path / "raft.jsonl"
    write_raft(build_raft(examples, RaftSettings(k=1)), path, RaftSettings(k=1))
    store = Store(s.db_url)
    res = train(
        path, "raft", s,
        TrainConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"], max_steps=2, lr=1e-4),
        store=store,
    )  # fmt: skip
    assert res.metrics["adapter_mb"] > 0 and res.metrics["tokens_per_s"] > 0
    clear_models()
    rt = Armada(s)
    answer = rt.ask("Who is the Eiffel Tower named after?")
    assert (answer.arm, answer.status) == ("raft", "ok"), answer.error
    # Two steps teach a 135M model nothing yet: this checks the real path (train → verify →
    # load → serve → record), not quality; the quality study is in the issue notes.
    assert answer.answer.strip() and answer.usage["completion_tokens"] > 0
    assert rt.model().adapters() == ["raft_v1"]
    assert rt.store.interaction(answer.interaction_id).details["adapter"] == "raft"
    rt.close()
    store.close()
