"""The trainer's forwards see what the sampler saw: multimodal rotary positions, and teacher contexts that read
exactly as their prefill + the student's own text, on the real Qwen vocabulary.

(a) `build_sequences` (right-padded rows, each its own non-square image) gives the hidden states of a forward
    that gets every processor output; (b) the student's log-probabilities of its own sampled tokens from the
    training forward, padded or packed, equal the generation engine's at sampling; (c) token edges: for every role,
    both values of `reasoning_teacher_sees_description`, and tag / newline / CRLF / punctuation / empty-segment variants, the
    teacher's sequence decodes to its context + the student's text, and the scored positions predict exactly the
    tokens the student generated in that segment.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from vigos.config import ModelConfig, load_config
from vigos.data.prompts import THINK_PREFILL
from vigos.modeling.load import load_processor
from vigos.training import teachers as T
from vigos.training.objective import teacher_batches
from vigos.training.segments import build_segment_masks, parse_completion

# non-square, different sizes: each row gets its own image grid
SIZES = ((168, 84), (84, 140), (196, 56))


def _image(size, colour):
    img = Image.new("RGB", size, (240, 240, 240))
    img.paste(Image.new("RGB", (size[0] // 2, size[1] // 2), colour), (size[0] // 4, size[1] // 4))
    return img


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    # a larger pixel budget than the tiny preset's, so an image is a real grid of visual tokens (up to 16)
    return load_processor(ModelConfig(name_or_path=str(tiny_model_dir), min_pixels=784, max_pixels=12544),
                          padding_side="left")


@pytest.fixture(scope="module")
def images():
    return [_image(size, c) for size, c in zip(SIZES, ((200, 30, 30), (30, 160, 60), (40, 70, 220)), strict=True)]


def _reference_hidden(model, processor, context, image, tail):
    """One row alone: every processor output (mm_token_type_ids included), the tail appended, no padding."""
    enc = processor(text=[context], images=[image], return_tensors="pt")
    tail = torch.tensor([tail], dtype=torch.long)
    inputs = dict(enc)
    inputs["input_ids"] = torch.cat([enc["input_ids"], tail], dim=1)
    inputs["attention_mask"] = torch.cat([enc["attention_mask"], torch.ones_like(tail)], dim=1)
    inputs["mm_token_type_ids"] = torch.cat([enc["mm_token_type_ids"], torch.zeros_like(tail)], dim=1)
    with torch.no_grad():
        return T.lm_parts(model)[0](**inputs, use_cache=False).last_hidden_state[0]


def test_sequence_batch_matches_a_forward_with_every_processor_output(tiny_model, processor, images):
    tok = processor.tokenizer
    roles = ("student", "perception", "reasoning")
    contexts = [T.context_text(processor, role, "<image>How many shapes?", "1") for role in roles]
    tails = [tok.encode(t, add_special_tokens=False) for t in (
        "A small square.</description>\n<think>\nOne.</think> \\boxed{1}", "Grey and green.", "ok")]
    batch = T.build_sequences(processor, contexts, images, tails, [0, 0, 0])
    assert batch.attention_mask[:, -1].tolist().count(0) == 2  # right-padded to the longest row
    assert len({tuple(g) for g in batch.image_grid_thw.tolist()}) == 3  # three different grids
    with torch.no_grad():
        got = T.hidden_states(tiny_model, batch)
        without = T.lm_parts(tiny_model)[0](
            **{k: v for k, v in batch.model_inputs().items() if k != "mm_token_type_ids"}, use_cache=False
        ).last_hidden_state
    for i, (context, image, tail) in enumerate(zip(contexts, images, tails, strict=True)):
        expected = _reference_hidden(tiny_model, processor, context, image, tail)
        n = int(batch.attention_mask[i].sum())
        assert n == expected.shape[0]
        torch.testing.assert_close(got[i, :n], expected, atol=2e-5, rtol=1e-4)
        # the old inputs (no mm_token_type_ids: 1-D positions) give another network after the image
        assert (without[i, :n] - expected).abs().max() > 1e-3


def test_student_logprobs_match_the_sampler(tiny_model_dir, processor, images):
    """The training forward scores the student's own tokens exactly as the engine did when it drew them."""
    from vigos.generation import GenerationRequest, HFEngine, SamplingParams
    from vigos.modeling.load import load_model
    from vigos.modeling.lora import apply_lora

    cfg = load_config("tiny", overrides=[f"model.name_or_path={tiny_model_dir}"])
    model = apply_lora(load_model(cfg.model), cfg.lora)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for name, p in model.named_parameters():
            if "lora_B" in name:  # a trained-looking adapter, so the student is not the base model
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    model.eval()
    problems = ["<image>What colour is the square?", "How many shapes are there?", "<image>Is it green?"]
    prompts = [T.context_text(processor, "student", p, "") for p in problems]
    engine = HFEngine(model, processor, batch_size=3)
    params = SamplingParams(temperature=1.1, top_p=0.95, top_k=20, max_new_tokens=24)
    results = engine.generate([GenerationRequest(p, [img], seed=7 + i)
                               for i, (p, img) in enumerate(zip(prompts, images, strict=True))],
                              params, logprobs=True)
    assert all(r.logprobs is not None and len(r.logprobs) == r.num_tokens for r in results)

    weight = T.lm_parts(model)[1]
    sampled = torch.cat([torch.tensor(r.logprobs) for r in results])
    tokens = torch.cat([torch.tensor(r.token_ids) for r in results])
    width = max(r.num_tokens for r in results)
    completion = torch.tensor([[j < r.num_tokens for j in range(width)] for r in results])
    for pack in (False, True):  # right-padded rows, and the rows packed into one sequence (train.pack_sequences)
        batch = T.build_sequences(processor, prompts, images, [r.token_ids for r in results], [0, 0, 0], pack=pack)
        with torch.no_grad():
            h = T.hidden_states(model, batch)
        logp = torch.log_softmax(h[batch.positions(completion)].float() @ weight.float().T, dim=-1)
        trained = logp.gather(1, tokens[:, None])[:, 0]
        diff = (trained - sampled).abs().max().item()
        assert diff < 1e-4, f"pack={pack}: max |logprob difference| {diff:.2e}"


