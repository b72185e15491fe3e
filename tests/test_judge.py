"""The LLM judge: robust parsing (garbage → "unparsed"), order-swapped pairwise verdicts, and the
position-bias and agreement figures, with a scripted chat model standing in for the LLM."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from core.models.base import ChatModel
from core.store.tables import Interaction
from core.types import Generation
from evals.judge import (
    DEFAULT_RUBRIC,
    Judge,
    PairwiseResult,
    PairwiseVerdict,
    agreement,
    gold_preference,
    load_rubric,
    parse_pairwise,
    parse_pointwise,
    pointwise_agreement,
    position_bias,
)


class ScriptedModel(ChatModel):
    """Replies with ``reply(user_message)``; records every prompt."""

    name, backend = "scripted", "test"

    def __init__(self, reply: Callable[[str], str]) -> None:
        self.reply = reply
        self.prompts: list[str] = []

    def generate(self, messages: Sequence[Any], **kw: Any) -> Generation:
        user = messages[-1].content
        self.prompts.append(user)
        return Generation(self.reply(user))

    def load_adapter(self, name: str, path: str | Path) -> None: ...
    def unload_adapter(self, name: str) -> None: ...
    def adapters(self) -> list[str]:
        return []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def info(self) -> dict[str, Any]:
        return {}


@pytest.mark.parametrize(
    ("raw", "score"),
    [
        ('{"score": 0.8, "reason": "mostly right"}', 0.8),
        ('Sure! ```json\n{"score": 1, "reason": "exact"}\n```', 1.0),
        ("Score: 0.25 because it misses half", 0.25),
        ("rating = 7/10", 0.7),
        ("I would give it 3/5.", 0.6),
        ("1", 1.0),
        ("0.75.\nIt misses the year.", 0.75),
        ("7", None),
        ("score: 7", None),  # out of the asked range and no scale: not guessed
        ("There were 2 people.", None),  # a number inside prose is not a score
        ("The answer is about Paris, which is in France.", None),  # prose: unparsed
        ("", None),
        ('{"score": "high"}', None),
        ("Score: 1.5", None),
    ],
)
def test_parse_pointwise(raw, score):
    v = parse_pointwise(raw)
    assert v.score == (pytest.approx(score) if score is not None else None)
    assert v.parsed is (score is not None)
    assert v.raw == raw


def test_parse_pointwise_reason():
    assert parse_pointwise('{"score": 0, "reason": "wrong city"}').reason == "wrong city"
    assert parse_pointwise("score: 0.5  partly\nright").reason == "score: 0.5 partly right"


@pytest.mark.parametrize(
    ("raw", "winner"),
    [
        ('{"winner": "A", "reason": "correct"}', "A"),
        ('{"winner": "tie"}', "tie"),
        ("[[B]]", "B"),
        ("[[C]]", "tie"),
        ("Winner: B. It names the right person.", "B"),
        ("The better answer is A", "A"),
        ("A: A is better.", "A"),  # what SmolLM2-135M writes under the terse rubric
        ("Answer B is the better one", "B"),
        ("A: Cloe Elmo was born", "unparsed"),  # starts echoing "Answer A:", no verdict
        ("Verdict - tie", "tie"),
        ("B", "B"),
        ("  A.  ", "A"),
        ("B\nBecause it names the right city.", "B"),  # the verdict alone on the first line
        ("A good answer names the city.", "unparsed"),  # "A" the article, not a verdict
        ("a", "unparsed"),  # a lone lower-case "a" is an article, not a verdict
        ("Answer A: Paris\nAnswer B: Lyon\nQuestion: where", "unparsed"),  # echoed prompt
        ("", "unparsed"),
        ('{"winner": "neither"}', "unparsed"),
        ('Reply with JSON only: {"winner": "A" or "B" or "tie", "reason": "…"}', "unparsed"),
    ],
)
def test_parse_pairwise(raw, winner):
    assert parse_pairwise(raw).winner == winner


def _v(w: str) -> PairwiseVerdict:
    return PairwiseVerdict(w, "", w)  # type: ignore[arg-type]


def test_pairwise_result_maps_the_swapped_order_back():
    consistent = PairwiseResult(_v("A"), _v("B"))  # a first → A; b first → B, i.e. a again
    assert consistent.outcomes == ("a", "a") and consistent.winner == "a"
    assert not consistent.flipped
    biased = PairwiseResult(_v("A"), _v("A"))  # always the first shown
    assert biased.flipped and biased.winner == "tie"
    half = PairwiseResult(_v("B"), _v("unparsed"))
    assert half.winner == "unparsed" and not half.flipped
    again = PairwiseResult.from_dict(biased.to_dict())  # re-read from the raw replies
    assert (again.first.winner, again.second.winner, again.flipped) == ("A", "A", True)


def test_judge_asks_both_orders_and_cancels_position_bias():
    model = ScriptedModel(lambda _: '{"winner": "A", "reason": "first is best"}')
    judge = Judge(model)
    res = judge.pairwise("Capital of France?", "Paris", "Lyon", reference="Paris")
    assert [p.split("Answer A: ")[1].split("\n")[0] for p in model.prompts] == ["Paris", "Lyon"]
    assert "Reference answer: Paris" in model.prompts[0]
    assert res.flipped and res.winner == "tie"

    fair = Judge(ScriptedModel(lambda p: "[[A]]" if "Answer A: Paris" in p else "[[B]]"))
    assert fair.pairwise("Capital of France?", "Lyon", "Paris").winner == "b"


def test_judge_pointwise_prompt_and_unparsed_garbage():
    model = ScriptedModel(lambda _: "Paris Paris Paris the the")
    v = Judge(model).pointwise("Capital of France?", "Paris")
    assert v.score is None and not v.parsed
    assert (
        "Reference answer" not in model.prompts[0] and "Answer to grade: Paris" in model.prompts[0]
    )


def test_position_bias_and_agreement_hand_computed():
    results = [
        PairwiseResult(_v("A"), _v("B")),  # consistent: a
        PairwiseResult(_v("A"), _v("A")),  # flip
        PairwiseResult(_v("B"), _v("A")),  # consistent: b
        PairwiseResult(_v("tie"), _v("A")),  # flip (tie vs b)
        PairwiseResult(_v("unparsed"), _v("A")),
    ]
    pb = position_bias(results)
    assert pb["pairs"] == 5 and pb["pairs_parsed_both_orders"] == 4
    assert pb["flip_rate"] == pytest.approx(2 / 4)
    # single verdicts: A B A A B A tie A unparsed A → 9 parsed, 6 A, 2 B
    assert pb["first_position_win_rate"] == pytest.approx(6 / 9)
    assert pb["second_position_win_rate"] == pytest.approx(2 / 9)
    assert pb["unparsed_rate"] == pytest.approx(1 / 10)

    gold = [gold_preference(1.0, 0.0), gold_preference(0.5, 0.5), gold_preference(0.0, 0.4)]
    assert gold == ["a", "tie", "b"]
    ag = agreement([r.winner for r in results[:3]], gold)  # judge: a, tie, b
    assert ag["all"] == pytest.approx(1.0) and ag["decisive"] == pytest.approx(1.0)
    ag = agreement(["tie", "a", "unparsed"], ["a", "a", "b"])
    assert ag["n_decisive"] == 3 and ag["decisive"] == pytest.approx(1 / 3)
    assert ag["n_decisive_parsed"] == 1 and ag["decisive_parsed"] == pytest.approx(1.0)
    assert position_bias([])["flip_rate"] is None


def test_pointwise_agreement_with_votes():
    ag = pointwise_agreement([0.9, 0.2, None, 0.6], [1.0, 1.0, 0.0, 0.5])
    assert ag == {"n": 4, "parsed": 3, "unparsed_rate": 0.25, "agreement": pytest.approx(2 / 3)}


def test_rubric_is_data(tmp_path):
    path = tmp_path / "strict.toml"
    path.write_text('name = "strict"\npointwise_system = "Be harsh."\n')
    rubric = load_rubric(path)
    assert rubric.name == "strict" and rubric.pairwise_user == DEFAULT_RUBRIC.pairwise_user
    assert rubric.digest != DEFAULT_RUBRIC.digest
    model = ScriptedModel(lambda _: "score: 1")
    Judge(model, rubric).pointwise("q", "a")
    assert Judge(model, rubric).identity != Judge(model).identity
    (tmp_path / "bad.json").write_text('{"nmae": "typo"}')
    with pytest.raises(ValueError, match="unknown rubric fields"):
        load_rubric(tmp_path / "bad.json")


# -- over a harness run ------------------------------------------------------------------------------
def _fair_judge() -> Judge:
    """Prefers the longer answer whichever order it is shown in; grades non-empty answers 1."""

    def reply(prompt: str) -> str:
        if "Answer to grade: " in prompt:
            graded = prompt.split("Answer to grade: ")[1].split("\n")[0]
            return f'{{"score": {1 if graded.strip() else 0}, "reason": "length"}}'
        a = prompt.split("Answer A: ")[1].split("\n")[0]
        b = prompt.split("Answer B: ")[1].split("\n")[0]
        return "[[A]]" if len(a) > len(b) else "[[B]]" if len(b) > len(a) else "[[C]]"

    return Judge(ScriptedModel(reply))


def test_pairwise_study_and_pointwise_judge_on_a_run(home, tmp_path):
    from evals.harness import run_eval
    from evals.judging import pairwise_study
    from tests.test_harness import config, make_runtime, write_dataset

    rt = make_runtime(home)
    cfg = config(tmp_path / "out", write_dataset(tmp_path / "qa.jsonl", 8), n=8)
    cfg.arms, cfg.judge = ["echo", "boom"], "llm"
    report = run_eval(rt, cfg, judge=_fair_judge())
    # Pointwise: echo's answers are non-empty (1), boom's failures are empty (0).
    assert report["datasets"]["jsonl"]["arms"]["echo"]["metrics"]["judge"]["mean"] == 1.0
    assert report["datasets"]["jsonl"]["arms"]["boom"]["metrics"]["judge"]["mean"] == 0.0
    assert report["judge"]["unparsed"] == 0 and report["arms"]["echo"]["judge"] == 1.0
    # Against F1 ≥ 0.5: boom (0, 0) always agrees; echo (1, F1 < 0.5 here) never does.
    gold = report["judge"]["agreement_with_gold"]["jsonl_f1"]
    assert gold["n"] == 16 and gold["agreement"] == pytest.approx(0.5)
    assert report["judge"]["human_votes"]["pointwise_vs_votes"]["n"] == 0  # no votes yet
    # A human vote on one of echo's answers, for the judge-vs-people figure.
    first = next(r for r in rt.store.session().exec(select(Interaction)) if r.arm == "echo")
    rt.feedback(first.id, 1.0, voter="tester")

    study = pairwise_study(rt, cfg.out, "echo", "boom", pairs=5, judge=_fair_judge())
    assert study["position_bias"]["pairs"] == 5
    assert study["position_bias"]["flip_rate"] == 0.0  # the scripted judge is order-free
    assert study["winner_counts"]["a"] == 5
    # F1 prefers echo on even questions and ties on odd ones; the judge always says echo.
    f1 = study["agreement_f1"]
    assert f1["n"] == 5 and f1["decisive"] == 1.0
    assert f1["all"] == pytest.approx(f1["n_decisive"] / 5)  # judge "a" vs F1's ties counts wrong
    assert study["human_votes"]["pointwise_vs_votes"]["n"] == 1
    assert study["human_votes"]["pointwise_vs_votes"]["agreement"] == 1.0
    assert study["human_votes"]["pairwise_vs_arena"]["n"] == 0
    assert (cfg.out / "judge_study_echo_boom_correctness.json").exists()
    # Verdicts are cached: a second study asks the model nothing.
    silent = Judge(ScriptedModel(lambda _: pytest.fail("asked again")))
    again = pairwise_study(rt, cfg.out, "echo", "boom", pairs=5, judge=silent)
    assert again["position_bias"] == study["position_bias"]
    rt.close()
