"""Every prompt is byte for byte the text the released ViGOS-7B was trained and evaluated with (the authors'
release code, as docs/training.md "Prompts and images" describes); messages and prefills are built around them.

The expected texts below are copied from that specification as written there (one line each, `\\n` for a
newline, `\\boxed` for the backslash) and decoded here, so they are an independent copy, not the module's.
"""

from __future__ import annotations

import pytest

from vigos.data.prompts import (
    DESCRIPTION_PREFILL,
    NO_REFERENCE_ANSWER,
    STUDENT_PROMPTS,
    THINK_PREFILL,
    answer_text,
    build_messages,
    build_prompt_text,
    format_reasoning_prompt,
    format_reference_prompt,
    format_student_prompt,
    problem_text,
)


def _spec(line: str) -> str:
    """A specification line: `\\n` is a newline; every other backslash is literal."""
    return line.replace("\\n", "\n")


STUDENT = _spec(
    r"Problem: {problem}\n\nYou are tasked with analyzing an image to generate a detailed description to help you answer the question. First analyze the image and produce a self-contained description, detailed enough that can lead to the correct answer. Do not include the final answer in the description. Wrap the entire description in <description> </description> tags.\nNext, engage in an internal dialogue and include self-reflection or verification in your reasoning process. Provide your detailed, step-by-step reasoning based on the image description information and image, and enclose this part within <think> </think> tags.\nFinally, provide a single word or phrase answer to the question in \boxed{}.\nThe output format should be: <description> image description here </description> <think> reasoning process here </think> \boxed{FINAL ANSWER here}."  # noqa: E501
)
TRANSITION = _spec(
    r"\n\nAfter reading the reference solution above, make sure you truly understand the reasoning behind each step; do not copy or paraphrase it. Now, using your own words and independent reasoning, derive the same final answer to the problem above. Think step by step, explore different approaches, and don't be afraid to backtrack or reconsider if something doesn't work out:\n"  # noqa: E501
)
REASONING = _spec(
    r"Problem: {problem}\n\nHere is a reference solution to this problem:\n=== Reference Solution Begin ===\n{answer}\n=== Reference Solution End ===\n{TRANSITION}\nPlease reason step by step, and put your final answer within \boxed{}.The output format should be: <think> reasoning process here </think> \boxed{}"  # noqa: E501
)
REFERENCE = _spec(
    r"Problem: {problem}\n\nHere is a reference solution to this problem:\n=== Reference Solution Begin ===\n{answer}\n=== Reference Solution End ===\n{TRANSITION}\nPlease first describe the visual evidence that can lead to the correct answer. Wrap the entire description in <description> </description> tags.\nThen reason step by step, and enclose this part within <think> </think> tags.\nFinally, put your final answer within \boxed{}.The output format should be: <description> image description here </description> <think> reasoning process here </think> \boxed{FINAL ANSWER here}."  # noqa: E501
)
# The model card's inference f-string, rendered (kept as the `model-card` alternative).
MODEL_CARD = (
    "Problem: {problem}\n"
    "\n"
    "You are tasked with analyzing an image to generate a detailed description that can help you answer the "
    "question. First analyze the image and produce a self-contained description, detailed enough to lead to the "
    "correct answer. Do not include the final answer in the description. Wrap the entire description in "
    "<description> </description> tags.\n"
    "\n"
    "Next, reason step by step based on the image description and the image, and enclose this part within "
    "<think> </think> tags.\n"
    "\n"
    "Finally, provide a single word or phrase answer to the question in \\boxed{}.\n"
    "The output format should be: <description> image description here </description><think> reasoning process "
    "here </think> \\boxed{FINAL ANSWER here}.\n"
)

PROBLEM = "<image>What is the value of {x} in the figure?\nChoices:\n(A) 1\n(B) 2"


def _fill(template: str, problem: str, answer: str = "") -> str:
    return template.replace("{TRANSITION}", TRANSITION).replace("{problem}", problem).replace("{answer}", answer)


