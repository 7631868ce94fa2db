"""Answer extraction: the last balanced box, no fall-back past an unclosed one, then <answer> tags."""

import pytest

from vigos.evaluation.extract import extract_answer


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("<description>x</description><think>y</think> \\boxed{B}", "B"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # nested braces kept
        ("\\boxed{x^{2}+\\sqrt{\\frac{a}{b}}}", "x^{2}+\\sqrt{\\frac{a}{b}}"),
        ("first \\boxed{A}, then on reflection \\boxed{C}.", "C"),  # several boxes: the last
        ("\\boxed{A} ... \\boxed{C", None),  # unclosed last box: no answer, no fall-back to A
        ("\\boxed{A} ... \\boxed{\\frac{1}{2}", None),
        ("\\boxed{None}", None),
        ("\\boxed{none }", None),
        ("\\boxed{\\text{None}}", None),
        ("\\boxed{}", None),
        ("\\boxed{   }", None),
        ("\\boxed {  7 }", "7"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces do not unbalance
        ("<answer>B</answer>", "B"),
        ("<answer>A</answer> changed my mind <answer> C </answer>", "C"),  # the last tag
        ("<answer>A</answer> \\boxed{C}", "C"),  # a box wins over a tag
        ("<answer>A</answer> \\boxed{C", None),  # an unclosed box is no answer even with a tag before it
        ("<answer></answer>", None),
        ("The answer is B.", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected
