"""Answer normalisation, the balanced `\\boxed{}` finder and answer-type classification: table-driven."""

from __future__ import annotations

import pytest

from vigos.data.answers import ANSWER_TYPES, answer_type, last_boxed, normalize_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", "B"),
        ("  42 \n", "42"),
        ("\\boxed{3}", "3"),
        ("The answer is \\boxed{3}.", "3"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # nested braces kept
        ("first \\boxed{1}, then \\boxed{2}", "2"),  # the last box wins
        ("\\boxed {x}", "x"),
        ("<answer>red</answer>", "red"),
        ("<think>hmm</think><answer> blue </answer>", "blue"),
        ("<answer>a</answer> <answer>b</answer>", "b"),
        ("<answer> \\boxed{B} </answer>", "B"),
        ("Answer: B", "B"),
        ("answer:B", "B"),
        ("ANSWER :  yes", "yes"),
        ("Final answer: 7", "7"),
        ("```\n5\n```", "5"),
        ("```text\nfoo bar\n```", "foo bar"),
        ("```red```", "red"),
        ("```\nAnswer: \\boxed{12}\n```", "12"),
        ("'red'", "red"),
        ('"circle"', "circle"),
        ("`B`", "B"),
        ("\" ` 'x' ` \"", "x"),
        ("\\boxed{'yes'}", "yes"),
        ("<answer> </answer>", ""),
        ("\\boxed{}", ""),
        ("``` ```", ""),
        ("", ""),
        (None, ""),
        (3, "3"),
        (2.5, "2.5"),
        # An unclosed last box is not replaced by an earlier one: the text stays as it is.
        ("\\boxed{2} then \\boxed{3", "\\boxed{2} then \\boxed{3"),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("no box here", None),
        ("\\boxed{3}", "3"),
        ("\\boxed{a{b}c}", "a{b}c"),
        ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),
        ("\\boxed{1} \\boxed{2}", "2"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces do not count
        ("\\boxed{}", ""),
        ("\\boxed{1} \\boxed{2", None),  # last box unclosed: no fallback to the first
        ("\\boxed{", None),
        ("\\boxed{a}}", "a"),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize(
    ("answer", "options", "expected"),
    [
        ("B", None, "multiple_choice"),
        ("(C)", None, "multiple_choice"),
        ("D.", None, "multiple_choice"),
        ("J", None, "multiple_choice"),
        ("K", None, "free_form"),
        ("circle", ["A. square", "B. circle"], "multiple_choice"),
        ("circle", None, "free_form"),
        ("3", None, "numeric"),
        ("-2.5", None, "numeric"),
        ("1,000", None, "numeric"),
        ("45%", None, "numeric"),
        (".5", None, "numeric"),
        ("yes", None, "yes_no"),
        ("No", None, "yes_no"),
        ("True", None, "yes_no"),
        ("\\frac{1}{2}", None, "math"),
        ("2\\sqrt{3}", None, "math"),
        ("x = 5", None, "math"),
        ("3/4", None, "math"),
        ("red", None, "free_form"),
        ("a red ball", None, "free_form"),
        ("", None, "free_form"),
    ],
)
def test_answer_type(answer, options, expected):
    assert expected in ANSWER_TYPES
    assert answer_type(answer, options) == expected