def test_student_prompt_is_the_release_text():
    got = format_student_prompt(PROBLEM)
    assert got == _fill(STUDENT, PROBLEM)
    assert "<image>" in got  # the problem text is unchanged: the release kept Vision-SR1's literal <image>
    assert not got.endswith("\n") and "\\boxed{}.\nThe output" in got
    assert format_student_prompt("  padded problem \n") == _fill(STUDENT, "padded problem")


def test_model_card_student_prompt_is_a_named_alternative():
    assert set(STUDENT_PROMPTS) == {"release", "model-card"}
    assert format_student_prompt("Q?", "model-card") == _fill(MODEL_CARD, "Q?")
    with pytest.raises(ValueError, match="release, model-card"):
        format_student_prompt("Q?", "card")


def test_privileged_teacher_prompts_are_the_release_texts():
    assert format_reasoning_prompt(PROBLEM, "\\boxed{B}") == _fill(REASONING, PROBLEM, "B")
    assert format_reference_prompt(PROBLEM, "B") == _fill(REFERENCE, PROBLEM, "B")
    # the missing space after the period and the blank line TRANSITION brings are part of what the model saw
    assert "\\boxed{}.The output format" in format_reasoning_prompt("q", "1")
    assert "=== Reference Solution End ===\n\n\nAfter reading" in format_reference_prompt("q", "1")
    assert format_reasoning_prompt("q", "1").endswith("</think> \\boxed{}")


def test_empty_reference_answer_says_so():
    assert answer_text("") == answer_text("<answer> </answer>") == NO_REFERENCE_ANSWER
    assert answer_text(None) == NO_REFERENCE_ANSWER
    assert f"Begin ===\n{NO_REFERENCE_ANSWER}\n===" in format_reference_prompt("q", "")
    assert answer_text("Answer: 42") == "42"  # normalised like data prep (code fences, answer:, boxes, tags)


def test_problem_text_only_strips():
    assert problem_text("  <image>\nWhat is shown?\n") == "<image>\nWhat is shown?"
    assert problem_text(3) == "3"


def test_build_messages_images_in_order_then_text():
    messages = build_messages("<image>Which is larger?", ["first.png", "second.png"])
    assert len(messages) == 1 and messages[0]["role"] == "user"
    content = messages[0]["content"]
    assert [c["type"] for c in content] == ["image", "image", "text"]
    assert [c["image"] for c in content[:2]] == ["first.png", "second.png"]
    assert content[2]["text"] == format_student_prompt("<image>Which is larger?")
    assert build_messages("q", prompt="model-card")[0]["content"][0]["text"] == _fill(MODEL_CARD, "q")

    sized = build_messages("q", ["a.png"], min_pixels=784, max_pixels=3136)
    assert sized[0]["content"][0] == {"type": "image", "image": "a.png", "min_pixels": 784, "max_pixels": 3136}
    assert [c["type"] for c in build_messages("text only")[0]["content"]] == ["text"]


class _RecordingProcessor:
    def __init__(self):
        self.calls = []

    def apply_chat_template(self, messages, **kwargs):
        self.calls.append(kwargs)
        return "<|im_start|>user\n...<|im_end|>\n<|im_start|>assistant\n"


def test_build_prompt_text_opens_assistant_turn_with_prefill():
    proc = _RecordingProcessor()
    text = build_prompt_text(proc, build_messages("q", ["a.png"]))
    assert (DESCRIPTION_PREFILL, THINK_PREFILL) == ("<description>", "<think>")
    assert text.endswith("<|im_start|>assistant\n<description>")
    assert proc.calls == [{"tokenize": False, "add_generation_prompt": True}]
    assert build_prompt_text(proc, [], prefill="").endswith("assistant\n")


def test_build_prompt_text_with_tiny_processor(tiny_processor):
    from PIL import Image

    messages = build_messages("<image>What color?", [Image.new("RGB", (64, 64), "red")])
    text = build_prompt_text(tiny_processor, messages)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
        + _fill(STUDENT, "<image>What color?")
        + "<|im_end|>\n<|im_start|>assistant\n<description>"
    )
