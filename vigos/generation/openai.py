"""`OpenAIEngine`: the `Engine` on any OpenAI-compatible chat server (vLLM, SGLang, TGI, `transformers serve`).

    engine = OpenAIEngine("http://127.0.0.1:8000/v1", "Qwen/Qwen2.5-VL-7B-Instruct", processor, concurrency=64)
    results = engine.generate(requests, SamplingParams.from_eval(cfg.eval))     # one result per request, in order

Same semantics as `HFEngine` (docs/evaluation.md, "Backends"):

- **The same prompt.** Each request sends its chat messages (`GenerationRequest.messages`: the user turn with every
  image, then the open assistant turn holding the `<description>` prefill), images as PNG `data:` URLs already
  resized to the processor's pixel budget. The server must continue the assistant turn, not open a new one. Two
  routes (`prefill`): `continue_final_message` (vLLM, SGLang: `continue_final_message: true,
  add_generation_prompt: false`) and `chat_template` (`transformers serve`, whose chat endpoint always adds a
  generation prompt: a request-side copy of Qwen2.5-VL's template, `OPEN_TEMPLATE`, that leaves a final assistant
  message open and then adds none). `auto` probes them in that order. A probe is one greedy 1-token request; a route
  is taken only when the server's `usage.prompt_tokens` equals the length of the prompt the engine renders
  (`build_prompt_text` + the processor, image tokens included), so a server that ignores the field (and opens a
  new turn) or sizes images differently is caught before any sample is drawn. Neither route: a one-line VigosError.
  Whether the server's reply repeats the prefill (`transformers serve` does, vLLM does not) is read from the probe
  too (one token cannot spell the whole prefill) and cut off, so `text` is the completion alone, as from HFEngine.
- **The same sampling.** temperature, top-p, top-k and `max_tokens` are sent with `repetition_penalty` 1.0:
  servers otherwise apply the checkpoint's generation_config (Qwen2.5-VL-7B-Instruct: top-k 1, repetition
  penalty 1.05). vLLM/SGLang take them as request fields; `transformers serve` refuses unknown fields and takes
  them as a `generation_config` JSON instead. One request per sample (`n` = 1) with the sample's seed: the rows are
  the engine's rows, seeds included (the server's RNG draws the tokens, so samples equal in distribution, not in
  bits; `transformers serve` seeds its global torch RNG, so its concurrent requests do not even reproduce).
- **Many requests in flight** (`concurrency` threads). Retries on HTTP 429/5xx, time-outs, lost connections, a
  cut-short body and a reply without a usable choice, `max_retries` times with the back-off of `vigos.backoff`. A
  request still failing gets `finish_reason="error"` (never an empty answer: the response row holds no response,
  scoring counts it wrong, a resumed run asks again). A 400/422 on one request (say, a prompt longer than the
  server's context) is that request's error, not retried; 401/403/404 stop the run (every request would fail).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import random
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from vigos.backoff import backoff_s
from vigos.errors import VigosError
from vigos.generation.types import GenerationRequest, GenerationResult, SamplingParams

log = logging.getLogger(__name__)

PrefillRoute = Literal["continue_final_message", "chat_template"]
ROUTES: tuple[PrefillRoute, ...] = ("continue_final_message", "chat_template")

# Qwen2.5-VL's chat template (the stock one, as the tiny model and Qwen2.5-VL-7B-Instruct ship it) with two changes:
# a final assistant message is left open (no <|im_end|>), and no generation prompt follows it. Rendered with
# add_generation_prompt=True over the messages + the prefill turn it gives exactly `build_prompt_text`'s text
# (tests/generation/test_openai.py checks this against the processor's own template).
OPEN_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% set open = loop.last and message['role'] == 'assistant' %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "{% if not open %}<|im_end|>\n{% endif %}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: "
    "{% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% if not open %}<|im_end|>\n{% endif %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}<|im_start|>assistant\n{% endif %}"
)


class _Refused(Exception):
    """The server refused this request as malformed (HTTP 400/422): not retried."""


class _BadReply(Exception):
    """A 200 without a usable choice: retried like a server error."""


@dataclass(frozen=True)
class _Route:
    name: PrefillRoute
    echoes_prefill: bool
    """The server's reply starts with the prefill (`transformers serve` decodes from the assistant turn's start)."""


class OpenAIEngine:
    """The `Engine` on an OpenAI-compatible chat server (see the module docstring).

    Args:
        base_url: the API root, e.g. `http://127.0.0.1:8000/v1`.
        model: the model name requests carry (what the server's /v1/models lists).
        processor: the model's processor: the pixel budget images are resized to, and the prompt length the
            probe checks the server's against.
        api_key: sent as the bearer token (None: a placeholder; servers without auth ignore it).
        prefill: "auto", "continue_final_message" or "chat_template".
        concurrency: requests in flight at once.
        max_retries: retries of one request after its first attempt.
        timeout_s: seconds one attempt may take.
        client: an `openai.OpenAI` to use instead of building one; `sleep` / `rng`: injectable for tests.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        processor: Any,
        *,
        api_key: str | None = None,
        prefill: str = "auto",
        concurrency: int = 64,
        max_retries: int = 5,
        timeout_s: float = 900.0,
        client: Any = None,
        sleep: Callable[[float], Any] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if prefill != "auto" and prefill not in ROUTES:
            raise VigosError(f"eval.prefill is {prefill!r}; choose auto, {' or '.join(ROUTES)}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if client is None:
            import openai

            # retries are ours (counted, backed off, Retry-After honoured), so the client's own are off
            client = openai.OpenAI(base_url=base_url, api_key=api_key or "EMPTY", max_retries=0, timeout=timeout_s)
        self.base_url = base_url
        self.model = model
        self.processor = processor
        self.prefill = prefill
        self.concurrency = concurrency
        self.max_retries = max_retries
        self._client = client
        self._sleep = sleep if sleep is not None else _sleep
        self._rng = rng if rng is not None else random.Random()
        self._lock = threading.Lock()
        self.route: _Route | None = None
        self.http_calls = 0
        self.failures = 0

    # -- requests ---------------------------------------------------------------------------------------------
    def _messages(self, request: GenerationRequest) -> list[dict[str, Any]]:
        if not request.messages:
            raise ValueError("OpenAIEngine needs GenerationRequest.messages (the chat the prompt was rendered from)")
        out = []
        for message in request.messages:
            content = message["content"]
            if isinstance(content, list):
                content = [_image_part(c["image"], self.processor) if c.get("type") == "image" else c
                           for c in content]
            out.append({"role": message["role"], "content": content})
        return out

    def _body(self, route: PrefillRoute, messages: list[dict[str, Any]], seed: int,
              params: SamplingParams) -> dict[str, Any]:
        greedy = params.temperature == 0
        body: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": params.max_new_tokens,
                                "temperature": params.temperature, "top_p": params.top_p, "seed": seed}
        if route == "continue_final_message":
            extra = {"continue_final_message": True, "add_generation_prompt": False, "top_k": params.top_k or -1,
                     "repetition_penalty": 1.0}  # vLLM's "no top-k" is -1
        else:
            config = {"do_sample": not greedy, "max_new_tokens": params.max_new_tokens, "repetition_penalty": 1.0}
            if not greedy:
                config |= {"temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k}
            extra = {"chat_template_kwargs": {"chat_template": OPEN_TEMPLATE}, "generation_config": json.dumps(config)}
        return body | {"extra_body": extra}

    def _call(self, body: dict[str, Any]) -> Any:
        """One attempt: the reply's first choice and its usage. Raises what `_attempts` sorts out."""
        import openai

        with self._lock:
            self.http_calls += 1
        try:
            reply = self._client.chat.completions.create(**body)
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
            raise VigosError(
                f"the generation server at {self.base_url} rejected the request ({type(e).__name__}, HTTP "
                f"{e.status_code}): check eval.base_url, eval.server_model ({self.model!r}) and the API key's "
                "environment variable (eval.api_key_env)") from None
        except (openai.BadRequestError, openai.UnprocessableEntityError) as e:
            raise _Refused(f"HTTP {e.status_code}: {str(e)[:300]}") from None
        choices = getattr(reply, "choices", None)
        if not choices or getattr(choices[0], "finish_reason", None) not in ("stop", "length"):
            # no choice, or one the server gave up on (vLLM: "abort"): as bad as a 5xx
            raise _BadReply(f"reply without a finished choice: {str(reply)[:200]}")
        return reply

    def _attempts(self, body: dict[str, Any], what: str) -> Any:
        """The reply, after up to `max_retries` retries; None when every attempt failed. `_Refused` passes up."""
        import openai

        for attempt in range(self.max_retries + 1):
            try:
                return self._call(body)
            # json.JSONDecodeError: the client could not read a 200's body (cut short)
            except (openai.APIError, _BadReply, json.JSONDecodeError) as e:
                log.warning("%s: attempt %d/%d failed: %s: %s", what, attempt + 1, self.max_retries + 1,
                            type(e).__name__, str(e)[:200])
                if attempt < self.max_retries:
                    self._sleep(backoff_s(attempt, e, self._rng))
        return None

    # -- the prefill route ------------------------------------------------------------------------------------
    def _expected_prompt_tokens(self, request: GenerationRequest) -> int:
        images = list(request.images) or None
        return len(self.processor(text=[request.prompt], images=images)["input_ids"][0])

    def _probe(self, request: GenerationRequest) -> _Route:
        """The route whose 1-token greedy reply shows the server built exactly our prompt (see the module doc)."""
        expected = self._expected_prompt_tokens(request)
        prefill = _prefill(request)
        probe = SamplingParams(temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=1)
        messages = self._messages(request)
        why: dict[str, str] = {}
        for name in ROUTES if self.prefill == "auto" else (self.prefill,):
            try:
                reply = self._attempts(self._body(name, messages, request.seed, probe), f"prefill probe ({name})")
            except _Refused as e:
                why[name] = f"refused ({e})"
                continue
            if reply is None:
                raise VigosError(f"the generation server at {self.base_url} did not answer a probe request in "
                                 f"{self.max_retries + 1} attempts (log above); check that it is up")
            got = getattr(getattr(reply, "usage", None), "prompt_tokens", None)
            if got != expected:
                why[name] = f"its prompt has {got} tokens, the engine's {expected}"
                continue
            text = reply.choices[0].message.content or ""
            route = _Route(name, echoes_prefill=bool(prefill) and text.startswith(prefill))
            log.info("generation server %s: prefill route %s (reply repeats the prefill: %s)", self.base_url, name,
                     route.echoes_prefill)
            return route
        detail = "; ".join(f"{k}: {v}" for k, v in why.items())
        raise VigosError(f"the generation server at {self.base_url} does not continue the assistant prefill ({detail}); "
                         "use a server that honours continue_final_message (vLLM, SGLang) or a request chat_template "
                         "(transformers serve), check that it serves the same model and pixel budget, or use "
                         "--backend engine")

    # -- generate ---------------------------------------------------------------------------------------------
    def _one(self, request: GenerationRequest, params: SamplingParams) -> GenerationResult:
        assert self.route is not None
        what = f"request (seed {request.seed})"
        body = self._body(self.route.name, self._messages(request), request.seed, params)
        try:
            reply = self._attempts(body, what)
        except _Refused as e:
            log.warning("%s refused, recorded as an error: %s", what, e)
            reply = None
        if reply is None:
            with self._lock:
                self.failures += 1
            return GenerationResult([], "", "error", request.seed, 0, completion_tokens=0)
        choice = reply.choices[0]
        text = choice.message.content or ""
        prefill = _prefill(request)
        if self.route.echoes_prefill and text.startswith(prefill):
            text = text[len(prefill):]
        usage = getattr(reply, "usage", None)
        return GenerationResult([], text, choice.finish_reason, request.seed,
                                int(getattr(usage, "prompt_tokens", 0) or 0),
                                completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0))

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[GenerationResult]:
        """One result per request, in request order (requests run `concurrency` at a time)."""
        requests = list(requests)
        if not requests:
            return []
        if self.route is None:
            self.route = self._probe(requests[0])
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            return list(pool.map(lambda r: self._one(r, params), requests))


def _prefill(request: GenerationRequest) -> str:
    """The open assistant turn's text (`prompts.with_prefill` puts it last, as a string)."""
    last = request.messages[-1] if request.messages else {}
    return last.get("content", "") if last.get("role") == "assistant" else ""


def _sleep(seconds: float) -> None:
    import time

    time.sleep(seconds)


def _image_part(image: Any, processor: Any) -> dict[str, Any]:
    """An `image_url` part: the image resized to the size the processor would give it (so the server, whatever its
    own pixel budget, sees the engine's pixels and makes as many image tokens), as a PNG `data:` URL."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    image = image.convert("RGB")
    size = _target_size(image.width, image.height, processor)
    if size != image.size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()}}


def _target_size(width: int, height: int, processor: Any) -> tuple[int, int]:
    """(width, height) after the Qwen2-VL processor's `smart_resize` at its configured pixel budget."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    ip = processor.image_processor
    size = ip.size
    lo = size["shortest_edge"] if "shortest_edge" in size else size.shortest_edge
    hi = size["longest_edge"] if "longest_edge" in size else size.longest_edge
    h, w = smart_resize(height, width, factor=ip.patch_size * ip.merge_size, min_pixels=lo, max_pixels=hi)
    return w, h
