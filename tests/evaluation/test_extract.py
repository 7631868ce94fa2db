"""Answer extraction: the last balanced box; when it gives no answer, the last <answer> tag, never an earlier box."""

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
        ("<answer>A</answer> \\boxed{C", "A"),  # an unclosed last box: the last <answer>, not an earlier box
        ("\\boxed{B} <answer>A</answer> \\boxed{C", "A"),
        ("<answer>A</answer> \\boxed{}", "A"),  # empty last box
        ("<answer>D</answer> \\boxed{None}", "D"),
        ("<answer>D</answer> \\boxed{\\text{None}}", "D"),
        ("<answer>None</answer> \\boxed{None}", None),
        ("\\boxed{Final answer: 42}", "42"),
        ("\\boxed{Answer: B}", "B"),
        ("<answer>Final Answer: (C)</answer>", "(C)"),
        ("\\boxed{The final answer is: 7}", "7"),
        ("\\boxed{Answers vary}", "Answers vary"),  # only a lead-in with a colon is stripped
        ("so \\boxed {B}.", "B"),
        ("<answer></answer>", None),
        ("The answer is B.", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected
