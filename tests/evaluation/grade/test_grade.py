"""Rule grader, table-driven: option letters and texts, yes/no, numbers with units, fractions, math."""

import threading

import pytest

from vigos.evaluation.extract import extract_answer
from vigos.evaluation.grade import grade, numbers_match, parse_number

OPTS = ["A. a dog", "B. a cat", "C. a bird"]
CV_OPTS = ["left", "right"]


@pytest.mark.parametrize(
    ("extracted", "reference", "options", "expected"),
    [
        ("B", "B", None, True),
        ("(B)", "B", None, True),
        ("B.", "(B)", None, True),
        ("B)", "(B)", None, True),
        ("\\text{B}", "B", None, True),
        ("\\textbf{(B)}", "B", None, True),
        ("Option B", "B", None, True),
        ("the answer is: b", "B", None, True),
        ("  b  ", "(B)", None, True),
        ("B", "(B) a cat", None, True),  # CV-Bench references carry the choice text
        ("(B) a cat", "B", None, True),
        ("B. something else", "B", None, True),  # the letter decides
        ("a cat", "B", OPTS, True),  # the option's text instead of its letter
        ("A Cat.", "B", OPTS, True),
        ("Right", "(B) right", CV_OPTS, True),
        ("right", "(B) right", None, True),  # options unknown: the reference's own text
        ("a dog", "B", OPTS, False),
        ("A", "B", None, False),
        ("C", "(B) a cat", None, False),
        ("a fish", "B", OPTS, False),
        ("B or C", "B", None, False),  # hedging is not an answer
    ],
)
def test_multiple_choice(extracted, reference, options, expected):
    assert grade(extracted, reference, "multiple_choice", options) is expected


@pytest.mark.parametrize(
    ("extracted", "reference", "expected"),
    [
        ("12", "12", True),
        ("12 cm", "12", True),  # units stripped
        ("12\\text{ cm}", "12", True),
        ("12 \\mathrm{cm}^2", "12", True),
        ("60 km/h", "60", True),
        ("1,000", "1000", True),  # thousands separator
        ("\\$1,250.50", "1250.5", True),
        ("45^\\circ", "45", True),
        ("45°", "45", True),
        ("25%", "25", True),
        ("25\\%", "0.25", True),  # percent on one side only
        ("0.5", "\\frac{1}{2}", True),  # fractions vs decimals
        ("1/2", "0.5", True),
        ("\\dfrac{3}{4}", "0.75", True),
        ("0.33", "1/3", True),  # a rounding of the exact value
        ("3.14159", "3.14", True),  # more precise than the reference
        ("x = 7", "7", True),
        ("-3.5", "−3.5", True),
        ("2", "2.4", False),  # an integer is not a rounding
        ("0.3", "0.33", False),  # coarser than the reference
        ("0.3", "1/3", False),  # one place is too coarse for an exact fraction
        ("13", "12", False),
        ("3 apples and 4 pears", "3", False),
        ("2\\sqrt{2}", "2.8284271", True),  # not a plain number: the math rule decides
    ],
)
def test_numeric(extracted, reference, expected):
    assert grade(extracted, reference, "numeric") is expected


@pytest.mark.parametrize(
    ("extracted", "reference", "expected"),
    [
        ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt{3}}{2}", True),
        ("2\\sqrt{2}", "\\sqrt{8}", True),
        ("1+x^2", "x^2+1", True),
        ("\\frac{1}{2}", "0.5", True),
        ("y = 2x + 1", "2x+1", True),
        ("x^2-1", "x^2+1", False),
        ("\\pi", "3", False),
    ],
)
def test_math(extracted, reference, expected):
    assert grade(extracted, reference, "math") is expected


@pytest.mark.parametrize(
    ("extracted", "reference", "expected"),
    [
        ("Yes", "yes", True),
        ("yes.", "Yes", True),
        ("\\text{No}", "no", True),
        ("Yes, it is.", "Yes", True),
        ("True", "yes", True),
        ("no", "Yes", False),
        ("maybe", "yes", False),
    ],
)
def test_yes_no(extracted, reference, expected):
    assert grade(extracted, reference, "yes_no") is expected


@pytest.mark.parametrize(
    ("extracted", "reference", "expected"),
    [
        ("The Eiffel Tower", "eiffel tower", True),
        ("  Red. ", "red", True),
        ("\\text{blue}", "Blue", True),
        ("red", "dark red", False),
        ("", "red", False),
    ],
)
def test_free_form(extracted, reference, expected):
    assert grade(extracted, reference, "free_form") is expected


@pytest.mark.parametrize("kind", ["multiple_choice", "yes_no", "numeric", "math", "free_form"])
def test_no_answer_is_incorrect(kind):
    assert grade(None, "B", kind) is False


def test_unknown_answer_type():
    with pytest.raises(ValueError, match="unknown answer_type 'essay'"):
        grade("B", "B", "essay")


@pytest.mark.parametrize(
    ("response", "reference", "kind", "expected"),
    [
        ("<think>A? no.</think> \\boxed{A} wait \\boxed{(B)}", "(B) a cat", "multiple_choice", True),
        ("\\boxed{B} wait \\boxed{(A", "B", "multiple_choice", False),  # unclosed last box: no answer
        ("\\boxed{None}", "None", "free_form", False),
        ("\\boxed{\\frac{1}{2}} cm", "0.5", "numeric", True),
    ],
)
def test_extract_then_grade(response, reference, kind, expected):
    assert grade(extract_answer(response), reference, kind) is expected


def test_parse_number():
    assert parse_number("1,234.50 m") == (1234.5, 2, False, 6)
    assert parse_number("\\frac{1}{4}") == (0.25, None, False, None)
    assert parse_number("12%") == (12.0, 0, True, 2)
    assert parse_number("twelve") == (12.0, 0, False, 2)
    assert parse_number("twelve or thirteen") is None
    assert parse_number("1/0") is None
    assert numbers_match("red", "3") is None


def test_math_grading_works_off_the_main_thread():
    # math-verify's signal-based timeout raises outside the main thread; the grader must not.
    results = []
    t = threading.Thread(target=lambda: results.append(grade("2\\sqrt{2}", "\\sqrt{8}", "math")))
    t.start()
    t.join()
    assert results == [True]
