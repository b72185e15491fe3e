"""RAFT data, the teacher step, LoRA training on a tiny random model, resumption and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from core.adapters import format as fmt
from core.adapters import registry
from core.config import REPO_ROOT, ModelConfig, Settings
from core.datasets import Example
from core.errors import InputError
from core.store import Store
from core.types import Passage
from training.raft import (
    PROMPT,
    RaftSettings,
    build_ft,
    build_raft,
    manifest_path,
    read_records,
    write_raft,
)
from training.teacher import ANSWER, BEGIN, END, add_chain_of_thought, check_cot


def _examples(n: int = 12) -> list[Example]:
    out = []
    for i in range(n):
        gold = (
            Passage(f"d:{i}:gold", f"Fact {i}: the answer to riddle {i} is word{i}.", f"Gold {i}"),
        )
        others = tuple(
            Passage(f"d:{i}:o{j}", f"Unrelated text {i}-{j} about rivers.", f"Other {i}-{j}")
            for j in range(6)
        )
        out.append(
            Example(
                id=str(i),
                question=f"What is the answer to riddle {i}?",
                answers=(f"word{i}",),
                gold=gold,
                others=others,
                dataset="hotpotqa" if i % 2 else "popqa",
                category="multi_hop",
            )
        )
    return out


# -- RAFT builder -------------------------------------------------------------------------------
def test_raft_records_follow_the_method():
    ex = _examples(200)
    recs = build_raft(ex, RaftSettings(p_gold=0.8, k=4, seed=1))
    assert len(recs) == 200
    with_gold = sum(r["gold_included"] for r in recs)
    assert 0.7 < with_gold / 200 < 0.9  # p = 0.8
    for r, e in zip(recs, ex, strict=True):
        sys_msg, user, assistant = r["messages"]
        assert sys_msg["role"] == "system" and assistant == {
            "role": "assistant",
            "content": e.answers[0],
        }
        assert user["content"].startswith(f"Question: {e.question}\nContext:\n[1] ")
        assert user["content"].endswith("\nAnswer:")
        # Always k + #gold documents; gold present exactly when the record says so.
        assert len(r["passage_ids"]) == 5
        assert (e.gold[0].id in r["passage_ids"]) == r["gold_included"]
        assert len(set(r["passage_ids"])) == 5
    assert PROMPT.startswith("Question:")


def test_raft_is_pure_seeded_and_per_example():
    ex = _examples(30)
    a = build_raft(ex, RaftSettings(seed=3))
    assert a == build_raft(ex, RaftSettings(seed=3))
    # A subset (or another order) gives the same record for each example.
    sub = build_raft(list(reversed(ex[5:15])), RaftSettings(seed=3))
    assert {r["id"]: r for r in sub} == {r["id"]: r for r in a[5:15]}
    assert a != build_raft(ex, RaftSettings(seed=4))
    # Gold positions are shuffled, not always first.
    positions = {r["passage_ids"].index(r["gold_ids"][0]) for r in a if r["gold_included"]}
    assert len(positions) > 1


def test_distractor_sources_never_include_gold():
    ex = _examples(10)
    pool = [Passage(f"pool:{i}", f"pool text {i}", f"Pool {i}") for i in range(50)]
    rnd = build_raft(ex, RaftSettings(distractors="random", p_gold=1.0, k=3), pool=pool)
    assert all(sum(p.startswith("pool:") for p in r["passage_ids"]) == 3 for r in rnd)

    def retrieve(q: str, n: int) -> list[Passage]:
        i = int(q.split()[-1].rstrip("?"))
        # The gold passage first (a retriever finds it), then hard negatives.
        return [
            ex[i].gold[0],
            *[Passage(f"hn:{i}:{j}", f"hard {j}", f"Hard {i}-{j}") for j in range(n)],
        ]

    hard = build_raft(ex, RaftSettings(distractors="retriever", p_gold=0.0, k=2), retrieve=retrieve)
    for r in hard:
        assert r["gold_ids"][0] not in r["passage_ids"]
        assert len(r["passage_ids"]) == 3 and all(p.startswith("hn:") for p in r["passage_ids"])
    with pytest.raises(InputError, match="needs a retriever"):
        build_raft(ex, RaftSettings(distractors="retriever"))
    # Too few record distractors: topped up from the pool.
    short = [Example("s", "q?", ("a",), ex[0].gold, ex[0].others[:1], "jsonl")]
    r = build_raft(short, RaftSettings(k=4, p_gold=1.0), pool=pool)[0]
    assert len(r["passage_ids"]) == 5


def test_passages_are_cut_to_the_word_limit():
    long = Example("l", "q?", ("a",), (Passage("g", "word " * 500, "G"),), (), "jsonl")
    r = build_raft([long], RaftSettings(k=0, p_gold=1.0, max_passage_words=20))[0]
    assert r["messages"][1]["content"].count("word") == 20


@pytest.mark.parametrize(
    "kwargs",
    [{"p_gold": 1.5}, {"k": -1}, {"distractors": "web"}, {"max_passage_words": 2}],
)
def test_bad_raft_settings_are_refused(kwargs):
    with pytest.raises(InputError):
        RaftSettings(**kwargs)


def test_written_data_has_a_manifest_and_tampering_is_caught(tmp_path):
    recs = build_raft(_examples(6), RaftSettings())
    m = write_raft(recs, tmp_path / "r.jsonl", RaftSettings(), sources=["x:y"])
    assert m["records"] == 6 and m["by_dataset"] == {"hotpotqa": 3, "popqa": 3}
    assert m["settings"]["k"] == 4 and len(m["data_hash"]) == 64
    back, manifest = read_records(tmp_path / "r.jsonl")
    assert back == recs and manifest == m
    with open(tmp_path / "r.jsonl", "a") as f:
        f.write(json.dumps(recs[0]) + "\n")
    with pytest.raises(InputError, match="changed after its manifest"):
        read_records(tmp_path / "r.jsonl")
    with pytest.raises(InputError, match="no training records"):
        write_raft([], tmp_path / "e.jsonl", None)


@pytest.mark.parametrize(
    "content,match",
    [
        (b"", "no training records"),
        (b"\xff\xfe\x00bin", "not UTF-8"),
        (b"{not json\n", "invalid JSON"),
        (b'{"messages": [{"role": "user", "content": "q"}]}\n', "assistant turn"),
        (
            b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]}\n',
            "assistant",
        ),
    ],
)
def test_bad_training_files_are_refused(tmp_path, content, match):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(content)
    with pytest.raises(InputError, match=match):
        read_records(p)


def test_ft_records_are_closed_book():
    recs = build_ft(_examples(3))
    assert [m["role"] for m in recs[0]["messages"]] == ["system", "user", "assistant"]
    assert "Context" not in recs[0]["messages"][1]["content"]
    assert recs[2]["messages"][2]["content"] == "word2"


# -- teacher (chain of thought through an OpenAI-compatible server on 127.0.0.1) -----------------
class _Teacher(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        user = body["messages"][-1]["content"]
        answer = user.split("Correct answer: ")[1].split("\n")[0]
        quote = user.split("[1] ")[1].split(": ", 1)[1].split(".")[0]
        if "riddle 0?" in user:  # a teacher that invents its evidence
            quote = "something the context never said"
        reply = f"The context says {BEGIN}{quote}{END}.\n{ANSWER} {answer}"
        data = json.dumps(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def teacher_url() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Teacher)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def test_teacher_chain_of_thought_is_checked_against_the_context(teacher_url):
    from core.models import OpenAIChatModel

    teacher = OpenAIChatModel(
        ModelConfig(backend="openai", model="teacher", base_url=teacher_url, api_key="k")
    )
    recs = build_raft(_examples(4), RaftSettings(p_gold=1.0, k=1))
    out, stats = add_chain_of_thought(recs, teacher)
    assert stats["cot"] == 3 and stats["kept_plain"] == 1
    assert stats["rejected: a quote is not in the context"] == 1
    invented = next(r for r in out if r["id"].endswith(":0"))
    assert invented["messages"][-1]["content"] == "word0" and invented["cot"] is False
    good = next(r for r in out if r["id"].endswith(":1"))
    assert good["cot"] and BEGIN in good["messages"][-1]["content"]
    assert good["messages"][-1]["content"].endswith(f"{ANSWER} word1")


def test_check_cot_reasons():
    ctx = "Question: q\nContext:\n[1] T: The sky is blue today."
    assert check_cot(f"{BEGIN}The sky is  blue{END} {ANSWER} blue", ctx, "Blue") is None
    assert check_cot("blue", ctx, "blue") == f"no '{ANSWER}' line"
    assert check_cot(f"{BEGIN}sky{END} {ANSWER} red", ctx, "blue").startswith("final answer")
    assert check_cot(f"{ANSWER} blue", ctx, "blue") == "no quoted evidence"


# -- training ----------------------------------------------------------------------------------------
def _tiny_settings(home: Path, tiny: Path) -> Settings:
    from tests.conftest import SHARED_MODELS_DIR

    return Settings(
        home=home, models_dir=SHARED_MODELS_DIR, models={"default": ModelConfig(model=str(tiny))}
    )


def _raft_file(tmp: Path, n: int = 12) -> Path:
    path = tmp / "raft.jsonl"
    write_raft(build_raft(_examples(n), RaftSettings(k=2)), path, RaftSettings(k=2), sources=["t"])
    return path


def _cfg(tiny: Path, **kw):
    from training.lora import TrainConfig

    base = {
        "base_model": str(tiny),
        "r": 4,
        "alpha": 8,
        "batch_tokens": 512,
        "lr": 1e-2,
        "threads": 1,
    }
    return TrainConfig(**(base | kw))


def test_training_end_to_end_writes_every_file_and_the_registry_row(home, tiny_model_dir, tmp_path):
    from training.lora import train

    s = _tiny_settings(home, tiny_model_dir)
    store = Store(s.db_url)
    data = _raft_file(tmp_path)
    res = train(data, "raft", s, _cfg(tiny_model_dir, kind="raft", epochs=2), store=store,
                embed=lambda qs: [[1.0, 0.0]] * len(qs))  # fmt: skip
    assert res.folder == s.adapters_dir / "raft" / "v1" and res.version == 1
    assert sorted(p.name for p in res.folder.iterdir()) == sorted(fmt.REQUIRED_FILES)
    config = json.loads((res.folder / fmt.CONFIG_FILE).read_text())
    assert config["r"] == 4 and config["peft_type"] == "LORA"
    assert set(config["target_modules"]) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    meta = fmt.read_meta(res.folder)
    assert meta["format"] == fmt.FORMAT and meta["kind"] == "raft" and meta["name"] == "raft"
    assert meta["base_model_sha256"] == fmt.model_fingerprint(tiny_model_dir)
    assert meta["data"]["records"] == 12 and meta["data"]["settings"]["k"] == 2
    assert meta["prompt"]["template"] == PROMPT and meta["prompt"]["max_passage_words"] == 120
    assert meta["hyperparameters"]["r"] == 4 and meta["prototype"] == [1.0, 0.0]
    m = meta["metrics"]
    for key in ("train_time_s", "tokens_per_s", "peak_rss_mb", "adapter_mb", "padding_fraction"):
        assert m[key] is not None and m[key] >= 0, key
    assert m["examples"] == 12 and m["steps"] >= 2 and m["device"] == "cpu"
    assert m["mean_loss_last"] < m["mean_loss_first"]  # it learned something
    # Manifest covers every file, and the whole folder verifies.
    listed = fmt.read_manifest(res.folder)
    assert set(listed) == {fmt.CONFIG_FILE, fmt.WEIGHTS_FILE, fmt.META_FILE}
    from core.adapters.verify import verify_files

    verify_files(res.folder, base_fingerprint=fmt.model_fingerprint(tiny_model_dir))
    row = registry.resolve(store, "raft")
    assert (row.name, row.version, row.path, row.status) == (
        "raft",
        1,
        str(res.folder),
        "registered",
    )
    assert row.sha256 == registry.manifest_sha256(res.folder) and row.metrics["steps"] == m["steps"]
    assert not list((s.adapters_dir / ".runs").glob("raft-*"))  # run state cleaned up
    # A second run is a new version; the first stays untouched.
    res2 = train(data, "raft", s, _cfg(tiny_model_dir, kind="raft", seed=1), store=store)
    assert res2.version == 2 and (res.folder / fmt.WEIGHTS_FILE).is_file()


def test_loss_is_on_answer_tokens_only_and_batches_waste_little(tiny_model_dir):
    from transformers import AutoTokenizer

    from training.lora import make_batches, tokenize_records

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    recs = build_raft(_examples(20), RaftSettings(k=2))
    rows, too_long = tokenize_records(tok, recs, 1024)
    assert too_long == 0
    ids, labels = rows[0]
    answer = [t for t in labels if t != -100]
    assert tok.decode(answer) == "word0<|im_end|>"
    assert labels[: len(labels) - len(answer)] == [-100] * (len(labels) - len(answer))
    lengths = [len(r[0]) for r in rows]
    batches = make_batches(lengths, 512, seed=0)
    assert sorted(i for b in batches for i in b) == list(range(20))
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert 1 - sum(lengths) / padded < 0.1
    assert all(len(b) * max(lengths[i] for i in b) <= 512 for b in batches if len(b) > 1)
    _, dropped = tokenize_records(tok, recs, 40)
    assert dropped == 20


def test_bad_training_inputs_are_clear(home, tiny_model_dir, tmp_path):
    from training.lora import train

    s = _tiny_settings(home, tiny_model_dir)
    data = _raft_file(tmp_path)
    with pytest.raises(InputError, match="adapter name"):
        train(data, "Bad Name", s, _cfg(tiny_model_dir))
    with pytest.raises(InputError, match="longer than max_len"):
        train(data, "x", s, _cfg(tiny_model_dir, max_len=16))
    with pytest.raises(InputError, match="target_modules"):
        train(data, "x", s, _cfg(tiny_model_dir, target_modules=["no_such_proj"]))
    assert not (s.adapters_dir / "x").exists() or not list((s.adapters_dir / "x").glob("v*"))


KILL_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from core.config import ModelConfig, Settings
    from training.lora import TrainConfig, train

    home, tiny, data, kill_at = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    s = Settings(home=home, models={"default": ModelConfig(model=tiny)})
    cfg = TrainConfig(base_model=tiny, r=4, alpha=8, batch_tokens=256, lr=1e-2, threads=1,
                      checkpoint_every=2, epochs=2)
    train(data, "raft", s, cfg, on_step=lambda st: st == kill_at and os.kill(os.getpid(), 9))
    """
)


