"""The ViGOS student prompt (verbatim from the ViGOS-7B model card) and the chat messages built around it.

The student sees the image(s), then the problem wrapped in the output-format instructions, and answers
`<description>...</description><think>...</think>\\boxed{...}`. Rollouts (training) and evaluation both open the
assistant turn and prefill it with `<description>` (`build_prompt_text`).

Imports nothing heavy: the processor is passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

DESCRIPTION_PREFILL = "<description>"
"""What the assistant turn is prefilled with: the student starts by describing the image."""

IMAGE_PLACEHOLDER = "<image>"
"""A literal placeholder some datasets put in the problem text; images are passed as separate content items."""


def format_student_prompt(question: str) -> str:
    """The model card's `prompt` for one question, character for character."""
    # Copied verbatim from the model card (an f-string: `\\boxed{{}}` renders as `\boxed{}`).
    prompt = f"""Problem: {question}

You are tasked with analyzing an image to generate a detailed description that can help you answer the question. First analyze the image and produce a self-contained description, detailed enough to lead to the correct answer. Do not include the final answer in the description. Wrap the entire description in <description> </description> tags.

Next, reason step by step based on the image description and the image, and enclose this part within <think> </think> tags.

Finally, provide a single word or phrase answer to the question in \\boxed{{}}.
The output format should be: <description> image description here </description><think> reasoning process here </think> \\boxed{{FINAL ANSWER here}}.
"""
    return prompt


def clean_question(question: str) -> str:
    """Remove literal `<image>` placeholders (the images are passed separately) and surrounding whitespace."""
    return question.replace(IMAGE_PLACEHOLDER, "").strip()


def build_messages(
    question: str,
    images: Sequence[Any] = (),
    *,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> list[dict[str, Any]]:
    """Chat messages for one example: one user turn with every image (in order), then the student prompt.

    `images` are whatever `qwen_vl_utils.process_vision_info` accepts (PIL images, paths, URLs). `min_pixels` /
    `max_pixels`, when given, are set on each image item so `process_vision_info` resizes to the same pixel
    budget as the processor (otherwise it keeps images up to its own, much larger, default budget).
    """
    content: list[dict[str, Any]] = []
    for image in images:
        item: dict[str, Any] = {"type": "image", "image": image}
        if min_pixels is not None:
            item["min_pixels"] = min_pixels
        if max_pixels is not None:
            item["max_pixels"] = max_pixels
        content.append(item)
    content.append({"type": "text", "text": format_student_prompt(clean_question(question))})
    return [{"role": "user", "content": content}]


def build_prompt_text(processor: Any, messages: list[dict[str, Any]], prefill: str = DESCRIPTION_PREFILL) -> str:
    """The chat-template text with the assistant turn opened and prefilled (default `<description>`)."""
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text + prefill
