"""Multiple choice: an option named by its content in another notation, and the step that decided it."""

import pytest

from vigos.evaluation.grade import grade, grade_detail
from vigos.evaluation.grade.choice import match_option

UNITS = ["A. 12 m", "B. 15 m", "C. 18 m", "D. 21 m"]
ANGLES = ["A. 35°", "B. 55°", "C. 65°", "D. 125°"]
FRACS = ["A. \\frac{1}{2}", "B. \\frac{1}{3}", "C. \\frac{2}{3}", "D. \\frac{3}{4}"]
YES_NO = ["A. Yes", "B. No"]
RELATION = ["A. greater than", "B. less than", "C. equal to"]


@pytest.mark.parametrize(
    ("extracted", "reference", "options", "expected", "rule"),
    [
        ("15", "B", UNITS, True, "choice.value"),  # the option's number without its unit
        ("15 m", "B", UNITS, True, "choice.text"),
        ("15 meters", "B", UNITS, True, "choice.value"),  # another spelling of the unit
        ("18", "B", UNITS, False, "choice.value"),  # another option's number
        ("16", "B", UNITS, False, "choice.no_option"),  # no option has it
        ("55", "B", ANGLES, True, "choice.value"),
        ("55^\\circ", "B", ANGLES, True, "choice.value"),
        ("$55^{\\circ}$", "B", ANGLES, True, "choice.value"),
        ("\\dfrac{1}{3}", "B", FRACS, True, "choice.text"),  # \dfrac / \tfrac are \frac
        ("\\tfrac{2}{3}", "C", FRACS, True, "choice.text"),
        ("\\frac {3} {4}", "D", FRACS, True, "choice.compact"),
        ("0.75", "D", FRACS, True, "choice.value"),
        ("Yes, the cup is to the left of the plate.", "A", YES_NO, True, "choice.yes_no"),
        ("No. It is not.", "B", YES_NO, True, "choice.yes_no"),
        ("No, it is not.", "A", YES_NO, False, "choice.yes_no"),
        ("the same", "C", RELATION, True, "choice.wording"),
        ("equal", "C", RELATION, True, "choice.wording"),
        ("They are equal.", "C", RELATION, True, "choice.wording"),
        ("larger", "A", RELATION, True, "choice.wording"),
        ("smaller", "A", RELATION, False, "choice.wording"),
        ("B", "B", UNITS, True, "choice.letter"),  # a letter still decides first
        ("(C) 15 m", "B", UNITS, False, "choice.letter"),
        ("15 or 18", "B", UNITS, False, "choice.no_option"),  # hedging is not an answer
    ],
)
def test_option_in_another_notation(extracted, reference, options, expected, rule):
    assert grade_detail(extracted, reference, "multiple_choice", options) == (expected, rule)


def test_a_step_that_matches_two_options_decides_nothing():
    # "15" is the value of both options: the number cannot say which one the model meant.
    assert match_option("15", ["15 m", "15 cm"]) is None
    assert grade("15", "A", "multiple_choice", ["A. 15 m", "B. 15 cm"]) is False
    assert match_option("identical", ["the same", "equal to"]) is None  # both mean "equal"


def test_reference_given_as_option_text():
    assert grade("B", "15 m", "multiple_choice", UNITS) is True
    assert grade("15", "15 m", "multiple_choice", UNITS) is True
    assert grade("C", "15 m", "multiple_choice", UNITS) is False


def test_options_unknown_compare_with_the_references_text():
    assert grade("15", "(B) 15 m", "multiple_choice") is True
    assert grade("the same", "(C) equal to", "multiple_choice") is True
    assert grade("16", "(B) 15 m", "multiple_choice") is False
