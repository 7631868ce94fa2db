"""Numbers: e-notation, counting words, and how precise a decimal must be to match an exact fraction."""

import pytest

from vigos.evaluation.grade import grade, grade_detail
from vigos.evaluation.grade.numbers import parse_number


@pytest.mark.parametrize(
    ("extracted", "reference", "expected"),
    [
        ("7.243e6", "7243000", True),
        ("7.243E+06", "7,243,000", True),
        ("7.243 \\times 10^{6}", "7243000", True),
        ("7.243×10^6 km", "7243000", True),
        ("1.5e-3", "0.0015", True),
        ("7243012", "7.243e6", True),  # more precise than an e-notation reference
        ("7.2e6", "7.243e6", False),  # coarser than it
        ("7.243e5", "7243000", False),
        ("three", "3", True),
        ("Three apples", "3", True),
        ("twenty", "20", True),
        ("zero", "0", True),
        ("three", "4", False),
        ("3", "three", True),  # a reference written as a word
        ("twelve or thirteen", "12", False),
        ("0.02", "1/64", False),  # one significant digit cannot stand for an exact fraction
        ("0.016", "1/64", True),
        ("0.0156", "\\frac{1}{64}", True),
        ("0.015625", "1/64", True),
        ("0.33", "1/3", True),
        ("0.3", "1/3", False),
        ("0.34", "1/3", False),  # not the fraction correctly rounded
        ("6.33", "6.333", False),  # the reference is finer
        ("6.3333", "6.333", True),
    ],
)
def test_numeric_forms(extracted, reference, expected):
    assert grade(extracted, reference, "numeric") is expected


def test_e_notation_precision():
    assert parse_number("7.243e6") == (7243000.0, -3, False, 4)
    assert parse_number("1.5 \\times 10^{-3}") == (0.0015, 4, False, 2)


def test_counting_words_free_form():
    assert grade("two", "2", "free_form") is True
    assert grade_detail("2 cats", "two", "free_form") == (True, "free_form.number")
    assert grade("someone", "1", "free_form") is False  # a word that starts like one is not one


def test_percent_in_words():
    assert grade("25 percent", "0.25", "numeric") is True
    assert grade("25 per cent", "25%", "numeric") is True
    assert grade("25 percent", "0.3", "numeric") is False
