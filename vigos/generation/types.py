"""What a generation engine takes and returns, and the small interface every engine implements.

No torch import here: the pipeline and the CLI can import these types cheaply. A vLLM engine (or any other) only has
to implement `Engine.generate(requests, params) -> results`, one result per request, in request order, where row i's
samples depend only on its prompt, images, seed and the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    from vigos.config import EvalConfig, TrainConfig

FinishReason = Literal["stop", "length", "error"]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. No defaults here: they live in `vigos.config` (`from_eval` / `from_train`)."""

    temperature: float
    """0 means greedy."""
    top_p: float
    """1.0 disables nucleus filtering."""
    top_k: int
    """0 disables top-k filtering."""
    max_new_tokens: int

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @classmethod
    def from_eval(cls, cfg: EvalConfig) -> SamplingParams:
        """Evaluation sampling (docs/evaluation.md: T 1.0, top-p 0.9, top-k 20, 4096 new tokens by default)."""
        return cls(cfg.temperature, cfg.top_p, cfg.top_k, cfg.max_new_tokens)

    @classmethod
    def from_train(cls, cfg: TrainConfig) -> SamplingParams:
        """Rollout sampling (docs/training.md: T 1.1, top-p 0.95, top-k 20, `max_completion_length` new tokens)."""
        return cls(cfg.rollout_temperature, cfg.rollout_top_p, cfg.rollout_top_k, cfg.max_completion_length)

    def to_dict(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_new_tokens": self.max_new_tokens,
        }


@dataclass
class GenerationRequest:
    """One sequence to sample."""

    prompt: str
    """Chat-templated prompt text, ending with the assistant prefill (e.g. `<description>`)."""
    images: Sequence[Any] = ()
    """PIL images, in the order of the prompt's image placeholders."""
    seed: int = 0
    """This row's seed: its samples depend on nothing else (besides prompt, images and model)."""
    messages: list[dict[str, Any]] | None = None
    """The chat messages `prompt` was rendered from, ending with the open assistant turn (`{"role": "assistant",
    "content": prefill}`); server engines send these, HFEngine uses `prompt`."""


@dataclass
class GenerationResult:
    """One completion."""

    token_ids: list[int]
    """Completion tokens (no prompt, no padding), including the EOS token when one was produced."""
    text: str
    """Decoded completion, without the EOS token (special tokens produced mid-text are kept)."""
    finish_reason: FinishReason
    """"stop": an EOS token was produced; "length": `max_new_tokens` was reached first; "error": a server engine's
    request failed for good (no text: the row is a failure, never an empty answer)."""
    seed: int
    prompt_tokens: int
    """Prompt length in tokens (image placeholder tokens included, padding excluded)."""
    prompt_inputs: dict[str, Any] | None = field(default=None, repr=False)
    """With `keep_inputs=True`: this row's processor outputs, unpadded, batch dim 1 (`input_ids`, `attention_mask`,
    `pixel_values`, `image_grid_thw`, and `mm_token_type_ids` where the processor makes it), on the model's device,
    for the trainer's student/teacher forwards."""
    completion_tokens: int | None = None
    """Set by engines that get a token count but not the ids (a server's `usage.completion_tokens`)."""
    logprobs: list[float] | None = field(default=None, repr=False)
    """With `logprobs=True`: the model's log-probability of each token in `token_ids` when it was drawn
    (temperature 1, before top-k/top-p), float32 logits."""

    @property
    def num_tokens(self) -> int:
        return self.completion_tokens if self.completion_tokens is not None else len(self.token_ids)


@runtime_checkable
class Engine(Protocol):
    """A batched sampler. Implementations may take extra keyword options (`HFEngine`: `keep_inputs`, `progress`)."""

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[GenerationResult]:
        """One result per request, in request order."""
        ...