def test_a_killed_run_leaves_nothing_half_written_and_resumes_exactly(
    home, tiny_model_dir, tmp_path
):
    from safetensors.torch import load_file

    from training.lora import TrainConfig, train

    data = _raft_file(tmp_path, n=10)
    env = {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": str(REPO_ROOT),
        "PATH": "/usr/bin:/bin",
    }
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(home), str(tiny_model_dir), str(data), "5"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == -9, proc.stderr[-2000:]
    s = _tiny_settings(home, tiny_model_dir)
    assert (
        not list((s.adapters_dir / "raft").glob("v*"))
        if (s.adapters_dir / "raft").exists()
        else True
    )
    states = list((s.adapters_dir / ".runs").glob("raft-*/state.json"))
    assert len(states) == 1 and json.loads(states[0].read_text())["step"] == 4

    cfg = TrainConfig(base_model=str(tiny_model_dir), r=4, alpha=8, batch_tokens=256, lr=1e-2,
                      threads=1, checkpoint_every=2, epochs=2)  # fmt: skip
    resumed = train(data, "raft", s, cfg)
    assert resumed.resumed_from == 4 and resumed.version == 1

    other = _tiny_settings(tmp_path / "h2", tiny_model_dir)
    straight = train(data, "raft", other, cfg)
    a = load_file(str(resumed.folder / fmt.WEIGHTS_FILE))
    b = load_file(str(straight.folder / fmt.WEIGHTS_FILE))
    assert a.keys() == b.keys()
    assert all((a[k] - b[k]).abs().max() < 1e-6 for k in a), "resumed run diverged"
    assert resumed.metrics["steps"] == straight.metrics["steps"]


