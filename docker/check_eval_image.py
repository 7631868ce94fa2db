"""Run by docker/vllm.Dockerfile's build: what `eval.backend=vllm` needs from the vLLM image's own transformers.

vLLM pins transformers below the range pyproject.toml asks for (vLLM 0.33.0: >=5.16.1,<5.20; vigos: >=5.23), and
vigos is installed with --no-deps so that vLLM's stack stays as vLLM tested it. In that image the model runs in vLLM;
vigos's side uses transformers only through the processor: loading it, rendering the chat prompt, counting prompt
tokens (the prefill probe compares them with the server's) and sizing images (`OpenAIEngine`). This does exactly
that on the tiny model (built offline), so a transformers that breaks it fails the build rather than the evaluation.

    python docker/check_eval_image.py        # prints the transformers version and the probe's prompt length
"""

from __future__ import annotations

import tempfile
from pathlib import Path


def main() -> None:
    import transformers
    from PIL import Image

    import vigos.evaluation.run  # noqa: F401 (the evaluation step's own imports)
    from vigos.config import load_config
    from vigos.data.prompts import build_messages, build_prompt_text, with_prefill
    from vigos.generation.openai import OPEN_TEMPLATE, _image_part
    from vigos.modeling.load import load_processor
    from vigos.modeling.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_model(Path(tmp) / "tiny", seed=0)
        cfg = load_config("tiny", overrides=[f"model.name_or_path={folder}"])
        processor = load_processor(cfg.model)
        images = [Image.new("RGB", (300, 200), (200, 30, 30)), Image.new("RGB", (64, 64))]
        messages = build_messages("What colour is the square?", images)
        prompt = build_prompt_text(processor, messages)
        tokens = len(processor(text=[prompt], images=images)["input_ids"][0])
        # the request-side template (transformers serve's route) must render the same text
        rendered = processor.apply_chat_template(with_prefill(messages), tokenize=False, add_generation_prompt=True,
                                                 chat_template=OPEN_TEMPLATE)
        assert rendered == prompt, "the request-side chat template no longer renders the engine's prompt"
        parts = [_image_part(im, processor) for im in images]
        assert all(p["image_url"]["url"].startswith("data:image/png;base64,") for p in parts)
    print(f"transformers {transformers.__version__}: prompt {tokens} tokens with {len(images)} images: ok")


if __name__ == "__main__":
    main()
