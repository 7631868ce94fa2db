"""The student prompt is the model card's, character for character; messages and prefill are built around it."""

from __future__ import annotations

from vigos.data.prompts import (
    DESCRIPTION_PREFILL,
    build_messages,
    build_prompt_text,
    clean_question,
    format_student_prompt,
)

# The model card's f-string rendered for question "Q?" (written out without f-string escapes).
EXPECTED = (
    "Problem: Q?\n"
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


def test_student_prompt_is_verbatim():
    prompt = format_student_prompt("Q?")
    assert prompt == EXPECTED
    assert "\\boxed{}." in prompt and "\\boxed{FINAL ANSWER here}" in prompt and "{{" not in prompt
    assert format_student_prompt("a {brace} question").startswith("Problem: a {brace} question\n")


def test_clean_question_removes_image_placeholders():
    assert clean_question("<image>\nWhat is shown?") == "What is shown?"
    assert clean_question("Compare <image> and <image>.") == "Compare  and ."
    assert clean_question("No placeholder") == "No placeholder"


def test_build_messages_images_in_order_then_text():
    messages = build_messages("<image>Which is larger?", ["first.png", "second.png"])
    assert len(messages) == 1 and messages[0]["role"] == "user"
    content = messages[0]["content"]
    assert [c["type"] for c in content] == ["image", "image", "text"]
    assert [c["image"] for c in content[:2]] == ["first.png", "second.png"]
    assert content[2]["text"] == format_student_prompt("Which is larger?")
    assert "<image>" not in content[2]["text"]

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
    assert DESCRIPTION_PREFILL == "<description>"
    assert text.endswith("<|im_start|>assistant\n<description>")
    assert proc.calls == [{"tokenize": False, "add_generation_prompt": True}]
    assert build_prompt_text(proc, [], prefill="").endswith("assistant\n")


def test_build_prompt_text_with_tiny_processor(tmp_path):
    from PIL import Image
    from transformers import AutoProcessor

    from vigos.modeling.tiny import build_tiny_model

    processor = AutoProcessor.from_pretrained(build_tiny_model(tmp_path / "tiny"))
    messages = build_messages("<image>What color?", [Image.new("RGB", (64, 64), "red")])
    text = build_prompt_text(processor, messages)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
        + format_student_prompt("What color?")
        + "<|im_end|>\n<|im_start|>assistant\n<description>"
    )
