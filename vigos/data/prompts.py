"""Every prompt text ViGOS uses: the student's and the three teachers', byte for byte the texts the released
ViGOS-7B was trained and evaluated with (the authors' release code; see docs/training.md), and the chat
messages built around them.

- The student (training rollouts and evaluation) sees the image(s), then `format_student_prompt(problem)`, and its
  assistant turn is prefilled with `<description>`. Two student texts exist (`STUDENT_PROMPTS`): `release` (what
  the model was trained on: the default of every preset) and `model-card` (the model card's user-facing
  paraphrase, for users who prompt the model the card's way). Config: `prompt.student`.
- The perception teacher sees the image alone (no text part) and no prefill.
- The reasoning teacher sees the image and `format_reasoning_prompt(problem, answer)`; prefill `<think>`.
- The reference teacher sees the image and `format_reference_prompt(problem, answer)`; prefill `<description>`.

`{problem}` is `str(problem).strip()`, otherwise unchanged (a literal `<image>` in a Vision-SR1 problem stays in:
the release did not remove it); `{answer}` is the normalised reference answer, or `NO_REFERENCE_ANSWER` when it
is empty. No text ends with a newline.

Imports nothing heavy: the processor is passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, get_args

DESCRIPTION_PREFILL = "<description>"
"""What the student's (and the reference teacher's) assistant turn is prefilled with."""
THINK_PREFILL = "<think>"
"""What the reasoning teacher's assistant turn is prefilled with."""

StudentPrompt = Literal["release", "model-card"]
STUDENT_PROMPT_NAMES: tuple[str, ...] = get_args(StudentPrompt)

NO_REFERENCE_ANSWER = "No reference answer was provided."

_RELEASE_STUDENT = (
    "Problem: {problem}\n\nYou are tasked with analyzing an image to generate a detailed description to help you "
    "answer the question. First analyze the image and produce a self-contained description, detailed enough that "
    "can lead to the correct answer. Do not include the final answer in the description. Wrap the entire "
    "description in <description> </description> tags.\nNext, engage in an internal dialogue and include "
    "self-reflection or verification in your reasoning process. Provide your detailed, step-by-step reasoning based "
    "on the image description information and image, and enclose this part within <think> </think> tags.\nFinally, "
    "provide a single word or phrase answer to the question in \\boxed{{}}.\nThe output format should be: "
    "<description> image description here </description> <think> reasoning process here </think> "
    "\\boxed{{FINAL ANSWER here}}."
)

# The model card's inference snippet, rendered (its f-string ends with a newline, kept).
_MODEL_CARD_STUDENT = (
    "Problem: {problem}\n\nYou are tasked with analyzing an image to generate a detailed description that can help "
    "you answer the question. First analyze the image and produce a self-contained description, detailed enough to "
    "lead to the correct answer. Do not include the final answer in the description. Wrap the entire description in "
    "<description> </description> tags.\n\nNext, reason step by step based on the image description and the image, "
    "and enclose this part within <think> </think> tags.\n\nFinally, provide a single word or phrase answer to the "
    "question in \\boxed{{}}.\nThe output format should be: <description> image description here </description>"
    "<think> reasoning process here </think> \\boxed{{FINAL ANSWER here}}.\n"
)

STUDENT_PROMPTS: dict[str, str] = {"release": _RELEASE_STUDENT, "model-card": _MODEL_CARD_STUDENT}
"""Student prompt templates by name (`str.format` with `problem`)."""

TRANSITION = (
    "\n\nAfter reading the reference solution above, make sure you truly understand the reasoning behind each step; "
    "do not copy or paraphrase it. Now, using your own words and independent reasoning, derive the same final answer "
    "to the problem above. Think step by step, explore different approaches, and don't be afraid to backtrack or "
    "reconsider if something doesn't work out:\n"
)
"""The block the two privileged teachers share (its leading blank line and trailing newline included)."""

