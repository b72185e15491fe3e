"""Question validation and citation attribution on hand-made cases."""

from __future__ import annotations

import pytest

from core.errors import InputError
from core.text import attribute_citations, clean_question

P = [
    ("eiffel#0", "The Eiffel Tower is named after the engineer Gustave Eiffel."),
    ("paris#0", "Paris is the capital of France."),
    ("gustave#0", "Gustave Eiffel was a French civil engineer."),
]


def test_clean_question_normalises_and_strips():
    assert clean_question("  Cafe\u0301?  ") == "Café?"


@pytest.mark.parametrize("bad", ["", "  ", "a\x00b", "\udc80", None, b"q", "x" * 5])
def test_clean_question_refuses_bad_input(bad):
    with pytest.raises(InputError):
        clean_question(bad, max_chars=4)


def test_explicit_markers_win_in_order_and_out_of_range_is_ignored():
    assert attribute_citations("It is Gustave [3], see [1] and [9].", P) == [
        "gustave#0",
        "eiffel#0",
    ]


def test_overlap_cites_supporting_passages_best_first():
    cited = attribute_citations("It is named after Gustave Eiffel, the engineer.", P)
    assert cited[0] == "eiffel#0" and "paris#0" not in cited


def test_no_support_no_citation():
    assert attribute_citations("I don't know.", P) == []
    assert attribute_citations("", P) == []
