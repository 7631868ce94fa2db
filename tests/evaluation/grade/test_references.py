"""References that accept several answers: MMMU list literals, MM-Vet <OR> / <AND>."""

import pytest

from vigos.data.answers import answer_type
from vigos.evaluation.grade import grade, grade_detail
from vigos.evaluation.grade.references import alternatives


def test_alternatives():
    assert alternatives("['24/7', '3.429']") == [["24/7"], ["3.429"]]
    assert alternatives('["red"]') == [["red"]]
    assert alternatives("[0, 1]") is None  # an interval, not a list of answers
    assert alternatives("[a, b]") is None
    assert alternatives("cat<OR>kitten") == [["cat"], ["kitten"]]
    assert alternatives("salt <AND> pepper") == [["salt", "pepper"]]
    assert alternatives("a<AND>b<OR>c") == [["a", "b"], ["c"]]
    assert alternatives("B") is None


@pytest.mark.parametrize(
    ("extracted", "reference", "expected"),
    [
        ("3.429", "['24/7', '3.429']", True),
        ("24/7", "['24/7', '3.429']", True),
        ("\\frac{24}{7}", "['24/7', '3.429']", True),  # each element graded by its own type
        ("3.43", "['24/7', '3.429']", True),  # 24/7 correctly rounded
        ("3.42", "['24/7', '3.429']", False),
        ("5", "['24/7', '3.429']", False),
        ("kitten", "cat<OR>kitten", True),
        ("A cat.", "cat<OR>kitten", True),
        ("dog", "cat<OR>kitten", False),
        ("salt and pepper", "salt<AND>pepper", True),
        ("Pepper, salt", "salt<AND>pepper", True),
        ("There is salt and some pepper.", "salt<AND>pepper", True),
        ("salt", "salt<AND>pepper", False),
        ("saltpepper", "salt<AND>pepper", False),
        ("2 and three", "2<AND>3", True),
        ("c", "a<AND>b<OR>c", True),
        ("a", "a<AND>b<OR>c", False),
    ],
)
def test_several_accepted_answers(extracted, reference, expected):
    kind = answer_type(reference)
    assert grade(extracted, reference, kind) is expected


def test_the_rule_is_recorded():
    # 3.429 is 24/7 rounded, so the first element already accepts it.
    assert grade_detail("3.429", "['24/7', '3.429']", "math") == (True, "reference.any_of+math.number")
    assert grade_detail("3.429", "['1/2', '3.429']", "math") == (True, "reference.any_of+numeric.value")
    assert grade_detail("salt, pepper", "salt<AND>pepper", "free_form") == (True, "reference.all_of")
    assert grade_detail("salt", "salt<AND>pepper", "free_form") == (False, "reference.none_of")