def test_stale_staging_folders_are_removed(home, tiny_model_dir, tmp_path):
    from training.lora import train

    s = _tiny_settings(home, tiny_model_dir)
    stale = s.adapters_dir / "raft" / ".v1.tmp-999999"
    stale.mkdir(parents=True)
    (stale / fmt.WEIGHTS_FILE).write_bytes(b"half")
    train(_raft_file(tmp_path), "raft", s, _cfg(tiny_model_dir, max_steps=1))
    assert not stale.exists()
    assert sorted(p.name for p in (s.adapters_dir / "raft").iterdir()) == ["v1"]


# -- CLI ---------------------------------------------------------------------------------------------
def _hotpot_file(tmp: Path) -> Path:
    recs = []
    for i in range(8):
        recs.append(
            {
                "_id": f"h{i}",
                "question": f"Which city hosts landmark {i}?",
                "answer": f"City{i}",
                "type": "bridge",
                "level": "easy",
                "supporting_facts": [[f"Landmark {i}", 0]],
                "context": [[f"Landmark {i}", [f"Landmark {i} stands in City{i}."]]]
                + [[f"Noise {i}-{j}", [f"Noise paragraph {j}."]] for j in range(4)],
            }
        )
    p = tmp / "hotpot.json"
    p.write_text(json.dumps(recs))
    return p


