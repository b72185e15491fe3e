"""Metrics against hand-computed cases, including Unicode and punctuation edge cases."""

from __future__ import annotations

import pytest

from core.metrics import (
    contains_any,
    exact_match,
    f1_score,
    faithfulness,
    label_scores,
    normalize_answer,
    recall_at_k,
    reciprocal_rank,
    rouge_l,
    yes_no_maybe,
)


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("The  Eiffel Tower!", "eiffel tower"),
        ("an apple, a pear", "apple pear"),
        ("Café—Paris", "café paris"),
        ("«Les Misérables»", "les misérables"),
        ("theatre", "theatre"),  # 'the' inside a word stays
        ("", ""),
    ],
)
def test_normalize(raw, norm):
    assert normalize_answer(raw) == norm


def test_exact_match():
    assert exact_match("the Gustave Eiffel.", ["Gustave Eiffel"]) == 1.0
    assert exact_match("Gustave", ["Gustave Eiffel"]) == 0.0
    assert exact_match("yes", ["no", "Yes"]) == 1.0


def test_f1_hand_computed():
    # pred: gustave eiffel engineer (3), gold: gustave eiffel (2): P=2/3 R=1 F1=0.8
    assert f1_score("Gustave Eiffel, engineer", ["Gustave Eiffel"]) == pytest.approx(0.8)
    assert f1_score("Paris", ["London"]) == 0.0
    assert f1_score("", [""]) == 1.0
    assert f1_score("a", ["the"]) == 1.0  # both normalise to empty
    assert f1_score("x y", ["y z", "x y"]) == 1.0  # best over golds


def test_contains_any_respects_word_boundaries():
    assert contains_any("He was born in Paris, France.", ["Paris"]) == 1.0
    assert contains_any("Parisian food", ["Paris"]) == 0.0
    assert contains_any("anything", ["", "the"]) == 0.0


# -- PubMedQA labels ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("Yes, it does.", "yes"),
        ("NO!", "no"),
        ("Maybe; the evidence is mixed.", "maybe"),
        ("It is unclear.", "maybe"),  # no such word: "maybe" by convention
        ("Nobody knows, but yes.", "yes"),  # "nobody" is not "no": word boundaries
        ("«No», said the trial.", "no"),  # Unicode punctuation around the word
        ("", "maybe"),
        ("The answer is no, not yes.", "no"),  # the first such word wins
    ],
)
def test_yes_no_maybe(text, label):
    assert yes_no_maybe(text) == label


def test_label_scores_hand_computed():
    # yes: tp1 fp1 fn0 → 2/3; no: tp1 fp0 fn2 → 1/2; maybe: tp0 → 0; macro = 7/18
    s = label_scores(["yes", "no", "yes", "maybe"], ["yes", "no", "no", "no"])
    assert s["accuracy"] == pytest.approx(0.5)
    assert s["macro_f1"] == pytest.approx(7 / 18)
    # A label absent from gold and predictions is left out of the average.
    assert label_scores(["yes", "no"], ["yes", "no"])["macro_f1"] == pytest.approx(1.0)
    assert label_scores([], []) == {"accuracy": 0.0, "macro_f1": 0.0}
    with pytest.raises(ValueError):
        label_scores(["yes"], [])


# -- ROUGE-L (rouge-score, SQuAD tokens) ------------------------------------------------------------------
def test_rouge_l_hand_computed():
    # pred: gustave eiffel built it (4); gold: eiffel built tower (3, "the" dropped); LCS = 2
    # P = 2/4, R = 2/3, F = 2PR/(P+R) = 4/7
    assert rouge_l("Gustave Eiffel built it", ["Eiffel built the tower"]) == pytest.approx(4 / 7)
    assert rouge_l("x y", ["a b", "x y"]) == pytest.approx(1.0)  # best over golds
    assert rouge_l("", ["x"]) == 0.0
    assert rouge_l("x", []) == 0.0


def test_rouge_l_keeps_unicode_words():
    # rouge-score's own tokenizer would turn "Müller" into "m ller" and "東京" into nothing.
    assert rouge_l("Müller, café!", ["müller café"]) == pytest.approx(1.0)
    assert rouge_l("東京", ["東京"]) == pytest.approx(1.0)
    assert rouge_l("Muller", ["Müller"]) == 0.0  # accents matter, as in SQuAD


# -- retrieval --------------------------------------------------------------------------------------------
def test_recall_at_k_and_mrr_match_titles():
    retrieved = ["Ed Wood (film)", "scott  derrickson", "Ed Wood", "Doctor Strange"]
    gold = ["Scott Derrickson", "Ed Wood"]
    assert recall_at_k(retrieved, gold, 1) == 0.0
    assert recall_at_k(retrieved, gold, 2) == 0.5  # case and spaces are normalised
    assert recall_at_k(retrieved, gold, 3) == 1.0
    assert reciprocal_rank(retrieved, gold) == pytest.approx(1 / 2)
    assert reciprocal_rank(["x"], gold) == 0.0
    assert recall_at_k(retrieved, [], 4) is None and reciprocal_rank(retrieved, [" "]) is None
    # NFC: a decomposed "é" equals the composed one.
    assert recall_at_k(["Cafe\u0301 Society"], ["Café Society"], 1) == 1.0


# -- faithfulness -----------------------------------------------------------------------------------------
def test_faithfulness_is_content_word_overlap_with_cited_passages():
    cited = ["Gustave Eiffel designed the tower in Paris."]
    # content words: eiffel, designed, tower (stopwords and 1-letter tokens dropped) → all supported
    assert faithfulness("Eiffel designed the tower.", cited) == pytest.approx(1.0)
    # eiffel, built, tower, 1889 → 2 of 4 supported
    assert faithfulness("Eiffel built the tower in 1889", cited) == pytest.approx(0.5)
    assert faithfulness("Eiffel", []) == 0.0  # something to support, nothing cited
    assert faithfulness("it is the", cited) is None  # nothing to support
