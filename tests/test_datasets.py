"""Dataset loaders on small files in each official format, their errors, and the seeded split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.datasets import (
    Example,
    load_dataset,
    load_hotpotqa,
    load_jsonl,
    load_popqa,
    load_pubmedqa,
    split,
)
from core.errors import InputError

HOTPOT = [
    {
        "_id": "5a8b",
        "question": "Were Scott Derrickson and Ed Wood of the same nationality?",
        "answer": "yes",
        "type": "comparison",
        "level": "hard",
        "supporting_facts": [["Scott Derrickson", 0], ["Ed Wood", 0], ["Ed Wood", 1]],
        "context": [
            ["Ed Wood (film)", ["Ed Wood is a 1994 film.", " It stars Johnny Depp."]],
            ["Scott Derrickson", ["Scott Derrickson is an American director."]],
            ["Ed Wood", ["Edward Wood was an American filmmaker.", " He made B movies."]],
            ["Ed Wood (film)", ["A duplicate title, as fullwiki records sometimes have."]],
        ],
    },
    {  # fullwiki: the gold paragraph was not retrieved
        "_id": "5a8c",
        "question": "Which is older?",
        "answer": "A",
        "type": "bridge",
        "level": None,
        "supporting_facts": [["Missing", 0]],
        "context": [["Other", ["Nothing useful."]]],
    },
]

PUBMED = {
    "10340286": {
        "QUESTION": "Is CRP useful in the elderly?",
        "CONTEXTS": ["Background text.", "Methods text."],
        "LABELS": ["OBJECTIVES", "METHODS"],
        "MESHES": ["Aged"],
        "YEAR": "1999",
        "reasoning_required_pred": "yes",
        "final_decision": "maybe",
        "LONG_ANSWER": "It depends.",
    }
}

POPQA_HEADER = (
    "id\tsubj\tprop\tobj\tsubj_id\tprop_id\tobj_id\ts_aliases\to_aliases\ts_uri\to_uri\t"
    "s_wiki_title\to_wiki_title\ts_pop\to_pop\tquestion\tpossible_answers"
)
POPQA_ROWS = [
    'q1\tAina Kusuda\tplace of birth\tChiba Prefecture\t90303\t218\t2783342\t"[""AINA""]"\t[]\t'
    "u\tu\tAina Kusuda\tChiba Prefecture\t618\t13421\tIn what city was Aina Kusuda born?\t"
    '"[""Chiba Prefecture""]"',
    # a row without the Wikidata columns (empty cells)
    "id2\t\t\t\t\t\t\t\t\t\t\t\t\t187\t8261\tIn what city was Don Reid born?\t"
    '"[""Staunton"", ""Staunton, Virginia""]"',
]


def write(path: Path, data: object) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def test_hotpotqa_gold_others_and_ids(tmp_path: Path) -> None:
    ex = load_hotpotqa(write(tmp_path / "dev.json", HOTPOT))
    assert [e.id for e in ex] == ["5a8b", "5a8c"]
    e = ex[0]
    assert (e.dataset, e.category, e.answers) == ("hotpotqa", "multi_hop", ("yes",))
    assert [p.title for p in e.gold] == ["Scott Derrickson", "Ed Wood"]
    assert e.gold[1].text == "Edward Wood was an American filmmaker. He made B movies."
    assert [p.id for p in e.others] == [
        "hotpotqa:5a8b:Ed Wood (film)",
        "hotpotqa:5a8b:Ed Wood (film)#2",
    ]
    assert len({p.id for p in e.passages}) == 4
    assert e.meta["type"] == "comparison" and e.meta["gold_in_context"] is True
    assert ex[1].gold == () and ex[1].meta["gold_in_context"] is False


def test_popqa_with_and_without_paragraphs(tmp_path: Path) -> None:
    tsv = write(tmp_path / "popQA.tsv", "\n".join([POPQA_HEADER, *POPQA_ROWS]) + "\n")
    ex = load_popqa(tsv)
    assert [e.answers for e in ex] == [("Chiba Prefecture",), ("Staunton", "Staunton, Virginia")]
    assert ex[0].meta == {
        "subj": "Aina Kusuda",
        "prop": "place of birth",
        "obj": "Chiba Prefecture",
        "s_pop": 618,
        "o_pop": 13421,
    }
    assert ex[1].meta == {"s_pop": 187, "o_pop": 8261} and ex[1].gold == ()
    paras = tmp_path / "paragraphs.jsonl"
    lines = [
        {"id": "q1", "question": "x", "paragraphs": [
            {"title": "Aina Kusuda", "text": "Born in Chiba.", "is_supporting": True},
            {"title": "Chiba", "text": "A prefecture.", "is_supporting": False}]},
        # joined by question when the id does not match
        {"id": "zzz", "question": "In what city was Don Reid born?", "paragraphs": [
            {"title": "Don Reid", "text": "Born in Staunton.", "is_supporting": True}]},
    ]  # fmt: skip
    write(paras, "\n".join(json.dumps(x) for x in lines))
    ex = load_dataset(f"popqa:{tsv},{paras}")
    assert [p.id for p in ex[0].gold] == ["popqa:q1:Aina Kusuda"]
    assert [p.title for p in ex[0].others] == ["Chiba"]
    assert [p.title for p in ex[1].gold] == ["Don Reid"]
    assert {e.category for e in ex} == {"long_tail"}


def test_pubmedqa(tmp_path: Path) -> None:
    path = write(tmp_path / "ori_pqal.json", PUBMED)
    (e,) = load_pubmedqa(path)
    assert load_dataset(f"pubmedqa:{path}") == [e]
    assert (e.id, e.answers, e.category, e.dataset) == (
        "10340286",
        ("maybe",),
        "biomedical",
        "pubmedqa",
    )
    assert e.gold[0].text == "Background text. Methods text." and e.gold[0].title == "PMID 10340286"
    assert e.others == () and e.meta["long_answer"] == "It depends."


def test_jsonl(tmp_path: Path) -> None:
    f = tmp_path / "qa.jsonl"
    recs = [
        {"id": "a", "question": " Q1? ", "answers": ["x", "y"], "gold": [{"title": "T", "text": "t"}],
         "others": ["plain"], "category": "multi_hop", "source": "mine"},
        {"question": "Q2?", "answer": "z"},
    ]  # fmt: skip
    write(f, json.dumps(recs[0]) + "\n\n" + json.dumps(recs[1]) + "\n")
    a, b = load_jsonl(f)
    assert (a.question, a.answers, a.category, a.meta) == (
        "Q1?",
        ("x", "y"),
        "multi_hop",
        {"source": "mine"},
    )
    assert [p.id for p in a.passages] == ["jsonl:a:T", "jsonl:a:"]
    assert (b.id, b.answers, b.category, b.gold) == ("line3", ("z",), "general", ())


@pytest.mark.parametrize(
    ("spec", "content", "message"),
    [
        ("hotpotqa", PUBMED, "got an object"),
        ("pubmedqa", HOTPOT, "got a list"),
        ("hotpotqa", [{"question": "q", "answer": "a"}], "record 0: not a HotpotQA record"),
        ("hotpotqa", [{**HOTPOT[0], "context": [["t"]]}], "record 0 (5a8b): context must be"),
        ("pubmedqa", {"1": {"QUESTION": "q"}}, "record '1': not a PubMedQA record"),
        ("hotpotqa", "[{\n  oops", "invalid JSON at line 2"),
        (
            "jsonl",
            '{"question": "q", "answer": "a"}\n{"answer": "a"}\n',
            "line 2: missing 'question'",
        ),
        ("jsonl", '{"question": "q", "answer": "a"}\nnot json\n', "line 2: invalid JSON"),
        ("popqa", "a\tb\n1\t2\n", "header lacks"),
        (
            "popqa",
            POPQA_HEADER + "\n" + POPQA_ROWS[0].replace('"[""Chiba', "[Chiba"),
            "line 2 (q1)",
        ),
    ],
)
def test_clear_errors(tmp_path: Path, spec: str, content: object, message: str) -> None:
    f = write(tmp_path / "data.txt", content)
    with pytest.raises(InputError, match=r"data\.txt") as err:
        load_dataset(f"{spec}:{f}")
    assert message in str(err.value)


def test_bad_spec_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="KIND:PATH"):
        load_dataset("squad:x.json")
    with pytest.raises(InputError, match="no such file"):
        load_dataset(f"hotpotqa:{tmp_path / 'nope.json'}")


def test_split_is_seeded_stable_and_order_free() -> None:
    ex = [Example(str(i), f"q{i}", ("a",)) for i in range(100)]
    kept, held = split(ex, 0.2, seed=1)
    assert len(held) == 20 and len(kept) == 80
    assert {e.id for e in kept} | {e.id for e in held} == {e.id for e in ex}
    assert split(ex, 0.2, seed=1) == (kept, held)
    assert [e.id for e in held] == sorted((e.id for e in held), key=int)  # input order kept
    _, held_rev = split(ex[::-1], 0.2, seed=1)
    assert {e.id for e in held_rev} == {e.id for e in held}
    assert {e.id for e in split(ex, 0.2, seed=2)[1]} != {e.id for e in held}
    assert split(ex, 0.0, 0)[1] == [] and split(ex, 1.0, 0)[0] == []
    with pytest.raises(ValueError):
        split(ex, 1.5, 0)