# ------------------------------------------------------------------------------------------- token edges

DESCRIPTIONS = ("A red square.", "Two cats,\non a sofa", "数学 figure: 3 × 4", " spaced out ", "x", "!?", "é")
SEPARATORS = ("", "\n", "\r\n", " ", "\n\n", ". ", "\t")
REASONINGS = ("", "So it is 3.", "\nstep 1\r\nstep 2\n", "数", "...", ">", "\\frac{1}{2}")
ANSWERS = ("3", "red", "\\frac{1}{2}", "A", "")
TRAILERS = ("", ".", "\n", " Done.", "}")


def _variants(n: int, seed: int = 0):
    rng = random.Random(seed)
    for _ in range(n):
        desc, reas, ans = rng.choice(DESCRIPTIONS), rng.choice(REASONINGS), rng.choice(ANSWERS)
        s = [rng.choice(SEPARATORS) for _ in range(4)]
        yield (f"{desc}{s[0]}</description>{s[1]}<think>{reas}{s[2]}</think>{s[3]}\\boxed{{{ans}}}"
               f"{rng.choice(TRAILERS)}")


def _tokenize(tok, text: str, rng: random.Random) -> list[int]:
    """The canonical tokenisation, or (half the time) the text cut at random points and each piece tokenised on
    its own: a token sequence a sampler could also have produced for that text."""
    if rng.random() < 0.5:
        return tok.encode(text, add_special_tokens=False)
    cuts = sorted(rng.sample(range(1, len(text)), k=min(3, len(text) - 1)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    return [t for piece in pieces for t in tok.encode(piece, add_special_tokens=False)]


@pytest.mark.parametrize("sees_description", [False, True])
def test_teacher_sequences_read_as_prefill_plus_student_text(processor, sees_description):
    tok = processor.tokenizer
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    rng = random.Random(1)
    image = _image((56, 56), (200, 30, 30))
    texts = list(_variants(40, seed=int(sees_description)))
    texts += ["x</description><think>\n</think>\\boxed{1}", "<think>no description</think>\\boxed{2}",
              "d</description>\r\n<think>\r\nr\r\n</think>\r\n\\boxed{3}\r\n", "only a description, truncated"]
    parsed, examples = [], []
    for text in texts:
        ids = _tokenize(tok, text, rng) + [eos]
        parsed.append(parse_completion(tok, ids, eos_token_ids=[eos]))
        examples.append(SimpleNamespace(problem="<image>Q?", answer="3", image=image))
    assert sum(p.valid for p in parsed) >= 20 and sum(not p.valid for p in parsed) >= 2
    # the case that motivated this: `>\n` straddles the end of <think> and starts the reasoning
    assert any(tok.decode(p.token_ids[p.reasoning_tokens[0]: p.reasoning_tokens[0] + 1]).startswith(">")
               for p in parsed if p.valid)

    cfg = load_config("tiny", overrides=[f"train.reasoning_teacher_sees_description={sees_description}"])
    masks = build_segment_masks(parsed)
    # padded rows are read one by one here; test_packing.py checks that packed rows compute the same
    batches = teacher_batches(processor, cfg.train, examples, parsed, masks, pack=False)
    assert set(batches) == {"perception", "reasoning", "reference"}
    segment_mask = {"perception": masks.description, "reasoning": masks.reasoning, "reference": masks.reference}
    for role, (batch, comp_mask, rows) in batches.items():
        role_prefill = T.context_prefill(role, sees_description)
        full_context = T.context_text(processor, role, "<image>Q?", "3", sees_description=sees_description)
        context_ids = processor(text=[full_context], images=[image], return_tensors="pt")["input_ids"][0].tolist()
        assert full_context.endswith(role_prefill)
        pos = T.positions(comp_mask, batch.offset, batch.input_ids.shape[1])
        for k, i in enumerate(rows):
            p = parsed[i]
            ids = batch.input_ids[k][batch.attention_mask[k].bool()].tolist()
            if role == "reasoning" and not sees_description:
                start_char, first = p.segments.reasoning[0], p.reasoning_tokens[0]
            else:
                start_char, first = 0, 0
            last = {"perception": p.description_tokens[1], "reasoning": p.reasoning_tokens[1]}.get(role, p.num_tokens)
            student_text = tok.decode(list(p.token_ids[:last]))[start_char:]
            # context + appended tokens == the role's context with its own prefill + the student's own text
            assert tok.decode(ids) == tok.decode(context_ids) + student_text, (role, p.text)
            # the scored positions predict exactly the student's tokens of that segment, in order
            scored = torch.nonzero(segment_mask[role][i]).flatten().tolist()
            assert scored and scored == torch.nonzero(comp_mask[k]).flatten().tolist()
            predicted = [ids[q + 1] for q in torch.nonzero(pos[k]).flatten().tolist()]
            assert predicted == [p.token_ids[j] for j in scored]
            assert ids[-(last - first):] == list(p.token_ids[first:last])  # ids appended, never re-tokenised


def test_straddling_reasoning_token_shortens_the_think_prefill(tiny_processor):
    tok = tiny_processor.tokenizer
    ids = tok.encode("desc</description>\n<think>\nSo 3.</think> \\boxed{3}", add_special_tokens=False)
    p = parse_completion(tok, ids, eos_token_ids=[tok.eos_token_id])
    assert tok.decode(ids[p.reasoning_tokens[0]: p.reasoning_tokens[0] + 1]) == ">\n"
    assert T.segment_tail("reasoning", p) == (THINK_PREFILL[:-1], p.reasoning_tokens[0], p.reasoning_tokens[1])
    assert T.segment_tail("reasoning", p, sees_description=True) == ("<description>", 0, p.reasoning_tokens[1])
    assert T.segment_tail("perception", p) == ("", 0, p.description_tokens[1])
    assert T.segment_tail("reference", p) == ("<description>", 0, p.num_tokens)