_PRIVILEGED_HEAD = (
    "Problem: {problem}\n\nHere is a reference solution to this problem:\n=== Reference Solution Begin ===\n"
    "{answer}\n=== Reference Solution End ===\n{transition}\n"
)
_REASONING_TAIL = (
    "Please reason step by step, and put your final answer within \\boxed{{}}.The output format should be: "
    "<think> reasoning process here </think> \\boxed{{}}"
)
_REFERENCE_TAIL = (
    "Please first describe the visual evidence that can lead to the correct answer. Wrap the entire description in "
    "<description> </description> tags.\nThen reason step by step, and enclose this part within <think> </think> "
    "tags.\nFinally, put your final answer within \\boxed{{}}.The output format should be: <description> image "
    "description here </description> <think> reasoning process here </think> \\boxed{{FINAL ANSWER here}}."
)


def problem_text(problem: Any) -> str:
    """The problem as every prompt shows it: `str(problem).strip()`, nothing removed (`<image>` stays)."""
    return str(problem).strip()


def answer_text(answer: Any) -> str:
    """The reference answer as the privileged teachers see it: normalised, or `NO_REFERENCE_ANSWER` if empty."""
    from vigos.data.answers import normalize_answer

    text = normalize_answer(answer) if answer is not None else ""
    return text if text else NO_REFERENCE_ANSWER


def check_student_prompt(name: str) -> str:
    if name not in STUDENT_PROMPTS:
        raise ValueError(f"unknown student prompt {name!r}; choose one of {', '.join(STUDENT_PROMPT_NAMES)}")
    return name


def format_student_prompt(problem: Any, prompt: str = "release") -> str:
    """The student's text for one problem (`prompt`: `release`, what ViGOS-7B was trained on, or `model-card`)."""
    return STUDENT_PROMPTS[check_student_prompt(prompt)].format(problem=problem_text(problem))


def format_reasoning_prompt(problem: Any, answer: Any) -> str:
    """The reasoning teacher's text: it knows the reference answer and is asked to derive it on its own."""
    head = _PRIVILEGED_HEAD.format(problem=problem_text(problem), answer=answer_text(answer), transition=TRANSITION)
    return head + _REASONING_TAIL.format()


def format_reference_prompt(problem: Any, answer: Any) -> str:
    """The reference (fallback) teacher's text: the reference answer and the full three-part format."""
    head = _PRIVILEGED_HEAD.format(problem=problem_text(problem), answer=answer_text(answer), transition=TRANSITION)
    return head + _REFERENCE_TAIL.format()


def build_messages(
    problem: Any,
    images: Sequence[Any] = (),
    *,
    prompt: str = "release",
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> list[dict[str, Any]]:
    """The student's chat messages for one example: one user turn with every image (in order), then its text.

    `images` are whatever `qwen_vl_utils.process_vision_info` accepts (PIL images, paths, URLs). `min_pixels` /
    `max_pixels`, when given, are set on each image item so `process_vision_info` resizes to the same pixel
    budget as the processor.
    """
    content = image_items(images, min_pixels=min_pixels, max_pixels=max_pixels)
    content.append({"type": "text", "text": format_student_prompt(problem, prompt)})
    return [{"role": "user", "content": content}]


def image_items(
    images: Sequence[Any], *, min_pixels: int | None = None, max_pixels: int | None = None
) -> list[dict[str, Any]]:
    """One `{"type": "image", ...}` content item per image, in order."""
    content: list[dict[str, Any]] = []
    for image in images:
        item: dict[str, Any] = {"type": "image", "image": image}
        if min_pixels is not None:
            item["min_pixels"] = min_pixels
        if max_pixels is not None:
            item["max_pixels"] = max_pixels
        content.append(item)
    return content


def build_prompt_text(processor: Any, messages: list[dict[str, Any]], prefill: str = DESCRIPTION_PREFILL) -> str:
    """The chat-template text (stock template, its default system message) with the assistant turn opened and
    prefilled (default `<description>`)."""
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text + prefill


def with_prefill(messages: list[dict[str, Any]], prefill: str = DESCRIPTION_PREFILL) -> list[dict[str, Any]]:
    """`messages` and the open assistant turn `build_prompt_text` renders: what a chat server is asked to continue."""
    return [*messages, {"role": "assistant", "content": prefill}]