def test_cli_build_train_list_verify_remove(home, tiny_model_dir, tmp_path, monkeypatch):
    from app.cli import app

    monkeypatch.setenv("ARMADA_MODELS__DEFAULT__MODEL", str(tiny_model_dir))
    runner = CliRunner()
    src = _hotpot_file(tmp_path)
    out = tmp_path / "raft.jsonl"
    r = runner.invoke(
        app,
        [
            "raft",
            "build",
            "-d",
            f"hotpotqa:{src}",
            "--out",
            str(out),
            "--k",
            "2",
            "--held-out",
            "0.25",
        ],
    )
    assert r.exit_code == 0, r.output
    recs, manifest = read_records(out)
    assert manifest["records"] == 6 and manifest_path(out).is_file()  # 2 of 8 held out
    r = runner.invoke(
        app, ["raft", "build", "--ft", "-d", f"hotpotqa:{src}", "--out", str(tmp_path / "ft.jsonl")]
    )
    assert r.exit_code == 0 and read_records(tmp_path / "ft.jsonl")[1]["kind"] == "ft"

    r = runner.invoke(
        app,
        ["train", str(out), "--name", "raft", "--base", str(tiny_model_dir), "--r", "4",
         "--max-steps", "2", "--no-prototype", "--promote", "--threads", "1"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["adapters", "list", "--json"])
    rows = json.loads(r.stdout)
    assert [(x["name"], x["version"], x["status"]) for x in rows] == [("raft", 1, "promoted")]
    r = runner.invoke(app, ["adapters", "verify"])
    assert r.exit_code == 0 and "raft v1: ok" in r.stdout
    folder = Path(rows[0]["path"])
    (folder / fmt.WEIGHTS_FILE).write_bytes((folder / fmt.WEIGHTS_FILE).read_bytes()[:-10])
    r = runner.invoke(app, ["adapters", "verify"])
    assert r.exit_code == 1 and "raft v1:" in r.stdout and "ok" not in r.stdout.split("raft v1:")[1]
    r = runner.invoke(app, ["adapters", "remove", "raft"])
    assert r.exit_code == 1 and "promoted" in r.output
    r = runner.invoke(app, ["adapters", "remove", "raft", "--force"])
    assert r.exit_code == 0 and not folder.exists()
    r = runner.invoke(app, ["train", str(tmp_path / "missing.jsonl"), "--name", "x"])
    assert r.exit_code == 1 and "no such training file" in " ".join(r.output.split())


def test_cli_fits_expert_routers_from_questions(home, tmp_path):
    from app.cli import app
    from routers.experts import Gate, PrototypeRouter

    def write(name: str, questions: list[str]) -> Path:
        examples = [Example(str(i), q, ("a",), dataset=name) for i, q in enumerate(questions)]
        path = tmp_path / f"{name}.jsonl"
        write_raft(build_ft(examples), path, None, kind="ft")
        return path

    people = [
        "Ada Lovelace",
        "Alan Turing",
        "Marie Curie",
        "Nikola Tesla",
        "Jane Austen",
        "Leo Tolstoy",
    ]
    bio = write("popqa", [f"What is {p}'s occupation?" for p in people])
    med = write(
        "pubmedqa",
        [f"Does {d} reduce mortality in patients with {c}?" for d in ("aspirin", "statins", "insulin")
         for c in ("sepsis", "diabetes")],
    )  # fmt: skip
    out = tmp_path / "router"
    r = CliRunner().invoke(
        app,
        [
            "raft",
            "router",
            "-e",
            f"popqa={bio}",
            "-e",
            f"pubmedqa={med}",
            "--out",
            str(out),
            "--metric",
            "cosine",
        ],
    )
    assert r.exit_code == 0, r.output
    protos = PrototypeRouter.load(out / "prototypes.json")
    gate = Gate.load(out / "gate", experts=["popqa", "pubmedqa"])
    from core.retrieval import embed_texts

    x = embed_texts(
        Settings(home=home),
        ["What is Charles Darwin's occupation?", "Does metformin reduce mortality in sepsis?"],
    )
    for router in (protos, gate):
        probs = router.predict_proba(x)
        assert probs[0].argmax() == 0 and probs[1].argmax() == 1
    r = CliRunner().invoke(app, ["raft", "router", "-e", "popqa", "--out", str(out)])
    assert r.exit_code == 1 and "EXPERT=SOURCE" in r.output


def test_a_checkpoint_whose_two_files_disagree_is_ignored(home, tiny_model_dir, tmp_path):
    """A kill between writing the tensors and the bookkeeping of a checkpoint: start over."""
    from training.lora import RUNS_DIR, STATE_JSON, train

    s = _tiny_settings(home, tiny_model_dir)
    data = _raft_file(tmp_path, n=10)
    cfg = _cfg(tiny_model_dir, checkpoint_every=2, epochs=2, batch_tokens=256)
    steps = []
    with pytest.raises(KeyboardInterrupt):
        train(
            data,
            "raft",
            s,
            cfg,
            on_step=lambda st: (
                steps.append(st) or (st == 5 and (_ for _ in ()).throw(KeyboardInterrupt()))
            ),
        )
    state_file = next((s.adapters_dir / RUNS_DIR).glob("raft-*")) / STATE_JSON
    state = json.loads(state_file.read_text())
    assert state["step"] == 4
    state_file.write_text(json.dumps({**state, "step": 2}))  # bookkeeping from an older save
    res = train(data, "raft", s, cfg)
    assert res.resumed_from == 0  # not resumed from a mixed checkpoint


def test_gold_passages_titled_with_the_answer_can_be_left_out():
    subject = Passage("p:s", "Aina Kusuda is a Japanese voice actress from Chiba.", "Aina Kusuda")
    answer_page = Passage("p:a", "Chiba Prefecture is a prefecture of Japan.", "Chiba Prefecture")
    ex = Example(
        "1",
        "In what city was Aina Kusuda born?",
        ("Chiba Prefecture",),
        (subject, answer_page),
        (),
        "popqa",
    )
    kept = build_raft([ex], RaftSettings(p_gold=1.0, k=0, drop_answer_titled_gold=True))[0]
    assert kept["gold_ids"] == ["p:s"] and kept["passage_ids"] == ["p:s"]
    both = build_raft([ex], RaftSettings(p_gold=1.0, k=0))[0]
    assert sorted(both["passage_ids"]) == ["p:a", "p:s"]
