"""Metrics against hand-computed cases, including Unicode and punctuation edge cases."""

from __future__ import annotations

import pytest

from core.metrics import contains_any, exact_match, f1_score, normalize_answer


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
